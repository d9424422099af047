//! ReplayService and the replay contract every stream shares (see proto/kalshi/replay/v1/replay.proto).
//!
//! A stream runs in two parts, both in [`runner`]. The handler validates the request ([`request`]), borrows a
//! pooled connection, opens a REPEATABLE READ READ ONLY transaction (one [`snapshot`] for the whole stream),
//! reads the watermark and resolves the market selection in it; errors up to here are the RPC's status. Then a
//! task runs the stream's body, which reads the rows with COPY (binary) and sends batches into a small bounded
//! channel that tonic drains: a slow client fills the channel, the task stops reading, TCP backpressure stops
//! PostgreSQL. When the client goes away or its deadline passes, the task cancels the query, rolls back and
//! returns the connection within milliseconds.
//!
//! - [`request`]: the common request fields, resume positions and deadlines.
//! - [`snapshot`]: the snapshot transaction and the ordered, parallel COPY of a range's segments.
//! - [`runner`]: the one stream runner (channel, send, summary, cancellation) and the `runner::StreamBody`
//!   each stream implements.
//! - [`sql`]: literals, the market filter and the day segments of the COPY statements.
//! - [`hash`]: the streams' content hash.
//! - [`arrow`]: LAYOUT_ARROW's schemas, market-ticker dictionary and IPC stream writer, shared by the bodies.
//! - the stream bodies: [`trades`] (StreamTrades), [`candles`] (StreamCandles), which folds trades with
//!   [`ohlcv`] and reads the write-time [`aggregates`], and [`kalshi_candles`] (StreamKalshiCandles), Kalshi's own
//!   candles as the collector stored them.

#[macro_use]
pub mod request;

pub mod aggregates;
pub mod arrow;
pub mod candles;
pub mod hash;
pub mod kalshi_candles;
pub mod ohlcv;
pub mod runner;
pub mod snapshot;
pub mod sql;
pub mod trades;

use tonic::{Request, Response, Status, codegen::BoxStream};

use crate::{
    admission::Admission,
    limits::Limits,
    proto::{
        StreamCandlesRequest, StreamCandlesResponse, StreamKalshiCandlesRequest, StreamKalshiCandlesResponse,
        StreamTradesRequest, StreamTradesResponse, replay_service_server::ReplayService,
    },
    store::db::Pool,
    token::TokenKey,
};

/// ReplayService over the pool.
#[derive(Debug, Clone)]
pub struct ReplayApi {
    pool: Pool,
    admission: Admission,
    limits: Limits,
    /// Signs and checks the resume tokens; the database's key, read once at start.
    tokens: TokenKey,
}

impl ReplayApi {
    /// A service reading from `pool`, admitting streams with `admission`, within `limits`, its resume tokens
    /// signed with `tokens`.
    pub fn new(pool: Pool, admission: Admission, limits: Limits, tokens: TokenKey) -> Self {
        Self { pool, admission, limits, tokens }
    }
}

#[tonic::async_trait]
impl ReplayService for ReplayApi {
    #[tracing::instrument(skip_all)]
    async fn stream_trades(
        &self,
        request: Request<StreamTradesRequest>,
    ) -> Result<Response<BoxStream<StreamTradesResponse>>, Status> {
        runner::start::<trades::TradeStream>(&self.pool, &self.admission, &self.limits, &self.tokens, request).await
    }

    #[tracing::instrument(skip_all)]
    async fn stream_candles(
        &self,
        request: Request<StreamCandlesRequest>,
    ) -> Result<Response<BoxStream<StreamCandlesResponse>>, Status> {
        runner::start::<candles::CandleStream>(&self.pool, &self.admission, &self.limits, &self.tokens, request).await
    }

    #[tracing::instrument(skip_all)]
    async fn stream_kalshi_candles(
        &self,
        request: Request<StreamKalshiCandlesRequest>,
    ) -> Result<Response<BoxStream<StreamKalshiCandlesResponse>>, Status> {
        runner::start::<kalshi_candles::KalshiCandleStream>(
            &self.pool,
            &self.admission,
            &self.limits,
            &self.tokens,
            request,
        )
        .await
    }
}
