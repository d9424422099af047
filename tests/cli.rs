//! The binary as a user runs it: `serve` and `demo` with a private PostgreSQL (no DATABASE_URL), grpcurl against
//! the demo, shutdown on SIGTERM and Ctrl-C stopping the private cluster, and the clear error for an unreachable
//! database.

mod common;

use std::{path::Path, process::Stdio, time::Duration};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStderr, ChildStdout, Command},
    time::timeout,
};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const BIN: &str = env!("CARGO_BIN_EXE_kalshi-replay");
const STARTUP: Duration = Duration::from_secs(120);

/// The binary with a clean environment for the settings it reads.
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("KALSHI_REPLAY_LISTEN")
        .env_remove("KALSHI_REPLAY_DATA_DIR")
        .env("KALSHI_REPLAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A data directory the unprivileged PostgreSQL user can reach, whatever the umask.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("kalshi-replay-cli-").tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    dir
}

/// Reads lines until one contains `needle`, and returns it (with everything read, for failure messages).
async fn wait_for<R: tokio::io::AsyncRead + Unpin>(lines: &mut Lines<BufReader<R>>, needle: &str) -> String {
    let mut seen = String::new();
    let found = timeout(STARTUP, async {
        while let Some(line) = lines.next_line().await.expect("read output") {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => line,
        _ => panic!("{needle:?} never appeared; output so far:\n{seen}"),
    }
}

/// A running server process and its output.
struct Running {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
    addr: String,
}

async fn start(args: &[&str]) -> Running {
    let mut child = command(args).spawn().expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let line = wait_for(&mut stderr, "serving grpc").await;
    let addr = line.split("local=").nth(1).expect("local= in the log line").trim().to_owned();
    // drain stderr from here on so that the child never blocks on a full pipe
    let _ = &mut stdout;
    Running { child, stdout, stderr, addr }
}

impl Running {
    async fn health(&self) -> ServingStatus {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.addr)).expect("uri");
        let mut client = HealthClient::new(channel.connect().await.expect("connect"));
        let response = client.check(HealthCheckRequest { service: String::new() }).await.expect("check");
        response.into_inner().status()
    }

    /// Sends `signal` and waits for a successful exit.
    async fn stop_with(mut self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id().expect("running") as i32);
        kill(pid, signal).expect("signal");
        tokio::spawn(async move { while let Ok(Some(_)) = self.stderr.next_line().await {} });
        let status = timeout(Duration::from_secs(30), self.child.wait()).await.expect("exits in time").expect("wait");
        assert!(status.success(), "exit status after {signal}: {status}");
    }
}

/// The private cluster removes its lock file on a clean shutdown; a live one still has it.
fn postmaster_running(data_dir: &Path) -> bool {
    let pid_file = data_dir.join("pg").join("postmaster.pid");
    let Ok(text) = std::fs::read_to_string(&pid_file) else { return false };
    let pid: i32 = text.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    pid > 0 && kill(Pid::from_raw(pid), None).is_ok()
}

async fn run_grpcurl(args: &[&str]) -> String {
    let output = Command::new(common::grpcurl()).args(args).output().await.expect("run grpcurl");
    assert!(output.status.success(), "grpcurl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test]
async fn serve_without_database_url_runs_a_private_postgres_and_stops_it_on_sigterm() {
    let dir = data_dir();
    let dir_arg = dir.path().to_str().expect("utf-8 path");
    let server = start(&["serve", "--listen", "127.0.0.1:0", "--data-dir", dir_arg]).await;
    assert!(postmaster_running(dir.path()), "private postgres runs while serving");
    assert_eq!(server.health().await, ServingStatus::Serving);
    server.stop_with(Signal::SIGTERM).await;
    assert!(!postmaster_running(dir.path()), "private postgres stopped with the server");
}

#[tokio::test]
async fn demo_loads_sample_data_once_serves_grpcurl_and_stops_on_ctrl_c() {
    let dir = data_dir();
    let dir_arg = dir.path().to_str().expect("utf-8 path");
    let args = ["demo", "--listen", "127.0.0.1:0", "--data-dir", dir_arg, "--markets", "6", "--days", "2"];
    let args: Vec<&str> = args.into_iter().chain(["--trades", "3000"]).collect();

    let mut first = start(&args).await;
    let loaded = wait_for(&mut first.stdout, "loaded").await;
    assert!(loaded.contains("3000 trades") && loaded.contains("6 markets"), "{loaded}");
    let listed = run_grpcurl(&["-plaintext", &first.addr, "list"]).await;
    for service in [
        "kalshi.replay.v1.ReferenceService",
        "kalshi.replay.v1.ReplayService",
        "kalshi.replay.v1.IngestService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(listed.lines().any(|l| l.trim() == service), "{service} missing from grpcurl list:\n{listed}");
    }
    let health = run_grpcurl(&["-plaintext", &first.addr, "grpc.health.v1.Health/Check"]).await;
    assert!(health.contains("\"SERVING\""), "{health}");
    let described = run_grpcurl(&["-plaintext", &first.addr, "describe", "kalshi.replay.v1.Trade"]).await;
    assert!(described.contains("yes_price_micros"), "{described}");
    first.stop_with(Signal::SIGINT).await;
    assert!(!postmaster_running(dir.path()), "private postgres stopped on ctrl-c");

    // a restart keeps the data and does not generate again
    let mut second = start(&args).await;
    let reused = wait_for(&mut second.stdout, "sample data").await;
    assert!(reused.contains("already loaded (6 markets)"), "{reused}");
    second.stop_with(Signal::SIGINT).await;
}

#[tokio::test]
async fn an_unreachable_database_is_one_clear_line_not_a_panic() {
    for subcommand in ["migrate", "serve"] {
        let output = command(&[subcommand, "--connect-timeout", "5s"])
            .env("DATABASE_URL", "postgres://someone:secret@127.0.0.1:1/nowhere")
            .output()
            .await
            .expect("run");
        assert_eq!(output.status.code(), Some(1), "{subcommand}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{stderr}"));
        assert!(line.contains("cannot connect to postgresql at 127.0.0.1:1/nowhere"), "{line}");
        assert!(line.contains("refused"), "the reason is given: {line}");
        assert!(!stderr.contains("secret"), "no password in messages: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn a_malformed_database_url_names_the_setting() {
    let output = command(&["migrate"]).env("DATABASE_URL", "postgres://[broken").output().await.expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}
