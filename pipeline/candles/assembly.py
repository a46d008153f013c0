"""Snapshot and transaction assembly of one series' events (``dxlink-protocol.md`` §6.3).

An :class:`Assembler` sits between the manager (which routes each series' events to its
assembler) and the series' :class:`~pipeline.candles.series.SeriesBook` (which it changes). It
follows §6.3 (TX_PENDING, SNAPSHOT_BEGIN, SNAPSHOT_END/SNIP, REMOVE_EVENT): events of an
unfinished snapshot or transaction are held back, and once consistent they are applied to
the book, live events one by one (upsert or remove), a completed snapshot as one merge.

One change from §6.3: a completed snapshot does not clear the series. It covers
``[oldest event, newest event]`` (``[fromTime, +inf)`` when it holds no real candle: the empty
snapshot, flags 14) and replaces only what is held in that range
(:meth:`~pipeline.candles.series.SeriesBook.merge`), so a snapshot replayed after a reconnect
keeps older candles. Events that arrive before a SNAPSHOT_BEGIN are provisional: applied like
live updates, then overruled by the snapshot's range (§6.2, graal #83).

At most ``max_buffered`` events are held back; beyond it the buffer is applied as it stands
(counted, logged). A snapshot's body that arrives as column blocks (``CandleBlock``, a large
frame) is held back as block slices and merged and packed in one numpy pass; both routes give
the same result as one event at a time (tests/test_candles_bulk.py).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterator, Sequence

import numpy as np

from pipeline.candles.records import VALUES, VALUES_SLICE, pack_block
from pipeline.candles.series import Ledger, SeriesBook
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

__all__ = ["Assembler"]

logger = logging.getLogger("pipeline.candles")  # the manager's logger: one name for its warnings

_pack_values = VALUES.pack
_values_of = operator.itemgetter(VALUES_SLICE)
"""A Candle's ``count`` .. ``open_interest``: the values of its record, in record order."""


def _event_index(event: Candle) -> int:
    """§4.2: the event's index, derived from time and sequence where the wire's was 0."""
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


class Assembler:
    """§6.3 assembly of one series' events into changes of its book (see the module docstring).

    Args:
        book: The series' book, which consistent events change.
        ledger: The manager's shared counters (snapshot overflows).
        max_buffered: Most events held back in an unfinished snapshot or transaction.
    """

    __slots__ = ("_ledger", "_limit", "book", "buffered", "pending", "snap_full", "snap_part")

    def __init__(self, book: SeriesBook, ledger: Ledger, max_buffered: int) -> None:
        self.book = book
        self._ledger = ledger
        self._limit = max_buffered
        # Held-back events (§6.3): tuples, and slices of column blocks (a backfill's chunks).
        self.pending: list[Candle | CandleBlock] = []
        self.buffered = 0  # events in `pending`
        self.snap_part = False  # §6.3 snapPart: a snapshot began and has not ended
        self.snap_full = False  # §6.3 snapFull: it ended; applied with the next consistent event

    def on_event(self, event: Candle) -> None:
        """One event, as §6.3 says."""
        if not event.flags and not self.pending and not (self.snap_part or self.snap_full):
            # A plain update of a consistent series (the live path): straight to the book.
            index = event.index or index_of(event.time, event.sequence)
            self.book.upsert(index, _pack_values(*_values_of(event)))
            return
        self._step(event.flags, event)

    def on_flags(self, flags: int) -> None:
        """An event whose values are dropped (invalid): its flags still open or end a
        snapshot or transaction, so the events around it assemble as they would have."""
        self._step(flags, None)

    def hold(self, run: Sequence[Candle], start: int, stop: int) -> None:
        """``run[start:stop]``, events with no flag of their own (flags 0; in a block also
        TX_PENDING, held back alike while a snapshot is open), as :meth:`on_event` would
        apply them one by one: while a snapshot is open they are held back at once (a
        block's stretch as one block slice)."""
        if start >= stop:
            return
        if self.snap_part and self.buffered + stop - start < self._limit:
            part = run[start:stop]
            if isinstance(part, CandleBlock):
                self.pending.append(part)
            else:
                self.pending.extend(part)
            self.buffered += stop - start
            return
        for event in run[start:stop]:
            self.on_event(event)

    def on_block(self, block: CandleBlock, start: int, stop: int, drop: Sequence[int] = ()) -> None:
        """Events ``start:stop`` of a block (one series): unflagged stretches stay columns,
        events with flags of their own (and those at ``drop``: values dropped, flags kept)
        are applied alone."""
        # Only flags other than TX_PENDING need an event of their own: a TX_PENDING event is
        # held back like an unflagged one while a snapshot is open (§6.3).
        alone = np.flatnonzero(block.flags[start:stop] & ~TX_PENDING) + start
        dropped = set(drop)
        if dropped:
            alone = np.union1d(alone, np.fromiter(dropped, np.int64, len(dropped)))
        at = start
        for position in alone.tolist():
            self.hold(block, at, position)
            if position in dropped:
                self.on_flags(int(block.flags[position]))
            else:
                self.on_event(block.candle(position))
            at = position + 1
        self.hold(block, at, stop)

    def reset(self) -> int:
        """Forget a half-received snapshot or transaction (a disconnect); returns how many
        events were dropped."""
        dropped = self.buffered
        self.pending.clear()
        self.buffered = 0
        self.snap_part = self.snap_full = False
        return dropped

    # ------------------------------------------------------------------ §6.3

    def _step(self, flags: int, event: Candle | None) -> None:
        if flags & SNAPSHOT_BEGIN:  # §6.3: a new snapshot drops any old buffer
            self.snap_part, self.snap_full = True, False
            self.pending.clear()
            self.buffered = 0
        if self.snap_part and flags & (SNAPSHOT_END | SNAPSHOT_SNIP):
            self.snap_part, self.snap_full = False, True
        if flags & TX_PENDING or self.snap_part:
            if event is not None:
                self.pending.append(event)  # §6.3: not consistent yet, hold back
                self.buffered += 1
                if self.buffered >= self._limit:
                    self._overflow()
            return
        events = self.pending
        if event is not None:
            events.append(event)
        self.pending = []
        self.buffered = 0
        if self.snap_full:
            self.snap_full = False
            if events:
                self._apply_snapshot(events)
        else:
            self._apply_live(events)

    def _overflow(self) -> None:
        self._ledger.overflows += 1
        logger.warning(
            "! %s: %d events buffered in an unfinished snapshot/transaction; applying them "
            "as they stand", self.book.key, self.buffered,
        )  # fmt: skip
        events, snapshot = self.pending, self.snap_part
        self.pending = []
        self.buffered = 0
        self.snap_part = self.snap_full = False
        if snapshot:
            self._apply_snapshot(events)
        else:
            self._apply_live(events)

    def _apply_live(self, events: list[Candle | CandleBlock]) -> None:
        book = self.book
        for event in _flatten(events):
            if event.flags & REMOVE_EVENT:
                book.remove(_event_index(event))
            else:
                book.upsert(_event_index(event), _pack_values(*_values_of(event)))

    def _apply_snapshot(self, events: list[Candle | CandleBlock]) -> None:
        """A completed snapshot: each index's last event, merged over the range it covers."""
        block = CandleBlock.concat(_blocks(events))
        indexes = block.record_indexes()
        # Each index's last event (a later event of the same index wins, as in §6.3), in
        # index order: unique over the reversed events finds the last occurrence.
        unique, first_from_end = np.unique(indexes[::-1], return_index=True)
        last = len(indexes) - 1 - first_from_end
        kept = (block.flags[last] & REMOVE_EVENT) == 0
        real: list[int] = unique[kept].tolist()
        packed = pack_block(block, last[kept], unique[kept]).tobytes()
        self.book.merge(int(unique[0]), int(unique[-1]) if real else None, real, packed)
