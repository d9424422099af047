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

mod feed;
mod options;
mod raw_log;
mod recorder;
mod report;

use std::time::Instant;

use feed::{Feed, read};
use options::Selection;
pub use options::{Channels, DEFAULT_WS_URL, Options};
use recorder::Recorder;
use report::Health;
pub use report::Report;
use tokio::sync::mpsc;

use super::{auth::ApiKey, rest::KalshiRest};
use crate::{error::Error, store::db::Pool};

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
