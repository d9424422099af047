//! Input bounds over real gRPC against a real PostgreSQL: a count, a time or a write beyond its documented
//! maximum is refused with INVALID_ARGUMENT naming the field and the limit, and writes nothing; facts of a market
//! without reference data are readable by its ticker.

mod common;

use std::time::Duration;

use common::{TIMEOUT, TestApp};
use kalshi_replay::{
    limits::Limits,
    proto::{
        GetCoverageRequest, GetMarketRequest, IngestTradesRequest, Market, MarketStatus, Side, StreamCandlesRequest,
        StreamTradesRequest, Trade, UpsertMarketsRequest, ingest_service_client::IngestServiceClient,
        reference_service_client::ReferenceServiceClient, replay_service_client::ReplayServiceClient,
        stream_candles_response, stream_trades_response,
    },
    server::ServerOptions,
};
use prost_types::Timestamp;
use tokio_postgres::Client as PgClient;
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
    Ok(ingest_answer(channel, trades, per_message).await?.0)
}

/// As [`ingest`]: the inserted count and the markets without reference rows.
async fn ingest_answer(channel: &Channel, trades: Vec<Trade>, per: usize) -> Result<(i64, i64), tonic::Status> {
    let messages: Vec<IngestTradesRequest> =
        trades.chunks(per.max(1)).map(|c| IngestTradesRequest { trades: c.to_vec() }).collect();
    let answer = IngestServiceClient::new(channel.clone()).ingest_trades(tokio_stream::iter(messages)).await?;
    let answer = answer.into_inner();
    Ok((answer.counts.expect("counts").inserted, answer.markets_without_reference))
}

async fn start_with(limits: Limits) -> TestApp {
    let options = ServerOptions { partitions_ahead: 2, health_interval: Duration::from_millis(200), limits };
    TestApp::start_with(options, TIMEOUT).await
}

fn market(ticker: &str, event: &str, updated_seconds: Option<i64>) -> Market {
    Market {
        ticker: ticker.into(),
        event_ticker: event.into(),
        series_ticker: "KX".into(),
        title: ticker.into(),
        status: MarketStatus::Active as i32,
        updated_time: updated_seconds.map(|seconds| Timestamp { seconds, nanos: 0 }),
        ..Default::default()
    }
}

async fn upsert(channel: &Channel, markets: Vec<Market>) -> Result<(), tonic::Status> {
    IngestServiceClient::new(channel.clone()).upsert_markets(UpsertMarketsRequest { markets }).await.map(drop)
}

async fn trade_count(db: &PgClient) -> i64 {
    db.query_one("SELECT count(*) FROM trades", &[]).await.expect("count").get(0)
}

async fn partitions(db: &PgClient) -> i64 {
    db.query_one("SELECT count(*) FROM pg_inherits WHERE inhparent = 'trades'::regclass", &[])
        .await
        .expect("partitions")
        .get(0)
}

/// A stream request over the days around DAY.
fn trades_request(markets: &[&str], events: &[&str]) -> StreamTradesRequest {
    StreamTradesRequest {
        market_tickers: markets.iter().map(|t| t.to_string()).collect(),
        event_tickers: events.iter().map(|t| t.to_string()).collect(),
        start_time: Some(Timestamp { seconds: DAY - 86_400, nanos: 0 }),
        end_time: Some(Timestamp { seconds: DAY + 2 * 86_400, nanos: 0 }),
        ..Default::default()
    }
}

/// The (ticker, trade id) of every trade the stream gives.
async fn streamed(channel: &Channel, request: StreamTradesRequest) -> Result<Vec<(String, String)>, tonic::Status> {
    let stream = ReplayServiceClient::new(channel.clone()).stream_trades(request).await?.into_inner();
    let messages = common::collect(stream).await?;
    common::summary_of(&messages);
    Ok(messages
        .into_iter()
        .filter_map(|m| match m.payload {
            Some(stream_trades_response::Payload::Trades(batch)) => Some(batch.trades),
            _ => None,
        })
        .flatten()
        .map(|t| (t.market_ticker, t.trade_id))
        .collect())
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

/// A fact dated before Kalshi's first day or past the partitions kept ahead is refused before any partition is
/// created: a client could otherwise make thousands of partitions with far-apart dates.
#[tokio::test]
async fn a_fact_outside_the_time_window_is_refused_and_creates_no_partition() {
    let app = TestApp::start().await;
    let channel = app.channel().await;
    let db = app.db.client().await;
    let before = partitions(&db).await;
    // 3000-01-01, and 2021-06-30
    for (seconds, what) in [(32_503_680_000, "far ahead"), (1_625_011_200, "before Kalshi")] {
        let trades = vec![trade("ok", "KX-A", DAY, 100), trade("far", "KX-A", seconds, 100)];
        let error = ingest(&channel, trades, 1).await.expect_err(what);
        assert_eq!(error.code(), Code::InvalidArgument, "{what}: {error:?}");
        assert!(error.message().starts_with("trades[1].time: "), "{}", error.message());
        assert!(error.message().contains("earliest_fact") && error.message().contains("max_fact_days_ahead"));
    }
    assert_eq!(partitions(&db).await, before, "no partition for a refused date");
    assert_eq!(trade_count(&db).await, 0, "nothing of a refused write");
}

/// An updated_time far ahead would win over every real update until then: refused beyond the allowed skew.
#[tokio::test]
async fn a_reference_row_dated_in_the_future_is_refused_and_cannot_freeze_the_row() {
    let app = TestApp::start().await;
    let channel = app.channel().await;
    // 9999-12-31
    let frozen = upsert(&channel, vec![market("KX-A", "KX-E", Some(253_402_214_400))]).await.expect_err("9999");
    assert_eq!(frozen.code(), Code::InvalidArgument, "{frozen:?}");
    assert!(frozen.message().starts_with("markets[0].updated_time: "), "{}", frozen.message());
    assert!(frozen.message().contains("max_updated_time_skew"), "{}", frozen.message());
    // a minute ahead (clock skew between writers) is fine, and a later real update still lands
    let soon = chrono::Utc::now().timestamp() + 60;
    upsert(&channel, vec![Market { title: "first".into(), ..market("KX-A", "KX-E", Some(soon)) }]).await.expect("skew");
    upsert(&channel, vec![Market { title: "second".into(), ..market("KX-A", "KX-E", Some(soon + 1)) }])
        .await
        .expect("later");
    let got = ReferenceServiceClient::new(channel.clone())
        .get_market(GetMarketRequest { ticker: "KX-A".into() })
        .await
        .expect("market")
        .into_inner();
    assert_eq!(got.market.expect("market").title, "second");
}

/// All messages of a client stream together count against max_rows_per_write; past it nothing is stored.
#[tokio::test]
async fn a_write_past_max_rows_per_write_is_refused_whole() {
    let app = start_with(Limits { max_rows_per_write: 5, ..Limits::default() }).await;
    let channel = app.channel().await;
    let db = app.db.client().await;
    let trades = |n: usize| (0..n).map(|i| trade(&format!("t{i}"), "KX-A", DAY + i as i64, 100)).collect::<Vec<_>>();
    let error = ingest(&channel, trades(6), 2).await.expect_err("six");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().starts_with("trades[5]: "), "{}", error.message());
    assert!(error.message().contains("at most 5 items (max_rows_per_write)"), "{}", error.message());
    assert_eq!(trade_count(&db).await, 0, "nothing of a refused write");
    assert_eq!(ingest(&channel, trades(5), 2).await.expect("five"), 5);
    let markets = (0..6).map(|i| market(&format!("KX-{i}"), "KX-E", None)).collect();
    let error = upsert(&channel, markets).await.expect_err("six markets");
    assert!(error.message().starts_with("markets[5]: "), "{}", error.message());
}

/// A selection that expands past max_selection_markets is RESOURCE_EXHAUSTED naming the limit, at once.
#[tokio::test]
async fn a_selection_past_max_selection_markets_is_resource_exhausted() {
    let app = start_with(Limits { max_selection_markets: 2, ..Limits::default() }).await;
    let channel = app.channel().await;
    upsert(&channel, (0..3).map(|i| market(&format!("KX-{i}"), "KX-E", None)).collect()).await.expect("markets");
    let error = streamed(&channel, trades_request(&[], &["KX-E"])).await.expect_err("three markets");
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    assert!(error.message().contains("more than 2 markets (max_selection_markets)"), "{}", error.message());
    assert_eq!(streamed(&channel, trades_request(&["KX-0", "KX-2"], &[])).await.expect("two"), []);
}

/// Regression: trades of a market without a reference row were stored but every read answered NOT_FOUND for its
/// ticker. Now the ingest answer counts such markets, the ticker streams its trades (and candles), and
/// GetCoverage shows it; an event selection still reaches only markets with reference rows.
#[tokio::test]
async fn facts_of_a_market_without_reference_data_are_readable_by_its_ticker() {
    let app = TestApp::start().await;
    let channel = app.channel().await;
    upsert(&channel, vec![market("KX-REF", "KX-E", None)]).await.expect("market");
    let trades = vec![
        trade("n2", "KX-NEW", DAY + 120, 300),
        trade("r1", "KX-REF", DAY + 60, 100),
        trade("n1", "KX-NEW", DAY + 60, 200),
        trade("o1", "KX-OTHER", DAY + 86_400, 400),
    ];
    assert_eq!(ingest_answer(&channel, trades, 2).await.expect("stored"), (4, 2), "KX-NEW and KX-OTHER lack one");

    let new = streamed(&channel, trades_request(&["KX-NEW"], &[])).await.expect("by its ticker");
    assert_eq!(new, [("KX-NEW".into(), "n1".into()), ("KX-NEW".into(), "n2".into())]);
    let both = streamed(&channel, trades_request(&["KX-NEW", "KX-OTHER"], &["KX-E"])).await.expect("with an event");
    let ids: Vec<&str> = both.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids, ["n1", "r1", "n2", "o1"], "in (ts, ticker, trade_id) order");
    let event = streamed(&channel, trades_request(&[], &["KX-E"])).await.expect("the event");
    assert_eq!(event, [("KX-REF".into(), "r1".into())], "an event reaches only markets with reference rows");
    let unknown = streamed(&channel, trades_request(&["KX-NONE"], &[])).await.expect_err("no facts, no row");
    assert_eq!(unknown.code(), Code::NotFound);

    let candles = StreamCandlesRequest {
        market_tickers: vec!["KX-NEW".into()],
        start_time: Some(Timestamp { seconds: DAY, nanos: 0 }),
        end_time: Some(Timestamp { seconds: DAY + 86_400, nanos: 0 }),
        interval_seconds: 86_400,
        ..Default::default()
    };
    let stream = ReplayServiceClient::new(channel.clone()).stream_candles(candles).await.expect("candles");
    let messages = common::collect(stream.into_inner()).await.expect("candles");
    let volume: i64 = messages
        .iter()
        .filter_map(|m| match &m.payload {
            Some(stream_candles_response::Payload::Candles(batch)) => Some(batch.candles.iter()),
            _ => None,
        })
        .flatten()
        .map(|c| c.volume_centi)
        .sum();
    assert_eq!(volume, 500, "the day's candle holds both trades");

    let request = GetCoverageRequest { market_tickers: vec!["KX-NEW".into(), "KX-REF".into()], ..Default::default() };
    let coverage = ReferenceServiceClient::new(channel.clone()).get_coverage(request).await.expect("coverage");
    let counts: Vec<(String, i64)> =
        coverage.into_inner().markets.into_iter().map(|m| (m.market_ticker, m.trade_count)).collect();
    assert_eq!(counts, [("KX-NEW".into(), 2), ("KX-REF".into(), 1)]);
}
