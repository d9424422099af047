//! Memory that no request can grow: the real binary, a real PostgreSQL, real gRPC clients.
//!
//! The server runs as a child process so that its resident memory and CPU time can be read from /proc, and so
//! that a server that breaks its bound can be killed before it takes the machine with it.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::DateTime;
use common::{TestDb, rss_kib, serve_binary, summary_of, wait_until_no_copy};
use kalshi_replay::proto::{
    FillPolicy, Layout, StreamCandlesRequest, StreamTradesRequest, replay_service_client::ReplayServiceClient,
    stream_candles_response::Payload,
};
use prost_types::Timestamp;

/// How much the server may grow over its resident memory at start while serving the stream.
const GROWTH_BOUND_KIB: u64 = 100 * 1024;

fn timestamp(s: &str) -> Timestamp {
    let t = DateTime::parse_from_rfc3339(s).expect("time");
    Timestamp { seconds: t.timestamp(), nanos: 0 }
}

/// The CPU time process `pid` has used, user and system, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // the fields after the command name, which is in parentheses and may hold spaces
    let fields: Vec<&str> = stat.rsplit_once(')').expect("comm").1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; the slice starts at field 3 (state)
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Backends of `database` running a statement.
async fn active_backends(admin: &tokio_postgres::Client, database: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()",
            &[&database],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

fn candles_request(start: &str, end: &str) -> StreamCandlesRequest {
    StreamCandlesRequest {
        market_tickers: vec!["KXOPEN-99".into()],
        start_time: Some(timestamp(start)),
        end_time: Some(timestamp(end)),
        interval_seconds: 1,
        fill_policy: FillPolicy::Previous as i32,
        ..Default::default()
    }
}

/// Issue 14, measured on the old code: one market open until 2099, one trade, one-second candles filled over ten
/// years, read one message a second, took the server from 24 MB to 3.6 GB in 12 s and on to the OOM killer after
/// the client had cancelled, because every filled candle of the gap was made before the first was sent, in a
/// loop that never yielded. Now the fill is paced by the client: the server stays within a fixed bound while
/// the client reads slowly, stops working within a second of the cancel, and a shorter request of the same
/// kind read to its end has every candle.
#[tokio::test]
async fn a_fill_over_years_of_seconds_is_paced_by_the_client_and_stops_when_cancelled() {
    let db = TestDb::migrated().await;
    db.client()
        .await
        .batch_execute(
            "SELECT ensure_daily_partitions('2026-01-05Z', '2026-01-06Z');
             INSERT INTO markets (ticker, event_ticker, series_ticker, status, close_time, updated_at)
             VALUES ('KXOPEN-99', 'KXOPEN', 'KXOPEN', 2, '2099-01-01Z', now());
             INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
             VALUES ('2026-01-05T12:00:00Z', 'KXOPEN-99', 'only', 420000, 100, 1);",
        )
        .await
        .expect("one market, one trade");
    let (mut server, pid, channel) = serve_binary(&db.config).await;
    let start_kib = rss_kib(pid);

    // the watchdog: a server past the bound is killed at once, before it can eat the machine
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(start_kib));
    let killed = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (stop, peak, killed) = (stop.clone(), peak.clone(), killed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return };
                let kib: u64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                peak.fetch_max(kib, Ordering::Relaxed);
                if kib > start_kib + GROWTH_BOUND_KIB {
                    killed.store(true, Ordering::Relaxed);
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    let mut client = ReplayServiceClient::new(channel);
    let mut stream = client
        .stream_candles(candles_request("2026-01-05T00:00:00Z", "2036-01-05T00:00:00Z"))
        .await
        .expect("stream")
        .into_inner();
    let mut received = 0usize;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match stream.message().await {
            Ok(Some(message)) => match message.payload {
                Some(Payload::Candles(batch)) => received += batch.candles.len(),
                other => panic!("a batch of candles, not {other:?}"),
            },
            result => {
                assert!(
                    !killed.load(Ordering::Relaxed),
                    "the server grew past {} MiB over its start ({} MiB) and was killed",
                    GROWTH_BOUND_KIB / 1024,
                    start_kib / 1024
                );
                panic!("the stream ended early: {result:?}");
            }
        }
    }
    let reading_peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "server RSS {} MiB at start, peak {} MiB while a client read {received} candles slowly",
        start_kib / 1024,
        reading_peak / 1024
    );
    assert!(!killed.load(Ordering::Relaxed), "the server passed the memory bound and was killed");
    assert!(reading_peak <= start_kib + GROWTH_BOUND_KIB, "peak {reading_peak} KiB, start {start_kib} KiB");
    assert!(received >= 8, "every message carries candles: {received}");

    // the client goes away: the server stops working on the stream within a second or two
    drop(stream);
    let cancelled = Instant::now();
    let admin = db.admin().await;
    wait_until_no_copy(&admin, &db.name, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ticks, kib) = (cpu_ticks(pid), rss_kib(pid));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (busy, grown) = (cpu_ticks(pid) - ticks, rss_kib(pid).saturating_sub(kib));
    eprintln!(
        "{:?} after the cancel: {busy} CPU ticks in the last second, RSS {} MiB",
        cancelled.elapsed(),
        rss_kib(pid) / 1024
    );
    // clock ticks are 1/100 s: a server still folding candles would use about 100 in a second
    assert!(busy <= 10, "the server still works for a cancelled stream: {busy} ticks in one second");
    assert!(grown <= 4 * 1024, "RSS still grows after the cancel: +{grown} KiB");
    assert_eq!(active_backends(&admin, &db.name).await, 0, "no statement of the cancelled stream still runs");

    // the same kind of request over one day, read to its end: the traded second, then every second filled
    let day = client
        .stream_candles(candles_request("2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z"))
        .await
        .expect("a second stream")
        .into_inner();
    let messages = common::collect(day).await.expect("the whole day");
    let candles: Vec<_> = messages
        .iter()
        .filter_map(|m| match &m.payload {
            Some(Payload::Candles(batch)) => Some(batch.candles.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    let noon = DateTime::parse_from_rfc3339("2026-01-05T12:00:00Z").expect("noon").timestamp();
    assert_eq!(candles.len(), 12 * 3600, "noon to midnight, one candle a second");
    assert_eq!(summary_of(&messages).item_count, 12 * 3600);
    assert!(!candles[0].empty && candles[1..].iter().all(|c| c.empty && c.close_micros == 420_000));
    assert!(
        candles.iter().enumerate().all(|(i, c)| c.period_start.as_ref().map(|t| t.seconds) == Some(noon + i as i64)),
        "consecutive seconds from noon"
    );
    assert!(rss_kib(pid) <= start_kib + GROWTH_BOUND_KIB, "after the whole day: {} KiB", rss_kib(pid));

    stop.store(true, Ordering::Relaxed);
    watchdog.await.expect("watchdog");
    server.kill().await.expect("kill server");
}

/// The largest requests the limits allow: 10,000 tickers, the largest batch, a range of fifteen years, over
/// 10,000 markets that all traded; StreamTrades in every layout and StreamCandles filled every second in both of
/// its layouts, each read
/// slowly. The server's memory stays within the same fixed bound for each.
#[tokio::test]
async fn the_largest_allowed_requests_stay_within_a_fixed_bound() {
    let db = TestDb::migrated().await;
    db.client()
        .await
        .batch_execute(
            "SELECT ensure_daily_partitions('2026-01-05Z', '2026-01-06Z');
             INSERT INTO markets (ticker, event_ticker, series_ticker, status, close_time, updated_at)
             SELECT 'KXWIDE-' || lpad(m::text, 5, '0'), 'KXWIDE', 'KXWIDE', 2, '2099-01-01Z', now()
               FROM generate_series(1, 10000) AS m;
             INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
             SELECT '2026-01-05T00:00:00Z'::timestamptz + (i % 3600) * interval '1 second',
                    'KXWIDE-' || lpad((1 + i % 10000)::text, 5, '0'), md5(i::text), 1 + i % 999999, 100, 1
               FROM generate_series(1, 200000) AS i;",
        )
        .await
        .expect("10,000 markets");
    let tickers: Vec<String> = (1..=10_000).map(|m| format!("KXWIDE-{m:05}")).collect();
    let (mut server, pid, channel) = serve_binary(&db.config).await;
    let start_kib = rss_kib(pid);
    let mut client = ReplayServiceClient::new(channel);
    let (start, end) = (timestamp("2021-07-01T00:00:00Z"), timestamp("2036-07-01T00:00:00Z"));

    for layout in [Layout::Rows, Layout::Columns, Layout::Arrow] {
        let request = StreamTradesRequest {
            market_tickers: tickers.clone(),
            start_time: Some(start),
            end_time: Some(end),
            batch_size: 16_384,
            layout: layout as i32,
            ..Default::default()
        };
        let mut stream = client.stream_trades(request).await.expect("trades").into_inner();
        let mut peak = rss_kib(pid);
        while stream.message().await.expect("message").is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            peak = peak.max(rss_kib(pid));
        }
        eprintln!("StreamTrades {layout:?}, 10,000 tickers: RSS peak {} MiB (start {})", peak / 1024, start_kib / 1024);
        assert!(peak <= start_kib + GROWTH_BOUND_KIB, "StreamTrades {layout:?}: peak {peak} KiB");
    }

    for layout in [Layout::Rows, Layout::Arrow] {
        let request = StreamCandlesRequest {
            market_tickers: tickers.clone(),
            start_time: Some(start),
            end_time: Some(end),
            interval_seconds: 1,
            fill_policy: FillPolicy::Previous as i32,
            batch_size: 16_384,
            layout: layout as i32,
            ..Default::default()
        };
        let mut stream = client.stream_candles(request).await.expect("candles").into_inner();
        let mut peak = rss_kib(pid);
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            stream.message().await.expect("message").expect("candles");
            peak = peak.max(rss_kib(pid));
        }
        eprintln!(
            "StreamCandles {layout:?} filled, 10,000 tickers: RSS peak {} MiB (start {})",
            peak / 1024,
            start_kib / 1024
        );
        assert!(peak <= start_kib + GROWTH_BOUND_KIB, "StreamCandles {layout:?}: peak {peak} KiB");
        drop(stream);
        wait_until_no_copy(&db.admin().await, &db.name, Duration::from_secs(2)).await;
    }
    server.kill().await.expect("kill server");
}
