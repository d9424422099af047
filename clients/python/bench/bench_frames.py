#!/usr/bin/env python3
"""Trades per second into a pandas DataFrame, every way a Python user has, side by side in one run.

The same rows each way: every trade of the `bench replay` dataset in [--start, --start + --days) (5 days of it
are about 1.14M trades), with the columns time, market_ticker, trade_id, yes_price_micros, count_centi,
taker_side, ingest_seq, in the replay order (time, market ticker, trade_id):

- psycopg: binary protocol, a server-side cursor, rows into DataFrame.from_records;
- ADBC: the PostgreSQL ADBC driver's Arrow table, to_pandas();
- connectorx: read_sql straight to pandas (the fastest way out of PostgreSQL: the reference to beat);
- stubs rows: the generated gRPC stubs, LAYOUT_ROWS, one Trade message at a time into column lists;
- stubs columns: the generated stubs, LAYOUT_COLUMNS, packed columns through numpy;
- client iterator: kalshi_replay.Client.trades(), plain Trade objects into column lists;
- client frame: kalshi_replay.Client.trades_frame() (LAYOUT_ARROW), to_pandas(); and into polars;
- Rust client: examples/arrow_rate.rs (`cargo build --release --example arrow_rate`), which drains the same
  stream in the Arrow layout into arrow-rs RecordBatches with the kalshi-replay-client crate and prints
  `{"trades": N, "seconds": S}`; run as `BIN --target HOST:PORT --start RFC3339 --end RFC3339 --batch-size N
  --series T [--series T ...]`. Skipped, with a line saying so, when --rust-bin is not there.

Each run measures every way in turn (so that the machine's noise spreads over all of them); the report gives
medians of --runs. Every way must deliver the same number of rows with the same sums of prices and counts, or
the script fails.

The server and database: either --target and --database-url of a running server over the bench dataset, or,
without --target, this script starts `kalshi-replay serve` (--server-bin) itself, over --database-url or over the
private PostgreSQL in --data-dir that `kalshi-replay bench replay` left (it generates the dataset on first use).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import adbc_driver_postgresql.dbapi  # type: ignore[import-untyped]
import connectorx
import grpc
import numpy as np
import pandas as pd
import polars as pl
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp

import kalshi_replay
from kalshi_replay._proto.kalshi.replay.v1 import replay_pb2, replay_pb2_grpc

REPO = Path(__file__).resolve().parents[3]
COLUMNS = ["time", "market_ticker", "trade_id", "yes_price_micros", "count_centi", "taker_side", "ingest_seq"]
MAX_MESSAGE_BYTES = 64 << 20
FETCH_ROWS = 100_000


@dataclass(frozen=True)
class Setup:
    """What every way reads: the database, the server, the range and the markets (as their series)."""

    url: str
    target: str
    start: datetime
    end: datetime
    series: list[str]
    batch_size: int

    def sql(self) -> str:
        # only the two validated datetimes are formatted into the text
        return (
            "SELECT ts AS time, ticker AS market_ticker, trade_id, yes_price_micros, count_centi, taker_side, "
            f"ingest_seq FROM trades WHERE ts >= '{self.start.isoformat()}' AND ts < '{self.end.isoformat()}' "
            "ORDER BY ts, ticker, trade_id"
        )

    def request(self, layout: replay_pb2.Layout.ValueType) -> replay_pb2.StreamTradesRequest:
        start, end = Timestamp(), Timestamp()
        start.FromDatetime(self.start)
        end.FromDatetime(self.end)
        return replay_pb2.StreamTradesRequest(
            series_tickers=self.series, start_time=start, end_time=end, batch_size=self.batch_size, layout=layout
        )


def to_time(micros: np.ndarray | list[int]) -> pd.DatetimeIndex:
    return pd.to_datetime(np.asarray(micros, dtype=np.int64), unit="us", utc=True)


# --- the ways, each returning the DataFrame it built -------------------------------------------------------------


def via_psycopg(setup: Setup) -> pd.DataFrame:
    rows: list[tuple[object, ...]] = []
    with psycopg.connect(setup.url) as conn, conn.cursor(name="bench_frames", binary=True) as cursor:
        cursor.itersize = FETCH_ROWS
        cursor.execute(setup.sql())
        while chunk := cursor.fetchmany(FETCH_ROWS):
            rows.extend(chunk)
    frame = pd.DataFrame.from_records(rows, columns=COLUMNS)
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame


def via_adbc(setup: Setup) -> pd.DataFrame:
    with adbc_driver_postgresql.dbapi.connect(setup.url) as conn, conn.cursor() as cursor:
        cursor.execute(setup.sql())
        table = cursor.fetch_arrow_table()
    frame: pd.DataFrame = table.to_pandas()
    return frame


def via_connectorx(setup: Setup) -> pd.DataFrame:
    frame: pd.DataFrame = connectorx.read_sql(setup.url, setup.sql(), return_type="pandas")
    return frame


def channel(setup: Setup) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    return grpc.insecure_channel(setup.target, options=options)


def via_stub_rows(setup: Setup) -> pd.DataFrame:
    times: list[int] = []
    tickers: list[str] = []
    ids: list[str] = []
    prices: list[int] = []
    counts: list[int] = []
    sides: list[int] = []
    seqs: list[int] = []
    with channel(setup) as ch:
        stub = replay_pb2_grpc.ReplayServiceStub(ch)
        for message in stub.StreamTrades(setup.request(replay_pb2.LAYOUT_ROWS)):
            if message.HasField("trades"):
                for t in message.trades.trades:
                    times.append(t.time.seconds * 1_000_000 + t.time.nanos // 1_000)
                    tickers.append(t.market_ticker)
                    ids.append(t.trade_id)
                    prices.append(t.yes_price_micros)
                    counts.append(t.count_centi)
                    sides.append(t.taker_side)
                    seqs.append(t.ingest_seq)
    columns = [to_time(times), tickers, ids, prices, counts, sides, seqs]
    return pd.DataFrame(dict(zip(COLUMNS, columns, strict=True)))


def via_stub_columns(setup: Setup) -> pd.DataFrame:
    dictionary: list[str] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("time", "index", "price", "count", "side", "seq")}
    ids: list[str] = []
    with channel(setup) as ch:
        stub = replay_pb2_grpc.ReplayServiceStub(ch)
        for message in stub.StreamTrades(setup.request(replay_pb2.LAYOUT_COLUMNS)):
            if message.HasField("columns"):
                c = message.columns
                dictionary.extend(c.new_market_tickers)
                parts["time"].append(np.array(c.time_micros, dtype=np.int64))
                parts["index"].append(np.array(c.market_index, dtype=np.int32))
                parts["price"].append(np.array(c.yes_price_micros, dtype=np.int64))
                parts["count"].append(np.array(c.count_centi, dtype=np.int64))
                parts["side"].append(np.array(c.taker_side, dtype=np.int8))
                parts["seq"].append(np.array(c.ingest_seq, dtype=np.int64))
                ids.extend(c.trade_id)

    def joined(name: str, dtype: type[np.generic]) -> np.ndarray:
        return np.concatenate(parts[name]) if parts[name] else np.empty(0, dtype=dtype)

    columns = [
        to_time(joined("time", np.int64)),
        pd.Categorical.from_codes(joined("index", np.int32), categories=pd.Index(dictionary)),
        ids,
        joined("price", np.int64),
        joined("count", np.int64),
        joined("side", np.int8),
        joined("seq", np.int64),
    ]
    return pd.DataFrame(dict(zip(COLUMNS, columns, strict=True)))


def via_client_iterator(setup: Setup) -> pd.DataFrame:
    times: list[int] = []
    tickers: list[str] = []
    ids: list[str] = []
    prices: list[int] = []
    counts: list[int] = []
    sides: list[int] = []
    seqs: list[int] = []
    with kalshi_replay.Client(setup.target) as client:
        for t in client.trades(series=setup.series, start=setup.start, end=setup.end, batch_size=setup.batch_size):
            times.append(t.time_micros)
            tickers.append(t.market_ticker)
            ids.append(t.trade_id)
            prices.append(t.yes_price_micros)
            counts.append(t.count_centi)
            sides.append(int(t.taker_side))
            seqs.append(t.ingest_seq)
    columns = [to_time(times), tickers, ids, prices, counts, sides, seqs]
    return pd.DataFrame(dict(zip(COLUMNS, columns, strict=True)))


def via_client_frame(setup: Setup) -> pd.DataFrame:
    with kalshi_replay.Client(setup.target) as client:
        table = client.trades_frame(series=setup.series, start=setup.start, end=setup.end, batch_size=setup.batch_size)
    frame: pd.DataFrame = table.to_pandas()
    return frame


def via_client_polars(setup: Setup) -> pl.DataFrame:
    with kalshi_replay.Client(setup.target) as client:
        table = client.trades_frame(series=setup.series, start=setup.start, end=setup.end, batch_size=setup.batch_size)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


Frame = pd.DataFrame | pl.DataFrame


@dataclass(frozen=True)
class Way:
    name: str
    run: Callable[[Setup], Frame]


WAYS = [
    Way("psycopg (binary, server-side cursor)", via_psycopg),
    Way("ADBC PostgreSQL (Arrow) -> pandas", via_adbc),
    Way("connectorx -> pandas", via_connectorx),
    Way("stubs, LAYOUT_ROWS", via_stub_rows),
    Way("stubs, LAYOUT_COLUMNS via numpy", via_stub_columns),
    Way("client trades() iterator", via_client_iterator),
    Way("client trades_frame().to_pandas()", via_client_frame),
    Way("client trades_frame() -> polars", via_client_polars),
]
RUST = "Rust client, LAYOUT_ARROW RecordBatches"


@dataclass(frozen=True)
class Rows:
    """What a way delivered, to check that every way got the same rows."""

    count: int
    price_sum: int
    count_sum: int


def rows_of(frame: Frame) -> Rows:
    if isinstance(frame, pl.DataFrame):
        return Rows(frame.height, int(frame["yes_price_micros"].sum()), int(frame["count_centi"].sum()))
    return Rows(len(frame), int(frame["yes_price_micros"].sum()), int(frame["count_centi"].sum()))


def run_rust(binary: Path, setup: Setup) -> tuple[int, float]:
    """Runs the Rust client's program: (trades, seconds) as it measured them."""
    args = [str(binary), "--target", setup.target, "--start", setup.start.isoformat(), "--end", setup.end.isoformat()]
    args += ["--batch-size", str(setup.batch_size)]
    args += [flag for ticker in setup.series for flag in ("--series", ticker)]
    done = subprocess.run(args, check=False, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{binary} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return int(report["trades"]), float(report["seconds"])


# --- the server --------------------------------------------------------------------------------------------------


@dataclass
class Started:
    target: str = ""
    url: str = ""
    log: list[str] = field(default_factory=list)


@contextmanager
def server(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(target, database URL): the given ones, or those of a `kalshi-replay serve` started here."""
    if args.target:
        if not args.database_url:
            raise SystemExit("--target needs --database-url (the server's database)")
        yield args.target, args.database_url
        return
    binary = Path(args.server_bin)
    if not binary.is_file():
        raise SystemExit(f"{binary} does not exist: build it (cargo build --release) or pass --server-bin or --target")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALSHI_REPLAY_") and k != "DATABASE_URL"}
    command = [str(binary), "serve", "--listen", "127.0.0.1:0", "--log", "info"]
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    else:
        if not Path(args.data_dir, "pg").is_dir():
            raise SystemExit(f"{args.data_dir} holds no database: run `kalshi-replay bench replay` once to make it")
        command += ["--data-dir", args.data_dir]
    child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    started = Started(url=args.database_url or "")
    try:
        assert child.stderr is not None
        deadline = time.monotonic() + 300
        for line in child.stderr:
            started.log.append(line)
            if match := re.search(r"started private postgresql.*?port=(\d+)", line):
                started.url = f"postgres://postgres@127.0.0.1:{match.group(1)}/kalshi_replay"
            if "serving grpc local=" in line:
                started.target = line.split("serving grpc local=", 1)[1].strip()
                break
            if time.monotonic() > deadline:
                break
        if not started.target or not started.url:
            raise SystemExit("the server did not start:\n" + "".join(started.log[-30:]))
        stderr = child.stderr
        threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()
        yield started.target, started.url
    finally:
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def all_series(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT DISTINCT series_ticker FROM markets ORDER BY 1")]


# --- measuring and reporting -------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    rates: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


def measure(setup: Setup, runs: int, rust_bin: Path | None, skip: set[str]) -> list[Result]:
    ways = [way for way in WAYS if way.name not in skip]
    results = {way.name: Result(way.name) for way in ways}
    if rust_bin is not None:
        results[RUST] = Result(RUST)
    reference: Rows | None = None
    for run in range(1, runs + 1):
        for way in ways:
            gc.collect()
            started = time.perf_counter()
            frame = way.run(setup)
            seconds = time.perf_counter() - started
            rows = rows_of(frame)
            del frame
            if reference is None:
                reference = rows
            elif rows != reference:
                raise SystemExit(f"{way.name} delivered {rows}, the ways before it {reference}")
            results[way.name].rates.append(rows.count / seconds)
            results[way.name].rows.append(rows.count)
            print(f"run {run}: {way.name:<40} {rows.count:>9} trades {seconds:7.2f} s", file=sys.stderr)
        if rust_bin is not None:
            count, seconds = run_rust(rust_bin, setup)
            if reference is not None and count != reference.count:
                raise SystemExit(f"{RUST} delivered {count} trades, the others {reference.count}")
            results[RUST].rates.append(count / seconds)
            results[RUST].rows.append(count)
            print(f"run {run}: {RUST:<40} {count:>9} trades {seconds:7.2f} s", file=sys.stderr)
    return list(results.values())


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def report(results: list[Result], setup: Setup, runs: int, as_json: bool, rust_note: str) -> None:
    by_name = {r.name: r for r in results}
    cx = by_name.get("connectorx -> pandas")
    pg = by_name.get("psycopg (binary, server-side cursor)")
    cx_rate = cx.median if cx else 0.0
    pg_rate = pg.median if pg else 0.0
    trades = next((r.rows[0] for r in results if r.rows), 0)

    def rate(name: str) -> float:
        return by_name[name].median if name in by_name else 0.0

    goals = {
        "frame_vs_connectorx": ratio(rate("client trades_frame().to_pandas()"), cx_rate),
        "frame_vs_rust": ratio(rate("client trades_frame().to_pandas()"), rate(RUST)),
        "iterator_vs_stub_rows": ratio(rate("client trades() iterator"), rate("stubs, LAYOUT_ROWS")),
        "iterator_vs_psycopg": ratio(rate("client trades() iterator"), pg_rate),
    }
    if as_json:
        out = {
            "trades": trades,
            "runs": runs,
            "start": setup.start.isoformat(),
            "end": setup.end.isoformat(),
            "batch_size": setup.batch_size,
            "trades_per_sec": {r.name: round(r.median) for r in results},
            "ratio_to_connectorx": {r.name: round(ratio(r.median, cx_rate), 3) for r in results},
            "ratio_to_psycopg": {r.name: round(ratio(r.median, pg_rate), 3) for r in results},
            **{k: round(v, 3) for k, v in goals.items()},
        }
        print(json.dumps(out))
        return
    print(
        f"{trades} trades in [{setup.start.isoformat()}, {setup.end.isoformat()}) into a DataFrame; medians of {runs}"
    )
    print(f"{'way':<42} {'trades/s':>12} {'x connectorx':>13} {'x psycopg':>10}")
    for r in results:
        print(f"{r.name:<42} {r.median:>12,.0f} {ratio(r.median, cx_rate):>13.2f} {ratio(r.median, pg_rate):>10.2f}")
    if rust_note:
        print(rust_note)
    lines = [
        ("frame / connectorx:   ", "frame_vs_connectorx", "goal 1.3 x or better"),
        ("frame / Rust client:  ", "frame_vs_rust", "goal 0.9 x or better"),
        ("iterator / stubs rows:", "iterator_vs_stub_rows", "goal 1.0 x or better"),
        ("iterator / psycopg:   ", "iterator_vs_psycopg", "for reference"),
    ]
    for label, key, goal in lines:
        if goals[key] > 0:  # both ways measured
            print(f"{label} {goals[key]:.2f} x  ({goal})")


def parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time zone, e.g. 2026-01-05T00:00:00Z")
    return parsed.astimezone(timezone.utc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"), help="the bench database")
    parser.add_argument("--target", help="a running server over that database, HOST:PORT (else one is started)")
    parser.add_argument("--server-bin", default=str(REPO / "target" / "release" / "kalshi-replay"))
    parser.add_argument("--data-dir", default=str(REPO / ".kalshi-replay-bench"), help="bench replay's data dir")
    parser.add_argument("--start", type=parse_time, default=parse_time("2026-01-05T00:00:00Z"))
    parser.add_argument("--days", type=int, default=5, help="days of trades from --start (default 5)")
    parser.add_argument("--end", type=parse_time, help="end of the range instead of --days (e.g. for a quick check)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096, help="trades per stream message")
    parser.add_argument(
        "--rust-bin",
        type=Path,
        default=REPO / "target" / "release" / "examples" / "arrow_rate",
        help="the Rust client's Arrow drain (examples/arrow_rate.rs); its row is skipped when it is not there",
    )
    parser.add_argument("--skip", action="append", default=[], help="leave out a way, by its name in the table")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.days < 1:
        parser.error("--runs and --days must be at least 1")
    rust_bin: Path | None = args.rust_bin
    rust_note = ""
    if rust_bin is not None and not rust_bin.is_file():
        rust_note = f"({RUST}: not measured, {rust_bin} does not exist: cargo build --release --example arrow_rate)"
        rust_bin = None
    with server(args) as (target, url):
        series = all_series(url)
        end = args.end or args.start + timedelta(days=args.days)
        setup = Setup(url, target, args.start, end, series, args.batch_size)
        results = measure(setup, args.runs, rust_bin, set(args.skip))
    report(results, setup, args.runs, args.json, rust_note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
