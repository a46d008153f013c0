"""The reconnecting DXLink client: ``DXLinkManager`` and what it reports.

The asyncio driver of the sans-I/O protocol in :mod:`pipeline.dxlink`: ``manager``
(``DXLinkManager``: settings, subscriptions, the candle stream, ``get_metrics``), the only
retry loop (``supervisor``), one connection's reader pump and ticker (``connection``), how
the WebSocket is opened (``transport``), what they share (``state``), what a failure means
(``retry``), the counters and lifecycle events (``metrics``) and the frame tap a recorder
plugs into (``tap``).
"""

from __future__ import annotations

from pipeline.dxlink.client.manager import DXLinkManager
from pipeline.dxlink.client.metrics import (
    Backpressure,
    ChannelMetrics,
    Connected,
    ConnectionMetrics,
    ConnectionState,
    DeliveryMetrics,
    Disconnected,
    DisconnectReason,
    LifecycleEvent,
    SnapshotComplete,
    Stopped,
)
from pipeline.dxlink.client.retry import (
    Action,
    HandshakeTimeout,
    PeerTimeout,
    classify,
    disconnect_reason,
)
from pipeline.dxlink.client.state import EventBatch, QuoteToken, ResumePoints, TokenSource
from pipeline.dxlink.client.tap import ConnectionTap, FrameTap
from pipeline.dxlink.client.transport import DEFAULT_MAX_MESSAGE_SIZE, loggable_url, open_websocket

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Action",
    "Backpressure",
    "ChannelMetrics",
    "Connected",
    "ConnectionMetrics",
    "ConnectionState",
    "ConnectionTap",
    "DXLinkManager",
    "DeliveryMetrics",
    "DisconnectReason",
    "Disconnected",
    "EventBatch",
    "FrameTap",
    "HandshakeTimeout",
    "LifecycleEvent",
    "PeerTimeout",
    "QuoteToken",
    "ResumePoints",
    "SnapshotComplete",
    "Stopped",
    "TokenSource",
    "classify",
    "disconnect_reason",
    "loggable_url",
    "open_websocket",
]
