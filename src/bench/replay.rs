//! `bench replay`: StreamTrades against `psql`'s binary COPY of the same rows, in one run.
//!
//! The server runs as a child process (`serve`) so that its peak RSS is its own. Each run measures, in turn:
//! B, psql `COPY (<the stream's SELECT>) TO STDOUT (FORMAT binary)` to /dev/null, under the stream's planner
//! settings; A, StreamTrades over the whole range and every market to a tonic client that decodes every trade,
//! in the rows and in the columns layout; and both again for the busiest market alone. The report gives medians
//! of the runs and the ratios A/B of trades per second.

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
use tonic::transport::Channel;

use crate::{
    app,
    config::{BenchReplayArgs, DbArgs},
    error::Error,
    generate,
    proto::{Layout, StreamTradesRequest, replay_service_client::ReplayServiceClient, stream_trades_response::Payload},
    replay::snapshot::PLAN_SETTINGS,
    replay::trades,
    store::db::Database,
    store::migrate,
    store::pg,
};

/// `bench replay`.
pub async fn run(args: BenchReplayArgs) -> Result<(), Error> {
    with_database(&args.db, async |db| measure(db, &args).await.map(|report| report.print(args.json))).await
}

/// Runs a bench's `measure` over the database of `db` (the private one started when DATABASE_URL is unset),
/// stops it on Ctrl-C or SIGTERM, and always stops what it started.
pub(crate) async fn with_database(
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

/// What one run measured: trades and seconds of each case.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    copy: (u64, f64),
    rows: (u64, f64),
    columns: (u64, f64),
    hot_copy: (u64, f64),
    hot_rows: (u64, f64),
}

/// The bench dataset, generated on the first run: its range, its series, and the database URL for other
/// processes.
pub(crate) struct Dataset {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub series: Vec<String>,
    pub hot: String,
    pub url: String,
}

/// Migrates the database, generates the dataset unless it is there, and describes it.
pub(crate) async fn dataset(db: &Database, args: &BenchReplayArgs) -> Result<Dataset, Error> {
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

async fn measure(db: &Database, args: &BenchReplayArgs) -> Result<Report, Error> {
    let Dataset { start, end, series, hot, url } = dataset(db, args).await?;
    let psql = pg::psql()?;
    let all_sql = trades::select_sql(start, end, None, None, None);
    let hot_sql = trades::select_sql(start, end, Some(std::slice::from_ref(&hot)), None, None);
    let (mut server, addr) = spawn_server(&url).await?;
    let measured = async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Bench(e.to_string()))?
            .connect()
            .await
            .map_err(|e| Error::Bench(format!("connect to the server: {e}")))?;
        let client = ReplayServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let request = |layout: Layout, series: Vec<String>, markets: Vec<String>| StreamTradesRequest {
            series_tickers: series,
            market_tickers: markets,
            start_time: Some(crate::time::to_proto(start)),
            end_time: Some(crate::time::to_proto(end)),
            batch_size: args.batch_size,
            layout: layout as i32,
            ..Default::default()
        };
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            let measured = Run {
                copy: copy(&psql, &url, &all_sql).await?,
                rows: stream(client.clone(), request(Layout::Rows, series.clone(), Vec::new())).await?,
                columns: stream(client.clone(), request(Layout::Columns, series.clone(), Vec::new())).await?,
                hot_copy: copy(&psql, &url, &hot_sql).await?,
                hot_rows: stream(client.clone(), request(Layout::Rows, Vec::new(), vec![hot.clone()])).await?,
            };
            tracing::info!(run, ?measured, "measured");
            if measured.rows.0 != measured.copy.0 || measured.columns.0 != measured.copy.0 {
                return Err(Error::Bench(format!(
                    "the stream carried {} / {} trades, COPY {}",
                    measured.rows.0, measured.columns.0, measured.copy.0
                )));
            }
            runs.push(measured);
        }
        Ok(runs)
    }
    .await;
    let peak_rss = peak_rss_kib(&server);
    let _ = server.start_kill();
    let _ = server.wait().await;
    Ok(Report { runs: measured?, peak_rss_kib: peak_rss, hot, batch_size: args.batch_size })
}

/// Starts `serve` on a free port over `url` and returns it with its address.
pub(crate) async fn spawn_server(url: &str) -> Result<(Child, String), Error> {
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

/// psql's binary COPY of `select` to /dev/null, under the stream's planner settings: (rows, seconds).
async fn copy(psql: &PathBuf, url: &str, select: &str) -> Result<(u64, f64), Error> {
    psql_copy(psql, url, select, PLAN_SETTINGS, true).await
}

/// psql's binary COPY of `select` to /dev/null after the `settings` (`SET ...; SET ...`, or empty): the rows
/// (counted by a second query outside the timing when `count` is set, else 0) and the seconds.
pub(crate) async fn psql_copy(
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
        .args(["-X", "-q", "-t", "-A", "-d", url, "-c", &format!("SELECT count(*) FROM ({select}) AS s")])
        .output()
        .await
        .map_err(|e| Error::io("count rows with psql", e))?;
    let rows = String::from_utf8_lossy(&counted.stdout).trim().parse().unwrap_or(0);
    Ok((rows, seconds))
}

/// StreamTrades to the end, decoding and touching every trade: (trades, seconds).
async fn stream(mut client: ReplayServiceClient<Channel>, request: StreamTradesRequest) -> Result<(u64, f64), Error> {
    let failed = |e: tonic::Status| Error::Bench(format!("StreamTrades: {} {}", e.code(), e.message()));
    let started = Instant::now();
    let mut messages = client.stream_trades(request).await.map_err(failed)?.into_inner();
    let (mut count, mut checksum) = (0u64, 0i64);
    let mut summary = None;
    while let Some(message) = messages.message().await.map_err(failed)? {
        match message.payload {
            Some(Payload::Trades(batch)) => {
                for trade in &batch.trades {
                    checksum = checksum.wrapping_add(trade.yes_price_micros ^ trade.count_centi);
                    count += 1;
                }
            }
            Some(Payload::Columns(columns)) => {
                for (price, trade_count) in columns.yes_price_micros.iter().zip(&columns.count_centi) {
                    checksum = checksum.wrapping_add(price ^ trade_count);
                    count += 1;
                }
            }
            Some(Payload::Summary(s)) => summary = Some(s),
            None => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let summary = summary.ok_or_else(|| Error::Bench("the stream ended without its summary".to_owned()))?;
    if summary.item_count as u64 != count {
        return Err(Error::Bench(format!("summary says {} trades, received {count}", summary.item_count)));
    }
    tracing::debug!(checksum, "decoded");
    Ok((count, seconds))
}

/// The server's peak resident set (VmHWM), in KiB.
pub(crate) fn peak_rss_kib(server: &Child) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.id()?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[derive(Debug)]
struct Report {
    runs: Vec<Run>,
    peak_rss_kib: Option<u64>,
    hot: String,
    batch_size: i32,
}

/// The median of trades per second of one case over the runs.
fn median_rate(runs: &[Run], case: impl Fn(&Run) -> (u64, f64)) -> f64 {
    median(runs.iter().map(case).map(|(n, s)| n as f64 / s.max(1e-9)).collect())
}

/// The median of `values`; 0 for none.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

impl Report {
    fn rates(&self) -> [(&'static str, f64, u64); 5] {
        let r = &self.runs;
        let n = |case: fn(&Run) -> (u64, f64)| r.first().map(|run| case(run).0).unwrap_or(0);
        [
            ("B: psql COPY binary, all", median_rate(r, |x| x.copy), n(|x| x.copy)),
            ("A: StreamTrades rows, all", median_rate(r, |x| x.rows), n(|x| x.rows)),
            ("A: StreamTrades columns, all", median_rate(r, |x| x.columns), n(|x| x.columns)),
            ("B: psql COPY binary, hot market", median_rate(r, |x| x.hot_copy), n(|x| x.hot_copy)),
            ("A: StreamTrades rows, hot market", median_rate(r, |x| x.hot_rows), n(|x| x.hot_rows)),
        ]
    }

    fn print(&self, json: bool) {
        let rates = self.rates();
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let (rows, columns, hot) =
            (ratio(rates[1].1, rates[0].1), ratio(rates[2].1, rates[0].1), ratio(rates[4].1, rates[3].1));
        let rss_mb = self.peak_rss_kib.map(|k| k as f64 / 1024.0);
        if json {
            println!(
                "{{\"ratio_rows\": {rows:.3}, \"ratio_columns\": {columns:.3}, \"ratio_hot_rows\": {hot:.3}, \
                 \"trades\": {}, \"hot_market_trades\": {}, \"copy_trades_per_sec\": {:.0}, \
                 \"rows_trades_per_sec\": {:.0}, \"columns_trades_per_sec\": {:.0}, \
                 \"hot_copy_trades_per_sec\": {:.0}, \"hot_rows_trades_per_sec\": {:.0}, \
                 \"server_peak_rss_mb\": {}, \"runs\": {}, \"batch_size\": {}}}",
                rates[0].2,
                rates[3].2,
                rates[0].1,
                rates[1].1,
                rates[2].1,
                rates[3].1,
                rates[4].1,
                rss_mb.map_or("null".to_owned(), |m| format!("{m:.1}")),
                self.runs.len(),
                self.batch_size,
            );
            return;
        }
        println!("StreamTrades vs psql COPY (binary) on the same rows; medians of {} runs", self.runs.len());
        println!("{:<36} {:>10} {:>14}", "case", "trades", "trades/s");
        for (name, rate, trades) in rates {
            println!("{name:<36} {trades:>10} {rate:>14.0}");
        }
        println!("ratio rows A/B:       {rows:.2} x   (goal 1.0 x or better)");
        println!("ratio columns A/B:    {columns:.2} x   (goal 1.3 x or better)");
        println!("ratio hot market A/B: {hot:.2} x   ({})", self.hot);
        match rss_mb {
            Some(mb) => println!("server peak RSS:      {mb:.1} MB (goal under 100 MB)"),
            None => println!("server peak RSS:      unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_rates() {
        let run = |secs: f64| Run { copy: (100, secs), ..Run::default() };
        assert_eq!(median_rate(&[run(1.0), run(4.0), run(2.0)], |r| r.copy), 50.0);
        assert_eq!(median_rate(&[run(1.0), run(2.0)], |r| r.copy), 75.0);
        assert_eq!(median_rate(&[], |r| r.copy), 0.0);
    }
}
