"""COMPACT FEED_DATA built column by column: the simulator's fast path for sending candles.

The simulator must send faster than the client decodes, or a backfill benchmark measures the
simulator (``bench_backfill``'s raw receive is its ceiling). Encoding a snapshot one event and
one field at a time (``feed_codec.encode_candles``, the general encoder) costs more per candle
than the client's decode, so here the ``data`` array is built a column at a time: one list
per wire field, written into the flat COMPACT array with one strided slice assignment each
(§3.3: values of event 1, then event 2...). Snapshots go further: they are kept as bar rows
(``CandleColumns``), so no ``Candle`` tuple exists per served event; the prices come out of
numpy in one ``tolist``.

The result is value for value what ``encode_candles`` writes for the same candles (tests compare
them frame for frame): the same ints and floats, NaN/±Infinity as strings (§3.5 JSONDouble).

``SimServerProtocol`` is ``ServerProtocol`` with one more action that sends through this path
(``ServerProtocol.feed_layout`` and ``send_feed_data``); FULL-format channels and a channel's
first FEED_DATA (which the base class precedes with the lazy eventFields FEED_CONFIG, §3.2)
take the general path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np

from pipeline.dxlink import WIRE_TO_FIELD, Candle, DataFormat, ServerProtocol, index_of
from pipeline.simulator.bars import PRICE_SCALE
from pipeline.simulator.generator import FIELDS, Rows

__all__ = ["CandleColumns", "SimServerProtocol", "compact_values"]

CANDLE = "Candle"
_NAN = math.nan
_FIELD_COUNT = len(Candle._fields)
_FIRST_DOUBLE = Candle._fields.index("open")
_DOUBLE_COLUMNS = _FIELD_COUNT - _FIRST_DOUBLE - 2  # the bar's: not impVolatility, openInterest
_WIRE_NON_FINITE = ("NaN", "Infinity", "-Infinity")  # §3.5 JSONDouble, by case
_TRADES = 4  # Bar field positions in a row (bars.Bar)
_VOLUME = 5
_TURNOVER = 6
# float64 holds every integer below 2**53 exactly; above it a numpy quotient could differ from
# Python's correctly rounded int / int in the last bit.
_EXACT_INT = 2**53
# Candle times (ms) below this keep ``index`` (§4.2) inside int64.
_INDEX_SAFE_MS = 2**31 * 1000
_new_candle = functools.partial(tuple.__new__, Candle)  # from its field values, in order


class CandleColumns(Sequence[Candle]):
    """Candle events of one symbol kept as columns, in the order they are sent.

    A sequence of ``Candle`` (each built on access, for tests and the FULL format) whose
    ``field_columns`` feed the COMPACT encoder without building them.

    Args:
        symbol: Every event's ``eventSymbol`` (the normalised candle symbol, §5.3).
        times: Each event's ``time`` (ms).
        flags: Each event's ``eventFlags`` (§6.1).
        rows: ``(n, FIELDS)`` int64 bar rows (``bars.Bar`` field order). A row of 0 trades is
            an event with no data (a REMOVE_EVENT, a snapshot boundary or an empty snapshot):
            count 0 and every double NaN, as ``bars.removal_candle`` builds it.
    """

    __slots__ = ("flags", "rows", "symbol", "times")

    def __init__(self, symbol: str, times: list[int], flags: list[int], rows: Rows) -> None:
        if not len(times) == len(flags) == len(rows):
            raise ValueError(
                f"times, flags and rows must have one entry per event, "
                f"got {len(times)}, {len(flags)} and {len(rows)}"
            )
        self.symbol = symbol
        self.times = times
        self.flags = flags
        self.rows = rows

    @classmethod
    def empty_event(cls, symbol: str, time_ms: int, flags: int) -> CandleColumns:
        """One event with no data at ``time_ms`` (e.g. §6.2's empty snapshot)."""
        return cls(symbol, [time_ms], [flags], np.zeros((1, FIELDS), dtype=np.int64))

    def __repr__(self) -> str:
        return f"CandleColumns({self.symbol!r}, {len(self.times)} events)"

    def __len__(self) -> int:
        return len(self.times)

    @overload
    def __getitem__(self, index: int) -> Candle: ...

    @overload
    def __getitem__(self, index: slice) -> CandleColumns: ...

    def __getitem__(self, index: int | slice) -> Candle | CandleColumns:
        if isinstance(index, slice):
            return CandleColumns(
                self.symbol, self.times[index], self.flags[index], self.rows[index]
            )
        return self._candle(range(len(self.times))[index])

    def __iter__(self) -> Iterator[Candle]:
        return map(_new_candle, zip(*self.field_columns(), strict=True))

    def _candle(self, at: int) -> Candle:
        return _new_candle([column[0] for column in self.field_columns(at, at + 1)])

    def field_columns(
        self, start: int = 0, stop: int | None = None, *, wire: bool = False
    ) -> list[list[Any]]:
        """One list per ``Candle`` field (``Candle._fields`` order) for events ``start..stop``.

        The values are exactly those ``bars.bar_to_candle`` / ``removal_candle`` give; with
        ``wire`` non-finite doubles are the strings §3.5 sends instead (``"NaN"``).
        """
        times = self.times[start:stop]
        rows = self.rows[start:stop]
        n = len(times)
        doubles = np.empty((n, _DOUBLE_COLUMNS), dtype=np.float64)
        # int / int: the correctly rounded float Python's true division gives.
        doubles[:, :4] = rows[:, :4] / PRICE_SCALE
        doubles[:, 4] = rows[:, _VOLUME]
        doubles[:, 6:] = rows[:, 7:]
        turnover = rows[:, _TURNOVER]
        volume = rows[:, _VOLUME]
        with np.errstate(invalid="ignore", divide="ignore"):
            if n == 0 or max(int(turnover.max()), int(volume.max())) < _EXACT_INT:
                doubles[:, 5] = turnover / volume / PRICE_SCALE
            else:  # past 2**53 only Python's int / int is still correctly rounded
                doubles[:, 5] = [t / v / PRICE_SCALE if v else math.nan for t, v in zip(
                    turnover.tolist(), volume.tolist(), strict=True
                )]  # fmt: skip
        counts = rows[:, _TRADES]
        quiet = counts == 0
        if quiet.any():  # events with no data: every double NaN (removal_candle)
            doubles[quiet] = np.nan
        if n and min(times) >= 0 and max(times) < _INDEX_SAFE_MS:
            stamps = np.array(times, dtype=np.int64)
            index = index_of(stamps).tolist()
        else:
            index = [index_of(time_ms) for time_ms in times]
        zeros = [0] * n
        columns: list[list[Any]] = [
            [self.symbol] * n,
            times,
            zeros,
            self.flags[start:stop],
            index,
            zeros,
            counts.tolist(),
            *doubles.T.tolist(),
        ]
        nan: Any = "NaN" if wire else math.nan
        columns += ([nan] * n, [nan] * n)  # impVolatility, openInterest: not simulated
        if wire:
            for at, field in np.argwhere(~np.isfinite(doubles)).tolist():
                value = doubles[at, field]
                columns[_FIRST_DOUBLE + field][at] = _WIRE_NON_FINITE[
                    0 if value != value else 1 if value > 0 else 2
                ]
        return columns


@functools.lru_cache(maxsize=64)
def _layout(fields: tuple[str, ...]) -> tuple[int, ...]:
    """Per wire field, its position in ``Candle`` (-1 for ``eventType``)."""
    layout = []
    for wire in fields:
        if wire == "eventType":
            layout.append(-1)
            continue
        attribute = WIRE_TO_FIELD.get(wire)
        if attribute is None:
            raise ValueError(
                f"cannot encode Candle field {wire!r}; use the names of "
                f"dxlink.events.WIRE_TO_FIELD or eventType"
            )
        layout.append(Candle._fields.index(attribute))
    return tuple(layout)


def _wire_doubles(values: Sequence[Any]) -> Sequence[Any]:
    """§3.5 JSONDouble: NaN and ±Infinity travel as strings (orjson would write null)."""
    n = len(values)
    if n and values[0] is _NAN and values.count(_NAN) == n:  # by identity: no comparisons
        return ["NaN"] * n
    if math.isfinite(sum(values)):  # C-level: finite unless some value is not (or overflow)
        return values
    return [
        value
        if not isinstance(value, float) or math.isfinite(value)
        else _WIRE_NON_FINITE[0 if value != value else 1 if value > 0 else 2]
        for value in values
    ]


def compact_values(candles: Sequence[Candle], fields: Sequence[str]) -> list[Any]:
    """The flat COMPACT value list (§3.3) of ``candles`` laid out as ``fields``.

    Equal, value for value, to ``encode_candles(candles, fields=fields,
    data_format=COMPACT)[1]``. ``CandleColumns`` are encoded from their columns.

    Raises:
        ValueError: a field is not a Candle wire field.
    """
    layout = _layout(tuple(fields))
    n = len(candles)
    width = len(layout)
    columns: Sequence[Sequence[Any]]
    if isinstance(candles, CandleColumns):
        columns = candles.field_columns(wire=True)
    else:  # transpose once, in C: one tuple per Candle field
        transposed = list(zip(*candles, strict=True)) if n else [()] * _FIELD_COUNT
        columns = [
            _wire_doubles(column) if at >= _FIRST_DOUBLE else column
            for at, column in enumerate(transposed)
        ]
    out: list[Any] = [None] * (n * width)
    for position, at in enumerate(layout):
        out[position::width] = [CANDLE] * n if at < 0 else columns[at]
    return out


class SimServerProtocol(ServerProtocol):
    """``ServerProtocol`` with ``send_candle_events``: COMPACT FEED_DATA from columns."""

    def send_candle_events(
        self, channel: int, candles: Sequence[Candle], *, now: float | None = None
    ) -> None:
        """Queue one FEED_DATA for ``candles`` (a ``CandleColumns`` or Candle tuples).

        The same frame as ``send_candles`` gives (and a ``UsageError`` where it raises one):
        COMPACT channels that have had their eventFields are encoded here, everything else
        goes through ``send_candles``.
        """
        layout = self.feed_layout(channel)
        if not candles or layout is None or layout[0] is not DataFormat.COMPACT:
            self.send_candles(channel, candles, now=now)
            return
        self.send_feed_data(channel, [CANDLE, compact_values(candles, layout[1])], now=now)
