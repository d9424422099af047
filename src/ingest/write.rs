//! The write core shared by IngestService and `import`: validation of every item before anything is written,
//! staging by binary COPY into temporary tables, one keyed statement per table, and the commit before the
//! acknowledgement.
//!
//! A [`PendingWrite`] holds one pooled connection. Items are validated into rows (one struct per table) as they arrive
//! and held in a [`RowBuffer`], which copies them to the connection's staging table for that table every
//! [`STAGE_ROWS`] rows, so a write of any length holds at most that many rows per table in the server. Staging
//! runs outside any transaction: only the session's temporary tables change. [`PendingWrite::commit`] then stores
//! everything in one transaction, one statement per table:
//! - facts (trades, order-book snapshots and deltas, lifecycle events): `INSERT ... SELECT ... ORDER BY key ON
//!   CONFLICT DO NOTHING`. Re-sent facts are skipped and counted as duplicates. The fact tables' triggers do the
//!   rest in the same statement: coverage counts (0002), the watermark in commit order (0003) and the trade
//!   aggregates (0006). The advisory lock that serializes fact writers is taken when the stores begin, so writers
//!   stage side by side and queue only for their stores;
//! - revised facts (Kalshi's candles, which Kalshi revises while their period is open): the last sent of each key,
//!   stored as a new version unless the newest stored version has the same values; counted as inserted (a new
//!   key), updated (a revision) or skipped;
//! - reference rows (series, events, markets, settlements): an upsert, last writer wins on `updated_at`. Of the
//!   rows with one key in a request, the latest `updated_at` wins, and the last sent on a tie. A stored row is
//!   replaced only by a strictly newer one whose content differs, so re-sending a row changes nothing.
//!
//! Daily partitions are created while staging, on the write's own connection, each day in a short transaction
//! of its own, for the UTC days the facts touch (0007: without locking out readers). A write never waits for a
//! second connection, and holds no partition lock while it stages. A write that then fails leaves those
//! partitions (empty) behind, and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::pin::pin;

use chrono::NaiveDate;
use tokio_postgres::binary_copy::BinaryCopyInWriter;

use super::tables::{self, Row, Table};
use crate::{
    error::Error,
    proto,
    store::{
        db::{Manager, Pool},
        partitions,
    },
};

/// Rows validated and held per table before they are copied to its staging table.
pub const STAGE_ROWS: usize = 4096;

/// What storing one table's rows did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// Rows newly inserted.
    pub inserted: i64,
    /// Reference rows replaced by newer ones (always 0 for facts).
    pub updated: i64,
    /// Rows sent but not stored: facts already stored (or sent twice), reference rows not newer or not changed.
    pub skipped: i64,
}

impl Stored {
    /// The counts of a fact write.
    pub fn write_counts(self) -> proto::WriteCounts {
        proto::WriteCounts { inserted: self.inserted, duplicates: self.skipped }
    }

    /// The counts of a reference upsert.
    pub fn upsert_counts(self) -> proto::UpsertCounts {
        proto::UpsertCounts { inserted: self.inserted, updated: self.updated, unchanged: self.skipped }
    }
}

/// One line per table of `stored`, as the summaries of `import` and `collect backfill` print them.
pub fn table_lines(stored: &BTreeMap<&'static str, Stored>) -> String {
    stored
        .iter()
        .map(|(table, s)| {
            format!(
                "  {table}: {} inserted, {} updated, {} already stored or unchanged\n",
                s.inserted, s.updated, s.skipped
            )
        })
        .collect()
}

impl std::ops::AddAssign for Stored {
    fn add_assign(&mut self, other: Stored) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.skipped += other.skipped;
    }
}

type Conn = bb8::PooledConnection<'static, Manager>;

/// A write in progress, on one pooled connection. Rows are staged into the connection's own temporary tables
/// (one per table written) as they come, outside any transaction, so that the partitions of new days can be
/// created on the same connection between two stagings, each in a short transaction of its own: a write never
/// waits for a second connection (writers that each held one and waited for another would starve the pool), and
/// never holds a partition's lock for long. Nothing but the temporary tables is touched until the stores, which
/// run in one transaction with the commit.
///
/// The whole write, from the checkout through the COMMIT, is one section of its connection (see
/// [`crate::store::db`]): dropped anywhere before the COMMIT completed (the client went away or its deadline
/// passed, also while the commit waits for the fact-write lock; a later item was refused; a statement failed),
/// the connection is not taken back by the pool but closed after a cancel request, which rolls back the stores,
/// releases the lock and drops the staging tables.
pub struct PendingWrite {
    pool: Pool,
    conn: Option<Conn>,
    /// The UTC days whose partitions this write ensured.
    days: BTreeSet<NaiveDate>,
    /// The tables staged for, in the order of their first rows, with the rows staged so far.
    staged: Vec<(&'static Table, i64)>,
    /// Rows pushed so far, all tables together, and the most one write may hold (max_rows_per_write): one write
    /// is one transaction and its staging tables, which must not grow with whatever a client sends.
    rows: u64,
    max_rows: u64,
    /// Statements run after the stores, in the same transaction (see [`also`](Self::also)).
    also: Vec<(&'static str, Vec<Option<String>>)>,
}

const FACT_WRITE_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('kalshi_replay.fact_writes'))";

impl fmt::Debug for PendingWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let staged: Vec<(&str, i64)> = self.staged.iter().map(|(t, n)| (t.name, *n)).collect();
        f.debug_struct("PendingWrite").field("staged", &staged).finish()
    }
}

/// What a committed write stored, per table, and the watermark after the commit.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    pub watermark: i64,
    pub stored: BTreeMap<&'static str, Stored>,
    /// Distinct markets of the write's facts that had no reference row at the commit.
    pub unreferenced: i64,
}

impl Committed {
    /// What was stored of rows `R`.
    pub fn of<R: Row>(&self) -> Stored {
        self.stored.get(R::TABLE.name).copied().unwrap_or_default()
    }
}

impl PendingWrite {
    /// A write to `pool` of at most `max_rows` rows. It takes its connection when it first stages rows, so a
    /// client stream that sends little, or slowly, holds no connection until then.
    pub fn new(pool: &Pool, max_rows: u64) -> Self {
        Self {
            pool: pool.clone(),
            conn: None,
            days: BTreeSet::new(),
            staged: Vec::new(),
            rows: 0,
            max_rows,
            also: Vec::new(),
        }
    }

    /// Runs `statement` with text `params` (cast in the SQL) in the write's transaction after the stores: it
    /// commits with the rows or not at all, as the collector's position does with the page it read.
    pub fn also(&mut self, statement: &'static str, params: Vec<Option<String>>) {
        self.also.push((statement, params));
    }

    /// Counts one more row; past max_rows the write is refused (TooLarge, which the caller names with the
    /// item's position), and, dropped uncommitted, writes nothing.
    fn admit(&mut self) -> Result<(), Error> {
        if self.rows >= self.max_rows {
            return Err(Error::TooLarge {
                field: String::new(),
                reason: format!(
                    "one write holds at most {} items (max_rows_per_write); send the rest in another write",
                    self.max_rows
                ),
            });
        }
        self.rows += 1;
        Ok(())
    }

    /// The write's connection.
    async fn conn(&mut self) -> Result<&Conn, Error> {
        if self.conn.is_none() {
            let conn = self.pool.get_owned().await?;
            // ended only by the COMMIT (see `commit`)
            conn.begin_section();
            self.conn = Some(conn);
        }
        Ok(self.conn.as_ref().expect("taken above"))
    }

    /// Copies `rows` into their staging table (created on first use) and empties it, after creating the
    /// partitions of their days.
    async fn stage<R: Row>(&mut self, rows: &mut Vec<R>) -> Result<(), Error> {
        let table = R::TABLE;
        if rows.is_empty() {
            return Ok(());
        }
        let days: BTreeSet<NaiveDate> = rows.iter().filter_map(R::day).filter(|d| !self.days.contains(d)).collect();
        for day in &days {
            let start = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
            partitions::ensure_range(&***self.conn().await?, start, start + chrono::Duration::days(1)).await?;
        }
        self.days.extend(days);
        let slot = match self.staged.iter().position(|(t, _)| std::ptr::eq(*t, table)) {
            Some(slot) => slot,
            None => {
                self.conn().await?.batch_execute(&table.create_sql()).await?;
                self.staged.push((table, 0));
                self.staged.len() - 1
            }
        };
        let staged = self.staged[slot].1;
        let numbered = table.kind.numbered();
        let sink = self.conn().await?.copy_in(&table.copy_sql()).await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &table.copy_types()));
        for (n, row) in (staged..).zip(rows.iter()) {
            let mut values = row.values();
            if numbered {
                values.insert(0, &n);
            }
            writer.as_mut().write(&values).await?;
        }
        self.staged[slot].1 += i64::try_from(writer.finish().await?).unwrap_or(i64::MAX);
        rows.clear();
        Ok(())
    }

    /// Stores everything staged, one statement per table in the order of their first rows, in one transaction,
    /// commits, and drops the staging tables.
    pub async fn commit(mut self) -> Result<Committed, Error> {
        const WATERMARK: &str = "SELECT watermark FROM data_version";
        if self.conn.is_none() && !self.also.is_empty() {
            // no rows, but statements to commit: they need the transaction all the same
            self.conn().await?;
        }
        let Some(conn) = self.conn.take() else {
            // nothing was staged: nothing to store
            let watermark = self.pool.get().await?.query_one(WATERMARK, &[]).await?.get(0);
            return Ok(Committed { watermark, stored: BTreeMap::new(), unreferenced: 0 });
        };
        // on an error, or dropped at an await, the connection leaves the pool closed (see the type's doc)
        conn.batch_execute("BEGIN").await?;
        if self.staged.iter().any(|(t, _)| t.kind.fact()) {
            // the lock the fact tables' trigger takes (0003), taken first so that the statements' snapshots
            // see every write committed before: SAME_TRADE's check must not miss a concurrent one
            conn.batch_execute(FACT_WRITE_LOCK).await?;
        }
        let mut stored = BTreeMap::new();
        for (table, staged) in &self.staged {
            let row = conn.query_one(&table.store_sql(), &[]).await?;
            let (inserted, updated): (i64, i64) = (row.get(0), row.get(1));
            stored.insert(table.name, Stored { inserted, updated, skipped: staged - inserted - updated });
        }
        let watermark: i64 = conn.query_one(WATERMARK, &[]).await?.get(0);
        let unreferenced = match tables::unreferenced_sql(self.staged.iter().map(|(t, _)| *t)) {
            Some(sql) => conn.query_one(&sql, &[]).await?.get(0),
            None => 0,
        };
        for (statement, params) in &self.also {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
            conn.execute(*statement, &params).await?;
        }
        let staging: Vec<String> = self.staged.iter().map(|(t, _)| t.staging()).collect();
        let drop = if staging.is_empty() { String::new() } else { format!("DROP TABLE {}; ", staging.join(", ")) };
        conn.batch_execute(&format!("{drop}COMMIT")).await?;
        // committed, staging tables gone: the session is clean again
        conn.end_section();
        Ok(Committed { watermark, stored, unreferenced })
    }
}

/// The validated rows of one table in a write, staged every [`STAGE_ROWS`] rows.
#[derive(Debug)]
pub struct RowBuffer<R> {
    pending: Vec<R>,
}

impl<R: Row> Default for RowBuffer<R> {
    fn default() -> Self {
        Self { pending: Vec::new() }
    }
}

impl<R: Row> RowBuffer<R> {
    /// Adds a validated row.
    pub async fn push(&mut self, write: &mut PendingWrite, row: R) -> Result<(), Error> {
        write.admit()?;
        self.pending.push(row);
        if self.pending.len() == STAGE_ROWS {
            write.stage(&mut self.pending).await?;
        }
        Ok(())
    }

    /// Stages every row pushed, for the write's commit to store.
    pub async fn finish(mut self, write: &mut PendingWrite) -> Result<(), Error> {
        write.stage(&mut self.pending).await
    }
}
