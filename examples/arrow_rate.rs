//! The Rust client's side of the Python data-frame benchmark (clients/python/bench/bench_frames.py): drains one
//! StreamTrades request in the Arrow layout into arrow-rs `RecordBatch`es, touching a column of every batch, and
//! prints `{"trades": N, "seconds": S}`, the time from the request to the last batch decoded.
//!
//! ```sh
//! cargo run --release --example arrow_rate -- --target 127.0.0.1:50051 --start 2026-01-05T00:00:00Z \
//!     --end 2026-01-10T00:00:00Z --batch-size 4096 --series KXSYNAA --series KXSYNAB
//! ```

use std::{error::Error, time::Instant};

use arrow_array::{cast::AsArray, types::Int64Type};
use clap::Parser;
use futures_util::StreamExt;
use kalshi_replay_client::{Client, proto::StreamTradesRequest, timestamp};

/// Drains one StreamTrades request in the Arrow layout and reports its rate.
#[derive(Debug, Parser)]
struct Args {
    /// The server, HOST:PORT (plaintext gRPC).
    #[arg(long)]
    target: String,
    /// Start of the range, RFC 3339, inclusive.
    #[arg(long)]
    start: String,
    /// End of the range, RFC 3339, exclusive.
    #[arg(long)]
    end: String,
    /// Trades per message (0: the server's default).
    #[arg(long, default_value_t = 0)]
    batch_size: i32,
    /// A series whose markets to stream (repeatable).
    #[arg(long)]
    series: Vec<String>,
    /// A market to stream (repeatable).
    #[arg(long)]
    market: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let client = Client::connect(&args.target).await?;
    let request = StreamTradesRequest {
        series_tickers: args.series,
        market_tickers: args.market,
        start_time: Some(timestamp(&args.start)?),
        end_time: Some(timestamp(&args.end)?),
        batch_size: args.batch_size,
        ..Default::default()
    };
    let started = Instant::now();
    let mut batches = client.trades_arrow(request);
    let (mut trades, mut checksum) = (0usize, 0i64);
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        trades += batch.num_rows();
        // read a column, so that nothing of the decoding can be skipped
        let prices = batch.column_by_name("yes_price_micros").ok_or("no yes_price_micros column")?;
        checksum = prices.as_primitive::<Int64Type>().values().iter().fold(checksum, |s, p| s.wrapping_add(*p));
    }
    let seconds = started.elapsed().as_secs_f64();
    let summary = batches.summary().ok_or("the stream ended without its summary")?;
    if summary.item_count != trades as i64 {
        return Err(format!("the summary says {} trades, received {trades}", summary.item_count).into());
    }
    eprintln!("checksum {checksum}");
    println!("{{\"trades\": {trades}, \"seconds\": {seconds:.6}}}");
    Ok(())
}
