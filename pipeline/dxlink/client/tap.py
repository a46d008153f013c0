"""The client's frame tap: one narrow interface to see every frame in and out.

``DXLinkManager(frame_tap=...)`` hands every connection's WebSocket frames to an observer,
e.g. :class:`pipeline.recording.Recorder`. The connection calls :meth:`FrameTap.connection`
once its WebSocket is open, then the returned :class:`ConnectionTap` with each frame as it is
received (before the protocol sees it) and as it was sent, and once when the connection ends.

Every call runs on the socket reader's path: it must return at once and never raise (queue
the work elsewhere). The client passes the token it authenticates with as a secret, so the
observer can keep it out of whatever it writes.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ConnectionTap", "FrameTap"]


class ConnectionTap(Protocol):
    """One connection's frames (see the module docstring)."""

    def received(self, frame: str | bytes) -> None:
        """A frame arrived from the server (text, as bytes or str)."""

    def sent(self, frame: str) -> None:
        """A frame was sent to the server."""

    def closed(self, reason: str) -> None:
        """The connection ended; ``reason`` as the client logs it (no secrets)."""


class FrameTap(Protocol):
    """Sees every connection of a client (see the module docstring)."""

    def connection(self, url: str, *, attempt: int, secrets: tuple[str, ...]) -> ConnectionTap:
        """A WebSocket to ``url`` (no credentials or query) opened after ``attempt`` failed
        attempts; ``secrets`` are values that must never be written anywhere."""
