//! A stream's snapshot: one REPEATABLE READ READ ONLY transaction on a pooled connection, its watermark and the
//! resolved market selection, and the ordered COPY of a range's segments on that connection and, when the pool
//! can spare one, on a second connection that imported the same snapshot.
//!
//! Each of those connections holds its transaction as a section (see [`crate::store::db`]), from its BEGIN until
//! its ROLLBACK completed: a stream that ends any other way (cancelled, failed, its task dropped or panicking)
//! never hands a connection in a transaction, or with a COPY still running, back to the pool.

use std::{pin::pin, sync::Arc, time::Duration};

use bb8::PooledConnection;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_stream::StreamExt;

use super::{
    request::{Resume, Selection, StreamSpec},
    sql::{Bound, literal},
};
use crate::{
    error::Error,
    store::db::{Conn, Manager, Pool, Prepare},
};

/// How long a cancelled stream waits for its connection to be rolled back before giving it up.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Planner settings of a stream's transaction. A stream must read the day partitions in index order and never
/// sort: sorting a range of millions of rows spills to disk and delays the first row by seconds. The planner
/// would choose a sort (after a bitmap scan) whenever its statistics underestimate the range, e.g. right after a
/// load and before autovacuum analyzed it; without these two, its only ordered plans are the index scans.
pub const PLAN_SETTINGS: &str = "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off";

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
    /// Where a second reader comes from.
    pool: Pool,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("watermark", &self.watermark).field("markets", &self.markets).finish()
    }
}

/// Resolves the selection: the markets named, and those of the events and series named, at most $4 of them; the
/// names that match nothing, with their kind; and how many markets there are, when that may equal the selection.
///
/// A market ticker is known by its reference row or by its facts (coverage_daily): a collector may store trades
/// before it upserts their market, and those must be readable by their ticker. Events and series expand only
/// through reference rows (markets.event_ticker, markets.series_ticker): a market without one is in no event.
/// The stream reads without a ticker filter only when the selection is every market; counting the markets that
/// only facts know scans coverage_daily, so it runs only when the selection holds at least as many markets as
/// have reference rows (a CASE evaluates its subquery only when taken).
const RESOLVE: &str = "
WITH named AS (
    SELECT name AS ticker FROM unnest($1::text[]) AS name
     WHERE EXISTS (SELECT 1 FROM markets WHERE ticker = name)
        OR EXISTS (SELECT 1 FROM coverage_daily WHERE ticker = name)
), selected AS (
    SELECT ticker FROM named
    UNION
    SELECT ticker FROM markets WHERE event_ticker = ANY($2::text[]) OR series_ticker = ANY($3::text[])
    LIMIT $4
), referenced AS (
    SELECT count(*) AS n FROM markets
)
SELECT 'market' AS kind, ticker FROM selected
UNION ALL
SELECT 'unknown market ticker', name FROM unnest($1::text[]) AS name
 WHERE name NOT IN (SELECT ticker FROM named)
UNION ALL
SELECT 'unknown event ticker', name FROM unnest($2::text[]) AS name
 WHERE NOT EXISTS (SELECT 1 FROM events WHERE event_ticker = name)
   AND NOT EXISTS (SELECT 1 FROM markets WHERE event_ticker = name)
UNION ALL
SELECT 'unknown series ticker', name FROM unnest($3::text[]) AS name
 WHERE NOT EXISTS (SELECT 1 FROM series WHERE ticker = name)
   AND NOT EXISTS (SELECT 1 FROM markets WHERE series_ticker = name)
UNION ALL
SELECT 'total', (referenced.n + CASE WHEN (SELECT count(*) FROM selected) < referenced.n THEN 0 ELSE
         (SELECT count(DISTINCT c.ticker) FROM coverage_daily c
           WHERE NOT EXISTS (SELECT 1 FROM markets m WHERE m.ticker = c.ticker)) END)::text
  FROM referenced";

impl Snapshot {
    /// Opens the snapshot of a stream: takes a pooled connection, begins the transaction, reads the watermark
    /// and resolves the selection in it, to at most `max_markets` markets (RESOURCE_EXHAUSTED beyond).
    pub(crate) async fn open(pool: &Pool, spec: &StreamSpec, max_markets: usize) -> Result<Self, Error> {
        let (common, resume) = (&spec.selection, &spec.resume);
        let conn = pool.get_owned().await?;
        // ended by `rollback`
        conn.begin_section();
        conn.batch_execute(&format!("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; {PLAN_SETTINGS}")).await?;
        let opened = Self::read(conn, common, resume, max_markets, pool.clone()).await;
        if let Err((conn, _)) = &opened {
            rollback(conn).await;
        }
        opened.map_err(|(_, e)| e)
    }

    /// Everything the stream needs from its snapshot; on an error the connection is handed back for the rollback.
    async fn read(
        conn: PooledConnection<'static, Manager>,
        common: &Selection,
        resume: &Resume,
        max_markets: usize,
        pool: Pool,
    ) -> Result<Self, (PooledConnection<'static, Manager>, Error)> {
        // one more than the limit tells a selection at the limit from one beyond it
        let limit = i64::try_from(max_markets).unwrap_or(i64::MAX).saturating_add(1);
        let queried = async {
            let version = conn.prepared("SELECT watermark FROM data_version", &[]);
            let resolve = conn.prepared(RESOLVE, &[]);
            let (version, resolve) = tokio::try_join!(version, resolve)?;
            let params: [&(dyn ToSql + Sync); 4] =
                [&common.market_tickers, &common.event_tickers, &common.series_tickers, &limit];
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
        if markets.len() > max_markets {
            let reason = format!(
                "the selection expands to more than {max_markets} markets (max_selection_markets); \
                 split it into several streams, e.g. by event or series"
            );
            return Err((conn, Error::ResourceExhausted(reason)));
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
    /// Ends the snapshot. After a complete stream its transaction is rolled back and the connection goes back to
    /// the pool. After a stream stopped early (its body, and its COPY, dropped) the server's work is stopped
    /// too, which would otherwise run to the end. A cancel request is a signal with no answer: it may land after
    /// the COPY ended, on whatever the connection runs next, so the connection is closed rather than handed to
    /// another request.
    pub(crate) async fn close(&self, completed: bool) {
        if completed {
            rollback(&self.conn).await;
            return;
        }
        // now, not when the last holder drops it: a copy worker may wait for the server's next row
        self.conn.abandon().await;
    }

    /// A second connection reading the same snapshot, so that PostgreSQL can read two parts of a range at once
    /// (as parallel pg_dump does: the snapshot is exported here and imported there). None when the pool has no
    /// connection to spare right away: the stream then reads on its own connection only.
    pub(crate) async fn second_reader(&self, bound: &Bound) -> Option<SecondReader> {
        let conn = match tokio::time::timeout(SECOND_READER_WAIT, self.pool.get_owned()).await {
            Ok(Ok(conn)) => conn,
            _ => return None,
        };
        // ended by `rollback`, when the second reader is dropped idle
        conn.begin_section();
        let second = SecondReader { conn: Some(conn), idle: true };
        let imported = async {
            let id: String = self.conn.query_one("SELECT pg_export_snapshot()", &[]).await?.get(0);
            second
                .conn()
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}; {PLAN_SETTINGS}",
                    literal(&id)
                ))
                .await?;
            bound.apply(second.conn()).await
        };
        match imported.await {
            Ok(()) => Some(second),
            Err(e) => {
                tracing::warn!(error = %e, "could not share the snapshot; reading on one connection");
                None
            }
        }
    }
}

/// Where the rows of a segment are copied from.
enum CopyConn {
    Snapshot(Arc<PooledConnection<'static, Manager>>),
    Second(Box<SecondReader>),
}

impl CopyConn {
    fn conn(&self) -> &Conn {
        match self {
            CopyConn::Snapshot(conn) => conn,
            CopyConn::Second(second) => second.conn(),
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
    /// spare one, on a second connection that shares the snapshot: segment i on connection i mod 2. The client
    /// values the statements read are `bound` on each connection first.
    pub(crate) async fn start(snapshot: &Snapshot, segments: Vec<String>, bound: &Bound) -> Result<Self, Error> {
        bound.apply(&snapshot.conn).await?;
        let second = if segments.len() > 1 { snapshot.second_reader(bound).await } else { None };
        let mut sources = vec![CopyConn::Snapshot(snapshot.conn.clone())];
        sources.extend(second.map(|h| CopyConn::Second(Box::new(h))));
        let workers = sources.len();
        let count = segments.len();
        let mut queues = Vec::with_capacity(workers);
        for (w, source) in sources.into_iter().enumerate() {
            let mine: Vec<String> = segments.iter().skip(w).step_by(workers).cloned().collect();
            let (queue_tx, queue_rx) = mpsc::channel(2);
            queues.push(queue_rx);
            tokio::spawn(copy_segments(source, mine, queue_tx));
        }
        Ok(Self { queues, next: 0, segments: count })
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
/// Ends when done or when the stream stopped listening (then a second reader cancels its query as it is dropped).
async fn copy_segments(mut source: CopyConn, segments: Vec<String>, queue: mpsc::Sender<Blocks>) {
    for sql in segments {
        let (blocks_tx, blocks_rx) = mpsc::channel(BLOCKS_AHEAD);
        if queue.send(blocks_rx).await.is_err() {
            return;
        }
        if let CopyConn::Second(second) = &mut source {
            second.set_idle(false);
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
        if let CopyConn::Second(second) = &mut source {
            second.set_idle(true);
        }
    }
}

/// How long a stream waits for a second connection before it reads alone.
const SECOND_READER_WAIT: Duration = Duration::from_millis(100);

/// A pooled connection in a transaction that imported a stream's snapshot. Dropped idle, it rolls back and goes
/// back to the pool; dropped while a query may still run (the stream was cancelled), its section is left open,
/// so the pool cancels the query and closes the connection.
pub(crate) struct SecondReader {
    conn: Option<PooledConnection<'static, Manager>>,
    /// Set when no query of the second reader can still be running.
    idle: bool,
}

impl std::fmt::Debug for SecondReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecondReader").finish_non_exhaustive()
    }
}

impl SecondReader {
    pub(crate) fn conn(&self) -> &Conn {
        self.conn.as_ref().expect("present until dropped")
    }

    /// Whether a query may be running: only then does dropping the second reader send a cancel request.
    pub(crate) fn set_idle(&mut self, idle: bool) {
        self.idle = idle;
    }
}

impl Drop for SecondReader {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // a ROLLBACK would queue behind a running COPY: only an idle one is worth keeping
            if self.idle {
                tokio::spawn(async move { rollback(&conn).await });
            }
        }
    }
}

/// Ends the snapshot's transaction and with it the connection's section; a connection that cannot is left in
/// its section, so that the pool discards it rather than hand it to the next user.
async fn rollback(conn: &Conn) {
    match tokio::time::timeout(CLEANUP_TIMEOUT, conn.batch_execute("ROLLBACK")).await {
        Ok(Ok(())) => conn.end_section(),
        Ok(Err(e)) => tracing::debug!(error = %e, "rollback failed"),
        Err(_) => tracing::debug!(timeout = ?CLEANUP_TIMEOUT, "rollback timed out"),
    }
}
