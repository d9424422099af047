//! Opaque continuation tokens: the page tokens of the List RPCs and the resume tokens of the replay streams.
//!
//! A token is URL-safe base64 of `version | kind | binding | payload | checksum`. The binding is a hash of the
//! request's filters, so a token only continues the request it came from; the checksum makes any altered byte
//! detectable. Tokens are opaque but not secret: they carry a position, never anything a client may not see.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::error::Error;

const VERSION: u8 = 1;
const BINDING_LEN: usize = 8;
const CHECKSUM_LEN: usize = 8;

/// What a token continues; a token of one kind is refused by every other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// ListSeries pages.
    Series = 1,
    /// ListEvents pages.
    Events = 2,
    /// ListMarkets pages.
    Markets = 3,
    /// ListSettlements pages.
    Settlements = 4,
    /// StreamTrades resumptions.
    Trades = 5,
    /// StreamCandles resumptions.
    Candles = 6,
}

/// The binding of a request: a hash of its canonical filter encoding (for protobuf requests, the encoded request
/// with its paging fields cleared).
pub fn binding(filters: &[u8]) -> [u8; BINDING_LEN] {
    let digest = Sha256::digest(filters);
    let mut out = [0; BINDING_LEN];
    out.copy_from_slice(&digest[..BINDING_LEN]);
    out
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::digest(body);
    let mut out = [0; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

/// Encodes a token of `kind` for the request with `binding`, continuing after `payload`.
pub fn encode(kind: Kind, binding: [u8; BINDING_LEN], payload: &[u8]) -> String {
    let mut body = Vec::with_capacity(2 + BINDING_LEN + payload.len() + CHECKSUM_LEN);
    body.push(VERSION);
    body.push(kind as u8);
    body.extend_from_slice(&binding);
    body.extend_from_slice(payload);
    let sum = checksum(&body);
    body.extend_from_slice(&sum);
    URL_SAFE_NO_PAD.encode(body)
}

/// Decodes a token and returns its payload. `field` names the request field in errors: a damaged token, one of
/// another version or kind, or one from a request with other filters are all INVALID_ARGUMENT.
pub fn decode(token: &str, kind: Kind, binding: [u8; BINDING_LEN], field: &str) -> Result<Vec<u8>, Error> {
    let damaged = || Error::invalid(field, "damaged token; pass back a token exactly as received");
    let body = URL_SAFE_NO_PAD.decode(token).map_err(|_| damaged())?;
    if body.len() < 2 + BINDING_LEN + CHECKSUM_LEN {
        return Err(damaged());
    }
    let (content, sum) = body.split_at(body.len() - CHECKSUM_LEN);
    if checksum(content) != sum {
        return Err(damaged());
    }
    if content[0] != VERSION {
        return Err(Error::invalid(field, format!("token version {} is not supported", content[0])));
    }
    if content[1] != kind as u8 || content[2..2 + BINDING_LEN] != binding {
        return Err(Error::invalid(field, "token belongs to another request; keep the filters of the first page"));
    }
    Ok(content[2 + BINDING_LEN..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_only_for_its_own_request() {
        let b = binding(b"filters");
        let token = encode(Kind::Markets, b, b"KXBTC-1");
        assert_eq!(decode(&token, Kind::Markets, b, "page_token").expect("same request"), b"KXBTC-1");
        let other = decode(&token, Kind::Markets, binding(b"other filters"), "page_token").expect_err("other");
        assert!(other.to_string().contains("another request"), "{other}");
        assert!(decode(&token, Kind::Events, b, "page_token").is_err(), "other kind");
    }

    #[test]
    fn every_altered_byte_is_detected() {
        let b = binding(b"f");
        let raw = URL_SAFE_NO_PAD.decode(encode(Kind::Series, b, b"TICKER")).expect("base64");
        for i in 0..raw.len() {
            let mut altered = raw.clone();
            altered[i] ^= 0x01;
            let error = decode(&URL_SAFE_NO_PAD.encode(altered), Kind::Series, b, "page_token").expect_err("altered");
            assert!(error.to_string().starts_with("page_token: damaged"), "byte {i}: {error}");
        }
        assert!(decode("not base64!", Kind::Series, b, "page_token").is_err());
        assert!(decode("", Kind::Series, b, "page_token").is_err());
    }
}
