"""Exact trade aggregates (``Bar``) and how they combine and become Candle events.

A ``Bar`` is the aggregate of a run of trades: prices in integer ticks, volumes in whole
shares and the turnover (sum of price x size) as an integer, so that combining bars is exact.
That exactness is what lets the simulator promise that a 5m candle *equals* the aggregate of its
five 1m candles, VWAP included, and what lets tests compare a store against the truth with ``==``.

No I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

from pipeline.dxlink import REMOVE_EVENT, Candle, index_of

__all__ = [
    "PRICE_SCALE",
    "Bar",
    "bar_to_candle",
    "check_bar",
    "combine",
    "removal_candle",
]

_new = tuple.__new__
# Ticks per currency unit: prices are integer cents, so 22984 ticks is 229.84.
PRICE_SCALE = 100


class Bar(NamedTuple):
    """The aggregate of one or more trades, in time order.

    Invariants (``check_bar``): ``trades >= 1``; ``volume >= trades`` (every trade is at least one
    share); ``low <= open, close <= high``; one trade means ``open == high == low == close``; two
    trades have no price strictly inside; ``turnover / volume`` (the VWAP in ticks) lies within
    ``[low, high]``, one share away from either end when the bar has a range; ``bid_volume +
    ask_volume <= volume``.
    """

    open: int
    high: int
    low: int
    close: int
    trades: int
    volume: int
    turnover: int
    bid_volume: int
    ask_volume: int


def combine(bars: Iterable[Bar | None]) -> Bar | None:
    """The aggregate of consecutive bars given in time order; ``None`` entries are quiet periods.

    Returns None when every input is None (no trades at all).
    """
    first: Bar | None = None
    last: Bar | None = None
    high = low = count = volume = turnover = bid = ask = 0
    for bar in bars:
        if bar is None:
            continue
        if first is None:
            first = bar
            high, low = bar.high, bar.low
        else:
            high = max(high, bar.high)
            low = min(low, bar.low)
        last = bar
        count += bar.trades
        volume += bar.volume
        turnover += bar.turnover
        bid += bar.bid_volume
        ask += bar.ask_volume
    if first is None or last is None:
        return None
    return Bar(first.open, high, low, last.close, count, volume, turnover, bid, ask)


def _interior_extremes(bar: Bar) -> int:
    """How many of high/low are reached only by a trade strictly inside the bar."""
    ends = (bar.open, bar.close)
    return (bar.high not in ends) + (bar.low not in ends)


def check_bar(bar: Bar) -> None:
    """Raise ``ValueError`` naming the first invariant of ``Bar`` that ``bar`` breaks."""
    problems: list[str] = []
    if bar.trades < 1:
        problems.append(f"trades {bar.trades} < 1")
    if bar.volume < bar.trades:
        problems.append(f"volume {bar.volume} < trades {bar.trades}")
    if not (bar.low <= min(bar.open, bar.close) and max(bar.open, bar.close) <= bar.high):
        problems.append(f"open/close outside [low, high] in {bar}")
    if bar.low < 1:
        problems.append(f"low {bar.low} is not a positive price")
    if bar.trades == 1 and not (bar.open == bar.high == bar.low == bar.close):
        problems.append("a single trade must have open == high == low == close")
    if bar.trades >= 2 and _interior_extremes(bar) > bar.trades - 2:
        problems.append(f"{bar.trades} trades cannot reach high and low strictly inside the bar")
    spread = bar.high - bar.low
    lowest = bar.volume * bar.low + spread
    highest = bar.volume * bar.high - spread
    if spread == 0 and bar.turnover != bar.volume * bar.low:
        problems.append("a flat bar must have turnover == volume * price")
    if spread > 0 and not lowest <= bar.turnover <= highest:
        problems.append(f"turnover {bar.turnover} outside [{lowest}, {highest}]")
    if bar.bid_volume < 0 or bar.ask_volume < 0 or bar.bid_volume + bar.ask_volume > bar.volume:
        problems.append("bid_volume + ask_volume must be within [0, volume]")
    if problems:
        raise ValueError("invalid Bar: " + "; ".join(problems))


def bar_to_candle(symbol: str, time_ms: int, bar: Bar, *, flags: int = 0) -> Candle:
    """The Candle event for ``bar`` as the candle of ``symbol`` starting at ``time_ms``."""
    scale = PRICE_SCALE
    # Positional tuple.__new__: snapshots build thousands of these (events.py field order).
    return _new(Candle, (
        symbol, time_ms, 0, flags, index_of(time_ms, 0),
        0,  # eventTime: tastytrade sends 0 for candles (§4.1)
        bar.trades, bar.open / scale, bar.high / scale, bar.low / scale, bar.close / scale,
        float(bar.volume), bar.turnover / bar.volume / scale,
        float(bar.bid_volume), float(bar.ask_volume), math.nan, math.nan,
    ))  # fmt: skip


def removal_candle(symbol: str, time_ms: int, *, flags: int = REMOVE_EVENT) -> Candle:
    """A Candle carrying no data: a REMOVE_EVENT, a 0x0A boundary or an empty snapshot (§6.2)."""
    return Candle(symbol=symbol, time=time_ms, flags=flags, index=index_of(time_ms, 0))
