//! IngestService: the writes, over the write core: [`validate`] each item, [`write`] the rows into the [`tables`].
//!
//! A client-streaming RPC is one write: each item is validated as it arrives (INVALID_ARGUMENT names its index
//! in the whole stream and the field), the write commits when the client closes its side, and a stream that
//! fails or is cancelled writes nothing. A batch upsert is validated whole before its transaction opens.
//!
//! Every item is checked against the [`Limits`] as [`validate::Bounds`] fixed when the write starts (counts,
//! fact times, updated_time), and a write holds at most `max_rows_per_write` items, all messages together.

pub mod tables;
pub mod validate;
pub mod write;

use chrono::Utc;
use tonic::{Request, Response, Status, Streaming};

use self::{
    tables::Row,
    validate::{At, Bounds},
    write::{Committed, PendingWrite, RowBuffer, Stored},
};
use tokio::sync::OwnedSemaphorePermit;

use crate::{
    admission::Admission,
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
    admission: Admission,
    limits: Limits,
}

impl IngestApi {
    /// A service writing to `pool`, admitting writes with `admission`, within `limits`.
    pub fn new(pool: Pool, admission: Admission, limits: Limits) -> Self {
        Self { pool, admission, limits }
    }

    /// A write admitted under the cap on concurrent writes (RESOURCE_EXHAUSTED beyond it); the permit is held
    /// until the write is answered.
    fn begin(&self) -> Result<(PendingWrite, OwnedSemaphorePermit), Error> {
        let permit = self.admission.write()?;
        Ok((PendingWrite::new(&self.pool, self.limits.max_rows_per_write), permit))
    }

    /// The bounds a write's items are checked against, as of now.
    fn bounds(&self) -> Bounds {
        Bounds::new(&self.limits, Utc::now())
    }

    /// The client stream's next message; at shutdown, once the drain's grace has passed, UNAVAILABLE (the write
    /// is not stored).
    async fn next_message<M>(&self, stream: &mut Streaming<M>) -> Result<Option<M>, Status> {
        tokio::select! {
            message = stream.message() => message,
            () = self.admission.drained() => Err(Error::ShuttingDown.into()),
        }
    }

    /// Stores the items of every message of a client stream of one fact kind; returns the counts, the watermark
    /// after the commit and the markets without reference rows.
    async fn ingest_stream<M, P, R: Row>(
        &self,
        mut stream: Streaming<M>,
        kind: &'static str,
        items: fn(&M) -> &[P],
        validate: fn(At, &Bounds, &P) -> Result<R, Error>,
    ) -> Result<(Stored, Committed), Status> {
        let (mut write, _permit) = self.begin()?;
        let bounds = self.bounds();
        let mut batch = RowBuffer::default();
        let mut index = 0;
        while let Some(message) = self.next_message(&mut stream).await? {
            for item in items(&message) {
                let at = At::item(kind, index);
                push(&mut batch, &mut write, at, validate(at, &bounds, item)?).await?;
                index += 1;
            }
        }
        batch.finish(&mut write).await?;
        let committed = write.commit().await?;
        Ok((committed.of::<R>(), committed))
    }

    /// Validates every item of a batch, then upserts them in one transaction.
    async fn upsert<P, R: Row>(
        &self,
        items: &[P],
        kind: &'static str,
        validate: fn(At, &Bounds, &P) -> Result<R, Error>,
    ) -> Result<Option<UpsertCounts>, Status> {
        let bounds = self.bounds();
        let rows = items.iter().enumerate().map(|(i, item)| validate(At::item(kind, i), &bounds, item));
        let rows: Vec<R> = rows.collect::<Result<_, _>>()?;
        let (mut write, _permit) = self.begin()?;
        let mut batch = RowBuffer::default();
        for (i, row) in rows.into_iter().enumerate() {
            push(&mut batch, &mut write, At::item(kind, i), row).await?;
        }
        batch.finish(&mut write).await?;
        Ok(Some(write.commit().await?.of::<R>().upsert_counts()))
    }
}

/// Adds a validated row to its batch; a write past max_rows_per_write is refused naming the item at `at`.
async fn push<R: Row>(batch: &mut RowBuffer<R>, write: &mut PendingWrite, at: At, row: R) -> Result<(), Error> {
    batch.push(write, row).await.map_err(|e| e.with_field(at.to_string()))
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
        let (stored, committed) = self.ingest_stream(request.into_inner(), "trades", items, validate::trade).await?;
        Ok(Response::new(IngestTradesResponse {
            counts: Some(stored.write_counts()),
            watermark: committed.watermark,
            markets_without_reference: committed.unreferenced,
        }))
    }

    /// Snapshots and deltas are indexed separately (`snapshots[i]`, `deltas[j]`), each over the whole stream.
    async fn ingest_orderbook(
        &self,
        request: Request<Streaming<IngestOrderbookRequest>>,
    ) -> Result<Response<IngestOrderbookResponse>, Status> {
        let mut stream = request.into_inner();
        let (mut write, _permit) = self.begin()?;
        let bounds = self.bounds();
        let (mut snapshots, mut deltas) = (RowBuffer::default(), RowBuffer::default());
        let (mut s, mut d) = (0, 0);
        while let Some(message) = self.next_message(&mut stream).await? {
            for snapshot in &message.snapshots {
                let at = At::item("snapshots", s);
                push(&mut snapshots, &mut write, at, validate::snapshot(at, &bounds, snapshot)?).await?;
                s += 1;
            }
            for delta in &message.deltas {
                let at = At::item("deltas", d);
                push(&mut deltas, &mut write, at, validate::delta(at, &bounds, delta)?).await?;
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
            markets_without_reference: committed.unreferenced,
        }))
    }

    async fn ingest_lifecycle(
        &self,
        request: Request<Streaming<IngestLifecycleRequest>>,
    ) -> Result<Response<IngestLifecycleResponse>, Status> {
        fn items(m: &IngestLifecycleRequest) -> &[crate::proto::LifecycleEvent] {
            &m.events
        }
        let (stored, committed) =
            self.ingest_stream(request.into_inner(), "events", items, validate::lifecycle).await?;
        Ok(Response::new(IngestLifecycleResponse {
            counts: Some(stored.write_counts()),
            watermark: committed.watermark,
            markets_without_reference: committed.unreferenced,
        }))
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
