//! StreamTrades over real gRPC against a real PostgreSQL: order, determinism and as_of, resume, the plan over the
//! daily partitions, bounded memory, cancellation, empty ranges, layouts and every error path.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{
    TestApp, active_copies, all_markets, expected_hash, rss_kib, serve_binary, summary_of, trades_of,
    wait_until_no_copy,
};
use kalshi_replay::proto::{
    Layout, StreamTradesRequest, StreamTradesResponse, Trade, replay_service_client::ReplayServiceClient,
    stream_trades_response::Payload,
};
use prost_types::Timestamp;
use sha2::{Digest, Sha256};
use tokio_postgres::Client as PgClient;
use tonic::{Code, Streaming, transport::Channel};

type Client = ReplayServiceClient<Channel>;

fn ts(s: &str) -> Timestamp {
    let t = DateTime::parse_from_rfc3339(s).expect("time");
    Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn request(markets: &[&str], start: &str, end: &str) -> StreamTradesRequest {
    StreamTradesRequest {
        market_tickers: markets.iter().map(|m| (*m).to_owned()).collect(),
        start_time: Some(ts(start)),
        end_time: Some(ts(end)),
        ..Default::default()
    }
}

/// Every message of a stream.
async fn messages(
    client: &mut Client,
    request: StreamTradesRequest,
) -> Result<Vec<StreamTradesResponse>, tonic::Status> {
    common::collect(client.stream_trades(request).await?.into_inner()).await
}

fn key(t: &Trade) -> (i64, i32, Vec<u8>, Vec<u8>) {
    let time = t.time.expect("time");
    (time.seconds, time.nanos, t.market_ticker.as_bytes().to_vec(), t.trade_id.as_bytes().to_vec())
}

/// The trades of `markets` in [start, end) as the database holds them, in the contract's order.
async fn from_database(db: &PgClient, markets: &[&str], start: &str, end: &str) -> Vec<Trade> {
    let rows = db
        .query(
            "SELECT trade_id, ticker, ts, yes_price_micros, count_centi, taker_side, ingest_seq FROM trades
              WHERE ticker = ANY($1) AND ts >= $2 AND ts < $3
              ORDER BY ts, ticker COLLATE \"C\", trade_id COLLATE \"C\"",
            &[&markets, &start.parse::<DateTime<Utc>>().expect("start"), &end.parse::<DateTime<Utc>>().expect("end")],
        )
        .await
        .expect("trades");
    rows.iter()
        .map(|r| {
            let time: DateTime<Utc> = r.get(2);
            Trade {
                trade_id: r.get(0),
                market_ticker: r.get(1),
                time: Some(Timestamp { seconds: time.timestamp(), nanos: time.timestamp_subsec_nanos() as i32 }),
                yes_price_micros: r.get(3),
                no_price_micros: 1_000_000 - r.get::<_, i64>(3),
                count_centi: r.get(4),
                taker_side: i32::from(r.get::<_, i16>(5)),
                ingest_seq: r.get(6),
            }
        })
        .collect()
}

/// Three markets of two events and series, with trades on both sides of a UTC midnight and many sharing a
/// microsecond, ids whose byte order differs from a locale's, and ingest order unlike time order.
const FIXTURE: &str = "
SELECT ensure_daily_partitions('2026-01-04Z', '2026-01-08Z');
INSERT INTO series (ticker, updated_at) VALUES ('KXA', now()), ('KXB', now());
INSERT INTO events (event_ticker, series_ticker, updated_at) VALUES ('KXA-1', 'KXA', now()), ('KXB-1', 'KXB', now());
INSERT INTO markets (ticker, event_ticker, series_ticker, status, updated_at) VALUES
  ('KXA-1-X', 'KXA-1', 'KXA', 3, now()), ('KXA-1-Y', 'KXA-1', 'KXA', 3, now()), ('KXB-1-Z', 'KXB-1', 'KXB', 3, now()),
  ('KXB-1-EMPTY', 'KXB-1', 'KXB', 3, now());
INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side) VALUES
  ('2026-01-06T00:00:00Z', 'KXA-1-X', 'b', 500000, 100, 1),
  ('2026-01-05T23:59:59.999999Z', 'KXB-1-Z', 'a', 10000, 250, 2),
  ('2026-01-05T23:59:59.999999Z', 'KXA-1-Y', 'a', 990000, 1, 1),
  ('2026-01-05T23:59:59.999999Z', 'KXA-1-X', 'b', 420000, 300, 2),
  ('2026-01-05T23:59:59.999999Z', 'KXA-1-X', 'B', 430000, 300, 2),
  ('2026-01-05T23:59:59.999999Z', 'KXA-1-X', 'a', 410000, 300, 1),
  ('2026-01-05T12:00:00Z', 'KXA-1-X', 'z', 400000, 5, 1),
  ('2026-01-06T00:00:00.000001Z', 'KXB-1-Z', 'c', 20000, 100, 1),
  ('2026-01-06T00:00:00Z', 'KXA-1-Y', 'a', 980000, 100, 2),
  ('2026-01-07T08:00:00Z', 'KXA-1-Y', 'q', 970000, 100, 1);
";

async fn fixture() -> (TestApp, Client) {
    let app = TestApp::start().await;
    app.db.client().await.batch_execute(FIXTURE).await.expect("fixture");
    let client = ReplayServiceClient::new(app.channel().await);
    (app, client)
}

const ALL: [&str; 3] = ["KXA-1-X", "KXA-1-Y", "KXB-1-Z"];

#[tokio::test]
async fn trades_come_in_total_order_across_markets_days_and_equal_microseconds() {
    let (app, mut client) = fixture().await;
    let db = app.db.client().await;
    let (start, end) = ("2026-01-05T00:00:00Z", "2026-01-08T00:00:00Z");
    let expected = from_database(&db, &ALL, start, end).await;
    assert_eq!(expected.len(), 10);

    for batch_size in [1, 2, 3, 0] {
        let mut req = request(&ALL, start, end);
        req.batch_size = batch_size;
        let got = messages(&mut client, req).await.expect("stream");
        let trades = trades_of(&got);
        assert_eq!(trades, expected, "batch size {batch_size}");
        assert!(trades.windows(2).all(|w| key(&w[0]) < key(&w[1])), "strictly increasing");
        let summary = summary_of(&got);
        assert_eq!(summary.item_count, 10);
        assert_eq!(summary.content_hash, expected_hash(&expected), "the hash is SHA-256 of the prefixed encodings");
        let data: Vec<_> = got[..got.len() - 1].iter().collect();
        assert!(data.iter().all(|m| !m.resume_token.is_empty()), "every data message has a token");
        assert!(got.last().expect("summary").resume_token.is_empty());
        if batch_size > 0 {
            assert_eq!(data.len(), 10usize.div_ceil(batch_size as usize));
        }
    }

    // the same markets by event and by series; one empty market changes nothing
    let by_event = StreamTradesRequest { event_tickers: vec!["KXA-1".into()], ..request(&["KXB-1-Z"], start, end) };
    assert_eq!(trades_of(&messages(&mut client, by_event).await.expect("by event")), expected);
    let by_series =
        StreamTradesRequest { series_tickers: vec!["KXA".into(), "KXB".into()], ..request(&[], start, end) };
    assert_eq!(trades_of(&messages(&mut client, by_series).await.expect("by series")), expected);

    // a single market, and a range that cuts through the fixture
    let one = trades_of(&messages(&mut client, request(&["KXA-1-X"], start, end)).await.expect("one"));
    assert_eq!(one, from_database(&db, &["KXA-1-X"], start, end).await);
    let (cut_start, cut_end) = ("2026-01-05T23:59:59.999999Z", "2026-01-06T00:00:00.000001Z");
    let cut = trades_of(&messages(&mut client, request(&ALL, cut_start, cut_end)).await.expect("cut"));
    assert_eq!(cut, from_database(&db, &ALL, cut_start, cut_end).await);
    assert_eq!(cut.len(), 7, "start inclusive, end exclusive");
}

#[tokio::test]
async fn the_columns_layout_carries_the_same_trades_tokens_and_hash() {
    let (_app, mut client) = fixture().await;
    let (start, end) = ("2026-01-05T00:00:00Z", "2026-01-08T00:00:00Z");
    let rows = messages(&mut client, StreamTradesRequest { batch_size: 3, ..request(&ALL, start, end) }).await;
    let rows = rows.expect("rows");
    let columns = StreamTradesRequest { batch_size: 3, layout: Layout::Columns as i32, ..request(&ALL, start, end) };
    let columns = messages(&mut client, columns).await.expect("columns");
    assert!(matches!(columns[0].payload, Some(Payload::Columns(_))));
    assert_eq!(trades_of(&columns), trades_of(&rows));
    assert_eq!(summary_of(&columns), summary_of(&rows));
    let tokens = |m: &[StreamTradesResponse]| m.iter().map(|m| m.resume_token.clone()).collect::<Vec<_>>();
    assert_eq!(tokens(&columns), tokens(&rows));
    // the dictionary: each ticker sent once, indexes in first-seen order
    let new: Vec<String> = columns
        .iter()
        .filter_map(|m| match &m.payload {
            Some(Payload::Columns(c)) => Some(c.new_market_tickers.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(new, ["KXA-1-X", "KXA-1-Y", "KXB-1-Z"]);
}

#[tokio::test]
async fn empty_ranges_and_ranges_without_partitions_give_a_zero_summary() {
    let (_app, mut client) = fixture().await;
    for (start, end) in [
        ("2026-01-05T00:00:00Z", "2026-01-05T11:00:00Z"),
        ("2031-03-01T00:00:00Z", "2031-04-01T00:00:00Z"),
        ("1999-12-31T00:00:00Z", "2000-01-02T00:00:00Z"),
    ] {
        let got = messages(&mut client, request(&ALL, start, end)).await.expect("stream");
        assert_eq!(got.len(), 1, "{start}: just the summary");
        let summary = summary_of(&got);
        assert_eq!((summary.item_count, summary.content_hash), (0, Sha256::digest(b"").to_vec()));
        assert!(summary.watermark > 0);
    }
}

#[tokio::test]
async fn every_bad_request_is_refused_with_its_field_or_names() {
    let (_app, mut client) = fixture().await;
    let (start, end) = ("2026-01-05T00:00:00Z", "2026-01-08T00:00:00Z");
    let invalid = [
        (request(&[], start, end), "market_tickers"),
        (request(&["KXA-1-X", ""], start, end), "market_tickers[1]"),
        (StreamTradesRequest { start_time: None, ..request(&ALL, start, end) }, "start_time"),
        (StreamTradesRequest { end_time: None, ..request(&ALL, start, end) }, "end_time"),
        (request(&ALL, end, start), "end_time"),
        (request(&ALL, start, start), "end_time"),
        (StreamTradesRequest { batch_size: 16_385, ..request(&ALL, start, end) }, "batch_size"),
        (StreamTradesRequest { batch_size: -1, ..request(&ALL, start, end) }, "batch_size"),
        (StreamTradesRequest { layout: 9, ..request(&ALL, start, end) }, "layout"),
        (StreamTradesRequest { as_of_watermark: Some(-1), ..request(&ALL, start, end) }, "as_of_watermark"),
        (StreamTradesRequest { as_of_watermark: Some(1 << 40), ..request(&ALL, start, end) }, "as_of_watermark"),
        (StreamTradesRequest { resume_token: "garbage".into(), ..request(&ALL, start, end) }, "resume_token"),
        (
            StreamTradesRequest { start_time: Some(Timestamp { seconds: 1, nanos: 1 }), ..request(&ALL, start, end) },
            "start_time",
        ),
    ];
    for (req, field) in invalid {
        let status = messages(&mut client, req).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let not_found = [
        (request(&["KXA-1-X", "NOPE-2", "NOPE-1"], start, end), "unknown market ticker: NOPE-1, NOPE-2"),
        (StreamTradesRequest { event_tickers: vec!["NOEVENT".into()], ..request(&[], start, end) }, "NOEVENT"),
        (StreamTradesRequest { series_tickers: vec!["NOSERIES".into()], ..request(&[], start, end) }, "NOSERIES"),
    ];
    for (req, names) in not_found {
        let status = messages(&mut client, req).await.expect_err(names);
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains(names), "{names}: {}", status.message());
    }
}

/// A generated dataset of several days and markets.
async fn generated(trades: u64) -> (TestApp, Client) {
    let app = TestApp::generated(11, 12, trades).await;
    let client = ReplayServiceClient::new(app.channel().await);
    (app, client)
}

fn request_of(markets: &[String], start: &str, end: &str) -> StreamTradesRequest {
    StreamTradesRequest {
        market_tickers: markets.to_vec(),
        start_time: Some(ts(start)),
        end_time: Some(ts(end)),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_same_request_gives_the_same_messages_and_as_of_pins_the_data_version() {
    let (app, mut client) = generated(20_000).await;
    let db = app.db.client().await;
    let markets = all_markets(&db).await;
    let (start, end) = ("2026-01-05T00:00:00Z", "2026-01-09T00:00:00Z");
    let req = StreamTradesRequest { batch_size: 700, ..request_of(&markets, start, end) };
    let first = messages(&mut client, req.clone()).await.expect("first");
    let second = messages(&mut client, req.clone()).await.expect("second");
    assert_eq!(first, second, "byte for byte the same messages");
    let summary = summary_of(&first);
    assert_eq!(summary.item_count, 20_000);
    assert_eq!(summary.content_hash, expected_hash(&trades_of(&first)));

    // late trades inside the range, with the same timestamps as stored ones, and a new market
    db.batch_execute(&format!(
        "INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
         SELECT ts, ticker, trade_id || '-late', 500000, 100, 1 FROM trades ORDER BY ts LIMIT 50;
         INSERT INTO markets (ticker, event_ticker, series_ticker, status, updated_at)
         VALUES ('LATE-MARKET', 'LATE', 'LATE', 3, now());
         INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
         VALUES ('2026-01-06T00:00:00Z', '{}', 'late-2', 500000, 100, 1);",
        markets[0]
    ))
    .await
    .expect("late trades");
    let pinned = StreamTradesRequest { as_of_watermark: Some(summary.watermark), ..req.clone() };
    let again = messages(&mut client, pinned).await.expect("pinned");
    assert_eq!(trades_of(&again), trades_of(&first));
    assert_eq!(summary_of(&again), summary, "as_of repeats the first run exactly");
    let latest = summary_of(&messages(&mut client, req).await.expect("latest"));
    assert_eq!(latest.item_count, 20_000 + 51);
    assert!(latest.watermark > summary.watermark);
}

#[tokio::test]
async fn a_cut_stream_resumes_with_exactly_the_remaining_trades() {
    let (app, mut client) = generated(12_000).await;
    let markets = all_markets(&app.db.client().await).await;
    let (start, end) = ("2026-01-05T06:00:00Z", "2026-01-08T18:00:00Z");
    let req = StreamTradesRequest { batch_size: 500, ..request_of(&markets[1..], start, end) };
    let whole = messages(&mut client, req.clone()).await.expect("whole");
    let whole_trades = trades_of(&whole);
    let whole_summary = summary_of(&whole);
    let days: std::collections::BTreeSet<i64> =
        whole_trades.iter().map(|t| t.time.expect("time").seconds / 86_400).collect();
    assert!(days.len() >= 4 && whole.len() > 10, "spans days and batches");

    let mut seed = 0x9e37_79b9_u64;
    for round in 0..6 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let cut = 1 + (seed >> 33) as usize % (whole.len() - 2);
        // read `cut` data messages, then drop the stream
        let mut stream: Streaming<StreamTradesResponse> =
            client.stream_trades(req.clone()).await.expect("s").into_inner();
        let mut head = Vec::new();
        for _ in 0..cut {
            head.push(stream.message().await.expect("message").expect("data"));
        }
        drop(stream);
        // resume, with another batch size and layout: both may change
        let token = head.last().expect("cut").resume_token.clone();
        let layout = [Layout::Columns, Layout::Rows, Layout::Arrow][round % 3] as i32;
        let resumed = StreamTradesRequest { resume_token: token.clone(), batch_size: 333, layout, ..req.clone() };
        let tail = messages(&mut client, resumed).await.expect("resumed");
        let mut joined = trades_of(&head);
        joined.extend(trades_of(&tail));
        assert_eq!(joined, whole_trades, "round {round}: cut after {cut} messages");
        assert_eq!(summary_of(&tail), whole_summary, "the resumed summary covers the whole request");

        // the token is bound to the request, and any altered byte is refused
        let other = StreamTradesRequest { resume_token: token.clone(), ..request_of(&markets, start, end) };
        let status = messages(&mut client, other).await.expect_err("other filters");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("resume_token"), "{}", status.message());
        let mut bytes = token.into_bytes();
        let i = (seed as usize) % bytes.len();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let altered = StreamTradesRequest { resume_token: String::from_utf8(bytes).expect("ascii"), ..req.clone() };
        let status = messages(&mut client, altered).await.expect_err("altered");
        assert_eq!(status.code(), Code::InvalidArgument, "round {round}: {status:?}");
    }
}

/// The plan of the server's query: only the day partitions inside the range, read in order, and no sort.
#[tokio::test]
async fn the_plan_reads_only_the_range_partitions_in_order_without_sorting() {
    let (app, _client) = generated(5_000).await;
    let db = app.db.client().await;
    let markets = all_markets(&db).await;
    let start = "2026-01-06T00:00:00Z".parse::<DateTime<Utc>>().expect("start");
    let end = "2026-01-08T12:00:00Z".parse::<DateTime<Utc>>().expect("end");
    let cases: [(Option<Vec<String>>, &str); 3] =
        [(None, "all markets"), (Some(markets[..3].to_vec()), "some markets"), (Some(vec![markets[0].clone()]), "one")];
    for (selection, what) in cases {
        let sql = kalshi_replay::replay::trades::select_sql(start, end, selection.as_deref(), None, None);
        db.batch_execute(&format!("BEGIN; {}", kalshi_replay::replay::snapshot::PLAN_SETTINGS))
            .await
            .expect("settings");
        let bound = kalshi_replay::replay::sql::Bound { markets: selection.clone(), after: None };
        bound.apply(&db).await.expect("bind");
        let plan = db.query(&format!("EXPLAIN {sql}"), &[]).await.expect("explain");
        db.batch_execute("ROLLBACK").await.expect("rollback");
        let plan: Vec<String> = plan.iter().map(|row| row.get(0)).collect();
        let plan = plan.join("\n");
        assert!(!plan.contains("Sort"), "{what}: sorts\n{plan}");
        assert!(!plan.contains("Merge Append"), "{what}: merges\n{plan}");
        // the bound markets: one walks the index by market; several are a set hashed once, not a list per row
        match selection.as_deref().map(<[String]>::len) {
            Some(1) => assert!(plan.contains("ticker_ts_trade_id_idx"), "{what}\n{plan}"),
            Some(_) => assert!(plan.contains("hashed SubPlan"), "{what}\n{plan}"),
            None => assert!(!plan.contains("current_setting"), "{what}\n{plan}"),
        }
        let partitions: Vec<&str> =
            plan.split(" on ").skip(1).map(|rest| rest.split_whitespace().next().expect("name")).collect();
        assert_eq!(partitions, ["trades_p20260106", "trades_p20260107", "trades_p20260108"], "{what}\n{plan}");
    }
}

/// Sessions of the server that are running a COPY.
#[tokio::test]
async fn cancelled_streams_stop_their_query_and_leave_the_pool_healthy() {
    let (app, mut client) = generated(150_000).await;
    let admin = app.db.admin().await;
    let markets = all_markets(&app.db.client().await).await;
    let req =
        StreamTradesRequest { batch_size: 64, ..request_of(&markets, "2026-01-05T00:00:00Z", "2026-01-09T00:00:00Z") };

    let started = Instant::now();
    let full = summary_of(&messages(&mut client, req.clone()).await.expect("full"));
    let full_time = started.elapsed();
    assert_eq!(full.item_count, 150_000);

    // the client cancels after one message, in any layout: the COPY is gone within a second
    for layout in [Layout::Rows, Layout::Columns, Layout::Arrow] {
        let req = StreamTradesRequest { layout: layout as i32, ..req.clone() };
        let mut stream = client.stream_trades(req).await.expect("stream").into_inner();
        stream.message().await.expect("message").expect("data");
        let copies = active_copies(&admin, &app.db.name).await;
        // the stream's own connection and the helper that reads the next day ahead
        assert!(
            (1..=2).contains(&copies),
            "{layout:?}: the read is paused by backpressure, not finished: {copies} COPYs"
        );
        drop(stream);
        let gone = wait_until_no_copy(&admin, &app.db.name, Duration::from_secs(1)).await;
        eprintln!("{layout:?}: query gone {gone:?} after the cancel");
    }

    // a deadline that passes mid-stream
    let mut timed = tonic::Request::new(req.clone());
    timed.set_timeout(Duration::from_millis(300));
    let mut stream = client.stream_trades(timed).await.expect("stream").into_inner();
    stream.message().await.expect("message").expect("data");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = end.expect_err("the deadline ends the stream");
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    wait_until_no_copy(&admin, &app.db.name, Duration::from_secs(1)).await;

    // a hundred more cancellations, then the pool serves at full speed
    for _ in 0..100 {
        let mut stream = client.stream_trades(req.clone()).await.expect("stream").into_inner();
        stream.message().await.expect("message").expect("data");
    }
    wait_until_no_copy(&admin, &app.db.name, Duration::from_secs(2)).await;
    let started = Instant::now();
    let after = summary_of(&messages(&mut client, req).await.expect("after"));
    let after_time = started.elapsed();
    assert_eq!(after, full);
    assert!(after_time < full_time * 2 + Duration::from_millis(500), "{after_time:?} vs {full_time:?} before");
    let sessions: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'kalshi-replay'",
            &[&app.db.name],
        )
        .await
        .expect("sessions")
        .get(0);
    assert!(sessions <= 4, "the pool holds at most its 4 connections, got {sessions}");
}

#[tokio::test]
async fn fact_writers_take_ingest_seq_in_commit_order_and_the_watermark_follows_commits() {
    let (app, mut client) = fixture().await;
    let first = app.db.client().await;
    let second = app.db.client().await;
    let (start, end) = ("2026-01-05T00:00:00Z", "2026-01-08T00:00:00Z");
    let before = summary_of(&messages(&mut client, request(&ALL, start, end)).await.expect("before"));

    first.batch_execute("BEGIN").await.expect("begin");
    first
        .batch_execute(
            "INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
                        VALUES ('2026-01-06T01:00:00Z', 'KXA-1-X', 'first', 500000, 100, 1)",
        )
        .await
        .expect("first insert");
    // a second writer waits for the first to commit instead of drawing a sequence value that could become
    // visible before the first's lower one
    let waiting = tokio::spawn(async move {
        second
            .batch_execute(
                "INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
                            VALUES ('2026-01-06T01:00:00Z', 'KXA-1-X', 'second', 500000, 100, 1)",
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the second writer must wait for the first");
    let during = summary_of(&messages(&mut client, request(&ALL, start, end)).await.expect("during"));
    assert_eq!((during.item_count, during.watermark), (before.item_count, before.watermark), "nothing uncommitted");
    first.batch_execute("COMMIT").await.expect("commit");
    waiting.await.expect("task").expect("second insert");

    let seqs: Vec<(String, i64)> = first
        .query("SELECT trade_id, ingest_seq FROM trades WHERE trade_id IN ('first', 'second') ORDER BY ingest_seq", &[])
        .await
        .expect("seqs")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(seqs.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["first", "second"]);
    let after = summary_of(&messages(&mut client, request(&ALL, start, end)).await.expect("after"));
    assert_eq!(after.item_count, before.item_count + 2);
    assert_eq!(after.watermark, seqs[1].1, "the watermark is the highest committed ingest_seq");
    // pinned to the first run's version, the new trades stay out
    let pinned = StreamTradesRequest { as_of_watermark: Some(before.watermark), ..request(&ALL, start, end) };
    assert_eq!(summary_of(&messages(&mut client, pinned).await.expect("pinned")), before);
}

/// The real binary serves a stream far larger than its memory bound to a client that reads slowly: its resident
/// memory stays flat while the database read waits.
#[tokio::test]
async fn a_slow_reader_keeps_the_server_memory_flat_and_pauses_the_database() {
    let app = TestApp::start().await;
    let db = app.db.client().await;
    const TRADES: i64 = 600_000;
    db.batch_execute(&format!(
        "SELECT ensure_daily_partitions('2026-01-05Z', '2026-01-07Z');
         INSERT INTO markets (ticker, event_ticker, series_ticker, status, updated_at)
         SELECT 'KXM-' || m, 'KXM', 'KXM', 3, now() FROM generate_series(1, 20) AS m;
         INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
         SELECT '2026-01-05Z'::timestamptz + i * interval '250 milliseconds', 'KXM-' || (1 + i % 20),
                md5(i::text), 1 + i % 999999, 100, 1 + i % 2
           FROM generate_series(1, {TRADES}) AS i;"
    ))
    .await
    .expect("trades");
    let (_server, pid, channel) = serve_binary(&app.db.config).await;
    let mut client = ReplayServiceClient::new(channel);
    for layout in [Layout::Rows, Layout::Arrow] {
        let req = StreamTradesRequest {
            series_tickers: vec!["KXM".into()],
            start_time: Some(ts("2026-01-05T00:00:00Z")),
            end_time: Some(ts("2026-01-07T00:00:00Z")),
            layout: layout as i32,
            ..Default::default()
        };
        let mut stream = client.stream_trades(req).await.expect("stream").into_inner();
        let mut call = common::Call::default();
        let mut count = call.trades(&stream.message().await.expect("first").expect("data")).len() as i64;
        // slowly, a message every 20 ms: the server's memory ramps up to its buffers (HTTP/2 windows, the
        // channel, the allocator's pages) within the first second, then stays flat while the database read waits
        let mut read_slowly = async |messages: usize| {
            let mut peak = 0;
            for _ in 0..messages {
                tokio::time::sleep(Duration::from_millis(20)).await;
                count += call.trades(&stream.message().await.expect("message").expect("data")).len() as i64;
                peak = peak.max(rss_kib(pid));
            }
            peak
        };
        let ramp = read_slowly(50).await;
        let flat = read_slowly(75).await;
        eprintln!(
            "{layout:?}: server RSS peak {} MiB in the first second, {} MiB in the next 1.5 s",
            ramp / 1024,
            flat / 1024
        );
        assert!(count < TRADES / 4, "{layout:?}: the client has read only part of the stream");
        let copies = active_copies(&app.db.admin().await, &app.db.name).await;
        assert!((1..=2).contains(&copies), "{layout:?}: the database read waits, unfinished: {copies} COPYs");
        assert!(
            flat <= ramp + 4 * 1024,
            "{layout:?}: RSS grew from {ramp} KiB to {flat} KiB while the client read slowly"
        );
        // the whole stream decoded would take far more (about 200 bytes per trade as Trade messages)
        assert!(flat < 100 * 1024, "{layout:?}: RSS {flat} KiB");
        while let Some(message) = stream.message().await.expect("rest") {
            count += call.trades(&message).len() as i64;
        }
        assert_eq!(count, TRADES, "{layout:?}");
        assert!(rss_kib(pid) / 1024 < 100, "{layout:?}: under 100 MB after the whole stream");
    }
}
