//! [`Client`]: one channel, the lookups with paging hidden, and the replays.

use std::{sync::Arc, time::Duration};

use arrow_array::RecordBatch;
use futures_util::{Stream, StreamExt, TryStreamExt, stream};
use tonic::transport::{Channel, Endpoint};

use crate::{
    Error,
    arrow::batches,
    proto::Event,
    proto::{
        Candle, GetCoverageRequest, GetMarketRequest, GetSettlementRequest, KalshiCandle, Layout, ListEventsRequest,
        ListMarketsRequest, ListSeriesRequest, ListSettlementsRequest, Market, MarketCoverage, Series, Settlement,
        StreamCandlesRequest, StreamKalshiCandlesRequest, StreamTradesRequest, Trade,
        reference_service_client::ReferenceServiceClient, replay_service_client::ReplayServiceClient,
    },
    replay::{
        Candles, KalshiCandles, MAX_MESSAGE_BYTES, Replay, Resumer, Retries, RetryEvent, RetryPolicy, Trades, rows,
    },
};

/// A client of one kalshi-replay server (plaintext gRPC). Cheap to clone: clones share the connection.
///
/// The channel reconnects by itself after the server went away; a replay cut meanwhile resumes on the next
/// connection (see [`RetryPolicy`]).
#[derive(Debug, Clone)]
pub struct Client {
    reference: ReferenceServiceClient<Channel>,
    replay: ReplayServiceClient<Channel>,
    retries: Retries,
}

impl Client {
    /// Connects to `target`: `host:port`, or a URI such as `http://host:port`.
    pub async fn connect(target: impl AsRef<str>) -> Result<Self, Error> {
        let target = target.as_ref();
        let uri = if target.contains("://") { target.to_owned() } else { format!("http://{target}") };
        let connect_error = |source| Error::Connect { target: target.to_owned(), source };
        let channel = Endpoint::from_shared(uri).map_err(connect_error)?.connect().await.map_err(connect_error)?;
        Ok(Self::new(channel))
    }

    /// A client over a channel built elsewhere (TLS, timeouts, a load balancer).
    pub fn new(channel: Channel) -> Self {
        Self {
            reference: ReferenceServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            replay: ReplayServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
            retries: Retries::default(),
        }
    }

    /// Replays resume under `policy` (default: [`RetryPolicy::default`]).
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retries.policy = policy;
        self
    }

    /// Calls `on_retry` before each retry of a replay (besides the `tracing` line at WARN).
    pub fn on_retry(mut self, on_retry: impl Fn(&RetryEvent) + Send + Sync + 'static) -> Self {
        self.retries.on_retry = Some(Arc::new(on_retry));
        self
    }

    /// Gives each replay call a deadline (sent as `grpc-timeout`): a call that outlives it ends with
    /// DEADLINE_EXCEEDED and is resumed by a new call with its own deadline. Default: none.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.retries.call_timeout = Some(timeout);
        self
    }

    /// The generated ReferenceService client on the same channel, for what this client does not wrap.
    pub fn reference(&self) -> ReferenceServiceClient<Channel> {
        self.reference.clone()
    }

    /// The generated ReplayService client on the same channel.
    pub fn replay(&self) -> ReplayServiceClient<Channel> {
        self.replay.clone()
    }

    // ---- lookups ----

    /// Every series matching `request`'s filters, ordered by ticker, fetched page by page as the stream is read
    /// (`page_size` as set, 0 meaning the server's default; `page_token` where to start).
    pub fn series(&self, request: ListSeriesRequest) -> impl Stream<Item = Result<Series, Error>> + Send + 'static {
        let client = self.reference.clone();
        paged(request, move |request| {
            let mut client = client.clone();
            async move {
                let page = client.list_series(request.clone()).await?.into_inner();
                let next = (!page.next_page_token.is_empty())
                    .then_some(ListSeriesRequest { page_token: page.next_page_token, ..request });
                Ok((page.series, next))
            }
        })
    }

    /// Every event matching `request`'s filters, ordered by event ticker, page by page (see [`series`](Self::series)).
    pub fn events(&self, request: ListEventsRequest) -> impl Stream<Item = Result<Event, Error>> + Send + 'static {
        let client = self.reference.clone();
        paged(request, move |request| {
            let mut client = client.clone();
            async move {
                let page = client.list_events(request.clone()).await?.into_inner();
                let next = (!page.next_page_token.is_empty())
                    .then_some(ListEventsRequest { page_token: page.next_page_token, ..request });
                Ok((page.events, next))
            }
        })
    }

    /// Every market matching `request`'s filters, ordered by ticker, page by page (see [`series`](Self::series)).
    pub fn markets(&self, request: ListMarketsRequest) -> impl Stream<Item = Result<Market, Error>> + Send + 'static {
        let client = self.reference.clone();
        paged(request, move |request| {
            let mut client = client.clone();
            async move {
                let page = client.list_markets(request.clone()).await?.into_inner();
                let next = (!page.next_page_token.is_empty())
                    .then_some(ListMarketsRequest { page_token: page.next_page_token, ..request });
                Ok((page.markets, next))
            }
        })
    }

    /// Every settlement matching `request`'s filters, ordered by market ticker, page by page (see
    /// [`series`](Self::series)).
    pub fn settlements(
        &self,
        request: ListSettlementsRequest,
    ) -> impl Stream<Item = Result<Settlement, Error>> + Send + 'static {
        let client = self.reference.clone();
        paged(request, move |request| {
            let mut client = client.clone();
            async move {
                let page = client.list_settlements(request.clone()).await?.into_inner();
                let next = (!page.next_page_token.is_empty())
                    .then_some(ListSettlementsRequest { page_token: page.next_page_token, ..request });
                Ok((page.settlements, next))
            }
        })
    }

    /// One market; NOT_FOUND naming the ticker when unknown.
    pub async fn market(&self, ticker: impl Into<String>) -> Result<Market, Error> {
        let request = GetMarketRequest { ticker: ticker.into() };
        let response = self.reference.clone().get_market(request).await?.into_inner();
        response.market.ok_or_else(|| Error::Protocol("GetMarket answered without a market".to_owned()))
    }

    /// How one market settled; NOT_FOUND naming the ticker when it has no settlement (yet).
    pub async fn settlement(&self, market_ticker: impl Into<String>) -> Result<Settlement, Error> {
        let request = GetSettlementRequest { market_ticker: market_ticker.into() };
        let response = self.reference.clone().get_settlement(request).await?.into_inner();
        response.settlement.ok_or_else(|| Error::Protocol("GetSettlement answered without a settlement".to_owned()))
    }

    /// What the server holds for each market of `request`, in request order; NOT_FOUND naming every unknown
    /// ticker.
    pub async fn coverage(&self, request: GetCoverageRequest) -> Result<Vec<MarketCoverage>, Error> {
        Ok(self.reference.clone().get_coverage(request).await?.into_inner().markets)
    }

    // ---- replays ----

    /// The trades of `request` one by one, in the stream's total order (LAYOUT_ROWS, whatever `request.layout`
    /// says), resumed after a cut, and checked at the end: the summary's item count and content hash must equal
    /// the count and hash of the trades this stream delivered, else the stream ends with
    /// [`Error::SummaryMismatch`]. A request that carries its own `resume_token` continues a stream begun
    /// elsewhere: its summary covers trades this stream never saw, so it is not checked.
    pub fn trades(&self, request: StreamTradesRequest) -> Replay<Trade> {
        rows(Resumer::<Trades>::new(self.replay.clone(), self.retries.clone(), request, Layout::Rows))
    }

    /// The candles of `request` one by one, in the stream's order, resumed and checked as
    /// [`trades`](Self::trades) are.
    pub fn candles(&self, request: StreamCandlesRequest) -> Replay<Candle> {
        rows(Resumer::<Candles>::new(self.replay.clone(), self.retries.clone(), request, Layout::Rows))
    }

    /// Kalshi's own candles of `request` one by one, in the stream's order (end time, market ticker), resumed and
    /// checked as [`trades`](Self::trades) are.
    pub fn kalshi_candles(&self, request: StreamKalshiCandlesRequest) -> Replay<KalshiCandle> {
        rows(Resumer::<KalshiCandles>::new(self.replay.clone(), self.retries.clone(), request, Layout::Rows))
    }

    /// The trades of `request` as Arrow record batches (LAYOUT_ARROW), one per data message (`batch_size` rows,
    /// the last one fewer), with the schema documented on `ArrowBatch` in replay.proto. Resumed as
    /// [`trades`](Self::trades) are; at the end the rows are counted against the summary's item count (a
    /// mismatch is [`Error::SummaryMismatch`]); the content hash is the server's, not recomputed from the rows.
    pub fn trades_arrow(&self, request: StreamTradesRequest) -> Replay<RecordBatch> {
        batches(Resumer::<Trades>::new(self.replay.clone(), self.retries.clone(), request, Layout::Arrow))
    }

    /// The candles of `request` as Arrow record batches (LAYOUT_ARROW), as [`trades_arrow`](Self::trades_arrow).
    pub fn candles_arrow(&self, request: StreamCandlesRequest) -> Replay<RecordBatch> {
        batches(Resumer::<Candles>::new(self.replay.clone(), self.retries.clone(), request, Layout::Arrow))
    }
}

/// The items of every page, fetching the next page when the items of the last are consumed: `fetch` answers a
/// page's items and the request for the next page, if any.
fn paged<Req, T, F, Fut>(first: Req, fetch: F) -> impl Stream<Item = Result<T, Error>> + Send + 'static
where
    Req: Send + 'static,
    T: Send + 'static,
    F: Fn(Req) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(Vec<T>, Option<Req>), tonic::Status>> + Send + 'static,
{
    stream::try_unfold(Some(first), move |next| {
        let page = next.map(&fetch);
        async move {
            match page {
                None => Ok(None),
                Some(page) => {
                    let (items, next) = page.await?;
                    Ok::<_, Error>(Some((stream::iter(items.into_iter().map(Ok)), next)))
                }
            }
        }
    })
    .try_flatten()
    .boxed()
}
