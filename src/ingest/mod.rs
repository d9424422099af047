//! IngestService: the writes, over the write core: [`validate`] each item, [`write`] the rows into the [`tables`].
//!
//! A client-streaming RPC is one write: each item is validated as it arrives (INVALID_ARGUMENT names its index
//! in the whole stream and the field), the write commits when the client closes its side, and a stream that
//! fails or is cancelled writes nothing. A batch upsert is validated whole before its transaction opens.

pub mod tables;
pub mod validate;
pub mod write;

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status, Streaming};

use self::{
    tables::Row,
    validate::At,
    write::{PendingWrite, RowBuffer, Stored},
};
use crate::{
    error::Error,
    limits::Limits,
    proto::{
        IngestLifecycleRequest, IngestLifecycleResponse, IngestOrderbookRequest, IngestOrderbookResponse,
        IngestTradesRequest, IngestTradesResponse, UpsertCounts, UpsertEventsRequest, UpsertEventsResponse,
        UpsertMarketsRequest, UpsertMarketsResponse, UpsertSeriesRequest, UpsertSeriesResponse,
        UpsertSettlementsRequest, UpsertSettlementsResponse, ingest_service_server::IngestService,
    },
    store::db::Pool,
};

/// IngestService: the writes.
#[derive(Debug, Clone)]
pub struct IngestApi {
    pool: Pool,
    limits: Limits,
}

impl IngestApi {
    /// A service writing to `pool`, within `limits`.
    pub fn new(pool: Pool, limits: Limits) -> Self {
        Self { pool, limits }
    }

    /// Stores the items of every message of a client stream of one fact kind; returns the counts and the
    /// watermark after the commit.
    async fn ingest_stream<M, P, R: Row>(
        &self,
        mut stream: Streaming<M>,
        kind: &'static str,
        items: fn(&M) -> &[P],
        validate: fn(At, &P) -> Result<R, Error>,
    ) -> Result<(Stored, i64), Status> {
        let mut write = PendingWrite::new(&self.pool);
        let mut batch = RowBuffer::default();
        let mut index = 0;
        while let Some(message) = stream.message().await? {
            for item in items(&message) {
                batch.push(&mut write, validate(At::item(kind, index), item)?).await?;
                index += 1;
            }
        }
        batch.finish(&mut write).await?;
        let committed = write.commit().await?;
        Ok((committed.of::<R>(), committed.watermark))
    }

    /// Validates every item of a batch, then upserts them in one transaction.
    async fn upsert<P, R: Row>(
        &self,
        items: &[P],
        kind: &'static str,
        validate: fn(At, &P, DateTime<Utc>) -> Result<R, Error>,
    ) -> Result<Option<UpsertCounts>, Status> {
        let now = Utc::now();
        let rows = items.iter().enumerate().map(|(i, item)| validate(At::item(kind, i), item, now));
        let rows: Vec<R> = rows.collect::<Result<_, _>>()?;
        let mut write = PendingWrite::new(&self.pool);
        let mut batch = RowBuffer::default();
        for row in rows {
            batch.push(&mut write, row).await?;
        }
        batch.finish(&mut write).await?;
        Ok(Some(write.commit().await?.of::<R>().upsert_counts()))
    }
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn ingest_trades(
        &self,
        request: Request<Streaming<IngestTradesRequest>>,
    ) -> Result<Response<IngestTradesResponse>, Status> {
        fn items(m: &IngestTradesRequest) -> &[crate::proto::Trade] {
            &m.trades
        }
        let (stored, watermark) = self.ingest_stream(request.into_inner(), "trades", items, validate::trade).await?;
        Ok(Response::new(IngestTradesResponse { counts: Some(stored.write_counts()), watermark }))
    }

    /// Snapshots and deltas are indexed separately (`snapshots[i]`, `deltas[j]`), each over the whole stream.
    async fn ingest_orderbook(
        &self,
        request: Request<Streaming<IngestOrderbookRequest>>,
    ) -> Result<Response<IngestOrderbookResponse>, Status> {
        let mut stream = request.into_inner();
        let mut write = PendingWrite::new(&self.pool);
        let (mut snapshots, mut deltas) = (RowBuffer::default(), RowBuffer::default());
        let (mut s, mut d) = (0, 0);
        while let Some(message) = stream.message().await? {
            for snapshot in &message.snapshots {
                snapshots.push(&mut write, validate::snapshot(At::item("snapshots", s), snapshot)?).await?;
                s += 1;
            }
            for delta in &message.deltas {
                deltas.push(&mut write, validate::delta(At::item("deltas", d), delta)?).await?;
                d += 1;
            }
        }
        snapshots.finish(&mut write).await?;
        deltas.finish(&mut write).await?;
        let committed = write.commit().await?;
        Ok(Response::new(IngestOrderbookResponse {
            snapshots: Some(committed.of::<validate::SnapshotRow>().write_counts()),
            deltas: Some(committed.of::<validate::DeltaRow>().write_counts()),
            watermark: committed.watermark,
        }))
    }

    async fn ingest_lifecycle(
        &self,
        request: Request<Streaming<IngestLifecycleRequest>>,
    ) -> Result<Response<IngestLifecycleResponse>, Status> {
        fn items(m: &IngestLifecycleRequest) -> &[crate::proto::LifecycleEvent] {
            &m.events
        }
        let (stored, watermark) =
            self.ingest_stream(request.into_inner(), "events", items, validate::lifecycle).await?;
        Ok(Response::new(IngestLifecycleResponse { counts: Some(stored.write_counts()), watermark }))
    }

    async fn upsert_series(
        &self,
        request: Request<UpsertSeriesRequest>,
    ) -> Result<Response<UpsertSeriesResponse>, Status> {
        let counts = self.upsert(&request.get_ref().series, "series", validate::series).await?;
        Ok(Response::new(UpsertSeriesResponse { counts }))
    }

    async fn upsert_events(
        &self,
        request: Request<UpsertEventsRequest>,
    ) -> Result<Response<UpsertEventsResponse>, Status> {
        let counts = self.upsert(&request.get_ref().events, "events", validate::event).await?;
        Ok(Response::new(UpsertEventsResponse { counts }))
    }

    async fn upsert_markets(
        &self,
        request: Request<UpsertMarketsRequest>,
    ) -> Result<Response<UpsertMarketsResponse>, Status> {
        let counts = self.upsert(&request.get_ref().markets, "markets", validate::market).await?;
        Ok(Response::new(UpsertMarketsResponse { counts }))
    }

    async fn upsert_settlements(
        &self,
        request: Request<UpsertSettlementsRequest>,
    ) -> Result<Response<UpsertSettlementsResponse>, Status> {
        let counts = self.upsert(&request.get_ref().settlements, "settlements", validate::settlement).await?;
        Ok(Response::new(UpsertSettlementsResponse { counts }))
    }
}
