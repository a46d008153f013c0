"""Retry and pacing policy of the DXLink client: whether to retry, when, and how fast to send.

STYLE.md pattern 6: the supervisor in ``client.py`` is the only retry loop; everything else
raises. This module decides, in one place, what each failure means:

* :func:`classify` maps an exception to ``RETRY`` (reconnect after a backoff),
  ``REFRESH_TOKEN`` (fetch a new token, then reconnect) or ``FATAL`` (stop with an error that
  says what to fix); :func:`disconnect_reason` names it for the metrics.
* :func:`backoff` is a generator of reconnect delays: exponential growth with *full jitter*
  (each delay is uniform in ``[0, min(cap, initial * factor**n)]``), a fast first retry and a
  cap. It is a constructor argument of ``DXLinkManager`` (``reconnect_delays=``) so tests pass
  a scaled-down copy and record what was requested. :class:`Backoff` wraps it with the reset
  rule: the sequence only starts over once a connection has *stayed healthy* for a while, so a
  server that accepts and drops at once cannot cause a reconnect storm (storage-and-libs.md §4:
  websockets' own iterator resets after every handshake and made 1 118 connections in 2 s).
* :class:`TokenBucket` paces FEED_SUBSCRIPTION messages so that a burst of thousands of
  subscriptions does not trip the server's BAD_ACTION rate limit (dxlink-protocol.md §8).

No I/O, no clock: callers pass durations in seconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from enum import StrEnum

from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import CloseCode

from pipeline.dxlink.errors import (
    AuthenticationError,
    ConfigurationError,
    DXLinkError,
    ProtocolViolation,
    ServerError,
    Unauthorized,
    UnsupportedProtocol,
    UsageError,
)
from pipeline.dxlink.metrics import DisconnectReason

__all__ = [
    "Action",
    "Backoff",
    "HandshakeTimeout",
    "PeerTimeout",
    "TokenBucket",
    "backoff",
    "classify",
    "describe",
    "disconnect_reason",
    "explain_fatal",
    "fatal_error",
]


class PeerTimeout(TimeoutError):
    """Nothing at all was received from the server for its keepalive timeout (§2.6)."""


class HandshakeTimeout(TimeoutError):
    """An expected handshake message (SETUP, AUTH_STATE, CHANNEL_OPENED, FEED_CONFIG) did not
    arrive in time (§2.6: dxFeed's client uses a 10 s ``actionTimeout``)."""


class Action(StrEnum):
    """What the supervisor does about a failure."""

    RETRY = "retry"
    """Reconnect after a backoff delay."""
    REFRESH_TOKEN = "refresh_token"
    """Fetch a new token (``force_refresh=True``), then reconnect after a backoff delay."""
    FATAL = "fatal"
    """Stop: retrying cannot help; the error says what to fix."""


# HTTP statuses at the WebSocket upgrade worth retrying: timeouts, rate limits, server trouble.
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# The upgrade carries no credentials on tastytrade (§1), but a proxy or gateway may answer
# these; a fresh token brings a fresh URL.
_AUTH_STATUS = frozenset({401, 403})


def _close_code(exc: ConnectionClosed) -> int | None:
    """The close code the server sent, else the one we sent, else None (no close frame)."""
    if exc.rcvd is not None:
        return exc.rcvd.code
    return None if exc.sent is None else exc.sent.code


def classify(exc: BaseException) -> Action:
    """Decide what a failure means; the one place errors are sorted (STYLE.md pattern 6).

    * transient → RETRY: network errors (``OSError``), timeouts (a silent server, a slow
      handshake), any WebSocket close (a clean 1000/1001 close too: the feed must go on),
      server ERROR TIMEOUT / UNKNOWN / INVALID_MESSAGE / BAD_ACTION on channel 0, a server
      message that breaks the protocol, HTTP 408/429/5xx at the upgrade;
    * auth → REFRESH_TOKEN: ERROR UNAUTHORIZED, AUTH_STATE UNAUTHORIZED after AUTH
      (raised as :class:`~pipeline.dxlink.errors.Unauthorized`), HTTP 401/403;
    * fatal → FATAL: UNSUPPORTED_PROTOCOL, bad configuration or usage, a token source that
      cannot log in (``AuthenticationError``, unless it marks itself ``transient``: then
      RETRY), close 1009 (a frame over the size limit:
      retrying would resend it), an invalid URL or other HTTP statuses, and anything
      unexpected (a bug must surface, not loop).
    """
    if isinstance(exc, Unauthorized):
        return Action.REFRESH_TOKEN
    if isinstance(exc, UnsupportedProtocol | ConfigurationError | UsageError):
        return Action.FATAL
    if isinstance(exc, ServerError | ProtocolViolation):
        return Action.RETRY
    if isinstance(exc, AuthenticationError):
        # The token source's own failures: a rejected login is fatal, but a network error or
        # HTTP 5xx/429 on the REST call says so with ``transient`` (pipeline/tastytrade.py).
        return Action.RETRY if getattr(exc, "transient", False) else Action.FATAL
    if isinstance(exc, ConnectionClosed):
        code = _close_code(exc)
        return Action.FATAL if code == CloseCode.MESSAGE_TOO_BIG else Action.RETRY
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in _AUTH_STATUS:
            return Action.REFRESH_TOKEN
        return Action.RETRY if status in _RETRY_STATUS else Action.FATAL
    if isinstance(exc, InvalidURI):
        return Action.FATAL
    if isinstance(exc, OSError | TimeoutError | EOFError | InvalidHandshake):
        return Action.RETRY
    return Action.FATAL


def disconnect_reason(exc: BaseException) -> DisconnectReason:
    """Name a failure for ``disconnect_count`` (by reason)."""
    if classify(exc) is Action.FATAL:
        return DisconnectReason.FATAL
    if isinstance(exc, Unauthorized) or classify(exc) is Action.REFRESH_TOKEN:
        return DisconnectReason.AUTH_REJECTED
    if isinstance(exc, ServerError):
        return DisconnectReason.SERVER_ERROR
    if isinstance(exc, ProtocolViolation):
        return DisconnectReason.PROTOCOL_VIOLATION
    if isinstance(exc, PeerTimeout):
        return DisconnectReason.PEER_TIMEOUT
    if isinstance(exc, HandshakeTimeout):
        return DisconnectReason.HANDSHAKE_TIMEOUT
    if isinstance(exc, ConnectionClosedOK):
        return DisconnectReason.SERVER_CLOSED
    return DisconnectReason.CONNECTION_LOST


def explain_fatal(exc: BaseException, *, max_batch_bytes: int, max_message_size: int) -> str:
    """Return what to fix for a FATAL failure, in one secret-free sentence."""
    if isinstance(exc, ConnectionClosed) and _close_code(exc) == CloseCode.MESSAGE_TOO_BIG:
        if exc.rcvd is not None:
            return (
                "the server closed the connection with 1009 (message too big): a "
                f"subscription frame exceeded its limit; lower max_batch_bytes "
                f"(now {max_batch_bytes})"
            )
        return (
            "a server message exceeded max_message_size "
            f"({max_message_size} bytes); raise max_message_size"
        )
    if isinstance(exc, UnsupportedProtocol):
        return f"the server does not accept our protocol version: {exc.message}"
    if isinstance(exc, InvalidStatus):
        return (
            f"the WebSocket upgrade was refused with HTTP {exc.response.status_code}; "
            "check the dxlink URL"
        )
    if isinstance(exc, InvalidURI):
        return f"the dxlink URL is not a ws:// or wss:// URL: {exc}"
    if isinstance(exc, DXLinkError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc} (a bug: please report it)"


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


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a failure for logs and metrics."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def fatal_error(exc: BaseException, max_batch_bytes: int, max_message_size: int) -> BaseException:
    """The error a FATAL failure ends the manager with: what to fix, with the cause chained."""
    if isinstance(exc, ConnectionClosed | InvalidStatus | InvalidURI):
        return ConfigurationError(
            explain_fatal(exc, max_batch_bytes=max_batch_bytes, max_message_size=max_message_size)
        )
    return exc  # DXLink errors already say what to fix; anything else is a bug: keep it


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
