"""Exceptions raised by candle-pipeline's DXLink layer.

The hierarchy, modelled on websockets' ``exceptions.py``::

    DXLinkError                      root of everything below
    ├── ProtocolViolation            the peer sent something illegal or garbled (reconnect)
    │   └── InvalidMessage           a frame that is not a valid DXLink message (counted, skipped)
    ├── ServerError(code, message)   an ERROR message from the server (§2.7)
    │   ├── UnsupportedProtocol      UNSUPPORTED_PROTOCOL: fatal, fix the version
    │   ├── ServerTimeout            TIMEOUT: transient, reconnect
    │   ├── Unauthorized             UNAUTHORIZED: fetch a new token, then reconnect
    │   ├── ServerInvalidMessage     INVALID_MESSAGE: the server could not parse ours
    │   ├── BadAction                BAD_ACTION: handled per subscription batch
    │   └── UnknownServerError       UNKNOWN
    ├── AuthenticationError          the token was rejected or could not be obtained
    ├── ConfigurationError           bad settings: fatal, the message says what to fix
    └── UsageError                   our own caller misused the API: a bug, never retried

``ConnectionError`` (the builtin) is what ``DXLinkManager`` raises when a configured maximum
of reconnect attempts is exhausted; its ``__cause__`` is the last failure.

Messages never contain tokens or other secrets.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BadAction",
    "ConfigurationError",
    "DXLinkError",
    "InvalidMessage",
    "ProtocolViolation",
    "ServerError",
    "ServerInvalidMessage",
    "ServerTimeout",
    "Unauthorized",
    "UnknownServerError",
    "UnsupportedProtocol",
    "UsageError",
    "server_error",
]


class DXLinkError(Exception):
    """Root of candle-pipeline's DXLink exceptions."""


class ProtocolViolation(DXLinkError):
    """The peer sent something the protocol does not allow in the current state."""


class InvalidMessage(ProtocolViolation):
    """A frame that is not a valid DXLink message; ``reason`` says exactly what is wrong."""

    def __init__(self, reason: str, excerpt: str = "") -> None:
        self.reason = reason
        self.excerpt = excerpt
        super().__init__(f"{reason}: {excerpt}" if excerpt else reason)


class ServerError(DXLinkError):
    """An ERROR message (§2.7). ``channel`` 0 is connection-level."""

    code = "UNKNOWN"

    def __init__(self, message: str, *, channel: int = 0, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        self.message = message
        self.channel = channel
        super().__init__(f"server error {self.code} on channel {channel}: {message}")


class UnsupportedProtocol(ServerError):
    code = "UNSUPPORTED_PROTOCOL"


class ServerTimeout(ServerError):
    code = "TIMEOUT"


class Unauthorized(ServerError):
    code = "UNAUTHORIZED"


class ServerInvalidMessage(ServerError):
    code = "INVALID_MESSAGE"


class BadAction(ServerError):
    code = "BAD_ACTION"


class UnknownServerError(ServerError):
    code = "UNKNOWN"


_BY_CODE: dict[str, type[ServerError]] = {
    cls.code: cls
    for cls in (
        UnsupportedProtocol,
        ServerTimeout,
        Unauthorized,
        ServerInvalidMessage,
        BadAction,
        UnknownServerError,
    )
}


def server_error(code: str, message: str, *, channel: int = 0) -> ServerError:
    """Build the ``ServerError`` subclass for an ERROR code; unknown codes keep their text."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return UnknownServerError(message, channel=channel, code=code)
    return cls(message, channel=channel)


class AuthenticationError(DXLinkError):
    """The DXLink token was rejected, or a new one could not be obtained."""


class ConfigurationError(DXLinkError):
    """Settings that cannot work; the message names the setting and what is allowed."""


class UsageError(DXLinkError, AssertionError):
    """The API was misused by its caller. This is a bug in the caller; never retried."""
