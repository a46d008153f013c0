"""CandleBlock: the Candle events of one large COMPACT frame, held as columns (issue 6).

A backfill arrives as frames of hundreds of Candle events. One ``Candle`` tuple per event,
later packed into the manager's record one by one, was the largest per-event cost on the
client's only thread (``bench_backfill``, ``bench_pipeline``). A block keeps the frame as
numpy columns instead: each field's strided slice of the values array is converted once, in
C, so the manager can pack a whole snapshot with a few numpy operations.

``struct`` (integers as a native long or ``"q"``, doubles as ``"d"``) accepts and rejects
exactly what the tuple decoder does (§3.5, §4.2): integers take ints and bools and refuse floats,
strings and null like ``operator.index``; doubles take numbers and refuse strings and null
like ``float``, and a column holding the strings ``"NaN"``/``"Infinity"``/``"-Infinity"`` is
mapped through them first. Anything else makes :meth:`BlockLayout.decode` raise, and the
caller falls back to the tuple decoder, which names the bad value.

A block is a ``Sequence[Candle]``: indexing or iterating it builds the same ``Candle`` tuples
the tuple decoder would (once, then cached), so a consumer that wants tuples sees no
difference. No I/O, no clock.
"""

from __future__ import annotations

import itertools
import math
import struct
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from pipeline.dxlink.events import (
    DOUBLE_FIELDS,
    INT_FIELDS,
    SPECIAL_DOUBLES,
    Candle,
    index_of,
    sequence_of,
)

__all__ = [
    "BLOCK_MIN_EVENTS",
    "COUNT",
    "EVENT_TIME",
    "FLAGS",
    "INDEX",
    "SEQUENCE",
    "TIME",
    "BlockLayout",
    "CandleBlock",
]

BLOCK_MIN_EVENTS = 64
"""Frames of one series with at least this many events decode to a block (see
:meth:`BlockLayout.suits`)."""
# Rows of CandleBlock.ints (INT_FIELDS order); the doubles' rows are DOUBLE_FIELDS order.
TIME, SEQUENCE, FLAGS, INDEX, EVENT_TIME, COUNT = range(len(INT_FIELDS))
_NAN_BYTES = struct.pack("d", math.nan)
_PACKERS: dict[tuple[str, int], Callable[..., bytes]] = {}  # (code, events) -> packer
_MAX_PACKERS = 256
# A native C long is int64 where it is 8 bytes (Linux, macOS), and struct converts it by a
# shorter path than "q" (CPython's long long path is generic; bench_decode); values and
# checks are the same.
_INT64 = "l" if struct.calcsize("l") == 8 else "q"

IntColumns = npt.NDArray[np.int64]
DoubleColumns = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class BlockLayout:
    """Where each Candle field sits in one COMPACT field list (offsets into an event).

    Only layouts with ``eventSymbol``, ``time`` and ``index`` decode to blocks (tastytrade's
    and ours do); ``sequence`` may be missing (then it comes from ``index``, §4.2), other
    fields default to 0 or NaN like the tuple decoder's.
    """

    width: int
    symbol: int
    ints: tuple[int | None, ...]  # offset of each INT_FIELDS field, None if not listed
    doubles: tuple[int | None, ...]  # offset of each DOUBLE_FIELDS field, None if not listed

    @classmethod
    def of(cls, width: int, positions: dict[str, int]) -> BlockLayout | None:
        """The layout for a field list whose Candle attributes sit at ``positions``, or
        None if blocks cannot carry it."""
        if not {"symbol", "time", "index"} <= positions.keys():
            return None
        return cls(
            width,
            positions["symbol"],
            tuple(positions.get(name) for name in INT_FIELDS),
            tuple(positions.get(name) for name in DOUBLE_FIELDS),
        )

    def suits(self, values: list[Any]) -> bool:
        """Whether a values array is worth decoding as a block: at least
        :data:`BLOCK_MIN_EVENTS` events, the first and the last of one series (a snapshot
        chunk). A frame mixing many series (a live round) is cheaper as tuples: the manager
        would turn its one-event runs into tuples anyway."""
        width, symbol = self.width, self.symbol
        return (
            len(values) >= BLOCK_MIN_EVENTS * width
            and values[symbol] == values[len(values) - width + symbol]
        )

    def decode(self, values: list[Any]) -> CandleBlock:
        """Decode back-to-back event values (length a multiple of :attr:`width`).

        Each kind of column goes into one buffer and becomes one 2-D array without a copy,
        which leaves a frame less fixed cost than filling array rows one by one
        (``bench_decode``).

        Raises:
            TypeError, ValueError, OverflowError: a value is not what its field must be (§3.5).
        """
        width = self.width
        count = len(values) // width
        symbols = values[self.symbol :: width]
        "".join(symbols)  # TypeError unless every symbol is a str
        # struct packs a column in one C call, the least work of array("q", list),
        # array.extend and numpy's row assignment (bench_decode); joining the packed columns
        # costs one memcpy.
        zeros, pack_ints = bytes(8 * count), _packer(_INT64, count)
        try:
            int_parts = [zeros if o is None else pack_ints(*values[o::width]) for o in self.ints]
        except struct.error as exc:  # a float, string, null or beyond int64: not block-clean
            raise TypeError(str(exc)) from None
        ints = np.frombuffer(b"".join(int_parts), np.int64).reshape(len(INT_FIELDS), count)
        if self.ints[SEQUENCE] is None:
            ints = ints.copy()  # writable
            ints[SEQUENCE] = sequence_of(ints[INDEX])
        pack = _packer("d", count)
        parts = [_double_column(values, offset, width, pack) for offset in self.doubles]
        doubles = np.frombuffer(b"".join(parts), np.float64).reshape(len(DOUBLE_FIELDS), count)
        return CandleBlock(symbols, ints, doubles)


def _packer(code: str, count: int) -> Callable[..., bytes]:
    """``struct.Struct(f"{count}{code}").pack``, kept for the frame sizes seen (bounded)."""
    pack = _PACKERS.get((code, count))
    if pack is None:
        if len(_PACKERS) >= _MAX_PACKERS:
            _PACKERS.clear()
        pack = _PACKERS[code, count] = struct.Struct(f"{count}{code}").pack
    return pack


def _double_column(
    values: list[Any], offset: int | None, width: int, pack: Callable[..., bytes]
) -> bytes:
    """One double field's values packed (NaN where the field is not listed), §3.5."""
    if offset is None:
        return _NAN_BYTES * (len(values) // width)
    column = values[offset::width]
    if column and column[0].__class__ is not str:  # struct: less work than array("d"), same checks
        try:  # (a bare try is free in 3.11; a suppress() block is not, and this runs per column)
            return pack(*column)
        except struct.error:
            pass
    # Strings: NaN/±Infinity travel as text (impVolatility, openInterest: all "NaN").
    if column.count("NaN") == len(column):
        return _NAN_BYTES * len(column)
    special: Any = SPECIAL_DOUBLES.get
    return array("d", map(float, map(special, column, column))).tobytes()


class CandleBlock(Sequence[Candle]):
    """Candle events as columns: ``symbols`` (a list), ``ints`` (rows in :data:`INT_FIELDS`
    order) and ``doubles`` (rows in :data:`DOUBLE_FIELDS` order), one column per event.

    Read-only by convention: slices share the columns' memory.
    """

    __slots__ = ("_candles", "doubles", "ints", "symbols")

    def __init__(self, symbols: list[str], ints: IntColumns, doubles: DoubleColumns) -> None:
        if ints.shape != (len(INT_FIELDS), len(symbols)) or doubles.shape != (
            len(DOUBLE_FIELDS),
            len(symbols),
        ):
            raise ValueError(
                f"a block of {len(symbols)} events needs ints of shape "
                f"({len(INT_FIELDS)}, {len(symbols)}) and doubles of shape "
                f"({len(DOUBLE_FIELDS)}, {len(symbols)}), got {ints.shape} and {doubles.shape}"
            )
        self.symbols = symbols
        self.ints = ints
        self.doubles = doubles
        self._candles: list[Candle] | None = None

    @classmethod
    def from_candles(cls, candles: Sequence[Candle]) -> CandleBlock:
        """The block of ``candles`` (tuples), e.g. to merge them with blocks."""
        if isinstance(candles, CandleBlock):
            return candles
        if not candles:
            empty = np.zeros((len(INT_FIELDS), 0), np.int64)
            return cls([], empty, np.zeros((len(DOUBLE_FIELDS), 0)))
        symbols, *ints_and_doubles = zip(*candles, strict=True)
        ints, doubles = ints_and_doubles[: len(INT_FIELDS)], ints_and_doubles[len(INT_FIELDS) :]
        return cls(list(symbols), np.array(ints, np.int64), np.array(doubles, np.float64))

    @classmethod
    def concat(cls, blocks: Sequence[CandleBlock]) -> CandleBlock:
        """One block of ``blocks`` in order."""
        if len(blocks) == 1:
            return blocks[0]
        return cls(
            list(itertools.chain.from_iterable(block.symbols for block in blocks)),
            np.concatenate([block.ints for block in blocks], axis=1),
            np.concatenate([block.doubles for block in blocks], axis=1),
        )

    # ------------------------------------------------------------------ columns

    @property
    def flags(self) -> IntColumns:
        """Each event's ``eventFlags`` (§6.1)."""
        flags: IntColumns = self.ints[FLAGS]
        return flags

    def record_indexes(self) -> IntColumns:
        """Each event's index (§4.2), derived from ``time``/``sequence`` where it is 0 (as
        ``candle.index or index_of(candle.time, candle.sequence)``)."""
        index: IntColumns = self.ints[INDEX]
        missing = index == 0
        if not missing.any():
            return index
        return np.where(missing, index_of(self.ints[TIME], self.ints[SEQUENCE]), index)

    def newest_time(self) -> int:
        """The latest ``time`` or ``eventTime`` of any event (0 for an empty block)."""
        if not self.symbols:
            return 0
        return int(max(self.ints[TIME].max(), self.ints[EVENT_TIME].max()))

    def runs(self) -> list[tuple[str, int, int]]:
        """(symbol, start, stop) of each stretch of consecutive events of one symbol."""
        symbols = self.symbols
        if not symbols:
            return []
        first = symbols[0]
        if symbols.count(first) == len(symbols):  # one series (a snapshot chunk): C speed
            return [(first, 0, len(symbols))]
        runs: list[tuple[str, int, int]] = []
        start = 0
        for symbol, group in itertools.groupby(symbols):
            stop = start + sum(1 for _ in group)
            runs.append((symbol, start, stop))
            start = stop
        return runs

    # ------------------------------------------------------------------ tuples

    def candles(self) -> list[Candle]:
        """The events as ``Candle`` tuples (built once)."""
        if self._candles is None:
            new = tuple.__new__
            self._candles = list(
                map(
                    new,
                    itertools.repeat(Candle, len(self.symbols)),
                    zip(self.symbols, *self.ints.tolist(), *self.doubles.tolist(), strict=True),
                )
            )
        return self._candles

    def candle(self, position: int) -> Candle:
        """One event as a ``Candle`` (without building the others)."""
        if self._candles is not None:
            return self._candles[position]
        ints, doubles = self.ints[:, position].tolist(), self.doubles[:, position].tolist()
        return Candle(self.symbols[position], *ints, *doubles)

    def __len__(self) -> int:
        return len(self.symbols)

    @overload
    def __getitem__(self, item: int) -> Candle: ...

    @overload
    def __getitem__(self, item: slice) -> CandleBlock: ...

    def __getitem__(self, item: int | slice) -> Candle | CandleBlock:
        if isinstance(item, slice):
            return CandleBlock(self.symbols[item], self.ints[:, item], self.doubles[:, item])
        return self.candles()[item]

    def __iter__(self) -> Iterator[Candle]:
        return iter(self.candles())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return self.candles() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable columns: unhashable like a list

    def __repr__(self) -> str:
        return f"CandleBlock({len(self.symbols)} events)"
