//! Faults against a real PostgreSQL and the real server over real gRPC: writes cancelled while they wait for the
//! fact-write lock, a storm of cancelled streams and writes, and PostgreSQL restarting under a long stream.
//! Afterwards the pool must be whole: no backend left `idle in transaction`, no lock held by a connection nobody
//! uses, no dead connection handed to the next request.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{TIMEOUT, TestApp, TestDb, all_markets, expected_hash, summary_of, trades_of};
use kalshi_replay::{
    error::Error,
    generate::{DatasetSpec, generate},
    proto::{
        IngestTradesRequest, Layout, ListMarketsRequest, Side, StreamCandlesRequest, StreamTradesRequest, Trade,
        ingest_service_client::IngestServiceClient, reference_service_client::ReferenceServiceClient,
        replay_service_client::ReplayServiceClient,
    },
    server::{self, Pools, ServerOptions},
    store::{db::Database, migrate, pg::PrivatePostgres},
};
use prost_types::Timestamp;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
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

/// The real server on 127.0.0.1:0 over `database` with pools of `pool_size` connections each (streams and writes;
/// lookups and health).
#[derive(Debug)]
struct Served {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    served: JoinHandle<Result<(), Error>>,
}

impl Served {
    async fn start(database: &Database, pool_size: u32) -> Self {
        let pools = Pools::open(database, pool_size, pool_size, Duration::from_secs(10)).await.expect("pools");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (shutdown, rx) = oneshot::channel();
        // health checks only at start: a periodic one would take the pool's dead connections out before the
        // requests under test meet them
        let options =
            ServerOptions { partitions_ahead: 1, health_interval: Duration::from_secs(3600), ..Default::default() };
        let served = tokio::spawn(server::run(listener, pools, options, async {
            let _ = rx.await;
        }));
        Self { addr, shutdown, served }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).expect("uri").connect().await.expect("connect")
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        self.served.await.expect("server task").expect("server");
    }
}

/// The generated dataset of these tests: `trades` trades of 12 markets over 4 days from 2026-01-05.
fn dataset(trades: u64) -> DatasetSpec {
    DatasetSpec {
        seed: 14,
        markets: 12,
        days: 4,
        trades,
        start: chrono::NaiveDate::from_ymd_opt(2026, 1, 5).expect("date"),
    }
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

/// 2026-01-05T00:00:00Z, the first day of [`dataset`], and the end of its range.
const DATA_START: i64 = 1_767_571_200;
const DATA_END: i64 = DATA_START + 4 * 86_400;

fn all_trades(markets: &[String]) -> StreamTradesRequest {
    StreamTradesRequest {
        market_tickers: markets.to_vec(),
        start_time: Some(ts(DATA_START)),
        end_time: Some(ts(DATA_END)),
        ..Default::default()
    }
}

/// Pool size of the storm's server.
const STORM_POOL: u32 = 6;

/// 200 streams and 50 writes, each cancelled at a random point (a deadline from 5 ms to 1 s, or a client that
/// drops its stream after a few messages), while another session holds the fact-write lock now and then, so
/// that some writes are cancelled while their commit waits for it. Afterwards nothing is left behind: no backend
/// idle in transaction or on the lock, no more backends than the pool, a pool's worth of lookups at once, and a
/// whole replay at full speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_cancelled_streams_and_writes_leaves_the_pool_whole() {
    let db = TestDb::migrated().await;
    generate(&mut db.client().await, &dataset(40_000)).await.expect("generate");
    let markets = all_markets(&db.client().await).await;
    let served = Served::start(&db.database(), STORM_POOL).await;
    let channel = served.channel().await;
    let admin = db.admin().await;
    let stored_before: i64 = db.client().await.query_one("SELECT count(*) FROM trades", &[]).await.expect("n").get(0);

    let storm_started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..250u32 {
        let deadline = Duration::from_millis(rng.random_range(5..1000));
        let start = rng.random_range(0..4) * 86_400 + DATA_START;
        let read = rng.random_range(0..6usize);
        let (channel, markets) = (channel.clone(), markets.clone());
        // new trades of a known market, so that the replay after the storm covers them
        calls.spawn(async move {
            // stagger the calls over the first half second
            tokio::time::sleep(Duration::from_millis(u64::from(i) * 2)).await;
            let outcome = if i >= 200 {
                let trades =
                    (0..50).map(|k| trade(&format!("storm-{i}-{k}"), &markets[0], start + i64::from(k))).collect();
                ingest(&channel, trades, Some(deadline)).await.map(drop)
            } else if i % 2 == 0 {
                let layout = [Layout::Rows, Layout::Columns, Layout::Arrow][(i as usize / 2) % 3] as i32;
                let mut request = tonic::Request::new(StreamTradesRequest { layout, ..all_trades(&markets) });
                request.set_timeout(deadline);
                cut_short(ReplayServiceClient::new(channel).stream_trades(request).await, read).await
            } else {
                let candles = StreamCandlesRequest {
                    market_tickers: markets,
                    start_time: Some(ts(start)),
                    end_time: Some(ts(DATA_END)),
                    interval_seconds: 60,
                    layout: [Layout::Rows, Layout::Arrow][(i as usize / 2) % 2] as i32,
                    ..Default::default()
                };
                let mut request = tonic::Request::new(candles);
                request.set_timeout(deadline);
                cut_short(ReplayServiceClient::new(channel).stream_candles(request).await, read).await
            };
            outcome.err().map(|status| status.code())
        });
    }
    // the lock holder: writes' commits queue behind it, and some of their deadlines pass there
    let holder = outsider(&db).await;
    let holding = async {
        let mut rng = ChaCha8Rng::seed_from_u64(41);
        while storm_started.elapsed() < Duration::from_millis(1500) {
            holder.batch_execute(&format!("BEGIN; {FACT_WRITE_LOCK}")).await.expect("lock");
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
            holder.batch_execute("COMMIT").await.expect("unlock");
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..150))).await;
        }
    };
    // a write left holding the lock would block the holder, and every write after it, for good
    let storm = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(calls.join_all(), holding) });
    let Ok((results, ())) = storm.await else {
        panic!(
            "the storm did not end within 20 s: {} server backends hold or wait for the fact-write lock, {} are \
             idle in transaction",
            server_advisory_locks(&admin, &db.name).await,
            idle_in_transaction(&admin, &db.name).await
        );
    };
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for code in results {
        *codes.entry(code.map_or("OK".to_owned(), |c| format!("{c:?}"))).or_default() += 1;
    }
    println!("storm of 250 calls took {:?}: {codes:?}", storm_started.elapsed());
    for bad in ["Internal", "Unknown", "DataLoss"] {
        assert!(!codes.contains_key(bad), "a cancelled call must not break another: {codes:?}");
    }

    // what is left behind, once the discarded connections' backends exited
    let database = db.name.clone();
    let settled = settle(Duration::from_secs(3), || async {
        idle_in_transaction(&admin, &database).await == 0
            && server_advisory_locks(&admin, &database).await == 0
            && server_backends(&admin, &database).await <= 2 * i64::from(STORM_POOL)
    })
    .await;
    assert!(
        settled.is_some(),
        "3 s after the storm: {} backends idle in transaction, {} on the lock, {} server backends (2 pools of {STORM_POOL})",
        idle_in_transaction(&admin, &database).await,
        server_advisory_locks(&admin, &database).await,
        server_backends(&admin, &database).await,
    );

    // a pool's worth of lookups at once, each within a second
    let mut lookups = tokio::task::JoinSet::new();
    for _ in 0..STORM_POOL {
        let channel = channel.clone();
        lookups.spawn(async move {
            let mut request = tonic::Request::new(ListMarketsRequest { page_size: 5, ..Default::default() });
            request.set_timeout(Duration::from_secs(1));
            ReferenceServiceClient::new(channel).list_markets(request).await.map(|r| r.into_inner().markets.len())
        });
    }
    for answered in lookups.join_all().await {
        assert_eq!(answered.expect("a lookup after the storm"), 5);
    }

    // and a whole replay at full speed, with every trade stored (the storm's committed writes included)
    let stored: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM trades WHERE ts >= $1 AND ts < $2",
            &[
                &chrono::DateTime::from_timestamp(DATA_START, 0).expect("start"),
                &chrono::DateTime::from_timestamp(DATA_END, 0).expect("end"),
            ],
        )
        .await
        .expect("count")
        .get(0);
    assert!(stored >= stored_before);
    let started = Instant::now();
    let stream = ReplayServiceClient::new(channel.clone()).stream_trades(all_trades(&markets)).await;
    let messages = common::collect(stream.expect("replay").into_inner()).await.expect("whole replay");
    println!("a whole replay of {stored} trades after the storm: {:?}", started.elapsed());
    let summary = summary_of(&messages);
    assert_eq!(summary.item_count, stored);
    assert_eq!(trades_of(&messages).len() as i64, stored);
    served.stop().await;
}

/// Reads `read` messages of a stream's answer, then drops it (a client that went away).
async fn cut_short<T>(
    answer: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
    read: usize,
) -> Result<(), tonic::Status> {
    let mut stream = answer?.into_inner();
    for _ in 0..read {
        if stream.message().await?.is_none() {
            break;
        }
    }
    Ok(())
}

/// PostgreSQL restarts while a long stream is read slowly: the client gets UNAVAILABLE (the pool's connections
/// all died with it), the next requests succeed at once on fresh connections, and resuming with the last token
/// received yields exactly the rest: the concatenation hashes to the uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_postgresql_mid_stream_is_unavailable_then_resumable() {
    let mut pg = PrivatePostgres::start_throwaway().await.expect("private postgresql");
    let admin = kalshi_replay::store::db::connect(&pg.config("postgres"), TIMEOUT).await.expect("admin");
    admin.batch_execute("CREATE DATABASE faults").await.expect("create");
    let database = Database::external(pg.config("faults"));
    {
        let mut client = database.connect(TIMEOUT).await.expect("connect");
        migrate::run(&mut client).await.expect("migrate");
        generate(&mut client, &dataset(150_000)).await.expect("generate");
    }
    let markets = {
        let client = database.connect(TIMEOUT).await.expect("connect");
        all_markets(&client).await
    };
    let served = Served::start(&database, 4).await;
    let channel = served.channel().await;
    let mut replay = ReplayServiceClient::new(channel.clone());
    let request = StreamTradesRequest { batch_size: 1000, ..all_trades(&markets) };

    let whole = common::collect(replay.stream_trades(request.clone()).await.expect("whole").into_inner())
        .await
        .expect("the uninterrupted run");
    let whole_summary = summary_of(&whole);
    assert_eq!(whole_summary.item_count, 150_000);

    // a slow reader: a few messages, then the restart, then whatever the server still sends
    let mut stream = replay.stream_trades(request.clone()).await.expect("stream").into_inner();
    let mut head = Vec::new();
    for _ in 0..3 {
        head.push(stream.message().await.expect("message").expect("data"));
    }
    // two lookups at once, so that the pool holds idle connections besides the stream's when PostgreSQL goes
    let mut reference = ReferenceServiceClient::new(channel.clone());
    let lookup = || async {
        let answer = ReferenceServiceClient::new(channel.clone())
            .list_markets(ListMarketsRequest { page_size: 3, ..Default::default() })
            .await;
        answer.map(|a| a.into_inner().markets.len())
    };
    let (a, b) = tokio::join!(lookup(), lookup());
    assert_eq!((a.expect("lookup"), b.expect("lookup")), (3, 3));
    drop(admin);
    let restarting = Instant::now();
    pg.restart().await.expect("restart");
    println!("postgresql restarted in {:?}", restarting.elapsed());
    let cut = loop {
        match stream.message().await {
            Ok(Some(message)) => {
                assert!(!message.resume_token.is_empty(), "the summary of a stream cut by the restart: {message:?}");
                head.push(message);
            }
            Ok(None) => panic!("the stream ended without an error after {} messages", head.len()),
            Err(status) => break status,
        }
    };
    assert_eq!(cut.code(), Code::Unavailable, "{cut:?}");
    assert!(head.len() < whole.len() - 1, "the stream was cut ({} of {} messages)", head.len(), whole.len());

    // the next requests succeed at once: no dead pooled connection is handed out
    for i in 0..8 {
        let started = Instant::now();
        let answer = reference.list_markets(ListMarketsRequest { page_size: 3, ..Default::default() }).await;
        let answer = answer.unwrap_or_else(|e| panic!("lookup {i} after the restart: {e:?}"));
        assert_eq!(answer.into_inner().markets.len(), 3);
        assert!(started.elapsed() < Duration::from_secs(2), "lookup {i} took {:?}", started.elapsed());
    }

    // resuming with the last token received gives exactly the rest
    let token = head.last().expect("a data message").resume_token.clone();
    let resumed = StreamTradesRequest { resume_token: token, ..request.clone() };
    let tail = common::collect(replay.stream_trades(resumed).await.expect("resumed").into_inner())
        .await
        .expect("the resumed run");
    assert_eq!(summary_of(&tail), whole_summary, "the resumed summary covers the whole request");
    let mut joined = trades_of(&head);
    joined.extend(trades_of(&tail));
    assert_eq!(joined.len(), trades_of(&whole).len());
    assert_eq!(expected_hash(&joined), whole_summary.content_hash, "the concatenation hashes to the uninterrupted run");
    served.stop().await;
    pg.stop().await.expect("stop postgresql");
}
