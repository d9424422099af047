//! ReplayService and the replay contract every stream shares (see proto/kalshi/replay/v1/replay.proto).
//!
//! A stream runs in two parts. The handler validates the request, borrows a pooled connection, opens a
//! REPEATABLE READ READ ONLY transaction (one snapshot for the whole stream), reads the watermark and resolves
//! the market selection in it; errors up to here are the RPC's status. Then a task reads the rows with COPY
//! (binary) and sends batches into a channel of [`CHANNEL_DEPTH`] messages that tonic drains: a slow client
//! fills the channel, the task stops reading, TCP backpressure stops PostgreSQL. When the client goes away or its
//! deadline passes, the task cancels the query, rolls back and returns the connection within milliseconds.

pub mod aggregates;
pub mod candles;
pub mod hash;
pub mod trades;

use std::{pin::pin, sync::Arc, time::Duration};

use bb8::PooledConnection;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use prost::Message;
use tokio::{sync::mpsc, time::Instant};
use tokio_postgres::{NoTls, types::ToSql};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, codegen::BoxStream, metadata::MetadataMap};

use crate::{
    error::Error,
    proto::{
        FillPolicy, Layout, StreamCandlesRequest, StreamCandlesResponse, StreamSummary, StreamTradesRequest,
        StreamTradesResponse, replay_service_server::ReplayService,
    },
    replay::hash::ContentHash,
    store::db::{Conn, Manager, Pool, Prepare},
    time, token,
};

/// Items per data message when the request leaves batch_size at 0, and the most allowed.
pub const DEFAULT_BATCH: i32 = 1024;
pub const MAX_BATCH: i32 = 16_384;
/// Most tickers of each kind one request may name.
pub const MAX_TICKERS: usize = 10_000;
/// Messages buffered between a stream's database reader and its gRPC sender. Small: memory per stream is about
/// this many batches, whatever the range.
const CHANNEL_DEPTH: usize = 2;
/// How long a cancelled stream waits for its connection to be rolled back before giving it up.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Planner settings of a stream's transaction. A stream must read the day partitions in index order and never
/// sort: sorting a range of millions of rows spills to disk and delays the first row by seconds. The planner
/// would choose a sort (after a bitmap scan) whenever its statistics underestimate the range, e.g. right after a
/// load and before autovacuum analyzed it; without these two, its only ordered plans are the index scans.
pub const PLAN_SETTINGS: &str = "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off";

/// ReplayService over the pool.
#[derive(Debug, Clone)]
pub struct ReplayApi {
    pool: Pool,
}

impl ReplayApi {
    /// A service reading from `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl ReplayService for ReplayApi {
    #[tracing::instrument(skip_all)]
    async fn stream_trades(
        &self,
        request: Request<StreamTradesRequest>,
    ) -> Result<Response<BoxStream<StreamTradesResponse>>, Status> {
        let deadline = deadline(request.metadata());
        let req = request.into_inner();
        let layout = match Layout::try_from(req.layout) {
            Ok(Layout::Unspecified | Layout::Rows) => Layout::Rows,
            Ok(Layout::Columns) => Layout::Columns,
            Err(_) => {
                return Err(Error::invalid(
                    "layout",
                    format!("unknown value {}; allowed: 0 (rows), LAYOUT_ROWS (1), LAYOUT_COLUMNS (2)", req.layout),
                )
                .into());
            }
        };
        let common = Common::validate(&req, token::Kind::Trades, |r| {
            (&r.market_tickers, &r.event_tickers, &r.series_tickers, r.start_time.as_ref(), r.end_time.as_ref())
        })?;
        let batch = batch_size(req.batch_size)?;
        let resume = common.resume(&req, |r| {
            let mut filters = r.clone();
            filters.resume_token.clear();
            filters.batch_size = 0;
            filters.layout = 0;
            (filters, &r.resume_token, r.as_of_watermark)
        })?;
        let snapshot = Snapshot::open(&self.pool, &common, &resume).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let stream = trades::Stream { common, resume, layout, batch };
        tokio::spawn(run(snapshot, tx, deadline, stream));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all)]
    async fn stream_candles(
        &self,
        request: Request<StreamCandlesRequest>,
    ) -> Result<Response<BoxStream<StreamCandlesResponse>>, Status> {
        let deadline = deadline(request.metadata());
        let req = request.into_inner();
        let common = Common::validate(&req, token::Kind::Candles, |r| {
            (&r.market_tickers, &r.event_tickers, &r.series_tickers, r.start_time.as_ref(), r.end_time.as_ref())
        })?;
        let interval = candles::Interval::new(req.interval_seconds)?;
        let fill = match FillPolicy::try_from(req.fill_policy) {
            Ok(FillPolicy::Unspecified | FillPolicy::None) => FillPolicy::None,
            Ok(FillPolicy::Previous) => FillPolicy::Previous,
            Err(_) => {
                return Err(Error::invalid(
                    "fill_policy",
                    format!(
                        "unknown value {}; allowed: 0 (none), FILL_POLICY_NONE (1), FILL_POLICY_PREVIOUS (2)",
                        req.fill_policy
                    ),
                )
                .into());
            }
        };
        let batch = batch_size(req.batch_size)?;
        let resume = common.resume(&req, |r| {
            let mut filters = r.clone();
            filters.resume_token.clear();
            filters.batch_size = 0;
            (filters, &r.resume_token, r.as_of_watermark)
        })?;
        let snapshot = Snapshot::open(&self.pool, &common, &resume).await?;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let stream = candles::Stream { common, resume, interval, fill, batch };
        tokio::spawn(run(snapshot, tx, deadline, stream));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The request fields every stream has, validated.
#[derive(Debug)]
pub(crate) struct Common {
    pub kind: token::Kind,
    pub market_tickers: Vec<String>,
    pub event_tickers: Vec<String>,
    pub series_tickers: Vec<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Market selection and range of a request: (market_tickers, event_tickers, series_tickers, start, end).
type Fields<'a> = (
    &'a Vec<String>,
    &'a Vec<String>,
    &'a Vec<String>,
    Option<&'a prost_types::Timestamp>,
    Option<&'a prost_types::Timestamp>,
);

impl Common {
    fn validate<R>(request: &R, kind: token::Kind, fields: impl FnOnce(&R) -> Fields<'_>) -> Result<Self, Error> {
        let (markets, events, series, start, end) = fields(request);
        if markets.is_empty() && events.is_empty() && series.is_empty() {
            return Err(Error::invalid(
                "market_tickers",
                "at least one of market_tickers, event_tickers or series_tickers is required",
            ));
        }
        for (field, tickers) in [("market_tickers", markets), ("event_tickers", events), ("series_tickers", series)] {
            if tickers.len() > MAX_TICKERS {
                return Err(Error::invalid(field, format!("at most {MAX_TICKERS} tickers, got {}", tickers.len())));
            }
            if let Some(i) = tickers.iter().position(|t| t.is_empty() || t.contains('\0')) {
                return Err(Error::invalid(format!("{field}[{i}]"), "must be a non-empty ticker"));
            }
        }
        let start = time::from_proto(start.ok_or_else(|| Error::invalid("start_time", "required"))?, "start_time")?;
        let end = time::from_proto(end.ok_or_else(|| Error::invalid("end_time", "required"))?, "end_time")?;
        if start >= end {
            return Err(Error::invalid("end_time", format!("must be after start_time ({start} >= {end})")));
        }
        Ok(Self {
            kind,
            market_tickers: markets.clone(),
            event_tickers: events.clone(),
            series_tickers: series.clone(),
            start,
            end,
        })
    }

    /// Where the stream starts: from its resume token, or from the beginning. `parts` gives the request without
    /// its resume token and the fields that may change between resumptions (batch size, layout), which is what a
    /// token is bound to, the token, and as_of_watermark.
    fn resume<R: Message>(
        &self,
        request: &R,
        parts: impl FnOnce(&R) -> (R, &String, Option<i64>),
    ) -> Result<Resume, Error> {
        let (filters, token, as_of) = parts(request);
        let binding = token::binding(&filters.encode_to_vec());
        if let Some(as_of) = as_of
            && as_of < 0
        {
            return Err(Error::invalid("as_of_watermark", format!("must be 0 or more, got {as_of}")));
        }
        let mut resume = Resume { binding, as_of, position: None };
        if !token.is_empty() {
            let payload = token::decode(token, self.kind, binding, "resume_token")?;
            resume.position = Some(Position::decode(&payload).ok_or_else(damaged_token)?);
        }
        Ok(resume)
    }
}

fn damaged_token() -> Error {
    Error::invalid("resume_token", "damaged token; pass back a token exactly as received")
}

/// Items per data message: 0 means [`DEFAULT_BATCH`].
fn batch_size(value: i32) -> Result<usize, Error> {
    match value {
        0 => Ok(DEFAULT_BATCH as usize),
        1..=MAX_BATCH => Ok(value as usize),
        _ => Err(Error::invalid(
            "batch_size",
            format!("must be between 1 and {MAX_BATCH} (0 means {DEFAULT_BATCH}), got {value}"),
        )),
    }
}

/// Where a stream starts and at which data version.
#[derive(Debug)]
pub(crate) struct Resume {
    /// The request's binding, which every token of the stream carries.
    pub binding: [u8; 8],
    pub as_of: Option<i64>,
    /// Set when resuming: the position after the last item delivered.
    pub position: Option<Position>,
}

impl Resume {
    /// Where the stream's items start: the token's position and the key of the last item it delivered (decoded
    /// by `decode`; a key it refuses is a damaged token), or a fresh position at `watermark`.
    pub(crate) fn start<K>(
        &self,
        watermark: i64,
        decode: impl FnOnce(&[u8]) -> Option<K>,
    ) -> Result<(Position, Option<K>), Error> {
        match &self.position {
            None => Ok((Position { watermark, count: 0, hash: ContentHash::default(), key: Vec::new() }, None)),
            Some(position) => {
                let key = decode(&position.key).ok_or_else(damaged_token)?;
                Ok((position.clone(), Some(key)))
            }
        }
    }
}

/// The state a resume token carries: the data version, the items so far, their running hash and the key of the
/// last one (its encoding is up to the stream).
#[derive(Debug, Clone)]
pub(crate) struct Position {
    pub watermark: i64,
    pub count: i64,
    pub hash: ContentHash,
    pub key: Vec<u8>,
}

impl Position {
    /// `watermark | count | hash length (u8) | hash state | key`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let hash = self.hash.to_bytes();
        let mut out = Vec::with_capacity(17 + hash.len() + self.key.len());
        out.extend_from_slice(&self.watermark.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.push(hash.len() as u8);
        out.extend_from_slice(&hash);
        out.extend_from_slice(&self.key);
        out
    }

    fn decode(payload: &[u8]) -> Option<Self> {
        let (watermark, rest) = payload.split_first_chunk::<8>()?;
        let (count, rest) = rest.split_first_chunk::<8>()?;
        let (&hash_len, rest) = rest.split_first()?;
        let (hash, key) = rest.split_at_checked(usize::from(hash_len))?;
        let position = Self {
            watermark: i64::from_be_bytes(*watermark),
            count: i64::from_be_bytes(*count),
            hash: ContentHash::from_bytes(hash)?,
            key: key.to_vec(),
        };
        (position.watermark >= 0 && position.count >= 0).then_some(position)
    }

    /// The token that resumes after this position.
    pub(crate) fn token(&self, kind: token::Kind, binding: [u8; 8]) -> String {
        token::encode(kind, binding, &self.encode())
    }
}

/// A stream's consistent view: an open read-only transaction, its data version and the selected markets.
pub(crate) struct Snapshot {
    /// Shared with the task that copies rows on it; back to the pool when both are done with it.
    pub conn: Arc<PooledConnection<'static, Manager>>,
    /// The data version the stream reads at: as_of_watermark, the resume token's, or the latest.
    pub watermark: i64,
    /// Whether rows above the watermark must be filtered out (the snapshot may hold newer ones).
    pub pinned: bool,
    /// The selected markets, sorted; None when the selection covers every market (no filter needed).
    pub markets: Option<Vec<String>>,
    /// Where helpers come from.
    pool: Pool,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("watermark", &self.watermark).field("markets", &self.markets).finish()
    }
}

/// Resolves the selection: the markets named, and those of the events and series named; the names that match
/// nothing, with their kind; and whether the result is every market.
const RESOLVE: &str = "
WITH selected AS (
    SELECT ticker FROM markets
     WHERE ticker = ANY($1::text[]) OR event_ticker = ANY($2::text[]) OR series_ticker = ANY($3::text[])
)
SELECT 'market' AS kind, ticker FROM selected
UNION ALL
SELECT 'unknown market ticker', name FROM unnest($1::text[]) AS name
 WHERE NOT EXISTS (SELECT 1 FROM markets WHERE ticker = name)
UNION ALL
SELECT 'unknown event ticker', name FROM unnest($2::text[]) AS name
 WHERE NOT EXISTS (SELECT 1 FROM events WHERE event_ticker = name)
   AND NOT EXISTS (SELECT 1 FROM markets WHERE event_ticker = name)
UNION ALL
SELECT 'unknown series ticker', name FROM unnest($3::text[]) AS name
 WHERE NOT EXISTS (SELECT 1 FROM series WHERE ticker = name)
   AND NOT EXISTS (SELECT 1 FROM markets WHERE series_ticker = name)
UNION ALL
SELECT 'total', count(*)::text FROM markets";

impl Snapshot {
    async fn open(pool: &Pool, common: &Common, resume: &Resume) -> Result<Self, Error> {
        let conn = pool.get_owned().await?;
        conn.batch_execute(&format!("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; {PLAN_SETTINGS}")).await?;
        let opened = Self::read(conn, common, resume, pool.clone()).await;
        if let Err((conn, _)) = &opened {
            rollback(conn).await;
        }
        opened.map_err(|(_, e)| e)
    }

    /// Everything the stream needs from its snapshot; on an error the connection is handed back for the rollback.
    async fn read(
        conn: PooledConnection<'static, Manager>,
        common: &Common,
        resume: &Resume,
        pool: Pool,
    ) -> Result<Self, (PooledConnection<'static, Manager>, Error)> {
        let queried = async {
            let version = conn.prepared("SELECT watermark FROM data_version", &[]);
            let resolve = conn.prepared(RESOLVE, &[]);
            let (version, resolve) = tokio::try_join!(version, resolve)?;
            let params: [&(dyn ToSql + Sync); 3] =
                [&common.market_tickers, &common.event_tickers, &common.series_tickers];
            tokio::try_join!(conn.query_one(&version, &[]), conn.query(&resolve, &params))
        };
        let (version, rows) = match queried.await {
            Ok(answer) => answer,
            Err(e) => return Err((conn, e.into())),
        };
        let latest: i64 = version.get(0);
        let mut markets = Vec::new();
        let mut unknown: Option<(&'static str, Vec<String>)> = None;
        let mut total = 0usize;
        for row in &rows {
            let kind: &str = row.get(0);
            let name: String = row.get(1);
            match kind {
                "market" => markets.push(name),
                "total" => total = name.parse().unwrap_or(usize::MAX),
                _ => {
                    let kind = match kind {
                        "unknown market ticker" => "market ticker",
                        "unknown event ticker" => "event ticker",
                        _ => "series ticker",
                    };
                    // report the first kind of unknown name, all names of that kind
                    match &mut unknown {
                        Some((first, names)) if *first == kind => names.push(name),
                        Some(_) => {}
                        None => unknown = Some((kind, vec![name])),
                    }
                }
            }
        }
        if let Some((kind, mut names)) = unknown {
            names.sort_unstable();
            names.dedup();
            return Err((conn, Error::NotFound { kind, names }));
        }
        markets.sort_unstable();
        markets.dedup();
        let (watermark, pinned) = match (resume.position.as_ref().map(|p| p.watermark), resume.as_of) {
            (Some(token), _) => (token, true),
            (None, Some(as_of)) => (as_of, true),
            (None, None) => (latest, false),
        };
        if watermark > latest {
            let field = if resume.position.is_some() { "resume_token" } else { "as_of_watermark" };
            let reason = format!("watermark {watermark} is ahead of the data (latest {latest})");
            return Err((conn, Error::invalid(field, reason)));
        }
        let markets = (markets.len() < total).then_some(markets);
        Ok(Self { conn: Arc::new(conn), watermark, pinned, markets, pool })
    }
}

impl Snapshot {
    /// A second connection reading the same snapshot, so that PostgreSQL can read two parts of a range at once
    /// (as parallel pg_dump does: the snapshot is exported here and imported there). None when the pool has no
    /// connection to spare right away: the stream then reads on its own connection only.
    pub(crate) async fn helper(&self) -> Option<Helper> {
        let conn = match tokio::time::timeout(HELPER_WAIT, self.pool.get_owned()).await {
            Ok(Ok(conn)) => conn,
            _ => return None,
        };
        let helper = Helper { conn: Some(conn), idle: true };
        let imported = async {
            let id: String = self.conn.query_one("SELECT pg_export_snapshot()", &[]).await?.get(0);
            helper
                .conn()
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}; {PLAN_SETTINGS}",
                    literal(&id)
                ))
                .await
        };
        match imported.await {
            Ok(()) => Some(helper),
            Err(e) => {
                tracing::warn!(error = %e, "could not share the snapshot; reading on one connection");
                None
            }
        }
    }
}

/// Where the rows of a segment are copied from.
enum Source {
    Main(Arc<PooledConnection<'static, Manager>>),
    Helper(Box<Helper>),
}

impl Source {
    fn conn(&self) -> &Conn {
        match self {
            Source::Main(conn) => conn,
            Source::Helper(helper) => helper.conn(),
        }
    }
}

/// COPY chunks of one segment, handed over a few hundred at a time.
type Blocks = mpsc::Receiver<Result<Vec<Bytes>, Error>>;

/// Chunks per block, and blocks buffered per segment: what a connection may read ahead of the stream (about a
/// megabyte of trades).
const BLOCK_CHUNKS: usize = 512;
const BLOCKS_AHEAD: usize = 32;

/// The rows of several COPY statements (`segments`), in statement order, read by up to two connections at
/// once: while the stream consumes segment i, the other connection already reads segment i + 1, up to
/// [`BLOCKS_AHEAD`] blocks. PostgreSQL then works on two parts of the range in parallel, which is what lets a
/// stream outrun a single COPY of the same rows.
pub(crate) struct OrderedCopy {
    queues: Vec<mpsc::Receiver<Blocks>>,
    next: usize,
    segments: usize,
}

impl std::fmt::Debug for OrderedCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedCopy").field("next", &self.next).field("segments", &self.segments).finish()
    }
}

impl OrderedCopy {
    /// Starts copying `segments` on the snapshot's connection and, when there are several and the pool can
    /// spare one, on a helper that shares the snapshot: segment i on connection i mod 2.
    pub(crate) async fn start(snapshot: &Snapshot, segments: Vec<String>) -> Self {
        let helper = if segments.len() > 1 { snapshot.helper().await } else { None };
        let mut sources = vec![Source::Main(snapshot.conn.clone())];
        sources.extend(helper.map(|h| Source::Helper(Box::new(h))));
        let workers = sources.len();
        let count = segments.len();
        let mut queues = Vec::with_capacity(workers);
        for (w, source) in sources.into_iter().enumerate() {
            let mine: Vec<String> = segments.iter().skip(w).step_by(workers).cloned().collect();
            let (queue_tx, queue_rx) = mpsc::channel(2);
            queues.push(queue_rx);
            tokio::spawn(copy_segments(source, mine, queue_tx));
        }
        Self { queues, next: 0, segments: count }
    }

    /// The chunks of the next segment, or None after the last.
    pub(crate) async fn next_segment(&mut self) -> Result<Option<Blocks>, Error> {
        if self.next == self.segments {
            return Ok(None);
        }
        let w = self.next % self.queues.len();
        self.next += 1;
        match self.queues[w].recv().await {
            Some(blocks) => Ok(Some(blocks)),
            None => Err(Error::Malformed("a copy worker stopped early".to_owned())),
        }
    }
}

/// Copies each of `segments` on `source` into a channel of its own, handed to the stream through `queue`.
/// Ends when done or when the stream stopped listening (then a helper cancels its query as it is dropped).
async fn copy_segments(mut source: Source, segments: Vec<String>, queue: mpsc::Sender<Blocks>) {
    for sql in segments {
        let (blocks_tx, blocks_rx) = mpsc::channel(BLOCKS_AHEAD);
        if queue.send(blocks_rx).await.is_err() {
            return;
        }
        if let Source::Helper(helper) = &mut source {
            helper.set_idle(false);
        }
        let copied = async {
            let rows = source.conn().copy_out(sql.as_str()).await?;
            let mut rows = pin!(rows);
            let mut block = Vec::with_capacity(BLOCK_CHUNKS);
            while let Some(chunk) = rows.next().await {
                block.push(chunk?);
                if block.len() == BLOCK_CHUNKS {
                    let full = std::mem::replace(&mut block, Vec::with_capacity(BLOCK_CHUNKS));
                    if blocks_tx.send(Ok(full)).await.is_err() {
                        return Ok(false);
                    }
                }
            }
            Ok::<_, Error>(block.is_empty() || blocks_tx.send(Ok(block)).await.is_ok())
        };
        match copied.await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = blocks_tx.send(Err(e)).await;
                return;
            }
        }
        if let Source::Helper(helper) = &mut source {
            helper.set_idle(true);
        }
    }
}

/// How long a stream waits for a helper connection before it reads alone.
const HELPER_WAIT: Duration = Duration::from_millis(100);

/// A pooled connection in a transaction that imported a stream's snapshot. Dropped idle, it rolls back and goes
/// back to the pool; dropped while a query may still run (the stream was cancelled), it cancels the query and is
/// closed.
pub(crate) struct Helper {
    conn: Option<PooledConnection<'static, Manager>>,
    /// Set when no query of the helper can still be running.
    idle: bool,
}

impl std::fmt::Debug for Helper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helper").finish_non_exhaustive()
    }
}

impl Helper {
    pub(crate) fn conn(&self) -> &Conn {
        self.conn.as_ref().expect("present until dropped")
    }

    /// Whether a query may be running: only then does dropping the helper send a cancel request.
    pub(crate) fn set_idle(&mut self, idle: bool) {
        self.idle = idle;
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.idle {
                tokio::spawn(async move { rollback(&conn).await });
                return;
            }
            // a query may still run: cancel it and close the connection (see `run` for why)
            conn.discard();
            tokio::spawn(async move {
                let token = conn.cancel_token();
                let _ = tokio::time::timeout(CLEANUP_TIMEOUT, token.cancel_query(NoTls)).await;
            });
        }
    }
}

/// Ends the snapshot's transaction; a connection that cannot is discarded rather than handed to the next user.
async fn rollback(conn: &Conn) {
    match tokio::time::timeout(CLEANUP_TIMEOUT, conn.batch_execute("ROLLBACK")).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "rollback failed");
            conn.discard();
        }
        Err(_) => conn.discard(),
    }
}

/// Why a stream's body stopped early.
#[derive(Debug)]
pub(crate) enum Stop {
    Failed(Error),
    /// The receiver is gone: the client cancelled or disconnected.
    ClientGone,
}

impl<E: Into<Error>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Failed(e.into())
    }
}

/// Sends one message of a stream; waits while the channel is full (the client reads slowly).
pub(crate) async fn send<T>(tx: &mpsc::Sender<Result<T, Status>>, message: T) -> Result<(), Stop> {
    tx.send(Ok(message)).await.map_err(|_| Stop::ClientGone)
}

/// How a stream ended.
enum End {
    Complete,
    Failed(Error),
    ClientGone,
    Deadline,
}

/// What a stream does with its snapshot: read it and send data messages and the summary into `tx`.
pub(crate) trait Body<T>: Send + 'static {
    fn run(
        self,
        snapshot: &Snapshot,
        tx: &mpsc::Sender<Result<T, Status>>,
    ) -> impl Future<Output = Result<(), Stop>> + Send;
}

/// Runs `body` until it completes, the client goes away or the deadline passes; then stops the database work
/// and returns the connection.
async fn run<T, B: Body<T>>(
    snapshot: Snapshot,
    tx: mpsc::Sender<Result<T, Status>>,
    deadline: Option<Instant>,
    body: B,
) {
    let started = Instant::now();
    let end = {
        let body = pin!(body.run(&snapshot, &tx));
        let expiry = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = body => match result {
                Ok(()) => End::Complete,
                Err(Stop::Failed(e)) => End::Failed(e),
                Err(Stop::ClientGone) => End::ClientGone,
            },
            () = tx.closed() => End::ClientGone,
            () = expiry => End::Deadline,
        }
    };
    let cancel = match &end {
        End::Complete => false,
        End::Failed(e) => {
            tracing::warn!(error = %e, "stream failed");
            true
        }
        End::ClientGone => {
            tracing::debug!(elapsed = ?started.elapsed(), "client went away; cancelling");
            true
        }
        End::Deadline => {
            tracing::debug!(elapsed = ?started.elapsed(), "deadline passed; cancelling");
            true
        }
    };
    if cancel {
        // The body (and its COPY) is dropped: stop the server's work too, which would otherwise run to the end.
        // A cancel request is a signal with no answer: it may land after the COPY ended, on whatever the
        // connection runs next. So the connection is closed rather than handed to another request.
        let token = snapshot.conn.cancel_token();
        if let Err(e) = tokio::time::timeout(CLEANUP_TIMEOUT, token.cancel_query(NoTls)).await.unwrap_or(Ok(())) {
            tracing::warn!(error = %e, "cancel request failed");
        }
        snapshot.conn.discard();
    } else {
        rollback(&snapshot.conn).await;
    }
    match end {
        End::Failed(e) => {
            let _ = tx.send(Err(e.into())).await;
        }
        End::Deadline => {
            let _ = tx.send(Err(Error::DeadlineExceeded.into())).await;
        }
        End::Complete | End::ClientGone => {}
    }
}

/// Most segments a stream's range is cut into: a range of years is read in runs of days, not day by day.
const MAX_SEGMENTS: i64 = 64;

/// [start, end) cut at UTC midnights into at most [`MAX_SEGMENTS`] runs of whole days (each run one or more day
/// partitions), without the runs that end at or before `after` (the microsecond of a resume position: its own
/// run stays, and the SQL skips what was delivered).
pub(crate) fn day_segments(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    after: Option<i64>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let days = (time::day_start(end - chrono::Duration::microseconds(1)) - time::day_start(start)).num_days() + 1;
    let step = chrono::Duration::days((days + MAX_SEGMENTS - 1) / MAX_SEGMENTS);
    let mut segments = Vec::new();
    let mut from = start;
    while from < end {
        let to = time::day_start(from).checked_add_signed(step).map_or(end, |to| to.min(end));
        if after.is_none_or(|after| to.timestamp_micros() > after) {
            segments.push((from, to));
        }
        from = to;
    }
    segments
}

/// The summary message's content.
pub(crate) fn summary(count: i64, hash: &ContentHash, watermark: i64) -> StreamSummary {
    StreamSummary { item_count: count, content_hash: hash.finish().to_vec(), watermark }
}

/// The client's deadline from its grpc-timeout header (`<digits><unit>`, unit one of H M S m u n), if any.
fn deadline(metadata: &MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

/// A string as an SQL literal, for COPY, which takes no parameters. With standard_conforming_strings on (the
/// session sets it), doubling the quotes is the whole escaping; NUL cannot be in a PostgreSQL string and was
/// refused with the request.
pub(crate) fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The condition ` AND <column> IN (...)` that keeps the rows of `markets`; empty for all markets (None).
pub(crate) fn ticker_filter(column: &str, markets: Option<&[String]>) -> String {
    match markets {
        None => String::new(),
        Some([one]) => format!(" AND {column} = {}", literal(one)),
        Some(markets) => {
            let list: Vec<String> = markets.iter().map(|m| literal(m)).collect();
            format!(" AND {column} IN ({})", list.join(", "))
        }
    }
}

/// A timestamp as an SQL literal.
pub(crate) fn timestamp_literal(value: DateTime<Utc>) -> String {
    format!("'{}'::timestamptz", value.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_to_deadlines() {
        let mut metadata = MetadataMap::new();
        assert!(deadline(&metadata).is_none());
        for (value, expected) in [("5S", 5_000), ("250m", 250), ("2M", 120_000), ("1H", 3_600_000)] {
            metadata.insert("grpc-timeout", value.parse().expect("ascii"));
            let left = deadline(&metadata).expect(value).duration_since(Instant::now()).as_millis() as i64;
            assert!((expected - 50..=expected).contains(&left), "{value}: {left} ms");
        }
        for bad in ["", "S", "5x", "-1S"] {
            metadata.insert("grpc-timeout", bad.parse().expect("ascii"));
            assert!(deadline(&metadata).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn positions_round_trip_and_damage_is_refused() {
        let mut hash = ContentHash::default();
        hash.item(b"trade");
        let position = Position { watermark: 42, count: 7, hash, key: b"key".to_vec() };
        let decoded = Position::decode(&position.encode()).expect("decodes");
        assert_eq!((decoded.watermark, decoded.count, decoded.hash, decoded.key), (42, 7, hash, b"key".to_vec()));
        let encoded = position.encode();
        assert!(Position::decode(&encoded[..10]).is_none());
        let mut negative = encoded.clone();
        negative[0] = 0x80;
        assert!(Position::decode(&negative).is_none());
    }

    #[test]
    fn ranges_cut_at_midnights_into_at_most_64_runs() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
        let segments = day_segments(at("2026-01-05T06:00:00Z"), at("2026-01-07T12:00:00Z"), None);
        assert_eq!(
            segments,
            [
                (at("2026-01-05T06:00:00Z"), at("2026-01-06T00:00:00Z")),
                (at("2026-01-06T00:00:00Z"), at("2026-01-07T00:00:00Z")),
                (at("2026-01-07T00:00:00Z"), at("2026-01-07T12:00:00Z")),
            ]
        );
        let resumed = day_segments(
            at("2026-01-05T06:00:00Z"),
            at("2026-01-07T12:00:00Z"),
            Some(at("2026-01-06T00:00:00Z").timestamp_micros()),
        );
        assert_eq!(resumed.len(), 2, "the run ending at the position is skipped, the position's own run stays");
        assert_eq!(day_segments(at("2026-01-05T00:00:00Z"), at("2026-01-05T00:00:00.000001Z"), None).len(), 1);
        let years = day_segments(at("2020-01-01T00:00:00Z"), at("2030-01-01T00:00:00Z"), None);
        assert!(years.len() <= 64 && years.len() > 50, "{}", years.len());
        assert_eq!(
            (years[0].0, years.last().expect("last").1),
            (at("2020-01-01T00:00:00Z"), at("2030-01-01T00:00:00Z"))
        );
        assert!(years.windows(2).all(|w| w[0].1 == w[1].0), "contiguous");
        assert!(years.iter().all(|(_, to)| *to == time::day_start(*to) || *to == at("2030-01-01T00:00:00Z")));
    }

    #[test]
    fn literals_double_quotes() {
        assert_eq!(literal("KX'; DROP TABLE trades; --"), "'KX''; DROP TABLE trades; --'");
        let t = DateTime::from_timestamp(1_767_571_200, 1_000).expect("time");
        assert_eq!(timestamp_literal(t), "'2026-01-05T00:00:00.000001Z'::timestamptz");
    }
}
