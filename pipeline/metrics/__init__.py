"""What a running ingest tells the outside: /metrics, /health and `candles status`.

``server`` serves both endpoints; ``source`` reads the service's parts, ``collector`` turns a
reading into Prometheus families, ``health`` judges it, ``store_check`` asks the store how far
behind it is; ``status`` is the ``candles status`` client of those endpoints.
"""

from __future__ import annotations

from pipeline.metrics.health import FLUSH_OVERDUE_FACTOR, HealthMonitor, HealthReport
from pipeline.metrics.server import MetricsServer
from pipeline.metrics.status import (
    DEFAULT_URL,
    ChannelStatus,
    StatusError,
    StatusSummary,
    fetch_status,
    parse_status,
    render_status,
    url_for,
)
from pipeline.metrics.store_check import StoreCheck, StoreCheckResult

__all__ = [
    "DEFAULT_URL",
    "FLUSH_OVERDUE_FACTOR",
    "ChannelStatus",
    "HealthMonitor",
    "HealthReport",
    "MetricsServer",
    "StatusError",
    "StatusSummary",
    "StoreCheck",
    "StoreCheckResult",
    "fetch_status",
    "parse_status",
    "render_status",
    "url_for",
]
