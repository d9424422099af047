"""The client: lookups with paging hidden, streams that resume by themselves and check their summary."""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any, Generic, Protocol, TypeVar

import grpc
import numpy as np
import pyarrow as pa

from . import _arrow, _encode
from ._errors import ReplayError, SummaryMismatch, Unavailable, from_rpc_error, status_of
from ._model import (
    _SIDES,
    Candle,
    Event,
    Market,
    MarketCoverage,
    MarketStatus,
    Series,
    Settlement,
    SettlementResult,
    Summary,
    Trade,
    _TradeBuilder,
    parse_time,
    to_timestamp,
)
from ._proto.kalshi.replay.v1 import (
    reference_pb2,
    reference_pb2_grpc,
    replay_pb2,
    replay_pb2_grpc,
    types_pb2,
)

_log = logging.getLogger("kalshi_replay")

_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# The longest pause between two retries, however many there were.
_MAX_DELAY = 10.0
# The server's default --max-response-bytes: no message it sends is larger.
_MAX_MESSAGE_BYTES = 64 << 20
_LEN = struct.Struct("<I").pack
# Items per message of the frames unless the caller says: measured over loopback, larger batches cost less CPU
# per row but overlap the server's work and the client's less (16384 took 30% longer than 4096 end to end)
_FRAME_BATCH = 4096

TimeLike = datetime | str
Tickers = str | Iterable[str]
_T = TypeVar("_T")


class _Paged(Protocol):
    """A List* response: one page and the token of the next."""

    @property
    def next_page_token(self) -> str: ...


_P = TypeVar("_P", bound=_Paged)


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """What the client tells `on_retry` (and logs) before it retries a failed call."""

    method: str
    """The RPC, e.g. 'StreamTrades'."""
    attempt: int
    """This retry's number, 1 to max_retries; it starts again at 1 once a resumed stream delivers data."""
    max_retries: int
    code: grpc.StatusCode
    message: str
    """The server's (or the transport's) message."""
    delay: float
    """Seconds the client waits before the retry."""
    delivered: int
    """Items delivered so far by this stream (0 for lookups)."""
    resume_token: str
    """The token the retry resumes from; empty: from the start."""


class _Stream(Generic[_T]):
    """An iterable of items whose `summary` is set, checked, once the stream is exhausted."""

    def __init__(self) -> None:
        self._summary: Summary | None = None
        self._resume_token = ""
        self._items: Iterator[_T] = iter(())

    def __iter__(self) -> Iterator[_T]:
        # the generator itself, so that a for loop pays no wrapper per item
        return self._items

    def __next__(self) -> _T:
        return next(self._items)

    @property
    def resume_token(self) -> str:
        """The resume token after the last batch this stream delivered in full (empty before the first): pass it
        as `resume_token=` to continue in another process with exactly the items after that batch."""
        return self._resume_token

    @property
    def summary(self) -> Summary:
        """The stream's checked summary; RuntimeError before the stream is exhausted."""
        if self._summary is None:
            raise RuntimeError("the stream has no summary yet: iterate it to the end first")
        return self._summary

    def close(self) -> None:
        """Stops reading (cancels the call); a stream dropped unfinished is closed as well."""
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


class TradeStream(_Stream[Trade]):
    """Trades in the stream's total order (time, market ticker, trade_id)."""


class CandleStream(_Stream[Candle]):
    """Candles in the order (period start, market ticker)."""


class _Response(Protocol):
    resume_token: str

    def WhichOneof(self, name: Any) -> str | None: ...  # noqa: N802 (protobuf's name)


def _tickers(value: Tickers, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    tickers = list(value)
    for ticker in tickers:
        if not isinstance(ticker, str):
            raise TypeError(f"{name}: tickers are strings, got {ticker!r}")
    return tickers


def _check(summary: replay_pb2.StreamSummary, delivered: int | None, digest: bytes | None) -> Summary:
    """The summary, after checking the count (unless None) and the content hash (unless None) delivered."""
    if delivered is not None and summary.item_count != delivered:
        raise SummaryMismatch(f"the summary counts {summary.item_count} items, the client delivered {delivered}")
    if digest is not None and summary.content_hash != digest:
        raise SummaryMismatch(
            f"the summary's content_hash {summary.content_hash.hex()} differs from the hash of the "
            f"{delivered} items delivered, {digest.hex()}"
        )
    return Summary(summary.item_count, summary.content_hash, summary.watermark)


class _Tickers:
    """A columnar stream's dictionary of market tickers, and their UTF-8 bytes for hashing."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._block, self._lengths = _encode.padded([])

    def extend(self, names: Iterable[str]) -> None:
        self.names.extend(names)
        self._block, self._lengths = _encode.padded(self.names)

    def encode_batch(
        self,
        ids: list[str],
        index: list[int],
        times: list[int],
        yes: list[int],
        counts: list[int],
        sides: list[int],
        seqs: list[int],
    ) -> Any:
        """The bytes the content hash covers for this batch of trades."""
        at = np.array(index, dtype=np.int64)
        yes_array = np.array(yes, dtype=np.int64)
        return _encode.encode_trades(
            *_encode.padded(ids),
            self._block[at],
            self._lengths[at],
            np.array(times, dtype=np.int64),
            yes_array,
            1_000_000 - yes_array,
            np.array(counts, dtype=np.int64),
            np.array(sides, dtype=np.int64),
            np.array(seqs, dtype=np.int64),
        )


class Client:
    """A client of one kalshi-replay server over a plaintext gRPC channel.

    Streams resume by themselves: when a call fails with UNAVAILABLE or DEADLINE_EXCEEDED the client waits
    `backoff` seconds (doubling with each retry, at most 10 s), calls `on_retry`, logs a warning on the
    `kalshi_replay` logger, and sends the request again with the resume token of the last data message it received;
    after `max_retries` retries in a row without new data it raises `Unavailable`. Lookups are retried the same way.
    Other errors raise at once as `NotFound`, `InvalidArgument`, `ResourceExhausted` or `ReplayError`.
    """

    def __init__(
        self,
        target: str,
        *,
        max_retries: int = 5,
        backoff: float = 0.2,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be at least 0")
        if backoff < 0:
            raise ValueError("backoff must be at least 0")
        self._max_retries = max_retries
        self._backoff = backoff
        self._on_retry = on_retry
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                # reconnect soon after a server comes back, so that a retry finds it; gRPC's own default waits
                # up to two minutes between connection attempts
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self._reference = reference_pb2_grpc.ReferenceServiceStub(self._channel)
        self._replay = replay_pb2_grpc.ReplayServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- retries

    def _retry(self, method: str, attempt: int, error: tuple[grpc.StatusCode, str], delivered: int, token: str) -> None:
        """Waits before retry number `attempt`, or raises Unavailable when the budget is spent."""
        code, message = error
        if attempt > self._max_retries:
            raise Unavailable(code, f"{message} (gave up after {self._max_retries} retries)")
        delay = min(self._backoff * 2 ** (attempt - 1), _MAX_DELAY)
        event = RetryEvent(method, attempt, self._max_retries, code, message, delay, delivered, token)
        _log.warning(
            "%s failed with %s (%s); retry %d of %d in %.2f s, %s",
            method,
            code.name,
            message,
            attempt,
            self._max_retries,
            delay,
            f"resuming after {delivered} items" if token else "from the start",
        )
        if self._on_retry is not None:
            self._on_retry(event)
        time.sleep(delay)

    def _unary(self, method: str, call: Callable[[Any], _T], request: Any) -> _T:
        attempt = 0
        while True:
            try:
                return call(request)
            except grpc.RpcError as e:
                code, message = status_of(e)
                if code not in _RETRYABLE:
                    raise from_rpc_error(e) from None
            attempt += 1
            self._retry(method, attempt, (code, message), 0, "")

    def _pages(self, method: str, call: Callable[[Any], _P], request: Any) -> Iterator[_P]:
        """Every page of a List* call, each fetched (with retries) when the caller has taken the previous one."""
        while True:
            page = self._unary(method, call, request)
            yield page
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def _responses(
        self, method: str, call: Callable[[Any], Iterator[Any]], request: Any, delivered: list[int]
    ) -> Iterator[Any]:
        """The responses of a streaming call up to its summary, resumed across failures. Yields None before each
        call after the first (a new call: for Arrow, a new IPC stream begins)."""
        attempt = 0
        while True:
            responses = call(request)
            try:
                for response in responses:
                    token = response.resume_token
                    if token:
                        request.resume_token = token
                        attempt = 0
                    yield response
                    if not token:  # the summary, the last message
                        return
                error = (grpc.StatusCode.UNAVAILABLE, "the stream ended without its summary")
            except grpc.RpcError as e:
                error = status_of(e)
                if error[0] not in _RETRYABLE:
                    raise from_rpc_error(e) from None
            finally:
                responses.cancel()  # type: ignore[attr-defined]  # grpc's iterator is also a Call
            yield None  # before the retry's pause, so that a frame decodes the cut call's bytes first
            attempt += 1
            self._retry(method, attempt, error, delivered[0], request.resume_token)

    # ---- lookups

    def series_by_ticker(self, ticker: str) -> Series:
        """One series; NotFound when unknown."""
        response = self._unary("GetSeries", self._reference.GetSeries, reference_pb2.GetSeriesRequest(ticker=ticker))
        return Series.from_proto(response.series)

    def series(self, category: str | None = None, *, tag: str | None = None, page_size: int = 0) -> Iterator[Series]:
        """All series ordered by ticker, optionally of one category or tag; pages are fetched as you iterate."""
        request = reference_pb2.ListSeriesRequest(category=category or "", tag=tag or "", page_size=page_size)
        for page in self._pages("ListSeries", self._reference.ListSeries, request):
            yield from (Series.from_proto(s) for s in page.series)

    def event(self, event_ticker: str) -> Event:
        """One event; NotFound when unknown."""
        request = reference_pb2.GetEventRequest(event_ticker=event_ticker)
        return Event.from_proto(self._unary("GetEvent", self._reference.GetEvent, request).event)

    def events(
        self,
        series_ticker: str | None = None,
        *,
        status: MarketStatus | None = None,
        category: str | None = None,
        page_size: int = 0,
    ) -> Iterator[Event]:
        """Events ordered by ticker, optionally of one series, with a market in `status`, or of one category."""
        request = reference_pb2.ListEventsRequest(
            series_ticker=series_ticker or "",
            status=types_pb2.MarketStatus.ValueType(status or 0),
            category=category or "",
            page_size=page_size,
        )
        for page in self._pages("ListEvents", self._reference.ListEvents, request):
            yield from (Event.from_proto(e) for e in page.events)

    def market(self, ticker: str) -> Market:
        """One market; NotFound when unknown."""
        response = self._unary("GetMarket", self._reference.GetMarket, reference_pb2.GetMarketRequest(ticker=ticker))
        return Market.from_proto(response.market)

    def markets(
        self,
        event_ticker: str | None = None,
        series_ticker: str | None = None,
        status: MarketStatus | None = None,
        *,
        page_size: int = 0,
    ) -> Iterator[Market]:
        """Markets ordered by ticker, with the filters given (combined with AND)."""
        request = reference_pb2.ListMarketsRequest(
            event_ticker=event_ticker or "",
            series_ticker=series_ticker or "",
            status=types_pb2.MarketStatus.ValueType(status or 0),
        )
        request.page_size = page_size
        for page in self._pages("ListMarkets", self._reference.ListMarkets, request):
            yield from (Market.from_proto(m) for m in page.markets)

    def settlement(self, ticker: str) -> Settlement:
        """How a market settled; NotFound when it has not settled (or is unknown)."""
        request = reference_pb2.GetSettlementRequest(market_ticker=ticker)
        return Settlement.from_proto(self._unary("GetSettlement", self._reference.GetSettlement, request).settlement)

    def settlements(
        self,
        event_ticker: str | None = None,
        series_ticker: str | None = None,
        result: SettlementResult | None = None,
        *,
        settled_start: TimeLike | None = None,
        settled_end: TimeLike | None = None,
        page_size: int = 0,
    ) -> Iterator[Settlement]:
        """Settlements ordered by market ticker, with the filters given (combined with AND)."""
        request = reference_pb2.ListSettlementsRequest(
            event_ticker=event_ticker or "",
            series_ticker=series_ticker or "",
            result=types_pb2.SettlementResult.ValueType(result or 0),
        )
        request.page_size = page_size
        if settled_start is not None:
            request.settled_start.CopyFrom(to_timestamp(parse_time(settled_start, "settled_start")))
        if settled_end is not None:
            request.settled_end.CopyFrom(to_timestamp(parse_time(settled_end, "settled_end")))
        for page in self._pages("ListSettlements", self._reference.ListSettlements, request):
            yield from (Settlement.from_proto(s) for s in page.settlements)

    def coverage(
        self, markets: Tickers, *, start: TimeLike | None = None, end: TimeLike | None = None
    ) -> list[MarketCoverage]:
        """Per market, in the order given: first and last trade, counts, the UTC days with data and the gaps
        (the range widened to whole UTC days)."""
        request = reference_pb2.GetCoverageRequest(market_tickers=_tickers(markets, "markets"))
        if start is not None:
            request.start_time.CopyFrom(to_timestamp(parse_time(start, "start")))
        if end is not None:
            request.end_time.CopyFrom(to_timestamp(parse_time(end, "end")))
        response = self._unary("GetCoverage", self._reference.GetCoverage, request)
        return [MarketCoverage.from_proto(c) for c in response.markets]

    # ---- streams

    @staticmethod
    def _selection(
        request: Any, markets: Tickers, events: Tickers, series: Tickers, start: TimeLike, end: TimeLike
    ) -> None:
        request.market_tickers.extend(_tickers(markets, "markets"))
        request.event_tickers.extend(_tickers(events, "events"))
        request.series_tickers.extend(_tickers(series, "series"))
        request.start_time.CopyFrom(to_timestamp(parse_time(start, "start")))
        request.end_time.CopyFrom(to_timestamp(parse_time(end, "end")))

    def _trades_request(
        self,
        markets: Tickers,
        events: Tickers,
        series: Tickers,
        start: TimeLike,
        end: TimeLike,
        as_of_watermark: int | None,
        batch_size: int,
        layout: int,
    ) -> replay_pb2.StreamTradesRequest:
        request = replay_pb2.StreamTradesRequest(batch_size=batch_size, layout=layout)  # type: ignore[arg-type]
        self._selection(request, markets, events, series, start, end)
        if as_of_watermark is not None:
            request.as_of_watermark = as_of_watermark
        return request

    def trades(
        self,
        *,
        markets: Tickers = (),
        events: Tickers = (),
        series: Tickers = (),
        start: TimeLike,
        end: TimeLike,
        as_of_watermark: int | None = None,
        batch_size: int = 0,
        resume_token: str = "",
        verify_hash: bool = True,
    ) -> TradeStream:
        """Every trade of the selected markets in [start, end), as `Trade` values, in the order (time, market ticker,
        trade_id). Markets, events and series are united; at least one ticker is required, and an unknown one
        raises NotFound naming it. `start`/`end` are aware datetimes or RFC 3339 strings.

        The trades travel as packed columns (LAYOUT_COLUMNS, `batch_size` trades per message, 0: the server's
        1024), decoded without a protobuf object per trade; each Trade is built as it is taken. The stream resumes
        by itself after UNAVAILABLE or DEADLINE_EXCEEDED (see Client). Once it is exhausted, `stream.summary`
        holds the server's summary, checked: its item_count and content_hash (SHA-256 over each trade's canonical
        protobuf encoding, prefixed by its length as a little-endian u32) equal those of the
        trades this stream delivered, or SummaryMismatch is raised.

        `resume_token` (another stream's `resume_token`, with the same markets, range and as_of_watermark)
        continues that stream; the summary then covers the whole request, of which this stream saw only the rest,
        so it is returned unchecked.

        `verify_hash=False` checks the count only and leaves the content hash to the server: rebuilding every
        trade's protobuf encoding for the hash is about half of this iterator's CPU time.
        """
        request = self._trades_request(markets, events, series, start, end, as_of_watermark, batch_size, 2)
        request.resume_token = resume_token
        stream = TradeStream()
        stream._items = self._trade_items(stream, request, verify_hash)
        return stream

    def _trade_items(
        self, stream: TradeStream, request: replay_pb2.StreamTradesRequest, verify_hash: bool
    ) -> Iterator[Trade]:
        # LAYOUT_COLUMNS: packed columns decode in C (no protobuf object per trade), and _encode rebuilds the
        # canonical encoding the hash needs with numpy, a few dozen array operations per batch
        digest = hashlib.sha256()
        delivered = [0]  # a cell the retry's report reads
        checked = not request.resume_token
        tickers = _Tickers()
        sides = _SIDES.__getitem__
        build: Any = _TradeBuilder
        for response in self._responses("StreamTrades", self._replay.StreamTrades, request, delivered):
            if response is None:
                tickers = _Tickers()  # a resumed call starts a new dictionary
                continue
            kind = response.WhichOneof("payload")
            if kind == "columns":
                c = response.columns
                if c.new_market_tickers:
                    tickers.extend(c.new_market_tickers)
                ids = list(c.trade_id)
                index = list(c.market_index)
                times = list(c.time_micros)
                yes = list(c.yes_price_micros)
                counts = list(c.count_centi)
                side = list(c.taker_side)
                seqs = list(c.ingest_seq)
                if checked and verify_hash:
                    digest.update(tickers.encode_batch(ids, index, times, yes, counts, side, seqs))
                no = [1_000_000 - y for y in yes]
                n = len(ids)
                delivered[0] += n
                # built as they are taken: a batch of live objects would survive the young GC generations and
                # cost more in collection than in construction
                items: Iterator[Any] = map(
                    build, ids, map(tickers.names.__getitem__, index), times, yes, no, counts, map(sides, side), seqs
                )
                for item in islice(items, n - 1):
                    item.__class__ = Trade
                    yield item
                for item in items:  # the last one: the token covers the batch once it is handed out
                    item.__class__ = Trade
                    stream._resume_token = response.resume_token
                    yield item
            elif kind == "summary":
                stream._summary = _check(
                    response.summary,
                    delivered[0] if checked else None,
                    digest.digest() if checked and verify_hash else None,
                )
                return
            else:
                raise ReplayError(grpc.StatusCode.INTERNAL, f"StreamTrades: unexpected payload {kind!r}")

    def candles(
        self,
        *,
        markets: Tickers = (),
        events: Tickers = (),
        series: Tickers = (),
        start: TimeLike,
        end: TimeLike,
        interval_seconds: int,
        fill: str | None = None,
        as_of_watermark: int | None = None,
        batch_size: int = 0,
        resume_token: str = "",
    ) -> CandleStream:
        """OHLCV candles of the selected markets over `interval_seconds` periods aligned to UTC midnight, in the
        order (period start, market ticker); `fill='previous'` adds empty periods. Resumes and checks its summary
        (count and content hash) as `trades` does, and takes a `resume_token` likewise."""
        request = self._candles_request(
            markets, events, series, start, end, interval_seconds, fill, as_of_watermark, batch_size, 1
        )
        request.resume_token = resume_token
        stream = CandleStream()
        stream._items = self._candle_items(stream, request)
        return stream

    def _candles_request(
        self,
        markets: Tickers,
        events: Tickers,
        series: Tickers,
        start: TimeLike,
        end: TimeLike,
        interval_seconds: int,
        fill: str | None,
        as_of_watermark: int | None,
        batch_size: int,
        layout: int,
    ) -> replay_pb2.StreamCandlesRequest:
        if fill not in (None, "none", "previous"):
            raise ValueError(f"fill: {fill!r} is not one of None, 'previous'")
        request = replay_pb2.StreamCandlesRequest(
            interval_seconds=interval_seconds,
            fill_policy=replay_pb2.FILL_POLICY_PREVIOUS if fill == "previous" else replay_pb2.FILL_POLICY_NONE,
            batch_size=batch_size,
            layout=layout,  # type: ignore[arg-type]
        )
        self._selection(request, markets, events, series, start, end)
        if as_of_watermark is not None:
            request.as_of_watermark = as_of_watermark
        return request

    def _candle_items(self, stream: CandleStream, request: replay_pb2.StreamCandlesRequest) -> Iterator[Candle]:
        digest = hashlib.sha256()
        delivered = [0]  # a cell the retry's report reads
        checked = not request.resume_token
        for response in self._responses("StreamCandles", self._replay.StreamCandles, request, delivered):
            if response is None:
                continue
            kind = response.WhichOneof("payload")
            if kind == "candles":
                parts: list[bytes] = []
                items: list[Candle] = []
                for c in response.candles.candles:
                    encoded = c.SerializeToString()
                    parts.append(_LEN(len(encoded)))
                    parts.append(encoded)
                    items.append(Candle.from_proto(c))
                digest.update(b"".join(parts))
                delivered[0] += len(items)
                if items:
                    # the token covers the batch once its last item is handed out
                    last = items.pop()
                    yield from items
                    stream._resume_token = response.resume_token
                    yield last
            elif kind == "summary":
                stream._summary = (
                    _check(response.summary, delivered[0], digest.digest())
                    if checked
                    else _check(response.summary, None, None)
                )
                return
            else:
                raise ReplayError(grpc.StatusCode.INTERNAL, f"StreamCandles: unexpected payload {kind!r}")

    # ---- Arrow frames

    def trades_frame(
        self,
        *,
        markets: Tickers = (),
        events: Tickers = (),
        series: Tickers = (),
        start: TimeLike,
        end: TimeLike,
        as_of_watermark: int | None = None,
        batch_size: int = _FRAME_BATCH,
    ) -> pa.Table:
        """The trades of `trades(...)` as one pyarrow Table, streamed in Arrow IPC (LAYOUT_ARROW): the columns arrive
        in Arrow's memory layout and the client does no work per trade. Schema (see replay.proto's ArrowBatch):
        time timestamp[us, UTC], market_ticker dictionary<int32, utf8>, trade_id utf8, yes_price_micros,
        no_price_micros, count_centi int64, taker_side int8 (1 = YES, 2 = NO), ingest_seq int64.

        `table.to_pandas()` gives int64 columns and a datetime64[us, UTC] time; `polars.from_arrow(table)` likewise.
        Resumes like `trades`. The summary check here is the item count only: re-encoding every row to protobuf
        to hash it would cost more than the transfer itself, so the content hash is left to the server (the same
        request through `trades(...)` checks it). The Table's `schema.metadata` holds the summary
        (b'item_count', b'content_hash' hex, b'watermark')."""
        request = self._trades_request(markets, events, series, start, end, as_of_watermark, batch_size, 3)
        return self._frame("StreamTrades", self._replay.StreamTrades, request, _arrow.TRADES_SCHEMA)

    def candles_frame(
        self,
        *,
        markets: Tickers = (),
        events: Tickers = (),
        series: Tickers = (),
        start: TimeLike,
        end: TimeLike,
        interval_seconds: int,
        fill: str | None = None,
        as_of_watermark: int | None = None,
        batch_size: int = _FRAME_BATCH,
    ) -> pa.Table:
        """The candles of `candles(...)` as one pyarrow Table (LAYOUT_ARROW); previous_micros is null where unset.
        Checks the item count as `trades_frame` does."""
        request = self._candles_request(
            markets, events, series, start, end, interval_seconds, fill, as_of_watermark, batch_size, 3
        )
        return self._frame("StreamCandles", self._replay.StreamCandles, request, _arrow.CANDLES_SCHEMA)

    def _frame(self, method: str, call: Callable[[Any], Iterator[Any]], request: Any, schema: pa.Schema) -> pa.Table:
        tables: list[pa.Table] = []
        chunks: list[bytes] = []
        rows = [0]  # a cell the retry's report reads
        for response in self._responses(method, call, request, rows):
            if response is None:  # a resumed call: a new IPC stream
                rows[0] += _arrow.collect(chunks, tables)
                continue
            kind = response.WhichOneof("payload")
            if kind == "arrow":
                chunks.append(response.arrow.ipc)
            elif kind == "summary":
                rows[0] += _arrow.collect(chunks, tables)
                summary = _check(response.summary, rows[0], None)
                return _arrow.concat(tables, schema, summary)
            else:
                raise ReplayError(grpc.StatusCode.INTERNAL, f"{method}: unexpected payload {kind!r}")
        raise ReplayError(grpc.StatusCode.INTERNAL, f"{method}: the stream ended without its summary")
