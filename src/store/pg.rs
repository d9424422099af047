//! A private PostgreSQL cluster, so the service runs without any configured server: `serve` and `demo` keep
//! one in their data directory, the tests share a throwaway one per process.
//!
//! One std thread per cluster spawns the postmaster and is the only code that signals or reaps it, so a signal
//! can never reach a recycled pid, and nothing depends on the tokio runtime that started the cluster (each
//! `#[tokio::test]` has its own). The postmaster gets `PR_SET_PDEATHSIG`, which the kernel ties to that thread:
//! when it ends, also by a panic or SIGKILL of this process, postgres receives SIGINT and shuts down. As root the
//! cluster runs as `postgres` (else `nobody`), because postgres refuses to run as root.

use std::{
    env,
    ffi::OsStr,
    fs::{self, File, OpenOptions, Permissions},
    io::{self, Read, Seek, SeekFrom},
    net::TcpListener,
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock, PoisonError, mpsc},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, kill},
    unistd::{Pid, Uid, User, chown},
};
use tempfile::TempDir;
use tokio_postgres::{Config, NoTls};

/// A bin directory holding `initdb` and `postgres`; overrides the search.
const BIN_ENV: &str = "KALSHI_REPLAY_PG_BIN";
/// Throwaway directories are named `<prefix><pid of the owner>-<random>`, which lets a later run sweep them.
const THROWAWAY_PREFIX: &str = "kalshi-replay-pg-";
const POLL: Duration = Duration::from_millis(50);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// A free port can be taken by someone else before postgres binds it; then we try another.
const PORT_ATTEMPTS: u32 = 3;
const LOG_TAIL_LINES: usize = 20;

/// Why the private cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// No PostgreSQL server is installed.
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and postgres on PATH, in `pg_config --bindir` and \
         /usr/lib/postgresql/*/bin); install the PostgreSQL server package (e.g. `apt-get install postgresql`) or \
         set DATABASE_URL to use an existing server"
    )]
    NoBinaries,
    /// `KALSHI_REPLAY_PG_BIN` names a directory without the server binaries.
    #[error("{BIN_ENV}={} holds no initdb and postgres; point it at the server's bin directory or unset it",
        dir.display())]
    NoBinariesIn { dir: PathBuf },
    /// Running as root, but there is no unprivileged user to run postgres as.
    #[error("running as root, but neither a `postgres` nor a `nobody` user exists to run postgresql as")]
    NoUser,
    /// A file-system or process operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// The data directory belongs to someone else than the user postgres runs as.
    #[error("data directory {} is owned by uid {owner}, but postgresql runs as {user}; chown it to {user} or \
        choose another --data-dir", dir.display())]
    WrongOwner { dir: PathBuf, owner: u32, user: String },
    /// The user postgres runs as cannot traverse a parent of the data directory (e.g. /root).
    #[error("user {user} cannot reach {} because {} is not searchable by it; choose a --data-dir elsewhere \
        (e.g. under /var/lib or /tmp)", data_dir.display(), blocked.display())]
    NotReachable { data_dir: PathBuf, blocked: PathBuf, user: String },
    /// initdb failed.
    #[error("initdb of {} failed; its output ends with:\n{log_tail}", dir.display())]
    InitDb { dir: PathBuf, log_tail: String },
    /// postgres exited or did not accept connections in time.
    #[error("postgresql in {} did not start: {reason}; its log ends with:\n{log_tail}", dir.display())]
    Start { dir: PathBuf, reason: String, log_tail: String },
    /// A blocking helper task failed (the runtime shut down under it).
    #[error("private postgresql task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PgError {
    let path = path.to_path_buf();
    move |source| PgError::Io { action, path, source }
}

/// A running PostgreSQL cluster owned by this process. Dropping it stops the cluster (blocking up to ~10 s).
#[derive(Debug)]
pub struct PrivatePostgres {
    data_dir: PathBuf,
    port: u16,
    /// Shared with the blocking task that stops it on a restart.
    postmaster: Arc<Postmaster>,
    /// The directory of a throwaway cluster, removed once postgres has stopped.
    temp: Mutex<Option<TempDir>>,
}

impl PrivatePostgres {
    /// Starts the durable cluster in `data_dir`, creating it on first use. Its log goes to `<data_dir>.log`.
    pub async fn start(data_dir: &Path) -> Result<Self, PgError> {
        let dir = std::path::absolute(data_dir).map_err(io_error("resolve", data_dir))?;
        Self::launch(dir, None).await
    }

    /// Starts a fast, non-durable cluster in a fresh temporary directory, removed again on stop.
    pub async fn start_throwaway() -> Result<Self, PgError> {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        let tmp = env::temp_dir();
        SWEEP.call_once(|| sweep_stale_throwaways(&tmp));
        let temp = tempfile::Builder::new()
            .prefix(&format!("{THROWAWAY_PREFIX}{}-", std::process::id()))
            .tempdir_in(&tmp)
            .map_err(io_error("create a directory in", &tmp))?;
        // the mode otherwise follows the umask; under 077 the unprivileged user could not traverse it
        fs::set_permissions(temp.path(), Permissions::from_mode(0o755)).map_err(io_error("chmod", temp.path()))?;
        Self::launch(temp.path().join("data"), Some(temp)).await
    }

    /// One throwaway cluster per process, started on first use and stopped (its directory removed) at process
    /// exit. Usable from any number of runtimes at once, e.g. parallel `#[tokio::test]`s.
    pub async fn shared_throwaway() -> Result<&'static Self, PgError> {
        SHARED
            .get_or_try_init(|| async {
                let pg = Self::start_throwaway().await?;
                stop_shared_at_exit();
                Ok(pg)
            })
            .await
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `postgres://postgres@127.0.0.1:<port>/<dbname>` (trust authentication, no password).
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Connection settings for `dbname`.
    pub fn config(&self, dbname: &str) -> Config {
        client_config(self.port, dbname)
    }

    /// Stops postgres (fast shutdown, SIGKILL after 10 s) and removes a throwaway directory.
    pub async fn stop(self) -> Result<(), PgError> {
        tokio::task::spawn_blocking(move || self.shutdown()).await?
    }

    /// Idempotent, takes `&self` so that the shared cluster, which lives in a static, can be stopped at exit.
    fn shutdown(&self) -> Result<(), PgError> {
        if self.postmaster.stop() {
            tracing::info!(data_dir = %self.data_dir.display(), port = self.port, "stopped private postgresql");
        }
        match self.temp.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some(temp) => {
                let path = temp.path().to_path_buf();
                temp.close().map_err(io_error("remove", &path))
            }
            None => Ok(()),
        }
    }

    async fn launch(data_dir: PathBuf, temp: Option<TempDir>) -> Result<Self, PgError> {
        let durable = temp.is_none();
        let dir = data_dir.clone();
        let setup = tokio::task::spawn_blocking(move || prepare(&dir, durable)).await??;
        let log_path = log_path(&data_dir);
        let mut attempt = 1;
        loop {
            let port = TcpListener::bind(("127.0.0.1", 0))
                .and_then(|listener| listener.local_addr())
                .map_err(io_error("find a free port with", Path::new("127.0.0.1:0")))?
                .port();
            let (log, offset) = open_log(&log_path)?;
            let postmaster = Postmaster::spawn(setup.postgres(&data_dir, port, durable, log)?)?;
            let reason = match wait_ready(&postmaster, port).await {
                Ok(()) => {
                    let (user, bin) = (&setup.user_name, setup.bin.display());
                    tracing::info!(data_dir = %data_dir.display(), port, %user, %bin, "started private postgresql");
                    let postmaster = Arc::new(postmaster);
                    return Ok(Self { data_dir, port, postmaster, temp: Mutex::new(temp) });
                }
                Err(reason) => reason,
            };
            let exited = postmaster.exit_status().is_some();
            postmaster.stop();
            let log_tail = log_tail(&log_path, offset);
            if exited && log_tail.contains("Address already in use") && attempt < PORT_ATTEMPTS {
                tracing::debug!(port, "port was taken before postgres bound it, retrying");
                attempt += 1;
                continue;
            }
            return Err(PgError::Start { dir: data_dir, reason, log_tail });
        }
    }
}

impl PrivatePostgres {
    /// Stops postgres (fast shutdown: every connection is closed) and starts it again on the same port and data
    /// directory, as an operator's restart would. For tests of what clients see while the database goes away.
    pub async fn restart(&mut self) -> Result<(), PgError> {
        let old = Arc::clone(&self.postmaster);
        tokio::task::spawn_blocking(move || old.stop()).await?;
        let durable = self.temp.lock().unwrap_or_else(PoisonError::into_inner).is_none();
        let dir = self.data_dir.clone();
        let setup = tokio::task::spawn_blocking(move || prepare(&dir, durable)).await??;
        let log_path = log_path(&self.data_dir);
        let (log, offset) = open_log(&log_path)?;
        let postmaster = Postmaster::spawn(setup.postgres(&self.data_dir, self.port, durable, log)?)?;
        if let Err(reason) = wait_ready(&postmaster, self.port).await {
            postmaster.stop();
            return Err(PgError::Start { dir: self.data_dir.clone(), reason, log_tail: log_tail(&log_path, offset) });
        }
        tracing::info!(data_dir = %self.data_dir.display(), port = self.port, "restarted private postgresql");
        self.postmaster = Arc::new(postmaster);
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "stopping private postgresql");
        }
    }
}

static SHARED: tokio::sync::OnceCell<PrivatePostgres> = tokio::sync::OnceCell::const_new();

/// Statics are never dropped, so the shared cluster is stopped by an `atexit` handler instead.
#[allow(unsafe_code)]
fn stop_shared_at_exit() {
    extern "C" fn stop() {
        if let Some(pg) = SHARED.get()
            && let Err(e) = pg.shutdown()
        {
            tracing::warn!(error = %e, "stopping shared private postgresql");
        }
    }
    // SAFETY: `stop` is a plain `extern "C" fn() ` that lives for the whole program and never unwinds.
    if unsafe { nix::libc::atexit(stop) } != 0 {
        tracing::warn!("cannot register the exit handler; the shared private postgresql stops only via pdeathsig");
    }
}

fn client_config(port: u16, dbname: &str) -> Config {
    let mut config = Config::new();
    config.host("127.0.0.1").port(port).user("postgres").dbname(dbname);
    config
}

/// Polls until postgres accepts connections; gives up at once when it exits.
async fn wait_ready(postmaster: &Postmaster, port: u16) -> Result<(), String> {
    let config = client_config(port, "postgres");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = postmaster.exit_status() {
            return Err(format!("postgres exited ({status})"));
        }
        // bounded as a whole: connect_timeout covers only the TCP connect, and someone else may hold the port
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), config.connect(NoTls)).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not accepting connections after {READY_TIMEOUT:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What postgres runs with.
struct Setup {
    bin: PathBuf,
    /// The user to switch to when we are root.
    user: Option<User>,
    user_name: String,
}

impl Setup {
    /// The postmaster of the cluster in `data_dir` on 127.0.0.1:`port`, logging to `log`.
    fn postgres(&self, data_dir: &Path, port: u16, durable: bool, log: File) -> Result<Command, PgError> {
        let mut cmd = self.command("postgres", log)?;
        cmd.arg("-D").arg(data_dir).arg("-p").arg(port.to_string());
        for setting in ["listen_addresses=127.0.0.1", "unix_socket_directories=", "max_connections=200"] {
            cmd.args(["-c", setting]);
        }
        if !durable {
            for setting in ["fsync=off", "synchronous_commit=off", "full_page_writes=off"] {
                cmd.args(["-c", setting]);
            }
        }
        Ok(cmd)
    }

    fn command(&self, program: &str, log: File) -> Result<Command, PgError> {
        let path = self.bin.join(program);
        let stderr = log.try_clone().map_err(io_error("duplicate the log file for", &path))?;
        let mut cmd = Command::new(path);
        cmd.current_dir("/").stdin(Stdio::null()).stdout(log).stderr(stderr);
        if let Some(user) = &self.user {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        Ok(cmd)
    }
}

/// Finds the binaries, creates and checks the data directory, and runs initdb unless the cluster exists.
fn prepare(dir: &Path, durable: bool) -> Result<Setup, PgError> {
    let bin = find_binaries(env::var_os(BIN_ENV).as_deref(), env::var_os("PATH").as_deref())?;
    let user = if Uid::effective().is_root() {
        let lookup = |name| User::from_name(name).ok().flatten();
        Some(lookup("postgres").or_else(|| lookup("nobody")).ok_or(PgError::NoUser)?)
    } else {
        None
    };
    let (uid, user_name) = match &user {
        Some(u) => (u.uid, u.name.clone()),
        None => (Uid::effective(), format!("uid {}", Uid::effective())),
    };
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    let exists = dir.join("PG_VERSION").exists();
    if let (Some(u), false) = (&user, exists) {
        chown(dir, Some(u.uid), Some(u.gid)).map_err(|e| io_error("chown", dir)(e.into()))?;
    }
    let owner = fs::metadata(dir).map_err(io_error("inspect", dir))?.uid();
    if owner != uid.as_raw() {
        return Err(PgError::WrongOwner { dir: dir.to_path_buf(), owner, user: user_name });
    }
    if let Some(u) = &user {
        check_reachable(dir, u)?;
    }
    let setup = Setup { bin, user, user_name };
    if !exists {
        let log_path = log_path(dir);
        let (log, offset) = open_log(&log_path)?;
        let mut cmd = setup.command("initdb", log)?;
        cmd.arg("-D").arg(dir).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]);
        if !durable {
            cmd.arg("-N");
        }
        let status = cmd.status().map_err(io_error("run", &setup.bin.join("initdb")))?;
        if !status.success() {
            return Err(PgError::InitDb { dir: dir.to_path_buf(), log_tail: log_tail(&log_path, offset) });
        }
    }
    Ok(setup)
}

/// Every ancestor must be searchable by `user`. std drops supplementary groups along with root, so only the
/// primary group counts.
fn check_reachable(dir: &Path, user: &User) -> Result<(), PgError> {
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor).map_err(io_error("inspect", ancestor))?;
        let mode = meta.mode();
        let searchable = mode & 0o001 != 0
            || (meta.uid() == user.uid.as_raw() && mode & 0o100 != 0)
            || (meta.gid() == user.gid.as_raw() && mode & 0o010 != 0);
        if !searchable {
            return Err(PgError::NotReachable {
                data_dir: dir.to_path_buf(),
                blocked: ancestor.to_path_buf(),
                user: user.name.clone(),
            });
        }
    }
    Ok(())
}

/// The `psql` beside the server binaries this process would run (see [`PrivatePostgres::start`]).
pub fn psql() -> Result<PathBuf, PgError> {
    Ok(find_binaries(env::var_os(BIN_ENV).as_deref(), env::var_os("PATH").as_deref())?.join("psql"))
}

/// The override alone when given, else PATH, `pg_config --bindir`, the newest /usr/lib/postgresql/*/bin.
fn find_binaries(override_dir: Option<&OsStr>, path: Option<&OsStr>) -> Result<PathBuf, PgError> {
    let holds_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = override_dir {
        let dir = PathBuf::from(dir);
        return if holds_server(&dir) { Ok(dir) } else { Err(PgError::NoBinariesIn { dir }) };
    }
    let on_path = path.into_iter().flat_map(env::split_paths).find(|dir| holds_server(dir)).map(|dir| {
        // report and use the real directory behind symlinks such as /usr/local/bin/postgres
        match fs::canonicalize(dir.join("postgres")).ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
            Some(real) if holds_server(&real) => real,
            _ => dir,
        }
    });
    let from_pg_config = || {
        let output = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output().ok()?;
        let dir = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
        (output.status.success() && holds_server(&dir)).then_some(dir)
    };
    let newest_packaged = || {
        let version = |name: &str| name.split('.').map(str::parse::<u32>).collect::<Result<Vec<_>, _>>().ok();
        fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|entry| Some((version(entry.file_name().to_str()?)?, entry.path().join("bin"))))
            .filter(|(_, bin)| holds_server(bin))
            .max()
            .map(|(_, bin)| bin)
    };
    on_path.or_else(from_pg_config).or_else(newest_packaged).ok_or(PgError::NoBinaries)
}

/// Beside, not inside, the data directory: initdb wants an empty directory.
fn log_path(data_dir: &Path) -> PathBuf {
    let mut path = data_dir.as_os_str().to_owned();
    path.push(".log");
    PathBuf::from(path)
}

/// Opens the log for appending and returns where this run's output starts.
fn open_log(path: &Path) -> Result<(File, u64), PgError> {
    let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(io_error("open", path))?;
    let offset = file.seek(SeekFrom::End(0)).map_err(io_error("read", path))?;
    Ok((file, offset))
}

/// The last lines written since `offset`, for error messages.
fn log_tail(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(offset))?;
        f.take(1 << 20).read_to_string(&mut text)
    });
    if let Err(e) = read {
        return format!("(cannot read {}: {e})", path.display());
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Removes throwaway directories whose owning process and postmaster are both gone (best effort).
fn sweep_stale_throwaways(tmp: &Path) {
    let alive = |pid: i32| pid <= 0 || !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH));
    let Ok(entries) = fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name.to_str().and_then(|n| n.strip_prefix(THROWAWAY_PREFIX)?.split('-').next()?.parse().ok());
        let Some(owner) = owner else { continue };
        let path = entry.path();
        let pid_file = fs::read_to_string(path.join("data").join("postmaster.pid")).unwrap_or_default();
        let postmaster = pid_file.lines().next().and_then(|line| line.trim().parse().ok());
        if alive(owner) || postmaster.is_some_and(alive) {
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => tracing::debug!(dir = %path.display(), "removed stale throwaway cluster"),
            Err(e) => tracing::debug!(dir = %path.display(), error = %e, "cannot remove stale throwaway cluster"),
        }
    }
}

/// The postmaster process and the thread that owns it.
#[derive(Debug)]
struct Postmaster {
    pid: u32,
    exited: Arc<OnceLock<ExitStatus>>,
    /// Dropping the sender asks the thread to stop postgres; joining the thread waits until it has.
    supervisor: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl Postmaster {
    fn spawn(mut cmd: Command) -> Result<Self, PgError> {
        let program = PathBuf::from(cmd.get_program());
        cmd.process_group(0); // a terminal's Ctrl-C reaches only us; we stop postgres in order
        die_with_spawning_thread(&mut cmd);
        let (spawned_tx, spawned_rx) = mpsc::sync_channel(1);
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let exited = Arc::new(OnceLock::new());
        let exit_slot = Arc::clone(&exited);
        let thread = thread::Builder::new()
            .name("postmaster".into())
            .spawn(move || match cmd.spawn() {
                Err(e) => drop(spawned_tx.send(Err(e))),
                Ok(child) => {
                    drop(spawned_tx.send(Ok(child.id())));
                    supervise(child, &stop_rx, &exit_slot);
                }
            })
            .map_err(io_error("start a thread for", &program))?;
        let pid = spawned_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the postmaster thread ended early")))
            .map_err(io_error("start", &program))?;
        Ok(Self { pid, exited, supervisor: Mutex::new(Some((stop_tx, thread))) })
    }

    fn exit_status(&self) -> Option<ExitStatus> {
        self.exited.get().copied()
    }

    /// Blocks until postgres has stopped; false when it was stopped before.
    fn stop(&self) -> bool {
        let Some((stop_tx, thread)) = self.supervisor.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return false;
        };
        drop(stop_tx);
        if thread.join().is_err() {
            tracing::warn!(pid = self.pid, "the postmaster thread panicked");
        }
        true
    }
}

impl Drop for Postmaster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs on the spawning thread until the child is reaped: notes an unexpected exit, or on request sends SIGINT
/// (fast shutdown) and, after `STOP_TIMEOUT`, SIGKILL.
fn supervise(mut child: Child, stop: &mpsc::Receiver<()>, exited: &OnceLock<ExitStatus>) {
    let reap = |child: &mut Child| match child.try_wait() {
        Ok(Some(status)) => {
            let _ = exited.set(status);
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "waiting for postgres");
            true
        }
    };
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(POLL) {
        if reap(&mut child) {
            return;
        }
    }
    // pid_t is i32; std converted it to u32
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if reap(&mut child) {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(pid = child.id(), "postgres did not stop within {STOP_TIMEOUT:?}, killing it");
    let _ = child.kill();
    if let Ok(status) = child.wait() {
        let _ = exited.set(status);
    }
}

/// Asks the kernel to SIGINT the postmaster when the thread that spawned it ends. Set in the child after std's
/// setuid, which would clear it.
#[allow(unsafe_code)]
fn die_with_spawning_thread(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the hook runs between fork and exec; it only makes the prctl and getppid system calls, which are
    // async-signal-safe, and builds its errors from raw os codes, so it does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGINT)?;
            // the parent died before prctl took effect: nobody would stop this postmaster
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(io::Error::from(Errno::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn client(pg: &PrivatePostgres) -> tokio_postgres::Client {
        let (client, connection) = pg.config("postgres").connect(NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    }

    fn gone(pid: u32) -> bool {
        matches!(kill(Pid::from_raw(pid as i32), None), Err(Errno::ESRCH))
    }

    /// A temp dir the unprivileged user can traverse.
    fn traversable_tempdir() -> TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    #[tokio::test]
    async fn throwaway_answers_and_leaves_nothing_behind() {
        let pg = PrivatePostgres::start_throwaway().await.expect("start");
        let version: String = client(&pg).await.query_one("select version()", &[]).await.expect("query").get(0);
        assert!(version.starts_with("PostgreSQL"), "{version}");
        assert_eq!(pg.url("x"), format!("postgres://postgres@127.0.0.1:{}/x", pg.port()));
        let (pid, root) = (pg.postmaster.pid, pg.data_dir().parent().expect("parent").to_path_buf());
        assert!(root.file_name().and_then(OsStr::to_str).is_some_and(|n| n.starts_with(THROWAWAY_PREFIX)));
        pg.stop().await.expect("stop");
        assert!(!root.exists(), "{} still exists", root.display());
        assert!(gone(pid), "postmaster {pid} still runs");
    }

    #[tokio::test]
    async fn persistent_cluster_keeps_its_data_and_refuses_a_second_postmaster() {
        let tmp = traversable_tempdir();
        let dir = tmp.path().join("pg");
        let pg = PrivatePostgres::start(&dir).await.expect("first start");
        client(&pg).await.batch_execute("create table t (x int); insert into t values (42)").await.expect("insert");

        let second = PrivatePostgres::start(&dir).await.expect_err("the directory is locked");
        assert!(matches!(second, PgError::Start { .. }), "{second}");
        assert!(second.to_string().contains("postmaster.pid"), "{second}");

        pg.stop().await.expect("stop");
        let pg = PrivatePostgres::start(&dir).await.expect("second start");
        let x: i32 = client(&pg).await.query_one("select x from t", &[]).await.expect("select").get(0);
        assert_eq!(x, 42);
        pg.stop().await.expect("stop");
        assert!(dir.join("PG_VERSION").exists() && log_path(&dir).exists());
    }

    #[tokio::test]
    async fn two_throwaways_run_side_by_side() {
        let (a, b) = tokio::join!(PrivatePostgres::start_throwaway(), PrivatePostgres::start_throwaway());
        let (a, b) = (a.expect("a"), b.expect("b"));
        assert_ne!(a.port(), b.port());
        assert_ne!(a.data_dir(), b.data_dir());
    }

    #[test]
    fn discovery_reports_an_override_without_binaries() {
        let empty = tempfile::tempdir().expect("tempdir");
        let e = find_binaries(Some(empty.path().as_os_str()), env::var_os("PATH").as_deref()).expect_err("empty");
        assert!(matches!(e, PgError::NoBinariesIn { .. }), "{e}");
        assert!(e.to_string().starts_with(&format!("{BIN_ENV}={}", empty.path().display())), "{e}");
        assert!(PgError::NoBinaries.to_string().contains("apt-get install postgresql"));
        // without PATH the fallbacks still find the installed server
        let bin = find_binaries(None, Some(empty.path().as_os_str())).expect("fallbacks");
        assert!(bin.join("initdb").is_file() && bin.join("postgres").is_file(), "{}", bin.display());
    }

    #[test]
    fn root_needs_a_reachable_data_dir() {
        if !Uid::effective().is_root() {
            return;
        }
        let closed = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(closed.path(), Permissions::from_mode(0o700)).expect("chmod");
        let data_dir = closed.path().join("a").join("pg");
        let e = prepare(&data_dir, false).err().expect("not reachable");
        assert!(matches!(&e, PgError::NotReachable { blocked, .. } if blocked == closed.path()), "{e}");
    }

    static SHARED_PORT: Mutex<Option<u16>> = Mutex::new(None);

    async fn same_shared_cluster() {
        let pg = PrivatePostgres::shared_throwaway().await.expect("shared");
        let one: i32 = client(pg).await.query_one("select 1", &[]).await.expect("query").get(0);
        assert_eq!(one, 1);
        let mut seen = SHARED_PORT.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(*seen.get_or_insert(pg.port()), pg.port());
    }

    #[tokio::test]
    async fn shared_throwaway_from_one_runtime() {
        same_shared_cluster().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn shared_throwaway_from_another_runtime() {
        same_shared_cluster().await;
    }
}
