"""Tests for pipeline/simulator/generator.py: exact top-down splits of trade aggregates."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.simulator.bars import Bar, check_bar, combine
from pipeline.simulator.generator import apportion, split_bar
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
