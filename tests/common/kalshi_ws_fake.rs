//! A fake of Kalshi's market-data WebSocket (AsyncAPI 2.0.0) for the live recorder's tests and latency bench:
//! markets with order books generated from a seed, the `trade`, `orderbook_delta` and `market_lifecycle_v2`
//! channels with Kalshi's commands, sids, seqs and error codes, the API-key handshake checked for real, and faults
//! (dropped connections, skipped seqs, stalls) on demand.
//!
//! Shapes (current Kalshi fields only, no legacy integer cents or contracts, so that sub-cent prices and fractional
//! counts are exact):
//! - `{"type":"orderbook_snapshot","sid","seq","msg":{market_ticker, market_id, yes_dollars_fp, no_dollars_fp}}`,
//!   levels `[["0.4250","3.50"], ...]` ascending by price, a side absent when empty (as Kalshi does).
//! - `{"type":"orderbook_delta","sid","seq","msg":{market_ticker, market_id, price_dollars, delta_fp, side, ts}}`,
//!   `ts` RFC 3339 with milliseconds.
//! - `{"type":"trade","sid","msg":{trade_id, market_ticker, yes_price_dollars, no_price_dollars, count_fp,
//!   taker_side, taker_outcome_side, taker_book_side, ts, ts_ms}}`: no `seq`, as in the spec.
//! - `{"type":"market_lifecycle_v2","sid","msg":{market_ticker, event_type, ...}}`: no `seq` either.
//!
//! Sequence numbers: each sid counts its data messages from 1; only orderbook messages carry `seq`. A snapshot
//! takes the next seq like a delta. Responses (`subscribed`, `ok`, `unsubscribed`) never take one; `ok` and
//! `unsubscribed` carry the sid's last seq.
//!
//! Commands (a reply carries the command's `id` unless it is 0 or absent):
//! - `subscribe {channels, market_ticker | market_tickers}`: one `subscribed {channel, sid}` per channel, sids
//!   numbered per connection from 1, then a snapshot per market of an orderbook_delta sid. Errors, nothing
//!   subscribed: 2 no params, 3 no channels, 8 a channel other than trade, orderbook_delta, market_lifecycle_v2,
//!   11 both ticker fields or a malformed one, 14 orderbook_delta without markets, 16 an unknown market (with
//!   `market_ticker`), 6 a channel already subscribed on the connection for one of the markets (or for all).
//!   trade without markets is every market; market_lifecycle_v2 is always every market (tickers ignored).
//! - `unsubscribe {sids}`: one `unsubscribed {sid, seq}` per sid; 4 no sids, 7 an unknown sid (none removed).
//! - `update_subscription {sid | sids: [one], market_ticker(s), action}`: `ok {sid, seq, msg: {market_tickers}}`
//!   (the full list), then a snapshot of each market added; adding a market already there sends nothing more.
//!   15 no action, 13 another action, 12 not exactly one sid, 7 unknown sid, 14 no markets, 16 unknown market,
//!   11 a subscription to every market.
//! - `list_subscriptions`: `ok` with `[{channel, sid}]`. Anything else: 5; a frame that is not a JSON object: 1.
//!
//! The data depend only on the seed and the calls made (markets, `emit`, lifecycle events), not on who listens:
//! two fakes with the same seed and calls have the same books and trades (trade ids included; times are now).
//!
//! Every message to a connection goes through one queue, filled under the fake's lock: the reply to a command
//! comes after every data message queued before the command was read, and a snapshot holds the book as it is
//! between the deltas before it and those after it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{SecondsFormat, Utc};
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rsa::{PrivateKey, PublicKey, pkcs1::DecodeRsaPrivateKey, sha2::Sha256};
use serde_json::{Map, Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::server::{ErrorResponse, Request, Response},
        http::{HeaderMap, StatusCode},
    },
};

/// The WebSocket's path, as on Kalshi's servers; it is also the path the handshake signs.
pub const WS_PATH: &str = "/trade-api/ws/v2";
/// The key id the fake accepts unless told otherwise.
pub const TEST_KEY_ID: &str = "fake-kalshi-key";
/// The test key (PKCS#1 PEM) whose public half the fake checks signatures with. Test-only, never a real key.
pub const TEST_KEY_PEM: &str = include_str!("../fixtures/kalshi_test_key.pem");

/// The test key's file, for a recorder that reads its key from a path.
pub fn test_key_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kalshi_test_key.pem")
}

/// How far the handshake's timestamp may be from the fake's clock.
const CLOCK_SKEW_MS: i64 = 60_000;
const CENT: i64 = 10_000;
const DOLLAR: i64 = 1_000_000;

/// What the fake serves and which faults it injects; the faults can also be changed while it runs.
#[derive(Debug, Clone)]
pub struct WsOptions {
    pub seed: u64,
    /// The KALSHI-ACCESS-KEY the handshake must carry.
    pub key_id: String,
    /// Levels per side of a generated book.
    pub depth: usize,
    /// Ping frames (body "heartbeat") this often; Kalshi's is 10 s. A connection reads it when it opens.
    pub ping_interval: Duration,
    /// A connection is dropped once it has written this many data messages: no close frame, the TCP ended (a FIN
    /// after the last frame, so the client still reads every frame counted as delivered).
    pub drop_after: Option<u64>,
    /// Every n-th orderbook_delta of a sid is not sent; its seq is used up and the book still changes.
    pub skip_seq_every: Option<u64>,
    /// A connection goes silent (no data, no pings, no reads; the TCP stays open) once it has written this many
    /// data messages.
    pub stall_after: Option<u64>,
}

impl Default for WsOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            key_id: TEST_KEY_ID.to_owned(),
            depth: 5,
            ping_interval: Duration::from_millis(200),
            drop_after: None,
            skip_seq_every: None,
            stall_after: None,
        }
    }
}

/// One market's book: YES bids and NO bids, price in micro-dollars -> size in hundredths of a contract; only
/// positive sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeBook {
    pub yes: BTreeMap<i64, i64>,
    pub no: BTreeMap<i64, i64>,
}

impl FakeBook {
    fn side_mut(&mut self, yes: bool) -> &mut BTreeMap<i64, i64> {
        if yes { &mut self.yes } else { &mut self.no }
    }
}

/// The fake server on 127.0.0.1, stopped (with every connection) when dropped.
#[derive(Debug)]
pub struct KalshiWsFake {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl KalshiWsFake {
    /// Serves `tickers`, each with a generated book, on a port of its own, in tasks of the current runtime.
    pub async fn start<T: Into<String>>(tickers: impl IntoIterator<Item = T>, options: WsOptions) -> Self {
        let key = PrivateKey::from_pkcs1_pem(TEST_KEY_PEM).expect("the test key").to_public_key();
        let mut state = World {
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            faults: Faults {
                ping_interval: options.ping_interval,
                drop_after: options.drop_after,
                skip_seq_every: options.skip_seq_every,
                stall_after: options.stall_after,
            },
            depth: options.depth,
            ..World::default()
        };
        for ticker in tickers {
            state.add_market(ticker.into());
        }
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared { key_id: options.key_id, key, state: Mutex::new(state), stopped });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake Kalshi WebSocket");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(serve(listener, shared.clone()));
        Self { addr, shared, stop }
    }

    /// The tickers of the active markets among Kalshi `Market` objects (e.g. a KalshiData's `markets`).
    pub fn active_tickers(markets: &[Value]) -> Vec<String> {
        markets
            .iter()
            .filter(|m| m["status"] == "active")
            .filter_map(|m| m["ticker"].as_str().map(str::to_owned))
            .collect()
    }

    /// "ws://127.0.0.1:PORT/trade-api/ws/v2".
    pub fn url(&self) -> String {
        format!("ws://{}{WS_PATH}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        self.shared.lock()
    }

    /// Generates `n` events over the active markets (about half book deltas, the rest trades), applies each to
    /// the fake's state and queues it to every connection subscribed to it. Returns once every message is queued.
    pub fn emit(&self, n: usize) {
        let mut state = self.lock();
        for _ in 0..n {
            let delta = state.rng.random_bool(0.5);
            state.emit_one(delta);
        }
    }

    /// One `market_lifecycle_v2` message of `event_type` (created, activated, deactivated, close_date_updated,
    /// determined, settled) for `ticker`, to every lifecycle subscriber; a known market's status follows it (only
    /// active markets get deltas and trades). An unknown ticker is sent as is, with no state.
    pub fn emit_lifecycle(&self, ticker: &str, event_type: &str) {
        self.lock().emit_lifecycle(ticker, event_type);
    }

    /// Adds a market with a generated book (no change if it exists) and sends its `created` and `activated`
    /// lifecycle messages.
    pub fn add_market(&self, ticker: &str) {
        let mut state = self.lock();
        if !state.markets.contains_key(ticker) {
            state.add_market(ticker.to_owned());
        }
        state.emit_lifecycle(ticker, "created");
        state.emit_lifecycle(ticker, "activated");
    }

    /// `count` trades over the active markets, spread evenly at `rate_per_s` (a tokio interval, catching up in
    /// bursts when late); [`Self::sent_at`] tells when each one's frame was written.
    pub async fn emit_trades_at(&self, rate_per_s: f64, count: usize) {
        assert!(rate_per_s > 0.0, "a positive rate");
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate_per_s));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for _ in 0..count {
            interval.tick().await;
            self.lock().emit_one(false);
        }
    }

    pub fn set_drop_after(&self, messages: Option<u64>) {
        self.lock().faults.drop_after = messages;
    }

    pub fn set_skip_seq_every(&self, deltas: Option<u64>) {
        self.lock().faults.skip_seq_every = deltas;
    }

    pub fn set_stall_after(&self, messages: Option<u64>) {
        self.lock().faults.stall_after = messages;
    }

    /// For connections opened from now on.
    pub fn set_ping_interval(&self, interval: Duration) {
        self.lock().faults.ping_interval = interval;
    }

    /// Every market's book now.
    pub fn books(&self) -> BTreeMap<String, FakeBook> {
        self.lock().markets.iter().map(|(t, m)| (t.clone(), m.book.clone())).collect()
    }

    /// Every trade emitted (the `msg` of its message), in order.
    pub fn trades(&self) -> Vec<Value> {
        self.lock().trades.clone()
    }

    /// The trades written to at least one connection, in emitted order.
    pub fn delivered_trades(&self) -> Vec<Value> {
        let state = self.lock();
        state
            .trades
            .iter()
            .filter(|t| t["trade_id"].as_str().is_some_and(|id| state.sent_at.contains_key(id)))
            .cloned()
            .collect()
    }

    /// When the first frame of trade `trade_id` was written to a connection.
    pub fn sent_at(&self, trade_id: &str) -> Option<Instant> {
        self.lock().sent_at.get(trade_id).copied()
    }

    /// Handshakes accepted.
    pub fn connections(&self) -> u64 {
        self.lock().accepted
    }

    /// Handshakes refused with a 401.
    pub fn rejected_handshakes(&self) -> u64 {
        self.lock().rejected
    }

    /// Every command received, in order (a text frame that is not JSON as a JSON string).
    pub fn commands(&self) -> Vec<Value> {
        self.lock().commands.clone()
    }

    /// Live connections (not dropped, stalled or closed) with a subscription to `channel`.
    pub fn subscribers(&self, channel: &str) -> usize {
        let Some(channel) = Channel::parse(channel) else { return 0 };
        self.lock().conns.values().filter(|c| c.subs.values().any(|s| s.channel == channel)).count()
    }

    /// Waits until at least `n` live connections subscribe to `channel`; fails the test after `timeout`.
    pub async fn wait_for_subscribers(&self, channel: &str, n: usize, timeout: Duration) {
        let started = Instant::now();
        while self.subscribers(channel) < n {
            assert!(started.elapsed() < timeout, "{n} subscribers of {channel} not there after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until every live connection has written everything queued to it; fails the test after `timeout`.
    pub async fn wait_until_sent(&self, timeout: Duration) {
        let started = Instant::now();
        while self.lock().conns.values().any(|c| c.written < c.queued) {
            assert!(started.elapsed() < timeout, "messages still queued after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Orderbook deltas withheld by `skip_seq_every`.
    pub fn gaps_made(&self) -> u64 {
        self.lock().gaps
    }

    /// Connections dropped by `drop_after`.
    pub fn drops_made(&self) -> u64 {
        self.lock().drops
    }

    /// Connections stalled by `stall_after`.
    pub fn stalls_made(&self) -> u64 {
        self.lock().stalls
    }
}

impl Drop for KalshiWsFake {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[derive(Debug)]
struct Shared {
    key_id: String,
    key: PublicKey,
    state: Mutex<World>,
    /// True once the fake is dropped: every connection ends, stalled ones too.
    stopped: watch::Receiver<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, World> {
        self.state.lock().expect("the fake's state")
    }
}

#[derive(Debug, Clone, Default)]
struct Faults {
    ping_interval: Duration,
    drop_after: Option<u64>,
    skip_seq_every: Option<u64>,
    stall_after: Option<u64>,
}

#[derive(Debug)]
struct World {
    rng: ChaCha8Rng,
    faults: Faults,
    depth: usize,
    markets: BTreeMap<String, Market>,
    trades: Vec<Value>,
    sent_at: HashMap<String, Instant>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    accepted: u64,
    rejected: u64,
    commands: Vec<Value>,
    gaps: u64,
    drops: u64,
    stalls: u64,
}

impl Default for World {
    fn default() -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(0),
            faults: Faults::default(),
            depth: 0,
            markets: BTreeMap::new(),
            trades: Vec::new(),
            sent_at: HashMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            accepted: 0,
            rejected: 0,
            commands: Vec::new(),
            gaps: 0,
            drops: 0,
            stalls: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Initialized,
    Active,
    Inactive,
    Determined,
    Settled,
}

#[derive(Debug)]
struct Market {
    id: String,
    /// YES bids lie below it, NO bids below 1 USD minus it, so that the book never crosses.
    mid_cents: i64,
    book: FakeBook,
    status: Status,
    open_ts: i64,
    close_ts: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Trade,
    OrderbookDelta,
    Lifecycle,
}

impl Channel {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "trade" => Some(Self::Trade),
            "orderbook_delta" => Some(Self::OrderbookDelta),
            "market_lifecycle_v2" => Some(Self::Lifecycle),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Trade => "trade",
            Self::OrderbookDelta => "orderbook_delta",
            Self::Lifecycle => "market_lifecycle_v2",
        }
    }
}

#[derive(Debug)]
struct Sub {
    channel: Channel,
    /// None: every market.
    markets: Option<BTreeSet<String>>,
    /// Data messages of this sid so far (the last seq).
    seq: i64,
    /// Deltas of this sid so far, sent or withheld.
    deltas: u64,
}

impl Sub {
    fn covers(&self, ticker: &str) -> bool {
        self.markets.as_ref().is_none_or(|m| m.contains(ticker))
    }
}

/// A frame for a connection: its text, whether it is a data message (counted by the faults), and the trade it
/// carries.
#[derive(Debug)]
struct Out {
    text: String,
    data: bool,
    trade_id: Option<String>,
}

#[derive(Debug)]
struct Conn {
    /// Unbounded: emitting never waits for a slow client (a stalled one leaves the registry at once).
    tx: mpsc::UnboundedSender<Out>,
    subs: BTreeMap<i64, Sub>,
    next_sid: i64,
    queued: u64,
    written: u64,
}

impl Conn {
    fn push(&mut self, text: String, data: bool, trade_id: Option<String>) {
        if self.tx.send(Out { text, data, trade_id }).is_ok() {
            self.queued += 1;
        }
    }

    fn reply(&mut self, value: Value) {
        self.push(value.to_string(), false, None);
    }
}

impl World {
    fn add_market(&mut self, ticker: String) {
        let rng = &mut self.rng;
        let mid_cents = rng.random_range(20..=80);
        let mut book = FakeBook::default();
        for (yes, top) in [(true, mid_cents), (false, 100 - mid_cents)] {
            for _ in 0..self.depth {
                let price = random_price(rng, top);
                let size = random_size(rng, 100_000);
                book.side_mut(yes).insert(price, size);
            }
        }
        let now = Utc::now().timestamp();
        let market = Market {
            id: uuid(rng),
            mid_cents,
            book,
            status: Status::Active,
            open_ts: now - 3_600,
            close_ts: now + 7 * 86_400,
        };
        self.markets.insert(ticker, market);
    }

    /// One delta or one trade on a random active market.
    fn emit_one(&mut self, delta: bool) {
        let active: Vec<&String> =
            self.markets.iter().filter(|(_, m)| m.status == Status::Active).map(|(t, _)| t).collect();
        if active.is_empty() {
            return;
        }
        let ticker = active[self.rng.random_range(0..active.len())].clone();
        if delta { self.emit_delta(&ticker) } else { self.emit_trade(&ticker) }
    }

    fn emit_delta(&mut self, ticker: &str) {
        let Some(market) = self.markets.get_mut(ticker) else { return };
        let rng = &mut self.rng;
        let yes = rng.random_bool(0.5);
        let top = if yes { market.mid_cents } else { 100 - market.mid_cents };
        let side = market.book.side_mut(yes);
        let (price, change) = if !side.is_empty() && rng.random_bool(0.7) {
            let (&price, &size) = side.iter().nth(rng.random_range(0..side.len())).expect("a level");
            let change = if size == 1 || rng.random_bool(0.25) {
                -size // the level goes
            } else {
                let change = random_size(rng, 5_000) * if rng.random_bool(0.5) { 1 } else { -1 };
                change.max(1 - size)
            };
            (price, change)
        } else {
            (random_price(rng, top), random_size(rng, 20_000))
        };
        let size = side.entry(price).or_insert(0);
        *size += change;
        if *size == 0 {
            side.remove(&price);
        }
        let msg = json!({
            "market_ticker": ticker,
            "market_id": market.id,
            "price_dollars": dollars(price),
            "delta_fp": count_fp(change),
            "side": if yes { "yes" } else { "no" },
            "ts": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        let skip_every = self.faults.skip_seq_every.filter(|&n| n > 0);
        let mut gaps = 0;
        for conn in self.conns.values_mut() {
            let mut out = Vec::new();
            for (&sid, sub) in conn.subs.iter_mut().filter(|(_, s)| s.channel == Channel::OrderbookDelta) {
                if !sub.covers(ticker) {
                    continue;
                }
                sub.seq += 1;
                sub.deltas += 1;
                if skip_every.is_some_and(|n| sub.deltas % n == 0) {
                    gaps += 1;
                    continue;
                }
                out.push(json!({"type": "orderbook_delta", "sid": sid, "seq": sub.seq, "msg": msg}).to_string());
            }
            for text in out {
                conn.push(text, true, None);
            }
        }
        self.gaps += gaps;
    }

    fn emit_trade(&mut self, ticker: &str) {
        let Some(market) = self.markets.get(ticker) else { return };
        let rng = &mut self.rng;
        let cents = (market.mid_cents + rng.random_range(-3..=3)).clamp(1, 99);
        let yes_price = cents * CENT + if rng.random_bool(0.15) { CENT / 2 } else { 0 };
        let count = random_size(rng, 50_000);
        let taker_yes = rng.random_bool(0.5);
        let trade_id = uuid(rng);
        let now = Utc::now();
        let msg = json!({
            "trade_id": trade_id,
            "market_ticker": ticker,
            "yes_price_dollars": dollars(yes_price),
            "no_price_dollars": dollars(DOLLAR - yes_price),
            "count_fp": count_fp(count),
            "taker_side": if taker_yes { "yes" } else { "no" },
            "taker_outcome_side": if taker_yes { "yes" } else { "no" },
            "taker_book_side": if taker_yes { "bid" } else { "ask" },
            "ts": now.timestamp(),
            "ts_ms": now.timestamp_millis(),
        });
        for conn in self.conns.values_mut() {
            let sids: Vec<i64> = conn
                .subs
                .iter_mut()
                .filter(|(_, s)| s.channel == Channel::Trade && s.covers(ticker))
                .map(|(&sid, sub)| {
                    sub.seq += 1;
                    sid
                })
                .collect();
            for sid in sids {
                conn.push(json!({"type": "trade", "sid": sid, "msg": msg}).to_string(), true, Some(trade_id.clone()));
            }
        }
        self.trades.push(msg);
    }

    fn emit_lifecycle(&mut self, ticker: &str, event_type: &str) {
        let now = Utc::now().timestamp();
        let mut msg = Map::new();
        msg.insert("market_ticker".into(), json!(ticker));
        msg.insert("event_type".into(), json!(event_type));
        let market = self.markets.get_mut(ticker);
        let (open_ts, close_ts) = market.as_ref().map_or((now - 3_600, now + 7 * 86_400), |m| (m.open_ts, m.close_ts));
        let status = match event_type {
            "created" => {
                let event_ticker = ticker.rsplit_once('-').map_or(ticker, |(event, _)| event);
                msg.insert("open_ts".into(), json!(open_ts));
                msg.insert("close_ts".into(), json!(close_ts));
                msg.insert(
                    "additional_metadata".into(),
                    json!({
                        "name": format!("Fake market {ticker}"),
                        "title": format!("Will {ticker} resolve Yes?"),
                        "yes_sub_title": "Yes",
                        "no_sub_title": "No",
                        "rules_primary": "A fake market of the tests.",
                        "rules_secondary": "",
                        "can_close_early": true,
                        "event_ticker": event_ticker,
                        "expected_expiration_ts": close_ts + 300,
                        "strike_type": "greater",
                    }),
                );
                Some(Status::Initialized)
            }
            "activated" => Some(Status::Active),
            "deactivated" => {
                msg.insert("is_deactivated".into(), json!(true));
                Some(Status::Inactive)
            }
            "close_date_updated" => {
                let close = close_ts + 86_400;
                msg.insert("close_ts".into(), json!(close));
                if let Some(m) = market {
                    m.close_ts = close;
                }
                None
            }
            "determined" => {
                let yes = self.rng.random_bool(0.5);
                msg.insert("result".into(), json!(if yes { "yes" } else { "no" }));
                msg.insert("determination_ts".into(), json!(now));
                msg.insert("settlement_value".into(), json!(if yes { "1.0000" } else { "0.0000" }));
                Some(Status::Determined)
            }
            "settled" => {
                msg.insert("settled_ts".into(), json!(now));
                Some(Status::Settled)
            }
            other => panic!("unknown lifecycle event type {other:?}"),
        };
        if let (Some(status), Some(m)) = (status, self.markets.get_mut(ticker)) {
            m.status = status;
        }
        let msg = Value::Object(msg);
        for conn in self.conns.values_mut() {
            let sids: Vec<i64> = conn
                .subs
                .iter_mut()
                .filter(|(_, s)| s.channel == Channel::Lifecycle)
                .map(|(&sid, sub)| {
                    sub.seq += 1;
                    sid
                })
                .collect();
            for sid in sids {
                conn.push(json!({"type": "market_lifecycle_v2", "sid": sid, "msg": msg}).to_string(), true, None);
            }
        }
    }

    /// The snapshot message of `ticker`'s book for `sid`, which takes the sid's next seq.
    fn snapshot(&self, sid: i64, seq: i64, ticker: &str) -> String {
        let mut msg = Map::new();
        msg.insert("market_ticker".into(), json!(ticker));
        if let Some(m) = self.markets.get(ticker) {
            msg.insert("market_id".into(), json!(m.id));
            for (key, side) in [("yes_dollars_fp", &m.book.yes), ("no_dollars_fp", &m.book.no)] {
                if !side.is_empty() {
                    let levels: Vec<Value> = side.iter().map(|(&p, &s)| json!([dollars(p), count_fp(s)])).collect();
                    msg.insert(key.into(), Value::Array(levels));
                }
            }
        }
        json!({"type": "orderbook_snapshot", "sid": sid, "seq": seq, "msg": msg}).to_string()
    }

    /// Queues a snapshot of each of `tickers` to subscription `sid` of connection `conn`.
    fn send_snapshots(&mut self, conn: u64, sid: i64, tickers: &[String]) {
        for ticker in tickers {
            let Some(sub) = self.conns.get_mut(&conn).and_then(|c| c.subs.get_mut(&sid)) else { return };
            sub.seq += 1;
            let seq = sub.seq;
            let text = self.snapshot(sid, seq, ticker);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.push(text, true, None);
            }
        }
    }
}

/// A price in micro-dollars below `top_cents`: on the cent grid, a fifth of them half a cent above it.
fn random_price(rng: &mut ChaCha8Rng, top_cents: i64) -> i64 {
    let cents = rng.random_range(1..top_cents.max(2));
    cents * CENT + if rng.random_bool(0.2) { CENT / 2 } else { 0 }
}

/// A size in hundredths of a contract up to `max`: mostly whole contracts, a quarter fractional.
fn random_size(rng: &mut ChaCha8Rng, max: i64) -> i64 {
    let size = rng.random_range(1..=max);
    if rng.random_bool(0.25) { size } else { (size / 100).max(1) * 100 }
}

/// A random version-4 UUID, as Kalshi's ids.
fn uuid(rng: &mut ChaCha8Rng) -> String {
    let n = (rng.random::<u128>() & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{n:032x}");
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Micro-dollars (multiples of 100) as FixedPointDollars ("0.4250").
fn dollars(micros: i64) -> String {
    format!("{}.{:04}", micros / DOLLAR, (micros % DOLLAR) / 100)
}

/// Hundredths of a contract as FixedPointCount ("3.50", "-12.00").
fn count_fp(centi: i64) -> String {
    let sign = if centi < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", centi.abs() / 100, centi.abs() % 100)
}

/// Accepts connections until the fake stops. The server is tokio-tungstenite's rather than axum's so that a
/// dropped connection can be half-closed (see [`Fault::Drop`]).
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut stopped = shared.stopped.clone();
    loop {
        let stream = tokio::select! {
            () = until_stopped(&mut stopped) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        tokio::spawn(handshake(shared.clone(), stream));
    }
}

/// Checks the path and the API-key headers before the upgrade: a 401 when a header is missing or wrong.
#[allow(clippy::result_large_err, reason = "the refusal's type is tungstenite's Callback's")]
async fn handshake(shared: Arc<Shared>, stream: TcpStream) {
    // frames go out as written, as a latency bench needs
    let _ = stream.set_nodelay(true);
    let check = |request: &Request, response: Response| {
        let refuse = |status: StatusCode, reason: String| {
            let mut refusal = ErrorResponse::new(Some(reason));
            *refusal.status_mut() = status;
            Err(refusal)
        };
        if request.uri().path() != WS_PATH {
            return refuse(StatusCode::NOT_FOUND, format!("no WebSocket at {}", request.uri().path()));
        }
        match authenticate(&shared, request.headers()) {
            Ok(()) => Ok(response),
            Err(reason) => {
                shared.lock().rejected += 1;
                refuse(StatusCode::UNAUTHORIZED, reason)
            }
        }
    };
    let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, check).await else { return };
    shared.lock().accepted += 1;
    connection(shared, socket).await;
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<(), String> {
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).ok_or_else(|| format!("{name} is missing or not text"))
    };
    let key = header("KALSHI-ACCESS-KEY")?;
    let timestamp = header("KALSHI-ACCESS-TIMESTAMP")?;
    let signature = header("KALSHI-ACCESS-SIGNATURE")?;
    if key != shared.key_id {
        return Err(format!("unknown API key {key:?}"));
    }
    let ms: i64 = timestamp.parse().map_err(|_| format!("timestamp {timestamp:?} is not unix milliseconds"))?;
    if (Utc::now().timestamp_millis() - ms).abs() > CLOCK_SKEW_MS {
        return Err(format!("timestamp {ms} is more than {CLOCK_SKEW_MS} ms from now"));
    }
    let signature = STANDARD.decode(signature).map_err(|_| "the signature is not standard base64".to_owned())?;
    let message = format!("{timestamp}GET{WS_PATH}");
    shared
        .key
        .pss_verify::<Sha256>(message.as_bytes(), &signature)
        .map_err(|_| "the signature does not verify".to_owned())
}

/// One connection: writes what is queued to it and pings, reads commands; ends when the client leaves, when a
/// fault says so, or when the fake stops.
async fn connection(shared: Arc<Shared>, mut socket: WebSocketStream<TcpStream>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (id, ping_every) = {
        let mut state = shared.lock();
        let id = state.next_conn;
        state.next_conn += 1;
        state.conns.insert(id, Conn { tx, subs: BTreeMap::new(), next_sid: 1, queued: 0, written: 0 });
        (id, state.faults.ping_interval.max(Duration::from_millis(1)))
    };
    let mut stopped = shared.stopped.clone();
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay); // late pings do not bunch up
    let mut data_written = 0u64;
    loop {
        tokio::select! {
            () = until_stopped(&mut stopped) => break,
            out = rx.recv() => {
                let Some(Out { text, data, trade_id }) = out else { break };
                if socket.send(Message::text(text)).await.is_err() {
                    break;
                }
                data_written += u64::from(data);
                match written(&shared, id, data.then_some(data_written), trade_id) {
                    Fault::None => {}
                    Fault::Drop => {
                        half_close(socket.get_mut(), &mut stopped).await;
                        return;
                    }
                    Fault::Stall => {
                        // silent but open until the fake stops
                        until_stopped(&mut stopped).await;
                        return;
                    }
                }
            }
            _ = pings.tick() => {
                if socket.send(Message::Ping("heartbeat".into())).await.is_err() {
                    break;
                }
            }
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => command(&mut shared.lock(), id, text.as_str()),
                Some(Ok(Message::Binary(_))) => command(&mut shared.lock(), id, "<binary frame>"),
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {} // pings are answered by the socket, pongs need nothing
            },
        }
    }
    shared.lock().conns.remove(&id);
}

/// What a connection does after a write.
#[derive(Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// The connection ends without a close frame: a FIN after the last byte written, so that the client reads
    /// every frame the fake counts as written and then the end of the stream. A plain close could be an RST
    /// (when bytes of the client's are still unread, e.g. a pong), which discards what the client has not read.
    Drop,
    /// Silent: no writes, no reads, the TCP open until the fake stops.
    Stall,
}

/// Ends the fake's side of `stream` after what was written, then reads and discards until the client closes its
/// side (or the fake stops, or 30 s pass), so that the client gets everything and no RST.
async fn half_close(stream: &mut TcpStream, stopped: &mut watch::Receiver<bool>) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut buffer = [0u8; 4096];
    let discard = async {
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        () = discard => {}
        () = until_stopped(stopped) => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => {}
    }
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Books a frame written by connection `id` (its `data`-th data message, if one; a trade's, if `trade_id`), and
/// tells whether a fault now drops or stalls the connection (which then leaves the registry).
fn written(shared: &Shared, id: u64, data: Option<u64>, trade_id: Option<String>) -> Fault {
    let mut state = shared.lock();
    if let Some(trade_id) = trade_id {
        state.sent_at.entry(trade_id).or_insert_with(Instant::now);
    }
    if let Some(conn) = state.conns.get_mut(&id) {
        conn.written += 1;
    }
    let Some(data_written) = data else { return Fault::None };
    let due = |after: Option<u64>| after.is_some_and(|n| data_written >= n);
    let fault = if due(state.faults.drop_after) {
        state.drops += 1;
        Fault::Drop
    } else if due(state.faults.stall_after) {
        state.stalls += 1;
        Fault::Stall
    } else {
        return Fault::None;
    };
    state.conns.remove(&id);
    fault
}

/// An `error` response.
fn error(id: Option<u64>, code: u64, text: &str, market: Option<&str>) -> Value {
    let mut msg = json!({"code": code, "msg": text});
    if let Some(market) = market {
        msg["market_ticker"] = json!(market);
    }
    with_id(id, json!({"type": "error", "msg": msg}))
}

/// `value` with the command's id, which 0 or absent leaves out (as Kalshi treats 0 as no id).
fn with_id(id: Option<u64>, mut value: Value) -> Value {
    if let Some(id) = id.filter(|&id| id > 0) {
        value["id"] = json!(id);
    }
    value
}

/// A command's market tickers: `market_ticker` or `market_tickers` (not both), None when neither.
fn tickers_of(params: &Map<String, Value>) -> Result<Option<Vec<String>>, (u64, &'static str)> {
    const INVALID: (u64, &str) = (11, "Invalid parameter");
    match (params.get("market_ticker"), params.get("market_tickers")) {
        (Some(_), Some(_)) => Err(INVALID),
        (Some(Value::String(t)), None) => Ok(Some(vec![t.clone()])),
        (Some(_), None) => Err(INVALID),
        (None, Some(Value::Array(items))) if !items.is_empty() => {
            let tickers: Option<Vec<String>> = items.iter().map(|t| t.as_str().map(str::to_owned)).collect();
            tickers.map(Some).ok_or(INVALID)
        }
        (None, Some(_)) => Err(INVALID),
        (None, None) => Ok(None),
    }
}

/// Handles one command of connection `conn`, queuing its responses (and snapshots) to it.
fn command(state: &mut World, conn: u64, text: &str) {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()));
    state.commands.push(value.clone());
    let id = value.get("id").and_then(Value::as_u64);
    let replies = match value.as_object() {
        None => Err(error(id, 1, "Unable to process message", None)),
        Some(cmd) => match cmd.get("cmd").and_then(Value::as_str) {
            Some("subscribe") => subscribe(state, conn, id, cmd),
            Some("unsubscribe") => unsubscribe(state, conn, id, cmd),
            Some("update_subscription") => update_subscription(state, conn, id, cmd),
            Some("list_subscriptions") => list_subscriptions(state, conn, id),
            _ => Err(error(id, 5, "Unknown command", None)),
        },
    };
    if let (Err(reply), Some(c)) = (replies, state.conns.get_mut(&conn)) {
        c.reply(reply);
    }
}

type Handled = Result<(), Value>;

fn params(id: Option<u64>, cmd: &Map<String, Value>) -> Result<&Map<String, Value>, Value> {
    cmd.get("params").and_then(Value::as_object).ok_or_else(|| error(id, 2, "Params required", None))
}

/// The first of `tickers` the fake does not know, as an error 16.
fn unknown_market(state: &World, id: Option<u64>, tickers: &[String]) -> Handled {
    match tickers.iter().find(|t| !state.markets.contains_key(t.as_str())) {
        Some(t) => Err(error(id, 16, "Market not found", Some(t))),
        None => Ok(()),
    }
}

fn subscribe(state: &mut World, conn: u64, id: Option<u64>, cmd: &Map<String, Value>) -> Handled {
    let params = params(id, cmd)?;
    let names = match params.get("channels").and_then(Value::as_array) {
        Some(names) if !names.is_empty() => names,
        _ => return Err(error(id, 3, "Channels required", None)),
    };
    let mut channels = Vec::new();
    for name in names {
        let channel =
            name.as_str().and_then(Channel::parse).ok_or_else(|| error(id, 8, "Unknown channel name", None))?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    let tickers = tickers_of(params).map_err(|(code, text)| error(id, code, text, None))?;
    if channels.contains(&Channel::OrderbookDelta) && tickers.is_none() {
        return Err(error(id, 14, "Market Ticker required", None));
    }
    if let Some(tickers) = &tickers {
        unknown_market(state, id, tickers)?;
    }
    let Some(c) = state.conns.get_mut(&conn) else { return Ok(()) };
    let mut created = Vec::new();
    for &channel in &channels {
        // lifecycle messages are for every market whatever the filter, as on Kalshi
        let markets = match channel {
            Channel::Lifecycle => None,
            _ => tickers.as_ref().map(|t| t.iter().cloned().collect::<BTreeSet<_>>()),
        };
        let overlaps = c.subs.values().any(|s| {
            s.channel == channel
                && match (&s.markets, &markets) {
                    (Some(theirs), Some(ours)) => !theirs.is_disjoint(ours),
                    _ => true,
                }
        });
        if overlaps {
            return Err(error(id, 6, "Already subscribed", None));
        }
        created.push((channel, markets));
    }
    let mut snapshots = Vec::new();
    for (channel, markets) in created {
        let sid = c.next_sid;
        c.next_sid += 1;
        c.reply(with_id(id, json!({"type": "subscribed", "msg": {"channel": channel.name(), "sid": sid}})));
        if channel == Channel::OrderbookDelta {
            snapshots.push((sid, markets.iter().flatten().cloned().collect::<Vec<_>>()));
        }
        c.subs.insert(sid, Sub { channel, markets, seq: 0, deltas: 0 });
    }
    for (sid, tickers) in snapshots {
        state.send_snapshots(conn, sid, &tickers);
    }
    Ok(())
}

fn unsubscribe(state: &mut World, conn: u64, id: Option<u64>, cmd: &Map<String, Value>) -> Handled {
    let params = params(id, cmd)?;
    let sids = match params.get("sids").and_then(Value::as_array) {
        Some(sids) if !sids.is_empty() => sids,
        _ => return Err(error(id, 4, "Subscription IDs required", None)),
    };
    let sids: Vec<i64> = sids
        .iter()
        .map(Value::as_i64)
        .collect::<Option<_>>()
        .ok_or_else(|| error(id, 11, "Invalid parameter", None))?;
    let Some(c) = state.conns.get_mut(&conn) else { return Ok(()) };
    if sids.iter().any(|sid| !c.subs.contains_key(sid)) {
        return Err(error(id, 7, "Unknown subscription ID", None));
    }
    for sid in sids {
        if let Some(sub) = c.subs.remove(&sid) {
            c.reply(with_id(id, json!({"type": "unsubscribed", "sid": sid, "seq": sub.seq})));
        }
    }
    Ok(())
}

fn update_subscription(state: &mut World, conn: u64, id: Option<u64>, cmd: &Map<String, Value>) -> Handled {
    let params = params(id, cmd)?;
    let add = match params.get("action").and_then(Value::as_str) {
        None => return Err(error(id, 15, "Action required", None)),
        Some("add_markets") => true,
        Some("delete_markets") => false,
        Some(_) => return Err(error(id, 13, "Unsupported action", None)),
    };
    let sid = match (params.get("sid"), params.get("sids").and_then(Value::as_array)) {
        (Some(sid), None) => sid.as_i64(),
        (None, Some(sids)) if sids.len() == 1 => sids[0].as_i64(),
        _ => None,
    };
    let sid = sid.ok_or_else(|| error(id, 12, "Exactly one subscription ID is required", None))?;
    let tickers = tickers_of(params)
        .map_err(|(code, text)| error(id, code, text, None))?
        .ok_or_else(|| error(id, 14, "Market Ticker required", None))?;
    unknown_market(state, id, &tickers)?;
    let Some(c) = state.conns.get_mut(&conn) else { return Ok(()) };
    let sub = c.subs.get_mut(&sid).ok_or_else(|| error(id, 7, "Unknown subscription ID", None))?;
    let Some(markets) = sub.markets.as_mut() else {
        return Err(error(id, 11, "Invalid parameter", None)); // a subscription to every market has none to change
    };
    let mut added = Vec::new();
    for ticker in tickers {
        if add {
            if markets.insert(ticker.clone()) {
                added.push(ticker);
            }
        } else {
            markets.remove(&ticker);
        }
    }
    let list: Vec<&String> = markets.iter().collect();
    let ok = with_id(id, json!({"type": "ok", "sid": sid, "seq": sub.seq, "msg": {"market_tickers": list}}));
    let snapshots = sub.channel == Channel::OrderbookDelta;
    c.reply(ok);
    if snapshots {
        state.send_snapshots(conn, sid, &added);
    }
    Ok(())
}

fn list_subscriptions(state: &mut World, conn: u64, id: Option<u64>) -> Handled {
    let Some(c) = state.conns.get_mut(&conn) else { return Ok(()) };
    let subs: Vec<Value> = c.subs.iter().map(|(sid, s)| json!({"channel": s.channel.name(), "sid": sid})).collect();
    c.reply(with_id(id, json!({"type": "ok", "msg": subs})));
    Ok(())
}
