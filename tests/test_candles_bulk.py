"""The manager's bulk paths equal its per-candle paths (issue 6, item 2).

``CandleDataManager`` takes two routes to the same result: for many candles of a series it
works on the series' joined records at once (numpy, one pack per snapshot), for few it finds
each candle (``pipeline.candles.series.few`` decides). The differential test runs one random
stream three ways: bulk forced everywhere, per-candle forced everywhere, and the production
rule, and compares every observable after every step. Batch boundaries stay the same in all
three: the history bound is applied once per ``update`` call, so where a stream is cut into
calls may change which stored candles a later snapshot still finds (by design, not a route
difference).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.candles import Batch, CandleDataManager, series
from pipeline.candles.assembly import Assembler
from pipeline.dxlink import (
    REMOVE_EVENT,
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    TX_PENDING,
    Candle,
    CandleBlock,
    CandleSymbol,
    index_of,
)

T0 = 1_756_303_200_000  # 2025-08-27T14:00Z
MIN = 60_000
SLOTS = 48
SYMBOLS = ("AAPL{=m}", "SPY{=m}", "QQQ{=m}")  # max_series=2: QQQ is refused
SB, SE, RE, TX = SNAPSHOT_BEGIN, SNAPSHOT_END, REMOVE_EVENT, TX_PENDING
FLAGS = [0, 0, 0, 0, TX, SB, SE, RE, SE | RE, SB | SE | RE]


def candle(symbol: str, slot: int, flags: int, close: float, spoil: str | None = None) -> Candle:
    """A 1m candle ``slot`` minutes after T0 (removals carry NaN values, like the server's);
    ``spoil`` makes it invalid: a negative volume, or a time off the minute."""
    time = T0 + slot * MIN + (7 if spoil == "off-period" else 0)
    if flags & RE:
        return Candle(symbol, time, flags=flags, index=index_of(time))
    return Candle(
        symbol, time, flags=flags, index=index_of(time), count=int(close),
        open=close - 1, high=close + 2, low=close - 2, close=close,
        volume=-1.0 if spoil == "negative" else 10.0 * close,
        vwap=close + 0.5, bid_volume=3.0, ask_volume=4.0,
    )  # fmt: skip


def snapshot(symbol: str, newest: int, oldest: int, close: float) -> list[Candle]:
    """A §6.2 snapshot newest first: SNAPSHOT_BEGIN first, SNAPSHOT_END on the oldest."""
    slots = list(range(newest, oldest - 1, -1))
    return [
        candle(
            symbol,
            slot,
            (SB if slot == newest else 0) | (SE if slot == oldest else 0),
            close + slot % 7,
        )
        for slot in slots
    ]


@contextmanager
def route(per_candle: bool) -> Iterator[None]:
    """Force the per-candle route (True) or the bulk route (False) everywhere."""

    def forced(count: int, among: int) -> bool:
        return per_candle

    with mock.patch.object(series, "few", forced):
        yield


@contextmanager
def one_event_at_a_time() -> Iterator[None]:
    """Unflagged stretches through ``on_event`` one by one: the plain §6.3 route."""

    def per_event(self: Assembler, run: list[Candle], start: int, stop: int) -> None:
        for event in run[start:stop]:
            self.on_event(event)

    with mock.patch.object(Assembler, "hold", per_event):
        yield


def frame_rows(frame: pl.DataFrame) -> list[tuple[Any, ...]]:
    """Rows with NaN made comparable (NaN != NaN in tuples of floats)."""
    return [tuple("NaN" if v != v else v for v in row) for row in frame.rows()]


def observe(mgr: CandleDataManager, batch: Batch | None) -> tuple[Any, ...]:
    """Everything a caller can see: held candles, stats and the last batch handed out."""
    held = tuple(
        tuple((c.timestamp, c.close, c.count, c.revision, c.is_complete) for c in mgr.history(s))
        for s in mgr.series()
    )
    stats = mgr.stats()
    shown = None
    if batch is not None:
        shown = (frame_rows(batch.frame), batch.deletions.rows())
    live = repr(mgr.live_candle(SYMBOLS[0]))  # repr: its NaN fields compare equal
    return held, stats, live, mgr.next_completion_ms(), shown


event_ops = st.tuples(
    st.just("events"),
    st.lists(
        st.tuples(
            st.sampled_from(SYMBOLS),
            st.integers(0, SLOTS - 1),
            st.sampled_from(FLAGS),
            st.sampled_from([1.0, 2.0, 3.0]),
            st.sampled_from([None, None, None, None, "negative", "off-period"]),
        ),
        min_size=1,
        max_size=12,
    ),
)
snapshot_ops = st.tuples(
    st.just("snapshot"),
    st.sampled_from(SYMBOLS[:2]),
    st.integers(0, SLOTS - 1),
    st.integers(0, SLOTS - 1),
    st.sampled_from([10.0, 20.0]),
)
flush_ops = st.tuples(
    st.sampled_from(["take+commit", "take", "commit", "fail", "take 5", "advance"])
)
operations = st.lists(st.one_of(event_ops, snapshot_ops, snapshot_ops, flush_ops), max_size=30)


def run(
    ops: list[tuple[Any, ...]], *, batched: bool = True, history: int = 30, blocks: bool = False
) -> list[tuple[Any, ...]]:
    """Apply ``ops`` to a fresh manager (each op's events in one ``update`` call, or one
    call per event; as tuples, or as a column block); the observations after every step."""
    mgr = CandleDataManager(
        max_series=2, max_historical_candles=history, max_buffered_events=9, grace_ms=0
    )
    now = T0
    in_flight: list[Batch] = []
    trace: list[tuple[Any, ...]] = []
    for op in ops:
        batch: Batch | None = None
        result: object = None
        if op[0] in ("events", "snapshot"):
            if op[0] == "events":
                events = [candle(*spec) for spec in op[1]]
            else:
                _, symbol, a, b, close = op
                events = snapshot(symbol, max(a, b), min(a, b), close)
            for group in [events] if batched else [[e] for e in events]:
                mgr.update(CandleBlock.from_candles(group) if blocks else group, now)
        elif op[0] == "advance":
            now += 7 * MIN
            mgr.advance(now)
        elif op[0].startswith("take"):
            batch = mgr.take_completed(5 if op[0] == "take 5" else None)
            if op[0] == "take+commit":
                result = mgr.commit(batch)
            else:
                in_flight.append(batch)
        elif op[0] == "commit" and in_flight:
            result = mgr.commit(in_flight.pop(0))
        elif op[0] == "fail":
            result = mgr.release(mgr.take_completed())
        trace.append((op[0], result, observe(mgr, batch)))
    return trace


@settings(max_examples=40, deadline=None)
@given(operations)
def test_bulk_and_per_candle_routes_are_indistinguishable(ops: list[tuple[Any, ...]]) -> None:
    """Bulk, per-candle and production routes give the same candles, batches and stats."""
    with route(per_candle=True):
        reference = run(ops)
    with route(per_candle=False):
        assert run(ops) == reference
    assert run(ops) == reference


@settings(max_examples=40, deadline=None)
@given(operations)
def test_column_blocks_apply_exactly_like_the_same_tuples(ops: list[tuple[Any, ...]]) -> None:
    """Events as a CandleBlock (a large frame) and as Candle tuples give the same everything."""
    reference = run(ops)
    with route(per_candle=True):
        assert run(ops, blocks=True) == reference
    assert run(ops, blocks=True) == reference


@settings(max_examples=40, deadline=None)
@given(operations)
def test_a_batch_applies_like_its_events_one_call_each(ops: list[tuple[Any, ...]]) -> None:
    """Runs of one series and unflagged stretches in a batch act exactly like single events."""
    # An unbounded history: where the bound is applied (per call) is not what is compared.
    with one_event_at_a_time():
        reference = run(ops, batched=False, history=10**6)
    assert run(ops, history=10**6) == reference
    assert run(ops, history=10**6, blocks=True) == reference  # stretches held as block slices


@pytest.mark.parametrize("size", range(6, 14))
def test_a_snapshot_batch_overflows_its_buffer_exactly_like_single_events(size: int) -> None:
    """Around max_buffered_events, one batch and one call per event buffer and overflow alike."""
    ops: list[tuple[Any, ...]] = [("snapshot", SYMBOLS[0], size - 1, 0, 10.0), ("take",)]
    with one_event_at_a_time():
        reference = run(ops, batched=False)
    assert run(ops) == reference


def test_snapshot_into_an_empty_series_equals_the_same_candles_live() -> None:
    """A backfill snapshot (packed in one go) holds exactly what live updates would."""
    events = snapshot(SYMBOLS[0], 1_999, 0, 50.0)
    bulk, live = CandleDataManager(grace_ms=0), CandleDataManager(grace_ms=0)
    bulk.update(events, T0)
    for event in reversed(events):
        live.update([event._replace(flags=0)], T0)
    held = bulk.history(SYMBOLS[0])
    assert len(held) == 2_000
    assert repr(held) == repr(live.history(SYMBOLS[0]))  # repr: NaN fields compare equal
    assert bulk.take_completed().frame.equals(live.take_completed().frame)


def test_a_stored_snapshot_revised_in_part_bumps_only_the_changed_revisions() -> None:
    """After a bulk hand-out, a replayed snapshot with a few changes re-sends only those."""
    mgr = CandleDataManager(max_historical_candles=5_000, grace_ms=0)
    mgr.update(snapshot(SYMBOLS[0], 99, 0, 50.0), T0 + 200 * MIN)
    first = mgr.take_completed()
    assert first.frame.height == 100 and set(first.frame["revision"]) == {0}
    assert mgr.commit(first) == 100
    replay = snapshot(SYMBOLS[0], 99, 0, 50.0)
    replay[10] = replay[10]._replace(close=1.5)  # slot 89
    replay[60] = replay[60]._replace(close=2.5)  # slot 39
    mgr.update(replay, T0 + 200 * MIN)
    second = mgr.take_completed()
    times = second.frame["time"].dt.epoch("ms").to_list()
    assert [(t - T0) // MIN for t in times] == [39, 89]
    assert second.frame["revision"].to_list() == [1, 1]
    assert second.frame["close"].to_list() == [2.5, 1.5]


def test_a_few_new_among_many_revised_candles_are_marked_handed_out() -> None:
    """In a bulk hand-out, a new candle among revised ones is exposed: its next change bumps."""
    mgr = CandleDataManager(max_historical_candles=5_000, grace_ms=0)
    mgr.update(snapshot(SYMBOLS[0], 99, 0, 50.0), T0 + 200 * MIN)
    mgr.commit(mgr.take_completed())
    revised = [candle(SYMBOLS[0], slot, 0, 7.0) for slot in range(0, 100, 10)]
    mgr.update([*revised, candle(SYMBOLS[0], 100, 0, 8.0)], T0 + 200 * MIN)
    batch = mgr.take_completed()  # 11 of 101 dirty: the bulk route, one record to expose
    assert batch.frame["revision"].to_list() == [1] * 10 + [0]
    assert mgr.commit(batch) == 11
    mgr.update([candle(SYMBOLS[0], 100, 0, 9.0), candle(SYMBOLS[0], 101, 0, 1.0)], T0)
    again = mgr.take_completed()
    assert again.frame.select("close", "revision").rows() == [(9.0, 1), (1.0, 0)]


def test_batch_frame_labels_each_series_rows_in_a_multi_series_batch() -> None:
    """Rows of several series in one batch carry their own symbol, period and time."""
    mgr = CandleDataManager(grace_ms=0)
    mgr.update(snapshot("AAPL{=m,tho=true}", 2, 0, 10.0), T0 + 30 * MIN)
    mgr.update(snapshot("/ESZ25:XCME{=m}", 1, 0, 20.0), T0 + 30 * MIN)
    frame = mgr.take_completed().frame
    expected_keys = [CandleSymbol.parse(s) for s in ("AAPL{=m,tho=true}", "/ESZ25:XCME{=m}")]
    assert (
        frame.select("symbol", "period").rows()
        == [(expected_keys[0].base, expected_keys[0].period_label)] * 3
        + [(expected_keys[1].base, expected_keys[1].period_label)] * 2
    )
    times = [(t - T0) // MIN for t in frame["time"].dt.epoch("ms").to_list()]
    assert times == [0, 1, 2, 0, 1]
    assert frame["count"].to_list() == [10, 11, 12, 20, 21]


def test_refused_series_events_are_counted_one_by_one_in_a_batch() -> None:
    """A batch with runs of a refused series counts every one of its events."""
    mgr = CandleDataManager(max_series=1, grace_ms=0)
    mgr.update(
        [candle("A{=m}", 0, 0, 1.0), candle("B{=m}", 0, 0, 1.0), candle("B{=m}", 1, 0, 1.0)], T0
    )
    mgr.update([candle("B{=m}", 2, 0, 1.0), candle("A{=m}", 1, 0, 1.0)], T0)
    assert mgr.stats().refused_series_events == 3
    assert len(mgr.history("A{=m}")) == 2


def test_candles_arriving_between_hand_out_and_commit_stay_unwritten() -> None:
    """A batch that took every unwritten candle does not mark later (bulk) arrivals stored."""
    mgr = CandleDataManager(max_series=2, max_historical_candles=100, grace_ms=0)
    mgr.update(snapshot(SYMBOLS[0], 19, 0, 10.0), T0 + 30 * MIN)
    batch = mgr.take_completed()
    assert batch.rows == 20 and mgr.stats().dirty == 20
    # A later snapshot of newer candles, all new: the bulk route adds them at once.
    mgr.update(snapshot(SYMBOLS[0], 40, 30, 20.0), T0 + 50 * MIN)
    assert mgr.commit(batch) == 20
    assert mgr.stats().dirty == 11
    later = mgr.take_completed()
    assert later.rows == 11 and mgr.commit(later) == 11 and mgr.stats().dirty == 0
