//! `collect backfill` against a fake Kalshi (tests/common/kalshi_fake.rs) that pages with cursors, splits live
//! from historical data at its cutoff, and answers 429s and 500s on a schedule: what the backfill stores is what
//! Kalshi serves, read back over gRPC; a backfill stopped at any page goes on where it stopped; a re-run adds
//! nothing.

mod common;

use std::{collections::BTreeSet, num::NonZeroU32, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use common::{
    TIMEOUT, TestApp,
    kalshi_fake::{Faults, KalshiData, KalshiFake},
};
use kalshi_replay::{
    collect::{
        backfill::{self, Options, Report},
        rest::{KalshiRest, Policy},
    },
    error::Error,
    limits::Limits,
    proto::Trade,
};
use serde_json::Value;

/// One trade as the tests compare them: id, market, time (µs), YES price (µ$), count (centi), side (1 YES, 2 NO).
type Row = (String, String, i64, i64, i64, i32);

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).single().expect("time")
}

fn data() -> KalshiData {
    // 2 series x 2 events x 3 markets, up to 2,500 trades each: several pages of 1,000 per market
    KalshiData::generate(7, 2, 2, 3, 2_500, start(), 4)
}

fn policy(rate: u32) -> Policy {
    Policy {
        rate: NonZeroU32::new(rate).expect("rate"),
        timeout: Duration::from_secs(10),
        max_retries: 6,
        backoff: Duration::from_millis(5),
    }
}

fn options(series: Vec<String>) -> Options {
    Options {
        series,
        concurrency: 3,
        end: Some(start() + chrono::Duration::days(10)),
        limits: Limits::default(),
        // the trade walks' requests and resumption; Kalshi's candles are tests/kalshi_candles.rs's
        candles: Vec::new(),
        ..Default::default()
    }
}

async fn backfill(app: &TestApp, fake: &KalshiFake, options: &Options) -> Result<Report, Error> {
    let pool = app.db.database().pool(8, TIMEOUT).await.expect("pool");
    let rest = KalshiRest::new(&fake.base_url, policy(10_000)).expect("client");
    backfill::run(&pool, &rest, options).await
}

fn series_of(data: &KalshiData) -> Vec<String> {
    data.series.iter().map(|s| s["ticker"].as_str().expect("ticker").to_owned()).collect()
}

/// The fake's trades, as stored rows would read.
fn kalshi_rows(data: &KalshiData) -> BTreeSet<Row> {
    data.trades.iter().map(|t| row(&common::kalshi_trade(t))).collect()
}

fn row(t: &Trade) -> Row {
    let time = t.time.expect("time");
    let micros = time.seconds * 1_000_000 + i64::from(time.nanos) / 1_000;
    (t.trade_id.clone(), t.market_ticker.clone(), micros, t.yes_price_micros, t.count_centi, t.taker_side)
}

/// Every trade of the database, read back with StreamTrades over gRPC.
async fn replayed(app: &TestApp, series: &[String]) -> BTreeSet<Row> {
    let (trades, _) =
        common::series_trades(app, series, start().timestamp() - 86_400, start().timestamp() + 30 * 86_400).await;
    trades.iter().map(row).collect()
}

#[tokio::test]
async fn a_backfill_stores_what_kalshi_serves_through_429s_and_500s() {
    let app = TestApp::start().await;
    let faults =
        Faults { too_many_every: Some(7), retry_after_seconds: 0, server_error_every: Some(11), ..Faults::default() };
    let fake = KalshiFake::start(data(), faults).await;
    let series = series_of(fake.data());
    let report = backfill(&app, &fake, &options(series.clone())).await.expect("backfill");
    let want = kalshi_rows(fake.data());
    assert!(want.len() > 5_000, "a dataset of several pages per market: {}", want.len());
    assert_eq!(replayed(&app, &series).await, want, "the trades replayed are Kalshi's");
    let (trades, summary) =
        common::series_trades(&app, &series, start().timestamp() - 86_400, start().timestamp() + 30 * 86_400).await;
    common::assert_hash_of_kalshi_trades(&fake.data().trades, &trades, &summary);
    assert_eq!(report.stored["trades"].inserted as usize, want.len(), "{report:?}");
    // a 429 every 7th request and a 500 every 11th: about a quarter of the requests are retries
    assert!(report.retries > 0 && report.retries * 3 < report.requests, "{report:?}");
    let db = app.db.client().await;
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) as usize }
    };
    assert_eq!(count("SELECT count(*) FROM markets").await, fake.data().markets.len());
    assert_eq!(count("SELECT count(*) FROM events").await, fake.data().events.len());
    assert_eq!(count("SELECT count(*) FROM series").await, fake.data().series.len());
    let settled = fake.data().markets.iter().filter(|m| m["result"] == "yes" || m["result"] == "no").count();
    assert!(settled > 0, "some markets settled");
    assert_eq!(count("SELECT count(*) FROM settlements").await, settled);
    // both of Kalshi's trade sources were read: the split at the cutoff is the backfill's to join
    assert!(
        fake.requests_to("/trade-api/v2/historical/trades") > 0 && fake.requests_to("/trade-api/v2/markets/trades") > 0
    );

    // again: nothing new, and each finished walk asks only for what came after it
    let before = fake.requests();
    let again = backfill(&app, &fake, &options(series.clone())).await.expect("again");
    assert_eq!(again.stored.get("trades").map_or(0, |s| s.inserted), 0, "{again:?}");
    assert_eq!(replayed(&app, &series).await, want);
    assert!(fake.requests() - before < report.requests / 2, "a re-run reads little: {again:?}");
}

#[tokio::test]
async fn a_backfill_stopped_at_any_page_goes_on_where_it_stopped() {
    let app = TestApp::start().await;
    let fake = KalshiFake::start(data(), Faults::default()).await;
    let series = series_of(fake.data());
    let want = kalshi_rows(fake.data());
    let full = {
        // the pages a whole backfill reads, on a database of its own
        let other = TestApp::start().await;
        let before = fake.requests();
        backfill(&other, &fake, &options(series.clone())).await.expect("whole");
        fake.requests() - before
    };
    // stopped (the future dropped at whatever await it is in, as a killed process stops) twice, each time while a
    // trade walk is under way: its cursor is stored with the pages before it
    let db = app.db.client().await;
    let count = async |sql: &str| -> usize { db.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) as usize };
    let mut stored_before = 0;
    for _ in 0..2 {
        // a write per page, so that a walk's position is stored between its pages
        let selection = Options { rows_per_write: 1, ..options(series.clone()) };
        let mut run = Box::pin(backfill(&app, &fake, &selection));
        let stopped = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                tokio::select! {
                    result = &mut run => return Some(result),
                    () = tokio::time::sleep(Duration::from_millis(2)) => {
                        let stored = count("SELECT count(*) FROM trades").await;
                        if count("SELECT count(*) FROM collect_positions WHERE cursor <> ''").await > 0
                            && stored > stored_before
                        {
                            return None;
                        }
                    }
                }
            }
        })
        .await
        .expect("in time");
        assert!(stopped.is_none(), "the backfill was stopped before its end");
        drop(run);
        let now = replayed(&app, &series).await;
        assert!(now.is_subset(&want) && now.len() > stored_before, "only Kalshi's trades, and more of them");
        stored_before = now.len();
    }
    assert!(stored_before < want.len(), "stopped before the end: {stored_before} of {}", want.len());
    let rest = backfill(&app, &fake, &options(series.clone())).await.expect("the rest");
    assert!(rest.resumed > 0, "{rest:?}");
    assert_eq!(rest.stored["trades"].inserted as usize, want.len() - stored_before, "exactly the rest: {rest:?}");
    assert!(rest.requests < full, "the pages stored before are not read again: {} of {full}", rest.requests);
    assert_eq!(replayed(&app, &series).await, want);
}

#[tokio::test]
async fn the_rate_limit_spaces_the_requests() {
    let app = TestApp::start().await;
    let fake = KalshiFake::start(KalshiData::generate(3, 1, 1, 2, 50, start(), 2), Faults::default()).await;
    let pool = app.db.database().pool(4, TIMEOUT).await.expect("pool");
    let rest = KalshiRest::new(&fake.base_url, policy(20)).expect("client");
    let started = std::time::Instant::now();
    let report = backfill::run(&pool, &rest, &options(series_of(fake.data()))).await.expect("backfill");
    let elapsed = started.elapsed().as_secs_f64();
    assert!(report.requests >= 8, "{report:?}");
    // 20 a second, the first at once
    assert!(elapsed >= (report.requests - 1) as f64 / 20.0 * 0.95, "{} requests in {elapsed:.2} s", report.requests);
}

#[tokio::test]
async fn unknown_tickers_and_kalshis_errors_are_named() {
    let app = TestApp::start().await;
    let fake = KalshiFake::start(KalshiData::generate(3, 1, 1, 1, 10, start(), 1), Faults::default()).await;
    let err = backfill(&app, &fake, &options(vec!["KXNOSUCH".into()])).await.expect_err("unknown series");
    assert_eq!(err.to_string(), "unknown series ticker (at Kalshi): KXNOSUCH");
    let markets = Options { markets: vec!["KXNOSUCH-1".into()], ..options(vec![]) };
    let err = backfill(&app, &fake, &markets).await.expect_err("unknown market");
    assert_eq!(err.to_string(), "unknown market ticker (at Kalshi): KXNOSUCH-1");
    // a server that always fails: the retries end, and the error names the URL and Kalshi's answer
    let failing = KalshiFake::start(
        KalshiData::generate(3, 1, 1, 1, 10, start(), 1),
        Faults { server_error_every: Some(1), ..Faults::default() },
    )
    .await;
    let err = backfill(&app, &failing, &options(series_of(failing.data()))).await.expect_err("5xx");
    let text = err.to_string();
    assert!(
        text.starts_with("kalshi: http://127.0.0.1:") && text.contains("500") && text.contains("after 6 retries"),
        "{text}"
    );
}

/// The command line: `collect backfill` against the fake, its summary, and a selection-less call refused.
#[tokio::test]
async fn the_command_backfills_and_prints_its_summary() {
    let app = TestApp::start().await;
    let fake = KalshiFake::start(KalshiData::generate(5, 1, 1, 4, 300, start(), 2), Faults::default()).await;
    let series = series_of(fake.data());
    let url = common::url_of(&app.db.config);
    let run = |args: Vec<String>| {
        let url = url.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_kalshi-replay"))
                .args(["collect", "backfill", "--database-url", &url])
                .args(args)
                .env_remove("DATABASE_URL")
                .output()
                .await
                .expect("run")
        }
    };
    let mut args = vec!["--base-url".to_owned(), fake.base_url.clone(), "--rate".into(), "1000".into()];
    args.extend(series.iter().flat_map(|s| ["--series".to_owned(), s.clone()]));
    let output = run(args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let want = kalshi_rows(fake.data());
    assert!(stdout.starts_with("backfilled 4 markets in "), "{stdout}");
    assert!(stdout.contains(&format!("  trades: {} inserted, 0 updated", want.len())), "{stdout}");
    assert_eq!(replayed(&app, &series).await, want);
    let refused = run(vec!["--base-url".into(), fake.base_url.clone()]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("selection: name at least one --series, --category, --event or --market"), "{stderr}");
}

/// A Kalshi that takes a request and then keeps the client waiting: the request times out (--request-timeout) and
/// goes again, and the backfill stores everything.
#[tokio::test]
async fn a_stalled_request_times_out_and_goes_again() {
    let app = TestApp::start().await;
    let stall = Duration::from_secs(30);
    let faults = Faults { stall_every: Some(4), stall, ..Faults::default() };
    let fake = KalshiFake::start(KalshiData::generate(3, 1, 1, 3, 1_500, start(), 2), faults).await;
    let series = series_of(fake.data());
    let pool = app.db.database().pool(4, TIMEOUT).await.expect("pool");
    let timeout = Duration::from_millis(300);
    let rest = KalshiRest::new(&fake.base_url, Policy { timeout, ..policy(10_000) }).expect("client");
    let started = std::time::Instant::now();
    let report = backfill::run(&pool, &rest, &options(series.clone())).await.expect("backfill");
    // each stalled request cost its timeout and a backoff, never the stall
    assert!(started.elapsed() < stall, "{:?}", started.elapsed());
    let stalled = fake.requests() / 4;
    assert!(stalled >= 3 && report.retries >= stalled, "{stalled} stalled requests, {report:?}");
    assert_eq!(replayed(&app, &series).await, kalshi_rows(fake.data()));
}

/// A 429's Retry-After is waited out before the request goes again.
#[tokio::test]
async fn a_429_waits_its_retry_after() {
    let app = TestApp::start().await;
    let faults =
        Faults { too_many_every: Some(3), retry_after_seconds: 1, server_error_every: None, ..Faults::default() };
    let fake = KalshiFake::start(KalshiData::generate(9, 1, 1, 1, 20, start(), 1), faults).await;
    let started = std::time::Instant::now();
    let report = backfill(&app, &fake, &options(series_of(fake.data()))).await.expect("backfill");
    let elapsed = started.elapsed();
    assert!(report.retries >= 1, "{report:?}");
    assert!(elapsed >= Duration::from_secs(report.retries), "{} retries in {elapsed:?}", report.retries);
    assert_eq!(replayed(&app, &series_of(fake.data())).await, kalshi_rows(fake.data()));
}

/// --event and --market select just their trades, with their hierarchy (series, event) stored too.
#[tokio::test]
async fn an_event_or_a_market_selects_its_own_trades() {
    let fake = KalshiFake::start(KalshiData::generate(11, 2, 2, 4, 300, start(), 3), Faults::default()).await;
    let data = fake.data();
    let event = data.events[1]["event_ticker"].as_str().expect("event").to_owned();
    let ticker_of = |m: &Value| m["ticker"].as_str().expect("ticker").to_owned();
    let event_markets: BTreeSet<String> =
        data.markets.iter().filter(|m| m["event_ticker"] == event.as_str()).map(ticker_of).collect();
    let all = kalshi_rows(data);
    let market = data
        .markets
        .iter()
        .filter(|m| m["event_ticker"] != event.as_str())
        .map(ticker_of)
        .find(|t| all.iter().any(|r| &r.1 == t))
        .expect("a market of another event with trades");
    for (selection, tickers) in [
        (Options { events: vec![event.clone()], ..options(vec![]) }, event_markets.clone()),
        (Options { markets: vec![market.clone()], ..options(vec![]) }, BTreeSet::from([market.clone()])),
    ] {
        let app = TestApp::start().await;
        backfill(&app, &fake, &selection).await.expect("backfill");
        let want: BTreeSet<Row> = all.iter().filter(|r| tickers.contains(&r.1)).cloned().collect();
        assert!(!want.is_empty() && want.len() < all.len(), "{selection:?}: some of the trades");
        let db = app.db.client().await;
        let stored: Vec<String> = db
            .query("SELECT ticker FROM markets ORDER BY 1", &[])
            .await
            .expect("markets")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(tickers.iter().all(|t| stored.contains(t)), "{selection:?}: markets {stored:?}");
        let series: i64 = db.query_one("SELECT count(*) FROM series", &[]).await.expect("series").get(0);
        assert_eq!(series, 1, "{selection:?}: the series of the selection");
        let trades = db
            .query("SELECT trade_id FROM trades ORDER BY 1", &[])
            .await
            .expect("trades")
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<BTreeSet<_>>();
        assert_eq!(trades, want.iter().map(|r| r.0.clone()).collect(), "{selection:?}");
    }
}
