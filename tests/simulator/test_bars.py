"""Tests for pipeline/simulator/bars.py: exact aggregates and their Candle events."""

from __future__ import annotations

import math

import pytest

from pipeline.dxlink import REMOVE_EVENT, SNAPSHOT_BEGIN, index_of
from pipeline.simulator.bars import Bar, bar_to_candle, check_bar, combine, removal_candle

A = Bar(100, 105, 99, 104, 3, 300, 300 * 102, 100, 120)
B = Bar(104, 110, 103, 108, 4, 200, 200 * 107, 50, 60)


def test_combine_takes_first_open_last_close_and_sums() -> None:
    """Open from the first bar, close from the last, extremes and sums over all."""
    assert combine([A, None, B]) == Bar(100, 110, 99, 108, 7, 500, 300 * 102 + 200 * 107, 150, 180)


def test_combine_of_nothing_is_none() -> None:
    """Only quiet periods: no trades, no bar."""
    assert combine([None, None]) is None
    assert combine([]) is None


@pytest.mark.parametrize(
    ("bar", "problem"),
    [
        (Bar(100, 100, 100, 100, 0, 5, 500, 0, 0), "trades 0 < 1"),
        (Bar(100, 100, 100, 100, 5, 4, 400, 0, 0), "volume 4 < trades 5"),
        (Bar(100, 99, 98, 100, 5, 50, 4_950, 0, 0), "outside"),
        (Bar(100, 101, 100, 100, 1, 5, 500, 0, 0), "single trade"),
        (Bar(100, 103, 97, 100, 3, 50, 5_000, 0, 0), "cannot reach"),
        (Bar(100, 105, 95, 100, 10, 50, 4_000, 0, 0), "turnover"),
        (Bar(100, 100, 100, 100, 10, 50, 5_000, 30, 30), "bid_volume"),
    ],
)
def test_check_bar_names_the_broken_invariant(bar: Bar, problem: str) -> None:
    """Each invariant violation is reported by name."""
    with pytest.raises(ValueError, match=problem):
        check_bar(bar)


def test_bar_to_candle_converts_ticks_and_computes_vwap() -> None:
    """Prices are ticks / 100, vwap is turnover / volume, index follows §4.2."""
    candle = bar_to_candle("AAPL{=5m}", 1_756_303_200_000, A, flags=SNAPSHOT_BEGIN)
    assert candle.symbol == "AAPL{=5m}"
    assert candle.index == index_of(1_756_303_200_000) == 7_543_264_805_860_147_200
    assert (candle.open, candle.high, candle.low, candle.close) == (1.0, 1.05, 0.99, 1.04)
    assert candle.vwap == pytest.approx(1.02)
    assert (candle.count, candle.volume, candle.bid_volume, candle.ask_volume) == (3, 300, 100, 120)
    assert candle.flags == SNAPSHOT_BEGIN
    assert math.isnan(candle.imp_volatility) and math.isnan(candle.open_interest)


def test_removal_candle_carries_no_values() -> None:
    """A removal event has its flags, time and index, and NaN prices."""
    candle = removal_candle("SPY{=d}", 1_755_993_600_000)
    assert candle.flags == REMOVE_EVENT
    assert candle.index == 7_541_935_083_985_305_600
    assert math.isnan(candle.open) and math.isnan(candle.close)
