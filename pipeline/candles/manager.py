"""CandleDataManager: per-series snapshot assembly, bounded history and completeness.

Decoded ``Candle`` events go in (:meth:`CandleDataManager.update`); completed candles that
the store does not hold yet come out as a polars frame (:meth:`CandleDataManager.take_completed`)
and are marked stored only when the caller confirms the write (:meth:`CandleDataManager.commit`).
No I/O and no clock: the caller passes ``now_ms``, derived from the stream (the max event time
seen, or the simulator's clock), so an accelerated source completes candles at its own pace.

The manager is built in layers, one module and one job each: :mod:`pipeline.series`
(``SeriesRecords``: held candles as packed records, **revisions**, **bounded memory**),
:mod:`pipeline.assembly` (``SnapshotAssembly``: **snapshot assembly**, §6.3) and this module
(``CandleDataManager``: which series an event belongs to, the clock, the hand-out and commit,
the views and stats). Per series (the normalised candle symbol, e.g. ``AAPL{=5m}``):

* **Completeness** (DESIGN.md "Candles", §6.5): every candle but the newest is complete; the
  newest is complete once ``now_ms >= time + period + grace`` for fixed-length periods, never by
  time for tick/volume/price and calendar (mo/y) periods. A candle once handed out stays
  complete, even if the newer candle that completed it is removed later.
* **Backpressure**: when more than ``max_pinned_candles`` are pinned in total,
  :meth:`CandleDataManager.update` refuses the next batch with :class:`BackpressureError`
  (nothing applied; flush, then retry). Pinned candles are always complete (newer ones exist),
  so a flush always drains them. A new series beyond ``max_series`` is refused: its events are
  dropped, counted and logged once per series.

The hot path works in bulk (issue 6): a series with many candles to hand out or confirm is
handled as one numpy array over its joined records, and the batch frame's columns come
straight from the packed bytes. Few candles (live updates) are found one by one; both routes
give the same result (tests/test_candles_bulk.py).
"""

from __future__ import annotations

import functools
import logging
import operator
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import count as counter
from itertools import groupby

import numpy as np
import polars as pl

from pipeline.candles.assembly import SnapshotAssembly
from pipeline.candles.records import (
    HEAD,
    RECORD,
    as_array,
    candle_frame,
    find,
    key_frame,
    record_index,
    stored_records,
    unchanged,
)
from pipeline.candles.series import Handed, Outstanding, SeriesState
from pipeline.candles.types import BackpressureError, Batch, CandleData, CapacityError, ManagerStats
from pipeline.dxlink import TX_PENDING, Candle, CandleBlock, CandleSymbol, sequence_of, time_of

__all__ = [
    "BYTES_PER_CANDLE",
    "CandleDataManager",
]

logger = logging.getLogger(__name__)

BYTES_PER_CANDLE = sys.getsizeof(bytes(RECORD.size)) + 8
"""Estimated memory of one held candle: the record plus its deque slot."""
_BYTES_PER_ENTRY = 64  # one set/dict entry (dirty and deletion bookkeeping), rounded up
_BYTES_PER_EVENT = sys.getsizeof(Candle("", 0)) + 11 * 24  # a buffered event and its numbers
_MAX_OUTSTANDING = 16  # batches remembered for commit; older ones are simply retried
_MANY = 16  # "many" records of a series: one C-level pass over all of them beats a bisect each
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_symbol_of = operator.attrgetter("symbol")


class CandleDataManager(SnapshotAssembly):
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
        super().__init__(
            max_historical_candles=max_historical_candles, max_buffered_events=max_buffered_events
        )
        self.max_series = max_series
        self.max_pinned_candles = max_pinned_candles
        self.grace_ms = grace_ms
        self._series: dict[str, SeriesState] = {}
        self._aliases: dict[str, str] = {}  # symbol as received -> series key
        self._refused: set[str] = set()
        self._now = 0
        self._tokens = counter(1)
        self._refused_events = 0
        self._invalid_events = 0
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
        touched: dict[str, SeriesState] = {}
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

    def _update_block(self, block: CandleBlock, touched: dict[str, SeriesState]) -> None:
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
                self._apply_plain(series, block, at, flagged)
                self._on_event(series, block.candle(flagged))
                at = flagged + 1
            self._apply_plain(series, block, at, stop)

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
        held = {record_index(record) for record in entry.records}
        loaded: list[bytes] = []
        for index, record in stored_records(frame, symbol):
            if index not in held:
                held.add(index)
                loaded.append(record)
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
        upserts: dict[str, Handed] = {}
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
        whole = {
            key
            for key, handed in upserts.items()
            if len(handed) == len(self._series[key].unwritten)
        }
        self._outstanding[token] = Outstanding(upserts, deletions, changes, whole)
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
                if key in entry.whole:  # it took every unwritten one; none came since
                    dirty = series.unwritten = set()
                else:
                    dirty.difference_update(handed.keys())
            else:
                dirty.difference_update(unchanged(series.records, handed.mapping()))
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

    # ---------------------------------------------------------------- helpers

    def _series_for(self, symbol: str, *, strict: bool = False) -> SeriesState | None:
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
            self._series[key] = SeriesState(parsed)
        if len(self._aliases) < 4 * self.max_series:  # bounded: unseen spellings re-parse
            self._aliases[symbol] = key
        return self._series[key]

    def _lookup(self, series: str) -> SeriesState | None:
        key = self._aliases.get(series)
        if key is None:
            try:
                key = CandleSymbol.parse(series).normalized
            except ValueError:
                return None
        return self._series.get(key)

    def _complete(self, series: SeriesState, record: bytes) -> bool:
        index = record_index(record)
        if index not in series.fresh or index < record_index(series.records[-1]):
            return True  # handed out once means complete for good, even if its successor goes
        period = series.symbol.period_ms
        return period is not None and self._now >= time_of(index) + period + self.grace_ms

    def _take(self, series: SeriesState, room: int) -> tuple[bytes, Handed]:
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
            few = Handed.of(handed)
            self._hand_out(series, few)
            return b"".join(picked), few
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
        many = Handed(np.ascontiguousarray(taken["index"]), np.ascontiguousarray(taken["revision"]))
        self._hand_out(series, many)
        return taken.tobytes(), many

    def _materialise(self, series: SeriesState, record: bytes) -> CandleData:
        index, revision, count, *v = RECORD.unpack(record)
        return CandleData(
            series.symbol.base, series.symbol.period_label,
            _EPOCH + timedelta(milliseconds=time_of(index)),
            open=v[0], high=v[1], low=v[2], close=v[3], volume=v[4], vwap=v[5], count=count,
            bid_volume=v[6], ask_volume=v[7], imp_volatility=v[8], open_interest=v[9],
            is_complete=self._complete(series, record), revision=revision,
            sequence=sequence_of(index),
        )  # fmt: skip
