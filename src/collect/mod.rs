//! `collect`: Kalshi's data fetched by the service itself, through the importer's conversion and the write core.
//!
//! - [`backfill`] — `collect backfill`: a selection's series, events, markets and trades from the REST API (live
//!   and `/historical/` endpoints), resumable per trade walk ([`positions`]).
//! - [`live`] — `collect live`: the WebSocket feed (trades, order books, lifecycle) recorded in small writes:
//!   its options and selection, the reading side (connection, subscriptions, seq gaps, reconnects), the writing
//!   side (batches, markets fetched from REST, retried commits), the raw log that `import` reads back, the
//!   summary and health.
//! - [`page`] — one REST page converted and validated into a write, errors naming the page.
//! - [`rest`] — the polite REST client: rate limit, timeouts, retries honouring Retry-After.
//! - [`auth`] — Kalshi's API-key signatures (RSA-PSS) for the WebSocket handshake.

pub mod auth;
pub mod backfill;
pub mod live;
pub mod page;
pub mod positions;
pub mod rest;
