"""Tests for pipeline/simulator/session.py: snapshots, live updates and corrections, no sockets."""

from __future__ import annotations

import math

import pytest

from pipeline.dxlink import (
    REMOVE_EVENT,
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    SNAPSHOT_SNIP,
    Candle,
    SubscriptionItem,
)
from pipeline.simulator import Market, MarketConfig, Period, Series
from pipeline.simulator.bars import bar_to_candle
from pipeline.simulator.periods import HOUR_MS, MINUTE_MS, SECOND_MS
from pipeline.simulator.session import EMPTY_SNAPSHOT, SNAPSHOT_BOUNDARY, FeedSession

START = 1_756_252_800_000  # 2025-08-27T00:00Z
NOW = START + 2 * HOUR_MS  # exactly on a boundary: 02:00 is complete, nothing of 02:00 yet


def item(symbol: str, from_time: int | None = None, kind: str = "Candle") -> SubscriptionItem:
    return SubscriptionItem(kind, symbol, from_time)


def session(market: Market | None = None, *, limit: int = 10_000, chunk: int = 500) -> FeedSession:
    feed = FeedSession(market or Market(), history_limit=limit, chunk_size=chunk)
    feed.open_channel(1)
    return feed


def subscribe(feed: FeedSession, symbol: str, from_time: int | None, now: int) -> list[Candle]:
    added, ignored = feed.apply(1, add=[item(symbol, from_time)])
    assert not ignored
    return [event for chunk in feed.serve(added[0], now) for event in chunk]


def test_series_parse_normalises_and_accepts_pairs() -> None:
    """Symbols are keyed by their normalised form; (base, period) pairs work too."""
    series = Series.parse("AAPL{=1h,tho=true}")
    assert (series.key, series.base, series.period) == (
        "AAPL{=h,tho=true}",
        "AAPL",
        Period.of(1, "h"),
    )
    assert Series.parse(("AAPL", "5m")).key == "AAPL{=5m}"
    with pytest.raises(ValueError, match="not simulated"):
        Series.parse("AAPL{=100t}")


def test_snapshot_newest_first_ends_with_the_boundary_event() -> None:
    """fromTime between candles: SB on the newest, then a 0x0A boundary event at fromTime."""
    from_time = START + 90 * SECOND_MS  # inside the 00:01 minute, no candle starts there
    events = subscribe(session(), "AAPL{=1m}", from_time, START + 10 * MINUTE_MS)
    times = [e.time for e in events]
    assert times[:-1] == [START + m * MINUTE_MS for m in range(9, 1, -1)]
    assert events[0].flags == SNAPSHOT_BEGIN
    assert all(e.flags == 0 for e in events[1:-1])
    boundary = events[-1]
    assert (boundary.time, boundary.flags) == (from_time, SNAPSHOT_BOUNDARY)
    assert math.isnan(boundary.close)


def test_snapshot_with_a_candle_at_from_time_ends_on_it() -> None:
    """A candle exactly at fromTime carries SNAPSHOT_END; no boundary event follows."""
    events = subscribe(session(), "AAPL{=5m}", START, NOW)
    assert len(events) == 24
    assert events[0].flags == SNAPSHOT_BEGIN and events[0].time == NOW - 5 * MINUTE_MS
    assert (events[-1].time, events[-1].flags) == (START, SNAPSHOT_END)


def test_single_candle_snapshot_has_begin_and_end() -> None:
    """One candle at fromTime: flags SB|SE on that one event."""
    events = subscribe(session(), "AAPL{=1h}", NOW - HOUR_MS, NOW)
    assert [(e.time, e.flags) for e in events] == [(NOW - HOUR_MS, SNAPSHOT_BEGIN | SNAPSHOT_END)]


def test_empty_snapshot_has_flags_14_at_from_time() -> None:
    """No candle since fromTime (here: in the future): one event, flags 14."""
    events = subscribe(session(), "AAPL{=1m}", NOW + HOUR_MS, NOW)
    assert [(e.time, e.flags) for e in events] == [(NOW + HOUR_MS, EMPTY_SNAPSHOT)]
    assert EMPTY_SNAPSHOT == 14


def test_snapshot_past_the_history_limit_is_snipped() -> None:
    """More candles than history_limit: the newest ones, the last with SNAPSHOT_SNIP."""
    events = subscribe(session(limit=50), "AAPL{=1m}", START, NOW)
    assert len(events) == 50
    assert events[0].flags == SNAPSHOT_BEGIN
    assert events[-1].flags == SNAPSHOT_SNIP and events[-1].time == NOW - 50 * MINUTE_MS


def test_snapshot_comes_in_chunks() -> None:
    """A long snapshot is split into chunks of at most chunk_size events."""
    feed = session(chunk=40)
    added, _ = feed.apply(1, add=[item("AAPL{=1m}", START)])
    chunks = list(feed.serve(added[0], NOW))
    assert [len(c) for c in chunks] == [40, 40, 40]


def test_unknown_symbol_gets_silence() -> None:
    """A symbol the market does not trade gets no events at all (§6.2)."""
    feed = session(Market(MarketConfig(symbols=frozenset({"AAPL"}))))
    assert subscribe(feed, "MSFT{=1m}", START, NOW) == []


def test_live_updates_conflate_the_current_candle_then_start_the_next() -> None:
    """After the snapshot: the live candle once per round while it changes, then the next one."""
    market = Market()
    feed = session(market)
    subscribe(feed, "AAPL{=1m}", START, NOW + 20 * SECOND_MS)
    first = feed.updates(1, NOW + 40 * SECOND_MS)
    assert [e.time for e in first] == [NOW]
    assert first[0].flags == 0
    truth = dict(
        market.candle_bars("AAPL", Period.of(1, "m"), NOW, NOW + MINUTE_MS, NOW + 40 * SECOND_MS)
    )
    assert first[0] == bar_to_candle("AAPL{=m}", NOW, truth[NOW])
    assert feed.updates(1, NOW + 40 * SECOND_MS) == []  # nothing new: nothing sent
    rolled = feed.updates(1, NOW + MINUTE_MS + 5 * SECOND_MS)
    assert [e.time for e in rolled] == [NOW, NOW + MINUTE_MS]
    final = dict(
        market.candle_bars("AAPL", Period.of(1, "m"), NOW, NOW + MINUTE_MS, NOW + MINUTE_MS)
    )
    assert rolled[0] == bar_to_candle("AAPL{=m}", NOW, final[NOW])


def test_corrections_reach_subscribers_as_revisions_or_removals() -> None:
    """A published correction of a sent candle is re-sent, or removed with REMOVE_EVENT."""
    market = Market(MarketConfig(correction_rate=1.0, correction_remove_fraction=0.5))
    feed = session(market)
    subscribe(feed, "AAPL{=1m}", START, START)
    events = feed.updates(1, START + 6 * HOUR_MS)
    fixes = market.corrections_published("AAPL", START, START + 6 * HOUR_MS)
    assert fixes
    for fix in fixes:
        assert any(e.time == fix.minute_ms for e in events)
    removed = {e.time for e in events if e.flags & REMOVE_EVENT}
    assert removed == {fix.minute_ms for fix in fixes if fix.removes}


def test_corrections_arrive_after_the_candle_was_sent() -> None:
    """A subscriber that already holds a minute gets its revision when it is published."""
    market = Market(MarketConfig(correction_rate=1.0, correction_remove_fraction=0.0))
    fix = market.corrections_published("AAPL", START, START + HOUR_MS)[0]
    feed = session(market)
    subscribe(feed, "AAPL{=5m}", START, fix.published_ms - 1)
    events = feed.updates(1, fix.published_ms)
    five = Period.of(5, "m").start_of(fix.minute_ms)
    revised = [e for e in events if e.time == five]
    assert len(revised) == 1
    bar = market.bar("AAPL", five, five + 5 * MINUTE_MS, fix.published_ms)
    assert bar is not None and revised[0] == bar_to_candle("AAPL{=5m}", five, bar)


def test_subscription_without_from_time_gets_the_latest_candle() -> None:
    """No fromTime: the latest candle with flags 0, then updates."""
    events = subscribe(session(), "AAPL{=1h}", None, NOW + 30 * MINUTE_MS)
    assert [(e.time, e.flags) for e in events] == [(NOW, 0)]


def test_apply_orders_reset_remove_add_and_replaces_series() -> None:
    """reset clears, remove drops, add replaces an existing series with a new fromTime."""
    feed = session()
    feed.apply(1, add=[item("AAPL{=1m}", START), item("MSFT{=5m}", START)])
    feed.apply(1, remove=[item("MSFT{=5m}", 0)], add=[item("AAPL{=m}", START + HOUR_MS)])
    assert feed.subscriptions() == {1: {"AAPL{=m}": START + HOUR_MS}}
    feed.apply(1, reset=True, add=[item("IBM{=1d}", START)])
    assert feed.subscriptions() == {1: {"IBM{=d}": START}}


def test_apply_ignores_what_it_cannot_serve() -> None:
    """Non-Candle types and bad symbols are reported, not subscribed."""
    feed = session()
    added, ignored = feed.apply(1, add=[item("AAPL", kind="Quote"), item("AAPL{=5x}", START)])
    assert added == []
    assert len(ignored) == 2 and "only Candle" in ignored[0]
    with pytest.raises(ValueError, match="not open"):
        feed.apply(3, add=[item("AAPL{=1m}", START)])
