//! The gRPC services whose RPCs have not landed yet (ReferenceService lives in `reference`). Each RPC whose issue has not landed yet answers UNIMPLEMENTED through the
//! generated default methods.

use crate::{
    db::Pool,
    proto::{ingest_service_server::IngestService, replay_service_server::ReplayService},
};

/// ReplayService: the streaming replays.
#[derive(Debug, Clone)]
pub struct ReplayApi {
    #[allow(dead_code)] // read by the replay RPCs
    pool: Pool,
}

impl ReplayApi {
    /// A service reading from `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl ReplayService for ReplayApi {}

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
