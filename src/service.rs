//! IngestService: the writes, over the write core of [`crate::ingest`]. The RPCs whose issue has not landed yet
//! answer UNIMPLEMENTED through the generated default methods.

use tonic::{Request, Response, Status, Streaming};

use crate::{
    db::Pool,
    ingest::{self, TradeWrite},
    proto::{IngestTradesRequest, IngestTradesResponse, WriteCounts, ingest_service_server::IngestService},
};

/// IngestService: the writes.
#[derive(Debug, Clone)]
pub struct IngestApi {
    pool: Pool,
}

impl IngestApi {
    /// A service writing to `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    /// The whole client stream is one write: each trade is validated as it arrives (INVALID_ARGUMENT names its
    /// index in the stream and the field), the write commits when the client closes its side, and a stream that
    /// fails or is cancelled writes nothing.
    async fn ingest_trades(
        &self,
        request: Request<Streaming<IngestTradesRequest>>,
    ) -> Result<Response<IngestTradesResponse>, Status> {
        let mut stream = request.into_inner();
        let mut write = TradeWrite::begin(&self.pool).await?;
        let mut index = 0;
        while let Some(message) = stream.message().await? {
            for trade in &message.trades {
                write.push(ingest::validate_trade(index, trade)?).await?;
                index += 1;
            }
        }
        let written = write.commit().await?;
        Ok(Response::new(IngestTradesResponse {
            counts: Some(WriteCounts { inserted: written.inserted, duplicates: written.duplicates }),
            watermark: written.watermark,
        }))
    }
}
