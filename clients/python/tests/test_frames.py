"""Arrow frames (LAYOUT_ARROW): the same trades and candles as the iterators, in the same order, with int64 values
and UTC timestamps kept exact through pandas and polars; a frame cut mid-stream resumes as a new IPC stream."""

from __future__ import annotations

import io

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.ipc
import pytest

from kalshi_replay import Candle, Client, RetryEvent, Trade
from kalshi_replay._arrow import CANDLES_SCHEMA, TRADES_SCHEMA, collect

from .conftest import END, SERIES, START, TRADES, CuttingProxy, Server

TRADE_COLUMNS = ["yes_price_micros", "no_price_micros", "count_centi", "ingest_seq"]


@pytest.fixture(scope="module")
def trades(server: Server) -> list[Trade]:
    with Client(server.target) as client:
        return list(client.trades(series=SERIES, start=START, end=END))


def _assert_trades_equal(table: pa.Table, trades: list[Trade]) -> None:
    assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in TRADES_SCHEMA]
    assert table.num_rows == len(trades)
    assert table.column("time").cast(pa.int64()).to_pylist() == [t.time_micros for t in trades]
    assert table.column("market_ticker").to_pylist() == [t.market_ticker for t in trades]
    assert table.column("trade_id").to_pylist() == [t.trade_id for t in trades]
    for name in TRADE_COLUMNS:
        assert table.column(name).to_pylist() == [getattr(t, name) for t in trades], name
    assert table.column("taker_side").to_pylist() == [int(t.taker_side) for t in trades]


def test_trades_frame_equals_the_iterator(client: Client, trades: list[Trade]) -> None:
    for batch_size in (1000, 16384):
        table = client.trades_frame(series=SERIES, start=START, end=END, batch_size=batch_size)
        _assert_trades_equal(table, trades)
        assert table.schema.metadata[b"item_count"] == str(TRADES).encode()


def test_pandas_and_polars_keep_exact_int64_and_utc(client: Client, trades: list[Trade]) -> None:
    table = client.trades_frame(series=SERIES, start=START, end=END)
    df = table.to_pandas()
    for name in TRADE_COLUMNS:
        assert df[name].dtype == "int64", name
        assert df[name].tolist() == [getattr(t, name) for t in trades], name
    assert str(df["time"].dtype) == "datetime64[us, UTC]"
    assert df["time"].iloc[0] == pd.Timestamp(trades[0].time)
    assert (df["time"].astype("int64") == [t.time_micros for t in trades]).all()
    assert df["market_ticker"].astype(str).tolist() == [t.market_ticker for t in trades]

    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    for name in TRADE_COLUMNS:
        assert frame.schema[name] == pl.Int64, name
        assert frame[name].to_list() == [getattr(t, name) for t in trades], name
    assert frame.schema["time"] == pl.Datetime("us", "UTC")
    assert frame["time"].dt.epoch("us").to_list() == [t.time_micros for t in trades]


def test_candles_frame_equals_the_iterator(client: Client) -> None:
    for fill in (None, "previous"):
        kwargs = {"start": START, "end": "2026-01-06T00:00:00Z", "interval_seconds": 60, "fill": fill}
        market = next(client.markets()).ticker
        candles: list[Candle] = list(client.candles(markets=market, **kwargs))  # type: ignore[arg-type]
        table = client.candles_frame(markets=market, batch_size=100, **kwargs)  # type: ignore[arg-type]
        assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in CANDLES_SCHEMA]
        assert table.num_rows == len(candles)
        for name in CANDLES_SCHEMA.names:
            values = table.column(name)
            if name.startswith("period_"):
                values = values.cast(pa.int64())
                name += "_micros"
            assert values.to_pylist() == [getattr(c, name) for c in candles], name


def test_an_empty_range_is_an_empty_table_with_the_schema(client: Client) -> None:
    table = client.trades_frame(series=SERIES, start="2030-01-01T00:00:00Z", end="2030-01-02T00:00:00Z")
    assert table.num_rows == 0
    assert table.schema.names == TRADES_SCHEMA.names
    assert table.to_pandas().empty


def test_a_frame_cut_mid_stream_resumes_as_a_new_ipc_stream(server: Server, trades: list[Trade]) -> None:
    proxy = CuttingProxy(server.target, cut_after=200_000)  # a few batches of the first call, then a cut
    events: list[RetryEvent] = []
    try:
        with Client(proxy.target, max_retries=5, backoff=0.05, on_retry=events.append) as client:
            table = client.trades_frame(series=SERIES, start=START, end=END, batch_size=500)
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert events, "the cut was retried"
    assert events[0].resume_token
    assert len(table.column("time").chunks) >= 2, "one IPC stream per call"
    _assert_trades_equal(table, trades)


def test_collect_reads_a_stream_with_dictionary_deltas_and_no_end_marker() -> None:
    """The decoding step alone, on an IPC stream written by pyarrow the way replay.proto describes."""
    sink = io.BytesIO()
    options = pyarrow.ipc.IpcWriteOptions(emit_dictionary_deltas=True)
    tickers = pa.dictionary(pa.int32(), pa.utf8())
    schema = pa.schema([pa.field("market_ticker", tickers), pa.field("n", pa.int64())])
    with pyarrow.ipc.new_stream(sink, schema, options=options) as writer:
        for names in (["A", "B"], ["A", "B", "C"]):
            column = pa.DictionaryArray.from_arrays(pa.array(range(len(names)), pa.int32()), pa.array(names))
            writer.write_batch(pa.record_batch([column, pa.array(range(len(names)), pa.int64())], schema=schema))
    data = sink.getvalue()[:-8]  # without the end-of-stream marker, as the server sends it
    tables: list[pa.Table] = []
    assert collect([data[:100], data[100:]], tables) == 5
    assert tables[0].column("market_ticker").to_pylist() == ["A", "B", "A", "B", "C"]
