"""The DXLink client's WebSocket: how it is opened, and keeping secrets out of its logs.

websockets settings (storage-and-libs.md §4): ``max_size`` raised to 16 MiB (a history
snapshot can exceed the 1 MiB default, which would close with 1009), ``close_timeout`` short
(2 s: a dead server must not hold a reconnect for 10 s), library auto-reconnect not used (the
supervisor is the only retry loop), and **WebSocket pings off** (``ping_interval=None``): the
protocol's KEEPALIVE plus the dead-peer timer are the liveness check, as in tastytrade's own
clients; pings would add a second, inconsistent timeout, and while a slow consumer holds the
reader, unread pongs would make websockets close a healthy connection with 1011.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import connect

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "HideSecrets", "loggable_url", "open_websocket"]

# 16 MiB: a candle history snapshot can exceed websockets' 1 MiB default (storage-and-libs §4).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 2**20
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_REQUEST_LINE = "> GET %s HTTP/1.1"  # websockets' client logs the request line with this


class HideSecrets(logging.Filter):
    """websockets logs every frame and header at DEBUG: hide AUTH frames (the token),
    credential headers (user info in the URL becomes ``Authorization: Basic``) and the query
    of the request line (``GET /realtime?token=...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` so it carries no secret; never drops it."""
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
            record.args = (args[0], "<hidden>")
        elif record.msg == _REQUEST_LINE and isinstance(args, tuple) and len(args) == 1:
            path, query, _ = str(args[0]).partition("?")
            record.args = (path + ("?<hidden>" if query else ""),)
        elif '"AUTH"' in record.getMessage():
            record.msg, record.args = "%s AUTH frame (token hidden)", (str(record.msg)[:1],)
        return True


# The logger handed to websockets; its filter keeps secrets out of its debug logs.
_ws_logger = logging.getLogger("pipeline.dxlink.client.websocket")
_ws_logger.addFilter(HideSecrets())


def open_websocket(
    url: str, *, open_timeout: float, close_timeout: float, max_size: int
) -> connect:
    """``async with open_websocket(...) as ws``: the client's connection with the settings above."""
    return connect(
        url,
        open_timeout=open_timeout,
        close_timeout=close_timeout,
        ping_interval=None,  # protocol KEEPALIVE is the liveness check (module docstring)
        max_size=max_size,
        logger=_ws_logger,
    )


def loggable_url(url: str) -> str:
    """``url`` without user info, query or fragment, which could carry credentials.

    Every URL that reaches a log line, an error or a metric goes through this; a URL that
    does not parse becomes ``(malformed URL)`` rather than being shown as it is.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(malformed URL)"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
