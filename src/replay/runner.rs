//! The one stream runner every replay stream goes through: validate the request's common fields, open the
//! snapshot, and run the stream's body on a task that sends into a bounded channel, until it completes, the
//! client goes away or the deadline passes; then stop the database work and give the connection back.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    pin::pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, codegen::BoxStream};

use super::{
    hash::ContentHash,
    request::{self, StreamRequest, StreamSpec},
    snapshot::Snapshot,
};
use crate::{admission::Admission, error::Error, limits::Limits, proto::StreamSummary, store::db::Pool, token};

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

/// Starts the stream `B` of `request`: validates it, admits it under the caps (RESOURCE_EXHAUSTED at once
/// beyond them), opens its snapshot (errors up to here are the RPC's status), and spawns the task that runs the
/// body; the response streams what that task sends.
pub(crate) async fn start<B: StreamBody>(
    pool: &Pool,
    admission: &Admission,
    limits: &Limits,
    tokens: &token::TokenKey,
    request: Request<B::Request>,
) -> Result<Response<BoxStream<B::Response>>, Status> {
    let deadline = request::deadline(request.metadata());
    let peer = request.remote_addr();
    let request = request.into_inner();
    let spec = StreamSpec::validate(&request, B::KIND, tokens)?;
    let body = B::new(&request, spec)?;
    let permit = admission.stream(peer)?;
    let snapshot = Snapshot::open(pool, body.spec(), limits.max_selection_markets).await?;
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let outgoing = Outgoing::new(rx);
    let watch = Watch {
        deadline,
        idle_timeout: limits.stream_idle_timeout,
        taken: outgoing.taken.clone(),
        admission: admission.clone(),
    };
    let end = outgoing.end.clone();
    tokio::spawn(async move {
        let _permit = permit;
        run(snapshot, tx, watch, body, end).await;
    });
    Ok(Response::new(Box::pin(outgoing)))
}

/// The response stream: the messages of the channel, as tonic takes them; it notes when the client last took
/// one (to tell a stalled client), and after the last one it ends with the status the runner left in `end`
/// before it dropped the sender (none: the stream is complete, or its client is gone). The runner never waits
/// on a full channel to report how a stream ended.
struct Outgoing<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    /// When tonic last took a message, as milliseconds since `epoch`.
    taken: Arc<Taken>,
    end: Arc<Mutex<Option<Status>>>,
    ended: bool,
}

/// When a stream's client last took a message.
#[derive(Debug)]
struct Taken {
    epoch: Instant,
    millis: AtomicU64,
}

impl Taken {
    fn now(&self) {
        self.millis.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since(&self) -> Duration {
        self.epoch.elapsed().saturating_sub(Duration::from_millis(self.millis.load(Ordering::Relaxed)))
    }
}

impl<T> Outgoing<T> {
    fn new(rx: mpsc::Receiver<Result<T, Status>>) -> Self {
        let taken = Arc::new(Taken { epoch: Instant::now(), millis: AtomicU64::new(0) });
        Self { rx, taken, end: Arc::new(Mutex::new(None)), ended: false }
    }
}

impl<T> Stream for Outgoing<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                this.taken.now();
                Poll::Ready(Some(item))
            }
            // the runner leaves its status before it drops the sender
            Poll::Ready(None) => {
                this.ended = true;
                let ended = this.end.lock().unwrap_or_else(PoisonError::into_inner).take();
                Poll::Ready(ended.map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What ends a stream besides its body: the client's deadline, a client that takes nothing for the idle timeout
/// while the channel is full, and the server's drain at shutdown.
struct Watch {
    deadline: Option<Instant>,
    idle_timeout: Duration,
    taken: Arc<Taken>,
    admission: Admission,
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
    /// The client took nothing for the idle timeout while the channel was full.
    Idle,
    /// The server shut down and the drain's grace passed.
    ShuttingDown,
}

/// What a panic carried, for the log: its message when it is text.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (None, Some(text)) => text.clone(),
        (None, None) => "a panic without a message".to_owned(),
    }
}

/// Runs `body` until it completes, the client goes away, the deadline passes, the client stalls or the server
/// drains; then stops the database work, returns the connection, and leaves the stream's status in `end`.
///
/// A panic in the body is caught at each poll and ends the stream like an error: the client gets INTERNAL (a
/// stream whose task just died would end with OK and no summary), and the snapshot is closed as after any
/// stream that stopped early, so its connection, still in its transaction and maybe in a COPY, is discarded
/// rather than unwound back into the pool.
async fn run<B: StreamBody>(
    snapshot: Snapshot,
    tx: mpsc::Sender<Result<B::Response, Status>>,
    watch: Watch,
    body: B,
    end: Arc<Mutex<Option<Status>>>,
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
            match watch.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let stalled = async {
            let every = (watch.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            loop {
                tokio::time::sleep(every).await;
                if tx.capacity() == 0 && watch.taken.since() >= watch.idle_timeout {
                    break;
                }
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
            () = stalled => Outcome::Idle,
            () = watch.admission.drained() => Outcome::ShuttingDown,
        }
    };
    let elapsed = started.elapsed();
    let completed = matches!(outcome, Outcome::Complete);
    let status = match outcome {
        Outcome::Complete => None,
        Outcome::ClientGone => {
            tracing::debug!(?elapsed, "client went away; cancelling");
            None
        }
        Outcome::Failed(e) => {
            tracing::warn!(error = %e, "stream failed");
            Some(e)
        }
        Outcome::Deadline => {
            tracing::debug!(?elapsed, "deadline passed; cancelling");
            Some(Error::DeadlineExceeded)
        }
        Outcome::Idle => {
            tracing::info!(?elapsed, idle = ?watch.idle_timeout, "client read nothing; ending the stream");
            Some(Error::StreamIdle(watch.idle_timeout))
        }
        Outcome::ShuttingDown => {
            tracing::info!(?elapsed, "server shutting down; ending the stream");
            Some(Error::ShuttingDown)
        }
    };
    snapshot.close(completed).await;
    if let Some(error) = status {
        *end.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.into());
    }
    // dropping the sender wakes the response stream, which ends with the status left in `end`
    drop(tx);
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
        let key = token::TokenKey::new(&[7; 32]).expect("key");
        let spec = StreamSpec::validate(&request, token::Kind::Trades, &key).expect("valid");
        let body = Panicking::new(&request, spec).expect("body");
        let snapshot =
            Snapshot::open(&pool, body.spec(), Limits::default().max_selection_markets).await.expect("snapshot");
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let mut outgoing = Outgoing::new(rx);
        let watch = Watch {
            deadline: None,
            idle_timeout: Duration::from_secs(60),
            taken: outgoing.taken.clone(),
            admission: Admission::new(&Limits::default()),
        };
        // spawned as `start` does: a panic that escaped would end this task, not the test
        let task = tokio::spawn(run(snapshot, tx, watch, body, outgoing.end.clone()));

        use tokio_stream::StreamExt;
        assert!(matches!(outgoing.next().await, Some(Ok(_))), "the message sent before the panic");
        let status = match outgoing.next().await {
            Some(Err(status)) => status,
            other => panic!("the stream must end with an error status, not {other:?}"),
        };
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        assert_eq!(status.message(), "internal error", "no internals reach the client");
        assert!(outgoing.next().await.is_none(), "nothing after the status");
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
