"""One series' held candles and every change to them: :class:`SeriesBook`.

Every route a candle takes into the manager ends here, so a live update, a snapshot merge and
a warm start revise, remove and evict candles the same way; and every way out (a batch handed
out, a commit, a view) reads the book:

* **Records**: the series' candles, oldest first, one packed record each
  (:mod:`pipeline.candles.records`); a record never changes in place.
* **Revisions**: once a candle has been handed out, any later change bumps its ``revision``
  and makes it unwritten again. Candles never handed out nor loaded from the store are
  *fresh* (a set of indexes, so handing out rewrites no record): their changes keep revision
  0 and their removal deletes nothing in the store. A removed candle the store holds becomes
  a pending *deletion* (index -> its last revision).
* **Hand-out and commit**: :meth:`SeriesBook.take` picks the completed unwritten candles for a
  batch and remembers them under the batch's token; :meth:`SeriesBook.commit` marks them
  stored unless they changed since. Every change bumps ``changes``, which lets a commit skip
  the per-candle check for a book that did not change since its hand-out.
* **Bounded memory**: at most ``max_candles`` records are kept; older stored ones are evicted.
  A completed candle not yet stored is never evicted: it is *pinned* and the book grows past
  the bound (the manager refuses updates while too many are pinned in total; pinned candles
  are always complete, so a flush always drains them).

Counters every book of a manager adds to (revisions, pinned candles, snapshot overflows) live
in one :class:`Ledger` the manager passes in. Few candles (live updates) are found one by one
(a bisect each); many (a snapshot's worth) in one numpy pass over the book's joined records:
:func:`few` decides, and both routes give the same result (tests/test_candles_bulk.py).
"""

from __future__ import annotations

import bisect
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from pipeline.candles.records import (
    HEAD,
    RECORD,
    VALUES_AT,
    as_array,
    find,
    record_index,
    split,
)
from pipeline.dxlink import CandleSymbol, time_of

__all__ = ["MANY", "Handed", "Ledger", "SeriesBook", "few"]

IntArray = npt.NDArray[np.int64]
_newest_index = struct.Struct("<q").unpack_from  # record_index without the call (hot path)

MANY = 16
"""Candles of a series handled one by one cost a bisect each; one numpy pass over all the
book's records costs about as much as ``MANY`` of those (see :func:`few`)."""


def few(count: int, among: int) -> bool:
    """Whether ``count`` candles of a book holding ``among`` are found one by one (a bisect
    each) rather than in one numpy pass over all of them: fewer than :data:`MANY`, or fewer
    than one in :data:`MANY` of them."""
    return count < MANY or count * MANY < among


@dataclass(slots=True)
class Ledger:
    """Counters every :class:`SeriesBook` (and assembler) of one manager adds to."""

    resized: set[SeriesBook] = field(default_factory=set)
    """Books whose number of records changed since the manager last trimmed them: only
    those can have candles to evict or pins to count (an update in place changes neither)."""
    revisions: int = 0
    """Changes to candles that had been handed out."""
    pinned: int = 0
    """Unstored candles held beyond the per-series bound, over all books."""
    overflows: int = 0
    """Unfinished snapshots or transactions applied as they stood (buffer full)."""


class Handed:
    """One book's candles in a batch: index -> revision handed out.

    Kept as the two columns it was taken from; the dict is built only when something needs
    it (a commit of a book that changed since, or a candle leaving memory): a commit of an
    unchanged book needs neither (issue 6).
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


class _InFlight(NamedTuple):
    """What one batch took from a book, kept until the batch is committed or released."""

    handed: Handed
    changes: int
    """The book's ``changes`` at the hand-out: unchanged since means all still held as is."""
    whole: bool
    """The batch took every unwritten candle (nothing can join them without a change)."""
    deletions: tuple[tuple[int, int], ...]
    """(index, revision) of the deletions handed out."""


_NO_DELETIONS: tuple[tuple[int, int], ...] = ()


class SeriesBook:
    """The held candles of one series and their bookkeeping (see the module docstring).

    Args:
        symbol: The series.
        ledger: The manager's shared counters.
        max_candles: Candles kept (older stored ones are evicted; unstored ones pin).
    """

    __slots__ = (
        "_ledger",
        "_limit",
        "_over",
        "base",
        "changes",
        "deleted",
        "fresh",
        "in_flight",
        "key",
        "period_label",
        "period_ms",
        "records",
        "symbol",
        "unwritten",
    )

    def __init__(self, symbol: CandleSymbol, ledger: Ledger, max_candles: int) -> None:
        self.symbol = symbol
        self.key = symbol.normalized
        self.base = symbol.base
        """The store's ``symbol`` column."""
        self.period_label = symbol.period_label
        """The store's ``period`` column (a property of the symbol that builds a string)."""
        self.period_ms = symbol.period_ms
        self._ledger = ledger
        self._limit = max_candles
        self.records: deque[bytes] = deque()
        self.unwritten: set[int] = set()
        """Held candles whose current version is not stored (always held)."""
        self.fresh: set[int] = set()
        """Never handed out nor loaded from the store (a subset of ``unwritten``)."""
        self.deleted: dict[int, int] = {}
        """Removed candles the store holds: index -> revision when removed."""
        self.in_flight: dict[int, _InFlight] = {}
        """Batch token -> what that batch took, until it is committed or released."""
        self.changes = 0
        """Bumped when a held candle changes or leaves memory (see :meth:`commit`)."""
        self._over = 0  # candles held beyond the bound (pinned), as last counted

    # ------------------------------------------------------------------ changes

    def upsert(self, index: int, values: bytes) -> None:
        """Hold ``values`` (a record's values) for the candle at ``index``."""
        records = self.records
        if records:
            newest = _newest_index(records[-1])[0]
            if index == newest:  # the live candle's update: the common case
                records[-1] = self._revised(index, records[-1], values)
                return
            if index < newest:
                position = find(records, index)
                if position >= 0:
                    records[position] = self._revised(index, records[position], values)
                else:  # an older candle that is not held: rare, O(n)
                    position = bisect.bisect_left(records, index, key=record_index)
                    records.insert(position, self._revised(index, None, values))
                    self._ledger.resized.add(self)
                return
        records.append(self._revised(index, None, values))
        self._ledger.resized.add(self)

    def remove(self, index: int) -> None:
        """The candle at ``index`` was removed (REMOVE_EVENT); a no-op when not held."""
        position = find(self.records, index)
        if position >= 0:
            record = self.records[position]
            del self.records[position]
            self._forget(index, record)
            self._ledger.resized.add(self)

    def merge(self, low: int, high: int | None, real: list[int], packed: bytes) -> None:
        """Merge a completed snapshot covering indexes ``[low, high]`` (``high`` None: no
        upper end, the empty snapshot): it holds exactly ``real`` (ascending), whose new
        records (revision 0) are ``packed``. Held candles in the range that it lacks were
        removed server-side; older and newer ones are kept.
        """
        old = list(self.records)
        start = bisect.bisect_left(old, low, key=record_index)
        end = len(old) if high is None else bisect.bisect_right(old, high, key=record_index)
        held = {record_index(record): record for record in old[start:end]}
        if not held and self.deleted.keys().isdisjoint(real):  # all new (a backfill)
            merged = split(packed)
            new = set(real)  # hashed once: set-to-set updates reuse the stored hashes
            self.unwritten = new if not self.unwritten else self.unwritten | new
            self.changes += 1  # unwritten grew: a batch handed out before is not whole
            self.fresh = new.copy() if not self.fresh else self.fresh | new
        else:
            size = RECORD.size
            merged = [
                self._revised(
                    index, held.pop(index, None), packed[at * size + VALUES_AT : (at + 1) * size]
                )
                for at, index in enumerate(real)
            ]
        for index, record in held.items():  # in range, absent from the snapshot: removed
            self._forget(index, record)
        self.records = deque([*old[:start], *merged, *old[end:]])
        self._ledger.resized.add(self)

    def load(self, stored: Iterable[tuple[int, bytes]]) -> int:
        """Add stored candles (a warm start) where nothing is held at their index; they
        count as stored. Returns how many were added."""
        held = {record_index(record) for record in self.records}
        loaded: list[bytes] = []
        for index, record in stored:
            if index not in held:
                held.add(index)
                loaded.append(record)
        if loaded:
            self.records = deque(sorted([*self.records, *loaded], key=record_index))
        return len(loaded)

    def trim(self) -> None:
        """Evict stored candles beyond the bound, oldest first; unstored ones pin the rest."""
        records, limit = self.records, self._limit
        excess = len(records) - limit
        if excess <= 0 and not self._over:
            return
        if excess > 0:
            evictable, dirty = excess, self.unwritten
            if dirty:
                evictable = 0
                while evictable < excess and record_index(records[evictable]) not in dirty:
                    evictable += 1
            evicted = [records.popleft() for _ in range(evictable)]
            if self.in_flight and evicted:
                self._disown(map(record_index, evicted))
        over = max(0, len(records) - limit)
        self._ledger.pinned += over - self._over
        self._over = over

    def _revised(self, index: int, record: bytes | None, values: bytes) -> bytes:
        """The record holding ``values``: unchanged, revised, new or re-added after removal."""
        if record is not None:
            if record.endswith(values):  # the values unchanged (a slice would copy them)
                return record
            _, revision = HEAD.unpack_from(record)
            if index not in self.fresh:
                revision += 1
                self._ledger.revisions += 1
        elif index in self.deleted:  # the store still holds it: a revision, not a new one
            revision = self.deleted.pop(index) + 1
            self._ledger.revisions += 1
        else:
            revision = 0
            self.fresh.add(index)
        self.unwritten.add(index)
        self.changes += 1
        return HEAD.pack(index, revision) + values

    def _forget(self, index: int, record: bytes) -> None:
        """A held candle is gone server-side: a deletion if the store may hold it."""
        self._disown((index,))
        self.unwritten.discard(index)
        if index in self.fresh:
            self.fresh.discard(index)
        else:
            self.deleted[index] = HEAD.unpack_from(record)[1]

    def _disown(self, indexes: Iterable[int]) -> None:
        """Candles leave memory: batches in flight no longer vouch for those indexes (a
        later candle at that index, re-added from revision 0, is never taken for it)."""
        self.changes += 1
        gone = list(indexes)
        for entry in self.in_flight.values():
            if entry.handed:
                mapping = entry.handed.mapping()
                for index in gone:
                    mapping.pop(index, None)

    # ------------------------------------------------------------------ hand-out

    def complete(self, index: int, now_ms: int, grace_ms: int) -> bool:
        """Whether the held candle at ``index`` is complete at ``now_ms`` (§6.5)."""
        if index not in self.fresh or index < record_index(self.records[-1]):
            return True  # handed out once means complete for good, even if its successor goes
        period = self.period_ms
        return period is not None and now_ms >= time_of(index) + period + grace_ms

    def completes_at(self, grace_ms: int) -> int | None:
        """When (stream ms) the newest candle completes by time, if it is open and can."""
        if not self.records or self.period_ms is None:
            return None
        newest = record_index(self.records[-1])
        if newest not in self.unwritten:
            return None
        return time_of(newest) + self.period_ms + grace_ms

    def take(
        self, token: int, room: int, now_ms: int, grace_ms: int
    ) -> tuple[bytes, int, tuple[tuple[int, int], ...]]:
        """Hand out up to ``room`` completed unwritten candles, and every pending deletion,
        to the batch ``token``.

        Returns:
            The candles' records joined, oldest first; how many there are; the deletions
            as (index, revision).
        """
        blob, handed = b"", None
        if self.unwritten and room > 0:
            blob, handed = self._pick(room, now_ms, grace_ms)
        deletions = tuple(self.deleted.items()) if self.deleted else _NO_DELETIONS
        if handed is None or not len(handed):
            if deletions:
                self.in_flight[token] = _InFlight(Handed.of({}), self.changes, False, deletions)
            return b"", 0, deletions
        whole = len(handed) == len(self.unwritten)
        self._hand_out(handed, whole)
        self.in_flight[token] = _InFlight(handed, self.changes, whole, deletions)
        return blob, len(handed), deletions

    def _pick(self, room: int, now_ms: int, grace_ms: int) -> tuple[bytes, Handed]:
        records, dirty = self.records, self.unwritten
        # Every candle but the newest is complete (§6.5): only the newest needs the check.
        newest_done = self.complete(record_index(records[-1]), now_ms, grace_ms)
        if few(len(dirty), len(records)):  # few (live updates): find each one
            picked: list[bytes] = []
            handed: dict[int, int] = {}
            last = len(records) - 1
            for index in sorted(dirty)[:room]:
                position = find(records, index)
                assert position >= 0, "an unwritten candle is always held"
                if position == last and not newest_done:
                    continue
                record = records[position]
                picked.append(record)
                handed[index] = HEAD.unpack_from(record)[1]
            return b"".join(picked), Handed.of(handed)
        # Many (a snapshot's worth): one numpy pass over the book's joined records.
        array = as_array(b"".join(records))
        if len(dirty) == len(records):  # every held candle (unwritten ones are always held)
            positions = np.arange(len(array))
        else:  # held indexes are sorted and every unwritten one is held: an exact search
            wanted = np.fromiter(dirty, np.int64, len(dirty))
            wanted.sort()
            positions = np.searchsorted(array["index"], wanted)
        if not newest_done and len(positions) and positions[-1] == len(array) - 1:
            positions = positions[:-1]
        positions = positions[:room]
        if len(positions) and positions[-1] - positions[0] + 1 == len(positions):
            taken = array[positions[0] : positions[-1] + 1]  # a run (the usual): a view
        else:
            taken = array[positions]  # gathers 104-byte records: ~3x the view's cost
        return taken.tobytes(), Handed(
            np.ascontiguousarray(taken["index"]), np.ascontiguousarray(taken["revision"])
        )

    def _hand_out(self, handed: Handed, whole: bool) -> None:
        """The candles in ``handed`` (taken from ``unwritten``) are not fresh any more."""
        fresh = self.fresh
        if whole:  # all unwritten, so all fresh ones (a subset)
            if fresh:
                self.fresh = set()  # (a cleared set would keep its peak-size table)
        elif fresh:
            fresh.difference_update(handed.keys())
            if not fresh:
                self.fresh = set()

    def commit(self, token: int) -> int:
        """The store holds batch ``token``: mark its candles stored unless they changed
        since, and its deletions done unless the candle came back. Returns how many
        candles were marked stored."""
        entry = self.in_flight.pop(token, None)
        if entry is None:
            return 0
        for index, revision in entry.deletions:
            if self.deleted.get(index) == revision:
                del self.deleted[index]
        handed = entry.handed
        if not handed:
            return 0
        dirty = self.unwritten
        before = len(dirty)
        if self.changes == entry.changes:  # nothing changed or left since the hand-out
            if entry.whole:  # it took every unwritten one; none came since
                dirty = self.unwritten = set()
            else:
                dirty.difference_update(handed.keys())
        else:  # stored: still held at the revision handed out
            dirty.difference_update(self._unchanged(handed.mapping()))
        if len(dirty) >= before:
            return 0
        if not dirty:
            self.unwritten = set()  # a cleared set keeps its peak-size table
        self.trim()
        return before - len(dirty)

    def release(self, token: int) -> None:
        """Batch ``token`` was not written (or is forgotten): its candles stay unwritten."""
        self.in_flight.pop(token, None)

    def _unchanged(self, handed: dict[int, int]) -> list[int]:
        """The indexes in ``handed`` (index -> revision) still held at that revision."""
        records = self.records
        if few(len(handed), len(records)):  # a bisect each
            kept: list[int] = []
            for index, revision in handed.items():
                position = find(records, index)
                if position >= 0 and HEAD.unpack_from(records[position])[1] == revision:
                    kept.append(index)
            return kept
        # Many: one sorted search of every handed index among the held ones (held are sorted).
        held = as_array(b"".join(records))
        if not len(held):
            return []
        held_indexes = held["index"]
        indexes = np.fromiter(handed.keys(), np.int64, len(handed))
        revisions = np.fromiter(handed.values(), np.int64, len(handed))
        positions = np.searchsorted(held_indexes, indexes).clip(0, len(held) - 1)
        same = (held_indexes[positions] == indexes) & (held["revision"][positions] == revisions)
        kept_indexes: list[int] = indexes[same].tolist()
        return kept_indexes
