"""CandleDataManager: §6.3 assembly with merge, completeness, revisions, bounds; no I/O."""

from __future__ import annotations

import gc
import math
import tracemalloc
from datetime import UTC, datetime

import polars as pl
import pytest

from pipeline.candles import (
    BYTES_PER_CANDLE,
    BackpressureError,
    Batch,
    CandleDataManager,
    CapacityError,
)
from pipeline.dxlink import (
    REMOVE_EVENT,
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    SNAPSHOT_SNIP,
    TX_PENDING,
    Candle,
    index_of,
)
from pipeline.schema import CANDLE_SCHEMA

SB, SE, RE, TX, SNIP = SNAPSHOT_BEGIN, SNAPSHOT_END, REMOVE_EVENT, TX_PENDING, SNAPSHOT_SNIP
T0 = 1_756_303_200_000  # 2025-08-27T14:00Z
MIN = 60_000
SERIES = "AAPL{=m}"
GRACE = 5_000


def ev(
    slot: int, flags: int = 0, close: float = 100.0, symbol: str = SERIES, *, period: int = MIN
) -> Candle:
    """A candle ``slot`` periods after T0; removals carry NaN values like the server's."""
    time = T0 + slot * period
    if flags & REMOVE_EVENT:
        return Candle(symbol, time, flags=flags, index=index_of(time))
    return Candle(
        symbol, time, flags=flags, index=index_of(time), count=7,
        open=close - 1, high=close + 2, low=close - 2, close=close, volume=1000.0, vwap=close,
    )  # fmt: skip


def manager(**kwargs: int) -> CandleDataManager:
    options = {"grace_ms": GRACE}
    options.update(kwargs)
    return CandleDataManager(**options)


def closes(mgr: CandleDataManager, series: str = SERIES) -> dict[int, float]:
    """Held candles as {slot: close}."""
    return {(int(c.timestamp.timestamp() * 1000) - T0) // MIN: c.close for c in mgr.history(series)}


def slots(frame: pl.DataFrame) -> list[int]:
    return [(t - T0) // MIN for t in frame["time"].dt.epoch("ms").to_list()]


def flush(mgr: CandleDataManager) -> Batch:
    batch = mgr.take_completed()
    mgr.commit(batch)
    return batch


# §10 test vectors.

SPY = "SPY{=d}"


def spy(index: int, time: int, flags: int, o: float, h: float, low: float, c: float) -> Candle:
    return Candle(SPY, time, flags=flags, index=index, open=o, high=h, low=low, close=c)


def test_t7_daily_snapshot_then_live_update() -> None:
    """T7: nothing until the flags-8 event, then 3 candles; the live update revises Aug 27."""
    mgr = manager()
    mgr.update([spy(7543048339508428800, 1756252800000, 4, 645.1, 647.37, 644.42, 646.9)], 0)
    assert mgr.history(SPY) == []
    assert mgr.stats().buffered_events == 1
    mgr.update(
        [
            spy(7542677254334054400, 1756166400000, 0, 642.6, 646.05, 641.9, 645.16),
            spy(7542306169159680000, 1756080000000, 8, 644.5, 645.3, 642.1, 642.47),
        ],
        0,
    )
    assert [c.close for c in mgr.history(SPY)] == [642.47, 645.16, 646.9]
    assert [c.timestamp.day for c in mgr.history(SPY)] == [25, 26, 27]
    mgr.update([spy(7543048339508428800, 1756252800000, 0, 645.1, 647.6, 644.42, 647.41)], 0)
    assert [c.close for c in mgr.history(SPY)] == [642.47, 645.16, 647.41]
    assert mgr.history(SPY)[-1].high == 647.6


def test_t7_synthetic_boundary_deletes_nothing() -> None:
    """T7 variant: the SE|RE boundary event on Sunday (NaN values) removes nothing."""
    mgr = manager()
    boundary = Candle(SPY, 1755993600000, flags=SE | RE, index=7541935083985305600)
    mgr.update(
        [
            spy(7543048339508428800, 1756252800000, SB, 645.1, 647.37, 644.42, 646.9),
            spy(7542677254334054400, 1756166400000, 0, 642.6, 646.05, 641.9, 645.16),
            spy(7542306169159680000, 1756080000000, 0, 644.5, 645.3, 642.1, 642.47),
            boundary,
        ],
        0,
    )
    assert len(mgr.history(SPY)) == 3
    assert mgr.take_completed().deletions.height == 0


def test_t8_empty_snapshot_clears_from_from_time_on() -> None:
    """T8 (flags 14): nothing at or after fromTime is left; older candles are kept."""
    mgr = manager()
    mgr.update([ev(s) for s in range(6)], T0)
    flush(mgr)  # slots 0-4 stored
    mgr.update([ev(3, SB | SE | RE)], T0)
    assert closes(mgr) == {0: 100.0, 1: 100.0, 2: 100.0}
    batch = mgr.take_completed()
    assert slots(batch.deletions) == [3, 4]  # slot 5 was never handed out
    assert mgr.live_candle(SERIES) is None


# §6.3 flags.


def test_tx_pending_events_wait_for_the_end_of_the_transaction() -> None:
    """TX_PENDING events are held back until an event without TX arrives."""
    mgr = manager()
    mgr.update([ev(0, TX, 1.0), ev(1, TX, 2.0)], T0)
    assert mgr.history(SERIES) == []
    mgr.update([ev(2, 0, 3.0)], T0)
    assert closes(mgr) == {0: 1.0, 1: 2.0, 2: 3.0}


def test_new_snapshot_begin_drops_the_unfinished_one() -> None:
    """A second SNAPSHOT_BEGIN discards what the first one buffered."""
    mgr = manager()
    mgr.update([ev(5, SB, 1.0), ev(4, 0, 1.0)], T0)
    mgr.update([ev(5, SB, 2.0), ev(3, SE, 2.0)], T0)
    assert closes(mgr) == {3: 2.0, 5: 2.0}


def test_snapshot_snip_ends_the_snapshot() -> None:
    """SNAPSHOT_SNIP completes a snapshot like SNAPSHOT_END."""
    mgr = manager()
    mgr.update([ev(4, SB), ev(3), ev(2, SNIP)], T0)
    assert sorted(closes(mgr)) == [2, 3, 4]


def test_events_before_the_snapshot_are_provisional() -> None:
    """Candles seen before SNAPSHOT_BEGIN are overruled within the snapshot's range."""
    mgr = manager()
    mgr.update([ev(2, 0, 9.0), ev(3, 0, 9.0), ev(9, 0, 9.0)], T0)
    mgr.update([ev(4, SB, 1.0), ev(2, SE, 1.0)], T0)
    # 2 replaced, 3 absent from the snapshot (removed), 9 newer than its range (kept).
    assert closes(mgr) == {2: 1.0, 4: 1.0, 9: 9.0}


def test_live_remove_event_queues_a_deletion_for_a_stored_candle() -> None:
    """REMOVE_EVENT deletes a held candle; a stored one becomes a deletion for the store."""
    mgr = manager()
    mgr.update([ev(s) for s in range(3)], T0)
    flush(mgr)
    mgr.update([ev(1, RE), ev(7, RE)], T0)  # 7 was never held: a no-op
    assert sorted(closes(mgr)) == [0, 2]
    batch = mgr.take_completed()
    assert slots(batch.deletions) == [1]
    assert batch.deletions.schema == pl.Schema(
        {k: CANDLE_SCHEMA[k] for k in batch.deletions.columns}
    )
    mgr.commit(batch)
    assert mgr.take_completed().deletions.height == 0


def test_replayed_snapshot_merges_instead_of_wiping() -> None:
    """After a reconnect the snapshot replaces only its range: older candles stay stored."""
    mgr = manager()
    mgr.update([ev(s, 0, 100.0 + s) for s in range(10)], T0)
    flush(mgr)  # 0-8 stored, 9 live
    replay = [ev(9, SB, 109.0), ev(8, 0, 108.0), ev(7, 0, 777.0), ev(5, SE, 105.0)]  # 6 gone
    mgr.update(replay, T0)
    assert sorted(closes(mgr)) == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    batch = mgr.take_completed()
    assert slots(batch.frame) == [7]  # unchanged candles are not rewritten
    assert batch.frame["revision"].to_list() == [1]
    assert slots(batch.deletions) == [6]


def test_removed_then_re_added_candle_is_a_revision_not_a_deletion() -> None:
    """A stored candle removed and sent again before the flush is upserted, not deleted."""
    mgr = manager()
    mgr.update([ev(0, 0, 1.0), ev(1, 0, 1.0)], T0)
    flush(mgr)
    mgr.update([ev(0, RE), ev(0, 0, 2.0)], T0)
    batch = mgr.take_completed()
    assert batch.deletions.height == 0
    assert batch.frame.select("close", "revision").rows() == [(2.0, 1)]


# Completeness.


def test_newer_candle_completes_the_previous_one() -> None:
    """Every candle but the newest is complete; the newest is live."""
    mgr = manager()
    mgr.update([ev(0), ev(1)], T0)
    assert [c.is_complete for c in mgr.history(SERIES)] == [True, False]
    live = mgr.live_candle(SERIES)
    assert live is not None and live.timestamp == mgr.history(SERIES)[-1].timestamp
    assert slots(mgr.take_completed().frame) == [0]


def test_time_completes_the_newest_after_period_and_grace() -> None:
    """The newest time-based candle completes at time + period + grace, not a ms earlier."""
    mgr = manager()
    mgr.update([ev(0)], T0)
    end = T0 + MIN + GRACE
    assert mgr.next_completion_ms() == end
    mgr.advance(end - 1)
    assert mgr.take_completed().frame.height == 0
    mgr.advance(end)
    assert mgr.live_candle(SERIES) is None
    batch = mgr.take_completed()
    assert slots(batch.frame) == [0]
    mgr.commit(batch)
    assert mgr.next_completion_ms() is None


def test_stream_time_drives_completion_at_any_speed() -> None:
    """With the simulator at speed 60 the stream's times complete candles, not wall time."""
    mgr = manager()
    completed = []
    for second in range(0, 130, 10):  # 2 minutes of stream time, fed in a flash
        now = T0 + second * 1000
        mgr.update([ev(now // MIN - T0 // MIN, 0, 100.0 + second)], now)
        completed += slots(flush(mgr).frame)
    assert completed == [0, 1]  # slot 1 by the newer candle, never by the wall clock
    mgr.advance(T0 + 3 * MIN + GRACE)
    assert slots(flush(mgr).frame) == [2]


def test_clock_never_goes_back() -> None:
    """An older now_ms does not undo completeness."""
    mgr = manager()
    mgr.update([ev(0)], T0 + 10 * MIN)
    mgr.advance(T0)
    assert mgr.now_ms == T0 + 10 * MIN
    assert mgr.history(SERIES)[0].is_complete


def test_tick_and_calendar_periods_complete_only_by_a_newer_candle() -> None:
    """t/v/p periods and months have no fixed length: time alone never completes them."""
    mgr = manager()
    august = int(datetime(2025, 8, 1, tzinfo=UTC).timestamp() * 1000)  # a month's first day
    month = ev(0, symbol="AAPL{=mo}")._replace(time=august, index=index_of(august))
    mgr.update([ev(0, symbol="AAPL{=100t}"), month], T0 + 10**12)
    assert [len(mgr.history(s)) for s in ("AAPL{=100t}", "AAPL{=mo}")] == [1, 1]
    assert mgr.take_completed().frame.height == 0
    assert mgr.next_completion_ms() is None
    mgr.update([ev(1, symbol="AAPL{=100t}")], T0 + 10**12)
    assert mgr.take_completed().frame["period"].to_list() == ["100t"]


# Hand-out, commit, revisions.


def test_batch_frame_has_exactly_the_store_columns() -> None:
    """take_completed() gives the contract's columns and types; ingested_at is null."""
    mgr = manager()
    mgr.update([ev(0, 0, 101.5), ev(1)], T0)
    frame = mgr.take_completed().frame
    assert frame.schema == pl.Schema(CANDLE_SCHEMA)
    row = frame.row(0, named=True)
    assert row["symbol"] == "AAPL" and row["period"] == "1m"
    assert row["time"] == datetime(2025, 8, 27, 14, 0, tzinfo=UTC)
    assert (row["open"], row["high"], row["low"], row["close"]) == (100.5, 103.5, 99.5, 101.5)
    assert (row["volume"], row["vwap"], row["count"], row["revision"]) == (1000.0, 101.5, 7, 0)
    assert math.isnan(row["imp_volatility"]) and row["ingested_at"] is None


def test_without_commit_candles_are_handed_out_again() -> None:
    """A released (or never committed) batch's candles come back in the next batch."""
    mgr = manager()
    mgr.update([ev(0), ev(1), ev(2)], T0)
    first = mgr.take_completed()
    assert mgr.release(first)
    assert not mgr.release(first)
    second = mgr.take_completed()
    assert slots(second.frame) == [0, 1]
    third = mgr.take_completed()  # second never committed: still dirty
    assert slots(third.frame) == [0, 1]
    assert mgr.commit(third) == 2
    assert mgr.commit(third) == 0  # idempotent
    assert mgr.commit(second) == 0  # its candles are already stored
    assert mgr.take_completed().empty


def test_candle_changed_after_hand_out_stays_dirty() -> None:
    """A revision between take and commit keeps the candle dirty, with revision + 1."""
    mgr = manager()
    mgr.update([ev(0, 0, 1.0), ev(1)], T0)
    batch = mgr.take_completed()
    mgr.update([ev(0, 0, 2.0)], T0)  # a late correction while the write is in flight
    assert mgr.commit(batch) == 0
    again = mgr.take_completed()
    assert again.frame.select("close", "revision").rows() == [(2.0, 1)]
    assert mgr.commit(again) == 1
    mgr.update([ev(0, 0, 2.0)], T0)  # the same values again: not a revision
    assert mgr.take_completed().empty
    assert mgr.stats().revisions == 1


def test_old_batch_does_not_vouch_for_a_candle_that_left_memory() -> None:
    """A batch committed late cannot mark a re-added candle (revision 0 again) as stored."""
    mgr = manager(max_historical_candles=1)
    mgr.update([ev(0, 0, 1.0), ev(1)], T0)
    late = mgr.take_completed()  # slot 0 at close 1.0, commit delayed
    flush(mgr)  # slot 0 stored by another batch, then evicted (bound 1)
    assert sorted(closes(mgr)) == [1]
    mgr.update([ev(0, 0, 2.0)], T0)  # a replay brings it back with other values
    assert mgr.commit(late) == 0
    assert mgr.take_completed().frame.select("close").rows() == [(2.0,)]


def test_changes_before_hand_out_do_not_bump_the_revision() -> None:
    """The live candle's many updates are one revision-0 candle when it is first stored."""
    mgr = manager()
    mgr.update([ev(0, 0, float(c)) for c in range(50)], T0)
    mgr.update([ev(1)], T0)
    assert mgr.take_completed().frame.select("close", "revision").rows() == [(49.0, 0)]


def test_max_rows_limits_one_batch() -> None:
    """take_completed(max_rows) hands out at most that many candles, oldest first."""
    mgr = manager()
    mgr.update([ev(s) for s in range(10)], T0)
    first = mgr.take_completed(max_rows=4)
    assert slots(first.frame) == [0, 1, 2, 3]
    mgr.commit(first)
    assert slots(mgr.take_completed(max_rows=4).frame) == [4, 5, 6, 7]


# Bounds.


def test_history_is_bounded_and_unstored_candles_are_pinned() -> None:
    """Stored candles beyond the bound are evicted; unstored ones stay until committed."""
    mgr = manager(max_historical_candles=3)
    mgr.update([ev(s) for s in range(5)], T0)
    assert mgr.stats().pinned == 2 and mgr.stats().candles_held == 5
    flush(mgr)
    assert sorted(closes(mgr)) == [2, 3, 4]
    assert mgr.stats().pinned == 0
    mgr.update([ev(5)], T0)
    flush(mgr)
    assert sorted(closes(mgr)) == [3, 4, 5]


def test_backpressure_refuses_updates_until_a_flush() -> None:
    """Beyond max_pinned_candles the next update is refused whole; a flush lets it in."""
    mgr = manager(max_historical_candles=2, max_pinned_candles=3)
    mgr.update([ev(s) for s in range(6)], T0)  # 4 pinned: over the cap by this batch
    with pytest.raises(BackpressureError, match="max_pinned_candles=3") as raised:
        mgr.update([ev(6)], T0)
    assert raised.value.pinned == 4
    assert sorted(closes(mgr)) == [0, 1, 2, 3, 4, 5]
    assert mgr.stats().backpressure_refusals == 1
    flush(mgr)
    assert sorted(closes(mgr)) == [4, 5]
    mgr.update([ev(6)], T0)
    assert sorted(closes(mgr)) == [5, 6]


def test_series_beyond_max_series_are_refused_and_counted() -> None:
    """A new series over the limit is dropped and counted; held series keep updating."""
    mgr = manager(max_series=2)
    mgr.update([ev(0, symbol="A{=m}"), ev(0, symbol="B{=m}"), ev(0, symbol="C{=m}")], T0)
    mgr.update([ev(1, symbol="C{=m}"), ev(1, symbol="A{=m}")], T0)
    assert mgr.series() == ["A{=m}", "B{=m}"]
    assert mgr.stats().refused_series_events == 2
    assert sorted(closes(mgr, "A{=m}")) == [0, 1]
    with pytest.raises(CapacityError, match="max_series=2"):
        mgr.load_history("D{=m}", pl.DataFrame(schema=CANDLE_SCHEMA))


def test_invalid_symbols_are_counted_not_raised() -> None:
    """An event whose symbol does not parse is dropped and counted."""
    mgr = manager()
    mgr.update([ev(0, symbol="AAPL"), ev(0)], T0)
    assert mgr.stats().invalid_events == 1
    assert mgr.series() == [SERIES]


def test_buffer_overflow_applies_the_snapshot_as_it_stands() -> None:
    """A snapshot larger than max_buffered_events is applied in part, counted, not lost."""
    mgr = manager(max_buffered_events=3)
    mgr.update([ev(9, SB), ev(8), ev(7), ev(6), ev(5, SE)], T0)
    assert sorted(closes(mgr)) == [5, 6, 7, 8, 9]
    assert mgr.stats().snapshot_overflows == 1
    assert mgr.stats().buffered_events == 0


def test_disconnect_drops_half_received_snapshots() -> None:
    """on_disconnect() forgets buffered events; the next snapshot starts clean."""
    mgr = manager()
    mgr.update([ev(3, SB), ev(2)], T0)
    assert mgr.on_disconnect() == 2
    mgr.update([ev(1, SE)], T0)  # not a snapshot end any more: a plain update
    assert closes(mgr) == {1: 100.0}


def test_aliases_and_normalised_keys_find_the_same_series() -> None:
    """Views accept any spelling of the series key."""
    mgr = manager()
    mgr.update([ev(0, symbol="SPY{=1h}")], T0)
    assert mgr.series() == ["SPY{=h}"]
    assert len(mgr.history("SPY{=h}")) == len(mgr.history("SPY{=1h}")) == 1
    assert mgr.history("nope") == [] and mgr.live_candle("QQQ{=m}") is None


# Warm start.


def test_load_history_warm_starts_as_stored() -> None:
    """Loaded candles are held as stored; a later change bumps their stored revision."""
    mgr = manager()
    mgr.update([ev(1, 0, 55.0), ev(2, 0, 56.0)], T0)
    mgr.take_completed()  # hand out slot 1 so the frame below has the store's shape
    stored = manager()
    stored.update([ev(0, 0, 1.0), ev(1, 0, 2.0), ev(2, 0, 3.0)], T0 + 10 * MIN)
    frame = stored.take_completed().frame.with_columns(pl.lit(4, pl.Int64).alias("revision"))
    assert mgr.load_history(SERIES, frame) == 1  # slots 1 and 2 are held already
    assert closes(mgr) == {0: 1.0, 1: 55.0, 2: 56.0}
    assert slots(mgr.take_completed().frame) == [1]  # slot 0 counts as stored
    mgr.update([ev(0, 0, 9.0)], T0)
    assert mgr.take_completed().frame.filter(pl.col("close") == 9.0)["revision"].to_list() == [5]
    with pytest.raises(ValueError, match="expected symbol 'MSFT'"):
        mgr.load_history("MSFT{=m}", frame)


# Memory.


def _fill(series: int, per_series: int) -> CandleDataManager:
    """A manager holding ``per_series`` stored candles of each of ``series`` series."""
    mgr = manager(max_historical_candles=per_series, max_series=series)
    for s in range(series):
        symbol = f"S{s}{{=m}}"
        for start in range(0, per_series, 500):
            mgr.update([ev(i, 0, 100.0 + i, symbol) for i in range(start, start + 500)], T0)
        mgr.advance(T0 + (per_series + 1) * MIN + GRACE)
        flush(mgr)
    return mgr


def test_memory_accounting_counts_every_held_candle_under_the_limit() -> None:
    """stats(): what /metrics reports as the manager's memory and its bound."""
    mgr = _fill(series=5, per_series=2_000)
    held = mgr.stats().candles_held
    assert held == 5 * 2_000
    assert mgr.stats().memory_bytes == held * BYTES_PER_CANDLE
    assert mgr.stats().memory_limit_bytes > mgr.stats().memory_bytes


@pytest.mark.soak
def test_retained_candles_cost_at_most_200_bytes_each() -> None:
    """Measured with tracemalloc: stored, retained candles stay under 200 bytes each (a
    memory bound, so behind --run-soak)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        mgr = _fill(series=5, per_series=2_000)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    held = mgr.stats().candles_held
    assert used / held <= 200, f"{used / held:.0f} bytes per candle"
    assert used / held >= BYTES_PER_CANDLE * 0.5, "the accounting overstates by 2x or more"
