//! `bench ingest`: trades per second into the trades table through IngestTrades (a Rust client streaming to the
//! server as a child process) and through `import` of a JSON-lines file (the binary as a user runs it), against
//! psql's `COPY trades ... FROM STDIN` of the same rows, in one run.
//!
//! The rows are synthetic and deterministic: `--trades` trades over `--markets` markets and `--days` days, in time
//! order as a collector sends them. Before each measurement the trades table (with its coverage and aggregates)
//! is emptied and the partitions of the range exist, so the three write the same rows into the same empty,
//! indexed, partitioned table with the same triggers. The order of the three rotates from run to run. The report
//! gives the medians of the runs and the ratios of trades per second against COPY.
//!
//! It truncates the trades: it refuses a database that holds anything but its own rows.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use chrono::{DateTime, Days, NaiveTime, Utc};
use rand::{Rng, SeedableRng};
use tokio::process::Command;
use tokio_postgres::Client;
use tonic::transport::Channel;

use super::harness::{median, with_database, with_server};
use crate::{
    config::BenchIngestArgs,
    error::Error,
    proto::{IngestTradesRequest, Side, Trade, ingest_service_client::IngestServiceClient},
    store::db::Database,
    store::migrate,
    store::partitions,
    store::pg,
    time,
};

/// The market tickers of the bench rows start with this; any other row makes the bench refuse the database.
const PREFIX: &str = "KXBENCH-";

/// `bench ingest`.
pub async fn run(args: BenchIngestArgs) -> Result<(), Error> {
    with_database(&args.db, async |db| measure(db, &args).await.map(|report| report.print(args.json))).await
}

/// One synthetic trade.
#[derive(Debug, Clone)]
struct Row {
    ts: DateTime<Utc>,
    ticker: String,
    trade_id: String,
    yes_price_micros: i64,
    count_centi: i64,
    yes: bool,
}

/// The rows, in time order: microsecond times, a market and a price per trade, UUID-shaped ids.
fn rows(trades: u64, markets: u32, days: u32, start: DateTime<Utc>) -> Vec<Row> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let span = i64::from(days) * 86_400_000_000;
    let mut times: Vec<i64> = (0..trades).map(|_| rng.random_range(0..span)).collect();
    times.sort_unstable();
    let start = start.timestamp_micros();
    times
        .into_iter()
        .map(|offset| {
            let id: u128 = rng.random();
            let hex = format!("{id:032x}");
            Row {
                ts: DateTime::from_timestamp_micros(start + offset).expect("in range"),
                ticker: format!("{PREFIX}{:04}", rng.random_range(0..markets)),
                trade_id: format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]),
                // whole cents as Kalshi's markets mostly trade, and whole or fractional contracts
                yes_price_micros: rng.random_range(1..100) * 10_000,
                count_centi: if rng.random_bool(0.9) {
                    rng.random_range(1..200) * 100
                } else {
                    rng.random_range(1..20_000)
                },
                yes: rng.random_bool(0.5),
            }
        })
        .collect()
}

/// Micros as a fixed-point dollar string, e.g. 290000 -> "0.290000".
fn dollars(micros: i64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// Centi-contracts as a fixed-point count string, e.g. 1234 -> "12.34".
fn contracts(centi: i64) -> String {
    format!("{}.{:02}", centi / 100, centi % 100)
}

/// COPY's text format of the rows, and a JSON-lines file of REST trade objects of the same rows.
fn write_inputs(rows: &[Row], dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let io = |e| Error::io("write the bench input", e);
    let copy_path = dir.join("trades.copy");
    let jsonl_path = dir.join("trades.jsonl");
    let mut copy = std::io::BufWriter::new(std::fs::File::create(&copy_path).map_err(io)?);
    let mut jsonl = std::io::BufWriter::new(std::fs::File::create(&jsonl_path).map_err(io)?);
    for r in rows {
        let ts = r.ts.format("%Y-%m-%dT%H:%M:%S%.6fZ");
        let side = if r.yes { 1 } else { 2 };
        writeln!(copy, "{ts}\t{}\t{}\t{}\t{}\t{side}", r.ticker, r.trade_id, r.yes_price_micros, r.count_centi)
            .map_err(io)?;
        writeln!(
            jsonl,
            r#"{{"trade_id":"{}","ticker":"{}","count_fp":"{}","yes_price_dollars":"{}","no_price_dollars":"{}","taker_side":"{}","created_time":"{ts}"}}"#,
            r.trade_id,
            r.ticker,
            contracts(r.count_centi),
            dollars(r.yes_price_micros),
            dollars(1_000_000 - r.yes_price_micros),
            if r.yes { "yes" } else { "no" },
        )
        .map_err(io)?;
    }
    copy.flush().map_err(io)?;
    jsonl.flush().map_err(io)?;
    Ok((copy_path, jsonl_path))
}

/// The IngestTrades messages of the rows.
fn requests(rows: &[Row], batch_size: u64) -> Vec<IngestTradesRequest> {
    rows.chunks(batch_size as usize)
        .map(|chunk| IngestTradesRequest {
            trades: chunk
                .iter()
                .map(|r| Trade {
                    trade_id: r.trade_id.clone(),
                    market_ticker: r.ticker.clone(),
                    time: Some(time::to_proto(r.ts)),
                    yes_price_micros: r.yes_price_micros,
                    no_price_micros: 0,
                    count_centi: r.count_centi,
                    taker_side: if r.yes { Side::Yes as i32 } else { Side::No as i32 },
                    ingest_seq: 0,
                })
                .collect(),
        })
        .collect()
}

/// Empties the trades and what the triggers keep of them.
async fn reset(client: &Client) -> Result<(), Error> {
    client.batch_execute("TRUNCATE trades, coverage_daily, trade_minutes, trade_days; CHECKPOINT").await?;
    Ok(())
}

async fn stored(client: &Client) -> Result<u64, Error> {
    let n: i64 = client.query_one("SELECT count(*) FROM trades", &[]).await?.get(0);
    Ok(n as u64)
}

/// What one run measured: seconds of each way.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    copy: f64,
    ingest: f64,
    import: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Copy,
    Ingest,
    Import,
}

async fn measure(db: &Database, args: &BenchIngestArgs) -> Result<Report, Error> {
    let client = db.connect(args.db.connect_timeout).await?;
    let mut migrating = db.connect(args.db.connect_timeout).await?;
    migrate::run(&mut migrating).await?;
    drop(migrating);
    let foreign: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM markets) OR EXISTS (SELECT 1 FROM trades WHERE ticker NOT LIKE $1)",
            &[&format!("{PREFIX}%")],
        )
        .await?
        .get(0);
    if foreign {
        return Err(Error::Bench(
            "the database holds markets or trades of its own, and bench ingest truncates the trades: use an \
             empty database (another --data-dir or --database-url)"
                .to_owned(),
        ));
    }
    let url = db
        .url(args.db.database_url.as_deref())
        .ok_or_else(|| Error::Bench("no database URL for the child processes".to_owned()))?;
    let start = args.start.and_time(NaiveTime::MIN).and_utc();
    let end = start.checked_add_days(Days::new(u64::from(args.days))).unwrap_or(start);
    partitions::ensure_range(&client, start, end).await?;
    tracing::info!(trades = args.trades, "preparing the rows");
    let rows = rows(args.trades, args.markets, args.days, start);
    let dir = tempfile::tempdir().map_err(|e| Error::io("create a temporary directory", e))?;
    let (copy_path, jsonl_path) = write_inputs(&rows, dir.path())?;
    let requests = requests(&rows, args.batch_size);
    drop(rows);
    let psql = pg::psql()?;
    let exe = std::env::current_exe().map_err(|e| Error::io("find the current executable", e))?;
    let expected = args.trades;
    let (runs, peak_rss_kib) = with_server(&url, async |channel| {
        let mut runs = Vec::new();
        for run in 0..args.runs {
            let mut measured = Run::default();
            let mut ways = [Way::Copy, Way::Ingest, Way::Import];
            ways.rotate_left(run as usize % 3);
            for way in ways {
                reset(&client).await?;
                let started = Instant::now();
                match way {
                    Way::Copy => copy_in(&psql, &url, &copy_path).await?,
                    Way::Ingest => ingest(&channel, &requests).await?,
                    Way::Import => import(&exe, &url, &jsonl_path).await?,
                }
                let seconds = started.elapsed().as_secs_f64();
                let n = stored(&client).await?;
                if n != expected {
                    return Err(Error::Bench(format!("{way:?} stored {n} trades, not {expected}")));
                }
                tracing::info!(run, ?way, seconds = format!("{seconds:.2}"), "measured");
                match way {
                    Way::Copy => measured.copy = seconds,
                    Way::Ingest => measured.ingest = seconds,
                    Way::Import => measured.import = seconds,
                }
            }
            runs.push(measured);
        }
        Ok(runs)
    })
    .await?;
    reset(&client).await?;
    Ok(Report { runs, trades: expected, batch_size: args.batch_size, peak_rss_kib })
}

/// psql `COPY trades (...) FROM STDIN` of the text file.
async fn copy_in(psql: &Path, url: &str, path: &Path) -> Result<(), Error> {
    let input = std::fs::File::open(path).map_err(|e| Error::io("open the COPY input", e))?;
    let output = Command::new(psql)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c"])
        .arg("COPY trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side) FROM STDIN")
        .stdin(Stdio::from(input))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| Error::io(format!("run {}", psql.display()), e))?;
    if !output.status.success() {
        return Err(Error::Bench(format!("psql: {}", String::from_utf8_lossy(&output.stderr).trim())));
    }
    Ok(())
}

/// One IngestTrades stream of every message.
async fn ingest(channel: &Channel, requests: &[IngestTradesRequest]) -> Result<(), Error> {
    let stream = tokio_stream::iter(requests.to_vec());
    IngestServiceClient::new(channel.clone())
        .ingest_trades(stream)
        .await
        .map_err(|e| Error::Bench(format!("IngestTrades: {} {}", e.code(), e.message())))?;
    Ok(())
}

/// `kalshi-replay import` of the JSON-lines file.
async fn import(exe: &Path, url: &str, path: &Path) -> Result<(), Error> {
    let output = Command::new(exe)
        .args(["import", "--progress", "off", "--log", "warn"])
        .arg(path)
        .env("DATABASE_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| Error::io("run import", e))?;
    if !output.status.success() {
        return Err(Error::Bench(format!("import: {}", String::from_utf8_lossy(&output.stderr).trim())));
    }
    Ok(())
}

#[derive(Debug)]
struct Report {
    runs: Vec<Run>,
    trades: u64,
    batch_size: u64,
    peak_rss_kib: Option<u64>,
}

impl Report {
    fn rate(&self, way: fn(&Run) -> f64) -> f64 {
        median(self.runs.iter().map(|r| self.trades as f64 / way(r).max(1e-9)).collect())
    }

    fn print(&self, json: bool) {
        let (copy, ingest, import) = (self.rate(|r| r.copy), self.rate(|r| r.ingest), self.rate(|r| r.import));
        let (ratio_ingest, ratio_import) = (ingest / copy.max(1e-9), import / copy.max(1e-9));
        let rss_mb = self.peak_rss_kib.map(|k| k as f64 / 1024.0);
        if json {
            println!(
                "{{\"ratio_ingest\": {ratio_ingest:.3}, \"ratio_import\": {ratio_import:.3}, \"trades\": {}, \
                 \"copy_trades_per_sec\": {copy:.0}, \"ingest_trades_per_sec\": {ingest:.0}, \
                 \"import_trades_per_sec\": {import:.0}, \"server_peak_rss_mb\": {}, \"runs\": {}, \
                 \"batch_size\": {}}}",
                self.trades,
                rss_mb.map_or("null".to_owned(), |m| format!("{m:.1}")),
                self.runs.len(),
                self.batch_size,
            );
            return;
        }
        println!(
            "writes of {} trades into the empty trades table, against psql COPY FROM STDIN; medians of {} runs",
            self.trades,
            self.runs.len()
        );
        println!("{:<40} {:>14}", "way", "trades/s");
        println!("{:<40} {copy:>14.0}", "psql COPY trades FROM STDIN (text)");
        println!("{:<40} {ingest:>14.0}", format!("IngestTrades, {} trades/message", self.batch_size));
        println!("{:<40} {import:>14.0}", "import of JSON lines (REST trades)");
        println!("ratio IngestTrades / COPY: {ratio_ingest:.2} x   (goal 0.5 x or better)");
        println!("ratio import / COPY:       {ratio_import:.2} x   (goal 0.5 x or better)");
        if let Some(mb) = rss_mb {
            println!("server peak RSS:           {mb:.1} MB");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inputs_spell_the_same_exact_values() {
        assert_eq!(
            (dollars(290_000), dollars(10_000), dollars(999_999)),
            ("0.290000".into(), "0.010000".into(), "0.999999".into())
        );
        assert_eq!((contracts(1234), contracts(5), contracts(100)), ("12.34".into(), "0.05".into(), "1.00".into()));
        let start = DateTime::from_timestamp(1_735_689_600, 0).expect("2025-01-01");
        let rows = rows(50, 7, 2, start);
        assert!(rows.windows(2).all(|w| w[0].ts <= w[1].ts), "time order");
        for r in &rows {
            let line = crate::import::kalshi::parse_line(&format!(
                r#"{{"trade_id":"{}","ticker":"{}","count_fp":"{}","yes_price_dollars":"{}","taker_side":"yes","created_time":"{}"}}"#,
                r.trade_id,
                r.ticker,
                contracts(r.count_centi),
                dollars(r.yes_price_micros),
                r.ts.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
            ))
            .expect("parses");
            let [crate::import::kalshi::Record::Trade(t)] = line.as_slice() else { panic!("{line:?}") };
            assert_eq!((t.yes_price_micros, t.count_centi), (r.yes_price_micros, r.count_centi));
            assert_eq!(t.time, Some(time::to_proto(r.ts)));
        }
    }
}
