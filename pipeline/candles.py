"""CandleDataManager: per-series snapshot assembly, bounded history and completeness.

Decoded ``Candle`` events go in (:meth:`CandleDataManager.update`); completed candles that
the store does not hold yet come out as a polars frame (:meth:`CandleDataManager.take_completed`)
and are marked stored only when the caller confirms the write (:meth:`CandleDataManager.commit`).
No I/O and no clock: the caller passes ``now_ms``, derived from the stream (the max event time
seen, or the simulator's clock), so an accelerated source completes candles at its own pace.

Per series (the normalised candle symbol, e.g. ``AAPL{=5m}``):

* **Snapshot assembly** follows ``dxlink-protocol.md`` §6.3 (TX_PENDING, SNAPSHOT_BEGIN,
  SNAPSHOT_END/SNIP, REMOVE_EVENT), with one change: a completed snapshot does not clear the
  series. It covers ``[oldest event, newest event]`` (``[fromTime, +inf)`` when it holds no
  real candle: the empty snapshot, flags 14) and replaces only what is held in that range, so
  a snapshot replayed after a reconnect keeps older candles. A held candle in the range that the
  snapshot lacks was removed server-side; if it had been handed out, a deletion is queued for
  the store. Events that arrive before a SNAPSHOT_BEGIN are provisional: applied like live
  updates, then overruled by the snapshot's range (§6.2, graal #83).
* **Completeness** (DESIGN.md "Candles", §6.5): every candle but the newest is complete; the
  newest is complete once ``now_ms >= time + period + grace`` for fixed-length periods, never by
  time for tick/volume/price and calendar (mo/y) periods. A candle once handed out stays
  complete, even if the newer candle that completed it is removed later.
* **Revisions**: once a candle has been handed out, any later change bumps its ``revision`` and
  makes it dirty again; :meth:`CandleDataManager.commit` marks a candle stored only if it did
  not change since it was handed out.
* **Bounded memory**: each series keeps at most ``max_historical_candles`` in a deque (O(1)
  eviction of the oldest). A candle that is complete but not yet stored is never evicted: it
  is *pinned* and the deque grows past the bound. When more than ``max_pinned_candles`` are
  pinned in total, :meth:`CandleDataManager.update` refuses the next batch with
  :class:`BackpressureError` (nothing applied; flush, then retry). Pinned candles are always
  complete (newer ones exist), so a flush always drains them. A new series beyond
  ``max_series`` is refused: its events are dropped, counted and logged once per series.

Candles are held as packed ``bytes`` records (:mod:`pipeline.records`: index, revision,
count, ten doubles; 137 bytes as an object, plus 8 for the deque slot) and materialised as
:class:`CandleData` on read. Which candles were never handed out (nor loaded from the store)
is a set of indexes per series, so handing out rewrites no record. The hot path works in
bulk (issue 6): a snapshot that arrives as column blocks (``CandleBlock``, a large frame) is
merged and packed with numpy, a series with many candles to hand out or confirm is handled as
one numpy array over its joined records, and the batch frame's columns come straight from the
packed bytes. Few candles (live updates) are found one by one; both routes give the same
result (tests/test_candles_bulk.py).
"""

from __future__ import annotations

import bisect
import functools
import logging
import operator
import sys
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count as counter
from itertools import groupby

import numpy as np
import polars as pl

from pipeline.candle_types import (
    BackpressureError,
    Batch,
    CandleData,
    CapacityError,
    ManagerStats,
)
from pipeline.dxlink.candle_block import CandleBlock
from pipeline.dxlink.events import (
    REMOVE_EVENT,
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    SNAPSHOT_SNIP,
    TX_PENDING,
    Candle,
    index_of,
    sequence_of,
    time_of,
)
from pipeline.dxlink.symbols import CandleSymbol
from pipeline.records import (
    CANDLE_COLUMNS,
    CANDLE_SCHEMA,
    FLOAT_FIELDS,
    HEAD,
    KEY_COLUMNS,
    RECORD,
    VALUES,
    VALUES_AT,
    VALUES_SLICE,
    as_array,
    candle_frame,
    find,
    key_frame,
    pack_block,
    record_index,
    split,
    unchanged,
)

__all__ = [
    "BYTES_PER_CANDLE",
    "CANDLE_COLUMNS",
    "CANDLE_SCHEMA",
    "KEY_COLUMNS",
    "BackpressureError",
    "Batch",
    "CandleData",
    "CandleDataManager",
    "CapacityError",
    "ManagerStats",
]

logger = logging.getLogger(__name__)

BYTES_PER_CANDLE = sys.getsizeof(bytes(RECORD.size)) + 8
"""Estimated memory of one held candle: the record plus its deque slot."""
_BYTES_PER_ENTRY = 64  # one set/dict entry (dirty and deletion bookkeeping), rounded up
_BYTES_PER_EVENT = sys.getsizeof(Candle("", 0)) + 11 * 24  # a buffered event and its numbers
_MAX_OUTSTANDING = 16  # batches remembered for commit; older ones are simply retried
_MANY = 16  # "many" records of a series: one C-level pass over all of them beats a bisect each
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class _Series:
    symbol: CandleSymbol
    records: deque[bytes] = field(default_factory=deque)
    unwritten: set[int] = field(default_factory=set)
    # Never handed out nor loaded from the store (a subset of `unwritten`): a change keeps
    # revision 0 and a removal deletes nothing in the store.
    fresh: set[int] = field(default_factory=set)
    deleted: dict[int, int] = field(default_factory=dict)  # index -> revision when removed
    # Held-back events (§6.3): tuples, and slices of column blocks (a backfill's chunks).
    pending: list[Candle | CandleBlock] = field(default_factory=list)
    buffered: int = 0  # events in `pending`
    snap_part: bool = False
    snap_full: bool = False
    over: int = 0  # candles held beyond max_historical_candles (pinned), as last counted
    changes: int = 0  # bumped when a held candle changes or leaves memory (see commit)


@dataclass(slots=True)
class _Outstanding:
    # series key -> {index: revision handed out}; an index is dropped when its candle leaves
    # memory, so a later candle at that index (re-added from revision 0) is never taken for it.
    upserts: dict[str, dict[int, int]]
    deletions: list[tuple[str, int, int]]
    # series key -> its `changes` when handed out: unchanged since means all still held as is
    changes: dict[str, int] = field(default_factory=dict)


_symbol_of = operator.attrgetter("symbol")
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


class CandleDataManager:
    """Holds the candles of many series; see the module docstring for the rules.

    Args:
        max_series: Most series held; events of further new series are refused and counted.
        max_historical_candles: Candles kept per series (older stored ones are evicted).
        max_pinned_candles: Most unstored candles held beyond the per-series bound, in total,
            before updates are refused with :class:`BackpressureError`.
        max_buffered_events: Most events held back per series in an unfinished snapshot or
            transaction; beyond it the buffer is applied as it stands (counted, logged).
        grace_ms: Extra wait after a time-based period ends before its candle is complete.
    """

    def __init__(
        self,
        *,
        max_series: int = 1_000,
        max_historical_candles: int = 10_000,
        max_pinned_candles: int = 100_000,
        max_buffered_events: int = 50_000,
        grace_ms: int = 5_000,
    ) -> None:
        for name, value in (
            ("max_series", max_series),
            ("max_historical_candles", max_historical_candles),
            ("max_pinned_candles", max_pinned_candles),
            ("max_buffered_events", max_buffered_events),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if grace_ms < 0:
            raise ValueError(f"grace_ms must be >= 0, got {grace_ms}")
        self.max_series = max_series
        self.max_historical_candles = max_historical_candles
        self.max_pinned_candles = max_pinned_candles
        self.max_buffered_events = max_buffered_events
        self.grace_ms = grace_ms
        self._series: dict[str, _Series] = {}
        self._aliases: dict[str, str] = {}  # symbol as received -> series key
        self._refused: set[str] = set()
        self._now = 0
        self._pinned = 0
        self._tokens = counter(1)
        self._outstanding: OrderedDict[int, _Outstanding] = OrderedDict()
        self._revisions = 0
        self._refused_events = 0
        self._invalid_events = 0
        self._overflows = 0
        self._refusals = 0

    # ------------------------------------------------------------------ input

    def update(self, candles: Iterable[Candle], now_ms: int) -> None:
        """Apply decoded events, then move the clock to ``now_ms`` (it never goes back).

        Raises:
            BackpressureError: More than ``max_pinned_candles`` completed candles wait for the
                store. Nothing was applied; flush and call again with the same events.
        """
        if self._pinned > self.max_pinned_candles:
            self._refusals += 1
            raise BackpressureError(self._pinned, self.max_pinned_candles)
        touched: dict[str, _Series] = {}
        if isinstance(candles, CandleBlock):
            self._update_block(candles, touched)
            candles = ()
        # A server sends a series' events in runs (a snapshot chunk is one series): one
        # lookup per run, and a run's unflagged stretches handled at once.
        for symbol, group in groupby(candles, _symbol_of):
            run = list(group)
            series = self._series_for(symbol)
            if series is None:
                for _ in run[1:]:  # dropped events are counted (and logged) one by one
                    self._series_for(symbol)
                continue
            touched[series.symbol.normalized] = series
            self._apply_run(series, run)
        for series in touched.values():
            self._trim(series)
        self.advance(now_ms)

    def _update_block(self, block: CandleBlock, touched: dict[str, _Series]) -> None:
        """:meth:`update` for events as columns: a long run of one series stays columns (a
        snapshot's body is buffered as block slices and merged in one numpy pass); short
        runs (a live round, one event per series) go the tuple route."""
        for symbol, start, stop in block.runs():
            series = self._series_for(symbol)
            if series is None:
                for _ in range(start + 1, stop):  # dropped events counted one by one
                    self._series_for(symbol)
                continue
            touched[series.symbol.normalized] = series
            if stop - start < _MANY:
                self._apply_run(series, block.candles()[start:stop])
                continue
            # Only flags other than TX_PENDING need an event of their own: a TX_PENDING
            # event is held back like an unflagged one while a snapshot is open (§6.3).
            control = block.flags[start:stop] & ~TX_PENDING
            at = start
            for flagged in (np.flatnonzero(control) + start).tolist():
                self._apply_stretch(series, block, at, flagged)
                self._on_event(series, block.candle(flagged))
                at = flagged + 1
            self._apply_stretch(series, block, at, stop)

    def _apply_run(self, series: _Series, run: list[Candle]) -> None:
        """A run of one series' events: unflagged stretches at once, flagged ones alone."""
        start = 0
        for stop in [i for i, flags in enumerate(map(_flags_of, run)) if flags]:
            self._apply_plain(series, run, start, stop)
            self._on_event(series, run[stop])
            start = stop + 1
        self._apply_plain(series, run, start, len(run))

    def _apply_stretch(self, series: _Series, block: CandleBlock, start: int, stop: int) -> None:
        """``block[start:stop]``, events flagged 0 or TX_PENDING only, as :meth:`_on_event`
        would apply them one by one."""
        if start >= stop:
            return
        if series.snap_part and series.buffered + stop - start < self.max_buffered_events:
            series.pending.append(block[start:stop])  # a snapshot's body: held back as columns
            series.buffered += stop - start
            return
        for event in block[start:stop].candles():
            self._on_event(series, event)

    def advance(self, now_ms: int) -> None:
        """Move the clock (ms UTC, from the stream) forward; completeness follows it."""
        self._now = max(self._now, int(now_ms))

    def on_disconnect(self) -> int:
        """Drop half-received snapshots and transactions; the next snapshot restarts them.

        Returns:
            How many buffered events were dropped.
        """
        dropped = 0
        for series in self._series.values():
            dropped += series.buffered
            series.pending.clear()
            series.buffered = 0
            series.snap_part = series.snap_full = False
        return dropped

    def load_history(self, series: str, frame: pl.DataFrame) -> int:
        """Warm-start a series from stored candles (frame in :data:`CANDLE_SCHEMA`).

        Loaded candles count as stored. A candle already held wins over the stored one.

        Returns:
            How many candles were added.

        Raises:
            CapacityError: The series is new and ``max_series`` are held already.
            ValueError: The frame's rows belong to another series.
        """
        entry = self._series_for(series, strict=True)
        assert entry is not None
        symbol = entry.symbol
        if frame.height == 0:
            return 0
        # A frame without `sequence` (read from a store not migrated yet) holds time-based
        # candles only: sequence 0.
        sequence = pl.col("sequence") if "sequence" in frame.columns else pl.lit(0)
        rows = frame.select(
            "symbol", "period", pl.col("time").dt.epoch("ms"), sequence.fill_null(0),
            "revision", "count", *FLOAT_FIELDS,
        ).rows()  # fmt: skip
        held = {record_index(record) for record in entry.records}
        loaded: list[bytes] = []
        for row in rows:
            if row[0] != symbol.base or row[1] != symbol.period_label:
                raise ValueError(
                    f"load_history({symbol.normalized!r}) got a row of {row[0]!r} period "
                    f"{row[1]!r}; expected symbol {symbol.base!r} period {symbol.period_label!r}"
                )
            index = index_of(row[2], row[3])  # §4.2: tick candles of one ms differ by sequence
            if index not in held:
                held.add(index)
                values = VALUES.pack(row[5], *row[6:])
                loaded.append(HEAD.pack(index, row[4]) + values)
        self._replace_records(entry, sorted([*entry.records, *loaded], key=record_index))
        self._trim(entry)
        return len(loaded)

    # ----------------------------------------------------------------- output

    def take_completed(self, max_rows: int | None = None) -> Batch:
        """Hand out the completed candles not stored yet, and the pending deletions.

        The candles stay dirty until :meth:`commit`; without a commit the next call hands
        them out again.

        Args:
            max_rows: Hand out at most this many candles (deletions always all go).
        """
        parts: list[tuple[CandleSymbol, bytes]] = []
        upserts: dict[str, dict[int, int]] = {}
        deletions: list[tuple[str, int, int]] = []
        room = sys.maxsize if max_rows is None else max_rows
        for key, series in self._series.items():
            deletions.extend((key, index, rev) for index, rev in series.deleted.items())
            if not series.unwritten or room <= 0:
                continue
            blob, handed = self._take(series, room)
            if handed:
                parts.append((series.symbol, blob))
                upserts[key] = handed
                room -= len(handed)
        token = next(self._tokens)
        changes = {key: self._series[key].changes for key in upserts}
        self._outstanding[token] = _Outstanding(upserts, deletions, changes)
        while len(self._outstanding) > _MAX_OUTSTANDING:
            self._outstanding.popitem(last=False)
        removed = [(self._series[key].symbol, index) for key, index, _ in deletions]
        rows = sum(len(blob) for _, blob in parts) // RECORD.size
        return Batch(functools.partial(candle_frame, parts), rows, key_frame(removed), token)

    def commit(self, batch: Batch) -> int:
        """The store holds ``batch``: mark its candles stored unless they changed since.

        Idempotent: committing an unknown or already finished batch does nothing. Batches
        must reach the store in the order they were taken (one flush at a time does that).

        Returns:
            How many candles were marked stored.
        """
        entry = self._outstanding.pop(batch.token, None)
        if entry is None:
            return 0
        marked = 0
        for key, handed in entry.upserts.items():
            series = self._series.get(key)
            if series is None or not handed:
                continue  # removed meanwhile: its deletion is queued
            # Stored: still held at the revision handed out. A missing candle was removed
            # meanwhile (its deletion is queued); a changed one stays dirty.
            dirty = series.unwritten
            before = len(dirty)
            if series.changes == entry.changes.get(key):  # nothing changed or left since
                dirty.difference_update(handed)
            else:
                dirty.difference_update(unchanged(series.records, handed))
            if len(dirty) < before:
                marked += before - len(dirty)
                if not dirty:
                    series.unwritten = set()  # a cleared set keeps its peak-size table
                self._trim(series)
        for key, index, revision in entry.deletions:
            series = self._series.get(key)
            if series is not None and series.deleted.get(index) == revision:
                del series.deleted[index]
        return marked

    def release(self, batch: Batch) -> bool:
        """The write failed: forget ``batch``; its candles stay dirty and go out again."""
        return self._outstanding.pop(batch.token, None) is not None

    # ------------------------------------------------------------------ views

    def series(self) -> list[str]:
        """Keys of the held series."""
        return list(self._series)

    def history(self, series: str) -> list[CandleData]:
        """Every held candle of a series, oldest first (empty for an unknown series)."""
        entry = self._lookup(series)
        if entry is None:
            return []
        return [self._materialise(entry, record) for record in entry.records]

    def live_candle(self, series: str) -> CandleData | None:
        """The newest candle of a series while it is still open (not complete), else ``None``."""
        entry = self._lookup(series)
        if entry is None or not entry.records:
            return None
        newest = self._materialise(entry, entry.records[-1])
        return None if newest.is_complete else newest

    def next_completion_ms(self) -> int | None:
        """When (stream ms) the next open candle completes by time, or ``None``."""
        due = [
            time_of(record_index(entry.records[-1])) + period + self.grace_ms
            for entry in self._series.values()
            if entry.records
            and (period := entry.symbol.period_ms) is not None
            and record_index(entry.records[-1]) in entry.unwritten
        ]
        return min(due, default=None)

    @property
    def now_ms(self) -> int:
        """The manager's clock: the latest ``now_ms`` given."""
        return self._now

    def stats(self) -> ManagerStats:
        """Counts and memory estimate (see :data:`BYTES_PER_CANDLE`)."""
        held = sum(len(s.records) for s in self._series.values())
        dirty = sum(len(s.unwritten) for s in self._series.values())
        fresh = sum(len(s.fresh) for s in self._series.values())
        deletions = sum(len(s.deleted) for s in self._series.values())
        buffered = sum(s.buffered for s in self._series.values())
        memory = (
            held * BYTES_PER_CANDLE
            + (dirty + fresh + deletions) * _BYTES_PER_ENTRY
            + buffered * _BYTES_PER_EVENT
        )
        bound = (self.max_series * self.max_historical_candles + self.max_pinned_candles) * (
            BYTES_PER_CANDLE + 2 * _BYTES_PER_ENTRY
        ) + self.max_series * self.max_buffered_events * _BYTES_PER_EVENT
        return ManagerStats(
            series=len(self._series),
            candles_held=held,
            dirty=dirty,
            pinned=self._pinned,
            pending_deletions=deletions,
            buffered_events=buffered,
            revisions=self._revisions,
            refused_series_events=self._refused_events,
            invalid_events=self._invalid_events,
            snapshot_overflows=self._overflows,
            backpressure_refusals=self._refusals,
            memory_bytes=memory,
            memory_limit_bytes=bound,
        )

    # ---------------------------------------------------------- §6.3 assembly

    def _on_event(self, series: _Series, event: Candle) -> None:
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

    def _apply_plain(self, series: _Series, run: list[Candle], start: int, stop: int) -> None:
        """``run[start:stop]``, events without flags, as :meth:`_on_event` would apply them."""
        if start >= stop:
            return
        pending = series.pending
        if series.snap_part and series.buffered + stop - start < self.max_buffered_events:
            pending.extend(run[start:stop])  # §6.3: a snapshot's body, held back (no overflow)
            series.buffered += stop - start
            return
        for event in run[start:stop]:
            self._on_event(series, event)

    def _overflow(self, series: _Series) -> None:
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

    def _apply_live(self, series: _Series, events: list[Candle | CandleBlock]) -> None:
        for event in _flatten(events):
            if event.flags & REMOVE_EVENT:
                self._remove(series, _event_index(event))
            else:
                self._upsert(series, _event_index(event), VALUES.pack(*_values_of(event)))

    def _apply_snapshot(self, series: _Series, events: list[Candle | CandleBlock]) -> None:
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

    # --------------------------------------------------------- record changes

    def _upsert(self, series: _Series, index: int, values: bytes) -> None:
        records = series.records
        if not records or index > record_index(records[-1]):
            records.append(self._revised(series, index, None, values))
            return
        position = find(records, index)
        if position >= 0:
            records[position] = self._revised(series, index, records[position], values)
        else:  # an older candle that is not held: rare, O(n)
            position = bisect.bisect_left(records, index, key=record_index)
            records.insert(position, self._revised(series, index, None, values))

    def _revised(self, series: _Series, index: int, record: bytes | None, values: bytes) -> bytes:
        """The record holding ``values``: unchanged, revised, new or re-added after removal."""
        if record is not None:
            if record[VALUES_AT:] == values:
                return record
            _, revision = HEAD.unpack_from(record)
            if index not in series.fresh:
                revision += 1
                self._revisions += 1
        elif index in series.deleted:  # the store still holds it: a revision, not a new one
            revision = series.deleted.pop(index) + 1
            self._revisions += 1
        else:
            revision = 0
            series.fresh.add(index)
        series.unwritten.add(index)
        series.changes += 1
        return HEAD.pack(index, revision) + values

    def _remove(self, series: _Series, index: int) -> None:
        position = find(series.records, index)
        if position >= 0:
            record = series.records[position]
            del series.records[position]
            self._forget(series, index, record)

    def _forget(self, series: _Series, index: int, record: bytes) -> None:
        self._disown(series, index)
        series.unwritten.discard(index)
        if index in series.fresh:
            series.fresh.discard(index)
        else:
            series.deleted[index] = HEAD.unpack_from(record)[1]

    def _disown(self, series: _Series, *indexes: int) -> None:
        """Candles leave memory: batches in flight no longer vouch for those indexes."""
        series.changes += 1
        key = series.symbol.normalized
        for entry in self._outstanding.values():
            handed = entry.upserts.get(key)
            if handed:
                for index in indexes:
                    handed.pop(index, None)

    def _replace_records(self, series: _Series, records: list[bytes]) -> None:
        series.records = deque(records)

    def _trim(self, series: _Series) -> None:
        """Evict stored candles beyond the bound, oldest first; unstored ones pin the rest."""
        records, limit, dirty = series.records, self.max_historical_candles, series.unwritten
        excess = len(records) - limit
        if excess > 0:
            evictable = excess
            if dirty:
                evictable = 0
                while evictable < excess and record_index(records[evictable]) not in dirty:
                    evictable += 1
            evicted = [records.popleft() for _ in range(evictable)]
            if self._outstanding:
                self._disown(series, *map(record_index, evicted))
        over = max(0, len(records) - limit)
        self._pinned += over - series.over
        series.over = over

    # ---------------------------------------------------------------- helpers

    def _series_for(self, symbol: str, *, strict: bool = False) -> _Series | None:
        key = self._aliases.get(symbol)
        if key is not None:
            return self._series[key]
        if symbol in self._refused and not strict:
            self._refused_events += 1
            return None
        try:
            parsed = CandleSymbol.parse(symbol)
        except ValueError:
            if strict:
                raise
            self._invalid_events += 1
            logger.warning("! dropping a candle event with an invalid symbol %r", symbol[:80])
            return None
        key = parsed.normalized
        if key not in self._series:
            if len(self._series) >= self.max_series:
                message = (
                    f"series {key!r} refused: max_series={self.max_series} series are held; "
                    "raise manager.max_series or subscribe to fewer series"
                )
                if strict:
                    raise CapacityError(message)
                self._refused.add(symbol)
                self._refused_events += 1
                logger.warning("! %s (its events are dropped and counted)", message)
                return None
            self._series[key] = _Series(parsed)
        if len(self._aliases) < 4 * self.max_series:  # bounded: unseen spellings re-parse
            self._aliases[symbol] = key
        return self._series[key]

    def _lookup(self, series: str) -> _Series | None:
        key = self._aliases.get(series)
        if key is None:
            try:
                key = CandleSymbol.parse(series).normalized
            except ValueError:
                return None
        return self._series.get(key)

    def _complete(self, series: _Series, record: bytes) -> bool:
        index = record_index(record)
        if index not in series.fresh or index < record_index(series.records[-1]):
            return True  # handed out once means complete for good, even if its successor goes
        period = series.symbol.period_ms
        return period is not None and self._now >= time_of(index) + period + self.grace_ms

    def _take(self, series: _Series, room: int) -> tuple[bytes, dict[int, int]]:
        """Mark up to ``room`` completed unwritten candles of a series handed out.

        Returns:
            Their records joined, oldest first, and index -> revision of each.
        """
        records, dirty = series.records, series.unwritten
        # Every candle but the newest is complete (§6.5): only the newest needs the check.
        newest_done = self._complete(series, records[-1])
        if len(dirty) * _MANY < len(records):  # few (live updates): find each one
            picked: list[bytes] = []
            handed: dict[int, int] = {}
            for index in sorted(dirty)[:room]:
                position = find(records, index)
                assert position >= 0, "an unwritten candle is always held"
                if position == len(records) - 1 and not newest_done:
                    continue
                record = records[position]
                picked.append(record)
                handed[index] = HEAD.unpack_from(record)[1]
            self._hand_out(series, handed)
            return b"".join(picked), handed
        # Many (a snapshot's worth): one numpy pass over the series' joined records.
        blob = b"".join(records)
        array = as_array(blob)
        if len(dirty) == len(records):  # every held candle (unwritten ones are always held)
            chosen = np.ones(len(array), dtype=bool)
        else:
            chosen = np.isin(array["index"], np.fromiter(dirty, np.int64, len(dirty)))
        chosen[-1] &= newest_done
        positions = np.flatnonzero(chosen)[:room]
        if len(positions) and positions[-1] - positions[0] + 1 == len(positions):
            taken = array[positions[0] : positions[-1] + 1]  # a run (the usual): a view
        else:
            taken = array[positions]  # gathers 104-byte records: ~3x the view's cost
        handed = dict(zip(taken["index"].tolist(), taken["revision"].tolist(), strict=True))
        self._hand_out(series, handed)
        return taken.tobytes(), handed

    def _hand_out(self, series: _Series, handed: dict[int, int]) -> None:
        """The candles in ``handed`` (taken from ``unwritten``) are not fresh any more."""
        fresh = series.fresh
        if len(handed) == len(series.unwritten):  # all unwritten, so all fresh ones (a subset)
            if fresh:
                series.fresh = set()  # (a cleared set would keep its peak-size table)
        elif fresh:
            fresh.difference_update(handed)
            if not fresh:
                series.fresh = set()

    def _materialise(self, series: _Series, record: bytes) -> CandleData:
        index, revision, count, *v = RECORD.unpack(record)
        return CandleData(
            series.symbol.base, series.symbol.period_label,
            _EPOCH + timedelta(milliseconds=time_of(index)),
            open=v[0], high=v[1], low=v[2], close=v[3], volume=v[4], vwap=v[5], count=count,
            bid_volume=v[6], ask_volume=v[7], imp_volatility=v[8], open_interest=v[9],
            is_complete=self._complete(series, record), revision=revision,
            sequence=sequence_of(index),
        )  # fmt: skip
