"""One series' held candles and every change to them: revisions, removals, bounded memory.

:class:`SeriesRecords` is the base of :class:`pipeline.candles.CandleDataManager` (through
:class:`pipeline.assembly.SnapshotAssembly`): the record changes every route ends in, so a
snapshot, a live update and a warm start revise, remove and evict candles the same way.

* **Revisions**: once a candle has been handed out, any later change bumps its ``revision`` and
  makes it dirty again; :meth:`CandleDataManager.commit` marks a candle stored only if it did
  not change since it was handed out.
* **Bounded memory**: each series keeps at most ``max_historical_candles`` in a deque (O(1)
  eviction of the oldest). A candle that is complete but not yet stored is never evicted: it
  is *pinned* and the deque grows past the bound. The manager refuses updates while too many
  are pinned in total (``max_pinned_candles``); pinned candles are always complete (newer ones
  exist), so a flush always drains them.

Candles are held as packed ``bytes`` records (:mod:`pipeline.records`: index, revision,
count, ten doubles; 137 bytes as an object, plus 8 for the deque slot) and materialised as
:class:`~pipeline.candle_types.CandleData` on read. Which candles were never handed out (nor
loaded from the store) is a set of indexes per series (:attr:`SeriesState.fresh`), so handing
out rewrites no record. Every change bumps the series' ``changes`` counter, which lets
``commit`` skip the per-candle check for a series that did not change since its hand-out.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipeline.candles.records import HEAD, VALUES_AT, find, record_index
from pipeline.dxlink import Candle, CandleBlock, CandleSymbol

IntArray = npt.NDArray[np.int64]

__all__ = ["Outstanding", "SeriesRecords", "SeriesState"]


@dataclass(slots=True)
class SeriesState:
    """What the manager holds for one series (the normalised candle symbol)."""

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


class Handed:
    """One series' candles in a batch: index -> revision handed out.

    Kept as the two columns it was taken from; the dict is built only when something needs
    it (a commit of a series that changed since, or a candle leaving memory): a commit of an
    unchanged series needs neither (issue 6).
    """

    __slots__ = ("_columns", "_mapping")

    def __init__(self, indexes: IntArray, revisions: IntArray) -> None:
        # Exactly one of the two is set: the columns until the dict is built, then the dict.
        self._columns: tuple[IntArray, IntArray] | None = (indexes, revisions)
        self._mapping: dict[int, int] = {}

    @classmethod
    def of(cls, mapping: dict[int, int]) -> Handed:
        """From an index -> revision dict."""
        handed = cls.__new__(cls)
        handed._columns, handed._mapping = None, mapping
        return handed

    def mapping(self) -> dict[int, int]:
        """index -> revision (built once, then kept and updated in place)."""
        if self._columns is not None:
            indexes, revisions = self._columns
            self._mapping = dict(zip(indexes.tolist(), revisions.tolist(), strict=True))
            self._columns = None
        return self._mapping

    def keys(self) -> Iterable[int]:
        """The indexes handed out."""
        if self._columns is None:
            return self._mapping.keys()
        indexes: list[int] = self._columns[0].tolist()
        return indexes

    def __len__(self) -> int:
        return len(self._mapping) if self._columns is None else len(self._columns[0])


@dataclass(slots=True)
class Outstanding:
    """A batch handed out and not committed or released yet."""

    # series key -> the candles handed out; an index is dropped when its candle leaves
    # memory, so a later candle at that index (re-added from revision 0) is never taken for it.
    upserts: dict[str, Handed]
    deletions: list[tuple[str, int, int]]
    # series key -> its `changes` when handed out: unchanged since means all still held as is
    changes: dict[str, int] = field(default_factory=dict)
    # series keys whose every unwritten candle was handed out (nothing can join them
    # without a change, and commits of other batches only remove)
    whole: set[str] = field(default_factory=set)


class SeriesRecords:
    """Record changes of a series: upsert, revise, remove, evict (see the module docstring).

    Args:
        max_historical_candles: Candles kept per series (older stored ones are evicted).
    """

    def __init__(self, *, max_historical_candles: int) -> None:
        self.max_historical_candles = max_historical_candles
        self._outstanding: OrderedDict[int, Outstanding] = OrderedDict()
        self._pinned = 0
        self._revisions = 0

    def _upsert(self, series: SeriesState, index: int, values: bytes) -> None:
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

    def _revised(
        self, series: SeriesState, index: int, record: bytes | None, values: bytes
    ) -> bytes:
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

    def _remove(self, series: SeriesState, index: int) -> None:
        position = find(series.records, index)
        if position >= 0:
            record = series.records[position]
            del series.records[position]
            self._forget(series, index, record)

    def _forget(self, series: SeriesState, index: int, record: bytes) -> None:
        self._disown(series, index)
        series.unwritten.discard(index)
        if index in series.fresh:
            series.fresh.discard(index)
        else:
            series.deleted[index] = HEAD.unpack_from(record)[1]

    def _disown(self, series: SeriesState, *indexes: int) -> None:
        """Candles leave memory: batches in flight no longer vouch for those indexes."""
        series.changes += 1
        key = series.symbol.normalized
        for entry in self._outstanding.values():
            handed = entry.upserts.get(key)
            if handed:
                mapping = handed.mapping()
                for index in indexes:
                    mapping.pop(index, None)

    def _replace_records(self, series: SeriesState, records: list[bytes]) -> None:
        series.records = deque(records)

    def _hand_out(self, series: SeriesState, handed: Handed) -> None:
        """The candles in ``handed`` (taken from ``unwritten``) are not fresh any more."""
        fresh = series.fresh
        if len(handed) == len(series.unwritten):  # all unwritten, so all fresh ones (a subset)
            if fresh:
                series.fresh = set()  # (a cleared set would keep its peak-size table)
        elif fresh:
            fresh.difference_update(handed.keys())
            if not fresh:
                series.fresh = set()

    def _trim(self, series: SeriesState) -> None:
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
