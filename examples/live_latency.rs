//! The live path's latency: from a trade's frame leaving the fake Kalshi WebSocket to the trade being readable by
//! StreamTrades, at a steady rate of trades per second (`--rates`), with `collect live`'s default batching (1,000
//! messages or 250 ms), p50 / p99 / max per run and their medians over `--runs`, each run on a fresh database.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release --example live_latency -- --rates 1000,10000 --seconds 10 --runs 3
//! ```
//!
//! The fakes are the tests' (tests/common/kalshi_fake.rs for the REST definitions, tests/common/kalshi_ws_fake.rs
//! for the feed); the recorder and a gRPC server run in this process. A poller calls StreamTrades from a second
//! before the latest trade it saw, again and again, and notes when each trade first arrives: the figures include
//! up to one poll's time (printed as the resolution), so they bound the latency from above.

#[path = "support/fresh_db.rs"]
mod fresh_db;
#[path = "../tests/common/kalshi_fake.rs"]
#[allow(dead_code, unreachable_pub)]
mod kalshi_fake;
#[path = "../tests/common/kalshi_ws_fake.rs"]
#[allow(dead_code, unreachable_pub)]
mod kalshi_ws_fake;

use std::{
    collections::HashMap,
    num::NonZeroU32,
    time::{Duration, Instant},
};

use chrono::{TimeZone, Utc};
use clap::Parser;
use kalshi_fake::{Faults, KalshiData, KalshiFake};
use kalshi_replay::{
    collect::{auth::ApiKey, live, rest},
    proto::{StreamTradesRequest, replay_service_client::ReplayServiceClient, stream_trades_response::Payload},
    server::{self, Pools, ServerOptions},
    store::db,
};
use kalshi_ws_fake::{KalshiWsFake, TEST_KEY_ID, WsOptions, test_key_path};
use prost_types::Timestamp;

#[derive(Debug, Parser)]
struct Args {
    /// Trades per second, each rate measured on its own (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    rates: Vec<u32>,
    /// Seconds of trades per run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

use fresh_db::{Error, fresh};

/// One run's latencies, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Figures {
    p50: f64,
    p99: f64,
    max: f64,
    poll: f64,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL to a server where databases may be made")?;
    let start = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).single().ok_or("time")?;
    let data = KalshiData::generate(42, 1, 4, 5, 10, start, 4);
    let series = data.series[0]["ticker"].as_str().ok_or("series")?.to_owned();
    let tickers = KalshiWsFake::active_tickers(&data.markets);
    let rest = KalshiFake::start(data, Faults::default()).await;
    println!(
        "{} markets; trades from the fake WebSocket to StreamTrades; medians of {} runs",
        tickers.len(),
        args.runs
    );
    for &rate in &args.rates {
        let mut runs = Vec::new();
        for run in 0..args.runs {
            let name = format!("live_latency_{}_{rate}_{run}", std::process::id());
            let figures = fresh(&url, &name, async |database| {
                measure(database, &rest, &tickers, &series, rate, args.seconds).await
            })
            .await?;
            eprintln!(
                "{rate} trades/s run {}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (poll {:.0} ms)",
                run + 1,
                figures.p50,
                figures.p99,
                figures.max,
                figures.poll
            );
            runs.push(figures);
        }
        let median = |f: fn(&Figures) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{rate:>6} trades/s: p50 {:>5.0} ms  p99 {:>5.0} ms  max {:>5.0} ms  (poll resolution {:.0} ms)",
            median(|f| f.p50),
            median(|f| f.p99),
            median(|f| f.max),
            median(|f| f.poll)
        );
    }
    Ok(())
}

/// One run: the recorder and a server on `database`, `rate` trades a second for `seconds`, polled.
async fn measure(
    database: &db::Database,
    rest_fake: &KalshiFake,
    tickers: &[String],
    series: &str,
    rate: u32,
    seconds: u32,
) -> Result<Figures, Error> {
    let ws = KalshiWsFake::start(
        tickers.to_vec(),
        WsOptions { ping_interval: Duration::from_secs(10), ..WsOptions::default() },
    )
    .await;
    let pools = Pools::open(database, 4, 2, Duration::from_secs(30)).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server::run(listener, pools, ServerOptions::default(), async {
        let _ = server_stopped.await;
    }));
    let (stop_recorder, recorder_stopped) = tokio::sync::oneshot::channel::<()>();
    let recorder = {
        let pool = database.pool(3, Duration::from_secs(30)).await?;
        let policy = rest::Policy {
            rate: NonZeroU32::new(1000).ok_or("rate")?,
            timeout: Duration::from_secs(10),
            max_retries: 3,
            backoff: Duration::from_millis(100),
        };
        let client = rest::KalshiRest::new(&rest_fake.base_url, policy)?;
        let key = ApiKey::from_file(TEST_KEY_ID, &test_key_path())?;
        let options = live::Options { ws_url: ws.url(), series: vec![series.to_owned()], ..live::Options::default() };
        tokio::spawn(async move {
            live::run(&pool, &client, Some(&key), &options, async {
                let _ = recorder_stopped.await;
            })
            .await
        })
    };
    for channel in ["trade", "orderbook_delta", "market_lifecycle_v2"] {
        ws.wait_for_subscribers(channel, 1, Duration::from_secs(30)).await;
    }
    let count = (rate * seconds) as usize;
    let mut client = ReplayServiceClient::connect(format!("http://{addr}")).await?;
    let mut seen: HashMap<String, Instant> = HashMap::new();
    // the latest trade time seen: each poll reads from a second before it, not the whole run again
    let mut latest = Utc::now().timestamp_micros();
    let mut polls = Vec::new();
    let emitting = ws.emit_trades_at(f64::from(rate), count);
    let mut emitting = std::pin::pin!(emitting);
    let mut emitted = false;
    let deadline = Instant::now() + Duration::from_secs(u64::from(seconds) + 60);
    while seen.len() < count {
        if Instant::now() > deadline {
            return Err(format!("{} of {count} trades readable after a minute", seen.len()).into());
        }
        // the poll runs while the fake emits: both are polled by this task
        let poll = poll(&mut client, series, &mut seen, &mut latest);
        let polled = if emitted {
            poll.await?
        } else {
            tokio::select! {
                () = &mut emitting => { emitted = true; continue; }
                polled = poll => polled?,
            }
        };
        polls.push(polled);
    }
    let mut latencies: Vec<f64> = seen
        .iter()
        .filter_map(|(id, at)| ws.sent_at(id).map(|sent| at.saturating_duration_since(sent).as_secs_f64() * 1e3))
        .collect();
    if latencies.len() != count {
        return Err(format!("{} of {count} trades have a send time", latencies.len()).into());
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    polls.sort_by(f64::total_cmp);
    let figures = Figures { p50: at(0.5), p99: at(0.99), max: at(1.0), poll: polls[polls.len() / 2] };
    let _ = stop_recorder.send(());
    recorder.await??;
    let _ = stop_server.send(());
    served.await??;
    Ok(figures)
}

/// One StreamTrades call from a second before the `latest` trade time seen (writes commit in the order the
/// recorder received them, so a newly readable trade is not older than that); notes when each new trade arrived.
/// Its duration in ms.
async fn poll(
    client: &mut ReplayServiceClient<tonic::transport::Channel>,
    series: &str,
    seen: &mut HashMap<String, Instant>,
    latest: &mut i64,
) -> Result<f64, Error> {
    let started = Instant::now();
    let from = *latest - 1_000_000;
    let request = StreamTradesRequest {
        series_tickers: vec![series.to_owned()],
        start_time: Some(Timestamp { seconds: from.div_euclid(1_000_000), nanos: 0 }),
        end_time: Some(Timestamp { seconds: Utc::now().timestamp() + 3600, nanos: 0 }),
        ..Default::default()
    };
    let mut stream = client.stream_trades(request).await?.into_inner();
    while let Some(message) = stream.message().await? {
        let arrived = Instant::now();
        if let Some(Payload::Trades(batch)) = message.payload {
            for trade in batch.trades {
                if let Some(time) = trade.time {
                    *latest = (*latest).max(time.seconds * 1_000_000 + i64::from(time.nanos) / 1000);
                }
                seen.entry(trade.trade_id).or_insert(arrived);
            }
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}
