//! Input bounds over real gRPC against a real PostgreSQL: a count, a time or a write beyond its documented
//! maximum is refused with INVALID_ARGUMENT naming the field and the limit, and writes nothing; facts of a market
//! without reference data are readable by its ticker.

mod common;

use common::TestApp;
use kalshi_replay::{
    limits::Limits,
    proto::{IngestTradesRequest, Side, Trade, ingest_service_client::IngestServiceClient},
};
use prost_types::Timestamp;
use tonic::{Code, transport::Channel};

/// 2025-03-01T00:00:00Z.
const DAY: i64 = 1_740_787_200;

fn trade(id: &str, ticker: &str, seconds: i64, count_centi: i64) -> Trade {
    Trade {
        trade_id: id.into(),
        market_ticker: ticker.into(),
        time: Some(Timestamp { seconds, nanos: 0 }),
        yes_price_micros: 400_000,
        no_price_micros: 0,
        count_centi,
        taker_side: Side::Yes as i32,
        ingest_seq: 0,
    }
}

/// Sends `trades` as one write, in messages of `per_message`; the answer's inserted count.
async fn ingest(channel: &Channel, trades: Vec<Trade>, per_message: usize) -> Result<i64, tonic::Status> {
    let messages: Vec<IngestTradesRequest> =
        trades.chunks(per_message.max(1)).map(|c| IngestTradesRequest { trades: c.to_vec() }).collect();
    let answer = IngestServiceClient::new(channel.clone()).ingest_trades(tokio_stream::iter(messages)).await?;
    Ok(answer.into_inner().counts.expect("counts").inserted)
}

/// Regression: one trade with count i64::MAX was stored, and then every later trade of its market-day failed
/// with INTERNAL (numeric overflow in the aggregates' sums, SQLSTATE 22003).
#[tokio::test]
async fn a_count_above_the_maximum_is_refused_and_later_trades_of_its_day_still_store() {
    let app = TestApp::start().await;
    let channel = app.channel().await;
    let max = Limits::default().max_count_centi;
    let huge = ingest(&channel, vec![trade("t1", "KX-A", DAY + 10, i64::MAX)], 1).await.expect_err("refused");
    assert_eq!(huge.code(), Code::InvalidArgument, "{huge:?}");
    assert!(huge.message().starts_with("trades[0].count_centi: "), "{}", huge.message());
    assert!(huge.message().contains(&max.to_string()), "names the maximum: {}", huge.message());
    // the largest allowed count is stored, and the market-day's next trade too
    assert_eq!(ingest(&channel, vec![trade("t2", "KX-A", DAY + 20, max)], 1).await.expect("at the maximum"), 1);
    assert_eq!(ingest(&channel, vec![trade("t3", "KX-A", DAY + 30, 100)], 1).await.expect("the next trade"), 1);
}
