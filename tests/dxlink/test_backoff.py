"""Reconnect delays (full-jitter backoff, reset rule) and the token bucket; no I/O, no clock."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.dxlink.backoff import Backoff, TokenBucket, backoff


def upper(a: float, b: float) -> float:
    """A jitter that always picks the upper bound, to read the envelope."""
    return b


def test_backoff_envelope_doubles_from_initial_to_cap() -> None:
    """The upper bound starts at `initial`, doubles each attempt and stops at the cap."""
    delays = list(itertools.islice(backoff(initial=0.5, max_delay=30.0, uniform=upper), 10))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_backoff_first_retry_is_fast_by_default() -> None:
    """With the defaults the first delay never exceeds 0.5 s and no delay exceeds 30 s."""
    rng = random.Random(7)
    for _ in range(200):
        delays = list(itertools.islice(backoff(uniform=rng.uniform), 12))
        assert 0.0 <= delays[0] <= 0.5
        assert all(0.0 <= d <= 30.0 for d in delays)


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=30))
def test_backoff_full_jitter_stays_within_bounds(seed: int, attempts: int) -> None:
    """Every jittered delay lies in [0, min(cap, initial * factor**n)]."""
    rng = random.Random(seed)
    delays = itertools.islice(
        backoff(initial=0.25, factor=3.0, max_delay=10.0, uniform=rng.uniform), attempts
    )
    for n, delay in enumerate(delays):
        assert 0.0 <= delay <= min(10.0, 0.25 * 3.0**n)


def test_backoff_jitter_spreads_delays() -> None:
    """Full jitter uses the whole range, not a fixed value (clients that failed together spread)."""
    rng = random.Random(1)
    third = [list(itertools.islice(backoff(uniform=rng.uniform), 3))[2] for _ in range(500)]
    assert min(third) < 0.3 and max(third) > 1.7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": -1.0}, "must be >= 0 seconds"),
        ({"max_delay": -0.1}, "must be >= 0 seconds"),
        ({"factor": 0.5}, "factor must be >= 1"),
    ],
)
def test_backoff_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    """Impossible settings fail with a message naming the setting."""
    with pytest.raises(ValueError, match=message):
        next(backoff(**kwargs))


def counting() -> Iterator[float]:
    """Delays 1, 2, 3, ...: makes resets visible."""
    return (float(n) for n in itertools.count(1))


def test_backoff_policy_keeps_growing_while_connections_die_young() -> None:
    """Connections that drop before `healthy_after` never reset the sequence (no storm)."""
    policy = Backoff(counting, healthy_after=30.0)
    delays = [policy.next_delay(uptime) for uptime in (0.0, 0.1, 5.0, 29.9)]
    assert delays == [1.0, 2.0, 3.0, 4.0]
    assert policy.attempt == 4


def test_backoff_policy_resets_after_a_healthy_connection() -> None:
    """A connection that stayed up for `healthy_after` seconds restarts the sequence."""
    policy = Backoff(counting, healthy_after=30.0)
    assert [policy.next_delay(0.0) for _ in range(3)] == [1.0, 2.0, 3.0]
    assert policy.next_delay(30.0) == 1.0
    assert policy.next_delay(0.0) == 2.0


def test_backoff_policy_rejects_negative_threshold() -> None:
    """A negative `healthy_after` is refused with a clear message."""
    with pytest.raises(ValueError, match="healthy_after must be >= 0"):
        Backoff(healthy_after=-1.0)


def test_token_bucket_allows_a_burst_then_paces_at_the_rate() -> None:
    """A full bucket lets `capacity` tokens go at once; later ones wait 1/rate each."""
    bucket = TokenBucket(rate=10.0, capacity=5.0, now=100.0)
    for _ in range(5):
        assert bucket.delay(1, 100.0) == 0.0
        bucket.take(1, 100.0)
    assert bucket.delay(1, 100.0) == pytest.approx(0.1)
    assert bucket.delay(1, 100.05) == pytest.approx(0.05)
    assert bucket.delay(1, 100.1) == pytest.approx(0.0, abs=1e-9)


def test_token_bucket_never_holds_more_than_capacity() -> None:
    """A long idle time refills only up to `capacity`."""
    bucket = TokenBucket(rate=1.0, capacity=3.0, now=0.0)
    bucket.take(3, 0.0)
    assert bucket.tokens(1_000.0) == 3.0


def test_token_bucket_oversized_cost_waits_for_a_full_bucket_then_owes() -> None:
    """A cost above capacity waits for a full bucket and leaves a debt that later spends repay."""
    bucket = TokenBucket(rate=2.0, capacity=4.0, now=0.0)
    assert bucket.delay(10, 0.0) == 0.0
    bucket.take(10, 0.0)
    assert bucket.tokens(0.0) == -6.0
    assert bucket.delay(1, 0.0) == pytest.approx(3.5)


def test_token_bucket_slow_down_and_drain() -> None:
    """After `drain` and a lower rate, the next token takes 1/new_rate seconds."""
    bucket = TokenBucket(rate=10.0, capacity=10.0, now=0.0)
    bucket.set_rate(2.0, 0.0)
    bucket.drain(0.0)
    assert bucket.delay(1, 0.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("rate", "capacity", "message"),
    [(0.0, 1.0, "rate must be > 0"), (1.0, 0.5, "capacity must be >= 1")],
)
def test_token_bucket_rejects_bad_settings(rate: float, capacity: float, message: str) -> None:
    """A zero rate or a capacity below one token is refused with a clear message."""
    with pytest.raises(ValueError, match=message):
        TokenBucket(rate=rate, capacity=capacity, now=0.0)


@given(
    st.lists(st.tuples(st.floats(0, 5), st.floats(0.1, 3)), min_size=1, max_size=40),
    st.floats(0.5, 50),
    st.floats(1, 20),
)
def test_token_bucket_honours_the_rate_over_any_schedule(
    steps: list[tuple[float, float]], rate: float, capacity: float
) -> None:
    """Spending only when `delay` says 0 never exceeds capacity + rate * elapsed."""
    bucket = TokenBucket(rate=rate, capacity=capacity, now=0.0)
    now = 0.0
    spent = 0.0
    for gap, cost in steps:
        now += gap
        now += bucket.delay(cost, now)
        bucket.take(cost, now)
        spent += cost
        assert spent <= capacity + rate * now + max(cost for _, cost in steps) + 1e-6
