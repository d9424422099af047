//! The one stream runner every replay stream goes through: validate the request's common fields, open the
//! snapshot, and run the stream's body on a task that sends into a bounded channel, until it completes, the
//! client goes away or the deadline passes; then stop the database work and give the connection back.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    pin::pin,
    task::Poll,
};

use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, codegen::BoxStream};

use super::{
    hash::ContentHash,
    request::{self, StreamRequest, StreamSpec},
    snapshot::Snapshot,
};
use crate::{error::Error, limits::Limits, proto::StreamSummary, store::db::Pool, token};

/// Messages buffered between a stream's database reader and its gRPC sender. Small: memory per stream is about
/// this many batches, whatever the range.
const CHANNEL_DEPTH: usize = 2;

/// What a stream does, one implementation per stream (trades, candles, ...): its request type, how it checks the
/// fields of its own, and how it reads its snapshot into data messages and the summary.
pub(crate) trait StreamBody: Sized + Send + 'static {
    type Request: StreamRequest;
    type Response: Send + 'static;
    /// The kind of its resume tokens.
    const KIND: token::Kind;

    /// The stream of a request whose common fields are valid (`spec`); validates the request's own fields.
    fn new(request: &Self::Request, spec: StreamSpec) -> Result<Self, Error>;

    /// The common fields it was made with.
    fn spec(&self) -> &StreamSpec;

    /// Reads `snapshot` and sends data messages and the summary into `tx`.
    fn run(
        self,
        snapshot: &Snapshot,
        tx: &mpsc::Sender<Result<Self::Response, Status>>,
    ) -> impl Future<Output = Result<(), Abort>> + Send;
}

/// Starts the stream `B` of `request`: validates it, opens its snapshot (errors up to here are the RPC's
/// status), and spawns the task that runs the body; the response streams what that task sends.
pub(crate) async fn start<B: StreamBody>(
    pool: &Pool,
    limits: &Limits,
    request: Request<B::Request>,
) -> Result<Response<BoxStream<B::Response>>, Status> {
    let deadline = request::deadline(request.metadata());
    let request = request.into_inner();
    let spec = StreamSpec::validate(&request, B::KIND)?;
    let body = B::new(&request, spec)?;
    let snapshot = Snapshot::open(pool, body.spec()).await?;
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    tokio::spawn(run(snapshot, tx, deadline, body));
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// Why a stream's body stopped early.
#[derive(Debug)]
pub(crate) enum Abort {
    Failed(Error),
    /// The receiver is gone: the client cancelled or disconnected.
    ClientGone,
}

impl<E: Into<Error>> From<E> for Abort {
    fn from(e: E) -> Self {
        Abort::Failed(e.into())
    }
}

/// Sends one message of a stream; waits while the channel is full (the client reads slowly).
pub(crate) async fn send<T>(tx: &mpsc::Sender<Result<T, Status>>, message: T) -> Result<(), Abort> {
    tx.send(Ok(message)).await.map_err(|_| Abort::ClientGone)
}

/// How a stream ended.
enum Outcome {
    Complete,
    Failed(Error),
    ClientGone,
    Deadline,
}

/// What a panic carried, for the log: its message when it is text.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (None, Some(text)) => text.clone(),
        (None, None) => "a panic without a message".to_owned(),
    }
}

/// Runs `body` until it completes, the client goes away or the deadline passes; then stops the database work
/// and returns the connection.
///
/// A panic in the body is caught at each poll and ends the stream like an error: the client gets INTERNAL (a
/// stream whose task just died would end with OK and no summary), and the snapshot is closed as after any
/// stream that stopped early, so its connection, still in its transaction and maybe in a COPY, is discarded
/// rather than unwound back into the pool.
async fn run<B: StreamBody>(
    snapshot: Snapshot,
    tx: mpsc::Sender<Result<B::Response, Status>>,
    deadline: Option<Instant>,
    body: B,
) {
    let started = Instant::now();
    let outcome = {
        let mut body = pin!(body.run(&snapshot, &tx));
        // the body is never polled again after it panicked: the select ends on that poll
        let body = std::future::poll_fn(|cx| match catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(cx))) {
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        });
        let expiry = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = body => match result {
                Ok(Ok(())) => Outcome::Complete,
                Ok(Err(Abort::Failed(e))) => Outcome::Failed(e),
                Ok(Err(Abort::ClientGone)) => Outcome::ClientGone,
                Err(panic) => Outcome::Failed(Error::Panic(panic_message(panic.as_ref()))),
            },
            () = tx.closed() => Outcome::ClientGone,
            () = expiry => Outcome::Deadline,
        }
    };
    match &outcome {
        Outcome::Complete => {}
        Outcome::Failed(e) => tracing::warn!(error = %e, "stream failed"),
        Outcome::ClientGone => tracing::debug!(elapsed = ?started.elapsed(), "client went away; cancelling"),
        Outcome::Deadline => tracing::debug!(elapsed = ?started.elapsed(), "deadline passed; cancelling"),
    }
    snapshot.close(matches!(outcome, Outcome::Complete)).await;
    match outcome {
        Outcome::Failed(e) => {
            let _ = tx.send(Err(e.into())).await;
        }
        Outcome::Deadline => {
            let _ = tx.send(Err(Error::DeadlineExceeded.into())).await;
        }
        Outcome::Complete | Outcome::ClientGone => {}
    }
}

/// The summary message's content.
pub(crate) fn summary(count: i64, hash: &ContentHash, watermark: i64) -> StreamSummary {
    StreamSummary { item_count: count, content_hash: hash.finish().to_vec(), watermark }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_postgres::Config;

    use super::*;
    use crate::{
        proto::{StreamTradesRequest, StreamTradesResponse},
        store::{db, migrate, pg::PrivatePostgres},
    };

    /// A stream body that sends one message, leaves its snapshot's connection mid-transaction, and panics: a bug
    /// anywhere in a real body.
    #[derive(Debug)]
    struct Panicking(StreamSpec);

    impl StreamBody for Panicking {
        type Request = StreamTradesRequest;
        type Response = StreamTradesResponse;
        const KIND: token::Kind = token::Kind::Trades;

        fn new(_: &StreamTradesRequest, spec: StreamSpec) -> Result<Self, Error> {
            Ok(Self(spec))
        }

        fn spec(&self) -> &StreamSpec {
            &self.0
        }

        async fn run(
            self,
            snapshot: &Snapshot,
            tx: &mpsc::Sender<Result<StreamTradesResponse, Status>>,
        ) -> Result<(), Abort> {
            send(tx, StreamTradesResponse::default()).await?;
            snapshot.conn.query_one("SELECT 1", &[]).await?;
            panic!("a bug in a stream body");
        }
    }

    /// The real server's database (DATABASE_URL, or this process's private cluster) with a migrated database of
    /// this test's own, dropped at the end.
    async fn database(name: &str) -> (Config, Config) {
        let mut admin = match std::env::var("DATABASE_URL") {
            Ok(url) => db::parse_url(&url).expect("DATABASE_URL"),
            Err(_) => PrivatePostgres::shared_throwaway().await.expect("private postgres").config("postgres"),
        };
        admin.dbname("postgres");
        let client = db::connect(&admin, Duration::from_secs(30)).await.expect("connect");
        client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.expect("drop");
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create");
        let mut config = admin.clone();
        config.dbname(name);
        let mut client = db::connect(&config, Duration::from_secs(30)).await.expect("connect test database");
        migrate::run(&mut client).await.expect("migrate");
        client
            .batch_execute(
                "INSERT INTO markets (ticker, event_ticker, series_ticker, status, updated_at)
                 VALUES ('KXA', 'KXA', 'KXA', 2, now())",
            )
            .await
            .expect("a market");
        (admin, config)
    }

    /// A panic in a stream's body reaches the client as INTERNAL, without the panic's text, after the messages
    /// sent before it (not as a stream that ends with OK and no summary); and the snapshot's connection, left in
    /// its transaction, is discarded, never handed back to the pool.
    #[tokio::test]
    async fn a_panicking_body_ends_its_stream_with_internal_and_discards_its_connection() {
        let name = format!("kalshi_replay_runner_panic_{}", std::process::id());
        let (admin, config) = database(&name).await;
        let pool = db::Database::external(config.clone()).pool(2, Duration::from_secs(10)).await.expect("pool");
        let request = StreamTradesRequest {
            market_tickers: vec!["KXA".into()],
            start_time: Some(prost_types::Timestamp { seconds: 1_767_571_200, nanos: 0 }),
            end_time: Some(prost_types::Timestamp { seconds: 1_767_657_600, nanos: 0 }),
            ..Default::default()
        };
        let spec = StreamSpec::validate(&request, token::Kind::Trades).expect("valid");
        let body = Panicking::new(&request, spec).expect("body");
        let snapshot = Snapshot::open(&pool, body.spec()).await.expect("snapshot");
        let (tx, mut rx) = mpsc::channel(CHANNEL_DEPTH);
        // spawned as `start` does: a panic that escaped would end this task, not the test
        let task = tokio::spawn(run(snapshot, tx, None, body));

        assert!(matches!(rx.recv().await, Some(Ok(_))), "the message sent before the panic");
        let status = match rx.recv().await {
            Some(Err(status)) => status,
            other => panic!("the stream must end with an error status, not {other:?}"),
        };
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        assert_eq!(status.message(), "internal error", "no internals reach the client");
        assert!(rx.recv().await.is_none(), "nothing after the status");
        assert!(task.await.is_ok(), "the runner caught the panic");

        // the connection left mid-transaction is gone, not idle in transaction in the pool
        let observer = db::connect(&admin, Duration::from_secs(10)).await.expect("connect");
        let started = std::time::Instant::now();
        loop {
            let dirty: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'",
                    &[&name],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if dirty == 0 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{dirty} connections idle in transaction");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(pool.state().connections, 0, "the snapshot's connection left the pool");
        let conn = pool.get().await.expect("a connection");
        conn.query_one("SELECT 1", &[]).await.expect("the pool serves the next request");
        drop(conn);
        drop(pool);
        observer.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)")).await.expect("drop");
    }
}
