//! Admission control and the server's limits against careless clients: streams capped in all and per
//! connection (RESOURCE_EXHAUSTED at once), lookups, health and writes served while streams stall, a stalled
//! stream ended after the idle timeout, writes capped, oversized requests refused, and the drain at shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{TIMEOUT, TestApp, active_copies, final_status};
use kalshi_replay::{
    limits::Limits,
    proto::{
        GetMarketRequest, IngestTradesRequest, ListMarketsRequest, Series, Side, StreamTradesRequest, Trade,
        UpsertSeriesRequest, ingest_service_client::IngestServiceClient,
        reference_service_client::ReferenceServiceClient, replay_service_client::ReplayServiceClient,
    },
    server::ServerOptions,
};
use prost_types::Timestamp;
use tonic::{Code, Streaming, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// A server with `limits` over pools of (data, lookups) connections, holding a generated dataset of 400,000
/// trades: far more than the transport buffers, so a client that reads nothing stalls its stream.
async fn app_with(limits: Limits, pools: (u32, u32)) -> TestApp {
    let options = ServerOptions { partitions_ahead: 2, health_interval: Duration::from_millis(200), limits };
    let app = TestApp::start_with_pools(options, pools, Duration::from_secs(2)).await;
    let spec = kalshi_replay::generate::DatasetSpec {
        seed: 11,
        markets: 50,
        days: 4,
        trades: 400_000,
        start: chrono::NaiveDate::from_ymd_opt(2026, 1, 5).expect("date"),
    };
    kalshi_replay::generate::generate(&mut app.db.client().await, &spec).await.expect("generate");
    app
}

fn every_trade() -> StreamTradesRequest {
    StreamTradesRequest {
        start_time: Some(Timestamp { seconds: 1_767_571_200, nanos: 0 }),
        end_time: Some(Timestamp { seconds: 1_767_571_200 + 4 * 86_400, nanos: 0 }),
        batch_size: 64,
        ..Default::default()
    }
}

/// The series of the generated dataset (every market is in one).
async fn series(app: &TestApp) -> Vec<String> {
    let db = app.db.client().await;
    db.query("SELECT DISTINCT series_ticker FROM markets ORDER BY 1", &[])
        .await
        .expect("series")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Opens a stream of every trade on `channel` and reads nothing of it: the stream stays admitted.
async fn stalled(
    channel: Channel,
    series: &[String],
) -> Result<Streaming<kalshi_replay::proto::StreamTradesResponse>, tonic::Status> {
    let request = StreamTradesRequest { series_tickers: series.to_vec(), ..every_trade() };
    Ok(ReplayServiceClient::new(channel).stream_trades(request).await?.into_inner())
}

#[tokio::test]
async fn stalled_streams_are_capped_while_lookups_health_and_writes_go_on() {
    let limits = Limits { max_streams: 8, max_streams_per_connection: 8, max_writes: 4, ..Limits::default() };
    let app = app_with(limits, (20, 4)).await;
    let series = series(&app).await;
    // eight clients that stop reading, each on its own connection
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(stalled(app.channel().await, &series).await.expect("admitted"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // a ninth is refused at once, naming the limit
    let asked = Instant::now();
    let refused = stalled(app.channel().await, &series).await.expect_err("over the cap");
    let refusal = asked.elapsed();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("--max-streams"), "{}", refused.message());
    assert!(refusal < Duration::from_millis(500), "refused after {refusal:?}");
    // lookups answer promptly, health says SERVING, and a write goes through
    let mut reference = ReferenceServiceClient::new(app.channel().await);
    let market: String =
        app.db.client().await.query_one("SELECT min(ticker) FROM markets", &[]).await.expect("m").get(0);
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        reference.get_market(GetMarketRequest { ticker: market.clone() }).await.expect("get");
        reference.list_markets(ListMarketsRequest { page_size: 100, ..Default::default() }).await.expect("list");
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "a lookup took {slowest:?} while streams stalled");
    let health = HealthClient::new(app.channel().await)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    let series_row = Series { ticker: "KXADMIT".into(), title: "admitted".into(), ..Default::default() };
    IngestServiceClient::new(app.channel().await)
        .upsert_series(UpsertSeriesRequest { series: vec![series_row] })
        .await
        .expect("a write while streams stall");
    eprintln!("refused the 9th stream in {refusal:?}; slowest GetMarket+ListMarkets pair while 8 stall: {slowest:?}");
    drop(held);
}

#[tokio::test]
async fn streams_are_capped_per_connection() {
    let limits = Limits { max_streams: 8, max_streams_per_connection: 2, ..Limits::default() };
    let app = app_with(limits, (20, 2)).await;
    let series = series(&app).await;
    let channel = app.channel().await;
    let _one = stalled(channel.clone(), &series).await.expect("1st");
    let _two = stalled(channel.clone(), &series).await.expect("2nd");
    let refused = stalled(channel.clone(), &series).await.expect_err("3rd on the same connection");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("--max-streams-per-connection"), "{}", refused.message());
    let _other = stalled(app.channel().await, &series).await.expect("another connection is admitted");
}

#[tokio::test]
async fn a_stream_whose_client_reads_nothing_is_ended_and_frees_its_connections() {
    let idle = Duration::from_secs(1);
    let limits = Limits { max_streams: 1, stream_idle_timeout: idle, ..Limits::default() };
    let app = app_with(limits, (4, 2)).await;
    let series = series(&app).await;
    let started = Instant::now();
    let mut stream = stalled(app.channel().await, &series).await.expect("admitted");
    // the server ends it: its COPY stops and a new stream is admitted again
    let admin = app.db.admin().await;
    let database = app.db.name.clone();
    let admitted = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if active_copies(&admin, &database).await == 0
            && let Ok(next) = stalled(app.channel().await, &series).await
        {
            break next;
        }
        assert!(started.elapsed() < idle * 8, "the stalled stream still holds its place");
    };
    let freed = started.elapsed();
    assert!(freed >= idle, "ended before the idle timeout: {freed:?}");
    drop(admitted);
    // the stalled client, reading at last, gets what was buffered and then UNAVAILABLE naming the limit
    let status = final_status(&mut stream).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("--stream-idle-timeout"), "{}", status.message());
    eprintln!("idle stream ended and its place freed {freed:?} after it started (idle timeout {idle:?})");
}

fn trade(i: usize) -> Trade {
    Trade {
        trade_id: format!("admission-{i}"),
        market_ticker: "KXADMIT-1".into(),
        time: Some(Timestamp { seconds: 1_767_600_000 + i as i64, nanos: 0 }),
        yes_price_micros: 500_000,
        count_centi: 100,
        taker_side: Side::Yes as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn writes_are_capped_and_oversized_requests_refused() {
    let limits = Limits { max_writes: 1, max_decoding_message_bytes: 64 << 10, ..Limits::default() };
    let app = TestApp::start_with_pools(
        ServerOptions { partitions_ahead: 2, limits, ..ServerOptions::default() },
        (4, 2),
        TIMEOUT,
    )
    .await;
    // a client stream that sent one message and keeps its side open holds the one write
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(IngestTradesRequest { trades: vec![trade(0)] }).await.expect("send");
    let mut first = IngestServiceClient::new(app.channel().await);
    let holding =
        tokio::spawn(async move { first.ingest_trades(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = IngestServiceClient::new(app.channel().await)
        .ingest_trades(tokio_stream::iter([IngestTradesRequest { trades: vec![trade(1)] }]))
        .await
        .expect_err("a second write at once");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("--max-writes"), "{}", refused.message());
    drop(tx);
    let done = holding.await.expect("task").expect("the first write commits").into_inner();
    assert_eq!(done.counts.expect("counts").inserted, 1);
    // a message above the decoding limit is refused, and the server goes on
    let big = IngestTradesRequest { trades: (0..2_000).map(trade).collect() };
    let refused = IngestServiceClient::new(app.channel().await)
        .ingest_trades(tokio_stream::iter([big]))
        .await
        .expect_err("over the message limit");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    let small = IngestTradesRequest { trades: vec![trade(2)] };
    IngestServiceClient::new(app.channel().await)
        .ingest_trades(tokio_stream::iter([small]))
        .await
        .expect("the server goes on");
}

#[tokio::test]
async fn at_shutdown_streams_in_flight_end_after_the_drain() {
    let drain = Duration::from_millis(500);
    let limits = Limits { shutdown_drain: drain, ..Limits::default() };
    let app = app_with(limits, (4, 2)).await;
    let series = series(&app).await;
    let mut stream = stalled(app.channel().await, &series).await.expect("admitted");
    let started = Instant::now();
    let stopped = tokio::time::timeout(drain + Duration::from_secs(10), app.stop()).await;
    let took = started.elapsed();
    stopped.expect("the server stops after the drain, not when the stalled client reads").expect("stopped");
    assert!(took >= drain, "stopped before the drain's grace: {took:?}");
    let status = final_status(&mut stream).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    eprintln!("server stopped {took:?} after the shutdown signal (drain {drain:?})");
}
