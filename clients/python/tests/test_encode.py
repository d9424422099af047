"""The numpy encoder of the columnar hash against protobuf's own encoder, on the edge cases the demo data never
has: zero values (omitted by proto3), varint boundaries, non-ASCII and empty strings, ids of several lengths."""

from __future__ import annotations

import struct

import numpy as np

from kalshi_replay import _encode
from kalshi_replay._proto.kalshi.replay.v1 import types_pb2

BOUNDARIES = [0, 1, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**28, 2**35, 2**42, 2**49, 2**56, 2**63 - 1]


def _expected(rows: list[tuple[str, str, int, int, int, int, int, int]]) -> bytes:
    out = b""
    for trade_id, ticker, micros, yes, no, count, side, seq in rows:
        message = types_pb2.Trade(
            trade_id=trade_id,
            market_ticker=ticker,
            yes_price_micros=yes,
            no_price_micros=no,
            count_centi=count,
            taker_side=types_pb2.Side.ValueType(side),
            ingest_seq=seq,
        )
        message.time.SetInParent()
        message.time.seconds, rest = divmod(micros, 1_000_000)
        message.time.nanos = rest * 1000
        encoded = message.SerializeToString()
        out += struct.pack("<I", len(encoded)) + encoded
    return out


def test_the_numpy_encoding_is_protobufs() -> None:
    rows = []
    for i, value in enumerate(BOUNDARIES):
        micros = min(value, 253402300799_999_999)  # Timestamp's range ends in year 9999
        rows.append(
            (
                ["", "a", "é-ü", "6dcccbf6-2327-4527-8cf8-53986735d00c", "x" * 200][i % 5],
                ["", "KX", "KXSYNAA-26JAN05-B9542.5", "ticker-ß"][i % 4],
                micros,
                value,
                BOUNDARIES[-1 - i],
                value,
                i % 3,
                value,
            )
        )
    ids, id_lengths = _encode.padded([r[0] for r in rows])
    tickers, ticker_lengths = _encode.padded([r[1] for r in rows])
    columns = [np.array([r[k] for r in rows], dtype=np.int64) for k in range(2, 8)]
    got = _encode.encode_trades(ids, id_lengths, tickers, ticker_lengths, *columns)
    assert got.tobytes() == _expected(rows)


def test_uniform_ascii_ids_take_the_fast_path_and_agree() -> None:
    ids = [f"{i:036d}" for i in range(1000)]
    block, lengths = _encode.padded(ids)
    assert block.shape == (1000, 36)
    assert block.tobytes() == "".join(ids).encode()
    assert set(lengths.tolist()) == {36}
