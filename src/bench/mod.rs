//! `bench`: measurements of the running service against references run side by side, one module per target.
//!
//! - [`reference`](mod@reference): ReferenceService under concurrent load, throughput and latency percentiles per RPC.
//! - [`replay`]: StreamTrades against psql's COPY of the same rows, and the server's peak RSS.
//! - [`candles`]: StreamCandles against psql running the same aggregation in SQL.
//! - [`ingest`]: IngestTrades and `import` against psql's COPY FROM STDIN of the same rows.
//!
//! They share `harness`: the database frame, the dataset, the server child, psql's COPY, the stream drain and
//! the median.

pub mod candles;
mod harness;
pub mod ingest;
pub mod reference;
pub mod replay;

use crate::{
    config::{BenchArgs, BenchTarget},
    error::Error,
};

/// `bench`: runs the chosen target and prints its report.
pub async fn run(args: BenchArgs) -> Result<(), Error> {
    match args.target {
        BenchTarget::Reference(args) => reference::run(args).await,
        BenchTarget::Replay(args) => replay::run(args).await,
        BenchTarget::Candles(args) => candles::run(args).await,
        BenchTarget::Ingest(args) => ingest::run(args).await,
    }
}
