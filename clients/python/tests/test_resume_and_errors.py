"""The server killed (SIGKILL) and restarted mid-stream: the client resumes by itself and delivers exactly the whole
stream. Errors carry the server's code and message; retries are bounded."""

from __future__ import annotations

import logging
import threading

import grpc
import pytest

from kalshi_replay import Client, InvalidArgument, NotFound, RetryEvent, Trade, Unavailable

from .conftest import END, SERIES, START, TRADES, Server, _free_port


def test_a_stream_survives_a_server_killed_and_restarted_mid_stream(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with Client(server.target) as reference:
        expected = list(reference.trades(series=SERIES, start=START, end=END))
        watermark = reference.trades(series=SERIES, start="2030-01-01T00:00:00Z", end="2030-01-02T00:00:00Z")
        list(watermark)

    events: list[RetryEvent] = []
    restarted = threading.Thread(target=server.start)
    delivered: list[Trade] = []
    with Client(server.target, max_retries=10, backoff=0.2, on_retry=events.append) as client:
        stream = client.trades(series=SERIES, start=START, end=END, batch_size=50)
        with caplog.at_level(logging.WARNING, logger="kalshi_replay"):
            for trade in stream:
                delivered.append(trade)
                if len(delivered) == 100:  # early: the transport has buffered little of the stream
                    server.kill()
                    restarted.start()  # comes back on the same port while the client retries
        restarted.join()

    assert delivered == expected, "exactly the whole stream, in order, nothing twice"
    assert stream.summary.item_count == TRADES
    assert events, "on_retry was called"
    assert all(e.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) for e in events)
    assert events[0].method == "StreamTrades"
    assert events[0].resume_token, "resumed from a token, not from the start"
    assert events[0].delivered >= 100
    assert [e.attempt for e in events] == list(range(1, len(events) + 1))
    assert any("StreamTrades failed with UNAVAILABLE" in r.getMessage() for r in caplog.records)
    assert server.starts == 2


def test_a_damaged_resume_token_is_invalid_argument_naming_the_field(client: Client) -> None:
    stream = client.trades(series=SERIES, start=START, end=END, batch_size=10)
    for _ in range(10):
        next(stream)
    token = stream.resume_token
    assert token, "the first batch was handed out in full"
    stream.close()
    damaged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(InvalidArgument) as error:
        list(client.trades(series=SERIES, start=START, end=END, resume_token=damaged))
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.message.startswith("resume_token")
    with pytest.raises(InvalidArgument, match="resume_token"):  # a token of another request
        list(client.trades(series=SERIES, start=START, end="2026-01-07T00:00:00Z", resume_token=token))


def test_a_bad_range_or_size_is_invalid_argument_naming_the_field(client: Client) -> None:
    with pytest.raises(InvalidArgument) as error:
        list(client.trades(series=SERIES, start=END, end=START))
    assert error.value.message.startswith("end_time")
    with pytest.raises(InvalidArgument) as size:
        list(client.trades(series=SERIES, start=START, end=END, batch_size=100_000))
    assert size.value.message.startswith("batch_size")
    with pytest.raises(InvalidArgument) as interval:
        list(client.candles(series=SERIES, start=START, end=END, interval_seconds=7))
    assert interval.value.message.startswith("interval_seconds")


def test_unknown_tickers_in_a_stream_are_not_found_naming_them(client: Client) -> None:
    with pytest.raises(NotFound) as error:
        list(client.trades(markets=["NO-SUCH-1", "NO-SUCH-2"], start=START, end=END))
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    assert "NO-SUCH-1" in error.value.message
    assert "NO-SUCH-2" in error.value.message
    with pytest.raises(NotFound, match="NO-SUCH-SERIES"):
        list(client.candles(series="NO-SUCH-SERIES", start=START, end=END, interval_seconds=60))


def test_the_retry_budget_is_bounded_when_the_server_stays_down() -> None:
    events: list[RetryEvent] = []
    nowhere = f"127.0.0.1:{_free_port()}"
    with Client(nowhere, max_retries=3, backoff=0.01, on_retry=events.append) as client:
        with pytest.raises(Unavailable) as stream_error:
            list(client.trades(series=SERIES, start=START, end=END))
        assert [e.attempt for e in events] == [1, 2, 3]
        assert [round(e.delay, 3) for e in events] == [0.01, 0.02, 0.04], "exponential backoff"
        assert stream_error.value.code == grpc.StatusCode.UNAVAILABLE
        assert "gave up after 3 retries" in stream_error.value.message

        events.clear()
        with pytest.raises(Unavailable):
            client.market("ANY")
        assert len(events) == 3, "lookups are retried within the same budget"

    with Client(nowhere, max_retries=0, on_retry=events.append) as client, pytest.raises(Unavailable):
        client.market("ANY")
