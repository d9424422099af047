"""The Python backtest example (examples/backtest.py) against the Rust one (examples/strategy.rs) on the same data.

Both run the cross-up threshold strategy; their last two lines (counts, then pnl_micros) must be equal, and equal
to the same strategy computed here straight from `Client.trades` and `Client.settlement`.

The Rust example is $KALSHI_REPLAY_STRATEGY_BIN, else <cargo target dir>/debug/examples/strategy (built by
`cargo build --examples`). Setting KALSHI_REPLAY_STRATEGY_BIN to an empty string skips the comparison with it
(for a Python-only checkout); the test command never does.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

import kalshi_replay

REPO = Path(__file__).resolve().parents[3]
BACKTEST = REPO / "examples" / "backtest.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the session server's generated data (conftest.py): its series and range
SERIES = ("KXSYNAA",)
START, END = "2026-01-05T00:00:00Z", "2026-01-08T00:00:00Z"


class Server(Protocol):
    """The session fixture's server: its address."""

    @property
    def target(self) -> str: ...


def cargo_target_dir() -> Path:
    """Where cargo puts its builds: $CARGO_TARGET_DIR (relative to the repository) or <repo>/target."""
    configured = os.environ.get("CARGO_TARGET_DIR")
    return REPO / configured if configured else REPO / "target"


@dataclass(frozen=True)
class Case:
    """One run of the strategy: the selection, range and parameters, as command-line flags."""

    series: tuple[str, ...] = ()
    markets: tuple[str, ...] = ()
    start: str = ""
    end: str = ""
    level_micros: int = 500_000
    qty_centi: int = 100

    def flags(self, target: str) -> list[str]:
        flags = ["--target", target, "--start", self.start, "--end", self.end]
        flags += [f for s in self.series for f in ("--series", s)]
        flags += [f for m in self.markets for f in ("--market", m)]
        return [*flags, "--level-micros", str(self.level_micros), "--qty-centi", str(self.qty_centi)]


def strategy_binary() -> Path | None:
    """The Rust example, or None when KALSHI_REPLAY_STRATEGY_BIN is set to an empty string."""
    configured = os.environ.get("KALSHI_REPLAY_STRATEGY_BIN")
    if configured is not None and not configured.strip():
        return None
    return Path(configured) if configured else cargo_target_dir() / "debug" / "examples" / "strategy"


def run(args: list[str]) -> list[str]:
    """Runs a program to success and returns its output lines."""
    done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines()


def summary_lines(lines: list[str]) -> tuple[str, str]:
    """The two summary lines both examples end with."""
    assert len(lines) >= 2, lines
    counts, pnl = lines[-2], lines[-1]
    assert counts.startswith("entries="), lines[-5:]
    assert pnl.startswith("pnl_micros="), lines[-5:]
    return counts, pnl


def counts_of(line: str) -> dict[str, int]:
    return {key: int(value) for key, value in (part.split("=") for part in line.split())}


def direct(client: kalshi_replay.Client, case: Case) -> tuple[str, str]:
    """The strategy computed here from the client's trades and settlements, in the examples' output form."""
    last: dict[str, int] = {}
    entries: dict[str, int] = {}
    stream = client.trades(markets=case.markets, series=case.series, start=case.start, end=case.end)
    trades = 0
    for trade in stream:
        trades += 1
        previous = last.get(trade.market_ticker)
        crossed = previous is not None and previous < case.level_micros <= trade.yes_price_micros
        if crossed and trade.market_ticker not in entries:
            entries[trade.market_ticker] = trade.yes_price_micros
        last[trade.market_ticker] = trade.yes_price_micros
    assert stream.summary.item_count == trades
    total = settled = 0
    for ticker, entry in entries.items():
        try:
            settlement = client.settlement(ticker)
        except kalshi_replay.NotFound:
            payout = last[ticker]
        else:
            settled += 1
            payout = {
                kalshi_replay.SettlementResult.YES: 1_000_000,
                kalshi_replay.SettlementResult.NO: 0,
                kalshi_replay.SettlementResult.SCALAR: settlement.settlement_value_micros,
                kalshi_replay.SettlementResult.VOID: entry,
            }[settlement.result]
        total += (payout - entry) * case.qty_centi // 100
    counts = f"entries={len(entries)} settled={settled} marked={len(entries) - settled} trades={trades}"
    return counts, f"pnl_micros={total}"


def check_png(path: Path) -> None:
    """A PNG a viewer can open, of a real picture's size."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 600, width
    assert height >= 400, height
    assert 20_000 <= len(data) <= 5_000_000, len(data)
    assert data.rstrip(b"\0").endswith(b"IEND\xaeB`\x82"), "the PNG is cut"
    import matplotlib.image

    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[:2] == (height, width)
    assert float(pixels.std()) > 0.01, "the picture is blank"


def cases(server: Server) -> list[Case]:
    with kalshi_replay.Client(server.target) as client:
        some = sorted(m.ticker for m in client.markets(series_ticker=SERIES[0]))[:6]
    return [
        Case(series=SERIES, start=START, end=END),
        Case(markets=tuple(some), start=START, end="2026-01-06T12:00:00Z", level_micros=300_000, qty_centi=500),
    ]


@pytest.mark.parametrize("index", [0, 1], ids=["all-series-defaults", "markets-level-qty"])
def test_backtest_pnl_equals_the_rust_example_and_the_client(server: Server, tmp_path: Path, index: int) -> None:
    case = cases(server)[index]
    png = tmp_path / "backtest.png"
    lines = run([sys.executable, str(BACKTEST), *case.flags(server.target), "--png", str(png)])
    python = summary_lines(lines)

    counts = counts_of(python[0])
    assert counts["entries"] > 0, lines[-5:]
    assert counts["settled"] + counts["marked"] == counts["entries"]
    assert sum(1 for line in lines if line.startswith("entry ")) == counts["entries"]
    check_png(png)

    with kalshi_replay.Client(server.target) as client:
        assert python == direct(client, case)

    binary = strategy_binary()
    if binary is None:
        pytest.skip("KALSHI_REPLAY_STRATEGY_BIN is empty: the Rust example is not compared")
    assert binary.is_file(), f"{binary} does not exist: run `cargo build --examples`, or set KALSHI_REPLAY_STRATEGY_BIN"
    rust = summary_lines(run([str(binary), *case.flags(server.target)]))
    assert python == rust


def test_backtest_refuses_a_quantity_that_is_not_whole_contracts(tmp_path: Path) -> None:
    args = [sys.executable, str(BACKTEST), "--target", "127.0.0.1:1", "--series", "X"]
    args += ["--start", "2026-01-05T00:00:00Z", "--end", "2026-01-06T00:00:00Z", "--qty-centi", "150"]
    done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "positive multiple of 100" in done.stderr
