//! The server as a client sees it: health per service, reflection v1 and v1alpha, UNIMPLEMENTED for RPCs whose
//! issue has not landed, and a clean shutdown.

mod common;

use std::time::Duration;

use common::TestApp;
use kalshi_replay::{
    proto::{GetOrderbookRequest, replay_service_client::ReplayServiceClient},
    server::ServerOptions,
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const SERVICES: [&str; 3] =
    ["kalshi.replay.v1.ReferenceService", "kalshi.replay.v1.ReplayService", "kalshi.replay.v1.IngestService"];

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let app = TestApp::start().await;
    let mut health = HealthClient::new(app.channel().await);
    for service in std::iter::once("").chain(SERVICES) {
        let response = health.check(HealthCheckRequest { service: service.to_owned() }).await.expect(service);
        assert_eq!(response.into_inner().status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".to_owned() }).await;
    assert_eq!(unknown.expect_err("unknown service").code(), Code::NotFound);
    app.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn health_follows_the_database_down_and_back_up() {
    let options =
        ServerOptions { partitions_ahead: 0, health_interval: Duration::from_millis(100), ..ServerOptions::default() };
    let app = TestApp::start_with(options, Duration::from_millis(500)).await;
    let mut health = HealthClient::new(app.channel().await);
    let admin = app.db.admin().await;
    let name = &app.db.name;

    // the database goes away: new connections refused, existing ones terminated
    admin.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await.expect("disallow");
    // Until none is left: a connection that was starting while connections were disallowed passed that check
    // before it, and shows in pg_stat_activity only later, so one round of terminations can miss it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let terminated = admin
            .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", &[name])
            .await
            .expect("terminate");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let left: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", &[name])
            .await
            .expect("count")
            .get(0);
        if terminated == 0 && left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "connections to {name} keep appearing");
    }
    wait_for_status(&mut health, ServingStatus::NotServing).await;

    admin.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await.expect("allow");
    wait_for_status(&mut health, ServingStatus::Serving).await;
    app.stop().await.expect("clean shutdown");
}

/// Polls the health of every service until all report `expected` (or 20 s pass).
async fn wait_for_status(health: &mut HealthClient<tonic::transport::Channel>, expected: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut statuses = Vec::new();
        for service in std::iter::once("").chain(SERVICES) {
            let response = health.check(HealthCheckRequest { service: service.to_owned() }).await.expect(service);
            statuses.push(response.into_inner().status());
        }
        if statuses.iter().all(|s| *s == expected) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {statuses:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The services a reflection client of `$version` (v1 or v1alpha) lists.
macro_rules! listed_services {
    ($version:ident) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let app = TestApp::start().await;
        let mut client = ServerReflectionClient::new(app.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses =
            client.server_reflection_info(tokio_stream::iter([request])).await.expect("call").into_inner();
        let response = responses.next().await.expect("one response").expect("ok");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection response: {response:?}");
        };
        list.service.into_iter().map(|s| s.name).collect::<Vec<String>>()
    }};
}

#[tokio::test]
async fn reflection_v1_lists_every_service() {
    assert_listed(&listed_services!(v1));
}

#[tokio::test]
async fn reflection_v1alpha_lists_every_service_for_older_grpcurl() {
    assert_listed(&listed_services!(v1alpha));
}

fn assert_listed(names: &[String]) {
    for expected in SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("grpc.reflection.")), "reflection missing from {names:?}");
}

#[tokio::test]
async fn rpcs_of_later_issues_answer_unimplemented() {
    let app = TestApp::start().await;
    let mut replay = ReplayServiceClient::new(app.channel().await);
    let request = GetOrderbookRequest { market_ticker: "KXBTCD".into(), ..Default::default() };
    let status = replay.get_orderbook(request).await.expect_err("not yet");
    assert_eq!(status.code(), Code::Unimplemented);
}
