//! Command-line and environment configuration. Every flag has an environment variable, and `--help` shows both.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};

use crate::{generate::DatasetSpec, limits::Limits, progress::ProgressMode, store::db};

/// Stores Kalshi market history in PostgreSQL and replays it deterministically over gRPC.
#[derive(Debug, Parser)]
#[command(name = "kalshi-replay", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `kalshi_replay=debug,tower=warn`.
    #[arg(long, env = "KALSHI_REPLAY_LOG", default_value = "info", global = true)]
    pub log: String,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (applies pending migrations first).
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(DbArgs),
    /// Load a deterministic synthetic dataset into an empty database.
    Generate(GenerateArgs),
    /// Serve gRPC on a sample dataset, generated on first start (the quickest way to try the service).
    Demo(DemoArgs),
    /// Import Kalshi's own JSON: REST pages (.json) and WebSocket logs (JSON lines), gzip or zstd or plain.
    Import(ImportArgs),
    /// Fetch Kalshi's data from its API: `collect backfill` reads the REST API, `collect live` records the WebSocket.
    Collect(CollectArgs),
    /// Measure throughput and latency per RPC under concurrent load.
    Bench(BenchArgs),
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db. Unset: a private PostgreSQL is started in
    /// --data-dir and stopped on exit.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory of the private PostgreSQL (used only when --database-url is unset). Data survives restarts.
    #[arg(long, env = "KALSHI_REPLAY_DATA_DIR", default_value = ".kalshi-replay")]
    pub data_dir: PathBuf,
    /// Maximum number of pooled database connections (for `serve`: streams and writes; at least 2 x --max-streams
    /// + --max-writes, so that admitted work never waits for a connection).
    #[arg(long, env = "KALSHI_REPLAY_POOL_SIZE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_size: u32,
    /// How long to wait for the database at start-up and for a pooled connection, e.g. `10s`, `500ms`.
    #[arg(long, env = "KALSHI_REPLAY_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

impl DbArgs {
    /// The database options of these flags.
    pub fn options(&self) -> db::Options {
        db::Options {
            database_url: self.database_url.clone(),
            data_dir: self.data_dir.clone(),
            connect_timeout: self.connect_timeout,
        }
    }
}

/// `serve` options.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Database options.
    #[command(flatten)]
    pub db: DbArgs,
    /// Address to serve gRPC on.
    #[arg(long, env = "KALSHI_REPLAY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// How many UTC days ahead of today the server keeps daily partitions created; facts dated later are refused.
    #[arg(long, env = "KALSHI_REPLAY_PARTITIONS_AHEAD", default_value_t = 7, value_parser = clap::value_parser!(u32).range(0..=366))]
    pub partitions_ahead: u32,
    /// Pooled connections for lookups and health, apart from --pool-size (streams and writes), so that they never
    /// wait behind streams.
    #[arg(long, env = "KALSHI_REPLAY_LOOKUP_POOL_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub lookup_pool_size: u32,
    /// Limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The server's limits (see the README's "Limits and failure behaviour").
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Replay streams running at once, all clients together; beyond it RESOURCE_EXHAUSTED.
    #[arg(long, env = "KALSHI_REPLAY_MAX_STREAMS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams: u32,
    /// Replay streams running at once on one client connection; beyond it RESOURCE_EXHAUSTED.
    #[arg(long, env = "KALSHI_REPLAY_MAX_STREAMS_PER_CONNECTION", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams_per_connection: u32,
    /// Writes (Ingest* client streams and Upsert* batches) running at once; beyond it RESOURCE_EXHAUSTED.
    #[arg(long, env = "KALSHI_REPLAY_MAX_WRITES", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_writes: u32,
    /// A stream whose client reads nothing for this long is ended with UNAVAILABLE, e.g. `60s`.
    #[arg(long, env = "KALSHI_REPLAY_STREAM_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub stream_idle_timeout: Duration,
    /// At shutdown, how long streams in flight may still run before they end with UNAVAILABLE, e.g. `10s`.
    #[arg(long, env = "KALSHI_REPLAY_SHUTDOWN_DRAIN", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_drain: Duration,
    /// Largest request message the server decodes, in bytes; a larger one is refused (OUT_OF_RANGE).
    #[arg(long, env = "KALSHI_REPLAY_MAX_REQUEST_BYTES", default_value_t = 16 << 20)]
    pub max_request_bytes: usize,
    /// Largest response message the server encodes, in bytes.
    #[arg(long, env = "KALSHI_REPLAY_MAX_RESPONSE_BYTES", default_value_t = 64 << 20)]
    pub max_response_bytes: usize,
    /// HTTP/2 calls open at once on one client connection.
    #[arg(long, env = "KALSHI_REPLAY_MAX_CALLS_PER_CONNECTION", default_value_t = 256)]
    pub max_calls_per_connection: u32,
    /// HTTP/2 keepalive: a ping after this much silence on a connection, e.g. `30s`.
    #[arg(long, env = "KALSHI_REPLAY_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive: a connection whose ping is not answered this soon is closed, e.g. `20s`.
    #[arg(long, env = "KALSHI_REPLAY_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,
    /// Markets one stream's selection may expand to (its events and series included); beyond it
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "KALSHI_REPLAY_MAX_SELECTION_MARKETS", default_value_t = 20_000)]
    pub max_selection_markets: usize,
    /// Items one write may carry (a whole Ingest* client stream, or one Upsert* batch); beyond it
    /// INVALID_ARGUMENT and nothing is stored.
    #[arg(long, env = "KALSHI_REPLAY_MAX_ROWS_PER_WRITE", default_value_t = 10_000_000)]
    pub max_rows_per_write: u64,
    /// Largest count or size of a trade, order-book level or delta, in centi-contracts.
    #[arg(long, env = "KALSHI_REPLAY_MAX_COUNT_CENTI", default_value_t = 1_000_000_000_000, value_parser = clap::value_parser!(i64).range(1..))]
    pub max_count_centi: i64,
    /// How far ahead of the server's clock a reference row's updated_time may be, e.g. `5m`.
    #[arg(long, env = "KALSHI_REPLAY_MAX_UPDATED_TIME_SKEW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_updated_time_skew: Duration,
}

impl LimitArgs {
    /// The server's limits: these flags over the defaults of the rest.
    pub fn limits(&self, partitions_ahead: u32) -> Limits {
        Limits {
            max_streams: self.max_streams as usize,
            max_streams_per_connection: self.max_streams_per_connection as usize,
            max_writes: self.max_writes as usize,
            stream_idle_timeout: self.stream_idle_timeout,
            shutdown_drain: self.shutdown_drain,
            max_decoding_message_bytes: self.max_request_bytes,
            max_encoding_message_bytes: self.max_response_bytes,
            max_concurrent_streams_per_connection: self.max_calls_per_connection,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            max_fact_days_ahead: partitions_ahead,
            max_selection_markets: self.max_selection_markets,
            max_rows_per_write: self.max_rows_per_write,
            max_count_centi: self.max_count_centi,
            max_updated_time_skew: self.max_updated_time_skew,
            ..Limits::default()
        }
    }
}

/// The shape of a synthetic dataset.
#[derive(Debug, Clone, Args)]
pub struct DatasetArgs {
    /// Seed of the generator: the same seed and sizes give identical rows.
    #[arg(long, env = "KALSHI_REPLAY_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Number of markets.
    #[arg(long, env = "KALSHI_REPLAY_MARKETS", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub markets: u32,
    /// Number of UTC days of history, at most 366 (the load holds a lock on every day partition it writes, and
    /// PostgreSQL's default lock table fits about a year and a half of them).
    #[arg(long, env = "KALSHI_REPLAY_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub days: u32,
    /// Number of trades in total.
    #[arg(long, env = "KALSHI_REPLAY_TRADES", default_value_t = 1_000_000)]
    pub trades: u64,
    /// First UTC day of the dataset (YYYY-MM-DD).
    #[arg(long, env = "KALSHI_REPLAY_START", default_value = "2026-01-05")]
    pub start: NaiveDate,
}

impl DatasetArgs {
    /// The generator's spec of this shape.
    pub fn spec(&self) -> DatasetSpec {
        DatasetSpec { seed: self.seed, markets: self.markets, days: self.days, trades: self.trades, start: self.start }
    }
}

/// `generate` options.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Database options.
    #[command(flatten)]
    pub db: DbArgs,
    /// Dataset shape.
    #[command(flatten)]
    pub dataset: DatasetArgs,
}

/// `demo` options.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Server options.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Shape of the dataset generated when the database holds no markets.
    #[command(flatten)]
    pub dataset: DatasetArgs,
}

/// `import` options.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Database options.
    #[command(flatten)]
    pub db: DbArgs,
    /// Files or directories to import (directories: all their files, recursively, in path order).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Count and log malformed lines and invalid items instead of stopping at the first one.
    #[arg(long, env = "KALSHI_REPLAY_SKIP_BAD")]
    pub skip_bad: bool,
    /// Progress display: a bar on a terminal and log lines otherwise (auto), or as chosen.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// The longest line (or whole JSON document) read, in bytes; a longer one stops the import.
    #[arg(long, env = "KALSHI_REPLAY_MAX_LINE_BYTES", default_value_t = 16 << 20)]
    pub max_line_bytes: usize,
    /// The most bytes read from one file after decompression; more stops the import.
    #[arg(long, env = "KALSHI_REPLAY_MAX_FILE_BYTES", default_value_t = 64 << 30)]
    pub max_file_bytes: u64,
    /// Items one file's write may carry; more stops the import.
    #[arg(long, env = "KALSHI_REPLAY_MAX_ROWS_PER_WRITE", default_value_t = 10_000_000)]
    pub max_rows_per_write: u64,
}

impl ImportArgs {
    /// The importer's limits: these flags over the defaults of the rest.
    pub fn limits(&self) -> Limits {
        Limits {
            max_import_line_bytes: self.max_line_bytes,
            max_import_file_bytes: self.max_file_bytes,
            max_rows_per_write: self.max_rows_per_write,
            ..Limits::default()
        }
    }
}

/// `collect` options.
#[derive(Debug, Clone, Args)]
pub struct CollectArgs {
    /// What to collect.
    #[command(subcommand)]
    pub mode: CollectMode,
}

/// The ways `collect` fetches.
#[derive(Debug, Clone, Subcommand)]
pub enum CollectMode {
    /// Everything Kalshi's REST API still serves for a selection: series, events, markets, settlements, trades,
    /// Kalshi's candlesticks.
    Backfill(BackfillArgs),
    /// Kalshi's WebSocket feed as it happens: trades, order books, lifecycle events, until SIGINT or SIGTERM.
    Live(LiveArgs),
}

/// How `collect` talks to Kalshi's REST API (both modes).
#[derive(Debug, Clone, Args)]
pub struct KalshiRestArgs {
    /// Kalshi's REST API (production; the demo environment is https://demo-api.kalshi.co/trade-api/v2).
    #[arg(long, env = "KALSHI_REPLAY_BASE_URL", default_value = "https://api.elections.kalshi.com/trade-api/v2")]
    pub base_url: String,
    /// Requests per second to Kalshi, all together (Kalshi's basic tier allows 20 reads a second).
    #[arg(long, env = "KALSHI_REPLAY_RATE", default_value_t = std::num::NonZeroU32::new(20).expect("20"))]
    pub rate: std::num::NonZeroU32,
    /// One request's time limit, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub request_timeout: Duration,
    /// Retries of one request (429, 5xx, timeouts) before it fails.
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
}

impl KalshiRestArgs {
    /// The REST client's policy.
    pub fn policy(&self) -> crate::collect::rest::Policy {
        crate::collect::rest::Policy {
            rate: self.rate,
            timeout: self.request_timeout,
            max_retries: self.max_retries,
            backoff: Duration::from_millis(500),
        }
    }
}

/// `collect backfill` options.
#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    /// Database options.
    #[command(flatten)]
    pub db: DbArgs,
    /// Kalshi's REST API.
    #[command(flatten)]
    pub rest: KalshiRestArgs,
    /// Series tickers: each series with all its events, markets and trades (repeatable).
    #[arg(long = "series")]
    pub series: Vec<String>,
    /// Categories (e.g. Economics): every series of each, as with --series (repeatable).
    #[arg(long = "category")]
    pub categories: Vec<String>,
    /// Event tickers: each event with its series, markets and trades (repeatable).
    #[arg(long = "event")]
    pub events: Vec<String>,
    /// Market tickers: each market with its event, series and trades (repeatable).
    #[arg(long = "market")]
    pub markets: Vec<String>,
    /// Only markets with one of these statuses, as Kalshi's Market.status (e.g. active, finalized; repeatable).
    #[arg(long = "status")]
    pub statuses: Vec<String>,
    /// Trades at or after this time (RFC 3339), e.g. 2025-11-01T00:00:00Z.
    #[arg(long, value_parser = parse_time)]
    pub start: Option<chrono::DateTime<chrono::Utc>>,
    /// Trades before this time (RFC 3339); default: now.
    #[arg(long, value_parser = parse_time)]
    pub end: Option<chrono::DateTime<chrono::Utc>>,
    /// Kalshi's candlesticks to fetch for every market, by period in minutes: any of 1, 60, 1440, comma-separated;
    /// `none` for none. The default leaves out 1-minute candles: a month-long market has 43,200 of them (9
    /// requests of 5,000 candles each, against 1 for its hours and days), most of them empty.
    #[arg(
        long,
        env = "KALSHI_REPLAY_CANDLES",
        value_delimiter = ',',
        value_parser = parse_period,
        default_value = "60,1440"
    )]
    pub candles: Vec<Option<i32>>,
    /// Markets whose trades are fetched at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Progress display: a bar on a terminal and log lines otherwise (auto), or as chosen.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
}

/// A WebSocket channel `collect live` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum LiveChannel {
    /// Trades.
    Trade,
    /// Order-book snapshots and deltas (private: needs an API key).
    OrderbookDelta,
    /// Market lifecycle events.
    MarketLifecycleV2,
}

/// `collect live` options.
#[derive(Debug, Clone, Args)]
pub struct LiveArgs {
    /// Database options.
    #[command(flatten)]
    pub db: DbArgs,
    /// Kalshi's REST API, for the selection's markets and those the feed names that the database lacks.
    #[command(flatten)]
    pub rest: KalshiRestArgs,
    /// Kalshi's WebSocket (production; the demo environment is wss://demo-api.kalshi.co/trade-api/ws/v2).
    #[arg(long, env = "KALSHI_REPLAY_WS_URL", default_value = crate::collect::live::DEFAULT_WS_URL)]
    pub ws_url: String,
    /// The id of your Kalshi API key (Kalshi's account settings, API keys).
    #[arg(long, env = "KALSHI_API_KEY_ID")]
    pub api_key_id: Option<String>,
    /// The key's RSA private key, a PEM file as Kalshi hands it out (PKCS#1) or PKCS#8.
    #[arg(long, env = "KALSHI_PRIVATE_KEY_FILE")]
    pub private_key_file: Option<std::path::PathBuf>,
    /// Series tickers: their open markets, and those that open while recording (repeatable).
    #[arg(long = "series")]
    pub series: Vec<String>,
    /// Event tickers: their open markets, and those that open while recording (repeatable).
    #[arg(long = "event")]
    pub events: Vec<String>,
    /// Market tickers (repeatable).
    #[arg(long = "market")]
    pub markets: Vec<String>,
    /// The channels recorded (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "trade,orderbook_delta,market_lifecycle_v2")]
    pub channels: Vec<LiveChannel>,
    /// A write commits once it holds this many messages...
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub flush_messages: u32,
    /// ... or once its first message is this old, e.g. 250ms.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "250ms")]
    pub flush_interval: Duration,
    /// A connection silent this long (Kalshi pings every 10 s) is replaced, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub heartbeat_timeout: Duration,
    /// A directory for the raw log: every stored message as a JSON line, zstd, one file per UTC hour, readable by
    /// `kalshi-replay import`.
    #[arg(long)]
    pub raw_log: Option<std::path::PathBuf>,
    /// Serve grpc.health.v1 (with reflection) on this address, e.g. 127.0.0.1:50052: SERVING while subscribed
    /// and writing, NOT_SERVING while reconnecting or while writes fail.
    #[arg(long, env = "KALSHI_REPLAY_HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,
}

/// A candle period of --candles: 1, 60 or 1440 minutes, or `none`.
fn parse_period(text: &str) -> Result<Option<i32>, String> {
    match text.trim() {
        "1" => Ok(Some(1)),
        "60" => Ok(Some(60)),
        "1440" => Ok(Some(1440)),
        "none" | "" => Ok(None),
        other => Err(format!("{other:?} is not a candle period: 1, 60 or 1440 (minutes), or none")),
    }
}

/// An RFC 3339 time, e.g. 2025-11-01T00:00:00Z.
fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 time such as 2025-11-01T00:00:00Z: {e}"))
}

/// `bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to load.
    #[command(subcommand)]
    pub target: BenchTarget,
}

/// The services `bench` can load.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchTarget {
    /// ReferenceService: every lookup in turn, with random real keys.
    Reference(BenchReferenceArgs),
    /// StreamTrades against psql's COPY of the same rows: whole range in both layouts, one hot market, peak RSS.
    Replay(BenchReplayArgs),
    /// StreamCandles against psql running the same aggregation in SQL, at 1 minute, 1 hour and 1 day.
    Candles(BenchReplayArgs),
    /// IngestTrades and `import` against psql's COPY FROM STDIN of the same rows into the trades table.
    Ingest(BenchIngestArgs),
}

/// `bench ingest` options.
#[derive(Debug, Clone, Args)]
#[command(mut_arg("data_dir", |a| a.default_value(".kalshi-replay-bench-ingest")))]
pub struct BenchIngestArgs {
    /// Runs of each measurement; the report gives medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Trades written by each way.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub trades: u64,
    /// Markets the trades are spread over.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub markets: u32,
    /// UTC days the trades are spread over.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// First UTC day.
    #[arg(long, default_value = "2025-01-06")]
    pub start: NaiveDate,
    /// Trades per IngestTrades message.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch_size: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Database options: an empty database (its trades are truncated).
    #[command(flatten)]
    pub db: DbArgs,
}

/// `bench replay` options.
#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("markets", |a| a.default_value("2000")),
    mut_arg("days", |a| a.default_value("30")),
    mut_arg("trades", |a| a.default_value("5000000")),
    mut_arg("data_dir", |a| a.default_value(".kalshi-replay-bench"))
)]
pub struct BenchReplayArgs {
    /// Runs of each measurement; the report gives medians.
    #[arg(long, env = "KALSHI_REPLAY_BENCH_RUNS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Trades per message.
    #[arg(long, env = "KALSHI_REPLAY_BENCH_BATCH", default_value_t = 4096)]
    pub batch_size: i32,
    /// Print one JSON object instead of a table.
    #[arg(long, env = "KALSHI_REPLAY_BENCH_JSON")]
    pub json: bool,
    /// Database options. The dataset is generated there on the first run (a few minutes) and reused after.
    #[command(flatten)]
    pub db: DbArgs,
    /// Shape of the dataset.
    #[command(flatten)]
    pub dataset: DatasetArgs,
}

/// `bench reference` options.
#[derive(Debug, Clone, Args)]
pub struct BenchReferenceArgs {
    /// Server to load, HOST:PORT (or an http:// URL); it must hold data. Unset: the demo dataset is served
    /// in-process on a free port over --database-url / --data-dir, and loaded there first if the database is empty.
    #[arg(long, env = "KALSHI_REPLAY_BENCH_ADDR")]
    pub addr: Option<String>,
    /// Concurrent callers.
    #[arg(long, env = "KALSHI_REPLAY_BENCH_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// HTTP/2 connections shared by the callers. Unset: one per 8 callers.
    #[arg(long, env = "KALSHI_REPLAY_BENCH_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: Option<u32>,
    /// How long each RPC is measured, e.g. `10s`.
    #[arg(long, env = "KALSHI_REPLAY_BENCH_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unrecorded load before each RPC's measurement, e.g. `1s` or `0s`.
    #[arg(long, env = "KALSHI_REPLAY_BENCH_WARMUP", default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Only these RPCs, e.g. `--rpc GetMarket,ListMarkets` (a name covers its variants). Unset: all of them.
    #[arg(long = "rpc", env = "KALSHI_REPLAY_BENCH_RPC", value_delimiter = ',')]
    pub rpcs: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long, env = "KALSHI_REPLAY_BENCH_JSON")]
    pub json: bool,
    /// Database options (without --addr).
    #[command(flatten)]
    pub db: DbArgs,
    /// Shape of the dataset generated when the database holds no markets (without --addr); --seed also seeds the
    /// random choice of keys.
    #[command(flatten)]
    pub dataset: DatasetArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
