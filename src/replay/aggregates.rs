//! Trade aggregates kept at write time, and how a candle stream reads them.
//!
//! migrations/0006 keeps, in the writer's transaction, one row per market and UTC minute (`trade_minutes`) and
//! per market and UTC day (`trade_days`): first and last trade (with their (ts, trade_id) keys, so that late and
//! out-of-order trades merge in their place), high, low, volume, count, notional and the highest `ingest_seq`.
//!
//! StreamCandles cuts its range into [`Piece`]s with [`plan`]: the aligned runs of whole buckets of the largest
//! [`Level`] that tiles the interval's periods, then of the smaller one, and the ragged ends (a range need not
//! start on a minute) from the trades themselves. Every piece reads rows in (time, ticker) order, so the pieces in
//! sequence feed the candle fold in the order it needs: within a market, in time.
//!
//! A stream pinned to a watermark below a bucket's highest `ingest_seq` (trades arrived later into that bucket)
//! reads that bucket's trades at or below the watermark instead, in the same statement: what it sees is exactly
//! what the trades at its watermark imply.

use chrono::{DateTime, Utc};

use super::{
    ohlcv::{Part, Totals},
    sql,
};
use crate::{error::Error, store::copy};

/// A bucket width that aggregates are kept at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Minute,
    Day,
}

impl Level {
    pub(crate) const fn micros(self) -> i64 {
        match self {
            Self::Minute => 60_000_000,
            Self::Day => 86_400_000_000,
        }
    }

    const fn table(self) -> &'static str {
        match self {
            Self::Minute => "trade_minutes",
            Self::Day => "trade_days",
        }
    }

    const fn sql_width(self) -> &'static str {
        match self {
            Self::Minute => "interval '1 minute'",
            Self::Day => "interval '1 day'",
        }
    }

    /// The levels whose buckets tile every period of `interval_micros` (aligned to UTC midnight) and that are
    /// worth reading for `markets` (all when None): largest first. trade_minutes has no index by market, so one
    /// market reads its minutes from its trades (through trades' index by market) rather than scan every market's
    /// minutes; several markets scan fewer minutes than trades either way.
    pub(crate) fn tiling(interval_micros: i64, markets: Option<&[String]>) -> Vec<Self> {
        let one_market = markets.is_some_and(|m| m.len() == 1);
        [Self::Day, Self::Minute]
            .into_iter()
            .filter(|l| interval_micros % l.micros() == 0 && !(one_market && *l == Self::Minute))
            .collect()
    }
}

/// A part of a range, read from one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// The trades of [from, to).
    Trades { from: i64, to: i64 },
    /// The buckets of `level` that start in [from, to), both aligned to the level.
    Buckets { level: Level, from: i64, to: i64 },
}

/// [from, to) as pieces in time order: whole buckets of the largest level that fits, the rest of each end from the
/// next level down, and from the trades at the bottom. Empty pieces are left out.
pub(crate) fn plan(from: i64, to: i64, levels: &[Level]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    cut(from, to, levels, &mut pieces);
    pieces
}

fn cut(from: i64, to: i64, levels: &[Level], pieces: &mut Vec<Piece>) {
    if from >= to {
        return;
    }
    let Some((&level, smaller)) = levels.split_first() else {
        pieces.push(Piece::Trades { from, to });
        return;
    };
    let width = level.micros();
    let first = from.div_euclid(width) * width + if from.rem_euclid(width) == 0 { 0 } else { width };
    let last = to.div_euclid(width) * width;
    if first >= last {
        cut(from, to, smaller, pieces);
        return;
    }
    cut(from, first, smaller, pieces);
    pieces.push(Piece::Buckets { level, from: first, to: last });
    cut(last, to, smaller, pieces);
}

/// The columns of a bucket segment, in order: what [`parse`] reads.
const COLUMNS: &str = "bucket, ticker, ''::text COLLATE \"C\", open_micros, high_micros, low_micros, close_micros, volume_centi, \
     trade_count, notional::text";

/// The SELECT of the buckets of `level` that start in [from, to), of `markets` (all when None), in (bucket,
/// ticker) order. Pinned to `watermark`, a bucket holding a later trade is replaced by its trades at or below the
/// watermark, each as a one-trade aggregate at its own time (ordered by ticker and trade_id among equal times).
/// The markets are read from the transaction ([`sql::Bound`]), never inlined.
pub(crate) fn select_sql(
    level: Level,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    markets: Option<&[String]>,
    watermark: Option<i64>,
) -> String {
    let table = level.table();
    let range = format!(
        "a.bucket >= {} AND a.bucket < {}{}",
        sql::timestamp_literal(from),
        sql::timestamp_literal(to),
        sql::ticker_filter("a.ticker", markets)
    );
    let Some(watermark) = watermark else {
        return format!("SELECT {COLUMNS} FROM {table} a WHERE {range} ORDER BY a.bucket, a.ticker");
    };
    format!(
        "SELECT {COLUMNS} FROM {table} a WHERE {range} AND a.max_ingest_seq <= {watermark} \
         UNION ALL \
         SELECT t.ts, t.ticker, t.trade_id, t.yes_price_micros, t.yes_price_micros, t.yes_price_micros, \
                t.yes_price_micros, t.count_centi, 1, (t.yes_price_micros::numeric * t.count_centi)::text \
           FROM {table} a JOIN trades t \
             ON t.ticker = a.ticker AND t.ts >= a.bucket AND t.ts < a.bucket + {width} \
          WHERE {range} AND a.max_ingest_seq > {watermark} AND t.ingest_seq <= {watermark} \
            AND t.ts >= {from} AND t.ts < {to} \
         ORDER BY 1, 2, 3",
        width = level.sql_width(),
        from = sql::timestamp_literal(from),
        to = sql::timestamp_literal(to),
    )
}

/// The aggregate of one COPY tuple (columns as in [`select_sql`]).
pub(crate) fn parse<'a>(reader: &'a copy::Reader, tuple: &copy::Tuple<10>) -> Result<Part<'a>, Error> {
    let notional = copy::text(reader.field(tuple, 9)?)?;
    let totals = Totals {
        open: copy::int8(reader.field(tuple, 3)?)?,
        high: copy::int8(reader.field(tuple, 4)?)?,
        low: copy::int8(reader.field(tuple, 5)?)?,
        close: copy::int8(reader.field(tuple, 6)?)?,
        volume: copy::int8(reader.field(tuple, 7)?)?,
        trades: copy::int8(reader.field(tuple, 8)?)?,
        notional: notional
            .parse()
            .map_err(|_| Error::Malformed(format!("a bucket's notional is not a whole number: {notional:?}")))?,
    };
    Ok(Part {
        ts: copy::timestamp_micros(reader.field(tuple, 0)?)?,
        ticker: copy::text(reader.field(tuple, 1)?)?,
        totals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;
    const DAY: i64 = 86_400_000_000;

    #[test]
    fn levels_tile_the_intervals_they_divide() {
        assert_eq!(Level::tiling(DAY, None), [Level::Day, Level::Minute]);
        assert_eq!(Level::tiling(2 * 3600 * 1_000_000, None), [Level::Minute]);
        assert_eq!(Level::tiling(90 * 1_000_000, None), []);
        assert_eq!(Level::tiling(1_000_000, None), []);
        let (one, two) = (["A".to_owned()], ["A".to_owned(), "B".to_owned()]);
        assert_eq!(Level::tiling(DAY, Some(&one)), [Level::Day], "one market: its trades, not every minute");
        assert_eq!(Level::tiling(DAY, Some(&two)), [Level::Day, Level::Minute]);
    }

    #[test]
    fn a_range_is_cut_into_whole_days_whole_minutes_and_trades() {
        let levels = [Level::Day, Level::Minute];
        let (from, to) = (DAY + 5 * MIN + 7, 4 * DAY + 3 * MIN + 1);
        assert_eq!(
            plan(from, to, &levels),
            [
                Piece::Trades { from, to: DAY + 6 * MIN },
                Piece::Buckets { level: Level::Minute, from: DAY + 6 * MIN, to: 2 * DAY },
                Piece::Buckets { level: Level::Day, from: 2 * DAY, to: 4 * DAY },
                Piece::Buckets { level: Level::Minute, from: 4 * DAY, to: 4 * DAY + 3 * MIN },
                Piece::Trades { from: 4 * DAY + 3 * MIN, to },
            ]
        );
        // aligned ends leave no ragged pieces; a range inside one minute is trades only
        assert_eq!(plan(DAY, 3 * DAY, &levels), [Piece::Buckets { level: Level::Day, from: DAY, to: 3 * DAY }]);
        assert_eq!(plan(MIN + 1, 2 * MIN - 1, &levels), [Piece::Trades { from: MIN + 1, to: 2 * MIN - 1 }]);
        assert_eq!(plan(5, 5, &levels), []);
        // no level: the trades of the whole range
        assert_eq!(plan(from, to, &[]), [Piece::Trades { from, to }]);
        // before the epoch too
        assert_eq!(
            plan(-DAY - 1, 0, &levels),
            [Piece::Trades { from: -DAY - 1, to: -DAY }, Piece::Buckets { level: Level::Day, from: -DAY, to: 0 }]
        );
    }
}
