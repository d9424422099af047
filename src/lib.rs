//! kalshi-replay stores the market history of the Kalshi prediction-market exchange in PostgreSQL and replays it
//! over gRPC for backtests: exact (integer micro-dollars and centi-contracts), deterministic and resumable.
//!
//! # Layout
//!
//! - [`config`] — command line and environment (clap), one struct per subcommand.
//! - [`app`] — what each subcommand does (`serve`, `migrate`, `generate`, `demo`).
//! - [`server`] — the tonic server: services, health per service, reflection v1/v1alpha, background tasks.
//! - [`service`] — the gRPC service implementations (ReferenceService, ReplayService, IngestService).
//! - [`proto`] — generated code of `kalshi.replay.v1` and the descriptor set for reflection.
//! - [`time`] — Timestamp <-> chrono conversions.
//! - [`error`] — the error enum and its single mapping to gRPC status codes.
//! - [`db`] — where the database is, connecting, the connection pool.
//! - [`pg`] — the private PostgreSQL cluster used when DATABASE_URL is unset.
//! - [`migrate`] — the embedded SQL migrations (migrations/) and their runner.
//! - [`partitions`] — daily partitions of the fact tables, on demand and ahead of time.
//! - [`generate`] — the deterministic synthetic dataset and its COPY loader.
//! - [`telemetry`] — logging.

pub mod app;
pub mod config;
pub mod db;
pub mod error;
pub mod generate;
pub mod migrate;
pub mod partitions;
pub mod pg;
pub mod proto;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod time;
