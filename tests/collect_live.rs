//! `collect live` against a fake Kalshi: the REST side (tests/common/kalshi_fake.rs) for the markets' definitions
//! and the WebSocket side (tests/common/kalshi_ws_fake.rs) that checks the handshake's signature, drops
//! connections, skips seqs and stalls. What the recorder stores is what Kalshi sent: the books rebuilt from the
//! stored snapshots and deltas equal the fake's, the trades equal those delivered (read back with StreamTrades),
//! and the raw log imports to the same rows.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    num::NonZeroU32,
    path::Path,
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeZone, Utc};
use common::{
    TIMEOUT, TestApp, TestDb,
    kalshi_fake::{Faults, KalshiData, KalshiFake},
    kalshi_ws_fake::{FakeBook, KalshiWsFake, TEST_KEY_ID, WsOptions, test_key_path},
};
use kalshi_replay::{
    collect::{
        auth::ApiKey,
        live::{self, Options, Report},
        rest::{KalshiRest, Policy},
    },
    error::Error,
    proto::{GetMarketRequest, StreamSummary, Trade, reference_service_client::ReferenceServiceClient},
};
use serde_json::Value;
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_postgres::Client;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// One trade as the tests compare them: id, market, time (µs), YES price (µ$), count (centi), side (1 YES, 2 NO).
type Row = (String, String, i64, i64, i64, i32);

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).single().expect("time")
}

/// One series, two events of four markets: the REST side's definitions.
fn data() -> KalshiData {
    KalshiData::generate(11, 1, 2, 4, 10, start(), 4)
}

fn series_of(data: &KalshiData) -> String {
    data.series[0]["ticker"].as_str().expect("ticker").to_owned()
}

fn key() -> ApiKey {
    ApiKey::from_file(TEST_KEY_ID, &test_key_path()).expect("the test key")
}

fn options(ws: &KalshiWsFake, series: &str) -> Options {
    Options {
        ws_url: ws.url(),
        series: vec![series.to_owned()],
        flush_messages: 50,
        flush_interval: Duration::from_millis(50),
        heartbeat_timeout: Duration::from_secs(2),
        backoff: Duration::from_millis(20),
        ..Options::default()
    }
}

/// A recorder running in a task until the sender is used (or dropped).
struct Recording {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<Report, Error>>,
}

impl Recording {
    fn start(app: &TestApp, rest: &KalshiFake, options: Options, key: Option<ApiKey>) -> Self {
        let database = app.db.database();
        let base = rest.base_url.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let pool = database.pool(3, TIMEOUT).await.expect("pool");
            let policy = Policy {
                rate: NonZeroU32::new(10_000).expect("rate"),
                timeout: Duration::from_secs(10),
                max_retries: 3,
                backoff: Duration::from_millis(5),
            };
            let rest = KalshiRest::new(&base, policy).expect("client");
            live::run(&pool, &rest, key.as_ref(), &options, async {
                let _ = stopped.await;
            })
            .await
        });
        Self { stop, task }
    }

    async fn stop(self) -> Report {
        let _ = self.stop.send(());
        tokio::time::timeout(TIMEOUT, self.task).await.expect("stops in time").expect("task").expect("recording")
    }
}

/// Waits until the recorder has subscribed to every channel (commands are answered in order).
async fn subscribed(ws: &KalshiWsFake) {
    for channel in ["trade", "orderbook_delta", "market_lifecycle_v2"] {
        ws.wait_for_subscribers(channel, 1, TIMEOUT).await;
    }
}

/// The books as the stored rows give them: per market, its latest snapshot and the deltas of the same
/// subscription after it (sids are per connection: only deltas at or after the snapshot's time).
async fn stored_books(db: &Client) -> BTreeMap<String, FakeBook> {
    let snapshots = db
        .query(
            "SELECT DISTINCT ON (ticker) ticker, ts, sid, seq, yes_price_micros, yes_size_centi, no_price_micros, \
             no_size_centi FROM orderbook_snapshots ORDER BY ticker, ts DESC, sid DESC, seq DESC",
            &[],
        )
        .await
        .expect("snapshots");
    let mut books = BTreeMap::new();
    for s in snapshots {
        let ticker: String = s.get(0);
        let (ts, sid, seq): (DateTime<Utc>, i64, i64) = (s.get(1), s.get(2), s.get(3));
        let side = |p: usize, z: usize| -> BTreeMap<i64, i64> {
            let (prices, sizes): (Vec<i64>, Vec<i64>) = (s.get(p), s.get(z));
            prices.into_iter().zip(sizes).collect()
        };
        let mut book = FakeBook { yes: side(4, 5), no: side(6, 7) };
        let deltas = db
            .query(
                "SELECT side, price_micros, delta_centi FROM orderbook_deltas \
                 WHERE ticker = $1 AND sid = $2 AND ts >= $3 AND seq > $4 ORDER BY seq",
                &[&ticker, &sid, &ts, &seq],
            )
            .await
            .expect("deltas");
        for d in deltas {
            let (side, price, delta): (i16, i64, i64) = (d.get(0), d.get(1), d.get(2));
            let levels = if side == 1 { &mut book.yes } else { &mut book.no };
            let size = levels.entry(price).or_insert(0);
            *size += delta;
            assert!(*size >= 0, "{ticker}: level {price} below zero");
            if *size == 0 {
                levels.remove(&price);
            }
        }
        books.insert(ticker, book);
    }
    books
}

/// Waits until the stored books equal the fake's; the last difference when they do not in time.
async fn books_converge(db: &Client, ws: &KalshiWsFake) {
    let started = Instant::now();
    loop {
        let (stored, want) = (stored_books(db).await, ws.books());
        if stored == want {
            return;
        }
        if started.elapsed() > TIMEOUT {
            let differ: Vec<&String> = want.keys().filter(|t| stored.get(*t) != want.get(*t)).collect();
            panic!("books differ for {differ:?} after {TIMEOUT:?}: stored {stored:?}\nfake {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn market_stored(db: &Client, ticker: &str) -> bool {
    db.query_opt("SELECT 1 FROM markets WHERE ticker = $1", &[&ticker]).await.expect("query").is_some()
}

/// The trades the fake delivered, as stored rows would read.
fn delivered_rows(ws: &KalshiWsFake) -> BTreeSet<Row> {
    ws.delivered_trades().iter().map(|t| row(&common::kalshi_trade(t))).collect()
}

fn row(t: &Trade) -> Row {
    let time = t.time.expect("time");
    let micros = time.seconds * 1_000_000 + i64::from(time.nanos) / 1_000;
    (t.trade_id.clone(), t.market_ticker.clone(), micros, t.yes_price_micros, t.count_centi, t.taker_side)
}

/// Every trade of `series` of the last day and the next, read back with StreamTrades over gRPC, and the summary.
async fn stream(app: &TestApp, series: &str) -> (Vec<Trade>, StreamSummary) {
    let now = Utc::now().timestamp();
    common::series_trades(app, &[series.to_owned()], now - 86_400, now + 86_400).await
}

async fn replayed(app: &TestApp, series: &str) -> BTreeSet<Row> {
    stream(app, series).await.0.iter().map(row).collect()
}

/// Waits until StreamTrades gives `want`.
async fn trades_converge(app: &TestApp, series: &str, want: &BTreeSet<Row>) {
    let started = Instant::now();
    loop {
        let got = replayed(app, series).await;
        if &got == want {
            return;
        }
        assert!(started.elapsed() < TIMEOUT, "trades differ: {} stored, {} delivered", got.len(), want.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn books_and_trades_equal_kalshis_through_drops_and_seq_gaps() {
    let app = TestApp::start().await;
    let rest = KalshiFake::start(data(), Faults::default()).await;
    let series = series_of(rest.data());
    let tickers = KalshiWsFake::active_tickers(&rest.data().markets);
    assert!(tickers.len() >= 2, "{tickers:?}");
    let ws_options = WsOptions { drop_after: Some(400), skip_seq_every: Some(37), ..WsOptions::default() };
    let ws = KalshiWsFake::start(tickers.clone(), ws_options).await;
    let recording = Recording::start(&app, &rest, options(&ws, &series), Some(key()));
    for _ in 0..12 {
        subscribed(&ws).await;
        ws.emit(150);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // no more faults: a gap in the last deltas shows at the next one, and its new snapshot follows
    ws.set_drop_after(None);
    ws.set_skip_seq_every(None);
    subscribed(&ws).await;
    ws.emit(40);
    ws.wait_until_sent(TIMEOUT).await;
    let db = app.db.client().await;
    books_converge(&db, &ws).await;
    trades_converge(&app, &series, &delivered_rows(&ws)).await;
    let (trades, summary) = stream(&app, &series).await;
    common::assert_hash_of_kalshi_trades(&ws.delivered_trades(), &trades, &summary);
    let report = recording.stop().await;
    assert!(ws.drops_made() >= 2 && ws.gaps_made() >= 2, "drops {} gaps {}", ws.drops_made(), ws.gaps_made());
    assert!(report.disconnects >= ws.drops_made(), "{report:?}");
    assert!(report.gaps >= 1, "{report:?}");
    assert_eq!(report.connections, ws.connections());
    assert_eq!(report.refused, 0, "{report:?}");
    // the markets' definitions came from the REST side before the first message
    let markets: i64 = db.query_one("SELECT count(*) FROM markets", &[]).await.expect("count").get(0);
    assert_eq!(markets as usize, tickers.len());
    // a gap is answered by a new book subscription (an unsubscribe sent just as the fake drops the connection
    // never reaches it, and the reconnect subscribes anew anyway)
    let resubscribes = ws.commands().iter().filter(|c| c["cmd"] == "unsubscribe").count() as u64;
    assert!(resubscribes >= 1 && resubscribes <= report.gaps, "{resubscribes} unsubscribes, {report:?}");
}

#[tokio::test]
async fn a_market_that_opens_while_recording_is_fetched_and_recorded() {
    let app = TestApp::start().await;
    let mut kalshi = data();
    let tickers = KalshiWsFake::active_tickers(&kalshi.markets);
    // the new market: not yet open at Kalshi when the recorder starts, so not among the series' open markets
    let new = tickers[0].clone();
    for market in &mut kalshi.markets {
        if market["ticker"] == new.as_str() {
            market["status"] = "initialized".into();
        }
    }
    let rest = KalshiFake::start(kalshi, Faults::default()).await;
    let series = series_of(rest.data());
    let ws = KalshiWsFake::start(tickers[1..].to_vec(), WsOptions::default()).await;
    let recording = Recording::start(&app, &rest, options(&ws, &series), Some(key()));
    subscribed(&ws).await;
    let db = app.db.client().await;
    assert!(!market_stored(&db, &new).await, "{new} is not open yet");
    ws.add_market(&new);
    ws.emit(300);
    ws.wait_until_sent(TIMEOUT).await;
    books_converge(&db, &ws).await;
    trades_converge(&app, &series, &delivered_rows(&ws)).await;
    let report = recording.stop().await;
    assert_eq!(report.fetched_markets, 1, "{report:?}");
    // its definition came from the REST side, as GetMarket shows
    let mut reference = ReferenceServiceClient::new(app.channel().await);
    let market = reference.get_market(GetMarketRequest { ticker: new.clone() }).await.expect("GetMarket").into_inner();
    assert_eq!(market.market.expect("market").ticker, new);
    // and the recorder added it to the book subscription
    let added = ws.commands().iter().any(|c| {
        c["cmd"] == "update_subscription"
            && c["params"]["market_tickers"].as_array().is_some_and(|t| t.iter().any(|t| t == new.as_str()))
    });
    assert!(added, "{:?}", ws.commands());
}

#[tokio::test]
async fn a_silent_connection_is_replaced_after_the_heartbeat_timeout() {
    let app = TestApp::start().await;
    let rest = KalshiFake::start(data(), Faults::default()).await;
    let series = series_of(rest.data());
    let tickers = KalshiWsFake::active_tickers(&rest.data().markets);
    let ws = KalshiWsFake::start(tickers, WsOptions { stall_after: Some(100), ..WsOptions::default() }).await;
    let mut options = options(&ws, &series);
    options.heartbeat_timeout = Duration::from_millis(700);
    let recording = Recording::start(&app, &rest, options, Some(key()));
    subscribed(&ws).await;
    ws.emit(150);
    let stalled = Instant::now();
    // the stalled connection keeps its TCP open and answers nothing: only the heartbeat timeout can tell
    while ws.connections() < 2 {
        assert!(stalled.elapsed() < TIMEOUT, "no reconnect after a stall");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stalled.elapsed() >= Duration::from_millis(600),
        "replaced after {:?}, before the timeout",
        stalled.elapsed()
    );
    ws.set_stall_after(None);
    subscribed(&ws).await;
    ws.emit(100);
    ws.wait_until_sent(TIMEOUT).await;
    let db = app.db.client().await;
    books_converge(&db, &ws).await;
    trades_converge(&app, &series, &delivered_rows(&ws)).await;
    let report = recording.stop().await;
    assert_eq!(ws.stalls_made(), 1);
    assert!(report.disconnects >= 1, "{report:?}");
}

#[tokio::test]
async fn a_wrong_key_or_a_missing_one_is_refused_and_named() {
    let app = TestApp::start().await;
    let rest = KalshiFake::start(data(), Faults::default()).await;
    let series = series_of(rest.data());
    let ws = KalshiWsFake::start(KalshiWsFake::active_tickers(&rest.data().markets), WsOptions::default()).await;
    let pem = std::fs::read_to_string(test_key_path()).expect("pem");
    let wrong = ApiKey::from_pem("someone-else", &pem).expect("key");
    let recording = Recording::start(&app, &rest, options(&ws, &series), Some(wrong));
    let error =
        tokio::time::timeout(TIMEOUT, recording.task).await.expect("in time").expect("task").expect_err("refused");
    assert!(error.to_string().contains("401"), "{error}");
    assert!(error.to_string().contains("--api-key-id"), "{error}");
    assert_eq!(ws.rejected_handshakes(), 1, "a wrong key is not tried again");
    // books need a key; trades and lifecycle events do not
    let recording = Recording::start(&app, &rest, options(&ws, &series), None);
    let error =
        tokio::time::timeout(TIMEOUT, recording.task).await.expect("in time").expect("task").expect_err("refused");
    assert!(error.to_string().contains("orderbook_delta is a private channel"), "{error}");
    assert!(ApiKey::from_pem(TEST_KEY_ID, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
}

/// The rows of the fact tables, ingest_seq aside, as text.
async fn facts(db: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT row(ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)::text FROM trades ORDER BY 1",
        "SELECT row(ts, ticker, sid, seq, yes_price_micros, yes_size_centi, no_price_micros, no_size_centi)::text \
         FROM orderbook_snapshots ORDER BY 1",
        "SELECT row(ts, ticker, sid, seq, side, price_micros, delta_centi)::text FROM orderbook_deltas ORDER BY 1",
        "SELECT row(ts, ticker, event_type, open_time, close_time, result, settlement_value_micros)::text \
         FROM market_lifecycle ORDER BY 1",
    ] {
        out.extend(db.query(sql, &[]).await.expect("facts").iter().map(|r| r.get::<_, String>(0)));
    }
    out
}

/// The command: records until SIGTERM, commits what it received, prints its summary; its raw log, imported into
/// another database, gives the same rows.
#[tokio::test]
async fn the_command_records_until_sigterm_and_its_raw_log_imports_to_the_same_rows() {
    let app = TestApp::start().await;
    let rest = KalshiFake::start(data(), Faults::default()).await;
    let series = series_of(rest.data());
    let ws = KalshiWsFake::start(KalshiWsFake::active_tickers(&rest.data().markets), WsOptions::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("raw");
    let health_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("addr")
    };
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kalshi-replay"))
        .args(["collect", "live", "--database-url", &common::url_of(&app.db.config)])
        .args(["--base-url", &rest.base_url, "--ws-url", &ws.url(), "--series", &series])
        .args(["--api-key-id", TEST_KEY_ID, "--private-key-file"])
        .arg(test_key_path())
        .arg("--raw-log")
        .arg(&log)
        // nothing commits before SIGTERM: what is stored is what the shutdown committed
        .args(["--flush-interval", "1h", "--flush-messages", "100000"])
        .args(["--health-listen", &health_addr.to_string()])
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    subscribed(&ws).await;
    assert_eq!(health(health_addr).await, ServingStatus::Serving, "subscribed and writing");
    ws.add_market("KXNOTSELECTED-26JAN05-T1");
    ws.emit(500);
    ws.emit_lifecycle(&KalshiWsFake::active_tickers(&rest.data().markets)[0], "deactivated");
    ws.wait_until_sent(TIMEOUT).await;
    // time to read what was sent; then every message is in the recorder's batch or queue, and SIGTERM commits it
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = app.db.client().await;
    assert!(facts(&db).await.is_empty(), "nothing was committed before SIGTERM");
    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output()).await.expect("exits in time").expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("recorded "), "{stdout}");
    assert_eq!(stored_books(&db).await, ws.books().into_iter().filter(|(t, _)| t.starts_with(&series)).collect());
    let delivered = delivered_rows(&ws).into_iter().filter(|t| t.1.starts_with(&series)).collect();
    assert_eq!(replayed(&app, &series).await, delivered);
    let lifecycle: i64 = db.query_one("SELECT count(*) FROM market_lifecycle", &[]).await.expect("count").get(0);
    assert_eq!(lifecycle, 1, "the selected market's deactivation; the other series' market is not recorded: {stdout}");
    // the raw log: import it into a database of its own
    let files: Vec<_> = std::fs::read_dir(&log).expect("log dir").map(|e| e.expect("entry").path()).collect();
    assert!(!files.is_empty() && files.iter().all(|f| f.to_string_lossy().ends_with(".jsonl.zst")), "{files:?}");
    let other = TestDb::migrated().await;
    let imported = tokio::process::Command::new(env!("CARGO_BIN_EXE_kalshi-replay"))
        .args(["import", "--database-url", &common::url_of(&other.config)])
        .args(&files)
        .env_remove("DATABASE_URL")
        .output()
        .await
        .expect("import");
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let recorded = facts(&db).await;
    assert!(recorded.len() > 200, "{}", recorded.len());
    assert_eq!(facts(&other.client().await).await, recorded);
    assert_log_is_jsonl(&files[0]);
}

/// The recorder's health over grpc.health.v1, as an operator (or grpcurl) asks it.
async fn health(addr: std::net::SocketAddr) -> ServingStatus {
    let started = Instant::now();
    loop {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).expect("uri");
        if let Ok(channel) = channel.connect().await {
            let answer = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
            return answer.expect("health").into_inner().status();
        }
        assert!(started.elapsed() < TIMEOUT, "no health server on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A log file is zstd frames of JSON lines, each a message with its receive time.
fn assert_log_is_jsonl(path: &Path) {
    let bytes = zstd::decode_all(std::fs::File::open(path).expect("open")).expect("zstd");
    let text = String::from_utf8(bytes).expect("utf-8");
    for line in text.lines() {
        let value: Value = serde_json::from_str(line).expect("a JSON line");
        assert!(value["received_at"].is_string() && value["message"]["type"].is_string(), "{line}");
    }
}
