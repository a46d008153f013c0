"""CandleDataManager: decoded Candle events in, completed candles to store out.

Decoded ``Candle`` events go in (:meth:`CandleDataManager.update`); completed candles that the
store does not hold yet come out as a polars frame (:meth:`CandleDataManager.take_completed`)
and are marked stored only when the caller confirms the write (:meth:`CandleDataManager.commit`).
No I/O and no clock: the caller passes ``now_ms``, derived from the stream (the max event time
seen, or the simulator's clock), so an accelerated source completes candles at its own pace.

The manager *has* its parts; each step of a candle happens in the module that owns it:

1. here, :meth:`CandleDataManager.update` finds the series an event belongs to (the
   normalised candle symbol, e.g. ``AAPL{=5m}``), passes it through that series' door
   (``validation``: :class:`~pipeline.candles.validation.SeriesRule`, what a valid Candle is)
   and hands it to the series' :class:`~pipeline.candles.assembly.Assembler` (``assembly``:
   the §6.3 snapshot and transaction rules);
2. the assembler applies consistent events to the series'
   :class:`~pipeline.candles.series.SeriesBook` (``series``: the held records, revisions,
   removals, eviction and pinning, and what each batch took);
3. :meth:`CandleDataManager.take_completed` asks every book for its completed unwritten
   records and builds the batch from them (``records``: the packed record, and the frame in
   the table's schema built from the joined records, column by column).

Per series:

* **Completeness** (DESIGN.md "Candles", §6.5): every candle but the newest is complete; the
  newest is complete once ``now_ms >= time + period + grace`` for fixed-length periods, never by
  time for tick/volume/price and calendar (mo/y) periods. A candle once handed out stays
  complete, even if the newer candle that completed it is removed later.
* **Backpressure**: when more than ``max_pinned_candles`` are pinned in total,
  :meth:`CandleDataManager.update` refuses the next batch with :class:`BackpressureError`
  (nothing applied; flush, then retry). Pinned candles are always complete (newer ones exist),
  so a flush always drains them.
* **Admission**: once :meth:`CandleDataManager.subscribe` was called, only subscribed series
  enter; without subscriptions any series does, up to ``max_series``. Events of a refused
  series are dropped, counted and logged sparsely (at powers of ten), in bounded memory.

One shape inside: from the door to the batch a candle is one packed record (``records``).
A live update is packed from its tuple straight into its book; a snapshot's column block
is packed a column at a time when the snapshot completes; many records of a book are read
as one numpy structured array over their joined bytes (the same bytes, no copy); the batch
frame is built from them column by column.
"""

from __future__ import annotations

import functools
import logging
import operator
import sys
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import count as counter
from typing import NamedTuple

import numpy as np
import polars as pl

from pipeline.candles.assembly import Assembler
from pipeline.candles.records import (
    FLOAT_FIELDS,
    RECORD,
    as_array,
    candle_frame,
    key_frame,
    record_index,
    stored_records,
)
from pipeline.candles.series import Ledger, SeriesBook
from pipeline.candles.types import BackpressureError, Batch, CandleData, CapacityError, ManagerStats
from pipeline.candles.validation import (
    REASONS,
    TIME_MAX,
    DropLog,
    InvalidReason,
    SeriesRule,
)
from pipeline.dxlink import REMOVE_EVENT, Candle, CandleBlock, CandleSymbol, sequence_of, time_of

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
_MAX_REFUSED = 1_024  # refused symbols remembered (re-parsed after a reset): bounded
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_time_of = operator.attrgetter("time")
_event_time_of = operator.attrgetter("event_time")


class _Series(NamedTuple):
    """What the manager keeps per series: its door and its assembler (which has its book)."""

    rule: SeriesRule
    assembler: Assembler


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
        future_tolerance_ms: When set, ``now_ms`` given to :meth:`update` is a clock the caller
            trusts (the wall clock, a simulator's clock), and events later than it by more than
            this are dropped as ``future``; ``None``: the caller has no such clock (``now_ms``
            comes from the stream itself), times are only held to the protocol's range.
    """

    def __init__(
        self,
        *,
        max_series: int = 1_000,
        max_historical_candles: int = 10_000,
        max_pinned_candles: int = 100_000,
        max_buffered_events: int = 50_000,
        grace_ms: int = 5_000,
        future_tolerance_ms: int | None = None,
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
        if future_tolerance_ms is not None and future_tolerance_ms < 0:
            raise ValueError(f"future_tolerance_ms must be >= 0 or None, got {future_tolerance_ms}")
        self.max_series = max_series
        self.max_historical_candles = max_historical_candles
        self.max_pinned_candles = max_pinned_candles
        self.max_buffered_events = max_buffered_events
        self.grace_ms = grace_ms
        self.future_tolerance_ms = future_tolerance_ms
        self._ledger = Ledger()
        self._series: dict[str, _Series] = {}  # series key -> its door and assembler
        self._routes: dict[str, _Series] = {}  # symbol as received -> the same entries
        self._subscribed: set[str] | None = None  # None: any series enters (up to max_series)
        self._refused: set[str] = set()  # symbols of refused series, skipped without parsing
        self._outstanding: OrderedDict[int, list[SeriesBook]] = OrderedDict()
        self._now = 0
        self._newest = 0
        self._tokens = counter(1)
        self._invalid = dict.fromkeys(REASONS, 0)
        self._drops = DropLog()
        self._refused_events = 0
        self._unsolicited_events = 0
        self._refusals = 0

    # ------------------------------------------------------------------ input

    def subscribe(self, series: str, from_ms: int | None = None) -> str:
        """Admit ``series`` (any spelling of it). From the first call on, only subscribed
        series enter: events of any other are dropped and counted as unsolicited.

        Args:
            series: The candle symbol subscribed, e.g. ``AAPL{=1m}``.
            from_ms: The subscription's ``fromTime``: events a whole period or more before it
                are dropped (``before_from_time``). A later call replaces it.

        Returns:
            The series key (the normalised symbol).

        Raises:
            ValueError: ``series`` is not a candle symbol.
            CapacityError: ``max_series`` series are held already.
        """
        symbol = CandleSymbol.parse(series)
        entry = self._series.get(symbol.normalized)
        if entry is None:
            if len(self._series) >= self.max_series:
                raise CapacityError(self._capacity(symbol.normalized))
            entry = self._add(symbol)
        entry.rule.set_from(from_ms)
        if self._subscribed is None:
            self._subscribed = set()
        self._subscribed.add(symbol.normalized)
        # Routes of series that entered while the door was open lead nowhere now.
        subscribed = self._subscribed
        self._routes = {
            name: route
            for name, route in self._routes.items()
            if route.assembler.book.key in subscribed
        }
        self._refused.clear()  # a symbol refused before may be admitted now
        return symbol.normalized

    def update(self, candles: Iterable[Candle], now_ms: int) -> None:
        """Apply decoded events, then move the clock to ``now_ms`` (it never goes back).

        Each event passes the door first (:mod:`pipeline.candles.validation`): an invalid one
        is dropped and counted, and only its eventFlags take effect.

        Raises:
            BackpressureError: More than ``max_pinned_candles`` completed candles wait for the
                store. Nothing was applied; flush and call again with the same events.
        """
        if self._ledger.pinned > self.max_pinned_candles:
            self._refusals += 1
            raise BackpressureError(self._ledger.pinned, self.max_pinned_candles)
        ceiling = self._ceiling(now_ms)
        if isinstance(candles, CandleBlock):
            for symbol, start, stop in candles.runs():
                entry = self._route(symbol, stop - start)
                if entry is not None:
                    self._apply_block(entry, candles, start, stop, ceiling)
        else:
            if not isinstance(candles, Sequence):
                candles = list(candles)
            routes = self._routes
            dropped = 0
            for event in candles:
                entry = routes.get(event.symbol) or self._route(event.symbol, 1)
                if entry is None:
                    dropped += 1
                    continue
                reason = entry.rule.check(event, ceiling)
                if reason is None:
                    entry.assembler.on_event(event)
                else:
                    dropped += 1
                    self._drop(entry, reason, event, ceiling)
                    entry.assembler.on_flags(event.flags)
            if candles:
                self._track_newest(candles, dropped, ceiling)
        resized = self._ledger.resized
        for book in resized:
            book.trim()  # the history bound: once per call and series (that grew or shrank)
        resized.clear()
        self.advance(now_ms)

    def advance(self, now_ms: int) -> None:
        """Move the clock (ms UTC, from the stream) forward; completeness follows it."""
        self._now = max(self._now, int(now_ms))

    def on_disconnect(self) -> int:
        """Drop half-received snapshots and transactions; the next snapshot restarts them.

        Returns:
            How many buffered events were dropped.
        """
        return sum(entry.assembler.reset() for entry in self._series.values())

    def load_history(self, series: str, frame: pl.DataFrame) -> int:
        """Warm-start a series from stored candles (frame in :data:`CANDLE_SCHEMA`).

        Loaded candles count as stored. A candle already held wins over the stored one.
        Stored rows pass the door too (not its ``fromTime`` rule: older candles are what a
        warm start is for); with ``future_tolerance_ms`` the manager's clock (``now_ms``,
        :meth:`advance` it first) judges ``future``.

        Returns:
            How many candles were added.

        Raises:
            CapacityError: The series is new and ``max_series`` are held already.
            ValueError: The series is not subscribed (once any is), or the frame's rows
                belong to another series.
        """
        entry = self._entry_for(series)
        book = entry.assembler.book
        if frame.height == 0:
            return 0
        stored = list(stored_records(frame, book.symbol))
        array = as_array(b"".join(record for _, record in stored))
        indexes = np.ascontiguousarray(array["index"])
        # A clock never set (0) has nothing to judge the future by.
        ceiling = self._ceiling(self._now) if self._now else TIME_MAX
        codes = entry.rule.check_columns(
            time_of(indexes),
            sequence_of(indexes),
            None,
            None,
            np.ascontiguousarray(array["count"]),
            np.stack([array[name] for name in FLOAT_FIELDS]),
            ceiling,
            judge_from_time=False,
        )
        if codes is not None:
            for position in np.flatnonzero(codes).tolist():
                index, _, count, *values = RECORD.unpack(stored[position][1])
                event = Candle(
                    book.key, time_of(index), sequence_of(index), 0, index, 0, count, *values
                )
                self._drop(entry, REASONS[codes[position] - 1], event, ceiling)
            stored = [pair for pair, code in zip(stored, codes.tolist(), strict=True) if not code]
        loaded = book.load(stored)
        book.trim()
        return loaded

    # ----------------------------------------------------------------- output

    def take_completed(self, max_rows: int | None = None) -> Batch:
        """Hand out the completed candles not stored yet, and the pending deletions.

        The candles stay dirty until :meth:`commit`; without a commit the next call hands
        them out again.

        Args:
            max_rows: Hand out at most this many candles (deletions always all go).
        """
        token = next(self._tokens)
        parts: list[tuple[str, str, bytes]] = []
        removed: list[tuple[CandleSymbol, int]] = []
        involved: list[SeriesBook] = []
        room = sys.maxsize if max_rows is None else max_rows
        now, grace = self._now, self.grace_ms
        for entry in self._series.values():
            book = entry.assembler.book
            if not book.unwritten and not book.deleted:
                continue
            blob, rows, deletions = book.take(token, room, now, grace)
            if rows or deletions:
                involved.append(book)
            if rows:
                parts.append((book.base, book.period_label, blob))
                room -= rows
            if deletions:
                removed.extend((book.symbol, index) for index, _ in deletions)
        self._outstanding[token] = involved
        while len(self._outstanding) > _MAX_OUTSTANDING:
            forgotten, books = self._outstanding.popitem(last=False)
            for book in books:
                book.release(forgotten)
        rows = sum(len(blob) for _, _, blob in parts) // RECORD.size
        return Batch(functools.partial(candle_frame, parts), rows, key_frame(removed), token)

    def commit(self, batch: Batch) -> int:
        """The store holds ``batch``: mark its candles stored unless they changed since.

        Idempotent: committing an unknown or already finished batch does nothing. Batches
        must reach the store in the order they were taken (one flush at a time does that).

        Returns:
            How many candles were marked stored.
        """
        books = self._outstanding.pop(batch.token, None)
        if books is None:
            return 0
        return sum(book.commit(batch.token) for book in books)

    def release(self, batch: Batch) -> bool:
        """The write failed: forget ``batch``; its candles stay dirty and go out again."""
        books = self._outstanding.pop(batch.token, None)
        if books is None:
            return False
        for book in books:
            book.release(batch.token)
        return True

    # ------------------------------------------------------------------ views

    def series(self) -> list[str]:
        """Keys of the held series."""
        return list(self._series)

    def history(self, series: str) -> list[CandleData]:
        """Every held candle of a series, oldest first (empty for an unknown series)."""
        book = self._lookup(series)
        if book is None:
            return []
        return [self._materialise(book, record) for record in book.records]

    def live_candle(self, series: str) -> CandleData | None:
        """The newest candle of a series while it is still open (not complete), else ``None``."""
        book = self._lookup(series)
        if book is None or not book.records:
            return None
        newest = self._materialise(book, book.records[-1])
        return None if newest.is_complete else newest

    def next_completion_ms(self) -> int | None:
        """When (stream ms) the next open candle completes by time, or ``None``."""
        due = [entry.assembler.book.completes_at(self.grace_ms) for entry in self._series.values()]
        return min((at for at in due if at is not None), default=None)

    @property
    def now_ms(self) -> int:
        """The manager's clock: the latest ``now_ms`` given."""
        return self._now

    @property
    def newest_ms(self) -> int:
        """The latest ``time`` or ``eventTime`` of an event that passed the door (0 before
        any): the stream's own clock. An ``eventTime`` later than the door's limit is not
        counted (it is not a reason to drop the candle: the store does not keep it)."""
        return self._newest

    def stats(self) -> ManagerStats:
        """Counts and memory estimate (see :data:`BYTES_PER_CANDLE`)."""
        books = [entry.assembler.book for entry in self._series.values()]
        held = sum(len(book.records) for book in books)
        dirty = sum(len(book.unwritten) for book in books)
        fresh = sum(len(book.fresh) for book in books)
        deletions = sum(len(book.deleted) for book in books)
        buffered = sum(entry.assembler.buffered for entry in self._series.values())
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
            pinned=self._ledger.pinned,
            pending_deletions=deletions,
            buffered_events=buffered,
            revisions=self._ledger.revisions,
            refused_series_events=self._refused_events,
            invalid_events=sum(self._invalid.values()),
            snapshot_overflows=self._ledger.overflows,
            backpressure_refusals=self._refusals,
            memory_bytes=memory,
            memory_limit_bytes=bound,
            invalid_by_reason={str(reason): count for reason, count in self._invalid.items()},
            unsolicited_events=self._unsolicited_events,
        )

    # ---------------------------------------------------------------- the door

    def _ceiling(self, now_ms: int) -> int:
        """The latest valid candle time for a caller's clock at ``now_ms``."""
        if self.future_tolerance_ms is None:
            return TIME_MAX
        return min(TIME_MAX, now_ms + self.future_tolerance_ms)

    def _apply_block(
        self, entry: _Series, block: CandleBlock, start: int, stop: int, ceiling: int
    ) -> None:
        """Events ``start:stop`` of a block (one series) through the door, then to its
        assembler; the invalid ones as flags only."""
        part = block if start == 0 and stop == len(block) else block[start:stop]
        codes = entry.rule.check_columns(
            part.times,
            part.sequences,
            part.record_indexes(),
            (part.flags & REMOVE_EVENT) != 0,
            part.counts,
            part.doubles,
            ceiling,
        )
        times, event_times = part.times, part.event_times
        dropped: list[int] = []
        if codes is not None:
            bad = np.flatnonzero(codes)
            firsts: dict[int, int] = {}  # reason code -> its first position, for the log
            for position, code in zip(bad.tolist(), codes[bad].tolist(), strict=True):
                firsts.setdefault(code, position)
            counts = np.bincount(codes[bad], minlength=len(REASONS) + 1)
            for code, position in firsts.items():
                reason = REASONS[code - 1]
                event = part.candle(position)
                self._drop(entry, reason, event, ceiling, int(counts[code]))
            valid = codes == 0
            times, event_times = times[valid], event_times[valid]
            dropped = (bad + start).tolist()
        if len(times):
            in_time = event_times[event_times <= ceiling]
            newest = int(max(times.max(), in_time.max() if len(in_time) else 0))
            self._newest = max(self._newest, newest)
        entry.assembler.on_block(block, start, stop, dropped)

    def _track_newest(self, candles: Sequence[Candle], dropped: int, ceiling: int) -> None:
        """Move :attr:`newest_ms` to the latest time or eventTime the batch brought in."""
        if dropped:  # rare: look at the events that passed the door only
            routes = self._routes
            kept = [
                event
                for event in candles
                if (entry := routes.get(event.symbol)) is not None
                and entry.rule.check(event, ceiling) is None
            ]
            if not kept:
                return
            candles = kept
        newest = max(map(_time_of, candles))  # C-level passes: ~80 ns per event
        event_newest = max(map(_event_time_of, candles))
        if event_newest > ceiling:
            event_newest = max((t for t in map(_event_time_of, candles) if t <= ceiling), default=0)
        self._newest = max(self._newest, newest, event_newest)

    def _drop(
        self,
        entry: _Series,
        reason: InvalidReason,
        event: Candle,
        ceiling: int,
        events: int = 1,
    ) -> None:
        """Count ``events`` invalid events of a series; log the first of each reason, then
        at powers of ten (the keys are bounded: admitted series times reasons)."""
        self._invalid[reason] += events
        key = entry.assembler.book.key
        total = self._drops.add((key, reason), events)
        if total is not None:
            logger.warning(
                "! %s: dropped an invalid Candle event (%s; %s so far for this series, logged "
                "again at every power of ten): %s",
                key, reason, f"{total:,}", entry.rule.describe(event, reason, ceiling),
            )  # fmt: skip

    # ---------------------------------------------------------------- routing

    def _route(self, symbol: str, events: int) -> _Series | None:
        """The series entry ``symbol`` names, creating the series if the door is open and
        there is room; ``None`` (the ``events`` are counted as dropped) otherwise."""
        entry = self._routes.get(symbol)
        if entry is not None:
            return entry
        if symbol in self._refused:
            self._refuse(symbol, events, None)
            return None
        try:
            parsed = CandleSymbol.parse(symbol)
        except ValueError as exc:
            self._invalid[InvalidReason.SYMBOL] += events
            total = self._drops.add(("", InvalidReason.SYMBOL), events)
            if total is not None:
                logger.warning(
                    "! dropped %s Candle events whose eventSymbol is not a candle symbol "
                    "(logged again at every power of ten); the latest: %s",
                    f"{total:,}", str(exc)[:200],
                )  # fmt: skip
            return None
        key = parsed.normalized
        entry = self._series.get(key)
        if self._subscribed is not None and key not in self._subscribed:
            self._refuse(symbol, events, None)
            return None
        if entry is None:
            if len(self._series) >= self.max_series:
                self._refuse(symbol, events, key)
                return None
            entry = self._add(parsed)
        if len(self._routes) < 4 * self.max_series:  # bounded: unseen spellings re-parse
            self._routes[symbol] = entry
        return entry

    def _refuse(self, symbol: str, events: int, over_capacity: str | None) -> None:
        """Count (and log, sparsely) events of a series that is not admitted: not subscribed,
        or (with no subscriptions) beyond ``max_series``."""
        if len(self._refused) >= _MAX_REFUSED:
            self._refused.clear()  # bounded: a flood of names costs a parse each, not memory
        self._refused.add(symbol)
        if self._subscribed is not None:
            self._unsolicited_events += events
            total = self._drops.add(("", "unsolicited"), events)
            if total is not None:
                logger.warning(
                    "! dropped %s Candle events of series nobody subscribed (logged again at "
                    "every power of ten; candles_unsolicited_events_total); the latest: %r",
                    f"{total:,}", symbol[:80],
                )  # fmt: skip
            return
        self._refused_events += events
        total = self._drops.add(("", "capacity"), events)
        if total is not None:
            logger.warning(
                "! %s (%s events of series over the limit dropped and counted; logged again "
                "at every power of ten)",
                self._capacity(over_capacity or symbol[:80]), f"{total:,}",
            )  # fmt: skip

    def _entry_for(self, series: str) -> _Series:
        """The entry of ``series``, created if the door is open and there is room."""
        symbol = CandleSymbol.parse(series)
        key = symbol.normalized
        if self._subscribed is not None and key not in self._subscribed:
            shown = sorted(self._subscribed)
            raise ValueError(
                f"series {key!r} is not subscribed; subscribe() it first (subscribed: "
                f"{', '.join(shown[:5])}{', ...' if len(shown) > 5 else ''})"
            )
        entry = self._series.get(key)
        if entry is None:
            if len(self._series) >= self.max_series:
                raise CapacityError(self._capacity(key))
            entry = self._add(symbol)
        return entry

    def _add(self, symbol: CandleSymbol) -> _Series:
        book = SeriesBook(symbol, self._ledger, self.max_historical_candles)
        entry = _Series(SeriesRule(symbol), Assembler(book, self._ledger, self.max_buffered_events))
        self._series[symbol.normalized] = self._routes[symbol.normalized] = entry
        return entry

    def _capacity(self, key: str) -> str:
        return (
            f"series {key!r} refused: max_series={self.max_series} series are held; "
            "raise manager.max_series or subscribe to fewer series"
        )

    def _lookup(self, series: str) -> SeriesBook | None:
        entry = self._routes.get(series)
        if entry is None:
            try:
                entry = self._series.get(CandleSymbol.parse(series).normalized)
            except ValueError:
                return None
        return None if entry is None else entry.assembler.book

    def _materialise(self, book: SeriesBook, record: bytes) -> CandleData:
        index, revision, count, *v = RECORD.unpack(record)
        return CandleData(
            book.symbol.base, book.symbol.period_label,
            _EPOCH + timedelta(milliseconds=time_of(index)),
            open=v[0], high=v[1], low=v[2], close=v[3], volume=v[4], vwap=v[5], count=count,
            bid_volume=v[6], ask_volume=v[7], imp_volatility=v[8], open_interest=v[9],
            is_complete=book.complete(record_index(record), self._now, self.grace_ms),
            revision=revision, sequence=sequence_of(index),
        )  # fmt: skip
