"""A deterministic market: seeded trades for any symbol, aggregated into candles of any period.

Every symbol trades around the clock. Its trades are drawn top-down (see ``generator.py``): a
week's aggregate from a seeded price path, split into days, hours, minutes and seconds. A
candle of any time-based period (``s``, ``m``, ``h``, ``d``, ``w`` and multiples, e.g. 5m, 2h,
3d) is the exact aggregate (``bars.combine``) of the seconds it covers, so every period is built
from the same trades and a 5m candle *equals* the aggregate of its five 1m candles.

Time: a second's trades become visible once the second is over (``visible_end``). So with the
clock exactly on a minute boundary the previous minute is complete and the next has not begun.

Optional extras (``MarketConfig``):

* quiet periods: a sub-period (day, hour, minute, second) with no trades, hence no candle;
* late corrections: at a seeded moment within an hour, a minute 1-10 minutes back is revised
  (extra volume at its close price) or busted (all its trades cancelled: the candle is removed).
  Every candle containing that minute, of every period, changes with it.

Determinism: everything is a pure function of ``(seed, symbol, time)``; nothing depends on the
order of queries, so a restarted simulator serves the same history.

No I/O, no clock: every query takes ``now_ms``.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from random import Random
from typing import NamedTuple

import numpy as np

from pipeline.simulator.bars import Bar, combine
from pipeline.simulator.generator import FIELDS, Rows, mix64, rows_to_bars, split_rows, uniforms

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "MINUTE_MS",
    "SECOND_MS",
    "WEEK_MS",
    "WEEK_ORIGIN_MS",
    "Correction",
    "Market",
    "MarketConfig",
    "Period",
    "visible_end",
]

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
# Weeks start on Monday 00:00 UTC, as tastytrade's weekly candles do (§4.3); 1970-01-05 is the
# first Monday after the epoch.
WEEK_ORIGIN_MS = 4 * DAY_MS

# The tree the trades are drawn on: week > 7 days > 24 hours > 60 minutes > 60 seconds.
_WEEK, _DAY, _HOUR, _MINUTE, _SECOND = range(5)
_LEVEL_MS = (WEEK_MS, DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS)
_UNIT_MS = {"s": SECOND_MS, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": WEEK_MS}

# Entries kept in the small caches (week bars, corrections) before they start over.
_MAX_SMALL_CACHE = 50_000
# Weeks drawn together (and cached together) when week bars are needed, and how many such
# blocks (4.6 KB each) to keep before the cache starts over.
_WEEK_BLOCK = 64
_MAX_WEEK_BLOCKS = 4096
# Candles drawn in the first step when walking back through a history, and at most per step.
_CHUNK_CANDLES = 512
_MAX_CHUNK_CANDLES = 8192
_MIN_CHUNK_CANDLES = 64
# Most nodes of one level per symbol that ``Market.prepare`` draws ahead (48 hours of minutes),
# and most splits per ``split_rows`` call there (its temporaries grow with slots**2 per row:
# ~30 KB for a minute's 60 seconds).
_PREPARE_NODES = 48
_PREPARE_BATCH = 1024
# Octaves of the weekly price path (value noise). 2**6 weeks is the longest swing.
_OCTAVES = 7
# Odd multiplier spreading consecutive cells and weeks over the 64-bit hash input.
_LATTICE_STEP = np.uint64(0x9E3779B97F4A7C15)
_TRADES = Bar._fields.index("trades")


def visible_end(now_ms: int) -> int:
    """The end of the trades visible at ``now_ms``: the start of the current second."""
    return now_ms - now_ms % SECOND_MS


@dataclass(frozen=True)
class Period:
    """A fixed-length candle period aligned to ``offset_ms`` (0 = the epoch).

    ``Period.of(5, "m")`` is 5 minutes; weekly periods start on Monday 00:00 UTC.
    """

    length_ms: int
    offset_ms: int = 0

    def __post_init__(self) -> None:
        if self.length_ms <= 0 or self.length_ms % SECOND_MS:
            raise ValueError(
                f"a simulated period must be a positive whole number of seconds, got "
                f"{self.length_ms} ms"
            )

    @classmethod
    def of(cls, value: float, unit: str) -> Period:
        """The period ``value`` x ``unit`` for unit s, m, h, d or w.

        Raises:
            ValueError: another unit (ticks, volume, price, months... are not simulated) or a
                length that is not a whole number of seconds.
        """
        unit_ms = _UNIT_MS.get(unit)
        if unit_ms is None:
            raise ValueError(
                f"period unit {unit!r} is not simulated; use one of s, m, h, d, w (e.g. 5m, 1h, 1d)"
            )
        length = value * unit_ms
        if length != int(length):
            raise ValueError(f"period {value:g}{unit} is not a whole number of seconds")
        return cls(int(length), WEEK_ORIGIN_MS if unit == "w" else 0)

    def start_of(self, time_ms: int) -> int:
        """The start of the candle that contains ``time_ms``."""
        return time_ms - (time_ms - self.offset_ms) % self.length_ms


class Correction(NamedTuple):
    """A late correction of one past minute of a symbol's trades."""

    symbol: str
    published_ms: int
    """When the correction happens (becomes visible)."""
    minute_ms: int
    """Start of the corrected minute."""
    extra_volume: int
    """Shares added at the minute's close price; 0 means the minute's trades are busted."""

    @property
    def removes(self) -> bool:
        """True when the minute's trades are cancelled (its 1m candle is removed)."""
        return self.extra_volume == 0


@dataclass(frozen=True)
class MarketConfig:
    """What the market looks like; the same config always gives the same trades.

    Attributes:
        seed: Seeds every symbol's trades.
        quiet_fraction: Probability that a day, hour, minute or second of a symbol is forced
            quiet (no trades, so no candle), in [0, 1).
        correction_rate: Probability per symbol and hour of one late correction, in [0, 1].
        correction_remove_fraction: Share of corrections that bust a minute instead of
            revising it.
        symbols: The only symbols that trade; None means every symbol does. Others are silent,
            like unknown symbols on tastytrade (§6.2).
        history_start_ms: No trades before this time (rounded down to 00:00 UTC); None means
            the market has always traded.
        cache_size: How many splits (a node's children) to keep; a split of 60 children is
            a 60 x 9 int64 array, about 4.4 KB. The default (about 70 MB when full) keeps the
            history of hundreds of series of 1m candles once drawn: served again, it is read,
            not drawn again (a real server serves stored history).
    """

    seed: int = 1
    quiet_fraction: float = 0.0
    correction_rate: float = 0.0
    correction_remove_fraction: float = 0.3
    symbols: frozenset[str] | None = None
    history_start_ms: int | None = None
    cache_size: int = 16_384

    def __post_init__(self) -> None:
        if self.history_start_ms is not None:
            # Day-aligned, so that only a week can straddle the start of history.
            aligned = self.history_start_ms - self.history_start_ms % DAY_MS
            object.__setattr__(self, "history_start_ms", aligned)
        if not 0.0 <= self.quiet_fraction < 1.0:
            raise ValueError(f"quiet_fraction must be in [0, 1), got {self.quiet_fraction}")
        for name in ("correction_rate", "correction_remove_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.cache_size < 16:
            raise ValueError(f"cache_size must be at least 16 splits, got {self.cache_size}")


class _Profile(NamedTuple):
    base_price: int  # ticks
    trades_per_second: float
    shares_per_trade: int
    weekly_volatility: float


def _node_index(level: int, time_ms: int) -> int:
    if level == _WEEK:
        return (time_ms - WEEK_ORIGIN_MS) // WEEK_MS
    return time_ms // _LEVEL_MS[level]


def _node_start(level: int, index: int) -> int:
    if level == _WEEK:
        return WEEK_ORIGIN_MS + index * WEEK_MS
    return index * _LEVEL_MS[level]


def _aligned_runs(start_ms: int, end_ms: int) -> Iterator[tuple[int, int, int]]:
    """Cover ``[start_ms, end_ms)`` with the fewest whole tree nodes, in time order, given as
    runs ``(level, first_ms, stop_ms)`` of consecutive nodes of one level.

    A run at a level lasts until the next boundary of the level above (where a coarser node
    may start: every coarser boundary is one of those) or until no node of the level fits.
    """
    time_ms = start_ms
    while time_ms < end_ms:
        for level in range(_SECOND + 1):
            length = _LEVEL_MS[level]
            if _node_start(level, _node_index(level, time_ms)) != time_ms:
                continue
            if time_ms + length > end_ms:
                continue
            stop = end_ms
            if level > _WEEK:
                stop = min(stop, _node_start(level - 1, _node_index(level - 1, time_ms) + 1))
            stop = time_ms + (stop - time_ms) // length * length
            yield level, time_ms, stop
            time_ms = stop
            break
        else:
            raise ValueError(f"range [{start_ms}, {end_ms}) is not aligned to whole seconds")


def _level_of(period: Period) -> int:
    """The coarsest tree level whose nodes tile ``period``'s candles."""
    for level in range(_SECOND + 1):
        step = _LEVEL_MS[level]
        origin = WEEK_ORIGIN_MS if level == _WEEK else 0
        if period.length_ms % step == 0 and (period.offset_ms - origin) % step == 0:
            return level
    raise AssertionError("unreachable: every Period is a whole number of seconds")


class Market:
    """Seeded trades for any symbol; candles of any fixed period, as visible at a given time.

    Args:
        config: The market's parameters; ``MarketConfig()`` for the defaults.
    """

    def __init__(self, config: MarketConfig | None = None) -> None:
        self.config = config or MarketConfig()
        """The parameters this market was built with."""
        self._splits: OrderedDict[tuple[str, int, int], Rows] = OrderedDict()
        self._profiles: dict[str, _Profile] = {}
        self._week_blocks: dict[tuple[str, int], Rows] = {}
        self._hasher = hashlib.blake2b(str(self.config.seed).encode() + b"|", digest_size=8)
        self._corrections: dict[tuple[str, int], Correction | None] = {}
        self._prepared: tuple[int, dict[str, int]] = (-1, {})  # minute, symbol -> oldest
        self._round_now = -1
        self._round_bars: dict[tuple[str, Period, int, int], tuple[tuple[int, Bar], ...]] = {}
        self.splits_drawn = 0
        """How many splits were computed (cache misses), for benchmarks."""

    # -- public queries -----------------------------------------------------------------------

    def trades(self, symbol: str) -> bool:
        """True when ``symbol`` has trades in this market."""
        return self.config.symbols is None or symbol in self.config.symbols

    def bar(self, symbol: str, start_ms: int, end_ms: int, now_ms: int) -> Bar | None:
        """The aggregate of ``symbol``'s trades in ``[start_ms, end_ms)`` visible at ``now_ms``.

        Corrections published by ``now_ms`` are applied. None when there were no trades.
        """
        if not self.trades(symbol):
            return None
        end = min(end_ms, visible_end(now_ms))
        runs = [
            self._level_bars(symbol, level, first, stop, now_ms)
            for level, first, stop in _aligned_runs(start_ms, end)
        ]
        if not runs:
            return None
        rows = runs[0] if len(runs) == 1 else np.concatenate(runs)
        rows = rows[rows[:, _TRADES] > 0]
        if not len(rows):
            return None
        # ``combine`` on rows (exact in int64), without a Bar per node: this runs for every
        # live candle of every publish round.
        return _new_bar(
            [
                int(rows[0, 0]),
                int(rows[:, 1].max()),
                int(rows[:, 2].min()),
                int(rows[-1, 3]),
                *rows[:, _TRADES:].sum(axis=0).tolist(),
            ]
        )

    def prepare(self, oldest: Mapping[str, int], now_ms: int) -> None:
        """Draw, in few batches per tree level, what serving several symbols at ``now_ms``
        takes: the splits down to each symbol's current second, and down to minute bars
        back to ``oldest[symbol]`` (a snapshot's ``fromTime``; at most ``_PREPARE_NODES``
        nodes of a level per symbol, at most half the cache in all, newest first,
        in batches of ``_PREPARE_BATCH`` splits).

        Only a cache warm-up: queries give the same results without it. Drawing 1,000
        symbols' new minutes one symbol at a time costs 1,000 ``split_rows`` calls.
        """
        newest = visible_end(now_ms) - 1  # in the newest visible second
        minute = _node_index(_MINUTE, newest)
        done_minute, done = self._prepared
        if minute == done_minute and all(
            done.get(symbol, newest) <= since for symbol, since in oldest.items()
        ):
            return  # the same minute again (every publish round until the next one)
        self._prepared = (minute, dict(oldest) if minute != done_minute else {**done, **oldest})
        cache = self._splits
        for level in range(_WEEK, _MINUTE + 1):
            last = _node_index(level, newest)
            nodes: list[tuple[str, int]] = []
            for symbol, since in oldest.items():
                if not self.trades(symbol):
                    continue
                first = last
                if level < _MINUTE:  # minute bars back to ``since``; seconds of now only
                    first = max(min(_node_index(level, since), last), last - _PREPARE_NODES)
                nodes.extend(
                    (symbol, index)
                    for index in range(first, last + 1)
                    if (symbol, level, index) not in cache
                )
            # Newest first, and no more than half the cache: drawing what would be
            # evicted before it is served would only cost time.
            nodes.sort(key=lambda node: -node[1])
            del nodes[self.config.cache_size // 2 :]
            for start in range(0, len(nodes), _PREPARE_BATCH):  # bounded numpy temporaries
                batch = nodes[start : start + _PREPARE_BATCH]
                parents = np.concatenate(
                    [self._level_rows(symbol, level, index, index) for symbol, index in batch]
                )
                self._draw_splits(level, batch, parents)

    def prepared(self, symbol: str, now_ms: int) -> bool:
        """Whether the seconds of ``symbol``'s current minute at ``now_ms`` are drawn."""
        minute = _node_index(_MINUTE, visible_end(now_ms) - 1)
        return not self.trades(symbol) or (symbol, _MINUTE, minute) in self._splits

    def candle_bars(
        self, symbol: str, period: Period, from_ms: int, to_ms: int, now_ms: int
    ) -> list[tuple[int, Bar]]:
        """``(time, bar)`` of the candles starting in ``[from_ms, to_ms)``, oldest first.

        The current candle is included with what has traded so far; quiet periods are absent.
        """
        times, rows, live = self._candles(symbol, period, from_ms, to_ms, now_ms)
        # C-level loops only (no Python frame per candle): this runs for every candle served.
        result = list(zip(times, map(_new_bar, rows.tolist()), strict=True))
        if live is not None:
            result.append(live)
        return result

    def round_bars(
        self, symbol: str, period: Period, from_ms: int, to_ms: int, now_ms: int
    ) -> tuple[tuple[int, Bar], ...]:
        """``candle_bars``, remembered until ``now_ms`` changes: every connection's publish
        round at one ``now_ms`` asks for the same live candles, and gets them computed once."""
        if now_ms != self._round_now:
            self._round_now = now_ms
            self._round_bars.clear()
        key = (symbol, period, from_ms, to_ms)
        found = self._round_bars.get(key)
        if found is None:
            found = tuple(self.candle_bars(symbol, period, from_ms, to_ms, now_ms))
            if len(self._round_bars) < _MAX_SMALL_CACHE:
                self._round_bars[key] = found
        return found

    def fill_round_bars(
        self, symbols: Collection[str], period: Period, from_ms: int, now_ms: int
    ) -> None:
        """Compute ``round_bars(symbol, period, from_ms, now_ms + 1, now_ms)`` for many
        symbols at once, with one aggregation over all their rows instead of one per symbol.

        Only for the common live update: the range holds nothing but the live candle, and
        the market has no corrections and no start of history inside it; otherwise (or for
        symbols that do not trade) nothing is done and ``round_bars`` computes on its own.
        """
        end = visible_end(now_ms)
        live = period.start_of(end - 1)
        history_start = self.config.history_start_ms
        first = period.start_of(from_ms)
        if first < from_ms:
            first += period.length_ms
        if (
            first != live
            or live + period.length_ms <= end  # complete: not a live candle
            or self.config.correction_rate
            or (history_start is not None and history_start > live)
        ):
            return
        if now_ms != self._round_now:
            self._round_now = now_ms
            self._round_bars.clear()
        names = [s for s in symbols if self.trades(s)]
        runs = list(_aligned_runs(live, end))
        if not names or not runs:
            return
        parts = [
            np.stack(
                [
                    self._level_rows(
                        symbol, level, _node_index(level, start), _node_index(level, stop - 1)
                    )
                    for symbol in names
                ]
            )
            for level, start, stop in runs
        ]
        totals = _combine_rows(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))
        key_end = now_ms + 1
        for symbol, row in zip(names, totals.tolist(), strict=True):
            found = ((live, _new_bar(row)),) if row[_TRADES] else ()
            if len(self._round_bars) < _MAX_SMALL_CACHE:
                self._round_bars[(symbol, period, from_ms, key_end)] = found

    def candle_rows(
        self, symbol: str, period: Period, from_ms: int, to_ms: int, now_ms: int
    ) -> tuple[list[int], Rows]:
        """``candle_bars`` as columns: the candle times and their bar rows (``Bar`` order).

        Every row has trades (quiet periods are absent); snapshots are served from these
        without a ``Bar`` per candle.
        """
        times, rows, live = self._candles(symbol, period, from_ms, to_ms, now_ms)
        if live is not None:
            times.append(live[0])
            rows = np.concatenate((rows, np.array([live[1]], dtype=np.int64)))
        return times, rows

    def _candles(
        self, symbol: str, period: Period, from_ms: int, to_ms: int, now_ms: int
    ) -> tuple[list[int], Rows, tuple[int, Bar] | None]:
        """The complete candles (times, rows) in ``[from_ms, to_ms)`` and the live one, if
        it is in the range and has traded (a live update usually asks for it alone)."""
        if not self.trades(symbol):
            return [], _NO_ROWS, None
        history_start = self.config.history_start_ms
        if history_start is not None and history_start > from_ms:
            from_ms = period.start_of(history_start)  # nothing traded before
        length = period.length_ms
        first = period.start_of(from_ms)
        if first < from_ms:
            first += length
        end = min(to_ms, visible_end(now_ms))
        if first >= end:
            return [], _NO_ROWS, None
        live = period.start_of(end - 1)
        complete_end = live if live + length > visible_end(now_ms) else live + length
        times, rows = self._complete_candles(
            symbol, period, first, max(first, complete_end), now_ms
        )
        if complete_end <= live:
            bar = self.bar(symbol, live, live + length, now_ms)
            if bar is not None:
                return times, rows, (live, bar)
        return times, rows, None

    def latest_bars(
        self, symbol: str, period: Period, from_ms: int, now_ms: int, limit: int
    ) -> tuple[list[tuple[int, Bar]], bool]:
        """The newest ``limit`` candles starting at or after ``from_ms``, newest first.

        Returns:
            The candles, and whether older candles at or after ``from_ms`` were left out.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1 candle, got {limit}")
        result: list[tuple[int, Bar]] = []
        # limit + 1 candles, plus the slot of a live candle that may not have started.
        blocks = self._newest_blocks(symbol, period, from_ms, now_ms, limit + 2, limit + 1)
        for times, rows in blocks:
            result.extend(zip(times, map(_new_bar, rows.tolist()), strict=True))
            if len(result) > limit:
                return result[:limit], True
        return result, False

    def iter_latest(
        self, symbol: str, period: Period, from_ms: int, now_ms: int
    ) -> Iterator[tuple[int, Bar]]:
        """``(time, bar)`` of the candles starting at or after ``from_ms``, newest first.

        Lazy: candles are drawn in chunks as the caller consumes them, so a long history
        can be served piece by piece.
        """
        for times, rows in self.latest_blocks(symbol, period, from_ms, now_ms):
            yield from zip(times, map(_new_bar, rows.tolist()), strict=True)

    def latest_blocks(
        self, symbol: str, period: Period, from_ms: int, now_ms: int
    ) -> Iterator[tuple[list[int], Rows]]:
        """``iter_latest`` as columns: blocks of candle times and bar rows, newest first
        throughout (within a block too), drawn lazily as the caller consumes them."""
        return self._newest_blocks(symbol, period, from_ms, now_ms, _CHUNK_CANDLES)

    def _newest_blocks(
        self,
        symbol: str,
        period: Period,
        from_ms: int,
        now_ms: int,
        first_chunk: int,
        wanted: int | None = None,
    ) -> Iterator[tuple[list[int], Rows]]:
        """The candles starting at or after ``from_ms`` in blocks, newest first throughout.

        The first block spans ``first_chunk`` candle periods (all of them when the range is at
        most ``_MAX_CHUNK_CANDLES``), each next one twice the last: a long history is drawn in
        a few large batches (``split_rows`` is fastest on many splits at once). Given how many
        candles are ``wanted``, the next span is sized from how many candles the last one held
        (quiet periods) instead.
        """
        if not self.trades(symbol):
            return
        length = period.length_ms
        chunk_end = visible_end(now_ms) + length  # includes the live candle
        history_start = self.config.history_start_ms
        if history_start is not None and history_start > from_ms:
            from_ms = period.start_of(history_start)
        chunk = first_chunk
        if (chunk_end - from_ms) // length <= _MAX_CHUNK_CANDLES:
            chunk = max(chunk, (chunk_end - from_ms) // length + 1)
        while chunk_end > from_ms:
            first = period.start_of(max(from_ms, chunk_end - chunk * length))
            if first < from_ms:
                first += length
            if first >= chunk_end:
                return
            times, rows = self.candle_rows(symbol, period, first, chunk_end, now_ms)
            times.reverse()
            yield times, rows[::-1]
            spanned = (chunk_end - first) // length
            chunk_end = first
            chunk = 2 * chunk
            if wanted is not None:
                wanted -= len(times)
                density = max(len(times), 1) / spanned
                chunk = max(_MIN_CHUNK_CANDLES, math.ceil(1.2 * wanted / density))
            chunk = min(chunk, _MAX_CHUNK_CANDLES)

    def _complete_candles(
        self, symbol: str, period: Period, first_ms: int, end_ms: int, now_ms: int
    ) -> tuple[list[int], Rows]:
        """Times and rows of the candles starting in ``[first_ms, end_ms)`` (aligned), all
        complete at ``now_ms``; quiet periods left out."""
        if end_ms <= first_ms:
            return [], _NO_ROWS
        level = _level_of(period)
        per_candle = period.length_ms // _LEVEL_MS[level]
        rows = self._level_bars(symbol, level, first_ms, end_ms, now_ms)
        if per_candle > 1:
            rows = _combine_rows(rows.reshape(-1, per_candle, FIELDS))
        length = period.length_ms
        trading = rows[:, _TRADES] > 0
        if trading.all():
            return list(range(first_ms, first_ms + len(rows) * length, length)), rows
        times = np.arange(first_ms, first_ms + len(rows) * length, length)[trading].tolist()
        return times, rows[trading]

    def _level_bars(self, symbol: str, level: int, start_ms: int, end_ms: int, now_ms: int) -> Rows:
        """Bar rows of the consecutive ``level`` nodes covering ``[start_ms, end_ms)``, with
        the corrections visible at ``now_ms`` applied and nothing before history's start."""
        base = _node_index(level, start_ms)
        rows = self._level_rows(symbol, level, base, _node_index(level, end_ms - 1))
        changed: list[int] = []
        history_start = self.config.history_start_ms
        if history_start is not None and start_ms < history_start:
            changed.extend(
                node
                for node in range(base, base + len(rows))
                if _node_start(level, node) < history_start
            )
        for fix in self._corrections_within(symbol, start_ms, end_ms, now_ms):
            first = _node_index(level, max(start_ms, fix.minute_ms))
            stop = _node_index(level, min(end_ms, fix.minute_ms + MINUTE_MS) - 1)
            changed.extend(range(first, stop + 1))
        if changed:
            rows = rows.copy()
            for node in changed:
                bar = self._node_bar(symbol, level, node, now_ms)
                rows[node - base] = bar if bar is not None else 0
        return rows

    def corrections_published(self, symbol: str, after_ms: int, upto_ms: int) -> list[Correction]:
        """The corrections of ``symbol`` that become visible in ``(after_ms, upto_ms]``."""
        if not self.config.correction_rate or not self.trades(symbol) or upto_ms <= after_ms:
            return []
        found = []
        for hour in range(after_ms // HOUR_MS, upto_ms // HOUR_MS + 1):
            fix = self._hour_correction(symbol, hour)
            if fix is not None and after_ms < fix.published_ms <= upto_ms:
                found.append(fix)
        return found

    # -- the tree -------------------------------------------------------------------------------

    def _seed(self, *parts: object) -> int:
        """A 64-bit seed for ``parts``: stable across processes (unlike ``hash()``)."""
        hasher = self._hasher.copy()
        hasher.update("|".join(map(str, parts)).encode())
        return int.from_bytes(hasher.digest(), "little")

    def _rng(self, *parts: object) -> Random:
        return Random(self._seed(*parts))

    def _profile(self, symbol: str) -> _Profile:
        profile = self._profiles.get(symbol)
        if profile is None:
            rng = self._rng("profile", symbol)
            profile = _Profile(
                base_price=rng.randint(1_000, 50_000),
                trades_per_second=0.2 + rng.random() * 2.8,
                shares_per_trade=20 + rng.randint(0, 480),
                weekly_volatility=0.02 + rng.random() * 0.04,
            )
            self._profiles[symbol] = profile
        return profile

    def _level_rows(self, symbol: str, level: int, first: int, last: int) -> Rows:
        """Rows of the ``level`` nodes ``first..last`` as drawn, before corrections."""
        if level == _WEEK:
            return self._week_rows(symbol, first, last)
        parent_first = _node_index(level - 1, _node_start(level, first))
        parent_last = _node_index(level - 1, _node_start(level, last))
        skip = (_node_start(level, first) - _node_start(level - 1, parent_first)) // _LEVEL_MS[
            level
        ]
        splits = self._split_range(symbol, level - 1, parent_first, parent_last)
        rows = splits[0] if len(splits) == 1 else np.concatenate(splits)
        return rows[skip : skip + last - first + 1]

    def _split_range(self, symbol: str, level: int, first: int, last: int) -> list[Rows]:
        """The children (rows) of the ``level`` nodes ``first..last``; missing splits are
        drawn together in one batch."""
        cache = self._splits
        found: list[Rows | None] = []
        missing: list[int] = []
        for index in range(first, last + 1):
            key = (symbol, level, index)
            rows = cache.get(key)
            if rows is not None:
                cache.move_to_end(key)
            else:
                missing.append(index)
            found.append(rows)
        if missing:
            low = missing[0]
            parents = self._level_rows(symbol, level, low, missing[-1])
            drawn = self._draw_splits(
                level, [(symbol, index) for index in missing], parents[[i - low for i in missing]]
            )
            for index, rows in zip(missing, drawn, strict=True):
                found[index - first] = rows
        return [rows for rows in found if rows is not None]

    def _draw_splits(self, level: int, nodes: list[tuple[str, int]], parents: Rows) -> list[Rows]:
        """Draw the children of the ``level`` nodes ``(symbol, index)`` whose rows are
        ``parents``, all in one ``split_rows`` batch (a row's children depend only on its
        parent and seed, not on the batch), and cache them."""
        slots = _LEVEL_MS[level] // _LEVEL_MS[level + 1]
        trading = [at for at in range(len(nodes)) if parents[at, _TRADES]]
        seeds = np.array(
            [self._seed("split", nodes[at][0], level, nodes[at][1]) for at in trading],
            dtype=np.uint64,
        )
        drawn = split_rows(
            parents[trading], slots, seeds, quiet_fraction=self.config.quiet_fraction
        )
        splits = dict(zip(trading, drawn, strict=True))
        silent = np.zeros((slots, FIELDS), dtype=np.int64)
        silent.flags.writeable = False
        result = []
        cache = self._splits
        for at, (symbol, index) in enumerate(nodes):
            rows = splits.get(at, silent)
            rows.flags.writeable = False  # served as views: nobody may change the cache
            cache[(symbol, level, index)] = rows
            result.append(rows)
        self.splits_drawn += len(nodes)
        while len(cache) > self.config.cache_size:
            cache.popitem(last=False)
        return result

    def _week_rows(self, symbol: str, first: int, last: int) -> Rows:
        """Rows of the weeks ``first..last``, cached in blocks of ``_WEEK_BLOCK``; missing
        blocks are drawn together."""
        blocks = range(first // _WEEK_BLOCK, last // _WEEK_BLOCK + 1)
        cache = self._week_blocks
        found = [cache.get((symbol, block)) for block in blocks]
        missing = [block for block, rows in zip(blocks, found, strict=True) if rows is None]
        if missing:
            drawn = self._draw_weeks(
                symbol, missing[0] * _WEEK_BLOCK, (missing[-1] + 1 - missing[0]) * _WEEK_BLOCK
            )
            if len(cache) + len(missing) > _MAX_WEEK_BLOCKS:
                cache.clear()
            for block in missing:
                start = (block - missing[0]) * _WEEK_BLOCK
                found[block - blocks[0]] = cache[(symbol, block)] = drawn[
                    start : start + _WEEK_BLOCK
                ]
        present = [rows for rows in found if rows is not None]
        rows = present[0] if len(present) == 1 else np.concatenate(present)
        start = first - blocks[0] * _WEEK_BLOCK
        return rows[start : start + last - first + 1]

    def _anchors(self, symbol: str, weeks: Rows) -> Rows:
        """The price (ticks) at the start of each week: multi-octave value noise in log price.

        Each octave's lattice value is a hash of ``(seed, symbol, octave, cell)`` in [-1, 1).
        """
        profile = self._profile(symbol)
        offset = np.zeros(len(weeks))
        for octave in range(_OCTAVES):
            cells, within = np.divmod(weeks, 1 << octave)
            base = np.uint64(self._seed("anchor", symbol, octave))
            with np.errstate(over="ignore"):
                keys = base + np.stack([cells, cells + 1]).astype(np.uint64) * _LATTICE_STEP
            left, right = mix64(keys).astype(np.float64) / 2**63 - 1.0
            blend = left + (right - left) * within / (1 << octave)
            offset += profile.weekly_volatility * 0.7 * 2 ** (octave / 2) * blend
        prices: Rows = np.maximum(1, np.rint(profile.base_price * np.exp(offset))).astype(np.int64)
        return prices

    def _draw_weeks(self, symbol: str, first: int, count: int) -> Rows:
        """Rows of ``count`` weeks from ``first``: each from one anchor price to the next, with
        seeded range and size."""
        profile = self._profile(symbol)
        weeks = np.arange(first, first + count + 1, dtype=np.int64)
        anchors = self._anchors(symbol, weeks)
        with np.errstate(over="ignore"):
            keys = (
                np.uint64(self._seed("week", symbol)) + weeks[:-1].astype(np.uint64) * _LATTICE_STEP
            )
        u = uniforms(mix64(keys), 7).T
        open_, close = anchors[:-1], anchors[1:]
        reach = np.maximum(1.0, open_ * profile.weekly_volatility * 0.5)
        # Exponential draws for how far the week reaches beyond its open and close.
        high = np.maximum(open_, close) + (-np.log1p(-u[0]) * reach).astype(np.int64)
        low = np.maximum(1, np.minimum(open_, close) - (-np.log1p(-u[1]) * reach).astype(np.int64))
        trades = profile.trades_per_second * WEEK_MS / 1000 * (0.7 + 0.6 * u[2])
        count_ = np.maximum(4, np.rint(trades)).astype(np.int64)
        shares = count_ * profile.shares_per_trade * (0.8 + 0.4 * u[3])
        volume = np.maximum(2 * count_, np.rint(shares)).astype(np.int64)
        spread = high - low
        # Near the average of the path's four key prices, where the trades mostly happen.
        vwap = (open_ + high + low + close) / 4 + (u[4] - 0.5) * 0.1 * spread
        turnover = np.rint(volume * vwap).astype(np.int64)
        turnover = np.minimum(volume * high - spread, np.maximum(volume * low + spread, turnover))
        bid = np.rint(volume * (0.30 + 0.15 * u[5])).astype(np.int64)
        ask = np.rint(volume * (0.30 + 0.15 * u[6])).astype(np.int64)
        return np.stack([open_, high, low, close, count_, volume, turnover, bid, ask], axis=1)

    def _generated(self, symbol: str, level: int, index: int) -> Bar | None:
        """The node's aggregate as drawn, before corrections."""
        return rows_to_bars(self._level_rows(symbol, level, index, index))[0]

    def _children(self, symbol: str, level: int, index: int) -> Rows:
        return self._split_range(symbol, level, index, index)[0]

    # -- corrections -----------------------------------------------------------------------------

    def _hour_correction(self, symbol: str, hour: int) -> Correction | None:
        key = (symbol, hour)
        if key in self._corrections:
            return self._corrections[key]
        rng = self._rng("correction", symbol, hour)
        fix = None
        if rng.random() < self.config.correction_rate:
            published = hour * HOUR_MS + rng.randrange(3600) * SECOND_MS
            minute = (published // MINUTE_MS - rng.randint(1, 10)) * MINUTE_MS
            removes = rng.random() < self.config.correction_remove_fraction
            extra = 0 if removes else self._profile(symbol).shares_per_trade * rng.randint(1, 5)
            fix = Correction(symbol, published, minute, extra)
        if len(self._corrections) >= _MAX_SMALL_CACHE:
            self._corrections.clear()
        self._corrections[key] = fix
        return fix

    def _corrections_within(
        self, symbol: str, start_ms: int, end_ms: int, now_ms: int
    ) -> list[Correction]:
        """Corrections visible at ``now_ms`` of minutes overlapping ``[start_ms, end_ms)``."""
        if not self.config.correction_rate:
            return []
        # A correction is published 1-11 minutes after the minute it corrects.
        last_hour = min(now_ms, end_ms + 11 * MINUTE_MS) // HOUR_MS
        found = []
        for hour in range(start_ms // HOUR_MS, last_hour + 1):
            fix = self._hour_correction(symbol, hour)
            if (
                fix is not None
                and fix.published_ms <= now_ms
                and fix.minute_ms < end_ms
                and fix.minute_ms + MINUTE_MS > start_ms
            ):
                found.append(fix)
        return found

    def _node_bar(self, symbol: str, level: int, index: int, now_ms: int) -> Bar | None:
        """The node's aggregate with the corrections visible at ``now_ms`` applied."""
        generated = self._generated(symbol, level, index)
        start = _node_start(level, index)
        if generated is None:
            return None  # nothing traded, so nothing to correct
        history_start = self.config.history_start_ms
        before_history = history_start is not None and start < history_start
        if before_history and start + _LEVEL_MS[level] <= (history_start or 0):
            return None
        fixes = self._corrections_within(symbol, start, start + _LEVEL_MS[level], now_ms)
        if not fixes and not before_history:
            return generated
        if level < _MINUTE:
            first = _node_index(level + 1, start)
            slots = _LEVEL_MS[level] // _LEVEL_MS[level + 1]
            return combine(
                self._node_bar(symbol, level + 1, first + i, now_ms) for i in range(slots)
            )
        if level == _MINUTE:
            return _apply(generated, fixes)
        # A second: a bust removes it; extra volume lands on the minute's last trading second,
        # whose close is the minute's close.
        if any(fix.removes for fix in fixes):
            return None
        seconds = self._children(symbol, _MINUTE, start // MINUTE_MS)
        last_active = int(np.flatnonzero(seconds[:, _TRADES])[-1])
        return _apply(generated, fixes) if (start // SECOND_MS) % 60 == last_active else generated


_new_bar = functools.partial(tuple.__new__, Bar)  # a Bar from a row, skipping Bar.__new__
_NO_ROWS: Rows = np.zeros((0, FIELDS), dtype=np.int64)


def _combine_rows(groups: Rows) -> Rows:
    """``combine`` of every group of an ``(n, k, FIELDS)`` array of consecutive bar rows
    (rows of 0 trades are quiet): an ``(n, FIELDS)`` array, exact in int64."""
    trading = groups[:, :, _TRADES] > 0
    first = np.argmax(trading, axis=1)[:, None]
    last = (groups.shape[1] - 1 - np.argmax(trading[:, ::-1], axis=1))[:, None]
    out = np.zeros((len(groups), FIELDS), dtype=np.int64)
    out[:, 0] = np.take_along_axis(groups[:, :, 0], first, 1)[:, 0]
    out[:, 1] = np.where(trading, groups[:, :, 1], np.iinfo(np.int64).min).max(axis=1)
    out[:, 2] = np.where(trading, groups[:, :, 2], np.iinfo(np.int64).max).min(axis=1)
    out[:, 3] = np.take_along_axis(groups[:, :, 3], last, 1)[:, 0]
    out[:, _TRADES:] = groups[:, :, _TRADES:].sum(axis=1)
    out[~trading.any(axis=1)] = 0
    return out


def _apply(bar: Bar | None, fixes: Collection[Correction]) -> Bar | None:
    for fix in sorted(fixes, key=lambda f: f.published_ms):
        if bar is None:
            break
        if fix.removes:
            bar = None
        else:
            extra = fix.extra_volume
            bar = bar._replace(volume=bar.volume + extra, turnover=bar.turnover + extra * bar.close)
    return bar
