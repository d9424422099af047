//! One of Kalshi's REST pages into a write: converted by the importer ([`kalshi::parse_document`]) and validated
//! into the write core's buffers, with errors that name the page's path (Kalshi sent something the service cannot
//! store exactly).

use chrono::Utc;
use serde_json::Value;

use crate::{
    error::Error,
    import::{TableBuffers, kalshi},
    ingest::{validate::Bounds, write::PendingWrite},
    limits::Limits,
};

/// Converts and validates the page read from `path` into `buffers` of `write`; the number of records.
pub async fn add(
    path: &str,
    page: &Value,
    limits: &Limits,
    write: &mut PendingWrite,
    buffers: &mut TableBuffers,
) -> Result<usize, Error> {
    let records =
        kalshi::parse_document(page).map_err(|e| Error::Kalshi { url: path.into(), reason: e.to_string() })?;
    let bounds = Bounds::new(limits, Utc::now());
    let count = records.len();
    for record in records {
        buffers.push(write, record, &bounds).await.map_err(|e| match e {
            Error::InvalidArgument { field, reason } => {
                Error::Kalshi { url: path.into(), reason: format!("{field}: {reason}") }
            }
            e => e,
        })?;
    }
    Ok(count)
}
