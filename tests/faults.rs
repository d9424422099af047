//! Faults against a real PostgreSQL and the real server over real gRPC: writes cancelled while they wait for the
//! fact-write lock, a storm of cancelled streams and writes, and PostgreSQL restarting under a long stream.
//! Afterwards the pool must be whole: no backend left `idle in transaction`, no lock held by a connection nobody
//! uses, no dead connection handed to the next request.

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, TestDb, expected_hash, summary_of};
use kalshi_replay::proto::{
    IngestTradesRequest, ListMarketsRequest, Side, StreamTradesRequest, StreamTradesResponse, Trade,
    ingest_service_client::IngestServiceClient, reference_service_client::ReferenceServiceClient,
    replay_service_client::ReplayServiceClient, stream_trades_response::Payload,
};
use prost_types::Timestamp;
use tokio_postgres::Client as PgClient;
use tonic::{Code, transport::Channel};

/// 2025-03-01T00:00:00Z.
const DAY: i64 = 1_740_787_200;

/// The lock fact writers serialize on (migrations/0003, `FACT_WRITE_LOCK` in src/ingest/write.rs).
const FACT_WRITE_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('kalshi_replay.fact_writes'))";

/// The server's pooled connections name themselves so (db::SESSION_OPTIONS); so do this test's own connections
/// (made with the same settings), which rename themselves with [`outsider`].
const SERVER_APP: &str = "kalshi-replay";

/// A connection to the test database that does not count as the server's.
async fn outsider(db: &TestDb) -> PgClient {
    let client = db.client().await;
    client.batch_execute("SET application_name = 'faults-test'").await.expect("rename");
    client
}

fn trade(id: &str, ticker: &str, seconds: i64) -> Trade {
    Trade {
        trade_id: id.into(),
        market_ticker: ticker.into(),
        time: Some(Timestamp { seconds, nanos: 0 }),
        yes_price_micros: 420_000,
        no_price_micros: 0,
        count_centi: 100,
        taker_side: Side::Yes as i32,
        ingest_seq: 0,
    }
}

/// IngestTrades of `trades` in one message, with a deadline when given.
async fn ingest(channel: &Channel, trades: Vec<Trade>, deadline: Option<Duration>) -> Result<i64, tonic::Status> {
    let mut request = tonic::Request::new(tokio_stream::iter([IngestTradesRequest { trades }]));
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    let answer = IngestServiceClient::new(channel.clone()).ingest_trades(request).await?.into_inner();
    Ok(answer.counts.expect("counts").inserted)
}

/// The server's backends in `database` that are `idle in transaction` (none is ever left so: a connection
/// goes back to the pool only outside any transaction).
async fn idle_in_transaction(admin: &PgClient, database: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = $1 AND application_name = $2 AND state LIKE 'idle in transaction%'",
            &[&database, &SERVER_APP],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// The server's backends in `database` that hold or wait for an advisory lock.
async fn server_advisory_locks(admin: &PgClient, database: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE a.datname = $1 AND a.application_name = $2 AND l.locktype = 'advisory'",
            &[&database, &SERVER_APP],
        )
        .await
        .expect("pg_locks")
        .get(0)
}

/// The server's backends in `database`.
async fn server_backends(admin: &PgClient, database: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            &[&database, &SERVER_APP],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Polls `check` until it holds; the time it took, or None after `within`.
async fn settle<F: Future<Output = bool>>(within: Duration, mut check: impl FnMut() -> F) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if check().await {
            return Some(started.elapsed());
        }
        if started.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The measured fault of issue 14: a write whose deadline passes while it waits for the fact-write lock in its
/// commit. Before the fix its connection went back to the pool still waiting for the lock; it then got the lock
/// and sat `idle in transaction` holding it, so every fact writer (psql's included) blocked, and the next write
/// on that connection failed with INTERNAL.
#[tokio::test]
async fn a_write_cancelled_in_its_commit_leaves_no_lock_behind() {
    let app = TestApp::start().await;
    let channel = app.channel().await;
    let admin = app.db.admin().await;
    let database = app.db.name.clone();

    // the partition of DAY exists and the pool has a connection that staged before
    assert_eq!(ingest(&channel, vec![trade("warm", "KX-LOCK", DAY + 1)], None).await.expect("warm-up"), 1);

    let holder = outsider(&app.db).await;
    holder.batch_execute(&format!("BEGIN; {FACT_WRITE_LOCK}")).await.expect("hold the lock");
    let started = Instant::now();
    let refused = ingest(&channel, vec![trade("t1", "KX-LOCK", DAY + 2)], Some(Duration::from_secs(1)))
        .await
        .expect_err("the lock is held past the deadline");
    // the server's answer, or tonic's own timer on this side when that fires first
    assert!(matches!(refused.code(), Code::DeadlineExceeded | Code::Cancelled), "{refused:?}");
    let cancelled = Instant::now();
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());

    // while the holder still holds it: the server neither waits for the lock nor sits in a transaction
    let freed = settle(Duration::from_secs(2), || async {
        server_advisory_locks(&admin, &database).await == 0 && idle_in_transaction(&admin, &database).await == 0
    })
    .await;
    let Some(freed) = freed else {
        panic!(
            "2 s after the cancel the server still waits for or holds the fact-write lock ({} backends) or is idle \
             in a transaction ({} backends)",
            server_advisory_locks(&admin, &database).await,
            idle_in_transaction(&admin, &database).await
        )
    };
    println!("deadline answer to no server backend on the lock: {freed:?} (cancel took {:?})", cancelled - started);

    // release at about 4 s, as in the measurement
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(started.elapsed())).await;
    holder.batch_execute("COMMIT").await.expect("release");

    // a plain writer from elsewhere gets the lock at once
    let other = outsider(&app.db).await;
    let at = chrono::DateTime::from_timestamp(DAY + 3, 0).expect("time");
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&at];
    let insert = other.execute(
        "INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
         VALUES ($1, 'KX-LOCK', 'psql', 420000, 100, 1)",
        &params,
    );
    let inserted = tokio::time::timeout(Duration::from_secs(3), insert).await;
    assert!(matches!(inserted, Ok(Ok(1))), "a plain INSERT did not complete promptly: {inserted:?}");

    // and the server's next writes succeed, on whichever pooled connection
    for i in 0..4 {
        let id = format!("after{i}");
        let stored = ingest(&channel, vec![trade(&id, "KX-LOCK", DAY + 10 + i)], Some(Duration::from_secs(5))).await;
        assert_eq!(stored.expect("a write after the cancelled one"), 1);
    }
    assert_eq!(idle_in_transaction(&admin, &database).await, 0);
    app.stop().await.expect("stop");
}
