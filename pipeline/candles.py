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

Candles are held as packed ``bytes`` records (index, revision, flags, count, ten doubles:
138 bytes, plus 8 for the deque slot) and materialised as :class:`CandleData` on read.
"""

from __future__ import annotations

import bisect
import logging
import struct
import sys
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count as counter
from typing import Any

import polars as pl

from pipeline.dxlink.events import (
    REMOVE_EVENT,
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    SNAPSHOT_SNIP,
    TX_PENDING,
    Candle,
    index_of,
    time_of,
)
from pipeline.dxlink.symbols import CandleSymbol

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

_UTC_MS = pl.Datetime("ms", "UTC")
CANDLE_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "period": pl.String(),
    "time": _UTC_MS,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "vwap": pl.Float64(),
    "count": pl.Int64(),
    "bid_volume": pl.Float64(),
    "ask_volume": pl.Float64(),
    "imp_volatility": pl.Float64(),
    "open_interest": pl.Float64(),
    "revision": pl.Int64(),
    "ingested_at": _UTC_MS,
}
"""The store's columns (docs/CONTRACTS.md) as polars types; frames between manager and store."""
CANDLE_COLUMNS: tuple[str, ...] = tuple(CANDLE_SCHEMA)
KEY_COLUMNS: tuple[str, ...] = ("symbol", "period", "time")
_KEY_SCHEMA = {name: CANDLE_SCHEMA[name] for name in KEY_COLUMNS}
_FLOAT_FIELDS = (
    "open", "high", "low", "close", "volume", "vwap",
    "bid_volume", "ask_volume", "imp_volatility", "open_interest",
)  # fmt: skip

# Record: index, revision, flags, then the values (count and the ten doubles). The values
# are compared as bytes, which also treats NaN as equal to NaN.
_RECORD = struct.Struct("<qqBq10d")
_VALUES = struct.Struct("<q10d")
_HEAD = struct.Struct("<qqB")
_INDEX = struct.Struct("<q")
_VALUES_AT = _HEAD.size
_EXPOSED = 0x01  # handed out or loaded from the store: changes bump revision, removal deletes
BYTES_PER_CANDLE = sys.getsizeof(bytes(_RECORD.size)) + 8
"""Estimated memory of one held candle: the record plus its deque slot."""
_BYTES_PER_ENTRY = 64  # one set/dict entry (dirty and deletion bookkeeping), rounded up
_BYTES_PER_EVENT = sys.getsizeof(Candle("", 0)) + 11 * 24  # a buffered event and its numbers
_MAX_OUTSTANDING = 16  # batches remembered for commit; older ones are simply retried
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BackpressureError(RuntimeError):
    """Too many completed candles wait for the store; the update was refused, nothing applied."""

    def __init__(self, pinned: int, limit: int) -> None:
        self.pinned = pinned
        self.limit = limit
        super().__init__(
            f"refusing candle update: {pinned} completed candles are waiting to be stored "
            f"(max_pinned_candles={limit}); flush (take_completed, store, commit) and retry"
        )


class CapacityError(ValueError):
    """A new series would exceed ``max_series``."""


@dataclass(frozen=True, slots=True)
class CandleData:
    """One candle as held by the manager (a snapshot of it; later updates make new ones)."""

    symbol: str
    """Streamer symbol, e.g. ``AAPL`` (``CandleSymbol.base``)."""
    interval: str
    """Period label, e.g. ``5m`` or ``5m,tho=true`` (``CandleSymbol.period_label``)."""
    timestamp: datetime
    """Period start, UTC."""
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float
    count: int
    bid_volume: float
    ask_volume: float
    imp_volatility: float
    open_interest: float
    is_complete: bool
    revision: int


@dataclass(frozen=True, slots=True)
class Batch:
    """Completed candles to store, and stored candles to delete, handed out together."""

    frame: pl.DataFrame
    """Exactly :data:`CANDLE_COLUMNS`; ``ingested_at`` is null (the store sets it)."""
    deletions: pl.DataFrame
    """Keys (``symbol``, ``period``, ``time``) of stored candles removed server-side."""
    token: int
    """Identifies the batch for :meth:`CandleDataManager.commit` / ``release``."""

    @property
    def empty(self) -> bool:
        """Nothing to write and nothing to delete."""
        return self.frame.height == 0 and self.deletions.height == 0


@dataclass(frozen=True, slots=True)
class ManagerStats:
    """Counts and the memory estimate of a :class:`CandleDataManager`."""

    series: int
    candles_held: int
    dirty: int
    """Held candles whose current version is not stored yet."""
    pinned: int
    """Candles held beyond ``max_historical_candles`` because they are not stored yet."""
    pending_deletions: int
    buffered_events: int
    """Events held back in unfinished snapshots or transactions."""
    revisions: int
    refused_series_events: int
    invalid_events: int
    snapshot_overflows: int
    backpressure_refusals: int
    memory_bytes: int
    """Estimate of the memory held now."""
    memory_limit_bytes: int
    """Estimate of the most the configured bounds allow."""


@dataclass(slots=True)
class _Series:
    symbol: CandleSymbol
    records: deque[bytes] = field(default_factory=deque)
    unwritten: set[int] = field(default_factory=set)
    deleted: dict[int, int] = field(default_factory=dict)  # index -> revision when removed
    pending: list[Candle] = field(default_factory=list)
    snap_part: bool = False
    snap_full: bool = False
    over: int = 0  # candles held beyond max_historical_candles (pinned), as last counted


@dataclass(slots=True)
class _Outstanding:
    # (series, index) -> revision handed out; dropped when the candle leaves memory, so a
    # later candle at the same index (re-added from revision 0) is never taken for it.
    upserts: dict[tuple[str, int], int]
    deletions: list[tuple[str, int, int]]


def _index(record: bytes) -> int:
    value: int = _INDEX.unpack_from(record)[0]
    return value


def _event_index(event: Candle) -> int:
    return event.index or index_of(event.time, event.sequence)


def _pack_values(event: Candle) -> bytes:
    return _VALUES.pack(
        event.count, event.open, event.high, event.low, event.close, event.volume, event.vwap,
        event.bid_volume, event.ask_volume, event.imp_volatility, event.open_interest,
    )  # fmt: skip


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
        for event in candles:
            series = self._series_for(event.symbol)
            if series is not None:
                self._on_event(series, event)
                touched[series.symbol.normalized] = series
        for series in touched.values():
            self._trim(series)
        self.advance(now_ms)

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
            dropped += len(series.pending)
            series.pending.clear()
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
        rows = frame.select(
            "symbol", "period", pl.col("time").dt.epoch("ms"), "revision", "count", *_FLOAT_FIELDS
        ).rows()
        held = {_index(record) for record in entry.records}
        loaded: list[bytes] = []
        for row in rows:
            if row[0] != symbol.base or row[1] != symbol.period_label:
                raise ValueError(
                    f"load_history({symbol.normalized!r}) got a row of {row[0]!r} period "
                    f"{row[1]!r}; expected symbol {symbol.base!r} period {symbol.period_label!r}"
                )
            index = index_of(row[2])
            if index not in held:
                held.add(index)
                values = _VALUES.pack(row[4], *row[5:])
                loaded.append(_HEAD.pack(index, row[3], _EXPOSED) + values)
        self._replace_records(entry, sorted([*entry.records, *loaded], key=_index))
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
        picked: list[tuple[_Series, bytes]] = []
        upserts: dict[tuple[str, int], int] = {}
        deletions: list[tuple[str, int, int]] = []
        for key, series in self._series.items():
            deletions.extend((key, index, rev) for index, rev in series.deleted.items())
            if not series.unwritten or (max_rows is not None and len(picked) >= max_rows):
                continue
            for position, record in list(self._dirty_records(series)):
                if max_rows is not None and len(picked) >= max_rows:
                    break
                if not self._complete(series, record):
                    continue
                index, revision, flags = _HEAD.unpack_from(record)
                if not flags & _EXPOSED:
                    record = _HEAD.pack(index, revision, flags | _EXPOSED) + record[_VALUES_AT:]
                    series.records[position] = record
                picked.append((series, record))
                upserts[key, index] = revision
        token = next(self._tokens)
        self._outstanding[token] = _Outstanding(upserts, deletions)
        while len(self._outstanding) > _MAX_OUTSTANDING:
            self._outstanding.popitem(last=False)
        return Batch(_frame(picked), _deletion_frame(self._series, deletions), token)

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
        touched: dict[str, _Series] = {}
        by_series: dict[str, list[tuple[int, int]]] = {}
        for (key, index), revision in entry.upserts.items():
            by_series.setdefault(key, []).append((index, revision))
        for key, handed in by_series.items():
            series = self._series.get(key)
            if series is None:
                continue  # removed meanwhile: its deletion is queued
            held = _held_revisions(series.records, [index for index, _ in handed])
            for index, revision in handed:
                # A missing candle was removed meanwhile (its deletion is queued).
                if index in series.unwritten and held.get(index) == revision:
                    series.unwritten.discard(index)
                    marked += 1
                    touched[key] = series
        for key, index, revision in entry.deletions:
            series = self._series.get(key)
            if series is not None and series.deleted.get(index) == revision:
                del series.deleted[index]
        for series in touched.values():
            if not series.unwritten:
                series.unwritten = set()  # a cleared set keeps its peak-size table
            self._trim(series)
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
            time_of(_index(entry.records[-1])) + period + self.grace_ms
            for entry in self._series.values()
            if entry.records
            and (period := entry.symbol.period_ms) is not None
            and _index(entry.records[-1]) in entry.unwritten
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
        deletions = sum(len(s.deleted) for s in self._series.values())
        buffered = sum(len(s.pending) for s in self._series.values())
        memory = (
            held * BYTES_PER_CANDLE
            + (dirty + deletions) * _BYTES_PER_ENTRY
            + buffered * _BYTES_PER_EVENT
        )
        bound = (self.max_series * self.max_historical_candles + self.max_pinned_candles) * (
            BYTES_PER_CANDLE + _BYTES_PER_ENTRY
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
        if series.snap_part and flags & (SNAPSHOT_END | SNAPSHOT_SNIP):
            series.snap_part, series.snap_full = False, True
        if flags & TX_PENDING or series.snap_part:
            series.pending.append(event)  # §6.3: not consistent yet, hold back
            if len(series.pending) >= self.max_buffered_events:
                self._overflow(series)
            return
        events = [*series.pending, event]
        series.pending.clear()
        if series.snap_full:
            series.snap_full = False
            self._apply_snapshot(series, events)
        else:
            self._apply_live(series, events)

    def _overflow(self, series: _Series) -> None:
        self._overflows += 1
        logger.warning(
            "! %s: %d events buffered in an unfinished snapshot/transaction; applying them "
            "as they stand", series.symbol.normalized, len(series.pending),
        )  # fmt: skip
        events, snapshot = list(series.pending), series.snap_part
        series.pending.clear()
        series.snap_part = series.snap_full = False
        if snapshot:
            self._apply_snapshot(series, events)
        else:
            self._apply_live(series, events)

    def _apply_live(self, series: _Series, events: list[Candle]) -> None:
        for event in events:
            if event.flags & REMOVE_EVENT:
                self._remove(series, _event_index(event))
            else:
                self._upsert(series, _event_index(event), _pack_values(event))

    def _apply_snapshot(self, series: _Series, events: list[Candle]) -> None:
        """Merge a completed snapshot: it replaces only what is held in its covered range."""
        final: dict[int, bytes | None] = {}
        for event in events:
            index = _event_index(event)
            final[index] = None if event.flags & REMOVE_EVENT else _pack_values(event)
        real = sorted(index for index, values in final.items() if values is not None)
        low = min(final)
        old = list(series.records)
        start = bisect.bisect_left(old, low, key=_index)
        end = bisect.bisect_right(old, max(final), key=_index) if real else len(old)
        held = {_index(record): record for record in old[start:end]}
        merged: list[bytes] = []
        for index in real:
            values = final[index]
            assert values is not None
            record = held.pop(index, None)
            merged.append(self._revised(series, index, record, values))
        for index, record in held.items():  # in range, absent from the snapshot: removed
            self._forget(series, index, record)
        self._replace_records(series, [*old[:start], *merged, *old[end:]])

    # --------------------------------------------------------- record changes

    def _upsert(self, series: _Series, index: int, values: bytes) -> None:
        records = series.records
        if not records or index > _index(records[-1]):
            records.append(self._revised(series, index, None, values))
            return
        position = _find(records, index)
        if position >= 0:
            records[position] = self._revised(series, index, records[position], values)
        else:  # an older candle that is not held: rare, O(n)
            position = bisect.bisect_left(records, index, key=_index)
            records.insert(position, self._revised(series, index, None, values))

    def _revised(self, series: _Series, index: int, record: bytes | None, values: bytes) -> bytes:
        """The record holding ``values``: unchanged, revised, new or re-added after removal."""
        if record is not None:
            if record[_VALUES_AT:] == values:
                return record
            _, revision, flags = _HEAD.unpack_from(record)
            if flags & _EXPOSED:
                revision += 1
                self._revisions += 1
        elif index in series.deleted:  # the store still holds it: a revision, not a new one
            revision, flags = series.deleted.pop(index) + 1, _EXPOSED
            self._revisions += 1
        else:
            revision, flags = 0, 0
        series.unwritten.add(index)
        return _HEAD.pack(index, revision, flags) + values

    def _remove(self, series: _Series, index: int) -> None:
        position = _find(series.records, index)
        if position >= 0:
            record = series.records[position]
            del series.records[position]
            self._forget(series, index, record)

    def _forget(self, series: _Series, index: int, record: bytes) -> None:
        self._disown(series, index)
        series.unwritten.discard(index)
        _, revision, flags = _HEAD.unpack_from(record)
        if flags & _EXPOSED:
            series.deleted[index] = revision

    def _disown(self, series: _Series, index: int) -> None:
        """The candle leaves memory: batches in flight no longer vouch for that index."""
        for entry in self._outstanding.values():
            entry.upserts.pop((series.symbol.normalized, index), None)

    def _replace_records(self, series: _Series, records: list[bytes]) -> None:
        series.records = deque(records)

    def _trim(self, series: _Series) -> None:
        """Evict stored candles beyond the bound, oldest first; unstored ones pin the rest."""
        records, limit = series.records, self.max_historical_candles
        while len(records) > limit and _index(records[0]) not in series.unwritten:
            evicted = records.popleft()
            self._disown(series, _index(evicted))
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
        index, _, flags = _HEAD.unpack_from(record)
        if flags & _EXPOSED or index < _index(series.records[-1]):
            return True  # handed out once means complete for good, even if its successor goes
        period = series.symbol.period_ms
        return period is not None and self._now >= time_of(index) + period + self.grace_ms

    def _dirty_records(self, series: _Series) -> Iterator[tuple[int, bytes]]:
        """(position, record) of the unwritten candles, oldest first."""
        records, dirty = series.records, series.unwritten
        if len(dirty) * 16 >= len(records):  # many: one pass beats a bisect per candle
            for position, record in enumerate(records):
                if _index(record) in dirty:
                    yield position, record
            return
        for index in sorted(dirty):
            position = _find(records, index)
            assert position >= 0, "an unwritten candle is always held"
            yield position, records[position]

    def _materialise(self, series: _Series, record: bytes) -> CandleData:
        index, revision, _, count, *v = _RECORD.unpack(record)
        return CandleData(
            series.symbol.base, series.symbol.period_label,
            _EPOCH + timedelta(milliseconds=time_of(index)),
            open=v[0], high=v[1], low=v[2], close=v[3], volume=v[4], vwap=v[5], count=count,
            bid_volume=v[6], ask_volume=v[7], imp_volatility=v[8], open_interest=v[9],
            is_complete=self._complete(series, record), revision=revision,
        )  # fmt: skip


def _held_revisions(records: deque[bytes], indexes: list[int]) -> dict[int, int]:
    """index -> revision of the held records among ``indexes``."""
    if len(indexes) * 16 >= len(records):  # many: one C-level unpack of all beats bisects
        return {i: r for i, r, *_ in _RECORD.iter_unpack(b"".join(records))}
    held: dict[int, int] = {}
    for index in indexes:
        position = _find(records, index)
        if position >= 0:
            held[index] = _HEAD.unpack_from(records[position])[1]
    return held


def _find(records: deque[bytes], index: int) -> int:
    """Position of the record with ``index`` (newest checked first), or -1."""
    if records and _index(records[-1]) == index:
        return len(records) - 1
    position = bisect.bisect_left(records, index, key=_index)
    if position < len(records) and _index(records[position]) == index:
        return position
    return -1


def _frame(picked: list[tuple[_Series, bytes]]) -> pl.DataFrame:
    # One C-level unpack of all records and one transpose (zip) into columns: a Python loop
    # per candle here cost ~30 us and was half of a backfill flush (benchmarks/README.md).
    if not picked:
        return _with_times({name: [] for name in CANDLE_COLUMNS}, CANDLE_SCHEMA)
    rows = _RECORD.iter_unpack(b"".join([record for _, record in picked]))
    index, revision, _flags, count, *floats = zip(*rows, strict=True)
    indexes = pl.Series(index, dtype=pl.Int64)
    # period_label is computed on each access: once per series, not once per candle.
    distinct = {id(series): series.symbol for series, _ in picked}
    bases = {key: symbol.base for key, symbol in distinct.items()}
    labels = {key: symbol.period_label for key, symbol in distinct.items()}
    columns: dict[str, object] = {
        "symbol": [bases[id(series)] for series, _ in picked],
        "period": [labels[id(series)] for series, _ in picked],
        # time_of() (§4.2) on the whole column: seconds in the high 32 bits, ms in bits
        # 22..31 (indexes are >= 0, so floor division is the shift).
        "time": indexes // (1 << 32) * 1000 + indexes // (1 << 22) % 1024,
        "count": count,
        "revision": revision,
        **dict(zip(_FLOAT_FIELDS, floats, strict=True)),
        "ingested_at": [None] * len(picked),
    }
    return _with_times({name: columns[name] for name in CANDLE_COLUMNS}, CANDLE_SCHEMA)


def _deletion_frame(
    series: dict[str, _Series], deletions: list[tuple[str, int, int]]
) -> pl.DataFrame:
    columns: dict[str, list[object]] = {
        "symbol": [series[key].symbol.base for key, _, _ in deletions],
        "period": [series[key].symbol.period_label for key, _, _ in deletions],
        "time": [time_of(index) for _, index, _ in deletions],
    }
    return _with_times(columns, _KEY_SCHEMA)


def _with_times(columns: dict[str, Any], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Build a frame whose Datetime columns were given as ms since the epoch."""
    raw = {name: (pl.Int64() if dtype == _UTC_MS else dtype) for name, dtype in schema.items()}
    frame = pl.DataFrame(columns, schema=raw)
    return frame.with_columns(
        pl.col(name).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")
        for name, dtype in schema.items()
        if dtype == _UTC_MS
    )
