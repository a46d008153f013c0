"""What the DXLink client tells the outside world: counters and lifecycle notifications.

Counters (per channel, per connection, delivery back-pressure) are plain attribute increments
on the hot path (no locks, no clock reads of their own: callers pass the timestamps they
already have). :func:`snapshot` turns the lot into plain dicts for
``DXLinkManager.get_metrics()``, Prometheus export and logs. The :data:`LifecycleEvent`
classes are what ``DXLinkManager(on_event=...)`` is called with: connected, disconnected
(with the reason and the next delay), snapshot complete per series, back-pressure, stopped.

Channels are keyed by *role* (``"candles"`` for the HISTORY channel, ``"events"`` for the AUTO
channel), not by number: numbers are handed out afresh on every connection (§2.4), while a
dashboard wants one continuous series per role.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

__all__ = [
    "Backpressure",
    "ChannelMetrics",
    "Connected",
    "ConnectionMetrics",
    "ConnectionState",
    "DeliveryMetrics",
    "DisconnectReason",
    "Disconnected",
    "LifecycleEvent",
    "SnapshotComplete",
    "Stopped",
    "snapshot",
]


class ConnectionState(StrEnum):
    """Where the supervisor is in the connection lifecycle."""

    IDLE = "idle"
    """Not started yet."""
    CONNECTING = "connecting"
    """Opening the socket and running the handshake (SETUP, AUTH, channels, FEED_SETUP)."""
    CONNECTED = "connected"
    """Handshake done; subscriptions go out, data flows."""
    BACKING_OFF = "backing_off"
    """The last connection ended; waiting before the next attempt."""
    CLOSED = "closed"
    """``aclose()`` ran, or a fatal error or the attempt limit ended the manager."""


class DisconnectReason(StrEnum):
    """Why a connection (or a connection attempt) ended; the key of ``disconnect_count``."""

    SERVER_CLOSED = "server_closed"
    """The server closed cleanly (1000/1001)."""
    CONNECTION_LOST = "connection_lost"
    """A network error, a refused connection, or a close without a clean code."""
    PEER_TIMEOUT = "peer_timeout"
    """Nothing at all was received for the keepalive timeout (§2.6)."""
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    """An expected handshake message did not arrive in time."""
    SERVER_ERROR = "server_error"
    """The server sent a connection-level ERROR (§2.7) that ends the session."""
    AUTH_REJECTED = "auth_rejected"
    """The token was rejected; a fresh one is fetched before reconnecting."""
    PROTOCOL_VIOLATION = "protocol_violation"
    """The server sent a message that is illegal in the current state."""
    MESSAGE_TOO_BIG = "message_too_big"
    """The server sent a message larger than ``max_message_size``; we closed with 1009."""
    FATAL = "fatal"
    """An error that retrying cannot fix; the manager stopped."""
    CLIENT_CLOSED = "client_closed"
    """Our own ``aclose()``."""


@dataclass(slots=True)
class ChannelMetrics:
    """Counters of one channel role (``"candles"`` or ``"events"``)."""

    message_count: int = 0
    """FEED_DATA messages received."""
    event_count: int = 0
    """Events (candles or other) decoded from them."""
    error_count: int = 0
    """Channel-level ERROR messages received (§2.7)."""
    last_message_time: float | None = None
    """Wall-clock time (Unix seconds) of the last FEED_DATA, or None."""
    queue_high_water_mark: int = 0
    """The deepest the delivery queue of this channel has been."""
    subscription_messages: int = 0
    """FEED_SUBSCRIPTION messages sent."""
    subscription_items: int = 0
    """Items (add + remove) in those messages."""
    resent_batches: int = 0
    """Batches re-sent after a BAD_ACTION on this channel."""


@dataclass(slots=True)
class DeliveryMetrics:
    """Back-pressure: how long the reader waited for a slow consumer."""

    batches: int = 0
    """Batches handed to consumers."""
    blocked_count: int = 0
    """Times the reader found a queue full and had to wait."""
    blocked_seconds: float = 0.0
    """Total time the reader spent waiting on full queues."""


@dataclass(slots=True)
class ConnectionMetrics:
    """Counters of the connection lifecycle."""

    state: ConnectionState = ConnectionState.IDLE
    """The current state."""
    connect_count: int = 0
    """Connections that completed the handshake."""
    disconnect_count: dict[str, int] = field(default_factory=dict)
    """Ended connections and failed attempts, by :class:`DisconnectReason`."""
    reconnect_attempts: int = 0
    """Connection attempts after the first."""
    last_connect_time: float | None = None
    """Wall-clock time (Unix seconds) of the last completed handshake."""
    uptime_closed: float = 0.0
    """Seconds connected, summed over connections that have ended."""
    connected_since: float | None = None
    """Monotonic time the current connection completed its handshake, or None."""
    malformed_messages: int = 0
    """Frames that were not valid DXLink messages (counted and skipped, never fatal)."""
    protocol_violations: int = 0
    """Messages that were valid JSON but illegal in the current state."""
    token_refreshes: int = 0
    """Tokens fetched again after an auth rejection."""
    last_error: str | None = None
    """A short, secret-free description of the last failure."""
    dead_peer_timeout: float = 0.0
    """Seconds of silence after which the server counts as dead, as in force on the current
    (or last) connection: its advertised keepaliveTimeout clamped to our floor and cap."""
    heard_at: float | None = None
    """Monotonic time of the last frame received after a handshake (the handshake's end
    before the first), moved on by the time reading was paused; None before any."""
    deaf_since: float | None = None
    """Monotonic time the reader stopped reading (a slow consumer), or None while reading."""
    stalled_since: float | None = None
    """Monotonic time a silence began that ended a connection by peer timeout; cleared by
    the next frame received after a handshake. A stall outlives reconnects this way."""

    def heard(self, now: float) -> None:
        """A frame arrived on a connection past its handshake."""
        self.heard_at = now
        self.stalled_since = None

    def silence(self, now: float) -> float | None:
        """Seconds the server has said nothing since a handshake (reading time only): on the
        current connection, or since a stall that ended one by peer timeout, across the
        reconnects after it; None otherwise (e.g. backing off after an ordinary close)."""
        if self.stalled_since is not None:
            return max(0.0, now - self.stalled_since)
        if self.heard_at is None or self.connected_since is None:
            return None
        until = now if self.deaf_since is None else self.deaf_since
        return max(0.0, until - self.heard_at)

    def record_disconnect(self, reason: DisconnectReason, now: float) -> None:
        """Count one ended connection (or failed attempt) and close its uptime.

        Args:
            reason: why it ended.
            now: the current monotonic time.
        """
        self.disconnect_count[reason] = self.disconnect_count.get(reason, 0) + 1
        if reason is DisconnectReason.PEER_TIMEOUT and self.stalled_since is None:
            self.stalled_since = self.heard_at
        self.deaf_since = None
        if self.connected_since is not None:
            self.uptime_closed += max(0.0, now - self.connected_since)
            self.connected_since = None

    def total_uptime(self, now: float) -> float:
        """Seconds connected in total, the current connection included."""
        current = 0.0 if self.connected_since is None else max(0.0, now - self.connected_since)
        return self.uptime_closed + current


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake completed; subscriptions are going out."""

    url: str
    attempt: int
    """Consecutive attempts before this one succeeded (0: first try)."""


@dataclass(frozen=True, slots=True)
class Disconnected:
    """A connection (or attempt) ended; ``retry_in`` is None when the manager stops."""

    reason: DisconnectReason
    error: str
    retry_in: float | None


@dataclass(frozen=True, slots=True)
class SnapshotComplete:
    """A candle series' snapshot ended (§6.2); ``snipped`` if a server limit cut it short."""

    series: str
    snipped: bool


@dataclass(frozen=True, slots=True)
class Backpressure:
    """The reader found a delivery queue full and now waits for the consumer (§ pattern 9)."""

    stream: str
    """``"candles"`` or ``"events"``."""


@dataclass(frozen=True, slots=True)
class Stopped:
    """The manager stopped: ``error`` is None after ``aclose()``, else the fatal failure."""

    error: BaseException | None


LifecycleEvent: TypeAlias = Connected | Disconnected | SnapshotComplete | Backpressure | Stopped


def snapshot(
    connection: ConnectionMetrics,
    channels: dict[str, ChannelMetrics],
    delivery: DeliveryMetrics,
    subscriptions: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    """Return all metrics as plain, JSON-friendly dicts (a copy; safe to keep).

    Args:
        connection: the connection counters.
        channels: the per-role channel counters.
        delivery: the back-pressure counters.
        subscriptions: counts by kind (and candle state) from the registry.
        now: the current monotonic time, for ``total_uptime``.
    """
    conn = asdict(connection)
    conn["state"] = str(connection.state)
    conn["disconnect_count"] = {str(k): v for k, v in connection.disconnect_count.items()}
    conn["total_uptime"] = connection.total_uptime(now)
    conn["silence_seconds"] = connection.silence(now)
    del conn["uptime_closed"], conn["connected_since"]
    del conn["heard_at"], conn["deaf_since"], conn["stalled_since"]
    return {
        "connection": conn,
        "channels": {name: asdict(metrics) for name, metrics in channels.items()},
        "delivery": asdict(delivery),
        "subscriptions": dict(subscriptions),
    }
