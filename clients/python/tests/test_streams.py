"""Trades and candles as plain values: exact integers, the server's order, and the server's summary hash, recomputed
here from the values the client handed out."""

from __future__ import annotations

import hashlib
import struct
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from kalshi_replay import Candle, Client, Side, SummaryMismatch, Trade
from kalshi_replay._client import _check
from kalshi_replay._proto.kalshi.replay.v1 import replay_pb2, types_pb2

from .conftest import END, SERIES, START, TRADES


def _hash(messages: list[bytes]) -> bytes:
    digest = hashlib.sha256()
    for encoded in messages:
        digest.update(struct.pack("<I", len(encoded)) + encoded)
    return digest.digest()


def _trade_proto(t: Trade) -> bytes:
    message = types_pb2.Trade(
        trade_id=t.trade_id,
        market_ticker=t.market_ticker,
        yes_price_micros=t.yes_price_micros,
        no_price_micros=t.no_price_micros,
        count_centi=t.count_centi,
        taker_side=types_pb2.Side.ValueType(int(t.taker_side)),
        ingest_seq=t.ingest_seq,
    )
    message.time.seconds, micros = divmod(t.time_micros, 1_000_000)
    message.time.nanos = micros * 1000
    return message.SerializeToString()


def _candle_proto(c: Candle) -> bytes:
    message = types_pb2.Candle(
        market_ticker=c.market_ticker,
        open_micros=c.open_micros,
        high_micros=c.high_micros,
        low_micros=c.low_micros,
        close_micros=c.close_micros,
        volume_centi=c.volume_centi,
        trade_count=c.trade_count,
        vwap_micros=c.vwap_micros,
        empty=c.empty,
        partial=c.partial,
    )
    message.period_start.seconds, rest = divmod(c.period_start_micros, 1_000_000)
    message.period_start.nanos = rest * 1000
    message.period_end.seconds, rest = divmod(c.period_end_micros, 1_000_000)
    message.period_end.nanos = rest * 1000
    if c.previous_micros is not None:
        message.previous_micros = c.previous_micros
    return message.SerializeToString()


@pytest.fixture(scope="module")
def all_trades(server: object) -> tuple[list[Trade], int, bytes]:
    from .conftest import Server

    assert isinstance(server, Server)
    with Client(server.target) as client:
        stream = client.trades(series=SERIES, start=START, end=END)
        trades = list(stream)
        return trades, stream.summary.watermark, stream.summary.content_hash


def test_trades_are_exact_ordered_and_hash_as_the_server_says(all_trades: tuple[list[Trade], int, bytes]) -> None:
    trades, _, content_hash = all_trades
    assert len(trades) == TRADES
    keys = [(t.time_micros, t.market_ticker.encode(), t.trade_id.encode()) for t in trades]
    assert keys == sorted(keys), "the total order (time, market ticker, trade_id)"
    assert _hash([_trade_proto(t) for t in trades]) == content_hash
    for t in trades[:500]:
        assert 0 < t.yes_price_micros < 1_000_000
        assert t.no_price_micros == 1_000_000 - t.yes_price_micros
        assert t.count_centi > 0
        assert t.taker_side in (Side.YES, Side.NO)
        assert t.yes_price == Decimal(t.yes_price_micros) / 1_000_000
        assert t.count == Decimal(t.count_centi) / 100
        assert t.time == datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=t.time_micros)
    with pytest.raises(AttributeError):
        trades[0].yes_price_micros = 1  # type: ignore[misc]


def test_batch_sizes_and_a_pinned_watermark_give_the_same_stream(
    client: Client, all_trades: tuple[list[Trade], int, bytes]
) -> None:
    trades, watermark, content_hash = all_trades
    for batch_size in (1, 7, 16384):
        stream = client.trades(series=SERIES, start=START, end=END, batch_size=batch_size, as_of_watermark=watermark)
        assert list(stream) == trades
        assert stream.summary.content_hash == content_hash
        assert stream.summary.watermark == watermark


def test_markets_events_and_series_select_the_same_trades(
    client: Client, all_trades: tuple[list[Trade], int, bytes]
) -> None:
    trades, _, _ = all_trades
    markets = sorted({t.market_ticker for t in trades})[:2]
    by_market = list(client.trades(markets=markets, start=START, end=END))
    assert by_market == [t for t in trades if t.market_ticker in markets]
    event = client.market(markets[0]).event_ticker
    event_markets = {m.ticker for m in client.markets(event_ticker=event)}
    by_event = list(client.trades(events=[event], start=START, end=END))
    assert by_event == [t for t in trades if t.market_ticker in event_markets]
    day = list(client.trades(series=SERIES, start="2026-01-06T00:00:00Z", end="2026-01-07T00:00:00Z"))
    assert day == [
        t
        for t in trades
        if datetime(2026, 1, 6, tzinfo=timezone.utc) <= t.time < datetime(2026, 1, 7, tzinfo=timezone.utc)
    ]


def test_an_empty_range_is_just_a_summary(client: Client) -> None:
    stream = client.trades(series=SERIES, start="2030-01-01T00:00:00Z", end="2030-01-02T00:00:00Z")
    assert list(stream) == []
    assert stream.summary.item_count == 0
    assert stream.summary.content_hash == hashlib.sha256().digest()


def test_summary_is_only_there_after_the_end(client: Client) -> None:
    stream = client.trades(series=SERIES, start=START, end=END)
    next(iter(stream))
    with pytest.raises(RuntimeError, match="no summary yet"):
        _ = stream.summary
    stream.close()


def test_a_stream_resumed_from_its_token_continues_exactly(
    client: Client, all_trades: tuple[list[Trade], int, bytes]
) -> None:
    trades, watermark, content_hash = all_trades
    first = client.trades(series=SERIES, start=START, end=END, batch_size=100, as_of_watermark=watermark)
    head = [t for _, t in zip(range(250), first, strict=False)]  # two whole batches and half of the third
    token = first.resume_token
    first.close()
    rest = client.trades(series=SERIES, start=START, end=END, as_of_watermark=watermark, resume_token=token)
    assert head[:200] + list(rest) == trades
    assert rest.summary.item_count == len(trades)
    assert rest.summary.content_hash == content_hash


def test_a_summary_that_disagrees_raises(client: Client) -> None:
    stream = client.trades(series=SERIES, start="2026-01-05T00:00:00Z", end="2026-01-05T01:00:00Z")
    items = list(stream)
    summary = replay_pb2.StreamSummary(
        item_count=stream.summary.item_count, content_hash=stream.summary.content_hash, watermark=1
    )
    with pytest.raises(SummaryMismatch, match="counts"):
        _check(summary, len(items) + 1, stream.summary.content_hash)
    with pytest.raises(SummaryMismatch, match="content_hash"):
        _check(summary, len(items), hashlib.sha256(b"other").digest())


def test_candles_hash_as_the_server_says_and_agree_with_the_trades(
    client: Client, all_trades: tuple[list[Trade], int, bytes]
) -> None:
    trades, watermark, _ = all_trades
    stream = client.candles(series=SERIES, start=START, end=END, interval_seconds=3600, as_of_watermark=watermark)
    candles = list(stream)
    assert candles
    assert stream.summary.item_count == len(candles)
    assert _hash([_candle_proto(c) for c in candles]) == stream.summary.content_hash
    keys = [(c.period_start_micros, c.market_ticker.encode()) for c in candles]
    assert keys == sorted(keys)
    assert sum(c.trade_count for c in candles) == len(trades)
    assert sum(c.volume_centi for c in candles) == sum(t.count_centi for t in trades)
    first = candles[0]
    of_first = [
        t.yes_price_micros
        for t in trades
        if t.market_ticker == first.market_ticker
        and first.period_start_micros <= t.time_micros < first.period_end_micros
    ]
    assert (first.open_micros, first.close_micros) == (of_first[0], of_first[-1])
    assert (first.high_micros, first.low_micros) == (max(of_first), min(of_first))
    assert first.period_start.tzinfo == timezone.utc
    assert first.close == Decimal(first.close_micros) / 1_000_000

    # minutes of one market and day: most have no trade
    one = first.market_ticker
    day = ("2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z")
    sparse = list(client.candles(markets=one, start=day[0], end=day[1], interval_seconds=60))
    filled = client.candles(markets=one, start=day[0], end=day[1], interval_seconds=60, fill="previous")
    filled_candles = list(filled)
    assert _hash([_candle_proto(c) for c in filled_candles]) == filled.summary.content_hash
    assert any(c.empty for c in filled_candles)
    assert len(filled_candles) > len(sparse)
    assert [c for c in filled_candles if not c.empty] == sparse


def test_verify_hash_false_gives_the_same_trades_and_summary(
    client: Client, all_trades: tuple[list[Trade], int, bytes]
) -> None:
    trades, watermark, content_hash = all_trades
    stream = client.trades(series=SERIES, start=START, end=END, as_of_watermark=watermark, verify_hash=False)
    assert list(stream) == trades
    assert stream.summary.item_count == len(trades)
    assert stream.summary.content_hash == content_hash
