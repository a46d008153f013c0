"""The manager's door (issue 14, items 1, 2 and 6): what a valid Candle is, and what happens
to the others (dropped, counted per reason, logged once per series and reason then at powers
of ten, never stored, never a crash); only subscribed series enter."""

from __future__ import annotations

import gc
import logging
import math
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.candles import CandleDataManager, CapacityError, InvalidReason
from pipeline.candles.validation import REASONS, TIME_MAX, SeriesRule
from pipeline.dxlink import (
    REMOVE_EVENT,
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    Candle,
    CandleBlock,
    CandleSymbol,
    index_of,
)

T0 = 1_756_303_200_000  # 2025-08-27T14:00Z, a Wednesday
MIN = 60_000
SERIES = "AAPL{=m}"
SB, SE, RE = SNAPSHOT_BEGIN, SNAPSHOT_END, REMOVE_EVENT
NAN = math.nan


def ev(time: int = T0, symbol: str = SERIES, flags: int = 0, **values: Any) -> Candle:
    """A valid candle at ``time`` (index from time and sequence) unless ``values`` spoil it."""
    fields: dict[str, Any] = {
        "count": 3, "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 100.0,
        "vwap": 10.2, "bid_volume": 40.0, "ask_volume": 60.0,
    }  # fmt: skip
    fields.update(values)
    sequence = fields.pop("sequence", 0)
    index = fields.pop("index", None)
    if index is None:
        index = index_of(time, sequence) if -(2**31) * 1000 <= time < 2**31 * 1000 else 0
    return Candle(symbol, time, sequence, flags, index, **fields)


def held(mgr: CandleDataManager, series: str = SERIES) -> list[int]:
    """Times (ms) of the held candles of a series."""
    return [int(c.timestamp.timestamp() * 1000) for c in mgr.history(series)]


def dropped(mgr: CandleDataManager) -> dict[str, int]:
    """The non-zero invalid counts by reason."""
    return {k: v for k, v in mgr.stats().invalid_by_reason.items() if v}


# Item 1: one bad event no longer kills ingest.


@pytest.mark.parametrize("time", [-62_135_596_800_000, 2**62, -(2**63), 2**31 * 1000])
def test_a_time_outside_the_protocol_range_is_dropped_not_raised(time: int) -> None:
    """A year-1 or 2**62 time is dropped and counted; the rest of the batch is applied."""
    mgr = CandleDataManager(grace_ms=0)
    bad = Candle(SERIES, time, 0, 0, 0, 0, 3, 10.0, 11.0, 9.0, 10.5, 100.0)
    mgr.update([ev(T0), bad, ev(T0 + MIN)], T0)
    mgr.update(CandleBlock.from_candles([bad, ev(T0 + 2 * MIN)]), T0)
    assert held(mgr) == [T0, T0 + MIN, T0 + 2 * MIN]
    assert dropped(mgr) == {"time_range": 2}
    assert mgr.stats().invalid_events == 2
    assert mgr.take_completed().rows == 2  # the store gets only the valid ones


def test_the_protocol_range_ends_are_valid() -> None:
    """The first and the last millisecond DXLink's index can carry (§4.2) are accepted."""
    low, high = -(2**31) * 1000, 2**31 * 1000 - 1
    mgr = CandleDataManager(grace_ms=0)
    mgr.update([ev(low, symbol="X{=1t}"), ev(high, symbol="X{=1t}")], 0)
    assert held(mgr, "X{=1t}") == [low, high] and dropped(mgr) == {}


# Item 6: absurd values are not stored.

ABSURD: list[tuple[str, dict[str, Any], str]] = [
    ("negative volume", {"volume": -5.0}, "negative"),
    ("negative count", {"count": -1}, "negative"),
    ("negative bid volume", {"bid_volume": -1.0}, "negative"),
    ("negative open interest", {"open_interest": -3.0}, "negative"),
    ("count beyond int64", {"count": 2**63}, "value_range"),
    ("infinite close", {"close": math.inf}, "ohlc"),
    ("minus infinite low", {"low": -math.inf}, "ohlc"),
    ("1e308 high", {"high": 1e308}, "ohlc"),
    ("high below low", {"high": 8.0}, "ohlc"),
    ("some OHLC NaN, not all", {"open": NAN}, "ohlc"),
    ("1e308 volume", {"volume": 1e308}, "value_range"),
    ("infinite vwap", {"vwap": math.inf}, "value_range"),
    ("infinite implied volatility", {"imp_volatility": -math.inf}, "value_range"),
    ("index of another time", {"index": index_of(T0 + MIN)}, "index"),
    ("index of another sequence", {"index": index_of(T0, 5)}, "index"),
    ("sequence beyond 22 bits", {"sequence": 2**22}, "index"),
    ("negative sequence", {"sequence": -1, "index": 0}, "index"),
]


@pytest.mark.parametrize(("values", "reason"), [(v, r) for _, v, r in ABSURD],
                         ids=[name for name, _, _ in ABSURD])  # fmt: skip
def test_absurd_values_are_dropped_by_reason(values: dict[str, Any], reason: str) -> None:
    """Each absurd candle is dropped under its reason, as a tuple and in a column block."""
    mgr = CandleDataManager(grace_ms=0)
    bad = ev(T0, **values)
    mgr.update([bad, ev(T0 + MIN)], T0)
    if not isinstance(values.get("count", 0), int) or values.get("count", 0) < 2**63:
        mgr.update(CandleBlock.from_candles([bad, ev(T0 + 2 * MIN)]), T0)  # int64 columns
        assert dropped(mgr) == {reason: 2}
    else:
        assert dropped(mgr) == {reason: 1}
    assert T0 not in held(mgr)


def test_a_candle_off_its_period_boundary_is_dropped() -> None:
    """A 1m candle at 07:09:56.790 (issue 14) and a 5m candle at 07:09 are not on their period."""
    mgr = CandleDataManager(grace_ms=0)
    at = int(datetime(2025, 8, 27, 7, 9, 56, 790000, tzinfo=UTC).timestamp() * 1000)
    mgr.update([ev(at), ev(at - 56_790, symbol="AAPL{=5m}"), ev(T0 + 5 * MIN, "AAPL{=5m}")], T0)
    assert held(mgr) == [] and held(mgr, "AAPL{=5m}") == [T0 + 5 * MIN]
    assert dropped(mgr) == {"off_period": 2}


@pytest.mark.parametrize(
    ("series", "time", "valid"),
    [
        ("X{=d}", T0 - 14 * 3_600_000, True),  # 00:00Z of the date (§4.3)
        ("X{=d}", T0, False),
        ("X{=w}", T0 - 2 * 86_400_000 - 14 * 3_600_000, True),  # Monday 00:00Z (§4.3)
        ("X{=w}", T0 - 14 * 3_600_000, False),  # a Wednesday
        ("X{=mo}", int(datetime(2025, 8, 1, tzinfo=UTC).timestamp() * 1000), True),
        ("X{=mo}", int(datetime(2025, 8, 2, tzinfo=UTC).timestamp() * 1000), False),
        ("X{=y}", int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000), True),
        ("X{=y}", int(datetime(2025, 2, 1, tzinfo=UTC).timestamp() * 1000), False),
        ("X{=7m}", T0 + 3 * MIN, True),  # 7 does not divide a day: whole minutes
        ("X{=7m}", T0 + 3 * MIN + 1_000, False),
        ("X{=90m}", T0 - 30 * MIN, True),  # 13:30Z: a multiple of 90 minutes since 00:00Z
        ("X{=90m}", T0, False),
        ("X{=h,a=s}", T0 - 30 * MIN, True),  # session-aligned: 09:30 ET is 13:30Z
        ("X{=h,a=s}", T0 - 30 * MIN + 1_000, False),
        ("X{=5s}", T0 + 5_000, True),
        ("X{=5s}", T0 + 2_000, False),
        ("X{=1000t}", T0 + 7, True),  # tick candles start at any millisecond
        ("X{=o}", T0 + 7_000, True),  # option-expiration months: not checked
    ],
)
def test_period_boundaries(series: str, time: int, valid: bool) -> None:
    """Time-based candles start on their period's boundary; the others anywhere."""
    mgr = CandleDataManager(grace_ms=0)
    mgr.update([ev(time, series)], T0)
    assert (held(mgr, series) == [time]) is valid
    assert dropped(mgr) == ({} if valid else {"off_period": 1})


LEGAL: list[tuple[str, str, dict[str, Any]]] = [
    ("negative prices (a spread, some futures)", SERIES,
     {"open": -2.0, "high": -1.0, "low": -3.5, "close": -1.5, "vwap": -2.2}),
    ("zero prices", SERIES, {"open": 0.0, "high": 0.0, "low": 0.0, "close": 0.0, "vwap": 0.0}),
    ("vwap outside [low, high] (a daily candle: whole-day volume, regular-hours OHLC)",
     SERIES, {"vwap": 12.5}),
    ("close outside [low, high] (a settlement close)", SERIES, {"close": 11.5}),
    ("an empty candle: OHLC all NaN, no volume", SERIES,
     {"open": NAN, "high": NAN, "low": NAN, "close": NAN, "volume": 0.0, "count": 0,
      "vwap": NAN, "bid_volume": NAN, "ask_volume": NAN}),
    ("NaN volume", SERIES, {"volume": NAN}),
    ("fractional volume (crypto)", SERIES, {"volume": 0.000_25}),
    ("bid + ask volume above volume", SERIES, {"bid_volume": 90.0, "ask_volume": 90.0}),
    ("index absent (0): derived from time and sequence", SERIES, {"index": 0}),
    ("a tick candle's sequence", "X{=10t}", {"sequence": 4_194_303}),
    ("a price of a trillion", SERIES,
     {"open": 1e12, "high": 1e12, "low": 1e12, "close": 1e12, "vwap": 1e12}),
]  # fmt: skip


@pytest.mark.parametrize(("series", "values"), [(s, v) for _, s, v in LEGAL],
                         ids=[name for name, _, _ in LEGAL])  # fmt: skip
def test_legal_oddities_are_kept(series: str, values: dict[str, Any]) -> None:
    """Market data that looks odd but is real is stored as sent."""
    mgr = CandleDataManager(grace_ms=0)
    candle = ev(T0, series, **values)
    mgr.update([candle], T0)
    mgr.update(CandleBlock.from_candles([candle._replace(time=T0 + MIN, index=0)]), T0)
    assert dropped(mgr) == {}
    frame = mgr.take_completed().frame
    assert frame.height == 1
    for name, value in values.items():
        if name in frame.columns:
            stored = frame[name][0]
            assert stored == value or (math.isnan(stored) and math.isnan(value)), name


def test_a_removal_needs_only_a_valid_index() -> None:
    """REMOVE_EVENT values are NaN and its time may be fromTime itself (§6.2): not judged."""
    mgr = CandleDataManager(grace_ms=0)
    mgr.update([ev(T0), ev(T0 + MIN)], T0)
    odd_boundary = T0 - 7_777  # a fromTime boundary marker off the minute
    mgr.update([Candle(SERIES, T0, flags=RE), Candle(SERIES, odd_boundary, flags=SE | RE)], T0)
    assert held(mgr) == [T0 + MIN] and dropped(mgr) == {}
    mgr.update([Candle(SERIES, 2**62, flags=RE)], T0)
    assert dropped(mgr) == {"time_range": 1}


# Snapshots: an invalid event keeps its flags.


def test_an_invalid_snapshot_end_still_ends_the_snapshot() -> None:
    """The END event's values are dropped, its flag is not: the snapshot completes."""
    mgr = CandleDataManager(grace_ms=0)
    mgr.update([ev(T0 + 2 * MIN, flags=SB), ev(T0 + MIN), ev(T0, flags=SE, volume=-1.0)], T0)
    assert held(mgr) == [T0 + MIN, T0 + 2 * MIN]
    assert mgr.stats().buffered_events == 0 and dropped(mgr) == {"negative": 1}


def test_an_invalid_snapshot_begin_still_begins_the_snapshot() -> None:
    """Events after an invalid BEGIN are held back until the END, as after a valid one."""
    mgr = CandleDataManager(grace_ms=0)
    mgr.update([ev(T0 + 2 * MIN, flags=SB, high=1.0), ev(T0 + MIN)], T0)
    assert held(mgr) == [] and mgr.stats().buffered_events == 1
    mgr.update(CandleBlock.from_candles([ev(T0, flags=SE)]), T0)
    assert held(mgr) == [T0, T0 + MIN]


def test_invalid_events_inside_a_block_snapshot_keep_the_rest_in_bulk() -> None:
    """A 500-event snapshot block with bad events in its body stores every good one."""
    times = [T0 - i * MIN for i in range(500)]
    events = [ev(t, flags=SB if i == 0 else SE if i == 499 else 0) for i, t in enumerate(times)]
    events[10] = events[10]._replace(volume=-1.0)
    events[20] = events[20]._replace(time=T0 + 7, index=0)
    mgr = CandleDataManager(grace_ms=0)
    mgr.update(CandleBlock.from_candles(events), T0)
    assert dropped(mgr) == {"negative": 1, "off_period": 1}
    assert held(mgr) == sorted(t for i, t in enumerate(times) if i not in (10, 20))


# The clock: a candle cannot start in the future; nor before its subscription.


def test_future_candles_are_dropped_when_the_caller_has_a_clock() -> None:
    """With a tolerance, a candle later than now + tolerance is dropped; without, kept."""
    mgr = CandleDataManager(grace_ms=0, future_tolerance_ms=60_000)
    year_2038 = int(datetime(2038, 1, 1, tzinfo=UTC).timestamp() * 1000)
    mgr.update([ev(T0 + MIN), ev(T0 + 2 * MIN), ev(year_2038)], T0)  # T0 + MIN: at the edge
    assert held(mgr) == [T0 + MIN] and dropped(mgr) == {"future": 2}
    assert mgr.newest_ms == T0 + MIN  # the stream clock comes from accepted events only
    trusting = CandleDataManager(grace_ms=0)
    trusting.update([ev(year_2038)], T0)
    assert held(trusting) == [year_2038]


def test_event_time_moves_the_stream_clock_only_within_the_limit() -> None:
    """newest_ms: the latest time or eventTime of an accepted event, eventTime bounded too."""
    mgr = CandleDataManager(grace_ms=0, future_tolerance_ms=60_000)
    mgr.update([ev(T0)._replace(event_time=T0 + 30_000)], T0)
    assert mgr.newest_ms == T0 + 30_000
    mgr.update([ev(T0)._replace(event_time=2**62)], T0)
    mgr.update(CandleBlock.from_candles([ev(T0)._replace(event_time=2**62)]), T0)
    assert mgr.newest_ms == T0 + 30_000 and dropped(mgr) == {}


def test_load_history_skips_stored_candles_from_the_future() -> None:
    """A stored 2038 candle (from before this door) is not warm-started into the series."""
    source = CandleDataManager(grace_ms=0)
    year_2038 = int(datetime(2038, 1, 1, tzinfo=UTC).timestamp() * 1000)
    source.update([ev(T0), ev(T0 + MIN), ev(year_2038)], year_2038 + 2 * MIN)
    frame = source.take_completed().frame
    mgr = CandleDataManager(grace_ms=0, future_tolerance_ms=60_000)
    mgr.advance(T0 + 2 * MIN)
    assert mgr.load_history(SERIES, frame) == 2
    assert held(mgr) == [T0, T0 + MIN] and dropped(mgr) == {"future": 1}


def test_events_from_before_the_subscriptions_from_time_are_dropped() -> None:
    """A candle that starts a period or more before fromTime cannot be what was asked for."""
    mgr = CandleDataManager(grace_ms=0)
    mgr.subscribe("AAPL{=5m}", from_ms=T0 + 2 * MIN)  # mid-period: T0's candle contains it
    mgr.update([ev(T0 - 5 * MIN, "AAPL{=5m}"), ev(T0, "AAPL{=5m}")], T0)
    assert held(mgr, "AAPL{=5m}") == [T0] and dropped(mgr) == {"before_from_time": 1}


# Logging: once per series and reason, then at powers of ten.


def test_drops_are_logged_once_per_series_and_reason_then_at_powers_of_ten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1,000 bad events of one kind log 4 lines (1, 10, 100, 1,000); each line says why."""
    mgr = CandleDataManager(grace_ms=0)
    with caplog.at_level(logging.WARNING, logger="pipeline.candles"):
        for _ in range(1_000):
            mgr.update([ev(T0, volume=-1.0)], T0)
        mgr.update([ev(T0, "SPY{=m}", volume=-1.0), ev(T0, high=1.0)], T0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6, lines
    assert "AAPL{=m}" in lines[0] and "volume -1" in lines[0] and "negative" in lines[0]
    assert "1,000" in lines[3]
    assert "SPY{=m}" in lines[4] and "high 1" in lines[5]
    expected: dict[str, int] = {str(reason): 0 for reason in InvalidReason}
    assert mgr.stats().invalid_by_reason == {**expected, "negative": 1_001, "ohlc": 1}


# Item 2: only subscribed series enter.


def test_only_subscribed_series_enter_the_manager() -> None:
    """An unsolicited series arriving first takes no slot; the subscribed one is held."""
    mgr = CandleDataManager(max_series=1, grace_ms=0)
    assert mgr.subscribe("AAPL{=1m}") == SERIES
    mgr.update([ev(T0, "MSFT{=m}"), ev(T0, "MSFT{=m}"), ev(T0, "AAPL{=1m}")], T0)
    assert mgr.series() == [SERIES] and held(mgr) == [T0]
    assert mgr.stats().unsolicited_events == 2
    assert mgr.stats().refused_series_events == 0
    with pytest.raises(CapacityError, match="max_series=1"):
        mgr.subscribe("SPY{=m}")
    with pytest.raises(ValueError, match="not subscribed"):
        mgr.load_history("MSFT{=m}", mgr.take_completed().frame)


def test_a_flood_of_unsolicited_symbols_stays_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """30,000 distinct unsolicited symbols: a few log lines, and memory that stops growing."""
    mgr = CandleDataManager(max_series=1, grace_ms=0)
    mgr.subscribe(SERIES)

    def flood(start: int, stop: int) -> None:
        for first in range(start, stop, 1_000):
            mgr.update([ev(T0, f"S{i}{{=m}}") for i in range(first, first + 1_000)], T0)

    with caplog.at_level(logging.WARNING, logger="pipeline.candles"):
        flood(0, 10_000)
        gc.collect()
        tracemalloc.start()
        try:
            flood(10_000, 30_000)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    assert mgr.stats().unsolicited_events == 30_000
    # Every symbol kept would be ~100 bytes (2 MB); the bounded cache holds at most 1,024.
    assert grown < 200_000, f"{grown} bytes kept for 20,000 more unsolicited symbols"
    assert 1 <= len(caplog.records) <= 5  # 1, 10, 100, 1,000, 10,000 events


def test_the_first_subscription_closes_the_door_to_series_that_entered_before() -> None:
    """A series admitted while nothing was subscribed gets no more events after it."""
    mgr = CandleDataManager(grace_ms=0)
    mgr.update([ev(T0, "MSFT{=1m}")], T0)
    mgr.subscribe(SERIES)
    mgr.update([ev(T0 + MIN, "MSFT{=1m}"), ev(T0 + MIN, "MSFT{=m}"), ev(T0)], T0)
    assert held(mgr, "MSFT{=m}") == [T0] and held(mgr) == [T0]
    assert mgr.stats().unsolicited_events == 2


def test_without_subscriptions_any_series_enters_up_to_max_series() -> None:
    """A library caller that subscribes nothing keeps the open door (bounded by max_series)."""
    mgr = CandleDataManager(max_series=2, grace_ms=0)
    mgr.update([ev(T0, "A{=m}"), ev(T0, "B{=m}"), ev(T0, "C{=m}")], T0)
    assert mgr.series() == ["A{=m}", "B{=m}"] and mgr.stats().refused_series_events == 1
    assert mgr.stats().unsolicited_events == 0


def test_invalid_symbols_are_counted_under_their_reason(caplog: pytest.LogCaptureFixture) -> None:
    """An eventSymbol that is no candle symbol is dropped as 'symbol', logged sparsely."""
    mgr = CandleDataManager(grace_ms=0)
    with caplog.at_level(logging.WARNING, logger="pipeline.candles"):
        mgr.update([ev(T0, f"garbage-{i}") for i in range(50)], T0)
    assert dropped(mgr) == {"symbol": 50} and len(caplog.records) == 2  # 1 and 10


# Tuples and columns: one verdict.

_VALUES = st.sampled_from([0.0, 1.0, 9.0, 10.0, 11.0, -2.0, 1e12, 1.5e12, 1e18, 2e18, NAN,
                           math.inf, -math.inf, -1e12])  # fmt: skip


_BASE = (10.0, 11.0, 9.0, 10.5, 100.0, 10.2, 40.0, 60.0, NAN, NAN)  # DOUBLE_FIELDS order


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["AAPL{=m}", "AAPL{=5m}", "AAPL{=w}", "AAPL{=mo}", "AAPL{=10t}"]),
            st.sampled_from([T0, T0, T0, T0 + 7, T0 + 5 * MIN, T0 - 14 * 3_600_000, 2**41]),
            st.sampled_from([0, 0, 0, 1, -1, 2**22]),
            st.sampled_from([0, 0, 0, RE, SB, SE | RE]),
            st.sampled_from(["wire", "wire", "zero", "other"]),
            st.sampled_from([3, 3, 0, -1]),
            st.lists(st.tuples(st.integers(0, 9), _VALUES), max_size=2),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([None, T0 - MIN, T0 + 3 * MIN]),
    st.sampled_from([T0 + MIN, 2**31 * 1000 - 1]),
)
def test_a_block_and_its_tuples_get_the_same_verdicts(
    specs: list[tuple[Any, ...]], from_ms: int | None, ceiling: int
) -> None:
    """check_columns (whole-column shortcut included) agrees with check, event by event."""
    events = []
    for series, time, sequence, flags, index_kind, count, spoils in specs:
        doubles = list(_BASE)
        for row, value in spoils:  # a valid candle with up to two values spoilt
            doubles[row] = value
        index = {"wire": index_of(time, sequence & 0x3FFFFF), "zero": 0, "other": 12345}
        wire = index[index_kind] if -(2**63) <= index[index_kind] < 2**63 else 12345  # a block
        events.append(Candle(series, time, sequence, flags, wire, 0, count, *doubles))
    for series in {e.symbol for e in events}:
        rule = SeriesRule(CandleSymbol.parse(series), from_ms)
        mine = [e for e in events if e.symbol == series]
        block = CandleBlock.from_candles(mine)
        codes = rule.check_columns(
            block.times, block.sequences, block.record_indexes(),
            (block.flags & RE) != 0, block.counts, block.doubles, ceiling,
        )  # fmt: skip
        expected = [rule.check(e, ceiling) for e in mine]
        got = (
            [None] * len(mine) if codes is None else [REASONS[c - 1] if c else None for c in codes]
        )
        assert got == expected


@pytest.mark.parametrize("series", ["AAPL{=m}", "AAPL{=w}", "AAPL{=10t}"])
def test_one_spoilt_value_in_a_valid_block_gets_the_tuples_verdict(series: str) -> None:
    """Every value spoilt alone in an otherwise valid block (where the whole-column
    shortcut would otherwise answer) gets exactly the tuple's verdict."""
    start = T0 - 2 * 86_400_000 - 14 * 3_600_000 if series == "AAPL{=w}" else T0  # a Monday
    step = 7 * 86_400_000 if series == "AAPL{=w}" else MIN
    rule = SeriesRule(CandleSymbol.parse(series))
    valid = [ev(start + i * step, series, bid_volume=40.0) for i in range(20)]
    values = [0.0, -2.0, 1.5e12, 2e18, NAN, math.inf, -math.inf, 8.0, 12.0]
    for row, value in [(row, value) for row in range(10) for value in values]:
        events = list(valid)
        doubles = list(events[7][7:])
        doubles[row] = value
        events[7] = Candle(*events[7][:7], *doubles)
        block = CandleBlock.from_candles(events)
        codes = rule.check_columns(
            block.times, block.sequences, block.record_indexes(), None, block.counts,
            block.doubles, TIME_MAX,
        )  # fmt: skip
        expected = [rule.check(e, TIME_MAX) for e in events]
        got = [None] * 20 if codes is None else [REASONS[c - 1] if c else None for c in codes]
        assert got == expected, (row, value)
