//! IngestService: the writes. Each RPC whose issue has not landed yet answers UNIMPLEMENTED through the
//! generated default methods.

use crate::{db::Pool, proto::ingest_service_server::IngestService};
/// IngestService: the writes.
#[derive(Debug, Clone)]
pub struct IngestApi {
    #[allow(dead_code)] // read by the ingest RPCs
    pool: Pool,
}

impl IngestApi {
    /// A service writing to `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl IngestService for IngestApi {}
