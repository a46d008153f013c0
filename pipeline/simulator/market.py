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

Parts: ``periods.py`` (periods and the tree's node arithmetic, re-exported here),
``trade_tree.py`` (drawing and caching the trades as drawn); this module adds corrections,
the start of history and the candle queries.

No I/O, no clock: every query takes ``now_ms``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pipeline.simulator.bars import Bar, combine
from pipeline.simulator.generator import FIELDS, Rows
from pipeline.simulator.periods import (
    DAY_MS,
    HOUR_MS,
    LEVEL_MINUTE,
    LEVEL_MS,
    MINUTE_MS,
    SECOND_MS,
    Period,
    aligned_runs,
    level_of,
    node_index,
    node_start,
    visible_end,
)
from pipeline.simulator.trade_tree import TradeTree

__all__ = [
    "Correction",
    "Market",
    "MarketConfig",
]

# Entries kept in the small caches (corrections, a round's candles) before they start over.
_MAX_SMALL_CACHE = 50_000
# Candles drawn in the first step when walking back through a history, and at most per step.
_CHUNK_CANDLES = 512
_MAX_CHUNK_CANDLES = 8192
_MIN_CHUNK_CANDLES = 64
_TRADES = Bar._fields.index("trades")


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


class Market:
    """Seeded trades for any symbol; candles of any fixed period, as visible at a given time.

    Args:
        config: The market's parameters; ``MarketConfig()`` for the defaults.
    """

    def __init__(self, config: MarketConfig | None = None) -> None:
        self.config = config or MarketConfig()
        """The parameters this market was built with."""
        self._tree = TradeTree(
            self.config.seed,
            quiet_fraction=self.config.quiet_fraction,
            cache_size=self.config.cache_size,
        )
        self._corrections: dict[tuple[str, int], Correction | None] = {}
        self._round_now = -1
        self._round_bars: dict[tuple[str, Period, int, int], tuple[tuple[int, Bar], ...]] = {}

    @property
    def splits_drawn(self) -> int:
        """How many splits were computed (cache misses), for benchmarks."""
        return self._tree.splits_drawn

    @property
    def splits_cached(self) -> int:
        """How many splits the cache holds now (memory the simulator keeps, for soaks)."""
        return self._tree.cached_splits

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
            for level, first, stop in aligned_runs(start_ms, end)
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
        takes (``TradeTree.prepare``; symbols that do not trade are skipped).

        Only a cache warm-up: queries give the same results without it. Drawing 1,000
        symbols' new minutes one symbol at a time costs 1,000 ``split_rows`` calls.
        """
        if self.config.symbols is not None:
            oldest = {symbol: since for symbol, since in oldest.items() if self.trades(symbol)}
        self._tree.prepare(oldest, now_ms)

    def prepared(self, symbol: str, now_ms: int) -> bool:
        """Whether the seconds of ``symbol``'s current minute at ``now_ms`` are drawn."""
        minute = node_index(LEVEL_MINUTE, visible_end(now_ms) - 1)
        return not self.trades(symbol) or self._tree.has_split(symbol, LEVEL_MINUTE, minute)

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
        runs = list(aligned_runs(live, end))
        if not names or not runs:
            return
        parts = [
            np.stack(
                [
                    self._tree.level_rows(
                        symbol, level, node_index(level, start), node_index(level, stop - 1)
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
        level = level_of(period)
        per_candle = period.length_ms // LEVEL_MS[level]
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
        base = node_index(level, start_ms)
        rows = self._tree.level_rows(symbol, level, base, node_index(level, end_ms - 1))
        changed: list[int] = []
        history_start = self.config.history_start_ms
        if history_start is not None and start_ms < history_start:
            changed.extend(
                node
                for node in range(base, base + len(rows))
                if node_start(level, node) < history_start
            )
        for fix in self._corrections_within(symbol, start_ms, end_ms, now_ms):
            first = node_index(level, max(start_ms, fix.minute_ms))
            stop = node_index(level, min(end_ms, fix.minute_ms + MINUTE_MS) - 1)
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

    # -- corrections -----------------------------------------------------------------------------

    def _hour_correction(self, symbol: str, hour: int) -> Correction | None:
        key = (symbol, hour)
        if key in self._corrections:
            return self._corrections[key]
        rng = self._tree.rng("correction", symbol, hour)
        fix = None
        if rng.random() < self.config.correction_rate:
            published = hour * HOUR_MS + rng.randrange(3600) * SECOND_MS
            minute = (published // MINUTE_MS - rng.randint(1, 10)) * MINUTE_MS
            removes = rng.random() < self.config.correction_remove_fraction
            lot = self._tree.profile(symbol).shares_per_trade
            extra = 0 if removes else lot * rng.randint(1, 5)
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
        generated = self._tree.generated(symbol, level, index)
        start = node_start(level, index)
        if generated is None:
            return None  # nothing traded, so nothing to correct
        history_start = self.config.history_start_ms
        before_history = history_start is not None and start < history_start
        if before_history and start + LEVEL_MS[level] <= (history_start or 0):
            return None
        fixes = self._corrections_within(symbol, start, start + LEVEL_MS[level], now_ms)
        if not fixes and not before_history:
            return generated
        if level < LEVEL_MINUTE:
            first = node_index(level + 1, start)
            slots = LEVEL_MS[level] // LEVEL_MS[level + 1]
            return combine(
                self._node_bar(symbol, level + 1, first + i, now_ms) for i in range(slots)
            )
        if level == LEVEL_MINUTE:
            return _apply(generated, fixes)
        # A second: a bust removes it; extra volume lands on the minute's last trading second,
        # whose close is the minute's close.
        if any(fix.removes for fix in fixes):
            return None
        seconds = self._tree.children(symbol, LEVEL_MINUTE, start // MINUTE_MS)
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
