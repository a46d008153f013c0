"""The manager's door: which Candle events are valid, and the notice of those that are not.

Every event passes :meth:`SeriesRule.check` (a tuple) or :meth:`SeriesRule.check_columns`
(a column block, or stored rows at a warm start) before it reaches its series. An invalid
event is dropped, counted under its :class:`InvalidReason` and logged by :class:`DropLog`
(the first of each series and reason, then at 10, 100, 1,000, ...); it is never stored and
never raises. Its eventFlags still count (:meth:`~pipeline.candles.assembly.Assembler.on_flags`),
so a snapshot whose END event is garbage still ends.

A valid Candle event (references are to ``dxlink-protocol.md``):

* ``time`` is within what the §4.2 index can carry: its seconds fit 32 signed bits,
  1901-12-13T20:45:52Z to 2038-01-19T03:14:07.999Z (``time_range``);
* ``time`` is not later than the caller's clock plus a tolerance, when the caller has a clock
  to trust (``future``): a candle cannot start in the future, and one that did would end the
  live candle early and, once stored, ask the server for history from the future;
* ``time`` is not a whole period (the longest its type can be) or more before the
  subscription's ``fromTime`` (``before_from_time``): such a candle cannot contain
  ``fromTime``, so the server was not asked for it (§6.2);
* ``sequence`` is 0..2^22-1 and a non-zero ``index`` is exactly
  ``((time // 1000) << 32) | ((time % 1000) << 22) | sequence`` (``index``, §4.2);
* for time-based periods, ``time`` is on a period boundary (``off_period``): with the default
  midnight alignment, a multiple of the period since 00:00 UTC when the period divides a day
  (1m, 5m, 90m, 1h, 4h...; otherwise of the largest length that divides both, e.g. whole
  minutes for 7m), weeks on Monday 00:00 UTC, months and years on their first day 00:00 UTC
  (§4.3); with session alignment (``a=s``; sessions open on whole minutes, e.g. 09:30 ET) a
  whole minute, or the period when it divides a minute. Tick, volume and price candles start
  at any millisecond; option-expiration months (``o``) are not checked;
* open, high, low and close are all finite with ``low <= high`` and ``|x| <= 1e12``, or all
  NaN (an empty candle) (``ohlc``);
* volume, bid volume, ask volume, open interest and count are not negative (``negative``);
  the first four are NaN or at most 1e18, vwap NaN or a price (``|x| <= 1e12``), implied
  volatility NaN or ``|x| <= 1e18``, count at most 2^63-1 (``value_range``).

Decided on purpose, legal market data: negative prices (spreads, some futures: WTI settled at
-37.63 in April 2020); an open, close or vwap outside ``[low, high]`` (dxFeed's default daily
candle takes its volume, and so its vwap, from the whole day but its OHLC from regular hours
only, §5.1; a futures close can be a settlement price outside the traded range); bid plus
ask volume above volume (§4.1); zero prices and zero volume. ``high < low`` is not: no
aggregation of prices gives a maximum below the minimum. A REMOVE_EVENT's values are NaN by
the protocol and its time may be ``fromTime`` itself (§6.2), so only its time and index are
judged. An eventSymbol that is no candle symbol is dropped as ``symbol``.

No I/O, no clock: the caller's clock comes in as the ``ceiling`` of valid times.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.dxlink import (
    DOUBLE_FIELDS,
    REMOVE_EVENT,
    SEQUENCE_MASK,
    Candle,
    CandleSymbol,
    index_of,
)

__all__ = [
    "MAX_AMOUNT",
    "MAX_PRICE",
    "TIME_MAX",
    "TIME_MIN",
    "DropLog",
    "InvalidReason",
    "SeriesRule",
    "time_text",
]

TIME_MIN = -(2**31) * 1000
"""Earliest candle time (ms) the §4.2 index can carry: its seconds are 32 signed bits."""
TIME_MAX = 2**31 * 1000 - 1
"""Latest candle time (ms) the §4.2 index can carry (2038-01-19T03:14:07.999Z)."""
MAX_PRICE = 1e12
"""Largest price magnitude: far above any traded instrument (the dearest share trades near
1e6), and small enough that sums of a year of candles keep their cents."""
MAX_AMOUNT = 1e18
"""Largest volume, open interest or implied volatility: beyond any market's volume (the
busiest crypto tokens trade ~1e14 units a day), below float64's range by 290 decades."""
_INT64_MAX = 2**63 - 1

_SECOND, _MINUTE, _DAY = 1_000, 60_000, 86_400_000
_WEEK = 7 * _DAY
_MONDAY = 4 * _DAY  # 1970-01-05, the first Monday after the epoch (a Thursday)
# The longest one period of a calendar type can be, for before_from_time.
_CALENDAR_SPAN = {"mo": 31 * _DAY, "o": 35 * _DAY, "y": 366 * _DAY}
_NAMES = {name: row for row, name in enumerate(DOUBLE_FIELDS)}
_AMOUNTS = ("volume", "bid_volume", "ask_volume", "open_interest")

IntColumn = npt.NDArray[np.int64]


class InvalidReason(StrEnum):
    """Why an event was dropped (the ``reason`` label of ``candles_invalid_events_total``)."""

    SYMBOL = "symbol"
    """The eventSymbol is not a candle symbol (§5.1)."""
    TIME_RANGE = "time_range"
    """``time`` outside what the §4.2 index can carry (1901-12-13 to 2038-01-19)."""
    FUTURE = "future"
    """``time`` later than the caller's clock plus its tolerance."""
    BEFORE_FROM_TIME = "before_from_time"
    """``time`` a whole period or more before the subscription's fromTime."""
    INDEX = "index"
    """``index``, ``time`` and ``sequence`` disagree, or ``sequence`` is out of range (§4.2)."""
    OFF_PERIOD = "off_period"
    """A time-based candle not on its period's boundary."""
    OHLC = "ohlc"
    """Open/high/low/close not all finite (within 1e12) with low <= high, nor all NaN."""
    NEGATIVE = "negative"
    """Volume, bid or ask volume, open interest or count below 0."""
    VALUE_RANGE = "value_range"
    """Another value infinite or beyond its bound (vwap, volumes, implied volatility, count)."""


REASONS: tuple[InvalidReason, ...] = tuple(InvalidReason)
"""Every reason; a column check's codes are positions in it plus one (0: valid)."""
_CODE = {reason: code for code, reason in enumerate(REASONS, 1)}


def time_text(ms: int) -> str:
    """``ms`` as an ISO time when a datetime can hold it, else the number itself."""
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms since the epoch"


def _calendar_start(time: int, unit: str) -> bool:
    """Whether ``time`` is 00:00 UTC of the first day of a month (``mo``) or year (``y``)."""
    moment = datetime.fromtimestamp(time / 1000, UTC)
    return time % _DAY == 0 and moment.day == 1 and (unit == "mo" or moment.month == 1)


class SeriesRule:
    """The door of one series: its period boundary and its subscription's fromTime.

    Args:
        symbol: The series.
        from_ms: The subscription's ``fromTime`` (``None``: no lower bound but the protocol's).
    """

    __slots__ = (
        "_calendar", "_grain", "_index", "_offset", "_span", "_time", "floor", "from_ms", "symbol",
    )  # fmt: skip

    def __init__(self, symbol: CandleSymbol, from_ms: int | None = None) -> None:
        self.symbol = symbol
        unit, period = symbol.period_unit, symbol.period_ms
        session = dict(symbol.attributes).get("a") == "s"
        self._grain = 0  # time - offset must be a multiple of it (0: not checked)
        self._offset = 0
        self._calendar: str | None = None  # "mo"/"y": 00:00 UTC of the month's/year's first day
        if period is not None:  # s, m, h, d, w
            if session:
                self._grain = math.gcd(period, _MINUTE)
            elif unit == "w":
                self._grain, self._offset = math.gcd(period, _WEEK), _MONDAY
            else:
                self._grain = math.gcd(period, _DAY)
        elif unit in ("mo", "y"):
            if session:
                self._grain = _MINUTE
            else:
                self._calendar = unit
        if period is not None:
            self._span = period
        elif unit in _CALENDAR_SPAN:
            self._span = math.ceil(symbol.period_value) * _CALENDAR_SPAN[unit]
        else:
            self._span = 0  # tick, volume, price: a candle cannot start before what it holds
        # The last (index, time) of sequence 0 judged valid (index 0 never matches a wire's).
        self._index, self._time = 0, 0
        self.from_ms: int | None = None
        self.floor = TIME_MIN
        """The earliest valid ``time``."""
        self.set_from(from_ms)

    def set_from(self, from_ms: int | None) -> None:
        """The subscription's ``fromTime`` (``None``: none)."""
        self._index = self._time = 0  # judged against the old floor
        self.from_ms = from_ms
        if from_ms is None:
            self.floor = TIME_MIN
        else:  # a candle starting a whole period (or more) before fromTime cannot contain it
            self.floor = max(TIME_MIN, from_ms - self._span + 1 if self._span else from_ms)

    # ------------------------------------------------------------------ one event

    def check(self, event: Candle, ceiling: int) -> InvalidReason | None:
        """Why ``event`` is invalid, or ``None``; ``ceiling`` is the latest valid time."""
        # One unpack into locals, then plain comparisons: this runs for every live update.
        _, time, sequence, flags, index, _, count, o, h, low, c, v, vw, bv, av, iv, oi = event
        if flags & REMOVE_EVENT or index != self._index or time != self._time or sequence:
            if not (
                self.floor <= time <= ceiling
                and 0 <= sequence <= SEQUENCE_MASK
                and (not index or index == ((time // 1000) << 32 | (time % 1000) << 22 | sequence))
            ):
                return self._reason(event, ceiling)
            if flags & REMOVE_EVENT:
                return None  # §6.1: a removal's values are NaN; §6.2: its time may be fromTime
            grain = self._grain
            if (grain and (time - self._offset) % grain) or (
                self._calendar is not None and not _calendar_start(time, self._calendar)
            ):
                return self._reason(event, ceiling)
            # The live candle comes again and again with this key: judged once (but the
            # ceiling below is, every time: a clock can be set back). Sequence 0 only (a
            # time-based candle): one comparison fewer on the hot path.
            if not sequence:
                self._index, self._time = index, time
        elif time > ceiling:
            return self._reason(event, ceiling)
        p, a = MAX_PRICE, MAX_AMOUNT
        if (
            (
                (-p <= low <= h <= p and -p <= o <= p and -p <= c <= p)
                or (o != o and h != h and low != low and c != c)
            )
            and (0 <= v <= a or v != v)
            and (-p <= vw <= p or vw != vw)
            and (0 <= bv <= a or bv != bv)
            and (0 <= av <= a or av != av)
            and (iv != iv or -a <= iv <= a)  # mostly NaN: that test first
            and (oi != oi or 0 <= oi <= a)
            and 0 <= count <= _INT64_MAX
        ):
            return None
        return self._reason(event, ceiling)

    def _reason(self, event: Candle, ceiling: int) -> InvalidReason | None:
        """The first rule ``event`` breaks, in the module docstring's order."""
        time, sequence, index = event.time, event.sequence, event.index
        if not TIME_MIN <= time <= TIME_MAX:
            return InvalidReason.TIME_RANGE
        if time > ceiling:
            return InvalidReason.FUTURE
        if time < self.floor:
            return InvalidReason.BEFORE_FROM_TIME
        if not 0 <= sequence <= SEQUENCE_MASK or (index and index != index_of(time, sequence)):
            return InvalidReason.INDEX
        if event.flags & REMOVE_EVENT:
            return None
        grain = self._grain
        if (grain and (time - self._offset) % grain) or (
            self._calendar is not None and not _calendar_start(time, self._calendar)
        ):
            return InvalidReason.OFF_PERIOD
        o, h, low, c = event.open, event.high, event.low, event.close
        p = MAX_PRICE
        finite = -p <= low <= h <= p and -p <= o <= p and -p <= c <= p
        if not finite and not (o != o and h != h and low != low and c != c):
            return InvalidReason.OHLC
        amounts = [getattr(event, name) for name in _AMOUNTS]
        if event.count < 0 or any(x < 0 for x in amounts):
            return InvalidReason.NEGATIVE
        if (
            event.count > _INT64_MAX
            or any(x > MAX_AMOUNT for x in amounts)
            or not (-p <= event.vwap <= p or event.vwap != event.vwap)
            or not (-MAX_AMOUNT <= event.imp_volatility <= MAX_AMOUNT
                    or event.imp_volatility != event.imp_volatility)
        ):  # fmt: skip
            return InvalidReason.VALUE_RANGE
        return None

    def describe(self, event: Candle, reason: InvalidReason, ceiling: int) -> str:
        """What was wrong with ``event`` and what would be right, in one line."""
        time = event.time
        if reason is InvalidReason.TIME_RANGE:
            return (
                f"time {time} is outside what a DXLink index can carry "
                f"({time_text(TIME_MIN)} to {time_text(TIME_MAX)}, §4.2)"
            )
        if reason is InvalidReason.FUTURE:
            return (
                f"time {time_text(time)} is later than now plus the tolerance "
                f"({time_text(ceiling)}): a candle cannot start in the future"
            )
        if reason is InvalidReason.BEFORE_FROM_TIME:
            return (
                f"time {time_text(time)} is a whole period or more before the subscription's "
                f"fromTime {time_text(self.from_ms or 0)}: the server was not asked for it"
            )
        if reason is InvalidReason.INDEX:
            expected = (
                index_of(time, event.sequence) if 0 <= event.sequence <= SEQUENCE_MASK else None
            )
            return (
                f"index {event.index}, time {time} and sequence {event.sequence} disagree; "
                f"the sequence is 0..{SEQUENCE_MASK} and the index "
                f"((time // 1000) << 32) | ((time % 1000) << 22) | sequence"
                + ("" if expected is None else f" = {expected}")
                + " (§4.2)"
            )
        if reason is InvalidReason.OFF_PERIOD:
            return (
                f"time {time_text(time)} is not on a {self.symbol.period_label} boundary "
                f"(midnight-aligned periods start at multiples of their length from 00:00 UTC, "
                "weeks on Monday, months and years on their first day; §4.3)"
            )
        o, h, low, c = event.open, event.high, event.low, event.close
        if reason is InvalidReason.OHLC:
            return (
                f"open {o:g}, high {h:g}, low {low:g}, close {c:g}: OHLC are all finite within "
                f"±{MAX_PRICE:g} with low <= high, or all NaN for an empty candle"
            )
        values = {"count": event.count} | {name: getattr(event, name) for name in _AMOUNTS}
        if reason is InvalidReason.NEGATIVE:
            name, value = next((n, v) for n, v in values.items() if v < 0)
            return f"{name} {value:g} is negative; volumes, open interest and count are 0 or more"
        shown = ", ".join(
            f"{n} {getattr(event, n):g}" for n in ("vwap", *_AMOUNTS, "imp_volatility")
        )
        return (
            f"{shown}, count {event.count}: vwap is NaN or a price within ±{MAX_PRICE:g}, "
            f"volumes, open interest and implied volatility NaN or within {MAX_AMOUNT:g}"
        )

    # ------------------------------------------------------------------ columns

    def check_columns(
        self,
        times: IntColumn,
        sequences: IntColumn,
        indexes: IntColumn | None,
        removals: npt.NDArray[np.bool_] | None,
        counts: IntColumn,
        doubles: npt.NDArray[np.float64],
        ceiling: int,
        *,
        judge_from_time: bool = True,
    ) -> npt.NDArray[np.uint8] | None:
        """:meth:`check` for many events at once: the reason code of each (a position in
        :data:`REASONS` plus one; 0 for valid), or ``None`` when every one is valid.

        Args:
            times, sequences: The events' ``time`` and ``sequence``.
            indexes: Their indexes, 0 where the wire had none; ``None``: derived throughout.
            removals: Which events are REMOVE_EVENTs (``None``: none).
            counts: Their ``count``.
            doubles: Their doubles, rows in ``DOUBLE_FIELDS`` order.
            ceiling: The latest valid time.
            judge_from_time: Apply the fromTime rule (not to stored rows at a warm start).
        """
        floor = self.floor if judge_from_time else TIME_MIN
        with np.errstate(invalid="ignore", over="ignore"):
            if (removals is None or not removals.any()) and self._all_valid(
                times, sequences, indexes, counts, doubles, floor, ceiling
            ):
                return None
            return self._codes(times, sequences, indexes, removals, counts, doubles, floor, ceiling)

    def _all_valid(
        self,
        times: IntColumn,
        sequences: IntColumn,
        indexes: IntColumn | None,
        counts: IntColumn,
        doubles: npt.NDArray[np.float64],
        floor: int,
        ceiling: int,
    ) -> bool:
        """Whether every event is valid, by whole-column reductions: the usual snapshot
        (finite prices and volumes, implied volatility and open interest NaN) passes with a
        dozen of them, fewer operations than an element-wise verdict. False may still be all
        valid (a NaN volume, say): :meth:`_codes` decides then."""
        if not len(times):
            return True
        p, a = MAX_PRICE, MAX_AMOUNT
        # Rows in DOUBLE_FIELDS order: open, high, low, close, volume, vwap, bid_volume,
        # ask_volume (0-7: all finite within ±p, and 4-7 not negative, is sufficient: a
        # negative vwap or a volume beyond p is left to _codes), imp_volatility,
        # open_interest (8-9: NaN or within ±a, and open interest not negative).
        return bool(
            floor <= times.min()
            and times.max() <= ceiling
            and not (sequences & ~SEQUENCE_MASK).any()
            and (indexes is None or np.array_equal(indexes, index_of(times, sequences)))
            and self._on_period(times).all()
            and np.abs(doubles[:8]).max() <= p  # a NaN fails the comparison
            and doubles[4:8].min() >= 0
            and (doubles[_NAMES["low"]] <= doubles[_NAMES["high"]]).all()
            and not (np.abs(doubles[8:]) > a).any()
            and not (doubles[_NAMES["open_interest"]] < 0).any()
            and counts.min() >= 0
        )

    def _codes(
        self,
        times: IntColumn,
        sequences: IntColumn,
        indexes: IntColumn | None,
        removals: npt.NDArray[np.bool_] | None,
        counts: IntColumn,
        doubles: npt.NDArray[np.float64],
        floor: int,
        ceiling: int,
    ) -> npt.NDArray[np.uint8] | None:
        p, a = MAX_PRICE, MAX_AMOUNT
        o, h, low, c = (doubles[_NAMES[name]] for name in ("open", "high", "low", "close"))
        v, vw, bv, av, iv, oi = (
            doubles[_NAMES[name]]
            for name in (
                "volume",
                "vwap",
                "bid_volume",
                "ask_volume",
                "imp_volatility",
                "open_interest",
            )
        )
        in_range = (times >= TIME_MIN) & (times <= TIME_MAX)
        key_ok = (times >= floor) & (times <= ceiling) & (sequences >= 0)
        key_ok &= sequences <= SEQUENCE_MASK
        if indexes is not None:
            key_ok &= (indexes == 0) | (indexes == index_of(times, sequences))
        on_period = self._on_period(times)
        ohlc = (-p <= low) & (low <= h) & (h <= p) & (-p <= o) & (o <= p) & (-p <= c) & (c <= p)
        ohlc |= np.isnan(o) & np.isnan(h) & np.isnan(low) & np.isnan(c)
        negative = counts < 0
        for x in (v, bv, av, oi):
            negative |= x < 0
        bounded = ~((v > a) | (bv > a) | (av > a) | (oi > a))
        bounded &= ((-p <= vw) & (vw <= p)) | np.isnan(vw)
        bounded &= ((-a <= iv) & (iv <= a)) | np.isnan(iv)
        values_ok = on_period & ohlc & ~negative & bounded
        if removals is not None:
            values_ok |= removals
        valid = in_range & key_ok & values_ok
        if valid.all():
            return None
        codes = np.zeros(len(times), np.uint8)
        # Highest priority last, so it overwrites: the first rule broken names the drop.
        for mask, reason in (
            (~values_ok & ~bounded, InvalidReason.VALUE_RANGE),
            (~values_ok & negative, InvalidReason.NEGATIVE),
            (~values_ok & ~ohlc, InvalidReason.OHLC),
            (~values_ok & ~on_period, InvalidReason.OFF_PERIOD),
            (~key_ok, InvalidReason.INDEX),
            (times < floor, InvalidReason.BEFORE_FROM_TIME),
            (times > ceiling, InvalidReason.FUTURE),
            (~in_range, InvalidReason.TIME_RANGE),
        ):
            codes[mask] = _CODE[reason]
        codes[valid] = 0
        return codes

    def _on_period(self, times: IntColumn) -> npt.NDArray[np.bool_]:
        if self._grain:
            aligned: npt.NDArray[np.bool_] = (times - self._offset) % self._grain == 0
            return aligned
        if self._calendar is not None:
            unit = "datetime64[M]" if self._calendar == "mo" else "datetime64[Y]"
            moments = times.astype("datetime64[ms]")
            starts = moments.astype(unit).astype("datetime64[ms]")
            same: npt.NDArray[np.bool_] = starts == moments
            return same
        return np.ones(len(times), dtype=bool)


class DropLog:
    """Counts drops per key and says which to log: the first of each key, then each time its
    count reaches a power of ten (10, 100, 1,000, ...). Keys are the caller's to bound."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[Any, int] = {}

    def add(self, key: Any, events: int = 1) -> int | None:
        """Count ``events`` drops under ``key``; the new total when a line is due, else None."""
        before = self._counts.get(key, 0)
        after = before + events
        self._counts[key] = after
        if before == 0 or len(str(after)) > len(str(before)):
            return after
        return None
