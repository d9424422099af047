//! Every limit the service enforces, with its default: the bounds that keep one request, one client or one
//! input file from taking the server down. Each is a flag with an environment variable (see [`crate::config`])
//! and a row of the README's configuration table; going past one is RESOURCE_EXHAUSTED (admission) or
//! INVALID_ARGUMENT (a request or an input beyond its documented maximum), with a message naming the limit.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

/// The server's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Replay streams running at once, all clients together (RESOURCE_EXHAUSTED beyond).
    pub max_streams: usize,
    /// Replay streams running at once on one client connection (RESOURCE_EXHAUSTED beyond).
    pub max_streams_per_connection: usize,
    /// Writes (Ingest* streams and Upsert* batches) running at once (RESOURCE_EXHAUSTED beyond).
    pub max_writes: usize,
    /// A stream whose client reads nothing for this long is ended (UNAVAILABLE), and its connections freed.
    pub stream_idle_timeout: Duration,
    /// Markets one stream's selection may expand to (its series and events included).
    pub max_selection_markets: usize,
    /// Items one write may carry (all messages of a client stream together).
    pub max_rows_per_write: u64,
    /// The largest count or size of a trade, order-book level or delta, in centi-contracts.
    pub max_count_centi: i64,
    /// The earliest time a fact may carry: before Kalshi's first trading day nothing is real.
    pub earliest_fact: DateTime<Utc>,
    /// How many UTC days past today a fact may be dated (the partitions the server keeps ahead).
    pub max_fact_days_ahead: u32,
    /// How far in the future a reference row's updated_time may be (clock skew between writers).
    pub max_updated_time_skew: Duration,
    /// The longest line `import` reads, in bytes.
    pub max_import_line_bytes: usize,
    /// The most bytes `import` reads from one file after decompression.
    pub max_import_file_bytes: u64,
    /// Largest gRPC message the server decodes (requests) and encodes (responses), in bytes.
    pub max_decoding_message_bytes: usize,
    pub max_encoding_message_bytes: usize,
    /// HTTP/2 streams (calls) open at once on one client connection.
    pub max_concurrent_streams_per_connection: u32,
    /// HTTP/2 keepalive: a ping after this much silence, and the connection closed when none is answered in
    /// `keepalive_timeout`, so a dead peer's streams end and free their connections.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// On shutdown, how long streams in flight may still run before they end with UNAVAILABLE.
    pub shutdown_drain: Duration,
}

/// Kalshi's first trading day (July 2021); facts dated earlier are refused.
pub const KALSHI_FIRST_DAY: NaiveDate = match NaiveDate::from_ymd_opt(2021, 7, 1) {
    Some(day) => day,
    None => panic!("a valid date"),
};

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_streams: 8,
            max_streams_per_connection: 4,
            max_writes: 4,
            stream_idle_timeout: Duration::from_secs(60),
            max_selection_markets: 20_000,
            max_rows_per_write: 10_000_000,
            max_count_centi: 1_000_000_000_000,
            earliest_fact: KALSHI_FIRST_DAY.and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
            max_fact_days_ahead: 7,
            max_updated_time_skew: Duration::from_secs(300),
            max_import_line_bytes: 16 << 20,
            max_import_file_bytes: 64 << 30,
            max_decoding_message_bytes: 16 << 20,
            max_encoding_message_bytes: 64 << 20,
            max_concurrent_streams_per_connection: 256,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            shutdown_drain: Duration::from_secs(10),
        }
    }
}
