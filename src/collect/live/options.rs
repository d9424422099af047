//! What `collect live` records and how: its options, the channels, the selection of markets.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use tonic_health::server::HealthReporter;

use crate::limits::Limits;

/// Kalshi's production WebSocket (the demo environment is `wss://demo-api.kalshi.co/trade-api/ws/v2`).
pub const DEFAULT_WS_URL: &str = "wss://api.elections.kalshi.com/trade-api/ws/v2";
/// The longest pause between two connection attempts, and between two tries of a failed commit.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

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

/// Which markets are recorded.
#[derive(Debug, Clone)]
pub(super) struct Selection {
    prefixes: Vec<String>,
    pub(super) markets: HashSet<String>,
}

impl Selection {
    pub(super) fn new(options: &Options) -> Self {
        let prefixes = options.series.iter().chain(&options.events).map(|t| format!("{t}-")).collect();
        Self { prefixes, markets: options.markets.iter().cloned().collect() }
    }

    pub(super) fn contains(&self, ticker: &str) -> bool {
        self.markets.contains(ticker) || self.prefixes.iter().any(|p| ticker.starts_with(p.as_str()))
    }

    /// Only named markets: the trade channel can be asked for just these.
    pub(super) fn markets_only(&self) -> bool {
        self.prefixes.is_empty()
    }
}
