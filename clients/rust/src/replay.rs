//! The replay streams: one call, and then as many resumed calls as the retry policy allows, seen as one stream of
//! items whose end is checked against the server's summary.
//!
//! [`Resumer`] owns the calls: it opens one, hands out its data messages, remembers the last resume token, and
//! when the call is cut by UNAVAILABLE or DEADLINE_EXCEEDED (or a broken connection) it waits and re-sends the
//! request with that token. The item streams on top ([`rows`], and the Arrow batches of [`crate::arrow`]) hand
//! out items one by one and check the summary at the end.

use std::{
    fmt,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt, stream::BoxStream};
use tonic::{Code, Status, Streaming, transport::Channel};

use crate::{
    Error,
    proto::{
        Candle, KalshiCandle, Layout, StreamCandlesRequest, StreamCandlesResponse, StreamKalshiCandlesRequest,
        StreamKalshiCandlesResponse, StreamSummary, StreamTradesRequest, StreamTradesResponse, Trade,
        replay_service_client::ReplayServiceClient, stream_candles_response, stream_kalshi_candles_response,
        stream_trades_response,
    },
    summary::Checker,
};

/// How a replay cut by UNAVAILABLE or DEADLINE_EXCEEDED is resumed.
///
/// Retries are counted per cut: the count starts again once a resumed call delivers a data message, so a long
/// stream survives any number of cuts as long as each one heals within `max_retries` attempts. The delay before
/// attempt `n` (from 1) is `initial_backoff * 2^(n-1)`, at most `max_backoff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per cut before the stream fails with the last status. 0: never resume.
    pub max_retries: u32,
    /// The delay before the first attempt.
    pub initial_backoff: Duration,
    /// The longest delay between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts per cut, 200 ms doubling up to 10 s (0.2 + 0.4 + 0.8 + 1.6 + 3.2 s: about 6 s to heal).
    fn default() -> Self {
        Self { max_retries: 5, initial_backoff: Duration::from_millis(200), max_backoff: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// One retry of a replay, as told to [`Client::on_retry`](crate::Client::on_retry) (and logged by `tracing` at
/// WARN).
#[derive(Debug, Clone)]
pub struct RetryEvent {
    /// The RPC: `"StreamTrades"`, `"StreamCandles"` or `"StreamKalshiCandles"`.
    pub rpc: &'static str,
    /// The attempt for this cut, from 1 to the policy's `max_retries`.
    pub attempt: u32,
    /// How long the client waits before it.
    pub delay: Duration,
    /// The status that cut the call.
    pub code: Code,
    /// Its message.
    pub message: String,
    /// Items (rows, or Arrow rows) delivered before the cut.
    pub delivered: i64,
    /// True when the call resumes with a resume token; false when it starts over (no data message had arrived).
    pub resumed: bool,
}

/// The callback of [`Client::on_retry`](crate::Client::on_retry).
pub(crate) type OnRetry = Arc<dyn Fn(&RetryEvent) + Send + Sync>;

/// The retry settings a stream takes from its client.
#[derive(Clone, Default)]
pub(crate) struct Retries {
    pub(crate) policy: RetryPolicy,
    pub(crate) on_retry: Option<OnRetry>,
    pub(crate) call_timeout: Option<Duration>,
}

impl fmt::Debug for Retries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retries")
            .field("policy", &self.policy)
            .field("on_retry", &self.on_retry.is_some())
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

/// A data message's items.
pub(crate) enum Data<I> {
    /// Protobuf rows.
    Rows(Vec<I>),
    /// Arrow IPC messages.
    Arrow(prost::bytes::Bytes),
}

/// What one response carries.
pub(crate) enum Payload<I> {
    Data(Data<I>),
    Summary(StreamSummary),
    /// A payload the client does not read (another layout), named.
    Other(&'static str),
}

/// What differs between StreamTrades and StreamCandles.
pub(crate) trait Rpc: Send + 'static {
    const NAME: &'static str;
    type Request: Clone + Send + Sync + 'static;
    type Response: Send + 'static;
    type Item: prost::Message + Send + 'static;

    fn resume_token(request: &mut Self::Request) -> &mut String;
    fn set_layout(request: &mut Self::Request, layout: Layout);
    fn call(
        client: ReplayServiceClient<Channel>,
        request: tonic::Request<Self::Request>,
    ) -> impl Future<Output = Result<Streaming<Self::Response>, Status>> + Send;
    /// The payload and the resume token of a response.
    fn open(response: Self::Response) -> (Payload<Self::Item>, String);
}

/// StreamTrades.
#[derive(Debug)]
pub(crate) enum Trades {}

impl Rpc for Trades {
    const NAME: &'static str = "StreamTrades";
    type Request = StreamTradesRequest;
    type Response = StreamTradesResponse;
    type Item = Trade;

    fn resume_token(request: &mut Self::Request) -> &mut String {
        &mut request.resume_token
    }

    fn set_layout(request: &mut Self::Request, layout: Layout) {
        request.layout = layout as i32;
    }

    async fn call(
        mut client: ReplayServiceClient<Channel>,
        request: tonic::Request<Self::Request>,
    ) -> Result<Streaming<Self::Response>, Status> {
        Ok(client.stream_trades(request).await?.into_inner())
    }

    fn open(response: Self::Response) -> (Payload<Trade>, String) {
        use stream_trades_response::Payload as P;
        let payload = match response.payload {
            Some(P::Trades(batch)) => Payload::Data(Data::Rows(batch.trades)),
            Some(P::Arrow(batch)) => Payload::Data(Data::Arrow(batch.ipc)),
            Some(P::Summary(summary)) => Payload::Summary(summary),
            Some(P::Columns(_)) => Payload::Other("columns"),
            None => Payload::Other("an empty payload"),
        };
        (payload, response.resume_token)
    }
}

/// StreamCandles.
#[derive(Debug)]
pub(crate) enum Candles {}

impl Rpc for Candles {
    const NAME: &'static str = "StreamCandles";
    type Request = StreamCandlesRequest;
    type Response = StreamCandlesResponse;
    type Item = Candle;

    fn resume_token(request: &mut Self::Request) -> &mut String {
        &mut request.resume_token
    }

    fn set_layout(request: &mut Self::Request, layout: Layout) {
        request.layout = layout as i32;
    }

    async fn call(
        mut client: ReplayServiceClient<Channel>,
        request: tonic::Request<Self::Request>,
    ) -> Result<Streaming<Self::Response>, Status> {
        Ok(client.stream_candles(request).await?.into_inner())
    }

    fn open(response: Self::Response) -> (Payload<Candle>, String) {
        use stream_candles_response::Payload as P;
        let payload = match response.payload {
            Some(P::Candles(batch)) => Payload::Data(Data::Rows(batch.candles)),
            Some(P::Arrow(batch)) => Payload::Data(Data::Arrow(batch.ipc)),
            Some(P::Summary(summary)) => Payload::Summary(summary),
            None => Payload::Other("an empty payload"),
        };
        (payload, response.resume_token)
    }
}

/// StreamKalshiCandles (rows only).
#[derive(Debug)]
pub(crate) enum KalshiCandles {}

impl Rpc for KalshiCandles {
    const NAME: &'static str = "StreamKalshiCandles";
    type Request = StreamKalshiCandlesRequest;
    type Response = StreamKalshiCandlesResponse;
    type Item = KalshiCandle;

    fn resume_token(request: &mut Self::Request) -> &mut String {
        &mut request.resume_token
    }

    fn set_layout(request: &mut Self::Request, layout: Layout) {
        request.layout = layout as i32;
    }

    async fn call(
        mut client: ReplayServiceClient<Channel>,
        request: tonic::Request<Self::Request>,
    ) -> Result<Streaming<Self::Response>, Status> {
        Ok(client.stream_kalshi_candles(request).await?.into_inner())
    }

    fn open(response: Self::Response) -> (Payload<KalshiCandle>, String) {
        use stream_kalshi_candles_response::Payload as P;
        let payload = match response.payload {
            Some(P::Candles(batch)) => Payload::Data(Data::Rows(batch.candles)),
            Some(P::Summary(summary)) => Payload::Summary(summary),
            None => Payload::Other("an empty payload"),
        };
        (payload, response.resume_token)
    }
}

/// What [`Resumer::next`] hands out.
pub(crate) enum Next<I> {
    /// A data message of call number `call` (from 1): a new number means a new call, whose Arrow IPC stream
    /// starts again with the schema.
    Data { data: Data<I>, call: u64 },
    /// The summary; nothing follows.
    Summary(StreamSummary),
}

/// The calls of one replay request.
pub(crate) struct Resumer<R: Rpc> {
    client: ReplayServiceClient<Channel>,
    retries: Retries,
    request: R::Request,
    /// The resume token of the last data message received; empty before the first.
    token: String,
    call: Option<Streaming<R::Response>>,
    calls: u64,
    /// Failed attempts since the last data message.
    attempts: u32,
    finished: bool,
}

impl<R: Rpc> Resumer<R> {
    /// Calls for `request` in `layout`; the request's own resume token, if any, is where the first call starts.
    pub(crate) fn new(
        client: ReplayServiceClient<Channel>,
        retries: Retries,
        mut request: R::Request,
        layout: Layout,
    ) -> Self {
        R::set_layout(&mut request, layout);
        let token = std::mem::take(R::resume_token(&mut request));
        Self { client, retries, request, token, call: None, calls: 0, attempts: 0, finished: false }
    }

    /// True when the first call continues a stream that someone else began (its request had a resume token).
    pub(crate) fn continues_another(&self) -> bool {
        self.calls == 0 && !self.token.is_empty()
    }

    /// The next data message or the summary; None after the summary. `delivered` (items handed out so far) is
    /// for the retry reports.
    pub(crate) async fn next(&mut self, delivered: i64) -> Result<Option<Next<R::Item>>, Error> {
        if self.finished {
            return Ok(None);
        }
        loop {
            let call = match self.call.as_mut() {
                Some(call) => call,
                None => match self.open().await {
                    Ok(call) => self.call.insert(call),
                    Err(status) => {
                        self.retry(status, delivered).await?;
                        continue;
                    }
                },
            };
            let status = match call.message().await {
                Ok(Some(response)) => match R::open(response) {
                    (Payload::Data(data), token) => {
                        if token.is_empty() {
                            return Err(Error::Protocol(format!(
                                "a data message of {} without a resume token",
                                R::NAME
                            )));
                        }
                        self.token = token;
                        self.attempts = 0;
                        return Ok(Some(Next::Data { data, call: self.calls }));
                    }
                    (Payload::Summary(summary), _) => {
                        self.finished = true;
                        self.call = None;
                        return Ok(Some(Next::Summary(summary)));
                    }
                    (Payload::Other(what), _) => {
                        return Err(Error::Protocol(format!("{what} in {}", R::NAME)));
                    }
                },
                // the contract's sign of a cut stream: no summary
                Ok(None) => Status::unavailable("the stream ended without its summary"),
                Err(status) => status,
            };
            self.call = None;
            self.retry(status, delivered).await?;
        }
    }

    async fn open(&mut self) -> Result<Streaming<R::Response>, Status> {
        let mut request = self.request.clone();
        R::resume_token(&mut request).clone_from(&self.token);
        let mut request = tonic::Request::new(request);
        if let Some(timeout) = self.retries.call_timeout {
            request.set_timeout(timeout);
        }
        self.calls += 1;
        R::call(self.client.clone(), request).await
    }

    /// Waits before the next attempt, or fails with `status` when it cannot be resumed or the attempts ran out.
    async fn retry(&mut self, status: Status, delivered: i64) -> Result<(), Error> {
        if !resumable(&status) || self.attempts >= self.retries.policy.max_retries {
            return Err(status.into());
        }
        self.attempts += 1;
        let event = RetryEvent {
            rpc: R::NAME,
            attempt: self.attempts,
            delay: self.retries.policy.delay(self.attempts),
            code: status.code(),
            message: status.message().to_owned(),
            delivered,
            resumed: !self.token.is_empty(),
        };
        tracing::warn!(
            rpc = event.rpc,
            attempt = event.attempt,
            max = self.retries.policy.max_retries,
            delay = ?event.delay,
            code = ?event.code,
            message = %event.message,
            delivered,
            resumed = event.resumed,
            "replay cut, calling again"
        );
        if let Some(on_retry) = &self.retries.on_retry {
            on_retry(&event);
        }
        tokio::time::sleep(event.delay).await;
        Ok(())
    }
}

/// Whether a call ended by `status` may be resumed: UNAVAILABLE and DEADLINE_EXCEEDED from the server, and a
/// status the transport made for a broken connection (it carries the transport's error as its source; a status
/// the server sent has none), whatever code tonic gave it.
fn resumable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
        || std::error::Error::source(status).is_some() && status.code() != Code::Cancelled
}

/// A replay as a stream of items (trades, candles or Arrow record batches), checked against the server's summary
/// at its end.
///
/// Ends after the last item when the summary matched; yields an [`Error`] instead and ends when the stream failed
/// for good or the summary did not match. [`summary`](Self::summary) is the checked summary once the stream has
/// ended well.
pub struct Replay<T> {
    inner: BoxStream<'static, Result<T, Error>>,
    summary: Arc<OnceLock<StreamSummary>>,
}

impl<T> Replay<T> {
    pub(crate) fn new(inner: BoxStream<'static, Result<T, Error>>, summary: Arc<OnceLock<StreamSummary>>) -> Self {
        Self { inner, summary }
    }

    /// The summary of the whole request (item count, content hash, watermark), once the stream has ended without
    /// an error; None before. Pass its `watermark` as `as_of_watermark` to repeat the stream exactly.
    pub fn summary(&self) -> Option<&StreamSummary> {
        self.summary.get()
    }
}

impl<T> Stream for Replay<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl<T> fmt::Debug for Replay<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay").field("summary", &self.summary.get()).finish_non_exhaustive()
    }
}

/// The rows of a replay, item by item, hashed as they are handed out.
pub(crate) fn rows<R: Rpc>(resumer: Resumer<R>) -> Replay<R::Item> {
    struct State<R: Rpc> {
        resumer: Resumer<R>,
        batch: std::vec::IntoIter<R::Item>,
        checker: Checker,
        summary: Arc<OnceLock<StreamSummary>>,
    }
    let summary = Arc::new(OnceLock::new());
    let checker = if resumer.continues_another() { Checker::unchecked() } else { Checker::new() };
    let state = Box::new(State { resumer, batch: Vec::new().into_iter(), checker, summary: summary.clone() });
    let items = futures_util::stream::try_unfold(state, |mut state| async move {
        loop {
            if let Some(item) = state.batch.next() {
                state.checker.item(&item);
                return Ok(Some((item, state)));
            }
            match state.resumer.next(state.checker.count()).await? {
                Some(Next::Data { data: Data::Rows(items), .. }) => state.batch = items.into_iter(),
                Some(Next::Data { data: Data::Arrow(_), .. }) => {
                    return Err(Error::Protocol(format!("an Arrow batch in a rows stream of {}", R::NAME)));
                }
                Some(Next::Summary(summary)) => {
                    state.checker.check(&summary)?;
                    let _ = state.summary.set(summary);
                    return Ok(None);
                }
                None => return Ok(None),
            }
        }
    });
    Replay::new(items.boxed(), summary)
}

/// The protobuf message size the client accepts: the largest batch the server sends (16384 trades or candles)
/// with long tickers and ids stays far below it.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let policy = RetryPolicy::default();
        let delays: Vec<u64> = (1..=8).map(|n| policy.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(10), "no overflow");
    }

    #[test]
    fn only_cuts_are_resumed() {
        assert!(resumable(&Status::unavailable("database lost")));
        assert!(resumable(&Status::deadline_exceeded("deadline")));
        // a status the server sent: not retried, resuming would hit the same answer
        for code in [Code::Internal, Code::NotFound, Code::InvalidArgument, Code::ResourceExhausted, Code::Unknown] {
            assert!(!resumable(&Status::new(code, "from the server")), "{code:?}");
        }
        // the transport's status for a broken connection carries its error, whatever its code
        let broken = Status::from_error(Box::new(std::io::Error::other("error reading a body from connection")));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(resumable(&broken));
    }
}
