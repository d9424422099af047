//! Time conversions between the wire (google.protobuf.Timestamp), the database (timestamptz, microseconds) and
//! chrono, all UTC.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::error::Error;

/// Converts a wire timestamp to chrono. `field` names the request field in the error. Sub-microsecond parts are
/// rejected rather than silently truncated, because the database stores microseconds and a replay must return
/// exactly what was written.
pub fn from_proto(ts: &Timestamp, field: &str) -> Result<DateTime<Utc>, Error> {
    if ts.nanos < 0 || ts.nanos >= 1_000_000_000 || ts.nanos % 1000 != 0 {
        return Err(Error::invalid(
            field,
            format!("nanos must be a multiple of 1000 in [0, 999999000], got {}", ts.nanos),
        ));
    }
    DateTime::from_timestamp(ts.seconds, ts.nanos as u32)
        .ok_or_else(|| Error::invalid(field, format!("seconds out of range: {}", ts.seconds)))
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
