"""Retry policy: error classification, full-jitter backoff and its reset rule; no I/O."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import Close
from websockets.http11 import Response

from pipeline.dxlink import (
    AuthenticationError,
    Backoff,
    ConfigurationError,
    InvalidMessage,
    ProtocolViolation,
    Unauthorized,
    UsageError,
    backoff,
)
from pipeline.dxlink.client import (
    Action,
    DisconnectReason,
    HandshakeTimeout,
    PeerTimeout,
    classify,
    disconnect_reason,
)
from pipeline.dxlink.client.retry import explain_fatal
from pipeline.dxlink.errors import server_error


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


# Error classification.


def closed(code: int | None, *, by_server: bool = True) -> ConnectionClosed:
    """A ConnectionClosed as websockets raises it (None: no close frame at all)."""
    frame = None if code is None else Close(code, "")
    rcvd, sent = (frame, None) if by_server else (None, frame)
    if code in (1000, 1001):
        return ConnectionClosedOK(rcvd, sent)
    return ConnectionClosedError(rcvd, sent)


def http_status(status: int) -> InvalidStatus:
    return InvalidStatus(Response(status, "", Headers()))


class TransientLoginError(AuthenticationError):
    transient = True


RETRY, REFRESH, FATAL = Action.RETRY, Action.REFRESH_TOKEN, Action.FATAL


@pytest.mark.parametrize(
    ("exc", "action", "reason"),
    [
        (ConnectionRefusedError(), RETRY, DisconnectReason.CONNECTION_LOST),
        (OSError("network unreachable"), RETRY, DisconnectReason.CONNECTION_LOST),
        (TimeoutError(), RETRY, DisconnectReason.CONNECTION_LOST),
        (PeerTimeout("silent"), RETRY, DisconnectReason.PEER_TIMEOUT),
        (HandshakeTimeout("no SETUP"), RETRY, DisconnectReason.HANDSHAKE_TIMEOUT),
        (closed(1000), RETRY, DisconnectReason.SERVER_CLOSED),
        (closed(1001), RETRY, DisconnectReason.SERVER_CLOSED),
        (closed(None), RETRY, DisconnectReason.CONNECTION_LOST),
        (closed(1011), RETRY, DisconnectReason.CONNECTION_LOST),
        (closed(1009), FATAL, DisconnectReason.FATAL),
        (closed(1009, by_server=False), RETRY, DisconnectReason.MESSAGE_TOO_BIG),
        (server_error("TIMEOUT", "late"), RETRY, DisconnectReason.SERVER_ERROR),
        (server_error("UNKNOWN", "?"), RETRY, DisconnectReason.SERVER_ERROR),
        (server_error("INVALID_MESSAGE", "json"), RETRY, DisconnectReason.SERVER_ERROR),
        (server_error("SOMETHING_NEW", "?"), RETRY, DisconnectReason.SERVER_ERROR),
        (server_error("UNAUTHORIZED", "no"), REFRESH, DisconnectReason.AUTH_REJECTED),
        (Unauthorized("AUTH_STATE UNAUTHORIZED"), REFRESH, DisconnectReason.AUTH_REJECTED),
        (server_error("UNSUPPORTED_PROTOCOL", "v"), FATAL, DisconnectReason.FATAL),
        (ProtocolViolation("AUTH_STATE in CONNECTING"), RETRY, DisconnectReason.PROTOCOL_VIOLATION),
        (InvalidMessage("not JSON"), RETRY, DisconnectReason.PROTOCOL_VIOLATION),
        (ConfigurationError("bad"), FATAL, DisconnectReason.FATAL),
        (UsageError("bug"), FATAL, DisconnectReason.FATAL),
        (AuthenticationError("login rejected"), FATAL, DisconnectReason.FATAL),
        (TransientLoginError("HTTP 503"), RETRY, DisconnectReason.CONNECTION_LOST),
        (http_status(503), RETRY, DisconnectReason.CONNECTION_LOST),
        (http_status(429), RETRY, DisconnectReason.CONNECTION_LOST),
        (http_status(401), REFRESH, DisconnectReason.AUTH_REJECTED),
        (http_status(404), FATAL, DisconnectReason.FATAL),
        (InvalidURI("http://x", "not a ws URL"), FATAL, DisconnectReason.FATAL),
        (KeyError("a bug"), FATAL, DisconnectReason.FATAL),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_classify_sorts_every_failure_kind(
    exc: BaseException, action: Action, reason: DisconnectReason
) -> None:
    """Each failure maps to one action and one metrics reason, in one place."""
    assert classify(exc) is action
    assert disconnect_reason(exc) is reason


@pytest.mark.parametrize(
    ("exc", "advice"),
    [
        (closed(1009), "lower max_batch_bytes (now 6000)"),
        (closed(1009, by_server=False), "raise client.max_message_size"),
        (server_error("UNSUPPORTED_PROTOCOL", "0.1 unknown"), "protocol version: 0.1 unknown"),
        (http_status(404), "HTTP 404; check the dxlink URL"),
        (KeyError("x"), "a bug"),
    ],
)
def test_explain_fatal_says_what_to_fix(exc: BaseException, advice: str) -> None:
    """A fatal failure comes with one sentence naming the fix."""
    assert advice in explain_fatal(exc, max_batch_bytes=6000, max_message_size=2**24)
