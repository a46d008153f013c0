"""DXLink message models: the message types, enums and one frozen dataclass per message (§2.3).

Attribute names are snake_case, the wire keys camelCase (``keepaliveTimeout``,
``acceptEventFields``, ``fromTime``); ``messages.py`` maps between the two (``parse``,
``encode``) and re-exports every name here, so import them from there.

Connection-level messages (SETUP, AUTH, AUTH_STATE, KEEPALIVE) live on channel 0 and have no
``channel`` attribute; channel messages require a channel > 0; ERROR may be on either (§2.1).

No I/O, no clock. Tokens never appear in a repr or str.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

__all__ = [
    "MAX_LOG_SIZE",
    "Auth",
    "AuthState",
    "AuthStateValue",
    "ChannelCancel",
    "ChannelClosed",
    "ChannelOpened",
    "ChannelRequest",
    "Contract",
    "DataFormat",
    "Error",
    "ErrorCode",
    "FeedConfig",
    "FeedData",
    "FeedSetup",
    "FeedSubscription",
    "JsonObject",
    "Keepalive",
    "Message",
    "MessageType",
    "Setup",
    "SubscriptionItem",
]

JsonObject: TypeAlias = dict[str, Any]
"""A decoded JSON object (``parameters`` and FULL events)."""

MAX_LOG_SIZE = 120
"""Longest excerpt of a frame put into logs and InvalidMessage texts (websockets' idea)."""


class MessageType(StrEnum):
    """§2.3 message types."""

    SETUP = "SETUP"
    AUTH = "AUTH"
    AUTH_STATE = "AUTH_STATE"
    KEEPALIVE = "KEEPALIVE"
    CHANNEL_REQUEST = "CHANNEL_REQUEST"
    CHANNEL_OPENED = "CHANNEL_OPENED"
    CHANNEL_CANCEL = "CHANNEL_CANCEL"
    CHANNEL_CLOSED = "CHANNEL_CLOSED"
    FEED_SETUP = "FEED_SETUP"
    FEED_CONFIG = "FEED_CONFIG"
    FEED_SUBSCRIPTION = "FEED_SUBSCRIPTION"
    FEED_DATA = "FEED_DATA"
    ERROR = "ERROR"


class ErrorCode(StrEnum):
    """§2.7 ERROR codes. Received codes outside this list are kept as plain strings."""

    UNSUPPORTED_PROTOCOL = "UNSUPPORTED_PROTOCOL"
    TIMEOUT = "TIMEOUT"
    UNAUTHORIZED = "UNAUTHORIZED"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    BAD_ACTION = "BAD_ACTION"
    UNKNOWN = "UNKNOWN"


class DataFormat(StrEnum):
    """§3.3/§3.4 FEED_DATA formats."""

    FULL = "FULL"
    COMPACT = "COMPACT"


class Contract(StrEnum):
    """§3.1 FEED channel contracts."""

    TICKER = "TICKER"
    STREAM = "STREAM"
    HISTORY = "HISTORY"
    AUTO = "AUTO"


class AuthStateValue(StrEnum):
    """§2.3 AUTH_STATE ``state`` values."""

    AUTHORIZED = "AUTHORIZED"
    UNAUTHORIZED = "UNAUTHORIZED"


@dataclass(frozen=True, slots=True)
class Setup:
    """SETUP (C,S; channel 0). Timeouts are in seconds (§2.6)."""

    version: str
    keepalive_timeout: float | None = None
    accept_keepalive_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH (C; channel 0). The token never shows in repr or str."""

    token: str

    def __repr__(self) -> str:
        return "Auth(token=<hidden>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class AuthState:
    """AUTH_STATE (S; channel 0); tastytrade adds ``userId`` when AUTHORIZED."""

    state: AuthStateValue
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class Keepalive:
    """KEEPALIVE (C,S; channel 0): the filler when a side has nothing else to say (§2.6)."""


@dataclass(frozen=True, slots=True)
class ChannelRequest:
    """CHANNEL_REQUEST (C). FEED requires ``parameters["contract"]`` (§3.1)."""

    channel: int
    service: str
    parameters: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """CHANNEL_OPENED (S): echoes the request's parameters, may add keys (``subFormat``)."""

    channel: int
    service: str
    parameters: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChannelCancel:
    """CHANNEL_CANCEL (C)."""

    channel: int


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """CHANNEL_CLOSED (S): reply to CANCEL or the server closing on its own."""

    channel: int


@dataclass(frozen=True, slots=True)
class FeedSetup:
    """FEED_SETUP (C): preferences only; FEED_CONFIG is authoritative (§3.2)."""

    channel: int
    accept_aggregation_period: float | None = None
    accept_data_format: DataFormat | None = None
    accept_event_fields: dict[str, tuple[str, ...]] | None = None


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """FEED_CONFIG (S). ``event_fields`` may be missing and arrive lazily (§3.2)."""

    channel: int
    aggregation_period: float
    data_format: DataFormat
    event_fields: dict[str, tuple[str, ...]] | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionItem:
    """One FEED_SUBSCRIPTION item; Candle items carry ``from_time`` (ms), even in remove."""

    type: str
    symbol: str
    from_time: int | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class FeedSubscription:
    """FEED_SUBSCRIPTION (C): applied as reset, then remove, then add (§2.3)."""

    channel: int
    add: tuple[SubscriptionItem, ...] = ()
    remove: tuple[SubscriptionItem, ...] = ()
    reset: bool = False


@dataclass(frozen=True, slots=True)
class FeedData:
    """FEED_DATA (S). ``data`` is the raw COMPACT or FULL array (§3.3, §3.4).

    Decode it with the channel's field lists (``feed_codec.FeedDecoder``).
    """

    channel: int
    data: list[Any]

    @property
    def data_format(self) -> DataFormat:
        """COMPACT when ``data[0]`` is a type name, FULL when it is an object (§3.4)."""
        return DataFormat.COMPACT if isinstance(self.data[0], str) else DataFormat.FULL

    def __str__(self) -> str:
        """Log-safe summary: type(s), count, first symbol."""
        if self.data_format is DataFormat.FULL:
            types = dict.fromkeys(event.get("eventType", "?") for event in self.data)
            symbol = self.data[0].get("eventSymbol", "?")
            summary = f"{'+'.join(map(str, types))} x{len(self.data)} events"
        else:
            names = self.data[0::2]
            values = [value for group in self.data[1::2] for value in group]
            symbol = next(
                (
                    value
                    for value in values
                    if isinstance(value, str)
                    and value not in names
                    and value not in ("NaN", "Infinity", "-Infinity")
                ),
                "?",
            )
            summary = f"{'+'.join(names)} x{len(values)} values"
        text = f"FEED_DATA channel {self.channel}: {summary}, first {symbol}"
        return text if len(text) <= MAX_LOG_SIZE else text[: MAX_LOG_SIZE - 3] + "..."


@dataclass(frozen=True, slots=True)
class Error:
    """ERROR (C,S): informational, no reply expected (§2.7). ``channel`` 0 = connection."""

    error: str
    message: str = ""
    channel: int = 0


Message: TypeAlias = (
    Setup
    | Auth
    | AuthState
    | Keepalive
    | ChannelRequest
    | ChannelOpened
    | ChannelCancel
    | ChannelClosed
    | FeedSetup
    | FeedConfig
    | FeedSubscription
    | FeedData
    | Error
)
