//! `collect live`: Kalshi's WebSocket feed recorded as it happens, through the importer's conversion
//! ([`kalshi::parse_line`]) and the write core ([`PendingWrite`]), in small transactions.
//!
//! - One connection, signed with the user's API key ([`ApiKey`]): `trade`, `orderbook_delta` (a snapshot per
//!   market, then deltas) and `market_lifecycle_v2`, for the selected markets. Series and events are selected by
//!   ticker prefix (`KXBTCD-...` is of series `KXBTCD`), so markets that open later are recorded too: their
//!   lifecycle messages (all markets' come on the channel) add them to the book subscription.
//! - Every data message gets its receive time (microseconds, strictly increasing within a connection) and is
//!   converted exactly as `import` converts a log line `{"received_at": .., "message": <the message>}`; that line is
//!   also what the optional raw log holds, so `import` of the log stores the same rows.
//! - Writes: a batch commits when it holds [`Options::flush_messages`] messages or its first message is
//!   [`Options::flush_interval`] old, whichever comes first. A market the database does not know is fetched from the
//!   REST API (market, event, series) into the same write before its facts. A message the write core refuses is
//!   logged and dropped; a failed commit (the database restarting) is retried with a backoff, holding the batch,
//!   while the socket waits (bounded memory: one batch and a bounded queue).
//! - The network: a connection that fails, closes, or sends nothing (not even Kalshi's 10-second pings) for
//!   [`Options::heartbeat_timeout`] is replaced after a doubling backoff, and everything is subscribed again
//!   (fresh snapshots). A break in an order-book subscription's `seq` (a message lost) unsubscribes it and
//!   subscribes its markets again, so a fresh snapshot follows; the stored sids and seqs keep the gap visible.
//!   Kalshi numbers sids per connection: a delta belongs to the latest snapshot of its sid at or before it.
//! - The shutdown future (SIGINT/SIGTERM from the command) ends the connection and commits what was received.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::pin;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic_health::{ServingStatus, server::HealthReporter};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue};

use super::auth::ApiKey;
use super::rest::KalshiRest;
use crate::{
    error::Error,
    import::{
        TableBuffers,
        kalshi::{self, Record},
    },
    ingest::{
        validate::Bounds,
        write::{self, PendingWrite, Stored},
    },
    limits::Limits,
    store::db::Pool,
};

/// Kalshi's production WebSocket (the demo environment is `wss://demo-api.kalshi.co/trade-api/ws/v2`).
pub const DEFAULT_WS_URL: &str = "wss://api.elections.kalshi.com/trade-api/ws/v2";
/// The longest pause between two connection attempts, and between two tries of a failed commit.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Tries of one batch's commit before the recorder gives up (about 8 minutes with the backoff's 30 s cap).
const WRITE_TRIES: u32 = 20;
/// Kalshi's largest market list page.
const PAGE: usize = 1000;

/// The channels recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    /// `trade`: every trade of the selected markets.
    pub trades: bool,
    /// `orderbook_delta`: book snapshots and deltas (a private channel: needs an API key).
    pub books: bool,
    /// `market_lifecycle_v2`: markets created, opened, closed, determined, settled.
    pub lifecycle: bool,
}

impl Default for Channels {
    fn default() -> Self {
        Self { trades: true, books: true, lifecycle: true }
    }
}

/// What to record and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The WebSocket URL, e.g. [`DEFAULT_WS_URL`].
    pub ws_url: String,
    /// Series tickers: every open market of each, and those that open while recording.
    pub series: Vec<String>,
    /// Event tickers: every open market of each, and those that open while recording.
    pub events: Vec<String>,
    /// Market tickers.
    pub markets: Vec<String>,
    pub channels: Channels,
    /// A batch commits once it holds this many messages...
    pub flush_messages: usize,
    /// ... or once its first message is this old.
    pub flush_interval: Duration,
    /// A connection that sends nothing for this long is dead (Kalshi pings every 10 s).
    pub heartbeat_timeout: Duration,
    /// The first pause before a reconnect or a retried commit; doubles up to 30 s.
    pub backoff: Duration,
    /// A directory for the raw log: one zstd-compressed JSON-lines file per UTC hour, each commit a zstd frame.
    pub raw_log: Option<PathBuf>,
    /// The write core's limits.
    pub limits: Limits,
    /// Health to report (grpc.health.v1, the empty service name): SERVING while a connection is subscribed and
    /// the last write went in, NOT_SERVING otherwise.
    pub health: Option<HealthReporter>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ws_url: DEFAULT_WS_URL.to_owned(),
            series: Vec::new(),
            events: Vec::new(),
            markets: Vec::new(),
            channels: Channels::default(),
            flush_messages: 1000,
            flush_interval: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_secs(30),
            backoff: Duration::from_millis(500),
            raw_log: None,
            limits: Limits::default(),
            health: None,
        }
    }
}

/// What a recording did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Data messages of the selected markets received (trades, snapshots, deltas, lifecycle events).
    pub messages: u64,
    /// Messages of other markets (all-market channels), not stored.
    pub other_markets: u64,
    /// Rows per table: inserted, updated, already stored.
    pub stored: BTreeMap<&'static str, Stored>,
    /// Commits.
    pub writes: u64,
    /// Commits that failed and were tried again.
    pub write_retries: u64,
    /// Messages the write core refused (logged and dropped).
    pub refused: u64,
    /// Connections opened, and those lost (closed, failed, silent).
    pub connections: u64,
    pub disconnects: u64,
    /// Breaks in an order-book subscription's seq, each answered by a new subscription.
    pub gaps: u64,
    /// Markets fetched from the REST API because a message named a market the database did not know.
    pub fetched_markets: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Report {
    /// One line per table and the totals, for the command line.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "recorded {} messages in {:.1} s ({} of other markets skipped): {} writes ({} retried), {} refused, \
             {} connections ({} lost), {} seq gaps resubscribed, {} markets fetched\n",
            self.messages,
            self.elapsed.as_secs_f64(),
            self.other_markets,
            self.writes,
            self.write_retries,
            self.refused,
            self.connections,
            self.disconnects,
            self.gaps,
            self.fetched_markets,
        );
        out.push_str(&write::table_lines(&self.stored));
        out
    }
}

/// The recorder's health: connected and subscribed, and writing.
#[derive(Debug)]
struct Health {
    reporter: Option<HealthReporter>,
    /// (connected, writing)
    state: std::sync::Mutex<(bool, bool)>,
}

impl Health {
    async fn new(reporter: Option<HealthReporter>) -> Self {
        let health = Self { reporter, state: std::sync::Mutex::new((false, true)) };
        health.report().await;
        health
    }

    async fn connected(&self, connected: bool) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = connected;
        self.report().await;
    }

    async fn writing(&self, writing: bool) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = writing;
        self.report().await;
    }

    async fn report(&self) {
        let Some(reporter) = &self.reporter else { return };
        let (connected, writing) = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        let status = if connected && writing { ServingStatus::Serving } else { ServingStatus::NotServing };
        reporter.set_service_status("", status).await;
    }
}

/// Which markets are recorded.
#[derive(Debug, Clone)]
struct Selection {
    prefixes: Vec<String>,
    markets: HashSet<String>,
}

impl Selection {
    fn new(options: &Options) -> Self {
        let prefixes = options.series.iter().chain(&options.events).map(|t| format!("{t}-")).collect();
        Self { prefixes, markets: options.markets.iter().cloned().collect() }
    }

    fn contains(&self, ticker: &str) -> bool {
        self.markets.contains(ticker) || self.prefixes.iter().any(|p| ticker.starts_with(p.as_str()))
    }

    /// Only named markets: the trade channel can be asked for just these.
    fn markets_only(&self) -> bool {
        self.prefixes.is_empty()
    }
}

/// Records the selection of `options` from Kalshi into the database of `pool` until `shutdown` completes.
pub async fn run(
    pool: &Pool,
    rest: &KalshiRest,
    key: Option<&ApiKey>,
    options: &Options,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, Error> {
    let started = Instant::now();
    if options.series.is_empty() && options.events.is_empty() && options.markets.is_empty() {
        return Err(Error::invalid("selection", "name at least one --series, --event or --market"));
    }
    if options.channels.books && key.is_none() {
        return Err(Error::invalid(
            "api_key_id",
            "orderbook_delta is a private channel: give an API key (--api-key-id and --private-key-file), or leave \
             books out (--channels trade,market_lifecycle_v2)",
        ));
    }
    let selection = Selection::new(options);
    // the selection's open markets, stored before the first message
    let mut recorder = Recorder::new(pool, rest, options)?;
    let markets = recorder.open_markets(&selection).await?;
    tracing::info!(markets = markets.len(), "collect live: recording");
    let (sender, receiver) = mpsc::channel(options.flush_messages.max(1) * 4);
    let health = Health::new(options.health.clone()).await;
    let writer = recorder.run(receiver, &health);
    let feed = Feed { options, selection: &selection, sender, health: &health };
    let reader = read(key, feed, markets, shutdown);
    let (read_report, write_report) = tokio::join!(reader, writer);
    let (read_report, mut report) = (read_report?, write_report?);
    report.messages = read_report.messages;
    report.other_markets = read_report.other_markets;
    report.connections = read_report.connections;
    report.disconnects = read_report.disconnects;
    report.gaps = read_report.gaps;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// A data message on its way to the writer: its log line and what it converts to.
#[derive(Debug)]
struct Received {
    line: String,
    records: Vec<Record>,
}

/// What the reading side works with: the options, the selection, the writer's queue, the health to report.
struct Feed<'a> {
    options: &'a Options,
    selection: &'a Selection,
    sender: mpsc::Sender<Received>,
    health: &'a Health,
}

/// How a connection ended.
enum End {
    Shutdown,
    Lost(String),
}

/// The reading side: connections, subscriptions, seq checks, the selection; sends data messages to the writer.
async fn read(
    key: Option<&ApiKey>,
    feed: Feed<'_>,
    markets: BTreeSet<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, Error> {
    let (options, health) = (feed.options, feed.health);
    let mut report = Report::default();
    let mut shutdown = pin!(shutdown);
    let mut state = Session { markets, ..Session::default() };
    let mut pause = options.backoff;
    loop {
        let connected = tokio::select! {
            () = &mut shutdown => return Ok(report),
            connected = connect(key, &options.ws_url) => connected,
        };
        let end = match connected {
            Ok(socket) => {
                report.connections += 1;
                let opened = Instant::now();
                let end = state.run(socket, &feed, &mut shutdown, &mut report).await?;
                health.connected(false).await;
                if opened.elapsed() > MAX_BACKOFF {
                    pause = options.backoff;
                }
                end
            }
            Err(Refused::Retry(reason)) => End::Lost(reason),
            // a wrong key stays wrong: no point in knocking again
            Err(Refused::Key(reason)) => return Err(Error::Kalshi { url: options.ws_url.clone(), reason }),
        };
        match end {
            End::Shutdown => return Ok(report),
            End::Lost(reason) => {
                report.disconnects += 1;
                tracing::warn!(%reason, pause_ms = pause.as_millis() as u64, "collect live: connection lost, reconnecting");
            }
        }
        tokio::select! {
            () = &mut shutdown => return Ok(report),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why a connection could not be opened.
enum Refused {
    /// The network or the server: try again.
    Retry(String),
    /// The URL or the key (401, 403): trying again cannot help.
    Key(String),
}

/// Opens a connection, its handshake signed with `key` when there is one.
async fn connect(key: Option<&ApiKey>, url: &str) -> Result<Socket, Refused> {
    let mut request = url.into_client_request().map_err(|e| Refused::Key(format!("not a WebSocket URL: {e}")))?;
    if let Some(key) = key {
        let path = request.uri().path().to_owned();
        for (name, value) in key.headers(Utc::now().timestamp_millis(), "GET", &path) {
            let value = HeaderValue::from_str(&value).map_err(|e| Refused::Key(e.to_string()))?;
            request.headers_mut().insert(name, value);
        }
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let reason = format!("the handshake was refused: {} {}", response.status(), body.trim());
            match response.status().as_u16() {
                401 | 403 => Err(Refused::Key(format!("{reason} (check --api-key-id and --private-key-file)"))),
                _ => Err(Refused::Retry(format!("{url}: {reason}"))),
            }
        }
        Err(e) => Err(Refused::Retry(format!("{url}: {}", crate::error::error_chain(&e)))),
    }
}

/// The subscriptions of the connection under way, and what outlives a connection.
#[derive(Debug, Default)]
struct Session {
    /// The markets whose books are subscribed (the selection's open markets and those opened since).
    markets: BTreeSet<String>,
    /// The next command id.
    next_id: u64,
    /// Commands waiting for their `subscribed`: id -> channel.
    pending: HashMap<u64, String>,
    /// The order-book subscription's sid, once subscribed.
    book_sid: Option<u64>,
    /// The last seq seen per sid of an order-book subscription.
    last_seq: HashMap<u64, i64>,
    /// The last receive time given, so that they increase strictly.
    last_received: Option<DateTime<Utc>>,
}

impl Session {
    /// Subscribes, then reads until the connection is lost or `shutdown` completes.
    async fn run(
        &mut self,
        mut socket: Socket,
        feed: &Feed<'_>,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
        report: &mut Report,
    ) -> Result<End, Error> {
        let (options, selection, sender, health) = (feed.options, feed.selection, &feed.sender, feed.health);
        self.pending.clear();
        self.book_sid = None;
        self.last_seq.clear();
        for command in self.subscriptions(options, selection) {
            if let Err(e) = socket.send(command).await {
                return Ok(End::Lost(format!("subscribing: {e}")));
            }
        }
        loop {
            let frame = tokio::select! {
                () = shutdown.as_mut() => {
                    // a polite close; what was received is committed by the writer
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                    return Ok(End::Shutdown);
                }
                frame = tokio::time::timeout(options.heartbeat_timeout, socket.next()) => frame,
            };
            let text = match frame {
                Err(_) => {
                    let silent = humantime::format_duration(options.heartbeat_timeout);
                    return Ok(End::Lost(format!("nothing received for {silent}, not even a ping")));
                }
                Ok(None) => return Ok(End::Lost("the connection ended".into())),
                Ok(Some(Err(e))) => return Ok(End::Lost(crate::error::error_chain(&e))),
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Ok(End::Lost(format!("closed by Kalshi: {frame:?}")));
                }
                // pings are answered by the socket itself; pongs and binary frames carry no data
                Ok(Some(Ok(_))) => continue,
            };
            let received = self.receive_time();
            let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                tracing::warn!(message = %text.as_str(), "collect live: a message that is not JSON, skipped");
                continue;
            };
            if value.get("type").and_then(Value::as_str) == Some("subscribed") {
                health.connected(true).await;
            }
            let commands = self.control(&value, options, selection, report);
            for command in commands {
                if let Err(e) = socket.send(command).await {
                    return Ok(End::Lost(format!("sending a command: {e}")));
                }
            }
            let Some(ticker) = value.pointer("/msg/market_ticker").and_then(Value::as_str) else { continue };
            if !selection.contains(ticker) {
                report.other_markets += 1;
                continue;
            }
            let line = format!(
                r#"{{"received_at":"{}","message":{}}}"#,
                received.to_rfc3339_opts(SecondsFormat::Micros, true),
                text.as_str()
            );
            let records = match kalshi::parse_line(&line) {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(error = %e, message = %text.as_str(), "collect live: a message that does not convert, skipped");
                    continue;
                }
            };
            if records.iter().all(|r| matches!(r, Record::Ignored(_))) {
                continue;
            }
            report.messages += 1;
            if sender.send(Received { line, records }).await.is_err() {
                // the writer stopped on an error, which `run` reports
                return Ok(End::Shutdown);
            }
        }
    }

    /// A receive time: now, but after the previous one.
    fn receive_time(&mut self) -> DateTime<Utc> {
        let now = Utc::now();
        let time = match self.last_received {
            Some(last) if now <= last => last + TimeDelta::microseconds(1),
            _ => now,
        };
        self.last_received = Some(time);
        time
    }

    fn command(&mut self, cmd: &str, params: Value) -> (u64, Message) {
        self.next_id += 1;
        let id = self.next_id;
        (id, Message::text(json!({ "id": id, "cmd": cmd, "params": params }).to_string()))
    }

    fn subscribe(&mut self, channel: &str, tickers: Option<Vec<String>>) -> Message {
        let params = match tickers {
            Some(tickers) => json!({ "channels": [channel], "market_tickers": tickers }),
            None => json!({ "channels": [channel] }),
        };
        let (id, message) = self.command("subscribe", params);
        self.pending.insert(id, channel.to_owned());
        message
    }

    /// The subscribe commands of a new connection.
    fn subscriptions(&mut self, options: &Options, selection: &Selection) -> Vec<Message> {
        let mut out = Vec::new();
        let named: Vec<String> = selection.markets.iter().cloned().collect();
        if options.channels.trades {
            // named markets only: just theirs; series or events: all trades, those of other markets skipped
            out.push(self.subscribe("trade", selection.markets_only().then_some(named)));
        }
        if options.channels.books && !self.markets.is_empty() {
            let markets = self.markets.iter().cloned().collect();
            out.push(self.subscribe("orderbook_delta", Some(markets)));
        }
        if options.channels.lifecycle {
            out.push(self.subscribe("market_lifecycle_v2", None));
        }
        out
    }

    /// Follows the subscriptions: `subscribed`, errors, seq breaks, markets that open. The commands to send.
    fn control(
        &mut self,
        value: &Value,
        options: &Options,
        selection: &Selection,
        report: &mut Report,
    ) -> Vec<Message> {
        let kind = value.get("type").and_then(Value::as_str).unwrap_or_default();
        let sid =
            value.get("sid").and_then(Value::as_u64).or_else(|| value.pointer("/msg/sid").and_then(Value::as_u64));
        match kind {
            "subscribed" => {
                let id = value.get("id").and_then(Value::as_u64).unwrap_or_default();
                if let (Some(channel), Some(sid)) = (self.pending.remove(&id), sid)
                    && channel == "orderbook_delta"
                {
                    self.book_sid = Some(sid);
                }
                Vec::new()
            }
            "error" => {
                tracing::warn!(message = %value, "collect live: Kalshi refused a command");
                Vec::new()
            }
            "orderbook_snapshot" | "orderbook_delta" => {
                let (Some(sid), Some(seq)) = (sid, value.get("seq").and_then(Value::as_i64)) else { return Vec::new() };
                let last = self.last_seq.insert(sid, seq);
                match last {
                    Some(last) if seq != last + 1 && self.book_sid == Some(sid) => {
                        report.gaps += 1;
                        tracing::warn!(
                            sid,
                            expected = last + 1,
                            got = seq,
                            "collect live: seq gap, subscribing the books again"
                        );
                        self.resubscribe_books(sid)
                    }
                    _ => Vec::new(),
                }
            }
            "market_lifecycle_v2" => {
                let ticker = value.pointer("/msg/market_ticker").and_then(Value::as_str).unwrap_or_default();
                let event = value.pointer("/msg/event_type").and_then(Value::as_str).unwrap_or_default();
                let opens = matches!(event, "created" | "activated");
                if !opens || !selection.contains(ticker) || self.markets.contains(ticker) {
                    return Vec::new();
                }
                self.markets.insert(ticker.to_owned());
                match self.book_sid {
                    Some(sid) if options.channels.books => {
                        let params = json!({ "sids": [sid], "market_tickers": [ticker], "action": "add_markets" });
                        vec![self.command("update_subscription", params).1]
                    }
                    None if options.channels.books && !self.pending.values().any(|c| c == "orderbook_delta") => {
                        vec![self.subscribe("orderbook_delta", Some(vec![ticker.to_owned()]))]
                    }
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    /// A new book subscription for every market of `sid`, whose seq broke: its snapshots start a sound book.
    fn resubscribe_books(&mut self, sid: u64) -> Vec<Message> {
        self.book_sid = None;
        let (_, unsubscribe) = self.command("unsubscribe", json!({ "sids": [sid] }));
        let markets = self.markets.iter().cloned().collect();
        vec![unsubscribe, self.subscribe("orderbook_delta", Some(markets))]
    }
}

/// The writing side: batches, unknown markets, commits with retries, the raw log.
struct Recorder<'a> {
    pool: &'a Pool,
    rest: &'a KalshiRest,
    options: &'a Options,
    /// Markets known to be in the database (or asked of Kalshi in vain).
    known: HashSet<String>,
    log: Option<RawLog>,
    report: Report,
}

impl<'a> Recorder<'a> {
    fn new(pool: &'a Pool, rest: &'a KalshiRest, options: &'a Options) -> Result<Self, Error> {
        let log = options.raw_log.clone().map(RawLog::new).transpose()?;
        Ok(Self { pool, rest, options, known: HashSet::new(), log, report: Report::default() })
    }

    /// Stores the selection's open markets (with their events and series); their tickers.
    async fn open_markets(&mut self, selection: &Selection) -> Result<BTreeSet<String>, Error> {
        let mut documents = Vec::new();
        let filters = self
            .options
            .series
            .iter()
            .map(|s| ("series_ticker", s))
            .chain(self.options.events.iter().map(|e| ("event_ticker", e)));
        for (key, value) in filters {
            let mut cursor = String::new();
            loop {
                let mut query = vec![(key, value.clone()), ("status", "open".to_owned()), ("limit", PAGE.to_string())];
                if !cursor.is_empty() {
                    query.push(("cursor", cursor.clone()));
                }
                let page = self.rest.get("markets", &query).await?.unwrap_or(Value::Null);
                cursor = page.get("cursor").and_then(Value::as_str).unwrap_or_default().to_owned();
                documents.push(("markets".to_owned(), page));
                if cursor.is_empty() {
                    break;
                }
            }
        }
        let mut markets = BTreeSet::new();
        for (_, page) in &documents {
            for market in page.get("markets").and_then(Value::as_array).into_iter().flatten() {
                if let Some(ticker) = market.get("ticker").and_then(Value::as_str) {
                    markets.insert(ticker.to_owned());
                }
            }
        }
        let mut write = PendingWrite::new(self.pool, self.options.limits.max_rows_per_write);
        let mut buffers = TableBuffers::default();
        for (path, page) in &documents {
            self.push_document(path, page, &mut write, &mut buffers).await?;
        }
        let mut events = BTreeSet::new();
        for ticker in selection.markets.clone() {
            match self.fetch_market(&ticker, &mut write, &mut buffers, &mut events).await? {
                true => markets.insert(ticker),
                false => return Err(Error::NotFound { kind: "market ticker (at Kalshi)", names: vec![ticker] }),
            };
        }
        for (_, page) in &documents {
            for market in page.get("markets").and_then(Value::as_array).into_iter().flatten() {
                if let Some(event) = market.get("event_ticker").and_then(Value::as_str) {
                    self.fetch_event(event, &mut write, &mut buffers, &mut events).await?;
                }
            }
        }
        buffers.finish(&mut write).await?;
        let committed = write.commit().await?;
        self.count(committed.stored);
        self.known.extend(markets.iter().cloned());
        Ok(markets)
    }

    /// Converts a REST document into `buffers` of `write`.
    async fn push_document(
        &mut self,
        path: &str,
        page: &Value,
        write: &mut PendingWrite,
        buffers: &mut TableBuffers,
    ) -> Result<(), Error> {
        let records =
            kalshi::parse_document(page).map_err(|e| Error::Kalshi { url: path.into(), reason: e.to_string() })?;
        let bounds = Bounds::new(&self.options.limits, Utc::now());
        for record in records {
            buffers.push(write, record, &bounds).await.map_err(|e| match e {
                Error::InvalidArgument { field, reason } => {
                    Error::Kalshi { url: path.into(), reason: format!("{field}: {reason}") }
                }
                e => e,
            })?;
        }
        Ok(())
    }

    /// Adds the market `ticker` (live, else archived) with its event and series to the write; false when Kalshi
    /// does not know it.
    async fn fetch_market(
        &mut self,
        ticker: &str,
        write: &mut PendingWrite,
        buffers: &mut TableBuffers,
        events: &mut BTreeSet<String>,
    ) -> Result<bool, Error> {
        let mut path = format!("markets/{ticker}");
        let mut page = self.rest.get(&path, &[]).await?;
        if page.is_none() {
            path = format!("historical/markets/{ticker}");
            page = self.rest.get(&path, &[]).await?;
        }
        let Some(page) = page else { return Ok(false) };
        self.push_document(&path, &page, write, buffers).await?;
        if let Some(event) = page.pointer("/market/event_ticker").and_then(Value::as_str) {
            self.fetch_event(event, write, buffers, events).await?;
        }
        Ok(true)
    }

    /// Adds the event `ticker` and its series to the write, once per write.
    async fn fetch_event(
        &mut self,
        ticker: &str,
        write: &mut PendingWrite,
        buffers: &mut TableBuffers,
        events: &mut BTreeSet<String>,
    ) -> Result<(), Error> {
        if !events.insert(ticker.to_owned()) {
            return Ok(());
        }
        let path = format!("events/{ticker}");
        let Some(mut page) = self.rest.get(&path, &[]).await? else { return Ok(()) };
        // the event's nested markets are not this write's business: only the event itself
        if let Some(event) = page.get_mut("event").and_then(Value::as_object_mut) {
            event.remove("markets");
        }
        if let Some(page) = page.as_object_mut() {
            page.remove("markets");
        }
        self.push_document(&path, &page, write, buffers).await?;
        if let Some(series) = page.pointer("/event/series_ticker").and_then(Value::as_str) {
            let path = format!("series/{series}");
            if let Some(page) = self.rest.get(&path, &[]).await? {
                self.push_document(&path, &page, write, buffers).await?;
            }
        }
        Ok(())
    }

    fn count(&mut self, stored: BTreeMap<&'static str, Stored>) {
        for (table, stored) in stored {
            *self.report.stored.entry(table).or_default() += stored;
        }
    }

    /// Takes messages until the reader is done, committing a batch by count or by age; the last batch at the end.
    async fn run(mut self, mut receiver: mpsc::Receiver<Received>, health: &Health) -> Result<Report, Error> {
        let mut batch: Vec<Received> = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = match deadline {
                Some(at) => tokio::select! {
                    received = receiver.recv() => received,
                    () = tokio::time::sleep_until(at) => {
                        self.flush(&mut batch, health).await?;
                        deadline = None;
                        continue;
                    }
                },
                None => receiver.recv().await,
            };
            let Some(received) = next else { break };
            if batch.is_empty() {
                deadline = Some(tokio::time::Instant::now() + self.options.flush_interval);
            }
            batch.push(received);
            if batch.len() >= self.options.flush_messages {
                self.flush(&mut batch, health).await?;
                deadline = None;
            }
        }
        self.flush(&mut batch, health).await?;
        if let Some(log) = self.log.take() {
            log.close()?;
        }
        Ok(self.report)
    }

    /// Commits `batch`, trying again after a failure of the database until it goes in.
    async fn flush(&mut self, batch: &mut Vec<Received>, health: &Health) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pause = self.options.backoff;
        for tries in 1.. {
            match self.write(batch).await {
                Ok(()) => {
                    if tries > 1 {
                        health.writing(true).await;
                    }
                    break;
                }
                Err(e) if tries > WRITE_TRIES => return Err(e),
                Err(e) => {
                    health.writing(false).await;
                    self.report.write_retries += 1;
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, messages = batch.len(), "collect live: a write failed, trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
            }
        }
        if let Some(log) = &mut self.log {
            log.append(batch.iter().map(|r| r.line.as_str()))?;
        }
        batch.clear();
        Ok(())
    }

    /// One write of `batch`: unknown markets first, then every record the write core accepts.
    async fn write(&mut self, batch: &[Received]) -> Result<(), Error> {
        let mut write = PendingWrite::new(self.pool, self.options.limits.max_rows_per_write);
        let mut buffers = TableBuffers::default();
        let unknown: BTreeSet<&str> =
            batch.iter().flat_map(|r| &r.records).filter_map(ticker).filter(|t| !self.known.contains(*t)).collect();
        let mut fetched = Vec::new();
        if !unknown.is_empty() {
            let conn = self.pool.get().await?;
            let names: Vec<&str> = unknown.iter().copied().collect();
            let rows = conn.query("SELECT ticker FROM markets WHERE ticker = ANY($1)", &[&names]).await?;
            let stored: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
            drop(conn);
            let mut events = BTreeSet::new();
            for ticker in unknown.into_iter().filter(|t| !stored.contains(*t)) {
                match self.fetch_market(ticker, &mut write, &mut buffers, &mut events).await {
                    Ok(true) => fetched.push(ticker.to_owned()),
                    Ok(false) => {
                        tracing::warn!(ticker, "collect live: a market Kalshi does not know; its facts are kept")
                    }
                    Err(e) => {
                        tracing::warn!(ticker, error = %e, "collect live: a market's definition could not be fetched")
                    }
                }
            }
            self.known.extend(stored);
        }
        let bounds = Bounds::new(&self.options.limits, Utc::now());
        let mut refused = 0;
        for received in batch {
            for record in &received.records {
                match buffers.push(&mut write, record.clone(), &bounds).await {
                    Ok(_) => {}
                    Err(e @ (Error::InvalidArgument { .. } | Error::TooLarge { .. })) => {
                        refused += 1;
                        tracing::warn!(error = %e, line = %received.line, "collect live: a message refused by the write core, dropped");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        buffers.finish(&mut write).await?;
        let committed = write.commit().await?;
        self.report.writes += 1;
        self.report.refused += refused;
        self.report.fetched_markets += fetched.len() as u64;
        self.known.extend(fetched);
        self.known.extend(batch.iter().flat_map(|r| &r.records).filter_map(ticker).map(str::to_owned));
        self.count(committed.stored);
        Ok(())
    }
}

/// The market a fact is about.
fn ticker(record: &Record) -> Option<&str> {
    match record {
        Record::Trade(t) => Some(&t.market_ticker),
        Record::Snapshot(s) => Some(&s.market_ticker),
        Record::Delta(d) => Some(&d.market_ticker),
        Record::Lifecycle(l) => Some(&l.market_ticker),
        _ => None,
    }
}

/// The raw log: a directory of `kalshi-live-<UTC hour>.jsonl.zst` files, each commit's lines one zstd frame
/// appended, so a file cut by a crash loses at most its last frame and `import` reads the rest.
#[derive(Debug)]
struct RawLog {
    dir: PathBuf,
    open: Option<(String, File)>,
}

impl RawLog {
    fn new(dir: PathBuf) -> Result<Self, Error> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        Ok(Self { dir, open: None })
    }

    fn append<'l>(&mut self, lines: impl Iterator<Item = &'l str>) -> Result<(), Error> {
        let name = format!("kalshi-live-{}.jsonl.zst", Utc::now().format("%Y-%m-%dT%H"));
        if self.open.as_ref().is_none_or(|(open, _)| *open != name) {
            let path = self.dir.join(&name);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
            self.open = Some((name, file));
        }
        let (name, file) = self.open.as_mut().expect("opened above");
        let failed = |e| Error::io(format!("write {}", name), e);
        let mut frame = zstd::Encoder::new(Vec::new(), 3).map_err(failed)?;
        for line in lines {
            frame.write_all(line.as_bytes()).map_err(failed)?;
            frame.write_all(b"\n").map_err(failed)?;
        }
        let frame = frame.finish().map_err(failed)?;
        file.write_all(&frame).map_err(failed)?;
        Ok(())
    }

    fn close(self) -> Result<(), Error> {
        if let Some((name, file)) = self.open {
            file.sync_all().map_err(|e| Error::io(format!("sync {name}"), e))?;
        }
        Ok(())
    }
}
