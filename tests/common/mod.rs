//! Test support: a real PostgreSQL (DATABASE_URL's server, or one private throwaway cluster per test process), a
//! fresh database per test cloned from a migrated template, and the real server on port 0.
//!
//! Set TEST_LOG (e.g. TEST_LOG=debug) to see the server's logs.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

pub mod kalshi_fake;
pub mod kalshi_ws_fake;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use arrow_array::{
    Array, BooleanArray, Int8Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, cast::AsArray,
    types::Int32Type,
};
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use kalshi_replay::{
    error::Error,
    proto::{
        Candle, StreamCandlesResponse, StreamSummary, StreamTradesRequest, StreamTradesResponse, Trade, TradeColumns,
        replay_service_client::ReplayServiceClient, stream_candles_response, stream_trades_response,
    },
    server::{self, Pools, ServerOptions},
    store::db::{self, Database},
    store::migrate::{self, MIGRATIONS},
    store::pg::PrivatePostgres,
};
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_postgres::{Client, Config};
use tonic::transport::Channel;

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The server every test database lives on, with dbname `postgres`.
pub async fn server_config() -> Config {
    init_logs();
    let mut config = match std::env::var("DATABASE_URL") {
        Ok(url) => db::parse_url(&url).expect("DATABASE_URL"),
        Err(_) => PrivatePostgres::shared_throwaway().await.expect("private postgres").config("postgres"),
    };
    config.dbname("postgres");
    config
}

fn init_logs() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        kalshi_replay::telemetry::init(&filter);
    }
}

/// A name unique to this test process and call.
fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The migrated template, named after a hash of the migrations so that a changed schema gets a new template.
async fn template(admin: &Client) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
    for m in MIGRATIONS {
        for b in m.sql.bytes().chain(m.version.to_le_bytes()) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let name = format!("kalshi_replay_template_{hash:016x}");
    // serialize template builders across test processes sharing a server
    admin.execute("SELECT pg_advisory_lock(7301)", &[]).await.expect("lock");
    let exists = admin.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await.expect("query");
    if exists.is_none() {
        // built under another name and renamed, so that a half-built template is never cloned
        let building = format!("{name}_building");
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)")).await.expect("drop");
        admin.batch_execute(&format!("CREATE DATABASE {building}")).await.expect("create template");
        let mut config = server_config().await;
        config.dbname(&building);
        {
            let mut client = db::connect(&config, TIMEOUT).await.expect("connect template");
            migrate::run(&mut client).await.expect("migrate template");
        }
        // the migrating connection is closed, but its backend may take a moment to exit
        let rename = format!("ALTER DATABASE {building} RENAME TO {name}");
        let mut attempts = 0;
        while let Err(e) = admin.batch_execute(&rename).await {
            attempts += 1;
            assert!(attempts < 50, "rename template: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    admin.execute("SELECT pg_advisory_unlock(7301)", &[]).await.expect("unlock");
    name
}

/// A database of its own for one test, dropped when the test ends.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub config: Config,
    admin: Config,
}

impl TestDb {
    /// A fresh, migrated database (a clone of the template).
    pub async fn migrated() -> Self {
        Self::create(true).await
    }

    /// A fresh database without any schema.
    pub async fn empty() -> Self {
        Self::create(false).await
    }

    async fn create(migrated: bool) -> Self {
        let admin = server_config().await;
        let client = db::connect(&admin, TIMEOUT).await.expect("connect admin");
        let name = unique_name("kalshi_replay_test");
        let sql = if migrated {
            format!("CREATE DATABASE {name} TEMPLATE {}", template(&client).await)
        } else {
            format!("CREATE DATABASE {name}")
        };
        client.batch_execute(&sql).await.expect("create test database");
        let mut config = admin.clone();
        config.dbname(&name);
        Self { name, config, admin }
    }

    /// A new connection to this database.
    pub async fn client(&self) -> Client {
        db::connect(&self.config, TIMEOUT).await.expect("connect test database")
    }

    /// A connection to the server's maintenance database, for acting on this database from outside.
    pub async fn admin(&self) -> Client {
        db::connect(&self.admin, TIMEOUT).await.expect("connect admin")
    }

    /// This database as the server sees it.
    pub fn database(&self) -> Database {
        Database::external(self.config.clone())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be shutting down: drop the database from a thread of its own
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let client = db::connect(&admin, TIMEOUT).await.map_err(std::io::Error::other)?;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(std::io::Error::other)
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// The real server on 127.0.0.1:0 over a fresh migrated database.
#[derive(Debug)]
pub struct TestApp {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<Result<(), Error>>>,
    // last: the database outlives the server that uses it
    pub db: TestDb,
}

/// The replay COPYs (of trades or of aggregates) running in `database`.
pub async fn active_copies(admin: &Client, database: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = $1 AND state = 'active' AND query LIKE 'COPY (SELECT %'",
            &[&database],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Waits until every buffer between the database and a client that reads nothing is full: a replay COPY runs in
/// `database` and all of them wait to write to the server (`ClientWrite`), in three looks in a row 50 ms apart;
/// fails after `within`. A slow reader's test measures the server's memory from there on: earlier, the buffers
/// are still filling and the memory still legitimately grows.
pub async fn wait_until_backed_up(admin: &Client, database: &str, within: Duration) {
    let started = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 3 {
        let row = admin
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE wait_event = 'ClientWrite') FROM pg_stat_activity
                  WHERE datname = $1 AND state = 'active' AND query LIKE 'COPY (SELECT %'",
                &[&database],
            )
            .await
            .expect("pg_stat_activity");
        let (copies, waiting): (i64, i64) = (row.get(0), row.get(1));
        in_a_row = if copies > 0 && waiting == copies { in_a_row + 1 } else { 0 };
        assert!(
            started.elapsed() < within,
            "the database read still runs after {within:?}: {waiting} of {copies} COPYs wait"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no replay COPY runs in `database`; fails after `within`.
pub async fn wait_until_no_copy(admin: &Client, database: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if active_copies(admin, database).await == 0 {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "a COPY still runs after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every market ticker, in byte order.
pub async fn all_markets(db: &Client) -> Vec<String> {
    db.query("SELECT ticker FROM markets ORDER BY ticker", &[])
        .await
        .expect("markets")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

impl TestApp {
    /// A server over a generated dataset of `markets` markets and `trades` trades over 4 days from 2026-01-05.
    pub async fn generated(seed: u64, markets: u32, trades: u64) -> Self {
        Self::with_dataset(&kalshi_replay::generate::DatasetSpec {
            seed,
            markets,
            days: 4,
            trades,
            start: chrono::NaiveDate::from_ymd_opt(2026, 1, 5).expect("date"),
        })
        .await
    }

    /// A server over the generated dataset of `spec`.
    pub async fn with_dataset(spec: &kalshi_replay::generate::DatasetSpec) -> Self {
        let app = Self::start().await;
        kalshi_replay::generate::generate(&mut app.db.client().await, spec).await.expect("generate");
        app
    }

    pub async fn start() -> Self {
        Self::start_with(
            ServerOptions {
                partitions_ahead: 2,
                health_interval: Duration::from_millis(200),
                ..ServerOptions::default()
            },
            TIMEOUT,
        )
        .await
    }

    /// With other server options and pool connection timeout.
    pub async fn start_with(options: ServerOptions, pool_timeout: Duration) -> Self {
        Self::start_with_pools(options, (4, 2), pool_timeout).await
    }

    /// With other server options, pool sizes (data, lookups) and pool connection timeout.
    pub async fn start_with_pools(options: ServerOptions, (data, lookups): (u32, u32), pool_timeout: Duration) -> Self {
        let db = TestDb::migrated().await;
        let pools = Pools::open(&db.database(), data, lookups, pool_timeout).await.expect("pools");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel();
        let served = tokio::spawn(server::run(listener, pools, options, async {
            let _ = rx.await;
        }));
        Self { addr, shutdown: Some(tx), served: Some(served), db }
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).expect("uri").connect().await.expect("connect")
    }

    /// Stops the server and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.served.take() {
            Some(served) => served.await.expect("server task"),
            None => Ok(()),
        }
    }
}

/// The grpcurl binary: $GRPCURL (scripts/test sets it), else the one scripts/test installs into .venv.
pub fn grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("GRPCURL") {
        return PathBuf::from(path);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/grpcurl");
    if local.exists() {
        return local;
    }
    panic!("grpcurl not found: run scripts/test (it installs grpcurl into .venv) or set GRPCURL");
}

/// A URL of the test database for another process.
pub fn url_of(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        other => panic!("a TCP host is needed, got {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().expect("dbname")
    )
}

/// The real binary serving the database of `config` on a free port: the process (killed when dropped), its pid,
/// and a channel to it.
pub async fn serve_binary(config: &Config) -> (tokio::process::Child, u32, Channel) {
    let (server, addr) = serve_on(config, 0).await;
    let pid = server.id().expect("pid");
    let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
    (server, pid, channel)
}

/// The real binary serving the database of `config` on `port` (0: any): the process (killed when dropped) and the
/// address it listens on, read from its log. A test that restarts a server passes the port the first one got.
pub async fn serve_on(config: &Config, port: u16) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_kalshi-replay"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--log", "info", "--partitions-ahead", "0"])
        .env("DATABASE_URL", url_of(config))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = tokio::io::BufReader::new(server.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = lines.next_line().await.expect("log").expect("server exited");
        if let Some(addr) = line.split("local=").nth(1) {
            break addr.trim().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (server, addr)
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).expect("value").parse().expect("number")
}

/// Every message of a server stream, until its end; the first error instead, if any.
pub async fn collect<T>(mut stream: tonic::Streaming<T>) -> Result<Vec<T>, tonic::Status> {
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        out.push(message);
    }
    Ok(out)
}

/// A message of a replay stream, whose last message is the summary.
pub trait StreamMessage: std::fmt::Debug {
    fn summary(&self) -> Option<&StreamSummary>;
}

impl StreamMessage for StreamTradesResponse {
    fn summary(&self) -> Option<&StreamSummary> {
        match &self.payload {
            Some(stream_trades_response::Payload::Summary(s)) => Some(s),
            _ => None,
        }
    }
}

impl StreamMessage for StreamCandlesResponse {
    fn summary(&self) -> Option<&StreamSummary> {
        match &self.payload {
            Some(stream_candles_response::Payload::Summary(s)) => Some(s),
            _ => None,
        }
    }
}

/// The summary, which must be the last message.
pub fn summary_of<M: StreamMessage>(messages: &[M]) -> StreamSummary {
    match messages.last().and_then(StreamMessage::summary) {
        Some(summary) => summary.clone(),
        None => panic!("the last message is not the summary: {:?}", messages.last()),
    }
}

/// The contract's hash, computed here independently: SHA-256 over each item's protobuf encoding, prefixed by its
/// length (u32 little-endian).
pub fn expected_hash<M: prost::Message>(items: &[M]) -> Vec<u8> {
    let mut hash = Sha256::new();
    for item in items {
        let encoded = item.encode_to_vec();
        hash.update((encoded.len() as u32).to_le_bytes());
        hash.update(&encoded);
    }
    hash.finalize().to_vec()
}

/// Every trade of `series` in [start, end) (unix seconds), read back with StreamTrades, and the stream's summary.
pub async fn series_trades(app: &TestApp, series: &[String], start: i64, end: i64) -> (Vec<Trade>, StreamSummary) {
    let mut client = ReplayServiceClient::new(app.channel().await);
    let request = StreamTradesRequest {
        series_tickers: series.to_vec(),
        start_time: Some(prost_types::Timestamp { seconds: start, nanos: 0 }),
        end_time: Some(prost_types::Timestamp { seconds: end, nanos: 0 }),
        ..Default::default()
    };
    let stream = client.stream_trades(request).await.expect("stream").into_inner();
    let messages = collect(stream).await.expect("messages");
    (trades_of(&messages), summary_of(&messages))
}

/// A trade of Kalshi's JSON (REST `ticker` or WebSocket `market_ticker`; `created_time` or `ts_ms`) as StreamTrades
/// sends it, but for its ingest_seq (0), which only the database knows.
pub fn kalshi_trade(t: &serde_json::Value) -> Trade {
    use kalshi_replay::decimal;
    let micros = match t["ts_ms"].as_i64() {
        Some(ms) => ms * 1000,
        None => chrono::DateTime::parse_from_rfc3339(t["created_time"].as_str().expect("time"))
            .expect("rfc3339")
            .timestamp_micros(),
    };
    let yes = decimal::dollars_to_micros(t["yes_price_dollars"].as_str().expect("price")).expect("exact");
    Trade {
        trade_id: t["trade_id"].as_str().expect("id").to_owned(),
        market_ticker: t["market_ticker"].as_str().or(t["ticker"].as_str()).expect("ticker").to_owned(),
        time: Some(prost_types::Timestamp {
            seconds: micros.div_euclid(1_000_000),
            nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
        }),
        yes_price_micros: yes,
        no_price_micros: 1_000_000 - yes,
        count_centi: decimal::count_to_centi(t["count_fp"].as_str().expect("count")).expect("exact"),
        taker_side: if t["taker_outcome_side"] == "yes" { 1 } else { 2 },
        ingest_seq: 0,
    }
}

/// The summary's hash is the one computed here from Kalshi's own trades in the contract's order (time, market,
/// trade id), each given the ingest_seq its stored row got (`replayed`, matched by trade id).
pub fn assert_hash_of_kalshi_trades(kalshi: &[serde_json::Value], replayed: &[Trade], summary: &StreamSummary) {
    let seqs: std::collections::HashMap<&str, i64> =
        replayed.iter().map(|t| (t.trade_id.as_str(), t.ingest_seq)).collect();
    let mut trades: Vec<Trade> = kalshi.iter().map(kalshi_trade).collect();
    for t in &mut trades {
        t.ingest_seq = *seqs.get(t.trade_id.as_str()).unwrap_or_else(|| panic!("trade {} not replayed", t.trade_id));
    }
    let key = |t: &Trade| {
        let time = t.time.expect("time");
        (time.seconds, time.nanos, t.market_ticker.clone(), t.trade_id.clone())
    };
    trades.sort_by_key(key);
    assert_eq!(summary.item_count as usize, trades.len());
    assert_eq!(summary.content_hash, expected_hash(&trades), "StreamTrades' hash against Kalshi's trades");
}

/// The trades of one call's data messages in any layout (see [`Call`]).
pub fn trades_of(messages: &[StreamTradesResponse]) -> Vec<Trade> {
    let mut call = Call::default();
    messages.iter().flat_map(|m| call.trades(m)).collect()
}

/// The candles of one call's data messages in either layout (see [`Call`]).
pub fn candles_of(messages: &[StreamCandlesResponse]) -> Vec<Candle> {
    let mut call = Call::default();
    messages.iter().flat_map(|m| call.candles(m)).collect()
}

/// What a client keeps over one call to read its data messages one at a time: the dictionary of the columns
/// layout, and the Arrow IPC stream so far (schema and dictionaries), decoded message by message with arrow-rs's
/// StreamDecoder. A resumed call is a new call.
#[derive(Debug, Default)]
pub struct Call {
    dictionary: Vec<String>,
    decoder: StreamDecoder,
    /// Record batches decoded, one per Arrow message.
    pub arrow_batches: usize,
}

impl Call {
    /// The trades of one data message in any layout; none for the summary.
    pub fn trades(&mut self, message: &StreamTradesResponse) -> Vec<Trade> {
        match &message.payload {
            Some(stream_trades_response::Payload::Trades(batch)) => batch.trades.clone(),
            Some(stream_trades_response::Payload::Columns(c)) => rows_of_columns(c, &mut self.dictionary),
            Some(stream_trades_response::Payload::Arrow(a)) => trades_of_batch(&self.arrow(&a.ipc)),
            Some(stream_trades_response::Payload::Summary(_)) | None => Vec::new(),
        }
    }

    /// The candles of one data message in either layout; none for the summary.
    pub fn candles(&mut self, message: &StreamCandlesResponse) -> Vec<Candle> {
        match &message.payload {
            Some(stream_candles_response::Payload::Candles(batch)) => batch.candles.clone(),
            Some(stream_candles_response::Payload::Arrow(a)) => candles_of_batch(&self.arrow(&a.ipc)),
            Some(stream_candles_response::Payload::Summary(_)) | None => Vec::new(),
        }
    }

    /// The one record batch of an Arrow data message: the message must hold exactly one record batch (after the
    /// schema, first, and any dictionary) and nothing after it.
    pub fn arrow(&mut self, ipc: &[u8]) -> RecordBatch {
        let mut buffer = Buffer::from(ipc.to_vec());
        let mut batches = Vec::new();
        while !buffer.is_empty() {
            if let Some(batch) = self.decoder.decode(&mut buffer).expect("a well-formed Arrow IPC message") {
                batches.push(batch);
            }
        }
        assert_eq!(batches.len(), 1, "one record batch per data message");
        self.arrow_batches += 1;
        batches.pop().expect("a batch")
    }
}

fn timestamp_of_micros(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// A column of `batch` by name, as the array type the schema documents.
fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    let column = batch.column_by_name(name).unwrap_or_else(|| panic!("column {name}"));
    column.as_any().downcast_ref::<T>().unwrap_or_else(|| panic!("column {name}: {:?}", column.data_type()))
}

/// The market_ticker column of `batch` as strings.
fn tickers(batch: &RecordBatch) -> Vec<String> {
    let dictionary = batch.column_by_name("market_ticker").expect("market_ticker").as_dictionary::<Int32Type>();
    let values = dictionary.values().as_any().downcast_ref::<StringArray>().expect("utf8 values");
    assert_eq!(dictionary.null_count(), 0, "market_ticker is never null");
    dictionary.keys().values().iter().map(|&k| values.value(k as usize).to_owned()).collect()
}

/// The trades of a record batch of StreamTrades' Arrow schema, as Trade messages.
pub fn trades_of_batch(batch: &RecordBatch) -> Vec<Trade> {
    let time = column::<TimestampMicrosecondArray>(batch, "time");
    let trade_id = column::<StringArray>(batch, "trade_id");
    let yes = column::<Int64Array>(batch, "yes_price_micros");
    let no = column::<Int64Array>(batch, "no_price_micros");
    let count = column::<Int64Array>(batch, "count_centi");
    let side = column::<Int8Array>(batch, "taker_side");
    let seq = column::<Int64Array>(batch, "ingest_seq");
    let tickers = tickers(batch);
    (0..batch.num_rows())
        .map(|i| Trade {
            trade_id: trade_id.value(i).to_owned(),
            market_ticker: tickers[i].clone(),
            time: Some(timestamp_of_micros(time.value(i))),
            yes_price_micros: yes.value(i),
            no_price_micros: no.value(i),
            count_centi: count.value(i),
            taker_side: i32::from(side.value(i)),
            ingest_seq: seq.value(i),
        })
        .collect()
}

/// The candles of a record batch of StreamCandles' Arrow schema, as Candle messages.
pub fn candles_of_batch(batch: &RecordBatch) -> Vec<Candle> {
    let int = |name| column::<Int64Array>(batch, name);
    let (start, end) = (
        column::<TimestampMicrosecondArray>(batch, "period_start"),
        column::<TimestampMicrosecondArray>(batch, "period_end"),
    );
    let (open, high, low, close) = (int("open_micros"), int("high_micros"), int("low_micros"), int("close_micros"));
    let (volume, trades, vwap, previous) =
        (int("volume_centi"), int("trade_count"), int("vwap_micros"), int("previous_micros"));
    let (empty, partial) = (column::<BooleanArray>(batch, "empty"), column::<BooleanArray>(batch, "partial"));
    let tickers = tickers(batch);
    (0..batch.num_rows())
        .map(|i| Candle {
            market_ticker: tickers[i].clone(),
            period_start: Some(timestamp_of_micros(start.value(i))),
            period_end: Some(timestamp_of_micros(end.value(i))),
            open_micros: open.value(i),
            high_micros: high.value(i),
            low_micros: low.value(i),
            close_micros: close.value(i),
            volume_centi: volume.value(i),
            trade_count: trades.value(i),
            vwap_micros: vwap.value(i),
            previous_micros: previous.is_valid(i).then(|| previous.value(i)),
            empty: empty.value(i),
            partial: partial.value(i),
        })
        .collect()
}

pub fn rows_of_columns(c: &TradeColumns, dictionary: &mut Vec<String>) -> Vec<Trade> {
    dictionary.extend(c.new_market_tickers.iter().cloned());
    (0..c.time_micros.len())
        .map(|i| Trade {
            trade_id: c.trade_id[i].clone(),
            market_ticker: dictionary[c.market_index[i] as usize].clone(),
            time: Some(prost_types::Timestamp {
                seconds: c.time_micros[i].div_euclid(1_000_000),
                nanos: (c.time_micros[i].rem_euclid(1_000_000) * 1000) as i32,
            }),
            yes_price_micros: c.yes_price_micros[i],
            no_price_micros: 1_000_000 - c.yes_price_micros[i],
            count_centi: c.count_centi[i],
            taker_side: c.taker_side[i],
            ingest_seq: c.ingest_seq[i],
        })
        .collect()
}

/// The status a stream ends with, after every data message still buffered; a stream that ends OK (without an
/// error) fails the test, since the callers expect it cut.
pub async fn final_status<T>(stream: &mut tonic::Streaming<T>) -> tonic::Status {
    loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended with OK"),
            Err(status) => return status,
        }
    }
}
