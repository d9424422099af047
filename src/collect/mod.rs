//! `collect`: Kalshi's data fetched by the service itself, through the importer's conversion and the write core.
//!
//! - [`backfill`] — `collect backfill`: a selection's series, events, markets and trades from the REST API (live
//!   and `/historical/` endpoints), resumable per trade walk ([`positions`]).
//! - [`rest`] — the polite REST client: rate limit, timeouts, retries honouring Retry-After.

pub mod backfill;
pub mod positions;
pub mod rest;
