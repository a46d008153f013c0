"""Tests for pipeline/simulator/generator.py: exact top-down splits of trade aggregates."""

from __future__ import annotations

from random import Random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.simulator.bars import Bar, check_bar, combine
from pipeline.simulator.generator import rows_to_bars, split_bar, split_rows
from pipeline.simulator.split_fallback import apportion
from tests.simulator.strategies import bars

HOUR = Bar(11_000, 11_300, 10_800, 11_100, 5_000, 500_000, 500_000 * 11_050, 150_000, 160_000)


@given(st.integers(0, 10**9), st.lists(st.integers(0, 10**6), min_size=1, max_size=70))
def test_apportion_adds_up_exactly(total: int, weights: list[int]) -> None:
    """The parts always add up to the total."""
    if sum(weights) == 0:
        weights[0] = 1
    parts = apportion(total, weights)
    assert sum(parts) == total
    assert all(part >= 0 for part in parts)


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=70), st.data())
def test_apportion_respects_weights_as_capacities(weights: list[int], data: st.DataObject) -> None:
    """With total <= sum(weights), no part exceeds its weight."""
    total = data.draw(st.integers(0, sum(weights)))
    if sum(weights) == 0:
        assert apportion(0, weights) == [0] * len(weights)
        return
    parts = apportion(total, weights)
    assert all(part <= weight for part, weight in zip(parts, weights, strict=True))


def test_apportion_rejects_impossible_input() -> None:
    """Negative weights, or a total over all-zero weights, are refused."""
    with pytest.raises(ValueError, match="negative"):
        apportion(5, [1, -1])
    with pytest.raises(ValueError, match="all zero"):
        apportion(5, [0, 0])


@settings(max_examples=300)
@given(bars(), st.sampled_from([7, 24, 60]), st.sampled_from([0.0, 0.3]), st.integers(0, 2**32))
def test_split_is_exact_and_every_child_is_valid(
    parent: Bar, slots: int, quiet: float, seed: int
) -> None:
    """The children combine back into the parent, and each satisfies the Bar invariants."""
    children = split_bar(parent, slots, Random(seed), quiet_fraction=quiet)
    assert len(children) == slots
    for child in children:
        if child is not None:
            check_bar(child)
    assert combine(children) == parent


def test_split_is_deterministic() -> None:
    """The same parent and seed give the same children."""
    assert split_bar(HOUR, 60, Random(7)) == split_bar(HOUR, 60, Random(7))
    assert split_bar(HOUR, 60, Random(7)) != split_bar(HOUR, 60, Random(8))


def test_a_busy_hour_spreads_over_all_minutes() -> None:
    """5,000 trades fill every minute, with prices inside the hour's range."""
    children = split_bar(HOUR, 60, Random(1))
    assert all(child is not None for child in children)
    assert max(c.high for c in children if c) == HOUR.high
    assert min(c.low for c in children if c) == HOUR.low


def test_quiet_fraction_leaves_slots_without_trades() -> None:
    """With quiet_fraction 0.5 about half of the minutes have no trades."""
    children = split_bar(HOUR, 60, Random(3), quiet_fraction=0.5)
    quiet = sum(child is None for child in children)
    assert 15 <= quiet <= 45
    assert combine(children) == HOUR


def test_a_single_trade_cannot_be_split() -> None:
    """One trade lands whole in one slot."""
    single = Bar(500, 500, 500, 500, 1, 100, 50_000, 10, 20)
    children = split_bar(single, 60, Random(2))
    assert [child for child in children if child is not None] == [single]


def test_a_batch_splits_every_row_as_it_would_alone() -> None:
    """split_rows gives each parent the same children whatever else is in the batch."""
    parents = [
        HOUR,
        Bar(500, 500, 500, 500, 1, 100, 50_000, 10, 20),
        Bar(2_000, 2_000, 2_000, 2_000, 40, 900, 900 * 2_000, 300, 300),
        Bar(7_000, 7_090, 6_990, 7_010, 45, 4_500, 4_500 * 7_080, 1_000, 2_000),
    ]
    rows = np.array(parents, dtype=np.int64)
    seeds = np.arange(11, 11 + len(parents), dtype=np.uint64)
    together = split_rows(rows, 60, seeds, quiet_fraction=0.2)
    for i, parent in enumerate(parents):
        alone = split_rows(rows[i : i + 1], 60, seeds[i : i + 1], quiet_fraction=0.2)
        assert np.array_equal(alone[0], together[i])
        assert combine(rows_to_bars(together[i])) == parent


def test_closes_do_not_stick_to_the_parents_edges() -> None:
    """With the VWAP near the high, no run of 10 minutes closes exactly on the hour's high."""
    near_high = HOUR._replace(turnover=500_000 * 11_270)
    runs = []
    for seed in range(40):
        children = split_bar(near_high, 60, Random(seed))
        assert combine(children) == near_high
        run = 0
        for child in children:
            run = run + 1 if child is not None and child.close == near_high.high else 0
            runs.append(run)
    assert max(runs) < 10
