"""What a failure of the DXLink client means: retry, refresh the token, or stop (STYLE.md 6).

The supervisor (``supervisor.py``) is the only retry loop; everything else raises. This
module decides, in one place, what each failure means:

* :func:`classify` maps an exception to ``RETRY`` (reconnect after a backoff),
  ``REFRESH_TOKEN`` (fetch a new token, then reconnect) or ``FATAL`` (stop with an error that
  says what to fix); :func:`disconnect_reason` names it for the metrics;
* :func:`explain_fatal` and :func:`fatal_error` turn a FATAL failure into what to fix.

When to retry is :mod:`pipeline.dxlink.pacing` (the backoff delays), which knows nothing of
websockets; this module is the client's, since it sorts websockets' own exceptions.
"""

from __future__ import annotations

from enum import StrEnum

from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import CloseCode

from pipeline.dxlink.client.metrics import DisconnectReason
from pipeline.dxlink.client.transport import loggable_url
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

__all__ = [
    "Action",
    "HandshakeTimeout",
    "PeerTimeout",
    "classify",
    "describe",
    "disconnect_reason",
    "explain_fatal",
    "fatal_error",
    "message_too_big",
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


def message_too_big(exc: BaseException) -> bool:
    """Whether *we* closed with 1009: the server sent a message over ``max_message_size``.

    (The server may echo our close code; what counts is who closed first.)
    """
    return (
        isinstance(exc, ConnectionClosed)
        and exc.sent is not None
        and exc.sent.code == CloseCode.MESSAGE_TOO_BIG
        and not (exc.rcvd is not None and exc.rcvd_then_sent)
    )


def classify(exc: BaseException) -> Action:
    """Decide what a failure means; the one place errors are sorted (STYLE.md pattern 6).

    * transient → RETRY: network errors (``OSError``), timeouts (a silent server, a slow
      handshake), any WebSocket close (a clean 1000/1001 close too: the feed must go on),
      server ERROR TIMEOUT / UNKNOWN / INVALID_MESSAGE / BAD_ACTION on channel 0, a server
      message that breaks the protocol, a server message over ``max_message_size`` (we
      close with 1009: one bad frame must not stop ingest), HTTP 408/429/5xx at the upgrade;
    * auth → REFRESH_TOKEN: ERROR UNAUTHORIZED, AUTH_STATE UNAUTHORIZED after AUTH
      (raised as :class:`~pipeline.dxlink.errors.Unauthorized`), HTTP 401/403;
    * fatal → FATAL: UNSUPPORTED_PROTOCOL, bad configuration or usage, a token source that
      cannot log in (``AuthenticationError``, unless it marks itself ``transient``: then
      RETRY), the server's close 1009 (our subscription frame was over its limit: retrying
      would resend it), an invalid URL or other HTTP statuses, and anything unexpected (a
      bug must surface, not loop).
    """
    if isinstance(exc, Unauthorized):
        return Action.REFRESH_TOKEN
    if isinstance(exc, UnsupportedProtocol | ConfigurationError | UsageError):
        return Action.FATAL
    if isinstance(exc, ServerError | ProtocolViolation):
        return Action.RETRY
    if isinstance(exc, AuthenticationError):
        # The token source's own failures: a rejected login is fatal, but a network error or
        # HTTP 5xx/429 on the REST call says so with ``transient`` (pipeline/ingest/tastytrade.py).
        return Action.RETRY if getattr(exc, "transient", False) else Action.FATAL
    if isinstance(exc, ConnectionClosed):
        if message_too_big(exc):
            return Action.RETRY
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
    if message_too_big(exc):
        return DisconnectReason.MESSAGE_TOO_BIG
    if isinstance(exc, HandshakeTimeout):
        return DisconnectReason.HANDSHAKE_TIMEOUT
    if isinstance(exc, ConnectionClosedOK):
        return DisconnectReason.SERVER_CLOSED
    return DisconnectReason.CONNECTION_LOST


def explain_fatal(exc: BaseException, *, max_batch_bytes: int, max_message_size: int) -> str:
    """Return what to fix for a FATAL failure, in one secret-free sentence."""
    if isinstance(exc, ConnectionClosed) and _close_code(exc) == CloseCode.MESSAGE_TOO_BIG:
        if not message_too_big(exc):
            return (
                "the server closed the connection with 1009 (message too big): a "
                f"subscription frame exceeded its limit; lower max_batch_bytes "
                f"(now {max_batch_bytes})"
            )
        return (
            f"a server message exceeded client.max_message_size ({max_message_size} bytes); "
            "the connection was dropped and is re-established: raise client.max_message_size "
            "if the server's history snapshots are that large"
        )
    if isinstance(exc, UnsupportedProtocol):
        return f"the server does not accept our protocol version: {exc.message}"
    if isinstance(exc, InvalidStatus):
        return (
            f"the WebSocket upgrade was refused with HTTP {exc.response.status_code}; "
            "check the dxlink URL"
        )
    if isinstance(exc, InvalidURI):
        return f"the dxlink URL {loggable_url(exc.uri)!r} is not a ws:// or wss:// URL"
    if isinstance(exc, DXLinkError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc} (a bug: please report it)"


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a failure for logs and metrics."""
    # websockets puts the whole URL, credentials included, in InvalidURI's text.
    text = f"{loggable_url(exc.uri)} is not a valid URI" if isinstance(exc, InvalidURI) else ""
    text = text or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def fatal_error(exc: BaseException, max_batch_bytes: int, max_message_size: int) -> BaseException:
    """The error a FATAL failure ends the manager with: what to fix, with the cause chained."""
    if isinstance(exc, ConnectionClosed | InvalidStatus | InvalidURI):
        return ConfigurationError(
            explain_fatal(exc, max_batch_bytes=max_batch_bytes, max_message_size=max_message_size)
        )
    return exc  # DXLink errors already say what to fix; anything else is a bug: keep it
