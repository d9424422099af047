//! A strategy engine that takes a trade replay as its clock: the "cross-up threshold" toy strategy.
//!
//! For each market it buys `--qty-centi` centi-contracts of YES at the price of the first trade that crosses
//! `--level-micros` from below (the previous trade below the level, this one at or above it), at most once per
//! market, and holds to the end of the replay. Then each position is settled at the market's result from
//! GetSettlement (YES pays 1 USD, NO nothing, SCALAR its value, VOID returns the entry), or marked to the market's
//! last trade of the replay when the market has no settlement. Exact integers throughout: prices in micro-dollars,
//! quantities in centi-contracts, no float anywhere.
//!
//! ```sh
//! cargo run --release -- demo &
//! cargo run --release --example strategy -- --target 127.0.0.1:50051 --series KXSYNAA \
//!     --start 2026-01-05T00:00:00Z --end 2026-01-12T00:00:00Z
//! ```
//!
//! The last two lines are always `entries=<k> settled=<s> marked=<u> trades=<n>` and `pnl_micros=<total>`.

use std::{collections::BTreeMap, process::ExitCode};

use clap::Parser;
use futures_util::TryStreamExt;
use kalshi_replay_client::{
    Client, Error,
    proto::{SettlementResult, StreamTradesRequest},
    timestamp,
};

/// The cross-up threshold strategy over a StreamTrades replay.
#[derive(Debug, Parser)]
struct Args {
    /// The server, HOST:PORT (plaintext gRPC).
    #[arg(long)]
    target: String,
    /// A series whose markets to trade (repeatable).
    #[arg(long)]
    series: Vec<String>,
    /// A market to trade (repeatable).
    #[arg(long)]
    market: Vec<String>,
    /// Start of the replay, RFC 3339, inclusive.
    #[arg(long)]
    start: String,
    /// End of the replay, RFC 3339, exclusive.
    #[arg(long)]
    end: String,
    /// The level a price crosses upward to trigger a buy, micro-dollars.
    #[arg(long, default_value_t = 500_000)]
    level_micros: i64,
    /// Centi-contracts bought per entry: a positive multiple of 100 (whole contracts).
    #[arg(long, default_value_t = 100)]
    qty_centi: i64,
}

/// One market's state as the replay goes.
#[derive(Debug, Default)]
struct MarketState {
    last_price: Option<i64>,
    entry: Option<i64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.qty_centi <= 0 || args.qty_centi % 100 != 0 {
        eprintln!("--qty-centi must be a positive multiple of 100, not {}", args.qty_centi);
        return ExitCode::from(2);
    }
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strategy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), Error> {
    let client = Client::connect(format!("http://{}", args.target)).await?;
    let mut trades = client.trades(StreamTradesRequest {
        market_tickers: args.market.clone(),
        series_tickers: args.series.clone(),
        start_time: Some(timestamp(&args.start)?),
        end_time: Some(timestamp(&args.end)?),
        ..Default::default()
    });

    // the replay is the clock: one step per trade, in the stream's total order
    let mut markets: BTreeMap<String, MarketState> = BTreeMap::new();
    let mut consumed: u64 = 0;
    while let Some(trade) = trades.try_next().await? {
        consumed += 1;
        let price = trade.yes_price_micros;
        let state = markets.entry(trade.market_ticker).or_default();
        if state.entry.is_none()
            && let Some(last) = state.last_price
            && last < args.level_micros
            && args.level_micros <= price
        {
            state.entry = Some(price);
        }
        state.last_price = Some(price);
    }

    let (mut entries, mut settled, mut marked, mut total) = (0u64, 0u64, 0u64, 0i64);
    for (ticker, state) in &markets {
        let Some(entry) = state.entry else { continue };
        entries += 1;
        let (payout, how) = match client.settlement(ticker.as_str()).await {
            Ok(settlement) => {
                settled += 1;
                let payout = match settlement.result() {
                    SettlementResult::Yes => 1_000_000,
                    SettlementResult::No => 0,
                    SettlementResult::Scalar => settlement.settlement_value_micros,
                    SettlementResult::Void => entry,
                    SettlementResult::Unspecified => {
                        return Err(Error::Protocol(format!("{ticker}: a settlement without a result")));
                    }
                };
                (payout, format!("settled {}", settlement.result().as_str_name()))
            }
            Err(e) if e.code() == tonic::Code::NotFound => {
                marked += 1;
                (state.last_price.unwrap_or(entry), "marked to the last trade".to_owned())
            }
            Err(e) => return Err(e),
        };
        let pnl = (payout - entry) * args.qty_centi / 100;
        total += pnl;
        println!("{ticker}: bought {} centi at {entry}, {how} at {payout}: pnl_micros={pnl}", args.qty_centi);
    }
    println!("entries={entries} settled={settled} marked={marked} trades={consumed}");
    println!("pnl_micros={total}");
    Ok(())
}
