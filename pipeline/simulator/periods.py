"""Simulated time: candle periods, visibility, and the tree of nodes the trades are drawn on.

The market's trades hang on a tree (see ``generator.py``): week > 7 days > 24 hours > 60
minutes > 60 seconds, weeks starting on Monday 00:00 UTC as tastytrade's weekly candles do
(dxlink-protocol.md §4.3). This module knows where the nodes of each level start and how to
cover a time range with the fewest whole nodes; ``market.py`` and ``trade_tree.py`` draw them.

No I/O, no clock: pure arithmetic on milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "LEVEL_DAY",
    "LEVEL_HOUR",
    "LEVEL_MINUTE",
    "LEVEL_MS",
    "LEVEL_SECOND",
    "LEVEL_WEEK",
    "MINUTE_MS",
    "SECOND_MS",
    "WEEK_MS",
    "WEEK_ORIGIN_MS",
    "Period",
    "aligned_runs",
    "level_of",
    "node_index",
    "node_start",
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
LEVEL_WEEK, LEVEL_DAY, LEVEL_HOUR, LEVEL_MINUTE, LEVEL_SECOND = range(5)
LEVEL_MS = (WEEK_MS, DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS)
"""Length of a node of each level, indexed by level."""
_UNIT_MS = {"s": SECOND_MS, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": WEEK_MS}


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


def node_index(level: int, time_ms: int) -> int:
    """The index of the ``level`` node containing ``time_ms`` (weeks count from Monday)."""
    if level == LEVEL_WEEK:
        return (time_ms - WEEK_ORIGIN_MS) // WEEK_MS
    return time_ms // LEVEL_MS[level]


def node_start(level: int, index: int) -> int:
    """The start (ms) of the ``level`` node numbered ``index``."""
    if level == LEVEL_WEEK:
        return WEEK_ORIGIN_MS + index * WEEK_MS
    return index * LEVEL_MS[level]


def aligned_runs(start_ms: int, end_ms: int) -> Iterator[tuple[int, int, int]]:
    """Cover ``[start_ms, end_ms)`` with the fewest whole tree nodes, in time order, given as
    runs ``(level, first_ms, stop_ms)`` of consecutive nodes of one level.

    A run at a level lasts until the next boundary of the level above (where a coarser node
    may start: every coarser boundary is one of those) or until no node of the level fits.
    """
    time_ms = start_ms
    while time_ms < end_ms:
        for level in range(LEVEL_SECOND + 1):
            length = LEVEL_MS[level]
            if node_start(level, node_index(level, time_ms)) != time_ms:
                continue
            if time_ms + length > end_ms:
                continue
            stop = end_ms
            if level > LEVEL_WEEK:
                stop = min(stop, node_start(level - 1, node_index(level - 1, time_ms) + 1))
            stop = time_ms + (stop - time_ms) // length * length
            yield level, time_ms, stop
            time_ms = stop
            break
        else:
            raise ValueError(f"range [{start_ms}, {end_ms}) is not aligned to whole seconds")


def level_of(period: Period) -> int:
    """The coarsest tree level whose nodes tile ``period``'s candles."""
    for level in range(LEVEL_SECOND + 1):
        step = LEVEL_MS[level]
        origin = WEEK_ORIGIN_MS if level == LEVEL_WEEK else 0
        if period.length_ms % step == 0 and (period.offset_ms - origin) % step == 0:
            return level
    raise AssertionError("unreachable: every Period is a whole number of seconds")
