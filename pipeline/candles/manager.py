"""CandleDataManager: decoded Candle events in, completed candles to store out.

Decoded ``Candle`` events go in (:meth:`CandleDataManager.update`); completed candles that the
store does not hold yet come out as a polars frame (:meth:`CandleDataManager.take_completed`)
and are marked stored only when the caller confirms the write (:meth:`CandleDataManager.commit`).
No I/O and no clock: the caller passes ``now_ms``, derived from the stream (the max event time
seen, or the simulator's clock), so an accelerated source completes candles at its own pace.

The manager *has* its parts; each step of a candle happens in the module that owns it:

1. here, :meth:`CandleDataManager.update` finds the series an event belongs to (the
   normalised candle symbol, e.g. ``AAPL{=5m}``) and hands it to that series'
   :class:`~pipeline.candles.assembly.Assembler` (``assembly``: the §6.3 snapshot and
   transaction rules);
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
  so a flush always drains them. A new series beyond ``max_series`` is refused: its events are
  dropped, counted and logged once per series.

One shape inside: from the door to the batch a candle is one packed record (``records``).
A live update is packed from its tuple straight into its book; a snapshot's column block
is packed a column at a time when the snapshot completes; many records of a book are read
as one numpy structured array over their joined bytes (the same bytes, no copy); the batch
frame is built from them column by column.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import count as counter

import polars as pl

from pipeline.candles.assembly import Assembler
from pipeline.candles.records import RECORD, candle_frame, key_frame, record_index, stored_records
from pipeline.candles.series import Ledger, SeriesBook
from pipeline.candles.types import BackpressureError, Batch, CandleData, CapacityError, ManagerStats
from pipeline.dxlink import Candle, CandleBlock, CandleSymbol, sequence_of, time_of

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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
        self._ledger = Ledger()
        # Series key -> the series' assembler, which holds its book (``assembler.book``).
        self._series: dict[str, Assembler] = {}
        self._routes: dict[str, Assembler] = {}  # symbol as received -> the same assemblers
        self._refused: set[str] = set()
        self._outstanding: OrderedDict[int, list[SeriesBook]] = OrderedDict()
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
        if self._ledger.pinned > self.max_pinned_candles:
            self._refusals += 1
            raise BackpressureError(self._ledger.pinned, self.max_pinned_candles)
        touched: set[SeriesBook] = set()
        if isinstance(candles, CandleBlock):
            for symbol, start, stop in candles.runs():
                assembler = self._route(symbol, stop - start)
                if assembler is not None:
                    touched.add(assembler.book)
                    assembler.on_block(candles, start, stop)
        else:
            routes = self._routes
            for event in candles:
                assembler = routes.get(event.symbol) or self._route(event.symbol, 1)
                if assembler is not None:
                    touched.add(assembler.book)
                    assembler.on_event(event)
        for book in touched:
            book.trim()  # the history bound: once per call and series
        self.advance(now_ms)

    def advance(self, now_ms: int) -> None:
        """Move the clock (ms UTC, from the stream) forward; completeness follows it."""
        self._now = max(self._now, int(now_ms))

    def on_disconnect(self) -> int:
        """Drop half-received snapshots and transactions; the next snapshot restarts them.

        Returns:
            How many buffered events were dropped.
        """
        return sum(assembler.reset() for assembler in self._series.values())

    def load_history(self, series: str, frame: pl.DataFrame) -> int:
        """Warm-start a series from stored candles (frame in :data:`CANDLE_SCHEMA`).

        Loaded candles count as stored. A candle already held wins over the stored one.

        Returns:
            How many candles were added.

        Raises:
            CapacityError: The series is new and ``max_series`` are held already.
            ValueError: The frame's rows belong to another series.
        """
        book = self._book_for(series)
        if frame.height == 0:
            return 0
        loaded = book.load(stored_records(frame, book.symbol))
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
        parts: list[tuple[CandleSymbol, bytes]] = []
        removed: list[tuple[CandleSymbol, int]] = []
        involved: list[SeriesBook] = []
        room = sys.maxsize if max_rows is None else max_rows
        now, grace = self._now, self.grace_ms
        for assembler in self._series.values():
            book = assembler.book
            if not book.unwritten and not book.deleted:
                continue
            blob, rows, deletions = book.take(token, room, now, grace)
            if rows or deletions:
                involved.append(book)
            if rows:
                parts.append((book.symbol, blob))
                room -= rows
            if deletions:
                removed.extend((book.symbol, index) for index, _ in deletions)
        self._outstanding[token] = involved
        while len(self._outstanding) > _MAX_OUTSTANDING:
            forgotten, books = self._outstanding.popitem(last=False)
            for book in books:
                book.release(forgotten)
        rows = sum(len(blob) for _, blob in parts) // RECORD.size
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
        due = [assembler.book.completes_at(self.grace_ms) for assembler in self._series.values()]
        return min((at for at in due if at is not None), default=None)

    @property
    def now_ms(self) -> int:
        """The manager's clock: the latest ``now_ms`` given."""
        return self._now

    def stats(self) -> ManagerStats:
        """Counts and memory estimate (see :data:`BYTES_PER_CANDLE`)."""
        books = [assembler.book for assembler in self._series.values()]
        held = sum(len(book.records) for book in books)
        dirty = sum(len(book.unwritten) for book in books)
        fresh = sum(len(book.fresh) for book in books)
        deletions = sum(len(book.deleted) for book in books)
        buffered = sum(assembler.buffered for assembler in self._series.values())
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
            invalid_events=self._invalid_events,
            snapshot_overflows=self._ledger.overflows,
            backpressure_refusals=self._refusals,
            memory_bytes=memory,
            memory_limit_bytes=bound,
        )

    # ---------------------------------------------------------------- routing

    def _route(self, symbol: str, events: int) -> Assembler | None:
        """The assembler of the series ``symbol`` names, creating the series if there is
        room; ``None`` (the ``events`` are counted as dropped) for a refused or invalid
        symbol."""
        assembler = self._routes.get(symbol)
        if assembler is not None:
            return assembler
        if symbol in self._refused:
            self._refused_events += events
            return None
        try:
            parsed = CandleSymbol.parse(symbol)
        except ValueError:
            self._invalid_events += events
            logger.warning("! dropping a candle event with an invalid symbol %r", symbol[:80])
            return None
        assembler = self._series.get(parsed.normalized)
        if assembler is None:
            if len(self._series) >= self.max_series:
                self._refused.add(symbol)
                self._refused_events += events
                logger.warning(
                    "! %s (its events are dropped and counted)", self._capacity(parsed.normalized)
                )
                return None
            assembler = self._add(parsed)
        if len(self._routes) < 4 * self.max_series:  # bounded: unseen spellings re-parse
            self._routes[symbol] = assembler
        return assembler

    def _book_for(self, series: str) -> SeriesBook:
        """The book of ``series``, created if there is room (raises like load_history)."""
        symbol = CandleSymbol.parse(series)
        assembler = self._series.get(symbol.normalized)
        if assembler is None:
            if len(self._series) >= self.max_series:
                raise CapacityError(self._capacity(symbol.normalized))
            assembler = self._add(symbol)
        return assembler.book

    def _add(self, symbol: CandleSymbol) -> Assembler:
        book = SeriesBook(symbol, self._ledger, self.max_historical_candles)
        assembler = Assembler(book, self._ledger, self.max_buffered_events)
        self._series[symbol.normalized] = self._routes[symbol.normalized] = assembler
        return assembler

    def _capacity(self, key: str) -> str:
        return (
            f"series {key!r} refused: max_series={self.max_series} series are held; "
            "raise manager.max_series or subscribe to fewer series"
        )

    def _lookup(self, series: str) -> SeriesBook | None:
        assembler = self._routes.get(series)
        if assembler is not None:
            return assembler.book
        try:
            assembler = self._series.get(CandleSymbol.parse(series).normalized)
        except ValueError:
            return None
        return None if assembler is None else assembler.book

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
