//! kalshi-replay stores the market history of the Kalshi prediction-market exchange in PostgreSQL and replays it
//! over gRPC for backtests: exact (integer micro-dollars and centi-contracts), deterministic and resumable.
//!
//! # Layout
//!
//! Folders by concern; imports point down, from the entry points to the services, to the stream bodies and the
//! write core, to storage and the shared ground, with no cycles.
//!
//! Entry points:
//! - [`config`] — command line and environment (clap), one struct per subcommand.
//! - [`app`] — what each subcommand does (`serve`, `migrate`, `generate`, `import`, `collect`, `demo`), over one
//!   open/migrate/stop frame of the database.
//! - [`bench`] — `bench`: one module per target (reference, replay, candles, ingest) over shared helpers
//!   (database frame, dataset, server child, psql COPY, stream drain, median).
//! - [`server`] — the tonic server: the three services, health per service, reflection v1/v1alpha, background
//!   tasks.
//!
//! Services:
//! - [`reference`](mod@reference) — ReferenceService: hierarchy lookups, settlements, keyset paging; [`reference::cache`] of
//!   lookups kept coherent by LISTEN/NOTIFY; [`reference::coverage`], GetCoverage from the per-day counts.
//! - [`replay`] — ReplayService: the handlers over the replay contract ([`replay::request`] fields and resume
//!   positions, [`replay::snapshot`] transaction and ordered COPY, [`replay::runner`] admission, channel,
//!   cancellation, idle and drain ends, [`replay::sql`] bound values, [`replay::hash`], [`replay::arrow`] the
//!   Arrow schemas and IPC stream of LAYOUT_ARROW) and one module per stream body: [`replay::trades`],
//!   [`replay::candles`] (folded by [`replay::ohlcv`], read from the write-time [`replay::aggregates`]),
//!   [`replay::kalshi_candles`] (Kalshi's own candles as the collector stored them, newest version per key).
//! - [`ingest`] — IngestService over the write core: [`ingest::validate`] every item into its table's row,
//!   [`ingest::tables`] (columns, keys, the generated SQL), [`ingest::write`] (staging by binary COPY, one
//!   all-or-nothing commit).
//! - [`import`] — `import`: files and directories, gzip/zstd, JSON documents and lines, one write per file;
//!   [`import::kalshi`] converts Kalshi's REST and WebSocket JSON exactly.
//! - [`collect`] — `collect backfill`: Kalshi's REST pages walked ([`collect::backfill`]: the hierarchy, each
//!   market's trades and candlesticks) through the importer's conversion and the write core, resumable per walk
//!   ([`collect::positions`]), by a rate-limited, retrying client ([`collect::rest`]); `collect live`
//!   ([`collect::live`]): the WebSocket feed in small writes, through reconnects and seq gaps, the handshake
//!   signed with the user's key ([`collect::auth`]).
//!
//! Storage:
//! - [`store`] — [`store::db`] (where the database is, connections, the pool and its cancel-safe sections),
//!   [`store::pg`] (the private cluster), [`store::migrate`] (embedded migrations), [`store::partitions`] (daily
//!   partitions), [`store::copy`] (reader of the binary COPY format).
//!
//! Ground, used by all:
//! - [`proto`] — the generated code of `kalshi.replay.v1`, the hand-encoded batch messages, the descriptor set.
//! - [`error`] — the error enum and its single mapping to gRPC status codes.
//! - [`admission`] — caps on concurrent streams (in all and per client connection) and writes, the drain at
//!   shutdown; [`limits`] — every limit the server enforces, with its default.
//! - [`progress`] — the progress bar or log lines of `import` and `collect backfill`.
//! - [`time`] — Timestamp <-> chrono conversions; [`token`] — page and resume tokens, signed with the database's
//!   key; [`decimal`] — exact parsing of Kalshi's fixed-point strings; [`generate`] — the deterministic synthetic
//!   dataset; [`telemetry`] — logging.

pub mod admission;
pub mod app;
pub mod bench;
pub mod collect;
pub mod config;
pub mod decimal;
pub mod error;
pub mod generate;
pub mod import;
pub mod ingest;
pub mod limits;
pub mod progress;
pub mod proto;
pub mod reference;
pub mod replay;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod token;
