//! The write core of IngestService: validation of every item before anything is written, staging by binary
//! COPY into a temporary table, one keyed `INSERT ... ON CONFLICT DO NOTHING` into the fact table, and the commit
//! before the acknowledgement.
//!
//! A write is one transaction. Items are validated as they arrive and staged in chunks, so a client stream of
//! any length holds at most [`STAGE_ROWS`] rows in the server. The fact tables' triggers then do the rest in the
//! same statement: coverage counts (0002), the watermark in commit order (0003) and the trade aggregates (0006).
//! The advisory lock that serializes fact writers is taken by that one INSERT, so writers stage side by side and
//! queue only for their final statement.
//!
//! Daily partitions are created before staging, on another connection, for the UTC days the items touch: a
//! partition's creation locks its parent exclusively, which must not be held for the rest of a long write. A
//! write that then fails leaves those partitions (empty) behind, and nothing else.

use std::collections::BTreeSet;
use std::pin::pin;

use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::ToSql, types::Type};

use crate::{
    db::{Manager, Pool},
    error::Error,
    partitions,
    proto::{self, Side},
    time,
};

/// Rows validated and held before they are copied to the staging table.
const STAGE_ROWS: usize = 4096;

/// A trade as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeRow {
    pub ts: DateTime<Utc>,
    pub ticker: String,
    pub trade_id: String,
    pub yes_price_micros: i64,
    pub count_centi: i64,
    pub taker_side: i16,
}

/// Checks one trade of a write; `index` counts from the first trade of the whole request.
pub fn validate_trade(index: usize, trade: &proto::Trade) -> Result<TradeRow, Error> {
    let field = |name: &str| format!("trades[{index}].{name}");
    let ticker = text(&trade.market_ticker, &field("market_ticker"))?;
    let trade_id = text(&trade.trade_id, &field("trade_id"))?;
    let ts = match &trade.time {
        Some(t) => time::from_proto(t, &field("time"))?,
        None => return Err(Error::invalid(field("time"), "is required")),
    };
    let yes = trade.yes_price_micros;
    if !(1..=999_999).contains(&yes) {
        return Err(Error::invalid(field("yes_price_micros"), format!("must be between 1 and 999999, got {yes}")));
    }
    let no = trade.no_price_micros;
    if no != 0 && no != 1_000_000 - yes {
        return Err(Error::invalid(
            field("no_price_micros"),
            format!("must be 0 (derived) or 1000000 - yes_price_micros = {}, got {no}", 1_000_000 - yes),
        ));
    }
    if trade.count_centi <= 0 {
        return Err(Error::invalid(field("count_centi"), format!("must be greater than 0, got {}", trade.count_centi)));
    }
    let taker_side = match Side::try_from(trade.taker_side) {
        Ok(Side::Yes) => 1,
        Ok(Side::No) => 2,
        _ => {
            return Err(Error::invalid(
                field("taker_side"),
                format!("must be SIDE_YES (1) or SIDE_NO (2), got {}", trade.taker_side),
            ));
        }
    };
    Ok(TradeRow {
        ts,
        ticker: ticker.to_owned(),
        trade_id: trade_id.to_owned(),
        yes_price_micros: yes,
        count_centi: trade.count_centi,
        taker_side,
    })
}

/// A required text field: not empty, no NUL (PostgreSQL's text cannot hold one), at most 256 bytes.
fn text<'a>(value: &'a str, field: &str) -> Result<&'a str, Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if value.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL"));
    }
    if value.len() > 256 {
        return Err(Error::invalid(field, format!("must be at most 256 bytes, got {}", value.len())));
    }
    Ok(value)
}

/// What a fact write stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub inserted: i64,
    pub duplicates: i64,
    /// The watermark after the commit.
    pub watermark: i64,
}

type Conn = bb8::PooledConnection<'static, Manager>;

/// A trade write in progress: one transaction with a staging table. Dropped before [`commit`](Self::commit)
/// (the client went away, a later item was refused), its connection is closed, which rolls the write back.
pub struct TradeWrite {
    pool: Pool,
    conn: Option<Conn>,
    pending: Vec<TradeRow>,
    /// The UTC days whose partitions this write ensured.
    days: BTreeSet<NaiveDate>,
    staged: i64,
}

impl std::fmt::Debug for TradeWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TradeWrite").field("pending", &self.pending.len()).field("staged", &self.staged).finish()
    }
}

const STAGING: &str = "CREATE TEMPORARY TABLE ingest_trades (
    ts timestamptz NOT NULL,
    ticker text COLLATE \"C\" NOT NULL,
    trade_id text COLLATE \"C\" NOT NULL,
    yes_price_micros bigint NOT NULL,
    count_centi bigint NOT NULL,
    taker_side smallint NOT NULL
) ON COMMIT DROP";

/// In the trades' key order, so that ingest_seq follows it and the index is written in order.
const INSERT: &str = "INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
SELECT ts, ticker, trade_id, yes_price_micros, count_centi, taker_side FROM ingest_trades
 ORDER BY ts, ticker, trade_id
ON CONFLICT DO NOTHING";

impl TradeWrite {
    /// Opens the write's transaction.
    pub async fn begin(pool: &Pool) -> Result<Self, Error> {
        let conn = pool.get_owned().await?;
        let mut write = Self { pool: pool.clone(), conn: None, pending: Vec::new(), days: BTreeSet::new(), staged: 0 };
        conn.batch_execute(&format!("BEGIN; {STAGING}")).await?;
        write.conn = Some(conn);
        Ok(write)
    }

    /// Adds a validated trade.
    pub async fn push(&mut self, row: TradeRow) -> Result<(), Error> {
        self.pending.push(row);
        if self.pending.len() == STAGE_ROWS {
            self.stage().await?;
        }
        Ok(())
    }

    /// Copies the pending rows into the staging table, after creating the partitions of their days.
    async fn stage(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let days: BTreeSet<NaiveDate> =
            self.pending.iter().map(|r| r.ts.date_naive()).filter(|d| !self.days.contains(d)).collect();
        if !days.is_empty() {
            let conn = self.pool.get().await?;
            for day in &days {
                let start = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
                partitions::ensure_range(&**conn, start, start + chrono::Duration::days(1)).await?;
            }
            self.days.extend(days);
        }
        let conn = self.conn.as_ref().expect("open until committed");
        let sql = "COPY ingest_trades FROM STDIN (FORMAT binary)";
        let types = [Type::TIMESTAMPTZ, Type::TEXT, Type::TEXT, Type::INT8, Type::INT8, Type::INT2];
        let mut writer = pin!(BinaryCopyInWriter::new(conn.copy_in(sql).await?, &types));
        for row in &self.pending {
            let values: [&(dyn ToSql + Sync); 6] =
                [&row.ts, &row.ticker, &row.trade_id, &row.yes_price_micros, &row.count_centi, &row.taker_side];
            writer.as_mut().write(&values).await?;
        }
        self.staged += i64::try_from(writer.finish().await?).unwrap_or(i64::MAX);
        self.pending.clear();
        Ok(())
    }

    /// Stores the staged trades (those already stored are skipped) and commits.
    pub async fn commit(mut self) -> Result<Written, Error> {
        self.stage().await?;
        let conn = self.conn.take().expect("open until committed");
        let inserted = if self.staged > 0 { i64::try_from(conn.execute(INSERT, &[]).await?).unwrap_or(0) } else { 0 };
        let watermark: i64 = conn.query_one("SELECT watermark FROM data_version", &[]).await?.get(0);
        conn.batch_execute("COMMIT").await?;
        Ok(Written { inserted, duplicates: self.staged - inserted, watermark })
    }
}

impl Drop for TradeWrite {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // mid-transaction, maybe mid-COPY: close it, and PostgreSQL rolls the write back
            conn.discard();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> proto::Trade {
        proto::Trade {
            trade_id: "t1".into(),
            market_ticker: "KX-A".into(),
            time: Some(prost_types::Timestamp { seconds: 1_767_571_200, nanos: 5000 }),
            yes_price_micros: 290_000,
            no_price_micros: 0,
            count_centi: 1234,
            taker_side: Side::No as i32,
            ingest_seq: 77,
        }
    }

    #[test]
    fn a_good_trade_is_stored_as_sent() {
        let row = validate_trade(0, &good()).expect("valid");
        assert_eq!((row.yes_price_micros, row.count_centi, row.taker_side), (290_000, 1234, 2));
        assert_eq!(row.ts.timestamp_micros(), 1_767_571_200_000_005);
        let explicit_no = proto::Trade { no_price_micros: 710_000, ..good() };
        assert!(validate_trade(0, &explicit_no).is_ok());
    }

    #[test]
    fn every_bad_field_is_named_with_its_index() {
        let cases: Vec<(proto::Trade, &str)> = vec![
            (proto::Trade { market_ticker: String::new(), ..good() }, "market_ticker"),
            (proto::Trade { market_ticker: "A\0B".into(), ..good() }, "market_ticker"),
            (proto::Trade { trade_id: String::new(), ..good() }, "trade_id"),
            (proto::Trade { trade_id: "x".repeat(257), ..good() }, "trade_id"),
            (proto::Trade { time: None, ..good() }, "time"),
            (proto::Trade { time: Some(prost_types::Timestamp { seconds: 0, nanos: 1 }), ..good() }, "time"),
            (proto::Trade { yes_price_micros: 0, ..good() }, "yes_price_micros"),
            (proto::Trade { yes_price_micros: 1_000_000, ..good() }, "yes_price_micros"),
            (proto::Trade { no_price_micros: 700_000, ..good() }, "no_price_micros"),
            (proto::Trade { count_centi: 0, ..good() }, "count_centi"),
            (proto::Trade { count_centi: -5, ..good() }, "count_centi"),
            (proto::Trade { taker_side: 0, ..good() }, "taker_side"),
            (proto::Trade { taker_side: 9, ..good() }, "taker_side"),
        ];
        for (trade, field) in cases {
            let error = validate_trade(7, &trade).expect_err(field).to_string();
            assert!(error.starts_with(&format!("trades[7].{field}: ")), "{field}: {error}");
        }
    }
}
