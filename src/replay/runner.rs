//! The one stream runner every replay stream goes through: validate the request's common fields, open the
//! snapshot, and run the stream's body on a task that sends into a bounded channel, until it completes, the
//! client goes away or the deadline passes; then stop the database work and give the connection back.

use std::pin::pin;

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
    tokens: &token::TokenKey,
    request: Request<B::Request>,
) -> Result<Response<BoxStream<B::Response>>, Status> {
    let deadline = request::deadline(request.metadata());
    let request = request.into_inner();
    let spec = StreamSpec::validate(&request, B::KIND, tokens)?;
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

/// Runs `body` until it completes, the client goes away or the deadline passes; then stops the database work
/// and returns the connection.
async fn run<B: StreamBody>(
    snapshot: Snapshot,
    tx: mpsc::Sender<Result<B::Response, Status>>,
    deadline: Option<Instant>,
    body: B,
) {
    let started = Instant::now();
    let outcome = {
        let body = pin!(body.run(&snapshot, &tx));
        let expiry = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
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
