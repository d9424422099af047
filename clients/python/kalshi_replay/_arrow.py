"""LAYOUT_ARROW: the ipc bytes of one call's data messages, concatenated, are one Arrow IPC stream (without its
end-of-stream marker); a resumed call starts a new one. pyarrow decodes each whole stream in C++; nothing here runs
per row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.ipc

from ._model import Summary

_TS = pa.timestamp("us", tz="UTC")
_TICKER = pa.dictionary(pa.int32(), pa.utf8())

# The schemas of replay.proto's ArrowBatch, for a stream without data (whose call sends no schema).
TRADES_SCHEMA = pa.schema(
    [
        pa.field("time", _TS, nullable=False),
        pa.field("market_ticker", _TICKER, nullable=False),
        pa.field("trade_id", pa.utf8(), nullable=False),
        pa.field("yes_price_micros", pa.int64(), nullable=False),
        pa.field("no_price_micros", pa.int64(), nullable=False),
        pa.field("count_centi", pa.int64(), nullable=False),
        pa.field("taker_side", pa.int8(), nullable=False),
        pa.field("ingest_seq", pa.int64(), nullable=False),
    ]
)
CANDLES_SCHEMA = pa.schema(
    [
        pa.field("period_start", _TS, nullable=False),
        pa.field("period_end", _TS, nullable=False),
        pa.field("market_ticker", _TICKER, nullable=False),
        pa.field("open_micros", pa.int64(), nullable=False),
        pa.field("high_micros", pa.int64(), nullable=False),
        pa.field("low_micros", pa.int64(), nullable=False),
        pa.field("close_micros", pa.int64(), nullable=False),
        pa.field("volume_centi", pa.int64(), nullable=False),
        pa.field("trade_count", pa.int64(), nullable=False),
        pa.field("vwap_micros", pa.int64(), nullable=False),
        pa.field("previous_micros", pa.int64(), nullable=True),
        pa.field("empty", pa.bool_(), nullable=False),
        pa.field("partial", pa.bool_(), nullable=False),
    ]
)

# Arrow's end-of-stream marker: continuation token and a zero metadata length.
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def collect(chunks: list[bytes], tables: list[pa.Table]) -> int:
    """Decodes one call's IPC stream (its messages' ipc bytes in `chunks`, emptied) into `tables`; its row count."""
    if not chunks:
        return 0
    chunks.append(_EOS)
    table = pyarrow.ipc.open_stream(pa.py_buffer(b"".join(chunks))).read_all()
    chunks.clear()
    tables.append(table)
    return int(table.num_rows)


def concat(tables: list[pa.Table], schema: pa.Schema, summary: Summary) -> pa.Table:
    """The calls' tables as one (chunked, no copy), with the checked summary in the schema's metadata."""
    if not tables:
        table = schema.empty_table()
    elif len(tables) == 1:
        table = tables[0]
    else:
        table = pa.concat_tables(tables)
    return table.replace_schema_metadata(
        {
            "item_count": str(summary.item_count),
            "content_hash": summary.content_hash.hex(),
            "watermark": str(summary.watermark),
        }
    )
