//! SQL text of the streams' COPY statements, which take no parameters: the values a client chose (the selected
//! markets, a resume position's ticker and trade_id) bound to the transaction and read by the statements, the
//! literals of server-made values (times, watermarks), and the cut of a range into runs of day partitions.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::{error::Error, time};

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

/// Binds a stream's client values to its transaction as transaction-local settings, read back by the COPY
/// statements with `current_setting`: COPY takes no parameters, and a client's string never becomes SQL text.
/// Markets go as PostgreSQL's own text form of the text[] it was bound as, so the round trip is exact whatever
/// the characters. Unset values are bound empty (never read then).
const BIND: &str = "SELECT set_config('kalshi_replay.markets', COALESCE($1::text[], '{}')::text, true), \
     set_config('kalshi_replay.after_ticker', COALESCE($2::text, ''), true), \
     set_config('kalshi_replay.after_trade_id', COALESCE($3::text, ''), true)";

/// The client values a stream's COPY statements read (see [`ticker_filter`] and [`AFTER_KEY`]), bound on every
/// connection that runs them: the snapshot's and the second reader's.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    /// The selected markets; None for every market.
    pub markets: Option<Vec<String>>,
    /// The ticker and trade_id of a resumed trade stream's last trade.
    pub after: Option<(String, String)>,
}

impl Bound {
    /// Sets the values in the transaction open on `client`.
    pub async fn apply(&self, client: &Client) -> Result<(), Error> {
        let (ticker, trade_id) = self.after.as_ref().map(|(t, i)| (t.as_str(), i.as_str())).unzip();
        client.query_one(BIND, &[&self.markets, &ticker, &trade_id]).await?;
        Ok(())
    }
}

/// The condition ` AND <column> ...` that keeps the rows of `markets` (bound by [`Bound`]); empty for all markets
/// (None). One market is an equality, so that PostgreSQL walks the (ticker, ts, trade_id) index in order.
/// Several are a membership test in a set hashed once per statement; written `(... IN (SELECT ...)) IS TRUE` so
/// that the planner keeps it a filter of the ordered scan instead of turning it into a join (which would sort).
/// Not `= ANY(current_setting(...)::text[])`: as a filter that parses the whole list again for every row
/// (measured: 70 s instead of 0.5 s for 300 markets of a million trades).
pub(crate) fn ticker_filter(column: &str, markets: Option<&[String]>) -> String {
    match markets {
        None => String::new(),
        Some([_]) => format!(" AND {column} = (current_setting('kalshi_replay.markets')::text[])[1]"),
        Some(_) => {
            format!(" AND ({column} IN (SELECT unnest(current_setting('kalshi_replay.markets')::text[]))) IS TRUE")
        }
    }
}

/// The ticker and trade_id of a resume position (bound by [`Bound`]), to compare with `(ts, ticker, trade_id)`
/// after the position's time (a server-made literal).
pub(crate) const AFTER_KEY: &str =
    "current_setting('kalshi_replay.after_ticker'), current_setting('kalshi_replay.after_trade_id')";

/// A server-made string (a snapshot id from pg_export_snapshot) as an SQL literal, for the statements that take
/// no parameters. Never for a client's value: those are [`Bound`]. With standard_conforming_strings on (the
/// session sets it), doubling the quotes is the whole escaping.
pub(crate) fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A timestamp as an SQL literal.
pub(crate) fn timestamp_literal(value: DateTime<Utc>) -> String {
    format!("'{}'::timestamptz", value.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn timestamps_are_literals_to_the_microsecond() {
        assert_eq!(literal("00000003-0000001B-1"), "'00000003-0000001B-1'");
        let t = DateTime::from_timestamp(1_767_571_200, 1_000).expect("time");
        assert_eq!(timestamp_literal(t), "'2026-01-05T00:00:00.000001Z'::timestamptz");
    }
}
