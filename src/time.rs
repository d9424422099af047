//! Time conversions between the wire (google.protobuf.Timestamp), the database (timestamptz, microseconds) and
//! chrono, all UTC.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::error::Error;

/// Converts a wire timestamp to chrono. `field` names the request field in the error. Sub-microsecond parts are
/// rejected rather than silently truncated, because the database stores microseconds and a replay must return
/// exactly what was written; times outside google.protobuf.Timestamp's documented range (years 1 to 9999) are
/// rejected too, which also keeps every UTC day inside what PostgreSQL's `date` holds.
pub fn from_proto(ts: &Timestamp, field: &str) -> Result<DateTime<Utc>, Error> {
    const MIN_SECONDS: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
    const MAX_SECONDS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(Error::invalid(
            field,
            format!("must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z, got {} seconds", ts.seconds),
        ));
    }
    if ts.nanos < 0 || ts.nanos >= 1_000_000_000 || ts.nanos % 1000 != 0 {
        return Err(Error::invalid(
            field,
            format!("nanos must be a multiple of 1000 in [0, 999999000], got {}", ts.nanos),
        ));
    }
    DateTime::from_timestamp(ts.seconds, ts.nanos as u32)
        .ok_or_else(|| Error::invalid(field, format!("seconds out of range: {}", ts.seconds)))
}

/// An optional half-open range `[start, end)`; either bound may be open.
pub type OptionalRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Converts the optional bounds of a request's time filter; when both are set, start must be before end
/// (INVALID_ARGUMENT naming `end_field` otherwise).
pub fn optional_range(
    start: Option<&Timestamp>,
    end: Option<&Timestamp>,
    start_field: &str,
    end_field: &str,
) -> Result<OptionalRange, Error> {
    let start = start.map(|t| from_proto(t, start_field)).transpose()?;
    let end = end.map(|t| from_proto(t, end_field)).transpose()?;
    if let (Some(s), Some(e)) = (start, end)
        && s >= e
    {
        return Err(Error::invalid(end_field, format!("must be after {start_field} ({s} >= {e})")));
    }
    Ok((start, end))
}

/// Microseconds since the epoch as a protobuf Timestamp (nanos always in 0..1e9, also before the epoch).
pub fn micros_to_proto(micros: i64) -> Timestamp {
    Timestamp { seconds: micros.div_euclid(1_000_000), nanos: (micros.rem_euclid(1_000_000) * 1000) as i32 }
}

/// Converts chrono to a wire timestamp.
pub fn to_proto(t: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// The UTC midnight at or before `t`.
pub fn day_start(t: DateTime<Utc>) -> DateTime<Utc> {
    t.date_naive().and_hms_opt(0, 0, 0).map(|d| d.and_utc()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsecond_timestamps_round_trip_and_finer_ones_are_refused() {
        let wire = Timestamp { seconds: 1_767_571_200, nanos: 123_456_000 };
        let t = from_proto(&wire, "start_time").expect("valid");
        assert_eq!(to_proto(t), wire);
        let far = from_proto(&Timestamp { seconds: 253_402_300_800, nanos: 0 }, "end_time").expect_err("year 10000");
        assert!(far.to_string().starts_with("end_time: must be between"), "{far}");
        for nanos in [1, 999_999_999, -1_000, 1_000_000_000] {
            let error = from_proto(&Timestamp { seconds: 0, nanos }, "start_time").expect_err("invalid");
            assert!(error.to_string().starts_with("start_time: nanos"), "{error}");
        }
    }

    #[test]
    fn day_start_is_utc_midnight() {
        let t = DateTime::parse_from_rfc3339("2026-01-31T23:59:59.999999Z").expect("time").to_utc();
        assert_eq!(day_start(t).to_rfc3339(), "2026-01-31T00:00:00+00:00");
    }
}
