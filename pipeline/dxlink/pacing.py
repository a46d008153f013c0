"""How fast the DXLink client retries and sends: reconnect delays and a token bucket.

* :func:`backoff` is a generator of reconnect delays: exponential growth with *full jitter*
  (each delay is uniform in ``[0, min(cap, initial * factor**n)]``), a fast first retry and a
  cap. It is a constructor argument of ``DXLinkManager`` (``reconnect_delays=``) so tests pass
  a scaled-down copy and record what was requested. :class:`Backoff` wraps it with the reset
  rule: the sequence only starts over once a connection has *stayed healthy* for a while, so a
  server that accepts and drops at once cannot cause a reconnect storm (storage-and-libs.md §4:
  websockets' own iterator resets after every handshake and made 1 118 connections in 2 s).
* :class:`TokenBucket` paces FEED_SUBSCRIPTION messages so that a burst of thousands of
  subscriptions does not trip the server's BAD_ACTION rate limit (dxlink-protocol.md §8); the
  simulator enforces the same limit with the same bucket.

Whether to retry at all is the client's :mod:`pipeline.dxlink.client.retry`. No I/O, no
clock: callers pass durations and ``now`` in seconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

__all__ = [
    "DEFAULT_FACTOR",
    "DEFAULT_INITIAL_DELAY",
    "DEFAULT_MAX_DELAY",
    "Backoff",
    "TokenBucket",
    "backoff",
]


# First retry fast (≤ 0.5 s), then double up to a 30 s cap: reconnecting quickly after a
# one-off drop matters for candle freshness, and 30 s keeps a broken server from being
# hammered while staying well under tastytrade's 60 s keepalive window (§2.6).
DEFAULT_INITIAL_DELAY = 0.5
DEFAULT_FACTOR = 2.0
DEFAULT_MAX_DELAY = 30.0


def backoff(
    *,
    initial: float = DEFAULT_INITIAL_DELAY,
    factor: float = DEFAULT_FACTOR,
    max_delay: float = DEFAULT_MAX_DELAY,
    uniform: Callable[[float, float], float] = random.uniform,
) -> Iterator[float]:
    """Yield reconnect delays in seconds, forever: exponential with full jitter and a cap.

    Attempt ``n`` (from 0) waits ``uniform(0, min(max_delay, initial * factor**n))``. Full
    jitter (rather than ±x %) spreads many clients that lost the same server apart.

    Args:
        initial: upper bound of the first delay; also the growth base.
        factor: growth of the upper bound per attempt (> 1 to back off at all).
        max_delay: the cap on the upper bound.
        uniform: ``uniform(a, b)``; injected so tests can pin the jitter.

    Raises:
        ValueError: if a bound is negative or ``factor`` < 1.
    """
    if initial < 0 or max_delay < 0:
        raise ValueError(
            f"backoff delays must be >= 0 seconds, got initial={initial!r} max_delay={max_delay!r}"
        )
    if factor < 1:
        raise ValueError(f"backoff factor must be >= 1 (1 = constant bound), got {factor!r}")
    bound = min(initial, max_delay)
    while True:
        yield uniform(0.0, bound)
        bound = min(bound * factor, max_delay)


class Backoff:
    """Reconnect delays with the "stayed healthy" reset rule.

    Call :meth:`next_delay` after each failed or ended connection with how long that
    connection stayed up (``0`` when it never got through the handshake). The delay sequence
    restarts only when that time reached ``healthy_after``; a connection that dies young keeps
    the sequence growing.
    """

    def __init__(
        self,
        delays: Callable[[], Iterator[float]] = backoff,
        *,
        healthy_after: float = 30.0,
    ) -> None:
        """Create the policy.

        Args:
            delays: a factory of delay iterators, e.g. :func:`backoff` or a test's recorder.
            healthy_after: seconds a connection must stay up before the next drop counts as a
                fresh start (30 s, the threshold storage-and-libs.md §4 suggests).
        """
        if healthy_after < 0:
            raise ValueError(f"healthy_after must be >= 0 seconds, got {healthy_after!r}")
        self._factory = delays
        self._delays = delays()
        self.healthy_after = healthy_after
        """Seconds of uptime after which the delay sequence starts over."""
        self.attempt = 0
        """Reconnect attempts since the last reset."""

    def next_delay(self, uptime: float) -> float:
        """Return how long to wait before the next connection attempt.

        Args:
            uptime: how long the connection that just ended was up (0 if it never was).
        """
        if uptime >= self.healthy_after and self.attempt:
            self.reset()
        self.attempt += 1
        return next(self._delays)

    def reset(self) -> None:
        """Start the delay sequence over."""
        self._delays = self._factory()
        self.attempt = 0


_TOKEN_EPSILON = 1e-9


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``capacity``.

    Pure: every method takes ``now``. The bucket starts full, so a small burst goes out at
    once and only a large one (a resubscription of thousands of series) is paced.
    """

    def __init__(self, *, rate: float, capacity: float, now: float) -> None:
        """Create a full bucket.

        Args:
            rate: tokens added per second (> 0).
            capacity: the most tokens the bucket holds, i.e. the largest burst (>= 1).
            now: the current time in seconds.

        Raises:
            ValueError: if ``rate`` <= 0 or ``capacity`` < 1.
        """
        if not rate > 0:
            raise ValueError(f"token bucket rate must be > 0 tokens/s, got {rate!r}")
        if not capacity >= 1:
            raise ValueError(f"token bucket capacity must be >= 1 token, got {capacity!r}")
        self.rate = rate
        """Tokens added per second."""
        self.capacity = capacity
        """The most tokens the bucket holds."""
        self._tokens = capacity
        self._updated = now

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now

    def tokens(self, now: float) -> float:
        """Return the tokens available at ``now``."""
        self._refill(now)
        return self._tokens

    def delay(self, cost: float, now: float) -> float:
        """Return the seconds until ``cost`` tokens are available (0 if they are now).

        A cost above ``capacity`` is treated as ``capacity``: it can never be saved up, so
        it waits for a full bucket and then drives the bucket negative (paying the debt).
        """
        self._refill(now)
        needed = min(cost, self.capacity) - self._tokens
        # A caller that waited exactly the returned delay must find the tokens there, despite
        # float rounding in the refill; otherwise it would spin on ever tinier delays.
        return 0.0 if needed <= _TOKEN_EPSILON else needed / self.rate

    def take(self, cost: float, now: float) -> None:
        """Spend ``cost`` tokens at ``now`` (the balance may go negative: a debt)."""
        self._refill(now)
        self._tokens -= cost

    def set_rate(self, rate: float, now: float) -> None:
        """Change the refill rate from ``now`` on (used to slow down after BAD_ACTION)."""
        if not rate > 0:
            raise ValueError(f"token bucket rate must be > 0 tokens/s, got {rate!r}")
        self._refill(now)
        self.rate = rate

    def drain(self, now: float) -> None:
        """Empty the bucket, so the next spend waits a full refill interval."""
        self._refill(now)
        self._tokens = min(self._tokens, 0.0)
