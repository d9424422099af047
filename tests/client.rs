//! The Rust client crate (clients/rust) against the real server over real gRPC and a real PostgreSQL: its plain
//! generated code reads the server's hand-encoded batches, lookups walk every page, errors carry the server's code
//! and text, a replay resumes across a killed and restarted server with exactly the same trades, Arrow batches
//! hold the rows, and the strategy example's P&L equals one computed here.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{TestApp, all_markets, expected_hash, serve_on, summary_of, trades_of};
use futures_util::TryStreamExt;
use kalshi_replay::proto::{
    Layout, StreamTradesRequest as ServerTradesRequest, Trade as ServerTrade,
    replay_service_client::ReplayServiceClient as ServerReplayClient,
};
use kalshi_replay_client::{
    Client, RetryEvent, RetryPolicy,
    proto::{
        self as plain, GetCoverageRequest, ListEventsRequest, ListMarketsRequest, ListSeriesRequest,
        ListSettlementsRequest, StreamCandlesRequest, StreamTradesRequest,
    },
    timestamp,
};
use prost::Message;
use tonic::Code;

const START: &str = "2026-01-05T00:00:00Z";
const END: &str = "2026-01-09T00:00:00Z";

fn trades_request(markets: &[String], batch_size: i32) -> StreamTradesRequest {
    StreamTradesRequest {
        market_tickers: markets.to_vec(),
        start_time: Some(timestamp(START).expect("start")),
        end_time: Some(timestamp(END).expect("end")),
        batch_size,
        ..Default::default()
    }
}

/// The same request in the server's own types (through its encoding: the two are one wire format).
fn server_request(request: &StreamTradesRequest) -> ServerTradesRequest {
    ServerTradesRequest::decode(request.encode_to_vec().as_slice()).expect("same wire format")
}

async fn client_of(app: &TestApp) -> Client {
    Client::connect(app.addr.to_string()).await.expect("connect")
}

/// Every trade of `request` as the server's types decode them, and the summary.
async fn reference_trades(app: &TestApp, request: &StreamTradesRequest) -> (Vec<ServerTrade>, plain::StreamSummary) {
    let mut server = ServerReplayClient::new(app.channel().await);
    let messages = common::collect(server.stream_trades(server_request(request)).await.expect("stream").into_inner())
        .await
        .expect("messages");
    let summary = summary_of(&messages);
    let summary = plain::StreamSummary {
        item_count: summary.item_count,
        content_hash: summary.content_hash,
        watermark: summary.watermark,
    };
    (trades_of(&messages), summary)
}

fn encodings<M: Message>(items: &[M]) -> Vec<Vec<u8>> {
    items.iter().map(Message::encode_to_vec).collect()
}

#[tokio::test]
async fn a_plain_generated_client_reads_the_hand_encoded_batches_as_the_server_types_do() {
    let app = TestApp::generated(21, 6, 4_000).await;
    let markets = all_markets(&app.db.client().await).await;
    let client = client_of(&app).await;
    let mut server = ServerReplayClient::new(app.channel().await);
    let mut plain_replay = client.replay();

    for layout in [Layout::Rows, Layout::Columns] {
        let mut request = trades_request(&markets, 333);
        request.layout = layout as i32;
        let ours = common::collect(server.stream_trades(server_request(&request)).await.expect("stream").into_inner())
            .await
            .expect("server types");
        let theirs = common::collect(plain_replay.stream_trades(request).await.expect("stream").into_inner())
            .await
            .expect("plain types");
        assert!(ours.len() > 5, "{layout:?}: several batches, got {}", ours.len());
        assert_eq!(ours.len(), theirs.len(), "{layout:?}");
        for (i, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
            // each side decoded the same bytes into its own types; encoded again they must be the same bytes
            assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec(), "{layout:?} message {i}");
            assert_eq!(ours.resume_token, theirs.resume_token);
        }
        // and the plain fields hold the values (not an empty message that encodes like one)
        match (&ours[0].payload, &theirs[0].payload) {
            (
                Some(kalshi_replay::proto::stream_trades_response::Payload::Trades(a)),
                Some(plain::stream_trades_response::Payload::Trades(b)),
            ) => {
                assert_eq!(b.trades.len(), 333);
                assert_eq!(encodings(&a.trades), encodings(&b.trades));
                assert!(b.trades.iter().all(|t| t.yes_price_micros > 0 && t.count_centi > 0 && t.ingest_seq > 0));
            }
            (
                Some(kalshi_replay::proto::stream_trades_response::Payload::Columns(a)),
                Some(plain::stream_trades_response::Payload::Columns(b)),
            ) => {
                assert_eq!(b.time_micros.len(), 333);
                assert_eq!(
                    (&a.new_market_tickers, &a.market_index, &a.time_micros, &a.yes_price_micros),
                    (&b.new_market_tickers, &b.market_index, &b.time_micros, &b.yes_price_micros)
                );
                assert_eq!(
                    (&a.count_centi, &a.taker_side, &a.trade_id, &a.ingest_seq),
                    (&b.count_centi, &b.taker_side, &b.trade_id, &b.ingest_seq)
                );
            }
            other => panic!("{layout:?}: unexpected first payloads {other:?}"),
        }
    }

    // the client's own hash over what it delivered equals the server's summary and the hash computed here
    let request = trades_request(&markets, 333);
    let (reference, summary) = reference_trades(&app, &request).await;
    let mut trades = client.trades(request);
    let delivered: Vec<plain::Trade> = (&mut trades).try_collect().await.expect("checked stream");
    assert_eq!(encodings(&delivered), encodings(&reference));
    assert_eq!(trades.summary(), Some(&summary));
    assert_eq!(summary.content_hash, expected_hash(&delivered));
    assert_eq!(summary.item_count, delivered.len() as i64);
}

#[tokio::test]
async fn lookups_walk_every_page_and_candles_are_checked_too() {
    let app = TestApp::generated(22, 40, 3_000).await;
    let db = app.db.client().await;
    let client = client_of(&app).await;
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) as usize }
    };

    let markets: Vec<plain::Market> =
        client.markets(ListMarketsRequest { page_size: 5, ..Default::default() }).try_collect().await.expect("markets");
    let tickers: Vec<String> = markets.iter().map(|m| m.ticker.clone()).collect();
    assert!(tickers.len() > 10, "several pages of 5: {}", tickers.len());
    assert_eq!(tickers, all_markets(&db).await, "every market once, in ticker order");

    let series: Vec<plain::Series> =
        client.series(ListSeriesRequest { page_size: 1, ..Default::default() }).try_collect().await.expect("series");
    assert!(series.len() > 1, "several pages of 1");
    assert_eq!(series.len(), count("SELECT count(*) FROM series").await);

    let events: Vec<plain::Event> =
        client.events(ListEventsRequest { page_size: 3, ..Default::default() }).try_collect().await.expect("events");
    assert!(events.len() > 3);
    assert_eq!(events.len(), count("SELECT count(*) FROM events").await);

    let settlements: Vec<plain::Settlement> = client
        .settlements(ListSettlementsRequest { page_size: 2, ..Default::default() })
        .try_collect()
        .await
        .expect("settlements");
    assert!(settlements.len() > 2);
    assert_eq!(settlements.len(), count("SELECT count(*) FROM settlements").await);
    let first = &settlements[0];
    assert_eq!(&client.settlement(&first.market_ticker).await.expect("get settlement"), first);
    assert_eq!(&client.market(&markets[3].ticker).await.expect("get market"), &markets[3]);

    let coverage = client
        .coverage(GetCoverageRequest { market_tickers: tickers[..2].to_vec(), ..Default::default() })
        .await
        .expect("coverage");
    for (entry, ticker) in coverage.iter().zip(&tickers) {
        let stored: i64 =
            db.query_one("SELECT count(*) FROM trades WHERE ticker = $1", &[ticker]).await.expect("count").get(0);
        assert_eq!((&entry.market_ticker, entry.trade_count), (ticker, stored));
    }

    // candles: the client's hash over the candles it delivered matched the summary, which counts them all
    let mut candles = client.candles(StreamCandlesRequest {
        market_tickers: tickers.clone(),
        start_time: Some(timestamp(START).expect("start")),
        end_time: Some(timestamp(END).expect("end")),
        interval_seconds: 3600,
        batch_size: 50,
        ..Default::default()
    });
    let delivered: Vec<plain::Candle> = (&mut candles).try_collect().await.expect("checked candles");
    let summary = candles.summary().expect("summary after the end");
    assert!(delivered.len() > 100, "several batches of candles: {}", delivered.len());
    assert_eq!(summary.item_count, delivered.len() as i64);
    assert_eq!(summary.content_hash, expected_hash(&delivered));
    let traded: i64 = delivered.iter().map(|c| c.trade_count).sum();
    assert_eq!(traded as usize, count("SELECT count(*) FROM trades").await);
}

#[tokio::test]
async fn errors_carry_the_code_and_the_server_text_naming_the_ticker() {
    let app = TestApp::generated(23, 3, 500).await;
    let client = client_of(&app).await;

    let err = client.market("KXNOPE-26JAN05-T1").await.expect_err("unknown market");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains("KXNOPE-26JAN05-T1"), "{}", err.message());

    let err = client.settlement("KXNOPE-26JAN05-T2").await.expect_err("unknown settlement");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains("KXNOPE-26JAN05-T2"), "{}", err.message());

    // a stream refused at once: the error, not a retry, and no summary
    let retries = Arc::new(Mutex::new(0));
    let counted = retries.clone();
    let client = client.on_retry(move |_| *counted.lock().expect("lock") += 1);
    let mut stream = client.trades(trades_request(&["KXNOPE-26JAN05-T3".to_owned()], 0));
    let err = stream.try_next().await.expect_err("unknown ticker");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains("KXNOPE-26JAN05-T3"), "{}", err.message());
    assert_eq!(stream.summary(), None);
    assert_eq!(*retries.lock().expect("lock"), 0, "NOT_FOUND is not retried");

    let mut bad = trades_request(&all_markets(&app.db.client().await).await, 0);
    bad.batch_size = 100_000;
    let err = client.trades(bad).try_next().await.expect_err("batch_size too large");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("batch_size"), "{}", err.message());

    let err = Client::connect("127.0.0.1:1").await.expect_err("nothing listens on port 1");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

#[tokio::test]
async fn a_replay_resumes_across_a_killed_and_restarted_server_with_exactly_the_same_trades() {
    let app = TestApp::generated(24, 8, 30_000).await;
    let markets = all_markets(&app.db.client().await).await;
    let request = trades_request(&markets, 200);
    let (reference, summary) = reference_trades(&app, &request).await;
    assert_eq!(reference.len(), 30_000);

    let (mut server, addr) = serve_on(&app.db.config, 0).await;
    let port: u16 = addr.rsplit(':').next().expect("port").parse().expect("port number");
    let events: Arc<Mutex<Vec<RetryEvent>>> = Arc::default();
    let seen = events.clone();
    let client = Client::connect(&addr)
        .await
        .expect("connect")
        .with_retry_policy(RetryPolicy {
            max_retries: 30,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
        })
        .on_retry(move |event| seen.lock().expect("lock").push(event.clone()));
    let mut trades = client.trades(request);

    let mut delivered = Vec::new();
    while delivered.len() < 1_000 {
        delivered.push(trades.try_next().await.expect("trade").expect("more trades"));
    }
    // SIGKILL: no drain, no summary; the client sees the connection break
    server.kill().await.expect("kill");
    let restarted = {
        let config = app.db.config.clone();
        tokio::spawn(async move {
            // while the client reads what it had buffered and then retries against a closed port
            tokio::time::sleep(Duration::from_millis(300)).await;
            serve_on(&config, port).await
        })
    };
    while let Some(trade) = trades.try_next().await.expect("resumed, checked stream") {
        delivered.push(trade);
    }
    let (_second, second_addr) = restarted.await.expect("restart");
    assert_eq!(second_addr, addr, "the restart listens where the first did");

    let events = events.lock().expect("lock").clone();
    assert!(!events.is_empty(), "the kill cut the stream");
    assert!(events.iter().all(|e| e.rpc == "StreamTrades" && e.resumed), "{events:?}");
    assert!(events.iter().all(|e| e.delivered >= 1_000 && e.delivered < 30_000), "{events:?}");
    println!("retries: {:?}", events.iter().map(|e| (e.attempt, e.code, e.message.clone())).collect::<Vec<_>>());
    assert_eq!(delivered.len(), reference.len());
    assert!(encodings(&delivered) == encodings(&reference), "exactly the same trades, in the same order");
    assert_eq!(trades.summary(), Some(&summary), "the summary of the whole request, checked by the client");
}

#[tokio::test]
async fn arrow_batches_hold_the_rows_and_are_counted_against_the_summary() {
    use arrow_array::{
        Array, DictionaryArray, Int8Array, Int64Array, StringArray, TimestampMicrosecondArray, types::Int32Type,
    };

    let app = TestApp::generated(25, 6, 5_000).await;
    let markets = all_markets(&app.db.client().await).await;
    let client = client_of(&app).await;
    let request = trades_request(&markets, 700);
    let (reference, summary) = reference_trades(&app, &request).await;

    let mut stream = client.trades_arrow(request);
    let batches: Vec<arrow_array::RecordBatch> = (&mut stream).try_collect().await.expect("arrow batches");
    assert_eq!(stream.summary(), Some(&summary));
    assert_eq!(batches.len(), 5_000usize.div_ceil(700));
    let mut rows = Vec::new();
    for batch in &batches {
        let column = |name: &str| batch.column_by_name(name).unwrap_or_else(|| panic!("column {name}")).clone();
        let time = column("time");
        let time = time.as_any().downcast_ref::<TimestampMicrosecondArray>().expect("timestamp[us]");
        let ticker = column("market_ticker");
        let ticker = ticker.as_any().downcast_ref::<DictionaryArray<Int32Type>>().expect("dictionary<int32>");
        let ticker_values = ticker.values().as_any().downcast_ref::<StringArray>().expect("utf8").clone();
        let trade_id = column("trade_id");
        let trade_id = trade_id.as_any().downcast_ref::<StringArray>().expect("utf8");
        let int64 = |name: &str| column(name).as_any().downcast_ref::<Int64Array>().expect("int64").clone();
        let (yes, no, count, seq) =
            (int64("yes_price_micros"), int64("no_price_micros"), int64("count_centi"), int64("ingest_seq"));
        let side = column("taker_side");
        let side = side.as_any().downcast_ref::<Int8Array>().expect("int8");
        for i in 0..batch.num_rows() {
            let micros = time.value(i);
            rows.push(ServerTrade {
                trade_id: trade_id.value(i).to_owned(),
                market_ticker: ticker_values.value(ticker.keys().value(i) as usize).to_owned(),
                time: Some(prost_types::Timestamp {
                    seconds: micros.div_euclid(1_000_000),
                    nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
                }),
                yes_price_micros: yes.value(i),
                no_price_micros: no.value(i),
                count_centi: count.value(i),
                taker_side: i32::from(side.value(i)),
                ingest_seq: seq.value(i),
            });
        }
    }
    assert!(rows == reference, "the Arrow rows are the trades of the rows layout");
    assert_eq!(expected_hash(&rows), summary.content_hash);

    // candles: the same count as the rows layout
    let candles_request = StreamCandlesRequest {
        market_tickers: markets.clone(),
        start_time: Some(timestamp(START).expect("start")),
        end_time: Some(timestamp(END).expect("end")),
        interval_seconds: 3600,
        batch_size: 40,
        ..Default::default()
    };
    let mut rows_stream = client.candles(candles_request.clone());
    let candle_rows: Vec<plain::Candle> = (&mut rows_stream).try_collect().await.expect("candles");
    let mut arrow_stream = client.candles_arrow(candles_request);
    let candle_batches: Vec<arrow_array::RecordBatch> = (&mut arrow_stream).try_collect().await.expect("arrow candles");
    assert_eq!(candle_batches.iter().map(|b| b.num_rows()).sum::<usize>(), candle_rows.len());
    assert_eq!(arrow_stream.summary(), rows_stream.summary());
    let close: Vec<i64> = candle_batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name("close_micros").expect("close_micros");
            c.as_any().downcast_ref::<Int64Array>().expect("int64").values().to_vec()
        })
        .collect();
    assert_eq!(close, candle_rows.iter().map(|c| c.close_micros).collect::<Vec<_>>());
}

/// The strategy of examples/strategy.rs, computed here from a plain StreamTrades (the server's types) and
/// GetSettlement: (entries, settled, marked, trades, pnl_micros).
async fn expected_strategy(app: &TestApp, series: &[String], level: i64, qty: i64) -> (u64, u64, u64, u64, i64) {
    use kalshi_replay::proto::{
        GetSettlementRequest, SettlementResult, reference_service_client::ReferenceServiceClient,
    };
    let request = ServerTradesRequest {
        series_tickers: series.to_vec(),
        start_time: Some(prost_types::Timestamp { seconds: 1_767_571_200, nanos: 0 }), // 2026-01-05
        end_time: Some(prost_types::Timestamp { seconds: 1_767_916_800, nanos: 0 }),   // 2026-01-09
        ..Default::default()
    };
    let mut server = ServerReplayClient::new(app.channel().await);
    let messages =
        common::collect(server.stream_trades(request).await.expect("stream").into_inner()).await.expect("messages");
    let trades = trades_of(&messages);
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    let mut entry: BTreeMap<&str, i64> = BTreeMap::new();
    for t in &trades {
        if !entry.contains_key(t.market_ticker.as_str())
            && last.get(t.market_ticker.as_str()).is_some_and(|&p| p < level && level <= t.yes_price_micros)
        {
            entry.insert(&t.market_ticker, t.yes_price_micros);
        }
        last.insert(&t.market_ticker, t.yes_price_micros);
    }
    let mut reference = ReferenceServiceClient::new(app.channel().await);
    let (mut settled, mut marked, mut pnl) = (0, 0, 0);
    for (market, price) in &entry {
        let answer = reference.get_settlement(GetSettlementRequest { market_ticker: (*market).to_owned() }).await;
        let payout = match answer {
            Ok(answer) => {
                settled += 1;
                let s = answer.into_inner().settlement.expect("settlement");
                match s.result() {
                    SettlementResult::Yes => 1_000_000,
                    SettlementResult::No => 0,
                    SettlementResult::Scalar => s.settlement_value_micros,
                    SettlementResult::Void => *price,
                    SettlementResult::Unspecified => panic!("no result"),
                }
            }
            Err(status) if status.code() == Code::NotFound => {
                marked += 1;
                last[market]
            }
            Err(status) => panic!("{status:?}"),
        };
        pnl += (payout - price) * qty / 100;
    }
    (entry.len() as u64, settled, marked, trades.len() as u64, pnl)
}

/// examples/strategy, as `cargo test` builds it (examples are built into target/<profile>/examples/, beside the
/// deps/ folder of this test binary).
fn strategy_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let binary = profile_dir.join("examples").join(format!("strategy{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: `cargo test` builds the examples; with a test filter, run `cargo build --example strategy` first",
        binary.display()
    );
    binary
}

#[tokio::test]
async fn the_strategy_example_prints_the_pnl_computed_from_the_replay_and_the_settlements() {
    let app = TestApp::generated(26, 120, 40_000).await;
    let db = app.db.client().await;
    let series: Vec<String> = db
        .query("SELECT DISTINCT series_ticker FROM markets ORDER BY 1", &[])
        .await
        .expect("series")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (level, qty) = (500_000, 300);
    let expected = expected_strategy(&app, &series, level, qty).await;

    let mut command = tokio::process::Command::new(strategy_binary());
    command.args(["--target", &app.addr.to_string(), "--start", START, "--end", END]);
    command.args(["--level-micros", &level.to_string(), "--qty-centi", &qty.to_string()]);
    for s in &series {
        command.args(["--series", s]);
    }
    let output = command.output().await.expect("run the example");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert!(output.status.success(), "{:?}\n{stdout}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    let (entries, settled, marked, trades, pnl) = expected;
    println!("{stdout}");
    assert!(entries > 0, "the data has crossings of the level");
    assert!(settled > 0 && marked > 0, "both settled and marked entries: {expected:?}");
    assert_eq!(lines[lines.len() - 2], format!("entries={entries} settled={settled} marked={marked} trades={trades}"));
    assert_eq!(lines[lines.len() - 1], format!("pnl_micros={pnl}"));

    let refused = tokio::process::Command::new(strategy_binary())
        .args(["--target", &app.addr.to_string(), "--start", START, "--end", END, "--qty-centi", "150"])
        .output()
        .await
        .expect("run the example");
    assert!(!refused.status.success(), "150 centi-contracts is not a whole number of contracts");
}
