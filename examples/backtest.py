#!/usr/bin/env python3
"""A backtest over a kalshi-replay stream: the cross-up threshold strategy, its P&L and a picture.

The strategy (the same as examples/strategy.rs, so both print the same P&L on the same data):
for each trade of a market, in stream order, when the market holds no position and its previous trade was
below the level while this one is at or above it, buy --qty-centi centi-contracts of YES at this trade's price
(at most one entry per market). At the end every position is paid by the market's settlement (YES 1 USD, NO 0,
SCALAR its value, VOID the entry price back) or, for a market not settled yet, marked to its last trade.

Everything that counts money is an exact integer (micro-dollars and centi-contracts); floats appear only on the
axes of the picture. The last two lines printed are the summary both examples share:

    entries=<k> settled=<s> marked=<u> trades=<n>
    pnl_micros=<total>

The PNG shows the equity curve (realised plus marked P&L, in dollars, over time) and the 1-hour candles of the
most traded selected market.

    python examples/backtest.py --target 127.0.0.1:50051 --series KXSYNAA \\
        --start 2026-01-05T00:00:00Z --end 2026-01-12T00:00:00Z --png backtest.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import kalshi_replay
import matplotlib
import matplotlib.pyplot as plt

ONE_DOLLAR_MICROS = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# the equity curve keeps at most about this many points, whatever the number of trades
CURVE_POINTS = 2000


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (a trailing Z is UTC) as an aware datetime."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time zone, e.g. 2026-01-05T00:00:00Z")
    return parsed.astimezone(timezone.utc)


def to_micros(when: datetime) -> int:
    """Microseconds since the Unix epoch, exactly."""
    delta = when - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """The UTC datetime of microseconds since the Unix epoch, exactly."""
    return EPOCH + timedelta(microseconds=micros)


def quantity(text: str) -> int:
    """--qty-centi: a positive multiple of 100 (whole contracts), so that P&L stays an exact integer."""
    value = int(text)
    if value <= 0 or value % 100 != 0:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 100, got {value}")
    return value


@dataclass
class Market:
    """The strategy's state of one market."""

    last_price: int | None = None
    last_micros: int = 0
    entry: int | None = None
    trades: int = 0


@dataclass
class Curve:
    """Marked P&L over time, sampled into at most about CURVE_POINTS buckets (the last value of each)."""

    start_micros: int
    bucket_micros: int
    points: list[tuple[int, int]] = field(default_factory=list)

    def record(self, micros: int, marked: int) -> None:
        bucket = (micros - self.start_micros) // self.bucket_micros
        if self.points and (self.points[-1][0] - self.start_micros) // self.bucket_micros == bucket:
            self.points[-1] = (micros, marked)
        else:
            self.points.append((micros, marked))


@dataclass(frozen=True)
class Exit:
    """How one position ended: paid by its settlement (at `micros`) or marked to its last trade."""

    ticker: str
    outcome: str
    entry: int
    payout: int
    pnl: int
    # where the equity curve moves from the position's last mark to its payout
    micros: int
    settle_move: int
    settled: bool


@dataclass
class Backtest:
    """The cross-up threshold strategy over one stream of trades."""

    level: int
    qty_centi: int
    curve: Curve
    markets: dict[str, Market] = field(default_factory=dict)
    trades: int = 0
    marked: int = 0

    def on_trade(self, ticker: str, micros: int, price: int) -> None:
        """One trade, in stream order."""
        self.trades += 1
        market = self.markets.get(ticker)
        if market is None:
            market = self.markets[ticker] = Market()
        market.trades += 1
        previous = market.last_price
        if market.entry is None and previous is not None and previous < self.level <= price:
            market.entry = price
            print(f"entry {ticker} at {price} micros ({from_micros(micros).isoformat()})")
            self.curve.record(micros, self.marked)
        elif market.entry is not None and previous is not None and price != previous:
            self.marked += (price - previous) * (self.qty_centi // 100)
            self.curve.record(micros, self.marked)
        market.last_price = price
        market.last_micros = micros

    def settle(self, client: kalshi_replay.Client, end_micros: int) -> list[Exit]:
        """Pays every position by its settlement, or marks it to its last trade when the market is not settled."""
        exits = []
        units = self.qty_centi // 100
        for ticker in sorted(self.markets):
            market = self.markets[ticker]
            if market.entry is None or market.last_price is None:
                continue
            try:
                settlement = client.settlement(ticker)
            except kalshi_replay.NotFound:
                payout, outcome, settled, micros = market.last_price, "marked", False, end_micros
            else:
                payout, outcome = payout_of(settlement, market.entry)
                settled = True
                when = settlement_micros(settlement)
                micros = end_micros if when is None else min(max(when, market.last_micros), end_micros)
            pnl = (payout - market.entry) * units
            move = (payout - market.last_price) * units
            exits.append(Exit(ticker, outcome, market.entry, payout, pnl, micros, move, settled))
        return exits


def payout_of(settlement: kalshi_replay.Settlement, entry: int) -> tuple[int, str]:
    """What one YES contract paid, in micros, by the settlement's result; VOID returns the entry price."""
    result = settlement.result
    if result == kalshi_replay.SettlementResult.YES:
        return ONE_DOLLAR_MICROS, "yes"
    if result == kalshi_replay.SettlementResult.NO:
        return 0, "no"
    if result == kalshi_replay.SettlementResult.SCALAR:
        return settlement.settlement_value_micros, "scalar"
    if result == kalshi_replay.SettlementResult.VOID:
        return entry, "void"
    raise ValueError(f"settlement of {settlement.market_ticker}: unknown result {result!r}")


def settlement_micros(settlement: kalshi_replay.Settlement) -> int | None:
    """When the settlement paid out (or was determined), if known."""
    when = settlement.settled_time or settlement.determined_time
    return None if when is None else to_micros(when)


def equity_series(curve: Curve, exits: Sequence[Exit], end_micros: int) -> tuple[list[int], list[int], list[int]]:
    """Times, equity (realised + marked) and realised P&L, in micros, at every change, from the range start to
    its end.

    A settled position stays in the marked curve at its last trade's price (it trades no more), so at its
    settlement the equity moves by the payout minus that price, and the position's P&L becomes realised.
    """
    events = sorted((e.micros, e.ticker, e) for e in exits if e.settled)
    times, equity, realised = [curve.start_micros], [0], [0]
    marked = shift = realised_total = 0
    i = j = 0
    while i < len(curve.points) or j < len(events):
        if j == len(events) or (i < len(curve.points) and curve.points[i][0] <= events[j][0]):
            at, marked = curve.points[i]
            i += 1
        else:
            at, _, done = events[j]
            j += 1
            shift += done.settle_move
            realised_total += done.pnl
        if at == times[-1]:  # one point per moment: the state after everything at that moment
            times.pop()
            equity.pop()
            realised.pop()
        times.append(at)
        equity.append(marked + shift)
        realised.append(realised_total)
    times.append(end_micros)
    equity.append(equity[-1])
    realised.append(realised[-1])
    return times, equity, realised


def draw(
    path: str,
    times: Sequence[int],
    equity: Sequence[int],
    realised: Sequence[int],
    ticker: str | None,
    candles: Sequence[tuple[datetime, int, int, int, int]],
    interval_seconds: int,
) -> None:
    """Writes the PNG: the equity curve above, the candles of `ticker` below (prices in dollars)."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True, height_ratios=(1, 1.2))
    moments = [from_micros(t) for t in times]
    top.step(moments, [e / ONE_DOLLAR_MICROS for e in equity], where="post", label="equity (realised + marked)")
    top.step(moments, [r / ONE_DOLLAR_MICROS for r in realised], where="post", linestyle="--", label="realised")
    top.axhline(0.0, color="grey", linewidth=0.6)
    top.set_ylabel("P&L (USD)")
    top.set_title("cross-up threshold strategy")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    if candles:
        middles = [start + timedelta(seconds=interval_seconds / 2) for start, *_ in candles]
        colors = ["tab:green" if close >= open_ else "tab:red" for _, open_, _, _, close in candles]
        lows = [low / ONE_DOLLAR_MICROS for _, _, _, low, _ in candles]
        highs = [high / ONE_DOLLAR_MICROS for _, _, high, _, _ in candles]
        bottom.vlines(middles, lows, highs, colors=colors, linewidth=0.8)
        # the body from open to close, at least a tick high so that a flat candle shows
        bodies = [max(abs(close - open_), 1_000) / ONE_DOLLAR_MICROS for _, open_, _, _, close in candles]
        bases = [min(open_, close) / ONE_DOLLAR_MICROS for _, open_, _, _, close in candles]
        width = timedelta(seconds=interval_seconds * 0.7)
        bottom.bar(middles, bodies, width=width, bottom=bases, color=colors)
    bottom.set_ylabel("YES price (USD)")
    hours = interval_seconds // 3600
    bottom.set_title(f"{ticker}: {hours}-hour candles" if ticker else "no trades in the selection")
    bottom.set_ylim(0.0, 1.0)
    bottom.grid(alpha=0.3)
    bottom.xaxis_date()
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def most_traded(markets: dict[str, Market]) -> str | None:
    """The ticker with the most trades in the stream (the first by ticker among equals)."""
    if not markets:
        return None
    return min(markets, key=lambda t: (-markets[t].trades, t))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--target", required=True, help="the server, HOST:PORT (plaintext gRPC)")
    parser.add_argument("--series", action="append", default=[], metavar="TICKER", help="a series (repeatable)")
    parser.add_argument("--market", action="append", default=[], metavar="TICKER", help="a market (repeatable)")
    parser.add_argument("--start", required=True, type=parse_time, help="start of the range, RFC 3339, inclusive")
    parser.add_argument("--end", required=True, type=parse_time, help="end of the range, RFC 3339, exclusive")
    parser.add_argument("--level-micros", type=int, default=500_000, help="the level to cross, micro-dollars")
    parser.add_argument("--qty-centi", type=quantity, default=100, help="centi-contracts bought per entry")
    parser.add_argument("--png", default="backtest.png", help="where to write the picture (default backtest.png)")
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # files only, no display
    if not args.series and not args.market:
        parser.error("select at least one --series or --market")
    if args.start >= args.end:
        parser.error("--start must be before --end")

    start_micros, end_micros = to_micros(args.start), to_micros(args.end)
    curve = Curve(start_micros, max(1, (end_micros - start_micros) // CURVE_POINTS))
    backtest = Backtest(args.level_micros, args.qty_centi, curve)
    interval_seconds = 3600
    with kalshi_replay.Client(args.target) as client:
        stream = client.trades(markets=args.market, series=args.series, start=args.start, end=args.end)
        for trade in stream:
            backtest.on_trade(trade.market_ticker, trade.time_micros, trade.yes_price_micros)
        # the client checked the summary's count and hash; its watermark pins this data version for a re-run
        print(f"replayed {stream.summary.item_count} trades at watermark {stream.summary.watermark}")
        exits = backtest.settle(client, end_micros)
        hot = most_traded(backtest.markets)
        candles: list[tuple[datetime, int, int, int, int]] = []
        if hot is not None:
            # a few hundred candles: the plain objects of candles() are all the picture needs
            for c in client.candles(markets=[hot], start=args.start, end=args.end, interval_seconds=interval_seconds):
                candles.append((c.period_start, c.open_micros, c.high_micros, c.low_micros, c.close_micros))

    for done in exits:
        print(f"exit {done.ticker} {done.outcome} entry={done.entry} payout={done.payout} pnl_micros={done.pnl}")
    times, equity, realised = equity_series(curve, exits, end_micros)
    total = sum(done.pnl for done in exits)
    if equity[-1] != total:
        raise AssertionError(f"the equity curve ends at {equity[-1]}, the P&L is {total}")
    draw(args.png, times, equity, realised, hot, candles, interval_seconds)
    print(f"wrote {args.png} (equity curve; {hot or 'no market'}: 1-hour candles)")

    settled = sum(1 for done in exits if done.settled)
    print(f"entries={len(exits)} settled={settled} marked={len(exits) - settled} trades={backtest.trades}")
    print(f"pnl_micros={total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
