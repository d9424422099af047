//! Kalshi's own candlesticks end to end: imported from its pages (live, historical and legacy shapes) exactly,
//! backfilled from the fake Kalshi (every field equal to the fake's candles, a re-run fetching only each walk's
//! tail, a stopped run going on where it stopped), and read back with StreamKalshiCandles under the replay
//! contract (order, hash, resume, as_of, errors, bounded memory, cancellation).

mod common;

use std::{num::NonZeroU32, path::Path, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use common::{
    TIMEOUT, TestApp, active_copies, collect, expected_hash,
    kalshi_fake::{FakeCandle, Faults, KalshiData, KalshiFake},
    rss_kib, serve_binary, wait_until_no_copy,
};
use kalshi_replay::{
    collect::{
        backfill::{self, Options, Report},
        rest::{KalshiRest, Policy},
    },
    error::Error,
    import::{self, ProgressMode, kalshi},
    limits::Limits,
    proto::{
        KalshiCandle, Layout, StreamKalshiCandlesRequest, StreamKalshiCandlesResponse, StreamSummary,
        replay_service_client::ReplayServiceClient, stream_kalshi_candles_response::Payload,
    },
};
use prost_types::Timestamp;
use rand::{Rng, SeedableRng};
use tonic::{Code, transport::Channel};

type Client = ReplayServiceClient<Channel>;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).single().expect("time")
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

fn request(markets: &[&str], from: DateTime<Utc>, to: DateTime<Utc>, period: i32) -> StreamKalshiCandlesRequest {
    StreamKalshiCandlesRequest {
        market_tickers: markets.iter().map(|m| (*m).to_owned()).collect(),
        start_time: Some(ts(from.timestamp())),
        end_time: Some(ts(to.timestamp())),
        period_minutes: period,
        ..Default::default()
    }
}

/// Every message of a stream, or its error status.
async fn messages(
    client: &mut Client,
    req: StreamKalshiCandlesRequest,
) -> Result<Vec<StreamKalshiCandlesResponse>, tonic::Status> {
    collect(client.stream_kalshi_candles(req).await?.into_inner()).await
}

fn candles_of(messages: &[StreamKalshiCandlesResponse]) -> Vec<KalshiCandle> {
    messages
        .iter()
        .flat_map(|m| match &m.payload {
            Some(Payload::Candles(batch)) => batch.candles.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn summary(messages: &[StreamKalshiCandlesResponse]) -> StreamSummary {
    match messages.last().and_then(|m| m.payload.as_ref()) {
        Some(Payload::Summary(s)) => s.clone(),
        other => panic!("the last message is not the summary: {other:?}"),
    }
}

/// A fake candle as the stream returns it, without its ingest_seq.
fn proto_of(c: &FakeCandle) -> KalshiCandle {
    KalshiCandle {
        market_ticker: c.ticker.clone(),
        period_minutes: c.period_minutes as i32,
        end_time: Some(ts(c.end)),
        yes_bid_open_micros: c.yes_bid[0],
        yes_bid_high_micros: c.yes_bid[1],
        yes_bid_low_micros: c.yes_bid[2],
        yes_bid_close_micros: c.yes_bid[3],
        yes_ask_open_micros: c.yes_ask[0],
        yes_ask_high_micros: c.yes_ask[1],
        yes_ask_low_micros: c.yes_ask[2],
        yes_ask_close_micros: c.yes_ask[3],
        price_open_micros: c.price[0],
        price_high_micros: c.price[1],
        price_low_micros: c.price[2],
        price_close_micros: c.price[3],
        price_mean_micros: c.price[4],
        price_previous_micros: c.price[5],
        volume_centi: c.volume_centi,
        open_interest_centi: c.open_interest_centi,
        ingest_seq: 0,
    }
}

fn without_seq(candles: &[KalshiCandle]) -> Vec<KalshiCandle> {
    candles.iter().map(|c| KalshiCandle { ingest_seq: 0, ..c.clone() }).collect()
}

async fn import_file(app: &TestApp, path: &Path) -> Result<import::Report, Error> {
    let pool = app.db.database().pool(2, TIMEOUT).await.expect("pool");
    let options = import::Options {
        paths: vec![path.to_owned()],
        skip_bad: false,
        progress: ProgressMode::Off,
        limits: Limits::default(),
    };
    import::run(&pool, &options).await
}

/// One market's hourly candles in the live shape, with sub-cent prices, a period without trades (null prices), and
/// one in the historical and one in the legacy shape.
const PAGES: [(&str, &str); 4] = [
    (
        "live.json",
        r#"{"ticker": "KXBTCD-26JAN0517-T100", "period_interval": 60, "candlesticks": [
          {"end_period_ts": 1767574800,
           "yes_bid": {"open_dollars": "0.4200", "low_dollars": "0.4150", "high_dollars": "0.4385", "close_dollars": "0.4300"},
           "yes_ask": {"open_dollars": "0.4400", "low_dollars": "0.4350", "high_dollars": "0.4500", "close_dollars": "0.4410"},
           "price": {"open_dollars": "0.4310", "low_dollars": "0.4290", "high_dollars": "0.4400", "close_dollars": "0.4355",
                     "mean_dollars": "0.433712", "previous_dollars": "0.4300", "min_dollars": null, "max_dollars": null},
           "volume_fp": "125.50", "open_interest_fp": "3020.00"},
          {"end_period_ts": 1767578400,
           "yes_bid": {"open_dollars": "0.4300", "low_dollars": "0.4300", "high_dollars": "0.4300", "close_dollars": "0.4300"},
           "yes_ask": {"open_dollars": "0.4410", "low_dollars": "0.4410", "high_dollars": "0.4410", "close_dollars": "0.4410"},
           "price": {"open_dollars": null, "low_dollars": null, "high_dollars": null, "close_dollars": null,
                     "mean_dollars": null, "previous_dollars": "0.4355"},
           "volume_fp": "0.00", "open_interest_fp": "3020.00"}]}"#,
    ),
    (
        "historical.json",
        r#"{"ticker": "KXBTCD-26JAN0517-T100", "period_interval": 60, "candlesticks": [
          {"end_period_ts": 1767582000,
           "yes_bid": {"open": "0.4300", "low": "0.0000", "high": "0.4300", "close": "0.0000"},
           "yes_ask": {"open": "0.4410", "low": "0.4410", "high": "1.0000", "close": "1.0000"},
           "price": {"open": "0.4401", "low": "0.4401", "high": "0.4401", "close": "0.4401", "mean": "0.4401", "previous": "0.4355"},
           "volume": "1.01", "open_interest": "3021.01"}]}"#,
    ),
    (
        "market.json",
        r#"{"market": {"ticker": "KXBTCD-26JAN0517-T100", "event_ticker": "KXBTCD-26JAN0517", "status": "active"}}"#,
    ),
    (
        "legacy.json",
        r#"{"ticker": "KXBTCD-26JAN0517-T100", "period_interval": 1440, "candlesticks": [
          {"end_period_ts": 1767657600,
           "yes_bid": {"open": 42, "low": 0, "high": 43, "close": 0},
           "yes_ask": {"open": 44, "low": 44, "high": 100, "close": 100},
           "price": {"open": 43, "low": 43, "high": 44, "close": 44, "mean": 43, "previous": null},
           "volume": 127, "open_interest": 3021}]}"#,
    ),
];

#[tokio::test]
async fn pages_of_every_shape_import_exactly_and_bad_fields_are_named() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().expect("dir");
    for (name, text) in PAGES {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let report = import_file(&app, dir.path()).await.expect("import");
    assert_eq!(report.stored["kalshi_candles"].inserted, 4, "{report:?}");
    let mut client = ReplayServiceClient::new(app.channel().await);
    let (from, to) = (start(), start() + chrono::Duration::days(2));
    let hourly =
        candles_of(&messages(&mut client, request(&["KXBTCD-26JAN0517-T100"], from, to, 60)).await.expect("hours"));
    let expected_first = KalshiCandle {
        market_ticker: "KXBTCD-26JAN0517-T100".into(),
        period_minutes: 60,
        end_time: Some(ts(1_767_574_800)),
        yes_bid_open_micros: 420_000,
        yes_bid_high_micros: 438_500,
        yes_bid_low_micros: 415_000,
        yes_bid_close_micros: 430_000,
        yes_ask_open_micros: 440_000,
        yes_ask_high_micros: 450_000,
        yes_ask_low_micros: 435_000,
        yes_ask_close_micros: 441_000,
        price_open_micros: Some(431_000),
        price_high_micros: Some(440_000),
        price_low_micros: Some(429_000),
        price_close_micros: Some(435_500),
        price_mean_micros: Some(433_712),
        price_previous_micros: Some(430_000),
        volume_centi: 12_550,
        open_interest_centi: 302_000,
        ingest_seq: 0,
    };
    let got = without_seq(&hourly);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], expected_first);
    let quiet = &got[1];
    assert_eq!(
        (quiet.price_open_micros, quiet.price_mean_micros, quiet.price_previous_micros, quiet.volume_centi),
        (None, None, Some(435_500), 0),
        "null prices stay unset, never 0"
    );
    assert_eq!(
        (got[2].yes_bid_close_micros, got[2].yes_ask_close_micros, got[2].volume_centi, got[2].open_interest_centi),
        (0, 1_000_000, 101, 302_101),
        "the historical shape: an empty book side and fixed-point counts"
    );
    let daily =
        candles_of(&messages(&mut client, request(&["KXBTCD-26JAN0517-T100"], from, to, 1440)).await.expect("days"));
    assert_eq!(daily.len(), 1);
    assert_eq!(
        (daily[0].yes_bid_open_micros, daily[0].yes_ask_high_micros, daily[0].price_close_micros),
        (420_000, 1_000_000, Some(440_000))
    );
    assert_eq!(
        (daily[0].price_previous_micros, daily[0].volume_centi, daily[0].open_interest_centi),
        (None, 12_700, 302_100)
    );

    // importing the same pages again stores nothing
    let again = import_file(&app, dir.path()).await.expect("again");
    let stored = again.stored["kalshi_candles"];
    assert_eq!((stored.inserted, stored.updated, stored.skipped), (0, 0, 4), "{again:?}");

    // the multi-market /markets/candlesticks shape: each market's candles under its market_ticker
    let batch = r#"{"period_interval": 1440, "markets": [
        {"market_ticker": "KXA-1", "candlesticks": [{"end_period_ts": 1767657600,
          "yes_bid": {"open_dollars": "0.10", "low_dollars": "0.10", "high_dollars": "0.10", "close_dollars": "0.10"},
          "yes_ask": {"open_dollars": "0.12", "low_dollars": "0.12", "high_dollars": "0.12", "close_dollars": "0.12"},
          "price": {}, "volume_fp": "0.00", "open_interest_fp": "1.00"}]},
        {"market_ticker": "KXA-2", "candlesticks": []}]}"#;
    let records = kalshi::parse_document(&serde_json::from_str(batch).expect("json")).expect("batch");
    let [kalshi::Record::KalshiCandle(one)] = records.as_slice() else { panic!("{records:?}") };
    assert_eq!((one.market_ticker.as_str(), one.period_minutes, one.yes_ask_close_micros), ("KXA-1", 1440, 120_000));
    assert_eq!((one.price_open_micros, one.open_interest_centi), (None, 100));

    // errors name the field's path; a bare Kalshi page (no period) is refused naming period_interval
    let error = |text: &str| match kalshi::parse_document(&serde_json::from_str(text).expect("json")) {
        Ok(records) => panic!("accepted: {records:?}"),
        Err(e) => e.to_string(),
    };
    let bare = r#"{"ticker": "T", "candlesticks": []}"#;
    assert!(error(bare).starts_with("period_interval: is required"), "{}", error(bare));
    let live = PAGES[0].1;
    assert!(
        error(&live.replace("\"period_interval\": 60", "\"period_interval\": 5"))
            .starts_with("period_interval: must be 1, 60 or 1440")
    );
    assert_eq!(
        error(&live.replace("\"0.4385\"", "\"0.4385001\"")),
        "candlesticks[0].yes_bid.high_dollars: \"0.4385001\" has more than 6 decimals"
    );
    assert!(error(&live.replace("\"0.4385\"", "\"0.4385x\"")).starts_with("candlesticks[0].yes_bid.high_dollars: "));
    assert!(error(&live.replace("\"0.4310\"", "0.4310e0")).starts_with("candlesticks[0].price.open_dollars: "));
    assert!(
        error(&live.replace("\"volume_fp\": \"0.00\"", "\"volume_fp\": \"0.001\""))
            .starts_with("candlesticks[1].volume_fp: ")
    );
    assert_eq!(
        error(&live.replace("\"end_period_ts\": 1767578400,", "")),
        "candlesticks[1].end_period_ts: is required"
    );
    assert_eq!(
        error(&live.replace("\"open_dollars\": \"0.4200\",", "")),
        "candlesticks[0].yes_bid.open_dollars: is required"
    );
    assert!(
        error(&PAGES[1].1.replace("\"open\": \"0.4300\"", "\"open\": \"0.4300\", \"open_dollars\": \"0.4200\""))
            .starts_with("candlesticks[0].yes_bid.open: "),
        "a current and a bare field that disagree"
    );
    assert!(error(&PAGES[3].1.replace("\"open\": 42", "\"open\": 42.5")).starts_with("candlesticks[0].yes_bid.open: "));
    // the write core refuses what the parser cannot know: a price above 1 USD, a negative count
    let too_high = dir.path().join("high.json");
    std::fs::write(&too_high, live.replace("\"0.4500\"", "\"1.0100\"")).expect("write");
    let e = import_file(&app, &too_high).await.expect_err("above 1 USD").to_string();
    assert!(e.contains("kalshi_candle.yes_ask_high_micros: must be between 0 and 1000000"), "{e}");
    let negative = dir.path().join("negative.json");
    std::fs::write(&negative, live.replace("\"125.50\"", "\"-1.00\"")).expect("write");
    let e = import_file(&app, &negative).await.expect_err("negative").to_string();
    assert!(e.contains("volume"), "{e}");
}

#[tokio::test]
async fn a_revised_candle_is_a_new_version_and_as_of_pins_the_old_one() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let page = dir.path().join("live.json");
    std::fs::write(&page, PAGES[0].1).expect("write");
    import_file(&app, &page).await.expect("import");
    let market = dir.path().join("market.json");
    std::fs::write(&market, PAGES[2].1).expect("write");
    import_file(&app, &market).await.expect("the market");
    let mut client = ReplayServiceClient::new(app.channel().await);
    let req = request(&["KXBTCD-26JAN0517-T100"], start(), start() + chrono::Duration::days(1), 60);
    let before = messages(&mut client, req.clone()).await.expect("before");
    // Kalshi revised the open candle: more volume, a new close
    std::fs::write(&page, PAGES[0].1.replace("\"volume_fp\": \"0.00\"", "\"volume_fp\": \"2.00\"")).expect("write");
    let revised = import_file(&app, &page).await.expect("revised");
    let stored = revised.stored["kalshi_candles"];
    assert_eq!((stored.inserted, stored.updated, stored.skipped), (0, 1, 1), "{revised:?}");
    let after = candles_of(&messages(&mut client, req.clone()).await.expect("after"));
    assert_eq!(after.len(), 2, "one candle per key, the newest version");
    assert_eq!(after[1].volume_centi, 200);
    assert!(after[1].ingest_seq > candles_of(&before)[1].ingest_seq);
    // pinned to the first stream's watermark: the same messages, byte for byte
    let pinned = StreamKalshiCandlesRequest { as_of_watermark: Some(summary(&before).watermark), ..req };
    let pinned = messages(&mut client, pinned).await.expect("pinned");
    assert_eq!((candles_of(&pinned), summary(&pinned)), (candles_of(&before), summary(&before)));
}

fn data() -> KalshiData {
    // 2 series x 2 events x 3 markets over 4 days, up to 300 trades each
    KalshiData::generate(11, 2, 2, 3, 300, start(), 4)
}

fn policy() -> Policy {
    Policy {
        rate: NonZeroU32::new(10_000).expect("rate"),
        timeout: Duration::from_secs(10),
        max_retries: 6,
        backoff: Duration::from_millis(5),
    }
}

fn options(series: Vec<String>, candles: Vec<i32>) -> Options {
    Options { series, concurrency: 3, end: Some(start() + chrono::Duration::days(10)), candles, ..Default::default() }
}

async fn backfill(app: &TestApp, fake: &KalshiFake, options: &Options) -> Result<Report, Error> {
    let pool = app.db.database().pool(8, TIMEOUT).await.expect("pool");
    let rest = KalshiRest::new(&fake.base_url, policy()).expect("client");
    backfill::run(&pool, &rest, options).await
}

fn series_of(data: &KalshiData) -> Vec<String> {
    data.series.iter().map(|s| s["ticker"].as_str().expect("ticker").to_owned()).collect()
}

fn tickers_of(data: &KalshiData) -> Vec<String> {
    data.markets.iter().map(|m| m["ticker"].as_str().expect("ticker").to_owned()).collect()
}

/// Every candle of the fake for `period`, in the stream's order (end, ticker).
fn fake_candles(data: &KalshiData, period: i64) -> Vec<KalshiCandle> {
    let mut all: Vec<FakeCandle> = tickers_of(data).iter().flat_map(|t| data.candles(t, period)).collect();
    all.sort_by(|a, b| (a.end, &a.ticker).cmp(&(b.end, &b.ticker)));
    all.iter().map(proto_of).collect()
}

/// Every stored candle of `period`, read with StreamKalshiCandles over all of the fake's series.
async fn streamed(client: &mut Client, series: &[String], period: i32) -> Vec<KalshiCandle> {
    let req = StreamKalshiCandlesRequest {
        series_tickers: series.to_vec(),
        start_time: Some(ts(start().timestamp() - 86_400)),
        end_time: Some(ts(start().timestamp() + 30 * 86_400)),
        period_minutes: period,
        batch_size: 16_384,
        ..Default::default()
    };
    without_seq(&candles_of(&messages(client, req).await.expect("stream")))
}

#[tokio::test]
async fn a_backfill_stores_exactly_the_fakes_candles_and_a_rerun_fetches_only_the_tail() {
    let app = TestApp::start().await;
    let faults =
        Faults { too_many_every: Some(7), retry_after_seconds: 0, server_error_every: Some(11), ..Faults::default() };
    let fake = KalshiFake::start(data(), faults).await;
    let series = series_of(fake.data());
    let report = backfill(&app, &fake, &options(series.clone(), vec![1, 60, 1440])).await.expect("backfill");
    let mut client = ReplayServiceClient::new(app.channel().await);
    let mut total = 0;
    for period in [1, 60, 1440] {
        let want = fake_candles(fake.data(), period);
        assert!(want.iter().any(|c| c.price_open_micros.is_none()), "some periods without trades");
        assert!(want.iter().any(|c| c.yes_bid_close_micros % 10_000 != 0), "some sub-cent quotes");
        let got = streamed(&mut client, &series, period as i32).await;
        assert_eq!(got.len(), want.len(), "period {period}");
        for (i, (got, want)) in got.iter().zip(&want).enumerate() {
            assert_eq!(got, want, "period {period}: candle {i}");
        }
        total += want.len();
    }
    assert_eq!(report.stored["kalshi_candles"].inserted as usize, total, "{report:?}");
    // both candle sources were read: archived markets' from /historical, the others' from their series
    assert!(fake.requests_to("/historical/markets/") > 0 && fake.requests_to("/series/") > 0);
    let windows = fake.candle_requests();

    // again: nothing new, and one request per market and period (each walk's last window), retries aside
    let before = fake.candle_requests();
    let again = backfill(&app, &fake, &options(series.clone(), vec![1, 60, 1440])).await.expect("again");
    let stored = again.stored["kalshi_candles"];
    assert_eq!((stored.inserted, stored.updated), (0, 0), "{again:?}");
    let walks = 3 * fake.data().markets.len() as u64;
    let fetched = fake.candle_requests() - before;
    assert!(
        fetched >= walks && fetched <= walks + again.retries,
        "{fetched} requests for {walks} walks (first run: {windows}): {again:?}"
    );
    assert!(fetched < windows, "the re-run reads less than the first run");
    eprintln!("candle requests: {windows} for the first run, {fetched} for the re-run of {walks} walks");
    assert_eq!(streamed(&mut client, &series, 1).await, fake_candles(fake.data(), 1));
}

#[tokio::test]
async fn a_backfill_stopped_inside_a_candle_walk_goes_on_where_it_stopped() {
    let app = TestApp::start().await;
    let fake = KalshiFake::start(data(), Faults::default()).await;
    let series = series_of(fake.data());
    let want = fake_candles(fake.data(), 1);
    let db = app.db.client().await;
    let count = async |sql: &str| -> usize { db.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) as usize };
    let selection = Options { concurrency: 1, ..options(series.clone(), vec![1]) };
    let mut run = Box::pin(backfill(&app, &fake, &selection));
    let stopped = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            tokio::select! {
                result = &mut run => return Some(result),
                () = tokio::time::sleep(Duration::from_millis(2)) => {
                    let under_way =
                        count("SELECT count(*) FROM collect_positions WHERE walk LIKE 'candles %' AND cursor <> ''");
                    if under_way.await > 0 && count("SELECT count(*) FROM kalshi_candles").await > 0 {
                        return None;
                    }
                }
            }
        }
    })
    .await
    .expect("in time");
    assert!(stopped.is_none(), "the backfill was stopped inside a candle walk");
    drop(run);
    let stored_before = count("SELECT count(*) FROM kalshi_candles").await;
    assert!(stored_before < want.len(), "stopped before the end: {stored_before} of {}", want.len());
    let rest = backfill(&app, &fake, &selection).await.expect("the rest");
    assert!(rest.resumed > 0, "{rest:?}");
    assert_eq!(
        rest.stored["kalshi_candles"].inserted as usize,
        want.len() - stored_before,
        "exactly the rest: {rest:?}"
    );
    let mut client = ReplayServiceClient::new(app.channel().await);
    assert_eq!(streamed(&mut client, &series, 1).await, want);
}

/// A server with many of Kalshi's candles, written straight into the table: `markets` markets of series KXM, one
/// candle a minute each for `minutes` minutes from 2026-01-05, some with null prices.
async fn many_candles(markets: i32, minutes: i32) -> TestApp {
    let app = TestApp::start().await;
    app.db
        .client()
        .await
        .batch_execute(&format!(
            "SELECT ensure_daily_partitions('2026-01-05Z', '2026-01-08Z');
             INSERT INTO markets (ticker, event_ticker, series_ticker, status, updated_at)
             SELECT 'KXM-' || m, 'KXM-E', 'KXM', 3, now() FROM generate_series(1, {markets}) AS m;
             INSERT INTO kalshi_candles (end_ts, ticker, period_minutes, yes_bid_open_micros, yes_bid_low_micros,
                 yes_bid_high_micros, yes_bid_close_micros, yes_ask_open_micros, yes_ask_low_micros,
                 yes_ask_high_micros, yes_ask_close_micros, price_open_micros, price_low_micros, price_high_micros,
                 price_close_micros, price_mean_micros, price_previous_micros, volume_centi, open_interest_centi)
             SELECT '2026-01-05Z'::timestamptz + i * interval '1 minute', 'KXM-' || m, 1,
                    400000, 390000, 410000, 405000, 420000, 415000, 430000, 425000,
                    CASE WHEN i % 3 = 0 THEN NULL ELSE 401000 + i % 997 END, NULL, NULL, NULL, NULL, 400000,
                    i % 1000, i * 10
               FROM generate_series(1, {minutes}) AS i, generate_series(1, {markets}) AS m;",
        ))
        .await
        .expect("candles");
    app
}

#[tokio::test]
async fn streams_are_ordered_hashed_deterministic_and_resume_at_any_cut() {
    let app = many_candles(7, 3000).await;
    let mut client = ReplayServiceClient::new(app.channel().await);
    let (from, to) = (start(), start() + chrono::Duration::days(3));
    let req =
        StreamKalshiCandlesRequest { series_tickers: vec!["KXM".into()], batch_size: 500, ..request(&[], from, to, 1) };
    let full = messages(&mut client, req.clone()).await.expect("full");
    let candles = candles_of(&full);
    assert_eq!(candles.len(), 7 * 3000);
    let keys: Vec<(i64, &str)> =
        candles.iter().map(|c| (c.end_time.expect("end").seconds, c.market_ticker.as_str())).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "strictly in (end time, ticker) order");
    let s = summary(&full);
    assert_eq!((s.item_count, s.content_hash.clone()), (candles.len() as i64, expected_hash(&candles)));
    assert_eq!(messages(&mut client, req.clone()).await.expect("again"), full, "byte for byte");

    // resumed at random cuts: exactly the rest, and the summary of the whole request
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for _ in 0..3 {
        let cut = rng.random_range(0..full.len() - 1);
        let resumed = StreamKalshiCandlesRequest {
            resume_token: full[cut].resume_token.clone(),
            batch_size: rng.random_range(1..2000),
            ..req.clone()
        };
        let rest = messages(&mut client, resumed).await.expect("rest");
        let delivered: usize = candles_of(&full[..=cut]).len();
        assert_eq!(candles_of(&rest), candles[delivered..], "cut after message {cut}");
        assert_eq!(summary(&rest), s);
    }

    // the Rust client's stream: the same candles, its summary check passed
    use prost::Message;
    let rust = kalshi_replay_client::Client::connect(app.addr.to_string()).await.expect("connect");
    let as_client = kalshi_replay_client::proto::StreamKalshiCandlesRequest::decode(req.encode_to_vec().as_slice());
    let through_client: Vec<kalshi_replay_client::proto::KalshiCandle> =
        futures_util::TryStreamExt::try_collect(rust.kalshi_candles(as_client.expect("the same message")))
            .await
            .expect("client");
    let through_client: Vec<Vec<u8>> = through_client.iter().map(Message::encode_to_vec).collect();
    assert_eq!(through_client, candles.iter().map(Message::encode_to_vec).collect::<Vec<_>>());

    // one market, read through its own index: the same candles as the series' of that market
    let one = messages(&mut client, request(&["KXM-3"], from, to, 1)).await.expect("one");
    let of_three: Vec<KalshiCandle> = candles.iter().filter(|c| c.market_ticker == "KXM-3").cloned().collect();
    assert_eq!(candles_of(&one), of_three);

    // the largest request the API allows: the widest batch over years, every market of the selection
    let widest = StreamKalshiCandlesRequest {
        batch_size: 16_384,
        ..request(
            &[],
            Utc.with_ymd_and_hms(2021, 7, 1, 0, 0, 0).single().expect("t"),
            Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).single().expect("t"),
            1,
        )
    };
    let widest = StreamKalshiCandlesRequest { series_tickers: vec!["KXM".into()], ..widest };
    let wide = messages(&mut client, widest).await.expect("widest");
    assert_eq!(candles_of(&wide), candles);
    assert!(wide.len() <= 3, "two batches of 16,384 and the summary");

    // as_of pins: candles stored later, even inside the range, are not in a pinned re-run
    app.db
        .client()
        .await
        .batch_execute(
            "INSERT INTO kalshi_candles (end_ts, ticker, period_minutes, yes_bid_open_micros, yes_bid_low_micros,
                 yes_bid_high_micros, yes_bid_close_micros, yes_ask_open_micros, yes_ask_low_micros,
                 yes_ask_high_micros, yes_ask_close_micros, volume_centi, open_interest_centi)
             VALUES ('2026-01-05T00:00:30Z', 'KXM-1', 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0)",
        )
        .await
        .expect("a late candle");
    let pinned = StreamKalshiCandlesRequest { as_of_watermark: Some(s.watermark), ..req.clone() };
    let pinned = messages(&mut client, pinned).await.expect("pinned");
    assert_eq!((candles_of(&pinned), summary(&pinned)), (candles, s));
    assert_eq!(candles_of(&messages(&mut client, req).await.expect("latest")).len(), 7 * 3000 + 1);
}

#[tokio::test]
async fn the_largest_selection_names_ten_thousand_markets() {
    // MAX_TICKERS market tickers by name, each with two candles, in two batches of the largest size
    let app = many_candles(10_000, 2).await;
    let mut client = ReplayServiceClient::new(app.channel().await);
    let names: Vec<String> = (1..=10_000).map(|m| format!("KXM-{m}")).collect();
    let req = StreamKalshiCandlesRequest {
        market_tickers: names,
        batch_size: 16_384,
        ..request(&[], start(), start() + chrono::Duration::days(1), 1)
    };
    let all = messages(&mut client, req.clone()).await.expect("all");
    let candles = candles_of(&all);
    assert_eq!(candles.len(), 20_000);
    assert_eq!(all.len(), 3, "two batches and the summary");
    assert_eq!(summary(&all).content_hash, expected_hash(&candles));
    let too_many = StreamKalshiCandlesRequest { market_tickers: vec!["KXM-1".into(); 10_001], ..req };
    let status = messages(&mut client, too_many).await.expect_err("one ticker too many");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("market_tickers: at most 10000"), "{status:?}");
}

#[tokio::test]
async fn every_bad_request_is_refused_with_its_field_or_names() {
    let app = many_candles(2, 10).await;
    let mut client = ReplayServiceClient::new(app.channel().await);
    let (from, to) = (start(), start() + chrono::Duration::days(1));
    let good = request(&["KXM-1"], from, to, 60);
    let refused =
        async |client: &mut Client, req: StreamKalshiCandlesRequest| messages(client, req).await.expect_err("refused");
    let cases: Vec<(StreamKalshiCandlesRequest, Code, &str)> = vec![
        (
            StreamKalshiCandlesRequest { period_minutes: 5, ..good.clone() },
            Code::InvalidArgument,
            "period_minutes: must be 1, 60 or 1440",
        ),
        (StreamKalshiCandlesRequest { period_minutes: 0, ..good.clone() }, Code::InvalidArgument, "period_minutes"),
        (
            StreamKalshiCandlesRequest { layout: Layout::Arrow as i32, ..good.clone() },
            Code::InvalidArgument,
            "layout: LAYOUT_ARROW is not offered",
        ),
        (StreamKalshiCandlesRequest { layout: 42, ..good.clone() }, Code::InvalidArgument, "layout: unknown value 42"),
        (request(&["KXM-1"], to, from, 60), Code::InvalidArgument, "end_time: must be after start_time"),
        (StreamKalshiCandlesRequest { end_time: None, ..good.clone() }, Code::InvalidArgument, "end_time: required"),
        (StreamKalshiCandlesRequest { batch_size: 20_000, ..good.clone() }, Code::InvalidArgument, "batch_size"),
        (
            StreamKalshiCandlesRequest { resume_token: "xyz".into(), ..good.clone() },
            Code::InvalidArgument,
            "resume_token",
        ),
        (
            StreamKalshiCandlesRequest { as_of_watermark: Some(1 << 40), ..good.clone() },
            Code::InvalidArgument,
            "as_of_watermark",
        ),
        (request(&["KXNOSUCH", "KXM-1"], from, to, 60), Code::NotFound, "KXNOSUCH"),
        (
            StreamKalshiCandlesRequest { series_tickers: vec!["KXNOSERIES".into()], ..good.clone() },
            Code::NotFound,
            "KXNOSERIES",
        ),
    ];
    for (req, code, text) in cases {
        let status = refused(&mut client, req.clone()).await;
        assert_eq!(status.code(), code, "{req:?}: {status:?}");
        assert!(status.message().contains(text), "{text:?} in {:?}", status.message());
    }
    // a token of another request (another period), and of another stream kind, is refused
    let hourly =
        messages(&mut client, StreamKalshiCandlesRequest { batch_size: 1, ..request(&["KXM-1"], from, to, 1) })
            .await
            .expect("minutes");
    let token = hourly[0].resume_token.clone();
    assert!(!token.is_empty());
    let other = StreamKalshiCandlesRequest { resume_token: token.clone(), ..good.clone() };
    let status = refused(&mut client, other).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let trades = kalshi_replay::proto::StreamTradesRequest {
        market_tickers: vec!["KXM-1".into()],
        start_time: good.start_time,
        end_time: good.end_time,
        resume_token: token,
        ..Default::default()
    };
    let status = client.stream_trades(trades).await.expect_err("a candle token for trades");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn a_cancelled_stream_frees_its_connection_and_a_slow_reader_keeps_memory_flat() {
    // 400 markets x 2 days of minutes: 1.15 M candles, far more than the transport buffers
    let app = many_candles(400, 2880).await;
    let (_server, pid, channel) = serve_binary(&app.db.config).await;
    let mut client = ReplayServiceClient::new(channel);
    let admin = app.db.admin().await;
    let req = StreamKalshiCandlesRequest {
        series_tickers: vec!["KXM".into()],
        batch_size: 64,
        ..request(&[], start(), start() + chrono::Duration::days(3), 1)
    };

    // the client cancels after one message: the COPY is gone within a second, the pool serves the next stream
    let mut stream = client.stream_kalshi_candles(req.clone()).await.expect("stream").into_inner();
    stream.message().await.expect("message").expect("data");
    let copies = active_copies(&admin, &app.db.name).await;
    assert!((1..=2).contains(&copies), "the read is paused by backpressure, not finished: {copies} COPYs");
    drop(stream);
    wait_until_no_copy(&admin, &app.db.name, Duration::from_secs(1)).await;

    // a client that reads slowly: after the buffers fill, the server's memory stays within the allocator's band
    let mut stream = client.stream_kalshi_candles(req).await.expect("stream").into_inner();
    let mut count = 0usize;
    let mut read_slowly = async |messages: usize| {
        let mut peak = 0;
        for _ in 0..messages {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let message = stream.message().await.expect("message").expect("data");
            count += candles_of(&[message]).len();
            peak = peak.max(rss_kib(pid));
        }
        peak
    };
    common::wait_until_backed_up(&admin, &app.db.name, Duration::from_secs(30)).await;
    let ramp = read_slowly(50).await;
    let flat = read_slowly(75).await;
    eprintln!("kalshi candles: server RSS peak {} MiB, then {} MiB", ramp / 1024, flat / 1024);
    assert!(count < 400 * 2880 / 4, "the client has read only part of the stream");
    assert!((1..=2).contains(&active_copies(&admin, &app.db.name).await), "the database read waits");
    assert!(flat <= ramp + 12 * 1024, "RSS grew from {ramp} KiB to {flat} KiB");
    assert!(flat < 100 * 1024, "RSS {flat} KiB");
    let mut last = None;
    while let Some(message) = stream.message().await.expect("rest") {
        count += candles_of(std::slice::from_ref(&message)).len();
        last = Some(message);
    }
    assert_eq!(count, 400 * 2880, "every candle");
    assert_eq!(summary(&[last.expect("summary")]).item_count, 400 * 2880);
}
