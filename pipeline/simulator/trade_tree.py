"""The market's trade tree: seeded drawing and caching of its nodes (splits and weeks).

Every symbol's trades are drawn top-down (``generator.py``): a week's aggregate from a seeded
price path (multi-octave value noise in log price), split into 7 days, each day into 24 hours,
each hour into 60 minutes, each minute into 60 seconds. A *split* (a node's children) depends
only on the parent's row and a seed hashed from ``(seed, symbol, level, index)``, so it is
the same whichever query draws it first and in whichever batch; that is what makes the
market a pure function of ``(seed, symbol, time)``.

``TradeTree`` draws the nodes a query needs (missing splits of a range in one ``split_rows``
batch) and keeps the most recently used ``cache_size`` splits: history served again is read,
not drawn again. Corrections and history start are the market's business (``market.py``):
the rows here are the trades as drawn.

No I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from random import Random
from typing import NamedTuple

import numpy as np

from pipeline.simulator.bars import Bar
from pipeline.simulator.generator import FIELDS, Rows, mix64, rows_to_bars, split_rows, uniforms
from pipeline.simulator.periods import (
    LEVEL_MINUTE,
    LEVEL_MS,
    LEVEL_WEEK,
    WEEK_MS,
    node_index,
    node_start,
    visible_end,
)

__all__ = ["Profile", "TradeTree"]

# Weeks drawn together (and cached together) when week bars are needed, and how many such
# blocks (4.6 KB each) to keep before the cache starts over.
_WEEK_BLOCK = 64
_MAX_WEEK_BLOCKS = 4096
# Most nodes of one level per symbol that ``TradeTree.prepare`` draws ahead (48 hours of
# minutes), and most splits per ``split_rows`` call there (its temporaries grow with
# slots**2 per row: ~30 KB for a minute's 60 seconds).
_PREPARE_NODES = 48
_PREPARE_BATCH = 1024
# Octaves of the weekly price path (value noise). 2**6 weeks is the longest swing.
_OCTAVES = 7
# Odd multiplier spreading consecutive cells and weeks over the 64-bit hash input.
_LATTICE_STEP = np.uint64(0x9E3779B97F4A7C15)
_TRADES = Bar._fields.index("trades")


class Profile(NamedTuple):
    """A symbol's seeded character: where its price starts and how busily it trades."""

    base_price: int  # ticks
    trades_per_second: float
    shares_per_trade: int
    weekly_volatility: float


class TradeTree:
    """Seeded trades of every symbol as a tree of bar rows, drawn on demand and cached.

    Args:
        seed: Seeds every symbol's trades (``MarketConfig.seed``).
        quiet_fraction: Probability that a sub-period is forced quiet, in [0, 1).
        cache_size: How many splits to keep, most recently used first.
    """

    def __init__(self, seed: int, *, quiet_fraction: float, cache_size: int) -> None:
        self.quiet_fraction = quiet_fraction
        self.cache_size = cache_size
        self._splits: OrderedDict[tuple[str, int, int], Rows] = OrderedDict()
        self._profiles: dict[str, Profile] = {}
        self._week_blocks: dict[tuple[str, int], Rows] = {}
        self._hasher = hashlib.blake2b(str(seed).encode() + b"|", digest_size=8)
        self._prepared: tuple[int, dict[str, int]] = (-1, {})  # minute, symbol -> oldest
        self.splits_drawn = 0
        """How many splits were computed (cache misses), for benchmarks."""

    @property
    def cached_splits(self) -> int:
        """How many splits the cache holds now (at most ``cache_size``)."""
        return len(self._splits)

    def has_split(self, symbol: str, level: int, index: int) -> bool:
        """Whether the children of the ``level`` node ``index`` of ``symbol`` are cached."""
        return (symbol, level, index) in self._splits

    def prepare(self, oldest: Mapping[str, int], now_ms: int) -> None:
        """Draw, in few batches per tree level, what serving the symbols at ``now_ms``
        takes: the splits down to each symbol's current second, and down to minute bars
        back to ``oldest[symbol]`` (a snapshot's ``fromTime``; at most ``_PREPARE_NODES``
        nodes of a level per symbol, at most half the cache in all, newest first,
        in batches of ``_PREPARE_BATCH`` splits).

        Only a cache warm-up: queries give the same results without it. Drawing 1,000
        symbols' new minutes one symbol at a time costs 1,000 ``split_rows`` calls.
        """
        newest = visible_end(now_ms) - 1  # in the newest visible second
        minute = node_index(LEVEL_MINUTE, newest)
        done_minute, done = self._prepared
        if minute == done_minute and all(
            done.get(symbol, newest) <= since for symbol, since in oldest.items()
        ):
            return  # the same minute again (every publish round until the next one)
        self._prepared = (minute, dict(oldest) if minute != done_minute else {**done, **oldest})
        cache = self._splits
        for level in range(LEVEL_WEEK, LEVEL_MINUTE + 1):
            last = node_index(level, newest)
            nodes: list[tuple[str, int]] = []
            for symbol, since in oldest.items():
                first = last
                if level < LEVEL_MINUTE:  # minute bars back to ``since``; seconds of now only
                    first = max(min(node_index(level, since), last), last - _PREPARE_NODES)
                nodes.extend(
                    (symbol, index)
                    for index in range(first, last + 1)
                    if (symbol, level, index) not in cache
                )
            # Newest first, and no more than half the cache: drawing what would be
            # evicted before it is served would only cost time.
            nodes.sort(key=lambda node: -node[1])
            del nodes[self.cache_size // 2 :]
            for start in range(0, len(nodes), _PREPARE_BATCH):  # bounded numpy temporaries
                batch = nodes[start : start + _PREPARE_BATCH]
                parents = np.concatenate(
                    [self.level_rows(symbol, level, index, index) for symbol, index in batch]
                )
                self._draw_splits(level, batch, parents)

    def seed(self, *parts: object) -> int:
        """A 64-bit seed for ``parts``: stable across processes (unlike ``hash()``)."""
        hasher = self._hasher.copy()
        hasher.update("|".join(map(str, parts)).encode())
        return int.from_bytes(hasher.digest(), "little")

    def rng(self, *parts: object) -> Random:
        """A ``Random`` seeded from ``parts`` (see ``seed``)."""
        return Random(self.seed(*parts))

    def profile(self, symbol: str) -> Profile:
        """The seeded ``Profile`` of ``symbol``, drawn once."""
        profile = self._profiles.get(symbol)
        if profile is None:
            rng = self.rng("profile", symbol)
            profile = Profile(
                base_price=rng.randint(1_000, 50_000),
                trades_per_second=0.2 + rng.random() * 2.8,
                shares_per_trade=20 + rng.randint(0, 480),
                weekly_volatility=0.02 + rng.random() * 0.04,
            )
            self._profiles[symbol] = profile
        return profile

    def level_rows(self, symbol: str, level: int, first: int, last: int) -> Rows:
        """Rows of the ``level`` nodes ``first..last`` as drawn, before corrections."""
        if level == LEVEL_WEEK:
            return self._week_rows(symbol, first, last)
        parent_first = node_index(level - 1, node_start(level, first))
        parent_last = node_index(level - 1, node_start(level, last))
        skip = (node_start(level, first) - node_start(level - 1, parent_first)) // LEVEL_MS[level]
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
            parents = self.level_rows(symbol, level, low, missing[-1])
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
        slots = LEVEL_MS[level] // LEVEL_MS[level + 1]
        trading = [at for at in range(len(nodes)) if parents[at, _TRADES]]
        seeds = np.array(
            [self.seed("split", nodes[at][0], level, nodes[at][1]) for at in trading],
            dtype=np.uint64,
        )
        drawn = split_rows(parents[trading], slots, seeds, quiet_fraction=self.quiet_fraction)
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
        while len(cache) > self.cache_size:
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
        profile = self.profile(symbol)
        offset = np.zeros(len(weeks))
        for octave in range(_OCTAVES):
            cells, within = np.divmod(weeks, 1 << octave)
            base = np.uint64(self.seed("anchor", symbol, octave))
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
        profile = self.profile(symbol)
        weeks = np.arange(first, first + count + 1, dtype=np.int64)
        anchors = self._anchors(symbol, weeks)
        with np.errstate(over="ignore"):
            keys = (
                np.uint64(self.seed("week", symbol)) + weeks[:-1].astype(np.uint64) * _LATTICE_STEP
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

    def generated(self, symbol: str, level: int, index: int) -> Bar | None:
        """The node's aggregate as drawn, before corrections."""
        return rows_to_bars(self.level_rows(symbol, level, index, index))[0]

    def children(self, symbol: str, level: int, index: int) -> Rows:
        """The rows of the children of the ``level`` node ``index``, as drawn."""
        return self._split_range(symbol, level, index, index)[0]
