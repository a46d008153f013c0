"""Snapshot and transaction assembly of one series' events (``dxlink-protocol.md`` §6.3).

:class:`SnapshotAssembly` sits between :class:`pipeline.series.SeriesRecords` (the record
changes) and :class:`pipeline.candles.CandleDataManager` (which routes each series' run of
events here). It follows §6.3 (TX_PENDING, SNAPSHOT_BEGIN, SNAPSHOT_END/SNIP, REMOVE_EVENT),
with one change: a completed snapshot does not clear the series. It covers
``[oldest event, newest event]`` (``[fromTime, +inf)`` when it holds no real candle: the empty
snapshot, flags 14) and replaces only what is held in that range, so a snapshot replayed after
a reconnect keeps older candles. A held candle in the range that the snapshot lacks was
removed server-side; if it had been handed out, a deletion is queued for the store. Events
that arrive before a SNAPSHOT_BEGIN are provisional: applied like live updates, then overruled
by the snapshot's range (§6.2, graal #83).

At most ``max_buffered_events`` are held back per series; beyond it the buffer is applied as
it stands (counted, logged). The hot path works in bulk (issue 6): a snapshot's body that
arrives as column blocks (``CandleBlock``, a large frame) is held back as block slices and
merged and packed in one numpy pass; unflagged stretches of a run are held back at once.
Both routes give the same result as one event at a time (tests/test_candles_bulk.py).
"""

from __future__ import annotations

import bisect
import logging
import operator
from collections.abc import Iterator, Sequence

import numpy as np

from pipeline.candles.records import (
    RECORD,
    VALUES,
    VALUES_AT,
    VALUES_SLICE,
    pack_block,
    record_index,
    split,
)
from pipeline.candles.series import SeriesRecords, SeriesState
from pipeline.dxlink import (
    REMOVE_EVENT,
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    SNAPSHOT_SNIP,
    TX_PENDING,
    Candle,
    CandleBlock,
    index_of,
)

__all__ = ["SnapshotAssembly"]

logger = logging.getLogger("pipeline.candles")  # the manager's logger: one name for its warnings

_flags_of = operator.attrgetter("flags")
_values_of = operator.itemgetter(VALUES_SLICE)
"""A Candle's ``count`` .. ``open_interest``: the values of its record, in record order."""


def _event_index(event: Candle) -> int:
    return event.index or index_of(event.time, event.sequence)


def _flatten(events: list[Candle | CandleBlock]) -> Iterator[Candle]:
    """Held-back events as tuples, block slices expanded."""
    for event in events:
        if isinstance(event, CandleBlock):
            yield from event.candles()
        else:
            yield event


def _blocks(events: list[Candle | CandleBlock]) -> list[CandleBlock]:
    """Held-back events as blocks: block slices as they are, runs of tuples converted."""
    blocks: list[CandleBlock] = []
    tuples: list[Candle] = []
    for event in events:
        if isinstance(event, CandleBlock):
            if tuples:
                blocks.append(CandleBlock.from_candles(tuples))
                tuples = []
            blocks.append(event)
        else:
            tuples.append(event)
    if tuples:
        blocks.append(CandleBlock.from_candles(tuples))
    return blocks


class SnapshotAssembly(SeriesRecords):
    """§6.3 assembly of a series' events into record changes (see the module docstring).

    Args:
        max_historical_candles: Candles kept per series (older stored ones are evicted).
        max_buffered_events: Most events held back per series in an unfinished snapshot or
            transaction; beyond it the buffer is applied as it stands (counted, logged).
    """

    def __init__(self, *, max_historical_candles: int, max_buffered_events: int) -> None:
        super().__init__(max_historical_candles=max_historical_candles)
        self.max_buffered_events = max_buffered_events
        self._overflows = 0

    def _apply_run(self, series: SeriesState, run: list[Candle]) -> None:
        """A run of one series' events: unflagged stretches at once, flagged ones alone."""
        start = 0
        for stop in [i for i, flags in enumerate(map(_flags_of, run)) if flags]:
            self._apply_plain(series, run, start, stop)
            self._on_event(series, run[stop])
            start = stop + 1
        self._apply_plain(series, run, start, len(run))

    def _on_event(self, series: SeriesState, event: Candle) -> None:
        flags = event.flags
        if flags & SNAPSHOT_BEGIN:  # §6.3: a new snapshot drops any old buffer
            series.snap_part, series.snap_full = True, False
            series.pending.clear()
            series.buffered = 0
        if series.snap_part and flags & (SNAPSHOT_END | SNAPSHOT_SNIP):
            series.snap_part, series.snap_full = False, True
        if flags & TX_PENDING or series.snap_part:
            series.pending.append(event)  # §6.3: not consistent yet, hold back
            series.buffered += 1
            if series.buffered >= self.max_buffered_events:
                self._overflow(series)
            return
        events = [*series.pending, event]
        series.pending.clear()
        series.buffered = 0
        if series.snap_full:
            series.snap_full = False
            self._apply_snapshot(series, events)
        else:
            self._apply_live(series, events)

    def _apply_plain(
        self, series: SeriesState, run: Sequence[Candle], start: int, stop: int
    ) -> None:
        """``run[start:stop]``, events with no flag of their own (flags 0; in a block's
        stretch also TX_PENDING, held back alike while a snapshot is open), as
        :meth:`_on_event` would apply them one by one."""
        if start >= stop:
            return
        if series.snap_part and series.buffered + stop - start < self.max_buffered_events:
            # §6.3: a snapshot's body, held back (no overflow); a block's stretch as columns.
            part = run[start:stop]
            if isinstance(part, CandleBlock):
                series.pending.append(part)
            else:
                series.pending.extend(part)
            series.buffered += stop - start
            return
        for event in run[start:stop]:
            self._on_event(series, event)

    def _overflow(self, series: SeriesState) -> None:
        self._overflows += 1
        logger.warning(
            "! %s: %d events buffered in an unfinished snapshot/transaction; applying them "
            "as they stand", series.symbol.normalized, series.buffered,
        )  # fmt: skip
        events, snapshot = list(series.pending), series.snap_part
        series.pending.clear()
        series.buffered = 0
        series.snap_part = series.snap_full = False
        if snapshot:
            self._apply_snapshot(series, events)
        else:
            self._apply_live(series, events)

    def _apply_live(self, series: SeriesState, events: list[Candle | CandleBlock]) -> None:
        for event in _flatten(events):
            if event.flags & REMOVE_EVENT:
                self._remove(series, _event_index(event))
            else:
                self._upsert(series, _event_index(event), VALUES.pack(*_values_of(event)))

    def _apply_snapshot(self, series: SeriesState, events: list[Candle | CandleBlock]) -> None:
        """Merge a completed snapshot: it replaces only what is held in its covered range."""
        block = CandleBlock.concat(_blocks(events))
        indexes = block.record_indexes()
        # Each index's last event (a later event of the same index wins, as in §6.3), in
        # index order: unique over the reversed events finds the last occurrence.
        unique, first_from_end = np.unique(indexes[::-1], return_index=True)
        last = len(indexes) - 1 - first_from_end
        kept = (block.flags[last] & REMOVE_EVENT) == 0
        real: list[int] = unique[kept].tolist()
        old = list(series.records)
        start = bisect.bisect_left(old, int(unique[0]), key=record_index)
        end = bisect.bisect_right(old, int(unique[-1]), key=record_index) if real else len(old)
        held = {record_index(record): record for record in old[start:end]}
        packed = pack_block(block, last[kept], unique[kept]).tobytes()
        if not held and series.deleted.keys().isdisjoint(real):  # all new (a backfill)
            merged = split(packed)
            new = set(real)  # hashed once: set-to-set updates reuse the stored hashes
            series.unwritten = new if not series.unwritten else series.unwritten | new
            series.changes += 1  # unwritten grew: a batch handed out before is not whole
            series.fresh = new.copy() if not series.fresh else series.fresh | new
        else:
            size = RECORD.size
            merged = [
                self._revised(
                    series,
                    index,
                    held.pop(index, None),
                    packed[at * size + VALUES_AT : (at + 1) * size],
                )
                for at, index in enumerate(real)
            ]
        for index, record in held.items():  # in range, absent from the snapshot: removed
            self._forget(series, index, record)
        self._replace_records(series, [*old[:start], *merged, *old[end:]])
