//! The tables a write stores into, described once each (columns with their SQL and COPY types, key, fact or
//! reference), and the SQL generated from a description: the staging table, its binary COPY, and the one
//! statement that stores the staged rows.

use chrono::NaiveDate;
use tokio_postgres::types::{ToSql, Type};

use super::validate::{
    DeltaRow, EventRow, KalshiCandleRow, LifecycleRow, MarketRow, SeriesRow, SettlementRow, SnapshotRow, TradeRow,
};

/// How a table's staged rows are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Keyed facts: insert, skip what is stored.
    Fact,
    /// Reference rows: upsert, last writer wins on updated_at.
    Reference,
    /// Facts that the source revises (Kalshi's candles): a row whose values differ from the newest stored version
    /// of its key is stored as a new version (its own ingest_seq); an unchanged one is skipped.
    Revised,
}

impl Kind {
    /// Whether the table holds facts (partitioned, ingest_seq, the fact writers' lock).
    pub(super) fn fact(self) -> bool {
        matches!(self, Kind::Fact | Kind::Revised)
    }

    /// Whether staged rows carry their position in the write (`n`), so that the last sent of a key wins.
    pub(super) fn numbered(self) -> bool {
        matches!(self, Kind::Reference | Kind::Revised)
    }
}

/// One staged column: its name, SQL type and binary COPY type.
#[derive(Debug)]
struct Column(&'static str, &'static str, Type);

const TEXT_C: &str = "text COLLATE \"C\"";
const TS: Type = Type::TIMESTAMPTZ;

/// A table a write stores rows into.
#[derive(Debug)]
pub struct Table {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
    key: &'static str,
    /// A join and condition on the staged rows `s` that skips more duplicates than the key (facts; empty for none).
    unless: &'static str,
    columns: &'static [Column],
}

macro_rules! columns {
    ($(($name:literal, $sql:expr, $ty:expr)),* $(,)?) => { &[$(Column($name, $sql, $ty)),*] };
}

/// A trade whose id is stored for its market within the same UTC second, at another time, is the same trade
/// recorded at another precision: Kalshi's REST API gives microseconds, its WebSocket milliseconds (`ts_ms`) or
/// seconds (`ts`), and each is the other truncated. The first stored is kept. One index range of one market's
/// second (trades_ticker_ts) per staged trade: the LATERAL ... LIMIT 1 keeps it a nested loop (an anti-join
/// could hash the whole table), and its ts bounds prune the partitions at run time.
const SAME_TRADE: &str = "LEFT JOIN LATERAL (SELECT true AS found FROM trades t \
     WHERE t.ticker = s.ticker AND t.trade_id = s.trade_id AND t.ts >= date_trunc('second', s.ts, 'UTC') \
     AND t.ts < date_trunc('second', s.ts, 'UTC') + interval '1 second' LIMIT 1) same ON true \
     WHERE same.found IS NULL";

const TRADES: Table = Table {
    name: "trades",
    kind: Kind::Fact,
    key: "ts, ticker, trade_id",
    unless: SAME_TRADE,
    columns: columns![
        ("ts", "timestamptz", TS),
        ("ticker", TEXT_C, Type::TEXT),
        ("trade_id", TEXT_C, Type::TEXT),
        ("yes_price_micros", "bigint", Type::INT8),
        ("count_centi", "bigint", Type::INT8),
        ("taker_side", "smallint", Type::INT2),
    ],
};

const SNAPSHOTS: Table = Table {
    name: "orderbook_snapshots",
    kind: Kind::Fact,
    key: "ts, ticker, sid, seq",
    unless: "",
    columns: columns![
        ("ts", "timestamptz", TS),
        ("ticker", TEXT_C, Type::TEXT),
        ("sid", "bigint", Type::INT8),
        ("seq", "bigint", Type::INT8),
        ("yes_price_micros", "bigint[]", Type::INT8_ARRAY),
        ("yes_size_centi", "bigint[]", Type::INT8_ARRAY),
        ("no_price_micros", "bigint[]", Type::INT8_ARRAY),
        ("no_size_centi", "bigint[]", Type::INT8_ARRAY),
    ],
};

const DELTAS: Table = Table {
    name: "orderbook_deltas",
    kind: Kind::Fact,
    key: "ts, ticker, sid, seq",
    unless: "",
    columns: columns![
        ("ts", "timestamptz", TS),
        ("ticker", TEXT_C, Type::TEXT),
        ("sid", "bigint", Type::INT8),
        ("seq", "bigint", Type::INT8),
        ("side", "smallint", Type::INT2),
        ("price_micros", "bigint", Type::INT8),
        ("delta_centi", "bigint", Type::INT8),
    ],
};

const LIFECYCLE: Table = Table {
    name: "market_lifecycle",
    kind: Kind::Fact,
    key: "ts, ticker, event_type",
    unless: "",
    columns: columns![
        ("ts", "timestamptz", TS),
        ("ticker", TEXT_C, Type::TEXT),
        ("event_type", "smallint", Type::INT2),
        ("open_time", "timestamptz", TS),
        ("close_time", "timestamptz", TS),
        ("result", "smallint", Type::INT2),
        ("settlement_value_micros", "bigint", Type::INT8),
        ("determined_time", "timestamptz", TS),
        ("settled_time", "timestamptz", TS),
    ],
};

/// Kalshi's candles (migration 0010): versions of (period_minutes, end_ts, ticker), the newest wins.
const KALSHI_CANDLES: Table = Table {
    name: "kalshi_candles",
    kind: Kind::Revised,
    key: "period_minutes, end_ts, ticker",
    unless: "",
    columns: columns![
        ("end_ts", "timestamptz", TS),
        ("ticker", TEXT_C, Type::TEXT),
        ("period_minutes", "smallint", Type::INT2),
        ("yes_bid_open_micros", "bigint", Type::INT8),
        ("yes_bid_low_micros", "bigint", Type::INT8),
        ("yes_bid_high_micros", "bigint", Type::INT8),
        ("yes_bid_close_micros", "bigint", Type::INT8),
        ("yes_ask_open_micros", "bigint", Type::INT8),
        ("yes_ask_low_micros", "bigint", Type::INT8),
        ("yes_ask_high_micros", "bigint", Type::INT8),
        ("yes_ask_close_micros", "bigint", Type::INT8),
        ("price_open_micros", "bigint", Type::INT8),
        ("price_low_micros", "bigint", Type::INT8),
        ("price_high_micros", "bigint", Type::INT8),
        ("price_close_micros", "bigint", Type::INT8),
        ("price_mean_micros", "bigint", Type::INT8),
        ("price_previous_micros", "bigint", Type::INT8),
        ("volume_centi", "bigint", Type::INT8),
        ("open_interest_centi", "bigint", Type::INT8),
    ],
};

const SERIES: Table = Table {
    name: "series",
    kind: Kind::Reference,
    key: "ticker",
    unless: "",
    columns: columns![
        ("ticker", TEXT_C, Type::TEXT),
        ("title", "text", Type::TEXT),
        ("category", "text", Type::TEXT),
        ("tags", "text[]", Type::TEXT_ARRAY),
        ("frequency", "text", Type::TEXT),
        ("contract_url", "text", Type::TEXT),
        ("fee_type", "text", Type::TEXT),
        ("updated_at", "timestamptz", TS),
    ],
};

const EVENTS: Table = Table {
    name: "events",
    kind: Kind::Reference,
    key: "event_ticker",
    unless: "",
    columns: columns![
        ("event_ticker", TEXT_C, Type::TEXT),
        ("series_ticker", TEXT_C, Type::TEXT),
        ("title", "text", Type::TEXT),
        ("sub_title", "text", Type::TEXT),
        ("category", "text", Type::TEXT),
        ("mutually_exclusive", "boolean", Type::BOOL),
        ("strike_date", "timestamptz", TS),
        ("strike_period", "text", Type::TEXT),
        ("updated_at", "timestamptz", TS),
    ],
};

const MARKETS: Table = Table {
    name: "markets",
    kind: Kind::Reference,
    key: "ticker",
    unless: "",
    columns: columns![
        ("ticker", TEXT_C, Type::TEXT),
        ("event_ticker", TEXT_C, Type::TEXT),
        ("series_ticker", TEXT_C, Type::TEXT),
        ("market_type", "smallint", Type::INT2),
        ("title", "text", Type::TEXT),
        ("yes_sub_title", "text", Type::TEXT),
        ("no_sub_title", "text", Type::TEXT),
        ("status", "smallint", Type::INT2),
        ("open_time", "timestamptz", TS),
        ("close_time", "timestamptz", TS),
        ("expected_expiration_time", "timestamptz", TS),
        ("latest_expiration_time", "timestamptz", TS),
        ("settlement_timer_seconds", "integer", Type::INT4),
        ("can_close_early", "boolean", Type::BOOL),
        ("strike_type", "text", Type::TEXT),
        ("floor_strike", "numeric", Type::NUMERIC),
        ("cap_strike", "numeric", Type::NUMERIC),
        ("rules_primary", "text", Type::TEXT),
        ("rules_secondary", "text", Type::TEXT),
        ("updated_at", "timestamptz", TS),
    ],
};

const SETTLEMENTS: Table = Table {
    name: "settlements",
    kind: Kind::Reference,
    key: "market_ticker",
    unless: "",
    columns: columns![
        ("market_ticker", TEXT_C, Type::TEXT),
        ("event_ticker", TEXT_C, Type::TEXT),
        ("series_ticker", TEXT_C, Type::TEXT),
        ("result", "smallint", Type::INT2),
        ("settlement_value_micros", "bigint", Type::INT8),
        ("determined_time", "timestamptz", TS),
        ("settled_time", "timestamptz", TS),
        ("updated_at", "timestamptz", TS),
    ],
};

impl Table {
    pub(super) fn staging(&self) -> String {
        format!("ingest_{}", self.name)
    }

    fn names(&self, prefix: &str) -> String {
        self.columns.iter().map(|c| format!("{prefix}{}", c.0)).collect::<Vec<_>>().join(", ")
    }

    /// The staging table: the columns, plus a reference row's position in the request (`n`, for ties).
    pub(super) fn create_sql(&self) -> String {
        let n = if self.kind.numbered() { "n bigint NOT NULL, " } else { "" };
        let columns: Vec<String> = self.columns.iter().map(|c| format!("{} {}", c.0, c.1)).collect();
        format!("CREATE TEMPORARY TABLE {} ({n}{})", self.staging(), columns.join(", "))
    }

    pub(super) fn copy_sql(&self) -> String {
        format!("COPY {} FROM STDIN (FORMAT binary)", self.staging())
    }

    pub(super) fn copy_types(&self) -> Vec<Type> {
        let n = self.kind.numbered().then_some(Type::INT8);
        n.into_iter().chain(self.columns.iter().map(|c| c.2.clone())).collect()
    }

    /// The one statement that stores the staged rows; it returns (inserted, updated).
    pub(super) fn store_sql(&self) -> String {
        let (name, staging, key, columns) = (self.name, self.staging(), self.key, self.names(""));
        match self.kind {
            // in key order, so that ingest_seq follows it and the indexes are written in order
            Kind::Fact => {
                let unless = self.unless;
                format!(
                    "WITH stored AS (INSERT INTO {name} ({columns}) SELECT {} FROM {staging} s {unless} \
                     ORDER BY {} ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*), 0::bigint FROM stored",
                    self.names("s."),
                    key.split(", ").map(|k| format!("s.{k}")).collect::<Vec<_>>().join(", "),
                )
            }
            // the last sent of each key, stored unless the newest stored version of the key has the same values (a
            // one-row look-up of kalshi_candles_ticker per staged row); counted as new keys and revised ones
            Kind::Revised => {
                let keys: Vec<&str> = key.split(", ").collect();
                let values: Vec<&str> = self.columns.iter().map(|c| c.0).filter(|c| !keys.contains(c)).collect();
                let old: Vec<String> = values.iter().map(|c| format!("t.{c}")).collect();
                let new: Vec<String> = values.iter().map(|c| format!("s.{c}")).collect();
                let matching: Vec<String> = keys.iter().map(|k| format!("t.{k} = s.{k}")).collect();
                format!(
                    "WITH staged AS (SELECT DISTINCT ON ({key}) * FROM {staging} ORDER BY {key}, n DESC), \
                     compared AS (SELECT s.*, newest.same FROM staged s LEFT JOIN LATERAL \
                     (SELECT ({}) IS NOT DISTINCT FROM ({}) AS same FROM {name} t WHERE {} \
                     ORDER BY t.ingest_seq DESC LIMIT 1) newest ON true), \
                     stored AS (INSERT INTO {name} ({columns}) SELECT {columns} FROM compared \
                     WHERE same IS NOT TRUE ORDER BY {key} RETURNING 1) \
                     SELECT count(*) FILTER (WHERE same IS NULL), count(*) FILTER (WHERE NOT same) FROM compared",
                    old.join(", "),
                    new.join(", "),
                    matching.join(" AND "),
                )
            }
            Kind::Reference => {
                let keys: Vec<&str> = key.split(", ").collect();
                let values: Vec<&str> =
                    self.columns.iter().map(|c| c.0).filter(|c| !keys.contains(c) && *c != "updated_at").collect();
                let set: Vec<String> =
                    values.iter().chain(["updated_at"].iter()).map(|c| format!("{c} = EXCLUDED.{c}")).collect();
                let old: Vec<String> = values.iter().map(|c| format!("t.{c}")).collect();
                let new: Vec<String> = values.iter().map(|c| format!("EXCLUDED.{c}")).collect();
                format!(
                    "WITH stored AS (INSERT INTO {name} AS t ({columns}) \
                     SELECT DISTINCT ON ({key}) {columns} FROM {staging} ORDER BY {key}, updated_at DESC, n DESC \
                     ON CONFLICT ({key}) DO UPDATE SET {} \
                     WHERE t.updated_at < EXCLUDED.updated_at AND ({}) IS DISTINCT FROM ({}) \
                     RETURNING xmax = 0 AS inserted) \
                     SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM stored",
                    set.join(", "),
                    old.join(", "),
                    new.join(", "),
                )
            }
        }
    }
}

/// The number of distinct markets of the staged facts of `tables` that have no reference row, counted in the
/// write's transaction; None when none of them holds facts. Their facts are stored all the same (a collector may
/// record the WebSocket before it fetches the markets) and read by their market ticker; the answer tells the
/// client how many reference rows it still owes.
pub(super) fn unreferenced_sql<'a>(tables: impl IntoIterator<Item = &'a Table>) -> Option<String> {
    let staged: Vec<String> =
        tables.into_iter().filter(|t| t.kind.fact()).map(|t| format!("SELECT ticker FROM {}", t.staging())).collect();
    (!staged.is_empty()).then(|| {
        format!(
            "SELECT count(DISTINCT ticker) FROM ({}) s \
             WHERE NOT EXISTS (SELECT 1 FROM markets m WHERE m.ticker = s.ticker)",
            staged.join(" UNION ALL ")
        )
    })
}

/// A row of one table.
pub trait Row: Send + Sync {
    /// The table it goes to.
    const TABLE: &'static Table;
    /// Its values, in the table's column order.
    fn values(&self) -> Vec<&(dyn ToSql + Sync)>;
    /// The UTC day of a fact, whose partition must exist.
    fn day(&self) -> Option<NaiveDate> {
        None
    }
}

impl Row for TradeRow {
    const TABLE: &'static Table = &TRADES;
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.ts, &self.ticker, &self.trade_id, &self.yes_price_micros, &self.count_centi, &self.taker_side]
    }
    fn day(&self) -> Option<NaiveDate> {
        Some(self.ts.date_naive())
    }
}

impl Row for SnapshotRow {
    const TABLE: &'static Table = &SNAPSHOTS;
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.ts,
            &self.ticker,
            &self.sid,
            &self.seq,
            &self.yes_price_micros,
            &self.yes_size_centi,
            &self.no_price_micros,
            &self.no_size_centi,
        ]
    }
    fn day(&self) -> Option<NaiveDate> {
        Some(self.ts.date_naive())
    }
}

impl Row for DeltaRow {
    const TABLE: &'static Table = &DELTAS;
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.ts, &self.ticker, &self.sid, &self.seq, &self.side, &self.price_micros, &self.delta_centi]
    }
    fn day(&self) -> Option<NaiveDate> {
        Some(self.ts.date_naive())
    }
}

impl Row for LifecycleRow {
    const TABLE: &'static Table = &LIFECYCLE;
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.ts,
            &self.ticker,
            &self.event_type,
            &self.open_time,
            &self.close_time,
            &self.result,
            &self.settlement_value_micros,
            &self.determined_time,
            &self.settled_time,
        ]
    }
    fn day(&self) -> Option<NaiveDate> {
        Some(self.ts.date_naive())
    }
}

impl Row for KalshiCandleRow {
    const TABLE: &'static Table = &KALSHI_CANDLES;
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut values: Vec<&(dyn ToSql + Sync)> = vec![&self.end_ts, &self.ticker, &self.period_minutes];
        values.extend(self.yes_bid.iter().map(|v| v as &(dyn ToSql + Sync)));
        values.extend(self.yes_ask.iter().map(|v| v as &(dyn ToSql + Sync)));
        values.extend(self.price.iter().map(|v| v as &(dyn ToSql + Sync)));
        values.push(&self.volume_centi);
        values.push(&self.open_interest_centi);
        values
    }
    fn day(&self) -> Option<NaiveDate> {
        Some(self.end_ts.date_naive())
    }
}

impl Row for SeriesRow {
    const TABLE: &'static Table = &SERIES;
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.ticker,
            &self.title,
            &self.category,
            &self.tags,
            &self.frequency,
            &self.contract_url,
            &self.fee_type,
            &self.updated_at,
        ]
    }
}

impl Row for EventRow {
    const TABLE: &'static Table = &EVENTS;
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.event_ticker,
            &self.series_ticker,
            &self.title,
            &self.sub_title,
            &self.category,
            &self.mutually_exclusive,
            &self.strike_date,
            &self.strike_period,
            &self.updated_at,
        ]
    }
}

impl Row for MarketRow {
    const TABLE: &'static Table = &MARKETS;
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.ticker,
            &self.event_ticker,
            &self.series_ticker,
            &self.market_type,
            &self.title,
            &self.yes_sub_title,
            &self.no_sub_title,
            &self.status,
            &self.open_time,
            &self.close_time,
            &self.expected_expiration_time,
            &self.latest_expiration_time,
            &self.settlement_timer_seconds,
            &self.can_close_early,
            &self.strike_type,
            &self.floor_strike,
            &self.cap_strike,
            &self.rules_primary,
            &self.rules_secondary,
            &self.updated_at,
        ]
    }
}

impl Row for SettlementRow {
    const TABLE: &'static Table = &SETTLEMENTS;
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.market_ticker,
            &self.event_ticker,
            &self.series_ticker,
            &self.result,
            &self.settlement_value_micros,
            &self.determined_time,
            &self.settled_time,
            &self.updated_at,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_statements_name_every_column() {
        let sql = MARKETS.store_sql();
        assert!(sql.contains("ON CONFLICT (ticker) DO UPDATE SET event_ticker = EXCLUDED.event_ticker"), "{sql}");
        assert!(sql.contains("updated_at = EXCLUDED.updated_at WHERE t.updated_at < EXCLUDED.updated_at"), "{sql}");
        assert!(!sql.contains("t.ticker"), "the key is not compared: {sql}");
        assert!(TRADES.store_sql().contains("ORDER BY s.ts, s.ticker, s.trade_id ON CONFLICT DO NOTHING"));
        assert_eq!(TRADES.copy_types().len(), TRADES.columns.len());
        assert_eq!(SERIES.copy_types().len(), SERIES.columns.len() + 1);
        let unreferenced = unreferenced_sql([&TRADES, &SERIES, &DELTAS]).expect("facts");
        assert!(
            unreferenced
                .contains("SELECT ticker FROM ingest_trades UNION ALL SELECT ticker FROM ingest_orderbook_deltas) s")
        );
        assert_eq!(unreferenced_sql([&MARKETS]), None);
        let candles = KALSHI_CANDLES.store_sql();
        assert!(candles.contains("SELECT DISTINCT ON (period_minutes, end_ts, ticker) * FROM ingest_kalshi_candles"));
        assert!(candles.contains("ORDER BY t.ingest_seq DESC LIMIT 1"), "the newest version: {candles}");
        assert!(candles.contains("WHERE same IS NOT TRUE"), "{candles}");
        assert!(!candles.contains("t.ticker) IS NOT DISTINCT"), "the key is not compared: {candles}");
        assert_eq!(KALSHI_CANDLES.copy_types().len(), KALSHI_CANDLES.columns.len() + 1, "with n");
    }
}
