"""Events that ``ClientProtocol`` and ``ServerProtocol`` hand to their drivers.

Each is a small frozen dataclass; the driver collects them with ``events_received()``.
The package's face (:mod:`pipeline.dxlink`) exports all of them, so import from there.
Tokens never appear in a repr.

Client role: ServerSetup, Authorized, AuthRejected, ChannelOpened, ChannelClosed,
FeedConfigured, CandlesReceived, EventsReceived.
Server role: ClientSetup, AuthRequested, ChannelRequested, FeedSetupRequested,
SubscriptionRequested, ChannelCancelled, KeepaliveReceived.
Both roles: ErrorReceived, InvalidMessageReceived, ViolationReceived, PeerTimedOut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from pipeline.dxlink.errors import InvalidMessage, ProtocolViolation, ServerError
from pipeline.dxlink.events import Candle
from pipeline.dxlink.message_models import DataFormat, JsonObject, MessageType, SubscriptionItem

__all__ = [
    "AuthRejected",
    "AuthRequested",
    "Authorized",
    "CandlesReceived",
    "ChannelCancelled",
    "ChannelClosed",
    "ChannelOpened",
    "ChannelRequested",
    "ClientSetup",
    "ErrorReceived",
    "EventsReceived",
    "FeedConfigured",
    "FeedSetupRequested",
    "InvalidMessageReceived",
    "KeepaliveReceived",
    "PeerTimedOut",
    "ProtocolEvent",
    "ServerSetup",
    "SubscriptionRequested",
    "ViolationReceived",
]


@dataclass(frozen=True, slots=True)
class ServerSetup:
    """The server's SETUP arrived (§2.2); timeouts in seconds, None when not advertised."""

    version: str
    keepalive_timeout: float | None
    accept_keepalive_timeout: float | None


@dataclass(frozen=True, slots=True)
class Authorized:
    """AUTH_STATE AUTHORIZED: channels may be opened now (§2.2)."""

    user_id: str | None


@dataclass(frozen=True, slots=True)
class AuthRejected:
    """A later AUTH_STATE UNAUTHORIZED: the token was rejected or revoked (§2.2).

    The protocol forgets the token; ``set_token()`` sends AUTH again with a new one.
    """


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """CHANNEL_OPENED for a channel we requested; ``parameters`` as the server echoed them."""

    channel: int
    parameters: JsonObject


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """CHANNEL_CLOSED: the reply to our cancel, or the server closing the channel itself."""

    channel: int


@dataclass(frozen=True, slots=True)
class FeedConfigured:
    """FEED_CONFIG arrived; ``event_fields`` is the channel's merged field lists (§3.2)."""

    channel: int
    aggregation_period: float
    data_format: DataFormat
    event_fields: dict[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class CandlesReceived:
    """Decoded Candle events of one FEED_DATA type/values pair, in arrival order.

    ``candles`` is a list, or for a large frame a
    :class:`~pipeline.dxlink.candle_block.CandleBlock` (the same events as columns).
    """

    channel: int
    candles: Sequence[Candle]


@dataclass(frozen=True, slots=True)
class EventsReceived:
    """Decoded events of a non-Candle type, as dicts."""

    channel: int
    event_type: str
    events: list[JsonObject]


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """An ERROR message from the peer (§2.7); ``error.channel`` is 0 for connection level."""

    error: ServerError


@dataclass(frozen=True, slots=True)
class InvalidMessageReceived:
    """A garbled frame or undecodable FEED_DATA pair: counted and skipped, never fatal."""

    error: InvalidMessage


@dataclass(frozen=True, slots=True)
class ViolationReceived:
    """A well-formed message that is not allowed in the current state.

    ``message_type`` is the offending message's type, for counting and logging by type.
    """

    error: ProtocolViolation
    message_type: MessageType


@dataclass(frozen=True, slots=True)
class PeerTimedOut:
    """Nothing was received for ``silence_seconds`` (§2.6): the driver should reconnect."""

    silence_seconds: float


@dataclass(frozen=True, slots=True)
class ClientSetup:
    """The client's SETUP arrived; the server answers with ``send_setup()``."""

    version: str
    keepalive_timeout: float | None
    accept_keepalive_timeout: float | None


@dataclass(frozen=True, slots=True)
class AuthRequested:
    """AUTH arrived; the server answers with ``send_auth_state()``. The token is hidden."""

    token: str

    def __repr__(self) -> str:
        return "AuthRequested(token=<hidden>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class ChannelRequested:
    """CHANNEL_REQUEST arrived; the server answers with ``open_channel()``."""

    channel: int
    service: str
    parameters: JsonObject


@dataclass(frozen=True, slots=True)
class FeedSetupRequested:
    """FEED_SETUP arrived; the server answers with ``configure_feed()``."""

    channel: int
    accept_aggregation_period: float | None
    accept_data_format: DataFormat | None
    accept_event_fields: dict[str, tuple[str, ...]] | None


@dataclass(frozen=True, slots=True)
class SubscriptionRequested:
    """FEED_SUBSCRIPTION arrived; apply reset, then remove, then add (§2.3)."""

    channel: int
    add: tuple[SubscriptionItem, ...]
    remove: tuple[SubscriptionItem, ...]
    reset: bool


@dataclass(frozen=True, slots=True)
class ChannelCancelled:
    """CHANNEL_CANCEL arrived; the server has already queued CHANNEL_CLOSED."""

    channel: int


@dataclass(frozen=True, slots=True)
class KeepaliveReceived:
    """A KEEPALIVE arrived (server role only; for fault-injection tests and metrics)."""


ProtocolEvent: TypeAlias = (
    ServerSetup
    | Authorized
    | AuthRejected
    | ChannelOpened
    | ChannelClosed
    | FeedConfigured
    | CandlesReceived
    | EventsReceived
    | ErrorReceived
    | InvalidMessageReceived
    | ViolationReceived
    | PeerTimedOut
    | ClientSetup
    | AuthRequested
    | ChannelRequested
    | FeedSetupRequested
    | SubscriptionRequested
    | ChannelCancelled
    | KeepaliveReceived
)
