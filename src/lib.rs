//! kalshi-replay stores the market history of the Kalshi prediction-market exchange in PostgreSQL and replays it
//! over gRPC for backtests: exact (integer micro-dollars and centi-contracts), deterministic and resumable.
//!
//! # Layout
//!
//! - [`config`] — command line and environment (clap), one struct per subcommand.
//! - [`app`] — what each subcommand does (`serve`, `migrate`, `generate`, `import`, `demo`).
//! - [`server`] — the tonic server: services, health per service, reflection v1/v1alpha, background tasks.
//! - [`reference`] — ReferenceService: hierarchy lookups, settlements, coverage; keyset paging.
//! - [`replay`] — ReplayService and the replay contract of every stream: snapshot and watermark, market
//!   selection, resume tokens, bounded channel, cancellation and deadlines.
//! - [`trades`] — StreamTrades: the ordered COPY of the trades, row and column layouts, canonical encoding.
//! - [`candles`] — OHLCV candles folded from trades in the total order: intervals, fill, VWAP, partial periods.
//! - [`aggregates`] — trade aggregates per market-minute and market-day kept at write time, and how candle
//!   streams read them in place of the trades.
//! - [`copy`] — reader of PostgreSQL's binary COPY format.
//! - [`hash`] — the streams' content hash: SHA-256 whose running state fits in a resume token.
//! - [`ingest`] — the write core of IngestService and `import`: validation into one row type per table, staging
//!   by binary COPY, one keyed insert (facts) or last-writer-wins upsert (reference rows), commit before the answer.
//! - [`service`] — IngestService over the write core: the client-streaming fact writes and the batch upserts.
//! - [`import`] — `import`: files and directories, gzip/zstd, JSON documents and lines, one write per file,
//!   `--skip-bad`, progress.
//! - [`kalshi`] — Kalshi's own JSON (REST pages, WebSocket log lines) converted exactly into messages, for import.
//! - [`decimal`] — exact parsing of Kalshi's fixed-point decimal strings into micro-dollars and centi-contracts.
//! - [`proto`] — generated code of `kalshi.replay.v1` and the descriptor set for reflection.
//! - [`time`] — Timestamp <-> chrono conversions.
//! - [`token`] — opaque page/resume tokens: versioned, checksummed, bound to the request's filters.
//! - [`error`] — the error enum and its single mapping to gRPC status codes.
//! - [`db`] — where the database is, connecting, the connection pool.
//! - [`pg`] — the private PostgreSQL cluster used when DATABASE_URL is unset.
//! - [`cache`] — the cache of reference lookups by key, kept coherent by LISTEN/NOTIFY on reference writes.
//! - [`coverage`] — per-market, per-UTC-day data counts kept at write time, and GetCoverage's answer.
//! - [`migrate`] — the embedded SQL migrations (migrations/) and their runner.
//! - [`partitions`] — daily partitions of the fact tables, on demand and ahead of time.
//! - [`generate`] — the deterministic synthetic dataset and its COPY loader.
//! - [`bench`] — `bench reference`: a gRPC load generator reporting throughput and latency percentiles per RPC.
//! - [`bench_candles`] — `bench candles`: StreamCandles against psql running the same aggregation in SQL.
//! - [`bench_ingest`] — `bench ingest`: IngestTrades and `import` against psql's COPY FROM STDIN of the same rows.
//! - [`bench_replay`] — `bench replay`: StreamTrades against psql's COPY of the same rows, and the server's RSS.
//! - [`telemetry`] — logging.

pub mod app;
pub mod bench;
pub mod config;
pub mod decimal;
pub mod error;
pub mod generate;
pub mod import;
pub mod ingest;
pub mod proto;
pub mod reference;
pub mod replay;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod token;
