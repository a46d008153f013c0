"""The shared core of the DXLink state machines (dxlink-protocol.md §2).

Both roles (``protocol.ClientProtocol``, ``server_protocol.ServerProtocol``) build on
``ProtocolCore``: outgoing/event queues, the keepalive and dead-peer timers (§2.6), the
channel/feed records, and one module-level table, ``ALLOWED``, of which received message types
each role accepts in each connection state (h11 ``_state.py`` style), plus ``CHANNEL_ALLOWED``:
which channel states each received channel message needs. A miss becomes a
``ProtocolViolation`` naming the message, our role and the state. The connection state
changes only through ``_set_state`` and a channel's only through ``_set_channel_state``; both
log with the ``=`` prefix.

No clock, asyncio or websockets here: time is the ``now`` the driver passes in.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum

import orjson

from pipeline.dxlink.errors import InvalidMessage, ProtocolViolation, UsageError, server_error
from pipeline.dxlink.feed_codec import FeedDecoder
from pipeline.dxlink.message_models import (
    DataFormat,
    Error,
    ErrorCode,
    JsonObject,
    Keepalive,
    Message,
    MessageType,
)
from pipeline.dxlink.messages import encode, message_type, parse, parse_object
from pipeline.dxlink.protocol_events import (
    ErrorReceived,
    InvalidMessageReceived,
    PeerTimedOut,
    ProtocolEvent,
    ViolationReceived,
)

__all__ = [
    "ALLOWED",
    "AUTHORIZED",
    "AUTHORIZING",
    "AWAIT_AUTH",
    "CHANNEL_ALLOWED",
    "CHANNEL_CLOSED",
    "CLIENT_CHANNEL_MESSAGES",
    "CLOSED",
    "CONFIGURED",
    "CONNECTING",
    "MIN_KEEPALIVE_INTERVAL",
    "OPENED",
    "REQUESTED",
    "SERVER_CHANNEL_MESSAGES",
    "SETUP_SENT",
    "ChannelRecord",
    "ChannelState",
    "ConnState",
    "ProtocolCore",
    "Role",
]


MIN_KEEPALIVE_INTERVAL = 0.1
"""Seconds between our KEEPALIVEs at least, however short a timeout the peer advertises."""


class Role(Enum):
    """Which side of the connection this protocol object plays."""

    CLIENT = "client"
    SERVER = "server"


class ConnState(Enum):
    """Connection state (§2.2). The server role skips SETUP_SENT."""

    CONNECTING = "CONNECTING"  # nothing sent (client) / no SETUP received (server)
    SETUP_SENT = "SETUP_SENT"  # client: SETUP sent, first AUTH_STATE not yet received
    AWAIT_AUTH = "AWAIT_AUTH"  # auth required, no AUTH outstanding (client: no token yet)
    AUTHORIZING = "AUTHORIZING"  # AUTH sent (client) / received (server), no verdict yet
    AUTHORIZED = "AUTHORIZED"
    CLOSED = "CLOSED"


class ChannelState(Enum):
    """Service channel state (§2.4, §3.2)."""

    REQUESTED = "REQUESTED"
    OPENED = "OPENED"
    CONFIGURED = "CONFIGURED"
    CLOSED = "CLOSED"


_loads = orjson.loads
_UNDECODED = object()  # receive_message: the frame is not JSON (or not str/bytes)

# Module-level aliases compared by identity (``state is AUTHORIZED``), as websockets does.
CONNECTING, SETUP_SENT, AWAIT_AUTH, AUTHORIZING, AUTHORIZED, CLOSED = ConnState
REQUESTED, OPENED, CONFIGURED, CHANNEL_CLOSED = ChannelState
M = MessageType

# Received message types allowed per (role, connection state).
_ANY_STATE = frozenset({M.KEEPALIVE, M.ERROR})
_CLIENT_STARTED = _ANY_STATE | {M.SETUP, M.AUTH_STATE}
CLIENT_CHANNEL_MESSAGES = frozenset(
    {M.CHANNEL_OPENED, M.CHANNEL_CLOSED, M.FEED_CONFIG, M.FEED_DATA}
)
SERVER_CHANNEL_MESSAGES = frozenset(
    {M.CHANNEL_REQUEST, M.CHANNEL_CANCEL, M.FEED_SETUP, M.FEED_SUBSCRIPTION}
)
# §2.2 / JS client: AUTH may be pipelined right after SETUP, before our AUTH_STATE.
_SERVER_UNAUTHORIZED = _ANY_STATE | {M.AUTH}
ALLOWED: dict[tuple[Role, ConnState], frozenset[MessageType]] = {
    (Role.CLIENT, CONNECTING): frozenset(),
    (Role.CLIENT, SETUP_SENT): _CLIENT_STARTED,
    (Role.CLIENT, AWAIT_AUTH): _CLIENT_STARTED | {M.CHANNEL_CLOSED},
    (Role.CLIENT, AUTHORIZING): _CLIENT_STARTED | {M.CHANNEL_CLOSED},
    (Role.CLIENT, AUTHORIZED): _CLIENT_STARTED | CLIENT_CHANNEL_MESSAGES,
    (Role.SERVER, CONNECTING): _ANY_STATE | {M.SETUP},
    (Role.SERVER, AWAIT_AUTH): _SERVER_UNAUTHORIZED,
    (Role.SERVER, AUTHORIZING): _SERVER_UNAUTHORIZED,
    (Role.SERVER, AUTHORIZED): _SERVER_UNAUTHORIZED | SERVER_CHANNEL_MESSAGES,
}
# Channel states each received channel message needs. A message for a channel that we
# already closed is dropped quietly instead: it crossed our CANCEL (or the server's CLOSED).
CHANNEL_ALLOWED: dict[tuple[Role, MessageType], frozenset[ChannelState]] = {
    (Role.CLIENT, M.CHANNEL_OPENED): frozenset({REQUESTED}),
    (Role.CLIENT, M.FEED_CONFIG): frozenset({OPENED, CONFIGURED}),
    (Role.CLIENT, M.FEED_DATA): frozenset({CONFIGURED}),
    (Role.CLIENT, M.CHANNEL_CLOSED): frozenset({REQUESTED, OPENED, CONFIGURED}),
    (Role.SERVER, M.FEED_SETUP): frozenset({OPENED, CONFIGURED}),
    (Role.SERVER, M.FEED_SUBSCRIPTION): frozenset({OPENED, CONFIGURED}),
    (Role.SERVER, M.CHANNEL_CANCEL): frozenset({REQUESTED, OPENED, CONFIGURED}),
}


@dataclass(slots=True)
class ChannelRecord:
    """One service channel's state, shared by both roles (STYLE pattern 2)."""

    number: int
    service: str
    parameters: JsonObject
    state: ChannelState = REQUESTED
    decoder: FeedDecoder = field(default_factory=FeedDecoder)  # merged eventFields (§3.2)
    data_format: DataFormat = DataFormat.COMPACT
    aggregation_period: float | None = None
    announced: set[str] = field(default_factory=set)  # server: types whose fields were sent


class ProtocolCore(ABC):
    """The core both roles share: queues, timers, the allowed-message table, channels."""

    role: Role

    def __init__(
        self,
        *,
        keepalive_timeout: float,
        accept_keepalive_timeout: float,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None,
    ) -> None:
        if not keepalive_timeout > 0 or not accept_keepalive_timeout > 0:
            raise UsageError("keepalive_timeout and accept_keepalive_timeout must be > 0 seconds")
        # The four advertised timeouts (§2.6); every change recomputes the keepalive interval,
        # which receive_message() checks on each frame and so must not rebuild each time.
        self._keepalive_timeout = keepalive_timeout
        self._accept_keepalive_timeout = accept_keepalive_timeout
        self._peer_keepalive_timeout: float | None = None
        self._peer_accept_keepalive_timeout: float | None = None
        self._keepalive_interval = 0.0
        self._refresh_keepalive_interval()
        self.logger = logger or logging.getLogger("pipeline.dxlink.protocol")
        self.debug = self.logger.isEnabledFor(logging.DEBUG)
        self._state = CONNECTING
        self._events: list[ProtocolEvent] = []
        self._outgoing: list[str] = []
        self._channels: dict[int, ChannelRecord] = {}
        self._now = 0.0
        self._started = False
        self._last_sent = 0.0
        self._last_received = 0.0
        # When the driver stopped reading (pause_reading), else None. While paused the
        # peer's silence is not measured: the dead-peer clock counts reading time only.
        self._paused_since: float | None = None

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> ConnState:
        """The connection state."""
        return self._state

    def _set_state(self, state: ConnState) -> None:
        if self.debug:
            self.logger.debug(
                "= %s connection: %s -> %s", self.role.value, self._state.name, state.name
            )
        self._state = state

    def _set_channel_state(self, channel: ChannelRecord, state: ChannelState) -> None:
        if self.debug:
            self.logger.debug(
                "= channel %d: %s -> %s", channel.number, channel.state.name, state.name
            )
        channel.state = state

    def channel_state(self, channel: int) -> ChannelState | None:
        """A channel's state, or ``None`` for a channel never used on this connection."""
        known = self._channels.get(channel)
        return None if known is None else known.state

    def event_fields(self, channel: int) -> dict[str, tuple[str, ...]]:
        """The channel's merged event field lists (client: from FEED_CONFIG; server: sent)."""
        known = self._channels.get(channel)
        return {} if known is None else known.decoder.event_fields

    # -- queues --------------------------------------------------------------------------

    def events_received(self) -> list[ProtocolEvent]:
        """Return the pending events and clear them."""
        events, self._events = self._events, []
        return events

    def messages_to_send(self) -> list[str]:
        """Return the pending outgoing frames (JSON text) and clear them."""
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def _tick(self, now: float | None) -> float:
        if now is not None and now > self._now:
            self._now = now
        return self._now

    def _send(self, message: Message, now: float | None = None) -> None:
        if self._state is CLOSED:
            raise UsageError(f"cannot send {message_type(message)}: the connection is CLOSED")
        self._outgoing.append(encode(message))
        self._last_sent = self._tick(now)
        if self.debug:
            prefix = "%" if isinstance(message, Keepalive) else ">"
            self.logger.debug("%s %s", prefix, message)

    def _emit(self, event: ProtocolEvent) -> None:
        self._events.append(event)

    # -- timers (§2.6) -------------------------------------------------------------------

    @property
    def keepalive_timeout(self) -> float:
        """Seconds we promise never to stay silent longer than (our SETUP, §2.6)."""
        return self._keepalive_timeout

    @keepalive_timeout.setter
    def keepalive_timeout(self, seconds: float) -> None:
        self._keepalive_timeout = seconds
        self._refresh_keepalive_interval()

    @property
    def accept_keepalive_timeout(self) -> float:
        """Seconds we would like the peer to advertise (our SETUP, §2.6)."""
        return self._accept_keepalive_timeout

    @accept_keepalive_timeout.setter
    def accept_keepalive_timeout(self, seconds: float) -> None:
        self._accept_keepalive_timeout = seconds
        self._refresh_keepalive_interval()

    @property
    def peer_keepalive_timeout(self) -> float | None:
        """The peer's advertised keepaliveTimeout, once its SETUP arrived."""
        return self._peer_keepalive_timeout

    @peer_keepalive_timeout.setter
    def peer_keepalive_timeout(self, seconds: float | None) -> None:
        self._peer_keepalive_timeout = seconds
        self._refresh_keepalive_interval()

    @property
    def peer_accept_keepalive_timeout(self) -> float | None:
        """The peer's advertised acceptKeepaliveTimeout, once its SETUP arrived."""
        return self._peer_accept_keepalive_timeout

    @peer_accept_keepalive_timeout.setter
    def peer_accept_keepalive_timeout(self, seconds: float | None) -> None:
        self._peer_accept_keepalive_timeout = seconds
        self._refresh_keepalive_interval()

    @property
    def keepalive_interval(self) -> float:
        """Send something at least this often: min(all advertised timeouts) / 2 (§2.6)."""
        return self._keepalive_interval

    def _refresh_keepalive_interval(self) -> None:
        advertised = [self._keepalive_timeout, self._accept_keepalive_timeout]
        advertised += [
            t
            for t in (self._peer_keepalive_timeout, self._peer_accept_keepalive_timeout)
            if t and t > 0
        ]
        # A peer advertising 1e-9 s must not make us send KEEPALIVEs in a tight loop.
        self._keepalive_interval = max(min(advertised) / 2, MIN_KEEPALIVE_INTERVAL)

    @property
    @abstractmethod
    def dead_peer_timeout(self) -> float:
        """Silence after which the peer counts as dead (each role has its rule, §2.6)."""

    @property
    def reading_paused(self) -> bool:
        """Whether the driver said it stopped reading (``pause_reading``)."""
        return self._paused_since is not None

    def pause_reading(self, now: float) -> None:
        """The driver stops reading frames (a slow consumer's back-pressure). Idempotent.

        Keepalives keep going out on time, but the dead-peer timer stops: frames the peer
        sends now wait unread in the transport, so its silence cannot be judged (§2.6).
        """
        if self._paused_since is None:
            self._paused_since = self._tick(now)

    def resume_reading(self, now: float) -> None:
        """The driver reads frames again. Idempotent.

        The paused span is left out of the peer's silence, so the peer counts as dead only
        after ``dead_peer_timeout`` seconds *of reading* without a frame (§2.6).
        """
        if self._paused_since is None:
            return
        now = self._tick(now)
        # A frame the driver still fed us while paused means no silence at all (never later
        # than now).
        self._last_received = min(now, self._last_received + (now - self._paused_since))
        self._paused_since = None

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must run next, or ``None`` when no timer is armed."""
        if not self._started or self._state is CLOSED:
            return None
        keepalive_due = self._last_sent + self.keepalive_interval
        if self._paused_since is not None:
            return keepalive_due  # no dead-peer deadline while not reading
        return min(keepalive_due, self._last_received + self.dead_peer_timeout)

    def handle_timer(self, now: float) -> None:
        """Fire whatever is due at ``now``: a KEEPALIVE, or ``PeerTimedOut`` (§2.6).

        The KEEPALIVE never depends on receiving; ``PeerTimedOut`` needs
        ``dead_peer_timeout`` seconds of silence counted while reading.
        """
        self._tick(now)
        if not self._started or self._state is CLOSED:
            return
        silence = self.peer_silence(now)
        if silence >= self.dead_peer_timeout:
            self.logger.warning("! no message from the peer for %.1f s; giving up", silence)
            self._send(
                Error(ErrorCode.TIMEOUT, f"No keepalive received for {round(silence * 1000)}ms"),
                now,
            )
            self._emit(PeerTimedOut(silence))
            self._set_state(CLOSED)
            return
        self._keepalive_if_due(now)

    def peer_silence(self, now: float) -> float:
        """Seconds of reading without a frame from the peer, as of ``now`` (§2.6).

        Time while reading was paused does not count; during a pause the figure is the
        silence measured up to the pause.
        """
        until = now if self._paused_since is None else self._paused_since
        return max(0.0, until - self._last_received)

    def _keepalive_if_due(self, now: float) -> None:
        due = now - self._last_sent >= self.keepalive_interval
        if due and self._started and self._state is not CLOSED:
            self._send(Keepalive(), now)

    def _start_timers(self, now: float) -> None:
        self._started = True
        self._last_sent = self._last_received = self._tick(now)

    def close(self) -> None:
        """Mark the connection lost: timers stop, actions raise, frames are ignored."""
        if self._state is not CLOSED:
            self._set_state(CLOSED)

    # -- receiving -----------------------------------------------------------------------

    def receive_message(self, frame: str | bytes, now: float) -> None:
        """Feed one received frame. Never raises; results go to ``events_received()``."""
        if now is not None and now > self._now:  # _tick(), inlined: this runs per frame
            self._now = now
        if self._state is CLOSED:
            if self.debug:
                self.logger.debug("< ignored after close: %r", frame[:80])
            return
        if not self._started:
            self._start_timers(now)
        self._last_received = self._now
        decoded: object = _UNDECODED
        if frame.__class__ is str or frame.__class__ is bytes:
            try:  # noqa: SIM105 (suppress() costs a context manager per frame)
                decoded = _loads(frame)
            except ValueError:  # orjson.JSONDecodeError; parse() below words the reason
                pass
        if decoded.__class__ is dict and not self.debug:
            try:
                handled = self._receive_fast(decoded)
            except Exception:  # a bug of ours: the full path below still handles the frame
                self.logger.exception("! bug in the fast path; taking the full path")
                handled = False
            if handled:
                if self._now - self._last_sent >= self._keepalive_interval:
                    self._keepalive_if_due(self._now)
                return
        # Bad frames are logged at debug only: they become events, and the driver counts and
        # reports them (a server spraying junk must not flood the log).
        try:
            message = parse(frame) if decoded is _UNDECODED else parse_object(decoded, frame)
        except InvalidMessage as exc:
            if self.debug:
                self.logger.debug("! invalid message: %s", exc)
            self._emit(InvalidMessageReceived(exc))
            return
        if self.debug:
            self.logger.debug("%s %s", "%" if isinstance(message, Keepalive) else "<", message)
        try:
            self._check_allowed(message)
            self._dispatch(message)
        except InvalidMessage as exc:
            if self.debug:
                self.logger.debug("! invalid message: %s", exc)
            self._emit(InvalidMessageReceived(exc))
        except ProtocolViolation as exc:
            if self.debug:
                self.logger.debug("! protocol violation: %s", exc)
            self._on_violation(message, exc)
        except Exception as exc:  # a bug of ours: still never raise into the driver (§2.1)
            self.logger.exception("! bug while handling %s", message_type(message))
            violation = ProtocolViolation(
                f"internal error handling {message_type(message)}: {type(exc).__name__}"
            )
            violation.__cause__ = exc
            self._emit(ViolationReceived(violation, message_type(message)))
        self._keepalive_if_due(self._now)

    def _receive_fast(self, decoded: JsonObject) -> bool:
        """Handle a decoded frame without building its message model, if it is one we can.

        The role's per-frame hot path. It must take only frames whose outcome equals the
        full path's (parse, the ALLOWED tables, ``_dispatch``) and return False for anything
        else, untouched, so the full path words every error. By default it takes nothing.
        """
        return False

    def _check_allowed(self, message: Message) -> None:
        kind = message_type(message)
        if kind not in ALLOWED.get((self.role, self._state), frozenset()):
            raise ProtocolViolation(
                f"{kind} not allowed for {self.role.value} in {self._state.name}"
            )

    def _channel_for(self, kind: MessageType, number: int) -> ChannelRecord | None:
        """The channel a received channel message is for, or None to drop it quietly."""
        channel = self._channels.get(number)
        if channel is None:
            raise ProtocolViolation(f"{kind} for unknown channel {number} ({self.role.value})")
        if channel.state is CHANNEL_CLOSED:
            if self.debug:
                self.logger.debug("< %s for closed channel %d dropped", kind, number)
            return None
        allowed = CHANNEL_ALLOWED[(self.role, kind)]
        if channel.state not in allowed:
            raise ProtocolViolation(
                f"{kind} not allowed for {self.role.value} on channel {number} "
                f"in {channel.state.name}"
            )
        return channel

    def _on_violation(self, message: Message, error: ProtocolViolation) -> None:
        self._emit(ViolationReceived(error, message_type(message)))

    def _on_error(self, message: Error) -> None:
        self.logger.warning(
            "! peer error %s on channel %d: %.200s", message.error, message.channel, message.message
        )
        self._emit(
            ErrorReceived(server_error(message.error, message.message, channel=message.channel))
        )

    @abstractmethod
    def _dispatch(self, message: Message) -> None:
        """Apply an allowed received message: update state, emit events, queue replies."""

    def _require(self, allowed: set[ConnState], action: str) -> None:
        if self._state not in allowed:
            raise UsageError(f"cannot {action} in {self._state.name}")

    def _known_channel(self, number: int, allowed: set[ChannelState], action: str) -> ChannelRecord:
        channel = self._channels.get(number)
        if channel is None:
            raise UsageError(f"cannot {action}: channel {number} is not open on this connection")
        if channel.state not in allowed:
            raise UsageError(f"cannot {action}: channel {number} is {channel.state.name}")
        return channel
