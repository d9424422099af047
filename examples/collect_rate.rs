//! The backfill's throughput: trades/s that `collect backfill` stores from a fake Kalshi with no rate limit,
//! side by side in one run with `import` of the same trades as Kalshi's REST pages in files (the reference: the
//! same conversion and write core without HTTP), medians of `--runs`, each run on fresh databases.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release --example collect_rate -- --markets 40 --trades-per-market 5000 --runs 3
//! ```
//!
//! The fake is the tests' (tests/common/kalshi_fake.rs): pages of 1,000 trades, newest first, over HTTP/1.1 on
//! the loopback. It needs a PostgreSQL server (`DATABASE_URL`) where it may create and drop databases.

#[path = "support/fresh_db.rs"]
mod fresh_db;
#[path = "../tests/common/kalshi_fake.rs"]
#[allow(dead_code, unreachable_pub)]
mod kalshi_fake;

use std::{num::NonZeroU32, path::Path, time::Duration, time::Instant};

use chrono::{TimeZone, Utc};
use clap::Parser;
use kalshi_fake::{Faults, KalshiData, KalshiFake};
use kalshi_replay::{
    collect::{backfill, rest},
    import,
    limits::Limits,
};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Markets (over 4 series of 5 events each, so a multiple of 20 reads best).
    #[arg(long, default_value_t = 40)]
    markets: usize,
    /// The most trades of one market (each gets between 0 and this; about half of it on average).
    #[arg(long, default_value_t = 5000)]
    trades_per_market: usize,
    /// Markets whose trades the backfill fetches at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

use fresh_db::{Error, fresh};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL to a server where databases may be made")?;
    let events = args.markets.div_ceil(20).max(1);
    let start = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).single().ok_or("time")?;
    let data = KalshiData::generate(42, 4, 5, events, args.trades_per_market, start, 20);
    let series: Vec<String> = data.series.iter().filter_map(|s| s["ticker"].as_str().map(str::to_owned)).collect();
    let trades = data.trades.len();
    let files = tempfile::tempdir()?;
    write_pages(&data, files.path())?;
    let fake = KalshiFake::start(data, Faults::default()).await;
    let (mut collected, mut imported) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        // in turn, so that the machine's noise spreads over both
        let seconds = fresh(&url, &format!("collect_rate_{}_{run}_c", std::process::id()), async |database| {
            let pool = &database.pool(8, Duration::from_secs(30)).await?;
            let policy = rest::Policy {
                rate: NonZeroU32::new(1_000_000).ok_or("rate")?,
                timeout: Duration::from_secs(30),
                max_retries: 3,
                backoff: Duration::from_millis(100),
            };
            let client = rest::KalshiRest::new(&fake.base_url, policy)?;
            let options = backfill::Options {
                series: series.clone(),
                concurrency: args.concurrency,
                end: Some(start + chrono::Duration::days(40)),
                limits: Limits::default(),
                // trades only: the reference imports the same trade pages
                candles: Vec::new(),
                ..Default::default()
            };
            let started = Instant::now();
            let report = backfill::run(pool, &client, &options).await?;
            all_stored("the backfill", &report.stored, trades)?;
            Ok(started.elapsed().as_secs_f64())
        })
        .await?;
        collected.push(trades as f64 / seconds);
        let seconds = fresh(&url, &format!("collect_rate_{}_{run}_i", std::process::id()), async |database| {
            let pool = &database.pool(8, Duration::from_secs(30)).await?;
            let options = import::Options {
                paths: vec![files.path().to_owned()],
                skip_bad: false,
                progress: import::ProgressMode::Off,
                limits: Limits::default(),
            };
            let started = Instant::now();
            let report = import::run(pool, &options).await?;
            all_stored("the import", &report.stored, trades)?;
            Ok(started.elapsed().as_secs_f64())
        })
        .await?;
        imported.push(trades as f64 / seconds);
        eprintln!("run {}: backfill {:.0} trades/s, import {:.0} trades/s", run + 1, collected[run], imported[run]);
    }
    let (c, i) = (median(collected), median(imported));
    println!("{trades} trades of {} markets; medians of {} runs", args.markets, args.runs);
    println!("collect backfill (fake Kalshi, no rate limit)  {c:>10.0} trades/s");
    println!("import of the same pages as files              {i:>10.0} trades/s");
    println!("ratio backfill / import: {:.2} x", c / i);
    println!("fake requests served: {}", fake.requests());
    Ok(())
}

/// Kalshi's REST pages of `data` as files: the series, events and markets, and one trades page per market.
fn write_pages(data: &KalshiData, dir: &Path) -> Result<(), Error> {
    std::fs::write(dir.join("0-series.json"), json!({ "series": data.series }).to_string())?;
    std::fs::write(dir.join("1-events.json"), json!({ "events": data.events, "cursor": "" }).to_string())?;
    std::fs::write(dir.join("2-markets.json"), json!({ "markets": data.markets, "cursor": "" }).to_string())?;
    let mut by_market: std::collections::BTreeMap<&str, Vec<&serde_json::Value>> = Default::default();
    for t in &data.trades {
        by_market.entry(t["ticker"].as_str().unwrap_or_default()).or_default().push(t);
    }
    for (n, (_, trades)) in by_market.iter().enumerate() {
        std::fs::write(
            dir.join(format!("3-trades-{n:05}.json")),
            json!({ "trades": trades, "cursor": "" }).to_string(),
        )?;
    }
    Ok(())
}

/// Fails unless `stored` holds every one of the `trades` as newly inserted.
fn all_stored(
    what: &str,
    stored: &std::collections::BTreeMap<&'static str, kalshi_replay::ingest::write::Stored>,
    trades: usize,
) -> Result<(), Error> {
    let inserted = stored.get("trades").map_or(0, |s| s.inserted);
    if inserted as usize != trades {
        return Err(format!("{what} stored {inserted} of {trades} trades").into());
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
