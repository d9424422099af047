//! IngestService over real gRPC against a real PostgreSQL: idempotence, atomicity, every validation error, the
//! watermark of the answer, partitions created as needed, and late trades that move coverage and candles.

mod common;

use std::time::Duration;

use common::TestApp;
use kalshi_replay::proto::{
    GetCoverageRequest, IngestTradesRequest, Side, StreamCandlesRequest, StreamTradesRequest, Trade,
    ingest_service_client::IngestServiceClient, reference_service_client::ReferenceServiceClient,
    replay_service_client::ReplayServiceClient, stream_candles_response, stream_trades_response,
};
use prost_types::Timestamp;
use tokio_postgres::Client as PgClient;
use tonic::{Code, transport::Channel};

/// 2025-03-01T00:00:00Z: a day no partition exists for before the first write.
const DAY: i64 = 1_740_787_200;

fn trade(id: &str, ticker: &str, seconds: i64, price: i64, count: i64) -> Trade {
    Trade {
        trade_id: id.into(),
        market_ticker: ticker.into(),
        time: Some(Timestamp { seconds, nanos: 0 }),
        yes_price_micros: price,
        no_price_micros: 0,
        count_centi: count,
        taker_side: Side::Yes as i32,
        ingest_seq: 0,
    }
}

/// Trades over three days, two markets, in no order.
fn batch() -> Vec<Trade> {
    vec![
        trade("c", "KX-B", DAY + 2 * 86_400 + 5, 410_000, 100),
        trade("a", "KX-A", DAY + 60, 290_000, 1234),
        trade("b", "KX-A", DAY + 60, 300_000, 1),
        trade("d", "KX-B", DAY + 86_400 + 59, 999_999, 7),
        trade("e", "KX-A", DAY + 3600, 1, 50),
    ]
}

async fn ingest(channel: &Channel, messages: Vec<Vec<Trade>>) -> Result<(i64, i64, i64), tonic::Status> {
    let requests = messages.into_iter().map(|trades| IngestTradesRequest { trades });
    let answer = IngestServiceClient::new(channel.clone()).ingest_trades(tokio_stream::iter(requests)).await?;
    let answer = answer.into_inner();
    let counts = answer.counts.expect("counts");
    Ok((counts.inserted, counts.duplicates, answer.watermark))
}

/// What the database holds that a write changes: trades, coverage, aggregates, watermark.
async fn state(db: &PgClient) -> [i64; 5] {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM trades), (SELECT COALESCE(sum(trade_count), 0)::bigint FROM coverage_daily),
                    (SELECT count(*) FROM trade_minutes), (SELECT count(*) FROM trade_days),
                    (SELECT watermark FROM data_version)",
            &[],
        )
        .await
        .expect("state");
    std::array::from_fn(|i| row.get(i))
}

async fn stored_trades(channel: &Channel, as_of: Option<i64>) -> Vec<Trade> {
    let request = StreamTradesRequest {
        market_tickers: vec!["KX-A".into(), "KX-B".into()],
        start_time: Some(Timestamp { seconds: DAY - 86_400, nanos: 0 }),
        end_time: Some(Timestamp { seconds: DAY + 4 * 86_400, nanos: 0 }),
        as_of_watermark: as_of,
        ..Default::default()
    };
    let stream = ReplayServiceClient::new(channel.clone()).stream_trades(request).await.expect("replay").into_inner();
    let messages = common::collect(stream).await.expect("messages");
    messages
        .into_iter()
        .filter_map(|m| match m.payload {
            Some(stream_trades_response::Payload::Trades(batch)) => Some(batch.trades),
            _ => None,
        })
        .flatten()
        .collect()
}

async fn markets(db: &PgClient) {
    db.batch_execute(
        "INSERT INTO markets (ticker, event_ticker, series_ticker, status, updated_at)
         VALUES ('KX-A', 'KX', 'KX', 3, now()), ('KX-B', 'KX', 'KX', 3, now())",
    )
    .await
    .expect("markets");
}

#[tokio::test]
async fn trades_are_stored_once_in_their_order_and_the_answer_comes_after_the_commit() {
    let app = TestApp::start().await;
    let db = app.db.client().await;
    markets(&db).await;
    let channel = app.channel().await;
    // two messages, one trade sent twice inside the stream: stored once, counted as a duplicate
    let mut second = batch()[3..].to_vec();
    second.push(batch()[0].clone());
    let (inserted, duplicates, watermark) =
        ingest(&channel, vec![batch()[..3].to_vec(), second]).await.expect("ingest");
    assert_eq!((inserted, duplicates), (5, 1));
    let stored = stored_trades(&channel, Some(watermark)).await;
    let keys: Vec<(&str, &str)> = stored.iter().map(|t| (t.market_ticker.as_str(), t.trade_id.as_str())).collect();
    assert_eq!(keys, [("KX-A", "a"), ("KX-A", "b"), ("KX-A", "e"), ("KX-B", "d"), ("KX-B", "c")], "replay order");
    let a = &stored[0];
    assert_eq!((a.yes_price_micros, a.no_price_micros, a.count_centi, a.taker_side), (290_000, 710_000, 1234, 1));
    assert_eq!(stored.iter().map(|t| t.ingest_seq).max(), Some(watermark), "the answer's watermark sees them all");
    let partitions: i64 = db
        .query_one("SELECT count(*) FROM pg_class WHERE relname IN ('trades_p20250301', 'trades_p20250303')", &[])
        .await
        .expect("partitions")
        .get(0);
    assert_eq!(partitions, 2, "the partitions of the days written were created");

    // the same request again, as after a lost acknowledgement: nothing new
    let before = state(&db).await;
    assert_eq!(ingest(&channel, vec![batch()]).await.expect("again"), (0, 5, watermark));
    assert_eq!(state(&db).await, before);
    // an empty stream stores nothing and answers the current watermark
    assert_eq!(ingest(&channel, vec![]).await.expect("empty"), (0, 0, watermark));
}

/// A change that makes a good trade bad.
type Spoil = fn(&mut Trade);

#[tokio::test]
async fn a_bad_item_or_a_broken_stream_writes_nothing() {
    let app = TestApp::start().await;
    let db = app.db.client().await;
    markets(&db).await;
    let channel = app.channel().await;
    ingest(&channel, vec![batch()]).await.expect("first");
    let before = state(&db).await;

    // more trades than the server holds before staging them, then one bad trade: all or nothing
    let many: Vec<Trade> = (0..10_000).map(|i| trade(&format!("m{i}"), "KX-A", DAY + i, 500_000, 100)).collect();
    let mut bad = batch()[..2].to_vec();
    bad[1].count_centi = 0;
    let error = ingest(&channel, vec![many.clone(), bad]).await.expect_err("refused");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().starts_with("trades[10001].count_centi: "), "{}", error.message());
    assert_eq!(state(&db).await, before, "the database is unchanged");

    // every validation error names the item's index in the stream and the field
    let cases: [(Spoil, &str); 10] = [
        (|t| t.yes_price_micros = 0, "yes_price_micros"),
        (|t| t.yes_price_micros = 1_000_000, "yes_price_micros"),
        (|t| t.no_price_micros = 1, "no_price_micros"),
        (|t| t.count_centi = -1, "count_centi"),
        (|t| t.taker_side = 0, "taker_side"),
        (|t| t.taker_side = 3, "taker_side"),
        (|t| t.market_ticker.clear(), "market_ticker"),
        (|t| t.trade_id.clear(), "trade_id"),
        (|t| t.time = None, "time"),
        (|t| t.time = Some(Timestamp { seconds: DAY, nanos: 1 }), "time"),
    ];
    for (spoil, field) in cases {
        let mut trades = batch();
        spoil(&mut trades[2]);
        let error = ingest(&channel, vec![trades[..1].to_vec(), trades[1..].to_vec()]).await.expect_err(field);
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        assert!(error.message().starts_with(&format!("trades[2].{field}: ")), "{field}: {}", error.message());
    }
    assert_eq!(state(&db).await, before, "no refused write changed anything");

    // a client that goes away mid-stream: nothing of its stream is stored, and no connection stays behind
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let call = tokio::spawn({
        let channel = channel.clone();
        async move {
            let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
            IngestServiceClient::new(channel).ingest_trades(requests).await
        }
    });
    tx.send(IngestTradesRequest { trades: many }).await.expect("send");
    let admin = app.db.admin().await;
    let open_writes = async || -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'",
                &[&app.db.name],
            )
            .await
            .expect("activity")
            .get(0)
    };
    let wait_for = async |open: bool, what: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while (open_writes().await > 0) != open {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_for(true, "the write is open, its first trades staged").await;
    call.abort();
    drop(tx);
    wait_for(false, "the cancelled write's transaction is still open").await;
    assert_eq!(state(&db).await, before, "the cancelled stream wrote nothing");
}

#[tokio::test]
async fn late_trades_move_coverage_and_candles_but_not_a_pinned_replay() {
    let app = TestApp::start().await;
    let db = app.db.client().await;
    markets(&db).await;
    let channel = app.channel().await;
    let (_, _, first) = ingest(&channel, vec![batch()]).await.expect("first");
    let candles = async |as_of: Option<i64>| {
        let request = StreamCandlesRequest {
            market_tickers: vec!["KX-A".into(), "KX-B".into()],
            start_time: Some(Timestamp { seconds: DAY, nanos: 0 }),
            end_time: Some(Timestamp { seconds: DAY + 3 * 86_400, nanos: 0 }),
            interval_seconds: 86_400,
            as_of_watermark: as_of,
            ..Default::default()
        };
        let stream =
            ReplayServiceClient::new(channel.clone()).stream_candles(request).await.expect("candles").into_inner();
        let messages = common::collect(stream).await.expect("messages");
        messages
            .into_iter()
            .filter_map(|m| match m.payload {
                Some(stream_candles_response::Payload::Candles(batch)) => Some(batch.candles),
                _ => None,
            })
            .flatten()
            .collect::<Vec<_>>()
    };
    let before = candles(None).await;
    // a late trade into the first minute of KX-A, earlier than everything there: it becomes the day's open
    let late = trade("0-late", "KX-A", DAY + 60, 100_000, 10);
    assert_eq!(ingest(&channel, vec![vec![late]]).await.expect("late").0, 1);
    let after = candles(None).await;
    assert_eq!((before[0].open_micros, after[0].open_micros), (290_000, 100_000));
    assert_eq!((after[0].trade_count, after[0].volume_centi), (before[0].trade_count + 1, before[0].volume_centi + 10));
    assert_eq!(candles(Some(first)).await, before, "pinned to the first watermark, as before");
    let coverage = ReferenceServiceClient::new(channel.clone())
        .get_coverage(GetCoverageRequest { market_tickers: vec!["KX-A".into()], ..Default::default() })
        .await
        .expect("coverage")
        .into_inner();
    assert_eq!(coverage.markets[0].trade_count, 4, "three trades and the late one");
}
