"""The health rules behind ``/health`` and ``candles_health_ok`` (see :mod:`pipeline.metrics`)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.dxlink.client import ConnectionState
from pipeline.metrics.source import Reading

__all__ = ["FLUSH_OVERDUE_FACTOR", "HealthMonitor", "HealthReport"]

FLUSH_OVERDUE_FACTOR = 3.0
"""A backlog older than this many flush intervals makes the service unhealthy (issue 5)."""


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The verdict of ``/health``."""

    healthy: bool
    reasons: tuple[str, ...]
    """Why it is unhealthy, one sentence each; empty when healthy."""
    connection_state: str
    last_flush_age_seconds: float | None
    """Seconds since the last successful flush, or ``None`` before the first."""
    disconnected_seconds: float | None
    """Seconds the current outage has lasted (as observed), or ``None`` while connected."""

    @property
    def status(self) -> str:
        """``"ok"`` or ``"unhealthy"``."""
        return "ok" if self.healthy else "unhealthy"

    def to_json(self) -> bytes:
        """The ``/health`` body."""
        body = {
            "status": self.status,
            "reasons": list(self.reasons),
            "connection_state": self.connection_state,
            "last_flush_age_seconds": self.last_flush_age_seconds,
            "disconnected_seconds": self.disconnected_seconds,
        }
        return json.dumps(body).encode()


class HealthMonitor:
    """Applies the health rules (:mod:`pipeline.metrics`) to successive readings.

    Args:
        disconnect_grace: Seconds not connected before that alone is unhealthy.
        flush_interval: The scheduled flush interval in seconds.
    """

    def __init__(self, *, disconnect_grace: float, flush_interval: float) -> None:
        if disconnect_grace < 0:
            raise ValueError(f"disconnect_grace must be >= 0 seconds, got {disconnect_grace}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval}")
        self.disconnect_grace = disconnect_grace
        self.flush_interval = flush_interval
        self._down_since: float | None = None
        self._backlog_since: float | None = None

    def evaluate(self, reading: Reading) -> HealthReport:
        """Judge one reading; remembers when an outage or a backlog was first seen."""
        now, client, service = reading.now, reading.client, reading.service
        reasons: list[str] = []
        down: float | None = None
        if client.state == ConnectionState.CONNECTED:
            self._down_since = None
        else:
            if self._down_since is None:
                # Never connected: down since the start. Otherwise since first seen down.
                self._down_since = reading.started_at if client.connects == 0 else now
            down = max(0.0, now - self._down_since)
            if client.state == ConnectionState.CLOSED:
                reasons.append("the DXLink client has stopped (state closed); see the log")
            elif down > self.disconnect_grace:
                reasons.append(
                    f"not connected for {down:.0f}s (state {client.state}; "
                    f"grace {self.disconnect_grace:g}s)"
                )
        if client.stalled and client.state != ConnectionState.CLOSED:
            reasons.append(
                f"stalled: no message from the server for {client.silence_seconds:.0f}s "
                f"(dead-peer limit {client.dead_peer_timeout:g}s)"
            )
        if service.last_flush_error is not None:
            # The exception type only: the message is for the log, not for probes.
            kind = service.last_flush_error.partition(":")[0]
            reasons.append(
                f"the last flush failed ({kind}); {service.flush_failures} failed flushes so far"
            )
        backlog = reading.flush_backlog
        if backlog == 0:
            self._backlog_since = None
        else:
            if self._backlog_since is None:
                self._backlog_since = now
            last = service.last_flush_at if service.last_flush_at is not None else 0.0
            waited = now - max(self._backlog_since, last, reading.started_at)
            limit = FLUSH_OVERDUE_FACTOR * self.flush_interval
            if waited > limit:
                reasons.append(
                    f"{backlog} completed candles have waited {waited:.0f}s for a flush "
                    f"(limit {FLUSH_OVERDUE_FACTOR:g} x flush_interval = {limit:g}s)"
                )
        last_flush = service.last_flush_at
        return HealthReport(
            healthy=not reasons,
            reasons=tuple(reasons),
            connection_state=client.state,
            last_flush_age_seconds=None if last_flush is None else max(0.0, now - last_flush),
            disconnected_seconds=down,
        )
