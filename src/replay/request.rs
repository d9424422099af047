//! What every stream request asks, validated: the market selection and range, the batch size, where to start
//! (a resume token's position, or the beginning) and at which data version, and the client's deadline.

use std::time::Duration;

use chrono::{DateTime, Utc};
use prost::Message;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use super::hash::ContentHash;
use crate::{error::Error, time, token};

/// Items per data message when the request leaves batch_size at 0, and the most allowed.
pub const DEFAULT_BATCH: i32 = 1024;
pub const MAX_BATCH: i32 = 16_384;
/// Most tickers of each kind one request may name.
pub const MAX_TICKERS: usize = 10_000;

/// The fields every stream request has, read the same way for each.
pub(crate) trait StreamRequest: Message + Clone + 'static {
    fn market_tickers(&self) -> &[String];
    fn event_tickers(&self) -> &[String];
    fn series_tickers(&self) -> &[String];
    fn start_time(&self) -> Option<&prost_types::Timestamp>;
    fn end_time(&self) -> Option<&prost_types::Timestamp>;
    fn batch_size(&self) -> i32;
    fn resume_token(&self) -> &str;
    fn as_of_watermark(&self) -> Option<i64>;
    /// The request as its tokens are bound to it: without the resume token and the fields that may change
    /// between resumptions (batch size, layout).
    fn binding_fields(&self) -> Self;
}

/// Implements [`StreamRequest`] for a proto request with the common fields; `|request| binding` gives the request
/// as its tokens are bound to it.
macro_rules! stream_request {
    ($request:ty, |$r:ident| $binding:expr) => {
        impl $crate::replay::request::StreamRequest for $request {
            fn market_tickers(&self) -> &[String] {
                &self.market_tickers
            }
            fn event_tickers(&self) -> &[String] {
                &self.event_tickers
            }
            fn series_tickers(&self) -> &[String] {
                &self.series_tickers
            }
            fn start_time(&self) -> Option<&prost_types::Timestamp> {
                self.start_time.as_ref()
            }
            fn end_time(&self) -> Option<&prost_types::Timestamp> {
                self.end_time.as_ref()
            }
            fn batch_size(&self) -> i32 {
                self.batch_size
            }
            fn resume_token(&self) -> &str {
                &self.resume_token
            }
            fn as_of_watermark(&self) -> Option<i64> {
                self.as_of_watermark
            }
            fn binding_fields(&self) -> Self {
                let $r = self;
                $binding
            }
        }
    };
}

/// What every stream request asks, validated: the selection, the batch size, and where it starts.
#[derive(Debug)]
pub(crate) struct StreamSpec {
    pub selection: Selection,
    /// Items per data message.
    pub batch: usize,
    pub resume: Resume,
}

impl StreamSpec {
    /// Validates the common fields of `request`, a request of the stream whose tokens are of `kind`.
    pub(crate) fn validate<R: StreamRequest>(
        request: &R,
        kind: token::Kind,
        tokens: &token::TokenKey,
    ) -> Result<Self, Error> {
        let selection = Selection::validate(request, kind)?;
        let batch = batch_size(request.batch_size())?;
        let resume = selection.resume(request, tokens)?;
        Ok(Self { selection, batch, resume })
    }
}

/// The markets and the time range a stream request selects, validated (the tickers are resolved in the
/// stream's snapshot).
#[derive(Debug)]
pub(crate) struct Selection {
    pub kind: token::Kind,
    pub market_tickers: Vec<String>,
    pub event_tickers: Vec<String>,
    pub series_tickers: Vec<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Selection {
    fn validate<R: StreamRequest>(request: &R, kind: token::Kind) -> Result<Self, Error> {
        let (markets, events, series) = (request.market_tickers(), request.event_tickers(), request.series_tickers());
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
        let start = request.start_time().ok_or_else(|| Error::invalid("start_time", "required"))?;
        let start = time::from_proto(start, "start_time")?;
        let end =
            time::from_proto(request.end_time().ok_or_else(|| Error::invalid("end_time", "required"))?, "end_time")?;
        if start >= end {
            return Err(Error::invalid("end_time", format!("must be after start_time ({start} >= {end})")));
        }
        Ok(Self {
            kind,
            market_tickers: markets.to_vec(),
            event_tickers: events.to_vec(),
            series_tickers: series.to_vec(),
            start,
            end,
        })
    }

    /// Where the stream starts: from its resume token, or from the beginning, at as_of_watermark if set. A token
    /// is bound to the request's [`binding_fields`](StreamRequest::binding_fields) and signed with `tokens`.
    fn resume<R: StreamRequest>(&self, request: &R, tokens: &token::TokenKey) -> Result<Resume, Error> {
        let binding = tokens.binding(&request.binding_fields().encode_to_vec());
        let as_of = request.as_of_watermark();
        if let Some(as_of) = as_of
            && as_of < 0
        {
            return Err(Error::invalid("as_of_watermark", format!("must be 0 or more, got {as_of}")));
        }
        let mut resume = Resume { binding, as_of, position: None };
        let token = request.resume_token();
        if !token.is_empty() {
            let payload = token::decode(token, self.kind, &resume.binding, "resume_token")?;
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
    /// The request's binding, which every token of the stream carries, and the key that signs them.
    pub binding: token::Binding,
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
    pub(crate) fn token(&self, kind: token::Kind, binding: &token::Binding) -> String {
        token::encode(kind, binding, &self.encode())
    }
}

/// The client's deadline from its grpc-timeout header (`<digits><unit>`, unit one of H M S m u n), if any.
pub(crate) fn deadline(metadata: &MetadataMap) -> Option<Instant> {
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
}
