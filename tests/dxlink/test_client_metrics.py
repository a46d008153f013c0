"""Client metrics: uptime accounting, disconnect reasons, and the plain-dict snapshot."""

from __future__ import annotations

import json

from pipeline.dxlink.client import (
    ChannelMetrics,
    ConnectionMetrics,
    ConnectionState,
    DeliveryMetrics,
    DisconnectReason,
)
from pipeline.dxlink.client.metrics import snapshot


def test_uptime_sums_closed_connections_and_the_current_one() -> None:
    """total_uptime = ended connections + the one still open, from the caller's clock."""
    metrics = ConnectionMetrics()
    metrics.connected_since = 10.0
    metrics.record_disconnect(DisconnectReason.PEER_TIMEOUT, now=15.0)
    metrics.connected_since = 20.0
    assert metrics.total_uptime(now=21.5) == 6.5
    assert metrics.total_uptime(now=21.5) == 6.5  # reading does not change it


def test_disconnects_are_counted_by_reason() -> None:
    """Each reason has its own counter; a failed attempt adds no uptime."""
    metrics = ConnectionMetrics()
    metrics.record_disconnect(DisconnectReason.CONNECTION_LOST, now=1.0)
    metrics.record_disconnect(DisconnectReason.CONNECTION_LOST, now=2.0)
    metrics.record_disconnect(DisconnectReason.SERVER_CLOSED, now=3.0)
    assert metrics.disconnect_count == {"connection_lost": 2, "server_closed": 1}
    assert metrics.total_uptime(now=4.0) == 0.0


def test_snapshot_is_plain_json_and_a_copy() -> None:
    """snapshot() returns JSON-serialisable dicts that later increments do not change."""
    connection = ConnectionMetrics(state=ConnectionState.CONNECTED, connect_count=1)
    connection.connected_since = 0.0
    channels = {"candles": ChannelMetrics(message_count=3, queue_high_water_mark=2)}
    result = snapshot(connection, channels, DeliveryMetrics(), {"candles": 1}, now=2.0)
    json.dumps(result)
    channels["candles"].message_count += 1
    assert result["channels"]["candles"]["message_count"] == 3
    assert result["connection"]["state"] == "connected"
    assert result["connection"]["total_uptime"] == 2.0
    assert "connected_since" not in result["connection"]
    assert result["subscriptions"] == {"candles": 1}
