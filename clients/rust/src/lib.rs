//! A Rust client of kalshi-replay, the gRPC service that replays Kalshi market history:
//! lookups with paging hidden, replays of trades and candles that resume by themselves after a cut and check the
//! server's final summary, and the Arrow layout as [`RecordBatch`](arrow_array::RecordBatch)es.
//!
//! The generated tonic code of `kalshi.replay.v1` is in [`proto`] (plain prost messages, every RPC's client), for
//! anything this crate does not wrap.
//!
//! # Example
//!
//! ```no_run
//! use futures_util::TryStreamExt;
//! use kalshi_replay_client::{Client, proto::StreamTradesRequest, timestamp};
//!
//! # async fn run() -> Result<(), kalshi_replay_client::Error> {
//! let client = Client::connect("127.0.0.1:50051").await?;
//!
//! // lookups: every page, fetched as the stream is read
//! let markets: Vec<_> = client
//!     .markets(kalshi_replay_client::proto::ListMarketsRequest {
//!         series_ticker: "KXSYNAA".into(),
//!         ..Default::default()
//!     })
//!     .try_collect()
//!     .await?;
//! println!("{} markets", markets.len());
//!
//! // a replay: trades one by one, exact integers (micro-dollars, centi-contracts)
//! let mut trades = client.trades(StreamTradesRequest {
//!     series_tickers: vec!["KXSYNAA".into()],
//!     start_time: Some(timestamp("2026-01-05T00:00:00Z")?),
//!     end_time: Some(timestamp("2026-01-06T00:00:00Z")?),
//!     ..Default::default()
//! });
//! while let Some(trade) = trades.try_next().await? {
//!     println!("{} {} {}", trade.market_ticker, trade.yes_price_micros, trade.count_centi);
//! }
//! // the stream ended well: the summary matched what was delivered
//! let summary = trades.summary().expect("checked summary");
//! println!("{} trades at watermark {}", summary.item_count, summary.watermark);
//!
//! match client.settlement("KXSYNAA-NOPE").await {
//!     Err(e) if e.code() == tonic::Code::NotFound => println!("not settled: {}", e.message()),
//!     other => println!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Resume and the summary check
//!
//! A replay ([`Client::trades`], [`Client::candles`], [`Client::kalshi_candles`], [`Client::trades_arrow`],
//! [`Client::candles_arrow`]) is one server stream as long as nothing goes wrong. When the call ends with
//! UNAVAILABLE (the database was lost, the server shut down, the connection broke) or DEADLINE_EXCEEDED (the
//! deadline set with [`Client::with_call_timeout`] passed), the client waits ([`RetryPolicy`]: 200 ms doubling,
//! 5 attempts per cut by default), reports the retry ([`Client::on_retry`] and a `tracing` line at WARN), and
//! sends the same request again with the resume token of the last data message it received: the server continues
//! with exactly the remaining items, at the same data version. A call that ends without its summary counts as
//! cut. Any other status, or the last failed attempt, ends the stream with that [`Error`].
//!
//! At the end, the server's summary covers the whole request, across calls. The client checks it against what
//! it delivered: the item count, and for rows the content hash too, SHA-256 over each item's canonical protobuf
//! encoding prefixed by its length as a little-endian u32, computed by the client as it hands items out. A
//! mismatch ends the stream with [`Error::SummaryMismatch`] (code DATA_LOSS). Arrow batches are counted, not
//! hashed: re-encoding each row as protobuf would cost the per-row work the Arrow layout exists to save.
//!
//! # Errors
//!
//! One type, [`Error`]: [`Error::code`] is the gRPC code and [`Error::message`] the server's text (NOT_FOUND
//! names the missing ticker, INVALID_ARGUMENT the field and its allowed values, RESOURCE_EXHAUSTED the limit).

mod arrow;
mod client;
mod error;
mod replay;
mod summary;

/// The generated code of `kalshi.replay.v1`: every message (prost) and every service's client (tonic).
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]

    tonic::include_proto!("kalshi.replay.v1");
}

pub use client::Client;
pub use error::Error;
pub use replay::{Replay, RetryEvent, RetryPolicy};

/// An RFC 3339 time (`2026-01-05T00:00:00Z`, any offset, up to nanoseconds) as a protobuf Timestamp, for the
/// requests' time fields.
pub fn timestamp(rfc3339: &str) -> Result<prost_types::Timestamp, Error> {
    rfc3339.parse().map_err(|e| Error::InvalidArgument(format!("not an RFC 3339 time {rfc3339:?}: {e}")))
}
