//! Opaque continuation tokens: the page tokens of the List RPCs and the resume tokens of the replay streams.
//!
//! A token is URL-safe base64 of `version | kind | binding | payload | tag`. The binding is a hash of the
//! request's filters, so a token only continues the request it came from. The tag is an HMAC-SHA256 of the rest
//! under the database's [`TokenKey`]: a client can neither alter a token nor make one up (a resume position that
//! no stream delivered), and a token of another database, or of the unkeyed checksum of version 1, is refused.
//! Tokens are opaque but not secret: they carry a position, never anything a client may not see.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Version 1 was signed with an unkeyed SHA-256, which anyone could compute.
const VERSION: u8 = 2;
const BINDING_LEN: usize = 8;
/// 128 bits of the HMAC: the RFC 2104 floor for a truncated tag is half the hash; 2^-128 per forgery attempt.
const TAG_LEN: usize = 16;
/// Shortest key accepted from the database (migration 0008 writes 32 bytes).
const MIN_KEY_LEN: usize = 32;

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
    /// StreamKalshiCandles resumptions.
    KalshiCandles = 7,
}

/// The key that signs every token, read once at server start from the database's `token_key` row (migration
/// 0008), so that every server of one database signs alike and its tokens survive restarts. Never logged.
#[derive(Clone)]
pub struct TokenKey {
    /// The HMAC keyed once; each token clones it.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// The key of `bytes`; a key shorter than 32 bytes is refused (it would be guessable).
    pub fn new(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(Error::Malformed(format!(
                "token key of {} bytes; at least {MIN_KEY_LEN} are needed (see migration 0008)",
                bytes.len()
            )));
        }
        let mac = Hmac::new_from_slice(bytes).map_err(|_| Error::Malformed("token key".to_owned()))?;
        Ok(Self { mac })
    }

    /// The database's key (the one row of `token_key`).
    pub async fn load(client: &tokio_postgres::Client) -> Result<Self, Error> {
        let row = client.query_one("SELECT key FROM token_key", &[]).await?;
        Self::new(row.try_get::<_, &[u8]>(0)?)
    }

    /// The binding of a request under this key: a hash of its canonical filter encoding (for protobuf requests,
    /// the encoded request with its paging fields cleared).
    pub fn binding(&self, filters: &[u8]) -> Binding {
        let digest = Sha256::digest(filters);
        let mut filters = [0; BINDING_LEN];
        filters.copy_from_slice(&digest[..BINDING_LEN]);
        Binding { filters, key: self.clone() }
    }
}

/// A request's binding, with the key its tokens are signed with: what [`encode`] and [`decode`] need.
#[derive(Debug, Clone)]
pub struct Binding {
    filters: [u8; BINDING_LEN],
    key: TokenKey,
}

impl Binding {
    fn tag(&self, content: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.key.mac.clone();
        mac.update(content);
        mac
    }
}

/// Encodes a token of `kind` for the request with `binding`, continuing after `payload`.
pub fn encode(kind: Kind, binding: &Binding, payload: &[u8]) -> String {
    let mut body = Vec::with_capacity(2 + BINDING_LEN + payload.len() + TAG_LEN);
    body.push(VERSION);
    body.push(kind as u8);
    body.extend_from_slice(&binding.filters);
    body.extend_from_slice(payload);
    let tag = binding.tag(&body).finalize().into_bytes();
    body.extend_from_slice(&tag[..TAG_LEN]);
    URL_SAFE_NO_PAD.encode(body)
}

/// Decodes a token and returns its payload. `field` names the request field in errors: a damaged or forged
/// token, one of another database, version or kind, or one from a request with other filters are all
/// INVALID_ARGUMENT.
pub fn decode(token: &str, kind: Kind, binding: &Binding, field: &str) -> Result<Vec<u8>, Error> {
    let damaged = || {
        Error::invalid(
            field,
            "damaged token, or one this database did not issue; pass back a token exactly as received",
        )
    };
    let body = URL_SAFE_NO_PAD.decode(token).map_err(|_| damaged())?;
    // the version first, so that a token of an older server says so rather than look damaged
    match body.first() {
        Some(&VERSION) => {}
        Some(&version) if version < VERSION => {
            return Err(Error::invalid(
                field,
                format!("token version {version} is no longer accepted; start again without the token"),
            ));
        }
        _ => return Err(damaged()),
    }
    if body.len() < 2 + BINDING_LEN + TAG_LEN {
        return Err(damaged());
    }
    let (content, tag) = body.split_at(body.len() - TAG_LEN);
    // constant time: how much of a tag matched must not leak through the answer's timing
    binding.tag(content).verify_truncated_left(tag).map_err(|_| damaged())?;
    if content[1] != kind as u8 || content[2..2 + BINDING_LEN] != binding.filters {
        return Err(Error::invalid(field, "token belongs to another request; keep the filters of the first page"));
    }
    Ok(content[2 + BINDING_LEN..].to_vec())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(byte: u8) -> TokenKey {
        TokenKey::new(&[byte; 32]).expect("key")
    }

    #[test]
    fn a_token_round_trips_only_for_its_own_request() {
        let b = key(7).binding(b"filters");
        let token = encode(Kind::Markets, &b, b"KXBTC-1");
        assert_eq!(decode(&token, Kind::Markets, &b, "page_token").expect("same request"), b"KXBTC-1");
        let other = decode(&token, Kind::Markets, &key(7).binding(b"other filters"), "page_token").expect_err("other");
        assert!(other.to_string().contains("another request"), "{other}");
        assert!(decode(&token, Kind::Events, &b, "page_token").is_err(), "other kind");
    }

    #[test]
    fn every_altered_byte_is_detected() {
        let b = key(7).binding(b"f");
        let raw = URL_SAFE_NO_PAD.decode(encode(Kind::Series, &b, b"TICKER")).expect("base64");
        for i in 0..raw.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut altered = raw.clone();
                altered[i] ^= flip;
                let error =
                    decode(&URL_SAFE_NO_PAD.encode(altered), Kind::Series, &b, "page_token").expect_err("altered");
                assert!(error.to_string().starts_with("page_token: "), "byte {i}: {error}");
            }
        }
        // cut short or lengthened
        for len in 0..raw.len() {
            assert!(decode(&URL_SAFE_NO_PAD.encode(&raw[..len]), Kind::Series, &b, "page_token").is_err(), "{len}");
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert!(decode(&URL_SAFE_NO_PAD.encode(longer), Kind::Series, &b, "page_token").is_err());
        assert!(decode("not base64!", Kind::Series, &b, "page_token").is_err());
        assert!(decode("", Kind::Series, &b, "page_token").is_err());
    }

    /// What version 1 signed with: the unkeyed SHA-256 that anyone could compute.
    fn unkeyed_v1(kind: Kind, binding: &Binding, payload: &[u8]) -> String {
        let mut body = vec![1, kind as u8];
        body.extend_from_slice(&binding.filters);
        body.extend_from_slice(payload);
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum[..8]);
        URL_SAFE_NO_PAD.encode(body)
    }

    #[test]
    fn forged_tokens_are_refused() {
        let b = key(7).binding(b"f");
        let v1 = decode(&unkeyed_v1(Kind::Trades, &b, b"pos"), Kind::Trades, &b, "resume_token").expect_err("v1");
        assert!(v1.to_string().contains("resume_token: token version 1 is no longer accepted"), "{v1}");
        // the same unkeyed scheme under the current version number
        let mut body = vec![VERSION, Kind::Trades as u8];
        body.extend_from_slice(&b.filters);
        body.extend_from_slice(b"pos");
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum[..TAG_LEN]);
        let forged = decode(&URL_SAFE_NO_PAD.encode(body), Kind::Trades, &b, "resume_token").expect_err("forged");
        assert!(forged.to_string().starts_with("resume_token: damaged token"), "{forged}");
        // signed with another database's key
        let theirs = encode(Kind::Trades, &key(8).binding(b"f"), b"pos");
        let other = decode(&theirs, Kind::Trades, &b, "resume_token").expect_err("other key");
        assert!(other.to_string().starts_with("resume_token: damaged token"), "{other}");
    }

    #[test]
    fn short_keys_are_refused_and_keys_are_not_shown() {
        assert!(TokenKey::new(&[1; 31]).is_err());
        assert!(!format!("{:?}", key(0x41)).contains("65"), "no key bytes in Debug");
        assert!(format!("{:?}", key(0x41).binding(b"f")).contains("TokenKey(..)"));
    }

    proptest! {
        /// Whatever a client sends as a token, the decoder answers (never panics) and refuses it, naming the
        /// field: text, raw bytes behind valid base64, and valid tokens with bytes changed.
        #[test]
        fn arbitrary_tokens_are_refused_with_the_field(
            text in ".{0,200}",
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            at in any::<usize>(),
            flip in 1u8..,
        ) {
            let b = key(3).binding(b"f");
            for token in [text.clone(), URL_SAFE_NO_PAD.encode(&bytes)] {
                let error = decode(&token, Kind::Trades, &b, "resume_token").expect_err("arbitrary");
                prop_assert!(error.to_string().starts_with("resume_token: "), "{}", error);
            }
            let mut raw = URL_SAFE_NO_PAD.decode(encode(Kind::Trades, &b, &payload)).expect("base64");
            let i = at % raw.len();
            raw[i] ^= flip;
            let error = decode(&URL_SAFE_NO_PAD.encode(raw), Kind::Trades, &b, "resume_token").expect_err("altered");
            prop_assert!(error.to_string().starts_with("resume_token: "), "{}", error);
        }
    }
}
