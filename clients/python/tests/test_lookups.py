"""Every lookup against the demo data, with paging hidden: small pages walk the same rows as one large page."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from kalshi_replay import Client, MarketStatus, NotFound, SettlementResult

from .conftest import END, MARKETS, SERIES, START


def test_series_list_filter_and_lookup(client: Client) -> None:
    series = list(client.series())
    assert [s.ticker for s in series] == [SERIES]
    one = client.series_by_ticker(SERIES)
    assert one == series[0]
    assert one.category
    assert list(client.series(category=one.category)) == [one]
    assert list(client.series(category="no such category")) == []
    assert one.updated_time is not None
    assert one.updated_time.tzinfo == timezone.utc


def test_events_page_by_page_equal_one_page(client: Client) -> None:
    small = list(client.events(series_ticker=SERIES, page_size=1))
    large = list(client.events(series_ticker=SERIES, page_size=1000))
    assert len(small) == 3, "one event per day of the demo"
    assert small == large
    tickers = [e.event_ticker for e in small]
    assert tickers == sorted(tickers)
    assert client.event(tickers[0]) == small[0]
    assert all(e.series_ticker == SERIES for e in small)


def test_markets_page_by_page_equal_one_page_and_filters(client: Client) -> None:
    small = list(client.markets(page_size=3))  # 7 pages
    large = list(client.markets(page_size=1000))
    assert len(small) == MARKETS
    assert small == large
    tickers = [m.ticker for m in small]
    assert tickers == sorted(tickers)
    assert len(set(tickers)) == MARKETS

    event = small[0].event_ticker
    of_event = list(client.markets(event_ticker=event, page_size=2))
    assert of_event == [m for m in small if m.event_ticker == event]
    assert list(client.markets(series_ticker=SERIES)) == small
    for status in {m.status for m in small}:
        assert list(client.markets(status=status)) == [m for m in small if m.status == status]
    assert isinstance(small[0].status, MarketStatus)

    market = client.market(tickers[-1])
    assert market == small[-1]
    assert market.open_time is not None
    assert market.open_time.tzinfo == timezone.utc


def test_settlements_page_by_page_equal_one_page(client: Client) -> None:
    small = list(client.settlements(page_size=7))
    large = list(client.settlements(page_size=1000))
    assert small
    assert small == large
    assert [s.market_ticker for s in small] == sorted(s.market_ticker for s in small)
    first = small[0]
    assert client.settlement(first.market_ticker) == first
    assert isinstance(first.result, SettlementResult)
    for result in {s.result for s in small}:
        assert list(client.settlements(result=result, page_size=2)) == [s for s in small if s.result == result]
    yes_or_no = {SettlementResult.YES: 1_000_000, SettlementResult.NO: 0}
    for s in small:
        if s.result in yes_or_no:
            assert s.settlement_value_micros == yes_or_no[s.result]
    assert list(client.settlements(series_ticker=SERIES)) == small
    settled = [s.settled_time for s in small if s.settled_time is not None]
    cut = sorted(settled)[len(settled) // 2]
    later = list(client.settlements(settled_start=cut))
    assert later == [s for s in small if s.settled_time is not None and s.settled_time >= cut]


def test_coverage_in_request_order_and_consistent_with_trades(client: Client) -> None:
    tickers = [m.ticker for m in client.markets()][:3][::-1]
    coverage = client.coverage(tickers, start=START, end=END)
    assert [c.market_ticker for c in coverage] == tickers
    for c in coverage:
        trades = list(client.trades(markets=c.market_ticker, start=START, end=END))
        assert c.trade_count == len(trades)
        assert sum(d.trade_count for d in c.days) == c.trade_count
        if trades:
            assert c.first_trade_time == trades[0].time
            assert c.last_trade_time == trades[-1].time
        assert all(d.day_start.tzinfo == timezone.utc and d.day_start.hour == 0 for d in c.days)


def test_unknown_tickers_are_not_found_naming_them(client: Client) -> None:
    with pytest.raises(NotFound) as market:
        client.market("NO-SUCH-MARKET")
    assert "NO-SUCH-MARKET" in market.value.message
    with pytest.raises(NotFound) as event:
        client.event("NO-SUCH-EVENT")
    assert "NO-SUCH-EVENT" in event.value.message
    with pytest.raises(NotFound) as coverage:
        client.coverage(["NO-SUCH-A", "NO-SUCH-B"])
    assert "NO-SUCH-A" in coverage.value.message
    assert "NO-SUCH-B" in coverage.value.message


def test_times_accept_datetimes_and_refuse_naive_ones(client: Client) -> None:
    aware = datetime(2026, 1, 5, tzinfo=timezone.utc)
    ticker = next(client.markets()).ticker
    assert client.coverage([ticker], start=aware) == client.coverage([ticker], start="2026-01-05T00:00:00Z")
    with pytest.raises(ValueError, match="time zone"):
        client.coverage([ticker], start=datetime(2026, 1, 5))
