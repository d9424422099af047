"""Plain values the client hands out: exact integers (micro-dollars, centi-contracts, microseconds), with Decimal and
datetime views computed on access."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from ._proto.kalshi.replay.v1 import reference_pb2, types_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def micros_to_decimal(micros: int) -> Decimal:
    """Micro-dollars as exact dollars: 290000 -> Decimal('0.290000')."""
    return Decimal(micros).scaleb(-6)


def centi_to_decimal(centi: int) -> Decimal:
    """Centi-contracts as exact contracts: 1234 -> Decimal('12.34')."""
    return Decimal(centi).scaleb(-2)


def decimal_to_micros(dollars: Decimal | str) -> int:
    """Exact dollars as micro-dollars; a value with more than 6 decimals is a ValueError, never rounded."""
    micros = Decimal(dollars).scaleb(6)
    if micros != micros.to_integral_value():
        raise ValueError(f"{dollars} has more than 6 decimals")
    return int(micros)


def micros_to_datetime(micros: int) -> datetime:
    """Microseconds since the Unix epoch as an aware UTC datetime (exact, no float)."""
    return _EPOCH + timedelta(microseconds=micros)


def datetime_to_micros(value: datetime) -> int:
    """An aware datetime as microseconds since the Unix epoch (exact, no float)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def parse_time(value: datetime | str, name: str) -> datetime:
    """An aware datetime, or an RFC 3339 string such as '2026-01-05T00:00:00Z'; a naive datetime is refused, since
    the service's times are UTC and a local time would shift the range silently."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not an RFC 3339 time such as 2026-01-05T00:00:00Z") from None
        value = parsed
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}: {value!r} has no time zone; pass an aware datetime (e.g. tzinfo=timezone.utc)")
    return value.astimezone(timezone.utc)


def to_timestamp(value: datetime) -> Timestamp:
    micros = datetime_to_micros(value)
    return Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def _time(ts: Timestamp) -> datetime:
    return micros_to_datetime(ts.seconds * 1_000_000 + ts.nanos // 1000)


def _opt_time(message: object, field: str) -> datetime | None:
    # HasField takes a Literal per message type in the stubs; this helper serves every message, hence the ignore
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    return _time(getattr(message, field))


class Side(enum.IntEnum):
    """The side of a binary market (the Side enum of the proto)."""

    UNSPECIFIED = 0
    YES = 1
    NO = 2


class MarketStatus(enum.IntEnum):
    """A market's place in Kalshi's lifecycle."""

    UNSPECIFIED = 0
    INITIALIZED = 1
    INACTIVE = 2
    ACTIVE = 3
    CLOSED = 4
    DETERMINED = 5
    DISPUTED = 6
    AMENDED = 7
    FINALIZED = 8


class MarketType(enum.IntEnum):
    """Binary or scalar."""

    UNSPECIFIED = 0
    BINARY = 1
    SCALAR = 2


class SettlementResult(enum.IntEnum):
    """How a market settled."""

    UNSPECIFIED = 0
    YES = 1
    NO = 2
    SCALAR = 3
    VOID = 4


_E = TypeVar("_E", bound=enum.IntEnum)


def _enum(kind: type[_E], value: int) -> _E:
    try:
        return kind(value)
    except ValueError:  # a value added to the proto after this client was built
        return kind(0)


# Side by its proto number, without Side(x)'s lookup cost per trade.
_SIDES = (Side.UNSPECIFIED, Side.YES, Side.NO)


@dataclass(frozen=True, slots=True)
class Trade:
    """One executed trade, with the service's exact integers.

    `time` (an aware UTC datetime), `yes_price`, `no_price` (Decimal dollars) and `count` (Decimal contracts) are
    computed on access from the integer fields, so iterating millions of trades builds none of them."""

    trade_id: str
    market_ticker: str
    time_micros: int
    """Trade time, microseconds since the Unix epoch, UTC."""
    yes_price_micros: int
    no_price_micros: int
    count_centi: int
    taker_side: Side
    ingest_seq: int
    """The data version that stored the trade."""

    @property
    def time(self) -> datetime:
        return micros_to_datetime(self.time_micros)

    @property
    def yes_price(self) -> Decimal:
        return micros_to_decimal(self.yes_price_micros)

    @property
    def no_price(self) -> Decimal:
        return micros_to_decimal(self.no_price_micros)

    @property
    def count(self) -> Decimal:
        return centi_to_decimal(self.count_centi)


@dataclass(slots=True)
class _TradeBuilder:
    """Trade's twin without the frozen check: a frozen dataclass's __init__ pays object.__setattr__ per field
    (about 1 us per trade), so the stream builds this and switches the instance's class to Trade (same slots,
    same layout), which costs a third of that. The result is an ordinary, frozen Trade."""

    trade_id: str
    market_ticker: str
    time_micros: int
    yes_price_micros: int
    no_price_micros: int
    count_centi: int
    taker_side: Side
    ingest_seq: int


@dataclass(frozen=True, slots=True)
class Candle:
    """An OHLCV candle of the YES price over [period_start, period_end), exact integers; Decimal and datetime views
    on access."""

    market_ticker: str
    period_start_micros: int
    period_end_micros: int
    open_micros: int
    high_micros: int
    low_micros: int
    close_micros: int
    volume_centi: int
    trade_count: int
    vwap_micros: int
    previous_micros: int | None
    """The last traded price before the period; None when no earlier trade is known."""
    empty: bool
    """A filled period without trades (fill='previous')."""
    partial: bool
    """The range cuts through the period."""

    @property
    def period_start(self) -> datetime:
        return micros_to_datetime(self.period_start_micros)

    @property
    def period_end(self) -> datetime:
        return micros_to_datetime(self.period_end_micros)

    @property
    def open(self) -> Decimal:
        return micros_to_decimal(self.open_micros)

    @property
    def high(self) -> Decimal:
        return micros_to_decimal(self.high_micros)

    @property
    def low(self) -> Decimal:
        return micros_to_decimal(self.low_micros)

    @property
    def close(self) -> Decimal:
        return micros_to_decimal(self.close_micros)

    @property
    def vwap(self) -> Decimal:
        return micros_to_decimal(self.vwap_micros)

    @property
    def volume(self) -> Decimal:
        return centi_to_decimal(self.volume_centi)

    @classmethod
    def from_proto(cls, c: types_pb2.Candle) -> Candle:
        return cls(
            market_ticker=c.market_ticker,
            period_start_micros=c.period_start.seconds * 1_000_000 + c.period_start.nanos // 1000,
            period_end_micros=c.period_end.seconds * 1_000_000 + c.period_end.nanos // 1000,
            open_micros=c.open_micros,
            high_micros=c.high_micros,
            low_micros=c.low_micros,
            close_micros=c.close_micros,
            volume_centi=c.volume_centi,
            trade_count=c.trade_count,
            vwap_micros=c.vwap_micros,
            previous_micros=c.previous_micros if c.HasField("previous_micros") else None,
            empty=c.empty,
            partial=c.partial,
        )


@dataclass(frozen=True, slots=True)
class Summary:
    """The last message of a complete stream, checked by the client against what it delivered."""

    item_count: int
    content_hash: bytes
    """SHA-256 over every item's canonical protobuf encoding, each prefixed by its length (u32, little-endian)."""
    watermark: int
    """The data version read; pass it as as_of_watermark to repeat the stream exactly."""


@dataclass(frozen=True, slots=True)
class Series:
    ticker: str
    title: str
    category: str
    tags: tuple[str, ...]
    frequency: str
    contract_url: str
    fee_type: str
    updated_time: datetime | None

    @classmethod
    def from_proto(cls, s: types_pb2.Series) -> Series:
        return cls(
            ticker=s.ticker,
            title=s.title,
            category=s.category,
            tags=tuple(s.tags),
            frequency=s.frequency,
            contract_url=s.contract_url,
            fee_type=s.fee_type,
            updated_time=_opt_time(s, "updated_time"),
        )


@dataclass(frozen=True, slots=True)
class Event:
    event_ticker: str
    series_ticker: str
    title: str
    sub_title: str
    category: str
    mutually_exclusive: bool
    strike_date: datetime | None
    strike_period: str
    updated_time: datetime | None

    @classmethod
    def from_proto(cls, e: types_pb2.Event) -> Event:
        return cls(
            event_ticker=e.event_ticker,
            series_ticker=e.series_ticker,
            title=e.title,
            sub_title=e.sub_title,
            category=e.category,
            mutually_exclusive=e.mutually_exclusive,
            strike_date=_opt_time(e, "strike_date"),
            strike_period=e.strike_period,
            updated_time=_opt_time(e, "updated_time"),
        )


@dataclass(frozen=True, slots=True)
class Market:
    ticker: str
    event_ticker: str
    series_ticker: str
    market_type: MarketType
    title: str
    yes_sub_title: str
    no_sub_title: str
    status: MarketStatus
    open_time: datetime | None
    close_time: datetime | None
    expected_expiration_time: datetime | None
    latest_expiration_time: datetime | None
    settlement_timer_seconds: int
    can_close_early: bool
    strike_type: str
    floor_strike: str
    """An exact decimal string of the underlying's value; empty when none."""
    cap_strike: str
    rules_primary: str
    rules_secondary: str
    updated_time: datetime | None

    @classmethod
    def from_proto(cls, m: types_pb2.Market) -> Market:
        return cls(
            ticker=m.ticker,
            event_ticker=m.event_ticker,
            series_ticker=m.series_ticker,
            market_type=_enum(MarketType, m.market_type),
            title=m.title,
            yes_sub_title=m.yes_sub_title,
            no_sub_title=m.no_sub_title,
            status=_enum(MarketStatus, m.status),
            open_time=_opt_time(m, "open_time"),
            close_time=_opt_time(m, "close_time"),
            expected_expiration_time=_opt_time(m, "expected_expiration_time"),
            latest_expiration_time=_opt_time(m, "latest_expiration_time"),
            settlement_timer_seconds=m.settlement_timer_seconds,
            can_close_early=m.can_close_early,
            strike_type=m.strike_type,
            floor_strike=m.floor_strike,
            cap_strike=m.cap_strike,
            rules_primary=m.rules_primary,
            rules_secondary=m.rules_secondary,
            updated_time=_opt_time(m, "updated_time"),
        )


@dataclass(frozen=True, slots=True)
class Settlement:
    market_ticker: str
    event_ticker: str
    series_ticker: str
    result: SettlementResult
    settlement_value_micros: int
    """What one YES contract paid, micro-dollars."""
    determined_time: datetime | None
    settled_time: datetime | None
    updated_time: datetime | None

    @property
    def settlement_value(self) -> Decimal:
        return micros_to_decimal(self.settlement_value_micros)

    @classmethod
    def from_proto(cls, s: types_pb2.Settlement) -> Settlement:
        return cls(
            market_ticker=s.market_ticker,
            event_ticker=s.event_ticker,
            series_ticker=s.series_ticker,
            result=_enum(SettlementResult, s.result),
            settlement_value_micros=s.settlement_value_micros,
            determined_time=_opt_time(s, "determined_time"),
            settled_time=_opt_time(s, "settled_time"),
            updated_time=_opt_time(s, "updated_time"),
        )


@dataclass(frozen=True, slots=True)
class DayCoverage:
    day_start: datetime
    trade_count: int
    delta_count: int
    snapshot_count: int


@dataclass(frozen=True, slots=True)
class CoverageGap:
    """A run of whole UTC days without data: [gap_start, gap_end)."""

    gap_start: datetime
    gap_end: datetime


@dataclass(frozen=True, slots=True)
class MarketCoverage:
    market_ticker: str
    first_trade_time: datetime | None
    last_trade_time: datetime | None
    trade_count: int
    delta_count: int
    snapshot_count: int
    days: tuple[DayCoverage, ...]
    gaps: tuple[CoverageGap, ...]

    @classmethod
    def from_proto(cls, c: reference_pb2.MarketCoverage) -> MarketCoverage:
        return cls(
            market_ticker=c.market_ticker,
            first_trade_time=_opt_time(c, "first_trade_time"),
            last_trade_time=_opt_time(c, "last_trade_time"),
            trade_count=c.trade_count,
            delta_count=c.delta_count,
            snapshot_count=c.snapshot_count,
            days=tuple(DayCoverage(_time(d.day_start), d.trade_count, d.delta_count, d.snapshot_count) for d in c.days),
            gaps=tuple(CoverageGap(_time(g.gap_start), _time(g.gap_end)) for g in c.gaps),
        )
