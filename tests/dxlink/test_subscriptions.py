"""The subscription registry, validation, batching by count and bytes, and pacing; no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from pipeline.dxlink.events import REMOVE_EVENT, SNAPSHOT_BEGIN, SNAPSHOT_END, SNAPSHOT_SNIP
from pipeline.dxlink.subscriptions import (
    SnapshotProgress,
    SubscriptionRegistry,
    SubscriptionState,
    validate_event_type,
    validate_from_time,
    validate_symbol,
)
from pipeline.dxlink.symbols import CandleSymbol

NOW_MS = 1_756_300_000_000  # 2025-08-27T13:06:40Z
T0 = 1_756_252_800_000  # 2025-08-27T00:00Z

PENDING, SNAPSHOT, LIVE = SubscriptionState


def aapl_5m() -> CandleSymbol:
    return CandleSymbol.of("AAPL", "5m")


# Regular subscriptions.


def test_regular_add_is_idempotent_and_reports_only_new_pairs() -> None:
    """Adding an existing (type, symbol) is a no-op; the return value lists only new ones."""
    registry = SubscriptionRegistry()
    assert registry.add_regular("Quote", ["AAPL", "SPY", "AAPL"]) == [
        ("Quote", "AAPL"),
        ("Quote", "SPY"),
    ]
    assert registry.add_regular("Quote", ["SPY", " QQQ "]) == [("Quote", "QQQ")]
    assert set(registry.regular) == {("Quote", "AAPL"), ("Quote", "SPY"), ("Quote", "QQQ")}
    assert registry.add_regular("Trade", ["AAPL"]) == [("Trade", "AAPL")]


def test_regular_remove_reports_what_was_there() -> None:
    """Removing returns only pairs that existed; removing again is a no-op."""
    registry = SubscriptionRegistry()
    registry.add_regular("Quote", ["AAPL", "SPY"])
    assert registry.remove_regular("Quote", ["AAPL", "MSFT"]) == [("Quote", "AAPL")]
    assert registry.remove_regular("Quote", ["AAPL"]) == []
    assert ("Quote", "SPY") in registry.regular and len(registry.regular) == 1


def test_regular_add_with_one_bad_symbol_adds_nothing() -> None:
    """Validation happens before any change, so a bad batch leaves the registry untouched."""
    registry = SubscriptionRegistry()
    with pytest.raises(ValueError, match="not a symbol"):
        registry.add_regular("Quote", ["AAPL", "BAD SYMBOL"])
    assert len(registry) == 0


def test_views_are_read_only_and_live() -> None:
    """`regular` and `candles` reflect changes but cannot be mutated through the view."""
    registry = SubscriptionRegistry()
    regular, candles = registry.regular, registry.candles
    registry.add_regular("Quote", ["AAPL"])
    registry.add_candle(aapl_5m(), T0, now=1.0)
    assert ("Quote", "AAPL") in regular and "AAPL{=5m}" in candles
    assert not hasattr(regular, "add")
    with pytest.raises(TypeError):
        candles["X{=m}"] = candles["AAPL{=5m}"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("event_type", "message"),
    [
        ("Candle", "use subscribe_to_candles"),
        ("", "not a dxFeed event type"),
        ("Quote!", "not a dxFeed event type"),
    ],
)
def test_event_type_validation(event_type: str, message: str) -> None:
    """Bad event types (and Candle, which needs fromTime) are refused with the fix named."""
    with pytest.raises(ValueError, match=message):
        validate_event_type(event_type)


@pytest.mark.parametrize(
    ("symbol", "message"),
    [("", "not a symbol"), ("A B", "not a symbol"), ("AAPL{=5m}", "subscribe_to_candles")],
)
def test_symbol_validation(symbol: str, message: str) -> None:
    """Empty symbols, spaces and candle syntax are refused with a clear message."""
    with pytest.raises(ValueError, match=message):
        validate_symbol(symbol)


# Candle subscriptions.


def test_candle_add_keys_by_normalised_symbol() -> None:
    """`AAPL{=1d}` and `AAPL{=d}` are one series; its metadata records fromTime and added_at."""
    registry = SubscriptionRegistry()
    added = registry.add_candle(CandleSymbol.parse("AAPL{=1d}"), T0, now=5.0)
    assert added is not None and added.key == "AAPL{=d}"
    assert registry.add_candle(CandleSymbol.parse("AAPL{=d}"), T0, now=6.0) is None
    meta = registry.candles["AAPL{=d}"]
    assert (meta.from_time, meta.added_at, meta.state, meta.sent_from) == (T0, 5.0, PENDING, None)


def test_candle_re_add_with_new_from_time_replaces_it() -> None:
    """§2.3: the same series with a new fromTime replaces the old one and restarts it."""
    registry = SubscriptionRegistry()
    registry.add_candle(aapl_5m(), T0, now=1.0)
    registry.sent("AAPL{=5m}", T0)
    registry.observe("AAPL{=5m}", SNAPSHOT_BEGIN | SNAPSHOT_END)
    changed = registry.add_candle(aapl_5m(), T0 - 60_000, now=2.0)
    assert changed is not None
    assert (changed.from_time, changed.added_at, changed.state) == (T0 - 60_000, 2.0, PENDING)
    assert len(registry.candles) == 1


def test_candle_remove_is_idempotent() -> None:
    """Removing returns the subscription once, then None."""
    registry = SubscriptionRegistry()
    registry.add_candle(aapl_5m(), T0, now=1.0)
    removed = registry.remove_candle("AAPL{=5m}")
    assert removed is not None and removed.from_time == T0
    assert registry.remove_candle("AAPL{=5m}") is None
    assert len(registry) == 0


@pytest.mark.parametrize(
    ("flags_seen", "state", "snipped"),
    [
        ([SNAPSHOT_BEGIN], SNAPSHOT, False),
        ([SNAPSHOT_BEGIN, 0, 0, SNAPSHOT_END], LIVE, False),
        ([SNAPSHOT_BEGIN, SNAPSHOT_SNIP], LIVE, True),
        ([SNAPSHOT_BEGIN | SNAPSHOT_END | REMOVE_EVENT], LIVE, False),  # empty snapshot, 14
        ([SNAPSHOT_END], PENDING, False),  # an END without a BEGIN starts nothing
    ],
)
def test_observe_tracks_snapshot_progress(flags_seen: list[int], state: str, snipped: bool) -> None:
    """eventFlags move a series pending → snapshot → live (§6.1, §6.2)."""
    registry = SubscriptionRegistry()
    registry.add_candle(aapl_5m(), T0, now=1.0)
    changes = [registry.observe("AAPL{=5m}", flags) for flags in flags_seen]
    assert registry.candles["AAPL{=5m}"].state == state
    last = [c for c in changes if c is not None]
    if state is LIVE:
        assert last[-1] == SnapshotProgress("AAPL{=5m}", LIVE, snipped=snipped)


def test_observe_ignores_series_not_in_the_registry() -> None:
    """Data for a series removed while in flight changes nothing."""
    assert SubscriptionRegistry().observe("AAPL{=5m}", SNAPSHOT_BEGIN) is None


def test_on_disconnect_resets_progress_but_keeps_subscriptions() -> None:
    """After a disconnect every series is pending again, with no fromTime sent."""
    registry = SubscriptionRegistry()
    registry.add_regular("Quote", ["AAPL"])
    registry.add_candle(aapl_5m(), T0, now=1.0)
    registry.sent("AAPL{=5m}", T0 + 1)
    registry.observe("AAPL{=5m}", SNAPSHOT_BEGIN | SNAPSHOT_END)
    registry.on_disconnect()
    meta = registry.candles["AAPL{=5m}"]
    assert (meta.state, meta.sent_from, meta.from_time) == (PENDING, None, T0)
    assert len(registry) == 2


def test_resume_from_uses_resume_points_but_never_before_the_request() -> None:
    """A resume point wins when later than fromTime; missing or None falls back to fromTime."""
    registry = SubscriptionRegistry()
    for base in ("A", "B", "C", "D"):
        registry.add_candle(CandleSymbol.of(base, "1m"), T0, now=1.0)
    got = registry.resume_from({"A{=m}": T0 + 600_000, "B{=m}": T0 - 600_000, "C{=m}": None})
    assert got == {"A{=m}": T0 + 600_000, "B{=m}": T0, "C{=m}": T0, "D{=m}": T0}


def test_counts_by_kind_and_state() -> None:
    """counts() reports regular and candle totals and candle series per state."""
    registry = SubscriptionRegistry()
    registry.add_regular("Quote", ["AAPL", "SPY"])
    registry.add_candle(aapl_5m(), T0, now=1.0)
    registry.add_candle(CandleSymbol.of("SPY", "1d"), T0, now=1.0)
    registry.observe("SPY{=d}", SNAPSHOT_BEGIN)
    assert registry.counts() == {
        "regular": 2,
        "candles": 2,
        "candles_by_state": {"pending": 1, "snapshot": 1, "live": 0},
    }


# fromTime validation.


def test_from_time_in_ms_passes() -> None:
    """A plausible ms timestamp in the past comes back unchanged."""
    assert validate_from_time(T0, NOW_MS) == T0


def test_from_time_in_seconds_is_refused_with_the_ms_value() -> None:
    """A value < 1e11 is almost surely seconds: the error says so and gives the ms value."""
    with pytest.raises(ValueError, match=r"looks like seconds.*use 1756252800000"):
        validate_from_time(1_756_252_800, NOW_MS)


def test_from_time_in_the_future_is_refused() -> None:
    """History runs from fromTime to now, so a future fromTime is an error."""
    with pytest.raises(ValueError, match="in the future"):
        validate_from_time(NOW_MS + 3_600_000, NOW_MS)


def test_from_time_accepts_aware_datetimes_only() -> None:
    """An aware datetime converts to ms; a naive one is refused as ambiguous."""
    aware = datetime(2025, 8, 27, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    assert validate_from_time(aware, NOW_MS) == T0
    assert validate_from_time(datetime(2025, 8, 27, tzinfo=UTC), NOW_MS) == T0
    with pytest.raises(ValueError, match="no time zone"):
        validate_from_time(datetime(2025, 8, 27), NOW_MS)


@pytest.mark.parametrize("bad", [True, 1.5e12, "1756252800000", -5])
def test_from_time_rejects_non_integers_and_negatives(bad: object) -> None:
    """Booleans, floats, strings and negative numbers are refused with a clear message."""
    with pytest.raises(ValueError, match="from_time"):
        validate_from_time(bad, NOW_MS)  # type: ignore[arg-type]
