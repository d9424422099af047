//! SQL text of the streams' COPY statements, which take no parameters: literals, the market filter, and the cut
//! of a range into runs of day partitions.

use chrono::{DateTime, Utc};

use crate::time;

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
