//! IngestService over real gRPC against a real PostgreSQL: idempotence, atomicity, every validation error, the
//! watermark of the answer, partitions created as needed, and late trades that move coverage and candles.

mod common;

use std::time::Duration;

use common::TestApp;
use kalshi_replay::proto::{
    Event, GetCoverageRequest, GetMarketRequest, GetSeriesRequest, GetSettlementRequest, IngestLifecycleRequest,
    IngestOrderbookRequest, IngestTradesRequest, LifecycleEvent, LifecycleEventType, Market, MarketStatus,
    OrderbookDelta, OrderbookLevel, OrderbookSnapshot, Series, Settlement, SettlementResult, Side,
    StreamCandlesRequest, StreamTradesRequest, Trade, UpsertEventsRequest, UpsertMarketsRequest, UpsertSeriesRequest,
    UpsertSettlementsRequest, ingest_service_client::IngestServiceClient,
    reference_service_client::ReferenceServiceClient, replay_service_client::ReplayServiceClient,
    stream_candles_response, stream_trades_response,
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

#[tokio::test]
async fn a_trade_recorded_at_another_precision_is_the_same_trade() {
    let app = TestApp::start().await;
    let db = app.db.client().await;
    let channel = app.channel().await;
    let at = |micros: i64| Some(Timestamp { seconds: DAY + 7, nanos: (micros * 1000) as i32 });
    // the WebSocket's ts_ms first, then REST's microseconds, then the WebSocket's whole seconds
    let ms = Trade { time: at(123_000), ..trade("t-1", "KX-A", 0, 290_000, 1234) };
    let us = Trade { time: at(123_456), ..ms.clone() };
    let s = Trade { time: at(0), ..ms.clone() };
    assert_eq!(ingest(&channel, vec![vec![ms]]).await.expect("ms").0, 1);
    assert_eq!(ingest(&channel, vec![vec![us.clone()], vec![s]]).await.expect("again").0, 0);
    // the same id in another second, or in another market, is another trade
    let later = Trade { time: Some(Timestamp { seconds: DAY + 8, nanos: 0 }), ..us.clone() };
    let other = Trade { market_ticker: "KX-B".into(), ..us };
    assert_eq!(ingest(&channel, vec![vec![later, other]]).await.expect("others").0, 2);
    let stored: Vec<(String, i64)> = db
        .query("SELECT ticker, (extract(epoch FROM ts) * 1000000)::bigint FROM trades ORDER BY 1, 2", &[])
        .await
        .expect("trades")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let micros = (DAY + 7) * 1_000_000;
    let expected = [("KX-A", micros + 123_000), ("KX-A", micros + 1_000_000), ("KX-B", micros + 123_456)];
    assert_eq!(stored, expected.map(|(t, m)| (t.to_owned(), m)), "the first stored is kept");
    assert_eq!(state(&db).await[1], 3, "coverage counts each trade once");
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
    let admin = app.db.admin().await;
    let open_writes = async || -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'COPY ingest_trades %'",
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
    // a few trades are held in the server: no transaction is open for them yet
    tx.send(IngestTradesRequest { trades: batch() }).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(open_writes().await, 0, "a stream holds no connection before it stages rows");
    tx.send(IngestTradesRequest { trades: many }).await.expect("send");
    wait_for(true, "the write is open, its first trades staged").await;
    call.abort();
    drop(tx);
    wait_for(false, "the cancelled write's connection is still open").await;
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

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

fn level(price_micros: i64, size_centi: i64) -> OrderbookLevel {
    OrderbookLevel { price_micros, size_centi }
}

fn snapshot(ticker: &str, seconds: i64, sid: i64, seq: i64) -> OrderbookSnapshot {
    OrderbookSnapshot {
        market_ticker: ticker.into(),
        time: at(seconds),
        sid,
        seq,
        yes_bids: vec![level(80_000, 30_000), level(220_000, 33_300)],
        no_bids: vec![level(540_000, 2_000)],
        ingest_seq: 0,
    }
}

fn delta(ticker: &str, seconds: i64, sid: i64, seq: i64, delta_centi: i64) -> OrderbookDelta {
    OrderbookDelta {
        market_ticker: ticker.into(),
        time: at(seconds),
        sid,
        seq,
        side: Side::Yes as i32,
        price_micros: 960_000,
        delta_centi,
        ingest_seq: 0,
    }
}

fn lifecycle(ticker: &str, seconds: i64, event_type: LifecycleEventType) -> LifecycleEvent {
    LifecycleEvent {
        market_ticker: ticker.into(),
        time: at(seconds),
        event_type: event_type as i32,
        ..Default::default()
    }
}

type Counts = (i64, i64);

async fn ingest_book(
    channel: &Channel,
    messages: Vec<IngestOrderbookRequest>,
) -> Result<(Counts, Counts, i64), tonic::Status> {
    let answer = IngestServiceClient::new(channel.clone()).ingest_orderbook(tokio_stream::iter(messages)).await?;
    let answer = answer.into_inner();
    let (s, d) = (answer.snapshots.expect("snapshots"), answer.deltas.expect("deltas"));
    Ok(((s.inserted, s.duplicates), (d.inserted, d.duplicates), answer.watermark))
}

async fn ingest_lifecycle(channel: &Channel, events: Vec<LifecycleEvent>) -> Result<(Counts, i64), tonic::Status> {
    let request = IngestLifecycleRequest { events };
    let answer = IngestServiceClient::new(channel.clone()).ingest_lifecycle(tokio_stream::iter([request])).await?;
    let answer = answer.into_inner();
    let counts = answer.counts.expect("counts");
    Ok(((counts.inserted, counts.duplicates), answer.watermark))
}

/// Every fact row the writes of these tests touch, as text, in key order, and the coverage counts.
async fn facts(db: &PgClient) -> Vec<String> {
    let rows = db
        .query(
            "SELECT format('snapshot %s %s %s %s %s %s %s %s', ts, ticker, sid, seq, yes_price_micros, yes_size_centi,
                           no_price_micros, no_size_centi) FROM orderbook_snapshots
             UNION ALL SELECT format('delta %s %s %s %s %s %s %s', ts, ticker, sid, seq, side, price_micros, delta_centi)
                         FROM orderbook_deltas
             UNION ALL SELECT format('lifecycle %s %s %s %s %s %s', ts, ticker, event_type, close_time, result,
                                     settlement_value_micros) FROM market_lifecycle
             UNION ALL SELECT format('coverage %s %s %s %s', ticker, day, delta_count, snapshot_count) FROM coverage_daily
             UNION ALL SELECT format('watermark %s', watermark) FROM data_version
             ORDER BY 1",
            &[],
        )
        .await
        .expect("facts");
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn books_and_lifecycle_events_are_stored_once_with_their_sid_and_seq() {
    let app = TestApp::start().await;
    let db = app.db.client().await;
    markets(&db).await;
    let channel = app.channel().await;
    let messages = || {
        vec![
            IngestOrderbookRequest {
                snapshots: vec![snapshot("KX-A", DAY + 10, 2, 2)],
                deltas: vec![delta("KX-A", DAY + 11, 2, 4, 500), delta("KX-A", DAY + 11, 2, 3, -5_400)],
            },
            IngestOrderbookRequest {
                // a later day, another subscription, and a delta sent twice in the stream
                snapshots: vec![snapshot("KX-B", DAY + 86_400, 7, 1)],
                deltas: vec![delta("KX-B", DAY + 86_401, 7, 2, 1), delta("KX-A", DAY + 11, 2, 3, -5_400)],
            },
        ]
    };
    let (snapshots, deltas, watermark) = ingest_book(&channel, messages()).await.expect("book");
    assert_eq!((snapshots, deltas), ((2, 0), (3, 1)));
    let stored = facts(&db).await;
    let expected_a = "snapshot 2025-03-01 00:00:10+00 KX-A 2 2 {80000,220000} {30000,33300} {540000} {2000}";
    assert!(stored.contains(&expected_a.to_owned()), "{stored:#?}");
    assert!(stored.contains(&"delta 2025-03-01 00:00:11+00 KX-A 2 3 1 960000 -5400".to_owned()), "{stored:#?}");
    assert!(stored.contains(&"coverage KX-A 2025-03-01 2 1".to_owned()), "{stored:#?}");
    assert!(stored.contains(&"coverage KX-B 2025-03-02 1 1".to_owned()), "{stored:#?}");
    assert!(stored.contains(&format!("watermark {watermark}")));

    // the same stream again, as after a lost acknowledgement: all duplicates, nothing changes
    let (snapshots, deltas, again) = ingest_book(&channel, messages()).await.expect("again");
    assert_eq!((snapshots, deltas, again), ((0, 2), (0, 4), watermark));
    assert_eq!(facts(&db).await, stored);

    let mut determined = lifecycle("KX-A", DAY + 3600, LifecycleEventType::Determined);
    determined.result = SettlementResult::Yes as i32;
    determined.settlement_value_micros = Some(1_000_000);
    let mut moved = lifecycle("KX-A", DAY + 60, LifecycleEventType::CloseDateUpdated);
    moved.close_time = at(DAY + 7200);
    let events = vec![determined, moved, lifecycle("KX-B", DAY, LifecycleEventType::Created)];
    let (counts, later) = ingest_lifecycle(&channel, events.clone()).await.expect("lifecycle");
    assert_eq!(counts, (3, 0));
    assert!(later > watermark, "the watermark moves with a lifecycle write");
    let stored = facts(&db).await;
    assert!(stored.contains(&"lifecycle 2025-03-01 01:00:00+00 KX-A 5  1 1000000".to_owned()), "{stored:#?}");
    assert!(stored.contains(&"lifecycle 2025-03-01 00:01:00+00 KX-A 4 2025-03-01 02:00:00+00  ".to_owned()));
    assert_eq!(ingest_lifecycle(&channel, events).await.expect("again"), ((0, 3), later));
    assert_eq!(facts(&db).await, stored);
}

#[tokio::test]
async fn a_bad_book_or_lifecycle_item_writes_nothing_and_is_named() {
    let app = TestApp::start().await;
    let db = app.db.client().await;
    let channel = app.channel().await;
    ingest_book(
        &channel,
        vec![IngestOrderbookRequest { snapshots: vec![snapshot("KX-A", DAY, 1, 1)], deltas: vec![] }],
    )
    .await
    .expect("first");
    let before = facts(&db).await;

    type SpoilBook = fn(&mut IngestOrderbookRequest);
    let cases: [(SpoilBook, &str); 9] = [
        (|m| m.deltas[1].price_micros = 1_000_000, "deltas[1].price_micros"),
        (|m| m.deltas[1].price_micros = 0, "deltas[1].price_micros"),
        (|m| m.deltas[1].delta_centi = 0, "deltas[1].delta_centi"),
        (|m| m.deltas[1].side = 7, "deltas[1].side"),
        (|m| m.deltas[1].market_ticker.clear(), "deltas[1].market_ticker"),
        (|m| m.snapshots[0].yes_bids[1].size_centi = 0, "snapshots[0].yes_bids[1].size_centi"),
        (|m| m.snapshots[0].no_bids[0].price_micros = -5, "snapshots[0].no_bids[0].price_micros"),
        (|m| m.snapshots[0].yes_bids.reverse(), "snapshots[0].yes_bids[1].price_micros"),
        (|m| m.snapshots[0].time = None, "snapshots[0].time"),
    ];
    for (spoil, field) in cases {
        let mut bad = IngestOrderbookRequest {
            snapshots: vec![snapshot("KX-A", DAY + 5, 1, 2)],
            deltas: vec![delta("KX-A", DAY + 6, 1, 3, 100), delta("KX-A", DAY + 6, 1, 4, 100)],
        };
        spoil(&mut bad);
        // good items in an earlier message of the same stream are not stored either
        let good = IngestOrderbookRequest { snapshots: vec![], deltas: vec![delta("KX-A", DAY + 2 * 86_400, 1, 9, 1)] };
        let error = ingest_book(&channel, vec![good, bad]).await.expect_err(field);
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        let field = field.replace("deltas[1]", "deltas[2]");
        assert!(error.message().starts_with(&format!("{field}: ")), "{field}: {}", error.message());
    }

    type SpoilEvent = fn(&mut LifecycleEvent);
    let cases: [(SpoilEvent, &str); 5] = [
        (|e| e.event_type = 0, "event_type"),
        (|e| e.event_type = 7, "event_type"),
        (|e| e.result = 9, "result"),
        (|e| e.settlement_value_micros = Some(1_000_001), "settlement_value_micros"),
        (|e| e.market_ticker.clear(), "market_ticker"),
    ];
    for (spoil, field) in cases {
        let mut events = vec![lifecycle("KX-A", DAY, LifecycleEventType::Created); 2];
        spoil(&mut events[1]);
        let error = ingest_lifecycle(&channel, events).await.expect_err(field);
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        assert!(error.message().starts_with(&format!("events[1].{field}: ")), "{field}: {}", error.message());
    }
    assert_eq!(facts(&db).await, before, "no refused write changed anything");
}

fn updated(seconds: i64) -> Option<Timestamp> {
    at(seconds)
}

fn market(ticker: &str, title: &str, seconds: i64) -> Market {
    Market {
        ticker: ticker.into(),
        event_ticker: "KXE-25MAR01".into(),
        series_ticker: "KXE".into(),
        title: title.into(),
        status: MarketStatus::Active as i32,
        floor_strike: "99999.99".into(),
        updated_time: updated(seconds),
        ..Default::default()
    }
}

async fn upsert_markets(channel: &Channel, markets: Vec<Market>) -> Result<(i64, i64, i64), tonic::Status> {
    let answer = IngestServiceClient::new(channel.clone()).upsert_markets(UpsertMarketsRequest { markets }).await?;
    let counts = answer.into_inner().counts.expect("counts");
    Ok((counts.inserted, counts.updated, counts.unchanged))
}

async fn market_title(channel: &Channel, ticker: &str) -> String {
    let request = GetMarketRequest { ticker: ticker.into() };
    let answer = ReferenceServiceClient::new(channel.clone()).get_market(request).await.expect("market");
    answer.into_inner().market.expect("market").title
}

#[tokio::test]
async fn reference_upserts_are_last_writer_wins_and_count_what_changed() {
    let app = TestApp::start().await;
    let channel = app.channel().await;
    let t = DAY;
    let first = vec![market("KX-1", "one", t), market("KX-2", "two", t)];
    assert_eq!(upsert_markets(&channel, first.clone()).await.expect("insert"), (2, 0, 0));
    assert_eq!(market_title(&channel, "KX-1").await, "one");
    let stored = GetMarketRequest { ticker: "KX-1".into() };
    let got = ReferenceServiceClient::new(channel.clone()).get_market(stored).await.expect("get").into_inner();
    assert_eq!(got.market.expect("market").floor_strike, "99999.99", "the strike stays exact");

    // sent again: nothing changes
    assert_eq!(upsert_markets(&channel, first).await.expect("again"), (0, 0, 2));
    // newer and changed: replaced (and the cached answer with it); older: kept; newer but equal: kept
    let batch = vec![market("KX-1", "one v2", t + 10), market("KX-2", "stale", t - 10), market("KX-3", "three", t)];
    assert_eq!(upsert_markets(&channel, batch).await.expect("mixed"), (1, 1, 1));
    assert_eq!(market_title(&channel, "KX-1").await, "one v2");
    assert_eq!(market_title(&channel, "KX-2").await, "two");
    assert_eq!(upsert_markets(&channel, vec![market("KX-3", "three", t + 99)]).await.expect("same"), (0, 0, 1));
    // one key twice in a batch: the later updated_time wins, whatever the order; on a tie, the last sent
    let twice = vec![market("KX-4", "newest", t + 5), market("KX-4", "older", t + 1)];
    assert_eq!(upsert_markets(&channel, twice).await.expect("twice"), (1, 0, 1));
    assert_eq!(market_title(&channel, "KX-4").await, "newest");
    let tie = vec![market("KX-5", "first sent", t), market("KX-5", "last sent", t)];
    assert_eq!(upsert_markets(&channel, tie).await.expect("tie"), (1, 0, 1));
    assert_eq!(market_title(&channel, "KX-5").await, "last sent");
    // an unset updated_time is the time of the write, so it wins over any past one
    let now = Market { updated_time: None, ..market("KX-1", "one v3", 0) };
    assert_eq!(upsert_markets(&channel, vec![now]).await.expect("now"), (0, 1, 0));
    assert_eq!(market_title(&channel, "KX-1").await, "one v3");

    // a bad item: named, and nothing of its batch is written
    type SpoilMarket = fn(&mut Market);
    let cases: [(SpoilMarket, &str); 5] = [
        (|m| m.status = 0, "status"),
        (|m| m.ticker.clear(), "ticker"),
        (|m| m.series_ticker.clear(), "series_ticker"),
        (|m| m.floor_strike = "0x10".into(), "floor_strike"),
        (|m| m.market_type = 5, "market_type"),
    ];
    for (spoil, field) in cases {
        let mut batch = vec![market("KX-9", "nine", t), market("KX-1", "one v9", t + 1_000_000)];
        spoil(&mut batch[1]);
        let error = upsert_markets(&channel, batch).await.expect_err(field);
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        assert!(error.message().starts_with(&format!("markets[1].{field}: ")), "{field}: {}", error.message());
    }
    let missing = ReferenceServiceClient::new(channel.clone())
        .get_market(GetMarketRequest { ticker: "KX-9".into() })
        .await
        .expect_err("not written");
    assert_eq!(missing.code(), Code::NotFound);

    // the other reference kinds go through the same upsert
    let client = IngestServiceClient::new(channel.clone());
    let series = Series {
        ticker: "KXE".into(),
        title: "E".into(),
        tags: vec!["a".into(), "b".into()],
        updated_time: updated(t),
        ..Default::default()
    };
    let counts = |c: Option<kalshi_replay::proto::UpsertCounts>| c.map(|c| (c.inserted, c.updated, c.unchanged));
    let answer =
        client.clone().upsert_series(UpsertSeriesRequest { series: vec![series.clone()] }).await.expect("series");
    assert_eq!(counts(answer.into_inner().counts), Some((1, 0, 0)));
    let retagged = Series { tags: vec!["a".into()], updated_time: updated(t + 1), ..series };
    let answer = client.clone().upsert_series(UpsertSeriesRequest { series: vec![retagged] }).await.expect("series");
    assert_eq!(counts(answer.into_inner().counts), Some((0, 1, 0)));
    let got = ReferenceServiceClient::new(channel.clone()).get_series(GetSeriesRequest { ticker: "KXE".into() }).await;
    assert_eq!(got.expect("series").into_inner().series.expect("series").tags, ["a"]);
    let event = Event {
        event_ticker: "KXE-25MAR01".into(),
        series_ticker: "KXE".into(),
        updated_time: updated(t),
        ..Default::default()
    };
    let answer =
        client.clone().upsert_events(UpsertEventsRequest { events: vec![event.clone(), event] }).await.expect("events");
    assert_eq!(counts(answer.into_inner().counts), Some((1, 0, 1)));
    let settlement = Settlement {
        market_ticker: "KX-1".into(),
        event_ticker: "KXE-25MAR01".into(),
        series_ticker: "KXE".into(),
        result: SettlementResult::Yes as i32,
        updated_time: updated(t),
        ..Default::default()
    };
    let answer =
        client.clone().upsert_settlements(UpsertSettlementsRequest { settlements: vec![settlement.clone()] }).await;
    assert_eq!(counts(answer.expect("settlements").into_inner().counts), Some((1, 0, 0)));
    let got = ReferenceServiceClient::new(channel.clone())
        .get_settlement(GetSettlementRequest { market_ticker: "KX-1".into() })
        .await
        .expect("settlement")
        .into_inner();
    assert_eq!(got.settlement.expect("settlement").settlement_value_micros, 1_000_000, "derived from YES");
    let bad = Settlement { result: SettlementResult::No as i32, settlement_value_micros: 5, ..settlement };
    let error = client.clone().upsert_settlements(UpsertSettlementsRequest { settlements: vec![bad] }).await;
    let error = error.expect_err("refused");
    assert!(error.message().starts_with("settlements[0].settlement_value_micros: "), "{}", error.message());
}

#[tokio::test]
async fn a_new_day_is_written_while_a_replay_holds_the_table() {
    let app = TestApp::start().await;
    let channel = app.channel().await;
    // a reader in the middle of a long replay: its snapshot holds a shared lock on the trades parent
    let reader = app.db.client().await;
    reader.batch_execute("BEGIN; SELECT count(*) FROM trades;").await.expect("reader");
    let write = ingest(&channel, vec![vec![trade("x", "KX-A", DAY + 40 * 86_400, 500_000, 100)]]);
    let answer = tokio::time::timeout(Duration::from_secs(10), write).await.expect("not blocked by the reader");
    assert_eq!(answer.expect("ingest").0, 1);
    reader.batch_execute("COMMIT").await.expect("reader");
}

#[tokio::test]
async fn concurrent_writers_of_overlapping_trades_store_each_once_and_keep_the_counts_exact() {
    let app = TestApp::start().await;
    let db = app.db.client().await;
    let channel = app.channel().await;
    // 2,000 trades over 4 markets and 2 days; each of 4 writers sends an overlapping half of them, some at
    // millisecond precision (as the WebSocket gives them), in its own order and messages
    let all: Vec<Trade> = (0..2000i64)
        .map(|i| {
            let seconds = DAY + (i * 7919) % (2 * 86_400);
            let micros = (i * 104_729) % 1_000_000;
            Trade {
                time: Some(Timestamp { seconds, nanos: (micros * 1000) as i32 }),
                ..trade(&format!("id-{i}"), &format!("KX-{}", i % 4), 0, 1 + (i * 31) % 999_998, 1 + i % 500)
            }
        })
        .collect();
    let writers: Vec<_> = (0..4usize)
        .map(|w| {
            let mut mine: Vec<Trade> =
                all.iter().enumerate().filter(|(i, _)| (i + w) % 4 < 2).map(|(_, t)| t.clone()).collect();
            if w % 2 == 1 {
                mine.reverse();
                for t in mine.iter_mut().step_by(3) {
                    let time = t.time.as_mut().expect("time");
                    time.nanos -= time.nanos % 1_000_000;
                }
            }
            let messages: Vec<Vec<Trade>> = mine.chunks(97 + w * 50).map(<[Trade]>::to_vec).collect();
            let channel = channel.clone();
            tokio::spawn(async move { ingest(&channel, messages).await.expect("ingest") })
        })
        .collect();
    let mut inserted = 0;
    for writer in writers {
        let (i, d, _) = writer.await.expect("writer");
        assert_eq!(i + d, 1000, "each writer's trades are counted once");
        inserted += i;
    }
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM trades), (SELECT count(DISTINCT (ticker, trade_id)) FROM trades),
                    (SELECT sum(trade_count)::bigint FROM coverage_daily),
                    (SELECT sum(trade_count)::bigint FROM trade_minutes), (SELECT sum(trade_count)::bigint FROM trade_days),
                    (SELECT max(ingest_seq) FROM trades) = (SELECT watermark FROM data_version)",
            &[],
        )
        .await
        .expect("counts");
    let (stored, distinct, coverage, minutes, days): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!((stored, distinct), (2000, 2000), "every trade once, whatever its precision or writer");
    assert_eq!(inserted, stored, "the answers' counts add up to what is stored");
    assert_eq!((coverage, minutes, days), (stored, stored, stored), "coverage and aggregates count each trade once");
    assert!(row.get::<_, bool>(5), "the watermark is the highest ingest_seq");
}
