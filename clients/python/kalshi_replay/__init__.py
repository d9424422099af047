"""A typed Python client of kalshi-replay: lookups, trade and candle replays as exact-integer values or Arrow
tables, with automatic resume and a checked summary.

    from kalshi_replay import Client

    with Client("localhost:50051") as client:
        stream = client.trades(series="KXSYNAA", start="2026-01-05T00:00:00Z", end="2026-01-06T00:00:00Z")
        for trade in stream:
            print(trade.market_ticker, trade.time, trade.yes_price, trade.count)
        print(stream.summary.item_count, stream.summary.watermark)

The generated protobuf and gRPC modules are in kalshi_replay._proto (e.g.
kalshi_replay._proto.kalshi.replay.v1.replay_pb2), for calls this client does not wrap.
"""

from ._client import CandleStream, Client, RetryEvent, TradeStream
from ._errors import InvalidArgument, NotFound, ReplayError, ResourceExhausted, SummaryMismatch, Unavailable
from ._model import (
    Candle,
    CoverageGap,
    DayCoverage,
    Event,
    Market,
    MarketCoverage,
    MarketStatus,
    MarketType,
    Series,
    Settlement,
    SettlementResult,
    Side,
    Summary,
    Trade,
    centi_to_decimal,
    decimal_to_micros,
    micros_to_datetime,
    micros_to_decimal,
)

__all__ = [
    "Candle",
    "CandleStream",
    "Client",
    "CoverageGap",
    "DayCoverage",
    "Event",
    "InvalidArgument",
    "Market",
    "MarketCoverage",
    "MarketStatus",
    "MarketType",
    "NotFound",
    "ReplayError",
    "ResourceExhausted",
    "RetryEvent",
    "Series",
    "Settlement",
    "SettlementResult",
    "Side",
    "Summary",
    "SummaryMismatch",
    "Trade",
    "TradeStream",
    "Unavailable",
    "centi_to_decimal",
    "decimal_to_micros",
    "micros_to_datetime",
    "micros_to_decimal",
]
