//! Kalshi's API-key authentication: every request (and the WebSocket handshake) carries the key's id, the time in
//! unix milliseconds and an RSA-PSS signature (SHA-256, MGF1 with SHA-256, a salt as long as the digest) of
//! `timestamp + method + path`, where the path has no query (`/trade-api/ws/v2` for the WebSocket).
//!
//! The private key is read from a PEM file as Kalshi hands it out (PKCS#1, `BEGIN RSA PRIVATE KEY`) or in PKCS#8
//! (`BEGIN PRIVATE KEY`); it is never taken from the command line, where other users of the machine could read it.

use std::fmt;
use std::path::Path;

use base64::{Engine, engine::general_purpose::STANDARD};
use rsa::{
    PrivateKey,
    pkcs1::DecodeRsaPrivateKey,
    pkcs8::DecodePrivateKey,
    pss::SigningKey,
    sha2::Sha256,
    signature::{SignatureEncoding, Signer as _},
};

use crate::error::Error;

/// The header names Kalshi reads.
pub const KEY_HEADER: &str = "KALSHI-ACCESS-KEY";
pub const TIMESTAMP_HEADER: &str = "KALSHI-ACCESS-TIMESTAMP";
pub const SIGNATURE_HEADER: &str = "KALSHI-ACCESS-SIGNATURE";

/// An API key: its id and the private key that signs for it.
pub struct ApiKey {
    id: String,
    key: SigningKey<Sha256>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never the key itself
        f.debug_struct("ApiKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl ApiKey {
    /// The key `id` with its private key read from the PEM file at `path`.
    pub fn from_file(id: &str, path: &Path) -> Result<Self, Error> {
        let pem = std::fs::read_to_string(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        Self::from_pem(id, &pem)
            .map_err(|reason| Error::invalid("private_key_file", format!("{}: {reason}", path.display())))
    }

    /// The key `id` with its private key in PEM text (PKCS#1 or PKCS#8).
    pub fn from_pem(id: &str, pem: &str) -> Result<Self, String> {
        if id.trim().is_empty() {
            return Err("the API key id is empty".into());
        }
        let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
            PrivateKey::from_pkcs1_pem(pem).map_err(|e| format!("not an RSA private key in PKCS#1 PEM: {e}"))?
        } else {
            PrivateKey::from_pkcs8_pem(pem).map_err(|e| format!("not an RSA private key in PKCS#8 PEM: {e}"))?
        };
        Ok(Self { id: id.trim().to_owned(), key: SigningKey::new(key) })
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The three headers of a request `method path` (path without the query) at `timestamp_ms`.
    pub fn headers(&self, timestamp_ms: i64, method: &str, path: &str) -> [(&'static str, String); 3] {
        let timestamp = timestamp_ms.to_string();
        let message = format!("{timestamp}{method}{path}");
        let signature = STANDARD.encode(self.key.sign(message.as_bytes()).to_bytes());
        [(KEY_HEADER, self.id.clone()), (TIMESTAMP_HEADER, timestamp), (SIGNATURE_HEADER, signature)]
    }
}
