//! LAYOUT_ARROW over real gRPC against a real PostgreSQL: the Arrow IPC stream of a call, read as one stream by
//! arrow-rs's StreamReader and message by message by its StreamDecoder, carries exactly the trades and candles of
//! the rows layout, with the same resume tokens and summaries; a resumed call is a new IPC stream; bad layouts
//! are refused. (Memory and cancellation of Arrow streams are covered where those tests iterate layouts:
//! tests/trades.rs, tests/candles.rs, tests/limits_memory.rs, tests/faults.rs.)

mod common;

use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray, cast::AsArray, types::Int32Type};
use arrow_ipc::reader::StreamReader;
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::DateTime;
use common::{Call, TestApp, all_markets, candles_of, expected_hash, summary_of, trades_of};
use kalshi_replay::proto::{
    FillPolicy, Layout, StreamCandlesRequest, StreamCandlesResponse, StreamTradesRequest, StreamTradesResponse,
    replay_service_client::ReplayServiceClient, stream_candles_response, stream_trades_response,
};
use prost_types::Timestamp;
use sha2::{Digest, Sha256};
use tonic::{Code, transport::Channel};

type Client = ReplayServiceClient<Channel>;

fn ts(s: &str) -> Timestamp {
    let t = DateTime::parse_from_rfc3339(s).expect("time");
    Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn trades_request(markets: &[String], start: &str, end: &str, batch_size: i32, layout: Layout) -> StreamTradesRequest {
    StreamTradesRequest {
        market_tickers: markets.to_vec(),
        start_time: Some(ts(start)),
        end_time: Some(ts(end)),
        batch_size,
        layout: layout as i32,
        ..Default::default()
    }
}

async fn trades(client: &mut Client, request: StreamTradesRequest) -> Result<Vec<StreamTradesResponse>, tonic::Status> {
    common::collect(client.stream_trades(request).await?.into_inner()).await
}

async fn candles(
    client: &mut Client,
    request: StreamCandlesRequest,
) -> Result<Vec<StreamCandlesResponse>, tonic::Status> {
    common::collect(client.stream_candles(request).await?.into_inner()).await
}

/// The ipc bytes of each Arrow data message of a call (the summary has none).
fn ipc_of_trades(messages: &[StreamTradesResponse]) -> Vec<Vec<u8>> {
    messages
        .iter()
        .filter_map(|m| match &m.payload {
            Some(stream_trades_response::Payload::Arrow(a)) => Some(a.ipc.clone()),
            _ => None,
        })
        .collect()
}

fn ipc_of_candles(messages: &[StreamCandlesResponse]) -> Vec<Vec<u8>> {
    messages
        .iter()
        .filter_map(|m| match &m.payload {
            Some(stream_candles_response::Payload::Arrow(a)) => Some(a.ipc.clone()),
            _ => None,
        })
        .collect()
}

/// Every record batch of the concatenated bytes, read as one IPC stream by StreamReader; and its schema.
fn read_stream(ipc: &[Vec<u8>]) -> (Arc<Schema>, Vec<RecordBatch>) {
    let bytes = ipc.concat();
    let reader = StreamReader::try_new(bytes.as_slice(), None).expect("an Arrow IPC stream");
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().expect("every batch reads");
    (schema, batches)
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn ticker_dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// StreamTrades' schema as replay.proto's ArrowBatch documents it, written out here independently.
fn documented_trade_schema() -> Schema {
    Schema::new(vec![
        Field::new("time", timestamp(), false),
        Field::new("market_ticker", ticker_dictionary(), false),
        Field::new("trade_id", DataType::Utf8, false),
        Field::new("yes_price_micros", DataType::Int64, false),
        Field::new("no_price_micros", DataType::Int64, false),
        Field::new("count_centi", DataType::Int64, false),
        Field::new("taker_side", DataType::Int8, false),
        Field::new("ingest_seq", DataType::Int64, false),
    ])
}

/// StreamCandles' schema as replay.proto's ArrowBatch documents it.
fn documented_candle_schema() -> Schema {
    let int = |name: &str| Field::new(name, DataType::Int64, false);
    Schema::new(vec![
        Field::new("period_start", timestamp(), false),
        Field::new("period_end", timestamp(), false),
        Field::new("market_ticker", ticker_dictionary(), false),
        int("open_micros"),
        int("high_micros"),
        int("low_micros"),
        int("close_micros"),
        int("volume_centi"),
        int("trade_count"),
        int("vwap_micros"),
        Field::new("previous_micros", DataType::Int64, true),
        Field::new("empty", DataType::Boolean, false),
        Field::new("partial", DataType::Boolean, false),
    ])
}

/// The values of a batch's market_ticker dictionary.
fn dictionary_values(batch: &RecordBatch) -> Vec<String> {
    let column = batch.column_by_name("market_ticker").expect("market_ticker").as_dictionary::<Int32Type>();
    let values = column.values().as_any().downcast_ref::<StringArray>().expect("utf8");
    (0..values.len()).map(|i| values.value(i).to_owned()).collect()
}

fn resume_tokens<M>(messages: &[M], token: impl Fn(&M) -> &str) -> Vec<String> {
    messages.iter().map(|m| token(m).to_owned()).collect()
}

#[tokio::test]
async fn arrow_trades_equal_rows_message_by_message_and_as_one_stream() {
    let app = TestApp::generated(23, 12, 20_000).await;
    let mut client = ReplayServiceClient::new(app.channel().await);
    let markets = all_markets(&app.db.client().await).await;
    let (start, end) = ("2026-01-05T00:00:00Z", "2026-01-09T00:00:00Z");

    for batch_size in [1, 0, 999, 16_384] {
        let rows = trades(&mut client, trades_request(&markets, start, end, batch_size, Layout::Rows)).await;
        let rows = rows.expect("rows");
        let arrow = trades(&mut client, trades_request(&markets, start, end, batch_size, Layout::Arrow)).await;
        let arrow = arrow.expect("arrow");
        let expected = trades_of(&rows);
        assert_eq!(expected.len(), 20_000, "the whole dataset");
        let days: std::collections::BTreeSet<i64> =
            expected.iter().map(|t| t.time.expect("time").seconds / 86_400).collect();
        assert_eq!(days.len(), 4, "four days");

        // the same messages: as many, each with the same trades and token, and the same summary
        assert_eq!(arrow.len(), rows.len(), "batch size {batch_size}: as many messages");
        let mut call = Call::default();
        for (i, (a, r)) in arrow.iter().zip(&rows).enumerate() {
            assert_eq!(call.trades(a), trades_of(std::slice::from_ref(r)), "batch size {batch_size}, message {i}");
        }
        assert_eq!(call.arrow_batches, arrow.len() - 1, "one record batch in every data message");
        assert_eq!(resume_tokens(&arrow, |m| &m.resume_token), resume_tokens(&rows, |m| &m.resume_token));
        let summary = summary_of(&arrow);
        assert_eq!(summary, summary_of(&rows));
        assert_eq!(summary.content_hash, expected_hash(&expected), "over the canonical Trade encoding");

        // the concatenated bytes are one IPC stream: the documented schema once, then every batch
        let ipc = ipc_of_trades(&arrow);
        let (schema, batches) = read_stream(&ipc);
        assert_eq!(*schema, documented_trade_schema());
        assert_eq!(batches.len(), ipc.len());
        let read: Vec<_> = batches.iter().flat_map(common::trades_of_batch).collect();
        assert_eq!(read, expected, "batch size {batch_size}: StreamReader over the whole stream");
        // the dictionary grows by deltas: each ticker once, in the order the stream first used it
        let mut first_seen: Vec<String> = Vec::new();
        for trade in &expected {
            if !first_seen.contains(&trade.market_ticker) {
                first_seen.push(trade.market_ticker.clone());
            }
        }
        assert_eq!(dictionary_values(batches.last().expect("a batch")), first_seen);
        // only the first message holds the schema: a later one alone is no stream
        assert!(StreamReader::try_new(ipc[0].as_slice(), None).is_ok());
        assert!(StreamReader::try_new(ipc[1].as_slice(), None).is_err(), "the schema goes out once per call");
    }
}

#[tokio::test]
async fn a_resumed_arrow_call_starts_with_the_schema_and_joins_to_the_whole_stream() {
    let app = TestApp::generated(29, 12, 12_000).await;
    let mut client = ReplayServiceClient::new(app.channel().await);
    let markets = all_markets(&app.db.client().await).await;
    let (start, end) = ("2026-01-05T06:00:00Z", "2026-01-08T18:00:00Z");
    let req = trades_request(&markets[1..], start, end, 400, Layout::Arrow);
    let whole = trades(&mut client, req.clone()).await.expect("whole");
    let whole_trades = trades_of(&whole);
    let whole_summary = summary_of(&whole);
    assert!(whole.len() > 10, "several batches: {}", whole.len());

    for (cut, layout) in [(1, Layout::Arrow), (whole.len() / 2, Layout::Arrow), (whole.len() / 3, Layout::Rows)] {
        // read `cut` data messages, then drop the call
        let mut stream = client.stream_trades(req.clone()).await.expect("stream").into_inner();
        let mut head = Vec::new();
        for _ in 0..cut {
            head.push(stream.message().await.expect("message").expect("data"));
        }
        drop(stream);
        let token = head.last().expect("cut").resume_token.clone();
        let resumed =
            StreamTradesRequest { resume_token: token, batch_size: 333, layout: layout as i32, ..req.clone() };
        let tail = trades(&mut client, resumed).await.expect("resumed");
        if layout == Layout::Arrow {
            // a new IPC stream: its bytes alone read from the schema on
            let (schema, batches) = read_stream(&ipc_of_trades(&tail));
            assert_eq!(*schema, documented_trade_schema());
            let read: Vec<_> = batches.iter().flat_map(common::trades_of_batch).collect();
            assert_eq!(read, trades_of(&tail));
        }
        let mut joined = trades_of(&head);
        joined.extend(trades_of(&tail));
        assert_eq!(joined, whole_trades, "cut after {cut} messages, resumed in {layout:?}");
        assert_eq!(summary_of(&tail), whole_summary, "the resumed summary covers the whole request");
    }

    // and a rows call resumed in Arrow
    let rows = StreamTradesRequest { layout: Layout::Rows as i32, ..req.clone() };
    let head = trades(&mut client, StreamTradesRequest { batch_size: 1000, ..rows }).await.expect("rows");
    let token = head[2].resume_token.clone();
    let tail = trades(&mut client, StreamTradesRequest { resume_token: token, ..req.clone() }).await.expect("tail");
    let mut joined = trades_of(&head[..3]);
    joined.extend(trades_of(&tail));
    assert_eq!(joined, whole_trades);
    assert_eq!(summary_of(&tail), whole_summary);
}

/// Two markets: A traded before the range (so its first candle has a previous price), B not (a null
/// previous_micros) and closing inside the range (its filled periods stop there); a gap of hours (empty
/// candles), and a range that cuts through its first and last periods (partial candles).
const CANDLE_FIXTURE: &str = "
SELECT ensure_daily_partitions('2026-01-04Z', '2026-01-08Z');
INSERT INTO markets (ticker, event_ticker, series_ticker, status, close_time, updated_at) VALUES
  ('A', 'E', 'S', 3, NULL, now()),
  ('B', 'E', 'S', 3, '2026-01-05T09:00:00Z', now());
INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side) VALUES
  ('2026-01-04T12:00:00Z', 'A', 'early', 100000, 100, 1),
  ('2026-01-05T00:30:00Z', 'A', 'x2', 300000, 100, 1),
  ('2026-01-05T00:30:00Z', 'A', 'x1', 200000, 300, 2),
  ('2026-01-05T01:15:00Z', 'B', 'only', 700000, 50, 1),
  ('2026-01-05T05:59:59.999999Z', 'A', 'z', 250000, 100, 1),
  ('2026-01-05T14:00:00Z', 'A', 'after-gap', 400000, 100, 2),
  ('2026-01-05T22:10:00Z', 'B', 'late', 650000, 100, 2);
";

#[tokio::test]
async fn arrow_candles_equal_rows_with_null_previous_empty_and_partial() {
    let app = TestApp::start().await;
    app.db.client().await.batch_execute(CANDLE_FIXTURE).await.expect("fixture");
    let mut client = ReplayServiceClient::new(app.channel().await);
    let request = |batch_size: i32, layout: Layout| StreamCandlesRequest {
        market_tickers: vec!["A".into(), "B".into()],
        start_time: Some(ts("2026-01-05T00:20:00Z")),
        end_time: Some(ts("2026-01-05T22:30:00Z")),
        interval_seconds: 3600,
        fill_policy: FillPolicy::Previous as i32,
        batch_size,
        layout: layout as i32,
        ..Default::default()
    };
    for batch_size in [1, 3, 0] {
        let rows = candles(&mut client, request(batch_size, Layout::Rows)).await.expect("rows");
        let arrow = candles(&mut client, request(batch_size, Layout::Arrow)).await.expect("arrow");
        let expected = candles_of(&rows);
        assert!(expected.iter().any(|c| c.previous_micros.is_none()), "B's first candle has no previous");
        assert!(expected.iter().any(|c| c.previous_micros == Some(100_000)), "A's first candle: the trade before");
        assert!(expected.iter().any(|c| c.empty) && expected.iter().any(|c| !c.empty), "filled and traded periods");
        assert!(expected.iter().any(|c| c.partial) && expected.iter().any(|c| !c.partial), "cut and whole periods");

        assert_eq!(arrow.len(), rows.len(), "batch size {batch_size}: as many messages");
        let mut call = Call::default();
        for (i, (a, r)) in arrow.iter().zip(&rows).enumerate() {
            assert_eq!(call.candles(a), candles_of(std::slice::from_ref(r)), "batch size {batch_size}, message {i}");
        }
        assert_eq!(resume_tokens(&arrow, |m| &m.resume_token), resume_tokens(&rows, |m| &m.resume_token));
        assert_eq!(summary_of(&arrow), summary_of(&rows));
        assert_eq!(summary_of(&arrow).content_hash, expected_hash(&expected), "over the canonical Candle encoding");

        let ipc = ipc_of_candles(&arrow);
        let (schema, batches) = read_stream(&ipc);
        assert_eq!(*schema, documented_candle_schema());
        let read: Vec<_> = batches.iter().flat_map(common::candles_of_batch).collect();
        assert_eq!(read, expected, "batch size {batch_size}: StreamReader over the whole stream");
        let previous = batches[0].column_by_name("previous_micros").expect("previous_micros");
        assert_eq!(previous.is_null(0), expected[0].previous_micros.is_none(), "null where unset");
    }

    // a resumed Arrow call of candles starts a new IPC stream and ends with the whole request's summary
    let whole = candles(&mut client, request(2, Layout::Arrow)).await.expect("whole");
    let token = whole[3].resume_token.clone();
    let tail = candles(&mut client, StreamCandlesRequest { resume_token: token, ..request(5, Layout::Arrow) }).await;
    let tail = tail.expect("resumed");
    let (schema, _) = read_stream(&ipc_of_candles(&tail));
    assert_eq!(*schema, documented_candle_schema());
    let mut joined = candles_of(&whole[..4]);
    joined.extend(candles_of(&tail));
    assert_eq!(joined, candles_of(&whole));
    assert_eq!(summary_of(&tail), summary_of(&whole));
}

#[tokio::test]
async fn an_empty_range_in_arrow_is_just_the_summary() {
    let app = TestApp::start().await;
    app.db.client().await.batch_execute(CANDLE_FIXTURE).await.expect("fixture");
    let mut client = ReplayServiceClient::new(app.channel().await);
    let markets = vec!["A".to_owned()];
    let (start, end) = ("2026-01-06T00:00:00Z", "2026-01-07T00:00:00Z");
    let got = trades(&mut client, trades_request(&markets, start, end, 0, Layout::Arrow)).await.expect("trades");
    assert_eq!(got.len(), 1, "no data message, so no schema either: {got:?}");
    assert_eq!(summary_of(&got).content_hash, Sha256::digest(b"").to_vec());
    let got = candles(
        &mut client,
        StreamCandlesRequest {
            market_tickers: markets,
            start_time: Some(ts(start)),
            end_time: Some(ts(end)),
            interval_seconds: 60,
            layout: Layout::Arrow as i32,
            ..Default::default()
        },
    )
    .await
    .expect("candles");
    assert_eq!((got.len(), summary_of(&got).item_count), (1, 0));
}

#[tokio::test]
async fn bad_layouts_are_refused_naming_the_field_and_the_allowed_values() {
    let app = TestApp::start().await;
    app.db.client().await.batch_execute(CANDLE_FIXTURE).await.expect("fixture");
    let mut client = ReplayServiceClient::new(app.channel().await);
    let candle_request = |layout: i32| StreamCandlesRequest {
        market_tickers: vec!["A".into()],
        start_time: Some(ts("2026-01-05T00:00:00Z")),
        end_time: Some(ts("2026-01-06T00:00:00Z")),
        interval_seconds: 60,
        layout,
        ..Default::default()
    };
    for layout in [Layout::Columns as i32, 4, 9, -1] {
        let status = candles(&mut client, candle_request(layout)).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{layout}: {status:?}");
        let message = status.message();
        assert!(message.starts_with("layout: "), "{message}");
        assert!(message.contains("LAYOUT_ROWS (1)") && message.contains("LAYOUT_ARROW (3)"), "{message}");
        assert!(!message.contains("LAYOUT_COLUMNS (2),"), "columns is not among the allowed values: {message}");
    }
    let status = candles(&mut client, candle_request(Layout::Columns as i32)).await.expect_err("columns");
    assert!(status.message().contains("StreamTrades"), "says where LAYOUT_COLUMNS belongs: {status:?}");

    let trade_request = |layout: i32| StreamTradesRequest {
        layout,
        ..trades_request(&["A".to_owned()], "2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z", 0, Layout::Rows)
    };
    for layout in [4, 9, -1] {
        let status = trades(&mut client, trade_request(layout)).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{layout}: {status:?}");
        let message = status.message();
        assert!(message.starts_with("layout: ") && message.contains(&format!("unknown value {layout}")), "{message}");
        for allowed in ["LAYOUT_ROWS (1)", "LAYOUT_COLUMNS (2)", "LAYOUT_ARROW (3)"] {
            assert!(message.contains(allowed), "{allowed}: {message}");
        }
    }
    // every layout of StreamTrades is served
    for layout in [0, 1, 2, 3] {
        let got = trades(&mut client, trade_request(layout)).await.expect("served");
        assert_eq!(summary_of(&got).item_count, 4, "layout {layout}");
    }
}
