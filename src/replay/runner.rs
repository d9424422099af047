//! The one stream runner every replay stream goes through: validate the request's common fields, open the
//! snapshot, and run the stream's body on a task that sends into a bounded channel, until it completes, the
//! client goes away or the deadline passes; then stop the database work and give the connection back.

use std::{
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
    request: Request<B::Request>,
) -> Result<Response<BoxStream<B::Response>>, Status> {
    let deadline = request::deadline(request.metadata());
    let peer = request.remote_addr();
    let request = request.into_inner();
    let spec = StreamSpec::validate(&request, B::KIND)?;
    let body = B::new(&request, spec)?;
    let permit = admission.stream(peer)?;
    let snapshot = Snapshot::open(pool, body.spec()).await?;
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
/// one (to tell a stalled client), and it ends with the status the runner leaves in `end`, ahead of any message
/// still queued (the client resumes after the last token it received).
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
        let ended = this.end.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(status) = ended {
            this.ended = true;
            return Poll::Ready(Some(Err(status)));
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

/// Runs `body` until it completes, the client goes away, the deadline passes, the client stalls or the server
/// drains; then stops the database work, returns the connection, and leaves the stream's status in `end`.
async fn run<B: StreamBody>(
    snapshot: Snapshot,
    tx: mpsc::Sender<Result<B::Response, Status>>,
    watch: Watch,
    body: B,
    end: Arc<Mutex<Option<Status>>>,
) {
    let started = Instant::now();
    let outcome = {
        let body = pin!(body.run(&snapshot, &tx));
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
                Ok(()) => Outcome::Complete,
                Err(Abort::Failed(e)) => Outcome::Failed(e),
                Err(Abort::ClientGone) => Outcome::ClientGone,
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
