//! What the benches share: the database frame, the bench dataset, the server as a child process, psql's COPY,
//! draining a stream, and the median.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use chrono::{DateTime, Days, NaiveTime, Utc};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::{Response, Status, Streaming, transport::Channel};

use crate::{
    app,
    config::{BenchReplayArgs, DbArgs},
    error::Error,
    generate,
    proto::StreamSummary,
    store::{db::Database, migrate},
};

/// Runs a bench's `measure` over the database of `db` (the private one started when DATABASE_URL is unset),
/// stops it on Ctrl-C or SIGTERM, and always stops what it started.
pub(super) async fn with_database(
    db: &DbArgs,
    measure: impl AsyncFnOnce(&Database) -> Result<(), Error>,
) -> Result<(), Error> {
    let interrupted = app::shutdown_signal()?;
    app::with_database(db, async |db| {
        tokio::select! {
            done = measure(db) => done,
            () = interrupted => Err(Error::Bench("interrupted".to_owned())),
        }
    })
    .await
}

/// The bench dataset, generated on the first run: its range, its series, and the database URL for other
/// processes.
pub(super) struct Dataset {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub series: Vec<String>,
    pub hot: String,
    pub url: String,
}

/// Migrates the database, generates the dataset unless it is there, and describes it.
pub(super) async fn dataset(db: &Database, args: &BenchReplayArgs) -> Result<Dataset, Error> {
    let spec = args.dataset.spec();
    let mut client = db.connect(args.db.connect_timeout).await?;
    migrate::run(&mut client).await?;
    let markets = app::count_markets(&client).await?;
    if markets == 0 {
        tracing::info!(markets = spec.markets, days = spec.days, trades = spec.trades, "generating the dataset");
        let loaded = generate::generate(&mut client, &spec).await?;
        client.batch_execute("ANALYZE").await?;
        tracing::info!(seconds = format!("{:.1}", loaded.elapsed.as_secs_f64()), "dataset loaded");
    } else if markets != i64::from(spec.markets) {
        return Err(Error::Bench(format!(
            "the database holds {markets} markets, not the {} of this dataset: use another --data-dir",
            spec.markets
        )));
    }
    let start = spec.start.and_time(NaiveTime::MIN).and_utc();
    let end = start.checked_add_days(Days::new(u64::from(spec.days))).unwrap_or(start);
    let hot: String = client
        .query_one(
            "SELECT ticker FROM coverage_daily GROUP BY ticker ORDER BY sum(trade_count) DESC, ticker LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    let series: Vec<String> = client
        .query("SELECT DISTINCT series_ticker FROM markets ORDER BY 1", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    drop(client);
    let url = db
        .url(args.db.database_url.as_deref())
        .ok_or_else(|| Error::Bench("no database URL for the server process".to_owned()))?;
    Ok(Dataset { start, end, series, hot, url })
}

/// Starts `serve` as a child process over `url`, connects to it, runs `measure` with the channel, and stops the
/// server; returns what `measure` gave and the server's peak RSS in KiB (its own, as a child process).
pub(super) async fn with_server<T>(
    url: &str,
    measure: impl AsyncFnOnce(Channel) -> Result<T, Error>,
) -> Result<(T, Option<u64>), Error> {
    let (mut server, addr) = spawn_server(url).await?;
    let measured = async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Bench(e.to_string()))?
            .connect()
            .await
            .map_err(|e| Error::Bench(format!("connect to the server: {e}")))?;
        measure(channel).await
    }
    .await;
    let peak_rss = peak_rss_kib(&server);
    let _ = server.start_kill();
    let _ = server.wait().await;
    Ok((measured?, peak_rss))
}

/// Starts `serve` on a free port over `url` and returns it with its address.
async fn spawn_server(url: &str) -> Result<(Child, String), Error> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find the current executable", e))?;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--log", "info"])
        .env("DATABASE_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io("start the server", e))?;
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.split("serving grpc local=").nth(1) {
                return Some(addr.trim().to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| Error::Bench("the server did not start".to_owned()))?;
    // keep draining its log so that it never blocks on a full pipe
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}

/// The server's peak resident set (VmHWM), in KiB.
fn peak_rss_kib(server: &Child) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.id()?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// psql's binary COPY of `select` to /dev/null after the `settings` (`SET ...; SET ...`, or empty): the rows
/// (counted by a second query outside the timing when `count` is set, else 0) and the seconds.
pub(super) async fn psql_copy(
    psql: &PathBuf,
    url: &str,
    select: &str,
    settings: &str,
    count: bool,
) -> Result<(u64, f64), Error> {
    let started = Instant::now();
    let output = Command::new(psql)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url])
        .args(settings.split("; ").filter(|set| !set.is_empty()).flat_map(|set| ["-c", set]))
        .args(["-c", &format!("COPY ({select}) TO STDOUT (FORMAT binary)")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| Error::io(format!("run {}", psql.display()), e))?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err(Error::Bench(format!("psql: {}", String::from_utf8_lossy(&output.stderr).trim())));
    }
    if !count {
        return Ok((0, seconds));
    }
    // psql does not count COPY TO STDOUT rows in -q mode: count them once, outside the timing
    let counted = Command::new(psql)
        .args(["-X", "-q", "-t", "-A", "-d", url])
        .args(settings.split("; ").filter(|set| !set.is_empty()).flat_map(|set| ["-c", set]))
        .args(["-c", &format!("SELECT count(*) FROM ({select}) AS s")])
        .output()
        .await
        .map_err(|e| Error::io("count rows with psql", e))?;
    // the count is the last line (a setting's SELECT prints its value first)
    let rows = String::from_utf8_lossy(&counted.stdout).lines().last().unwrap_or("").trim().parse().unwrap_or(0);
    Ok((rows, seconds))
}

/// What a data message of a drained stream held.
pub(super) enum Drained {
    /// Items, and a checksum of a value of each (so that the decoding cannot be skipped).
    Items(u64, i64),
    Summary(StreamSummary),
    Nothing,
}

/// Reads the server stream `rpc` answered to the end, decoding every message and touching every item through
/// `items`; checks the count against the summary: (items, seconds).
pub(super) async fn drain<M>(
    rpc: &str,
    answer: impl Future<Output = Result<Response<Streaming<M>>, Status>>,
    mut items: impl FnMut(M) -> Drained,
) -> Result<(u64, f64), Error> {
    let failed = |e: Status| Error::Bench(format!("{rpc}: {} {}", e.code(), e.message()));
    let started = Instant::now();
    let mut messages = answer.await.map_err(failed)?.into_inner();
    let (mut count, mut checksum) = (0u64, 0i64);
    let mut summary = None;
    while let Some(message) = messages.message().await.map_err(failed)? {
        match items(message) {
            Drained::Items(n, sum) => {
                count += n;
                checksum = checksum.wrapping_add(sum);
            }
            Drained::Summary(s) => summary = Some(s),
            Drained::Nothing => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let summary = summary.ok_or_else(|| Error::Bench(format!("{rpc} ended without its summary")))?;
    if summary.item_count as u64 != count {
        return Err(Error::Bench(format!("{rpc}: the summary says {} items, received {count}", summary.item_count)));
    }
    tracing::debug!(checksum, "decoded");
    Ok((count, seconds))
}

/// The median of `values`; 0 for none.
pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
