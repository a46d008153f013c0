"""What the metrics exporter reads of the ingest service, at one instant.

:class:`MetricsSource` is exactly the public surface of ``IngestService`` that is read;
:func:`read_source` turns it into one immutable :class:`Reading` (the client's
``get_metrics()`` dict parsed into a :class:`ClientView`). Definitions: :mod:`pipeline.metrics`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, TypeVar

from pipeline.candles import CandleDataManager, ManagerStats
from pipeline.config import Config
from pipeline.dxlink import CandleSymbol
from pipeline.dxlink.client import ChannelMetrics, ConnectionState, DeliveryMetrics
from pipeline.recording import RecorderStats
from pipeline.store import StoreStats

__all__ = [
    "ClientView",
    "MetricsClient",
    "MetricsSource",
    "MetricsStore",
    "Reading",
    "ServiceCounters",
    "read_source",
]

_D = TypeVar("_D", ChannelMetrics, DeliveryMetrics)


class ServiceCounters(Protocol):
    """What is read of ``IngestService.stats`` (``pipeline.ingest.service.ServiceStats``)."""

    started_at: float
    batches: int
    candles_received: int
    flushes: int
    flush_failures: int
    candles_stored: int
    candles_deleted: int
    last_flush_at: float | None
    last_flush_seconds: float
    last_flush_error: str | None
    compactions: int
    compaction_failures: int
    retention_runs: int
    retention_failures: int
    candles_pruned: int
    backpressure_waits: int
    stream_time_ms: int


class MetricsClient(Protocol):
    """The DXLink client: ``get_metrics()`` returns ``pipeline.dxlink.client.metrics.snapshot()``.

    Each channel's dict may also carry ``queue_depth`` (the delivery queue's current size).
    """

    def get_metrics(self) -> Mapping[str, Any]: ...


class MetricsStore(Protocol):
    """The open store: only its counters are read."""

    @property
    def stats(self) -> StoreStats: ...


class MetricsSource(Protocol):
    """What the exporter reads: exactly the public attributes of ``IngestService``.

    ``store`` may raise ``RuntimeError`` before the service opened it; ``client`` is ``None``
    before it was built. Everything is read on the event loop, like the service writes it.
    """

    @property
    def config(self) -> Config: ...
    @property
    def stats(self) -> ServiceCounters: ...
    @property
    def manager(self) -> CandleDataManager: ...
    @property
    def client(self) -> MetricsClient | None: ...
    @property
    def store(self) -> MetricsStore: ...
    @property
    def series(self) -> Sequence[CandleSymbol]: ...
    @property
    def recording(self) -> RecorderStats | None: ...
    def now_ms(self) -> int: ...


def _dataclass_from(kind: type[_D], values: Mapping[str, Any]) -> _D:
    """Build a metrics dataclass from its ``asdict`` form, ignoring keys it does not have."""
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True, slots=True)
class ClientView:
    """The DXLink client's counters, parsed from its ``get_metrics()`` dict."""

    state: str = ConnectionState.IDLE
    connects: int = 0
    disconnects: Mapping[str, int] = field(default_factory=dict)
    reconnect_attempts: int = 0
    connected_seconds: float = 0.0
    malformed_messages: int = 0
    protocol_violations: int = 0
    token_refreshes: int = 0
    channels: Mapping[str, ChannelMetrics] = field(default_factory=dict)
    queue_depths: Mapping[str, int] = field(default_factory=dict)
    delivery: DeliveryMetrics = field(default_factory=DeliveryMetrics)
    series_by_state: Mapping[str, int] = field(default_factory=dict)
    """Candle subscriptions by state (pending/snapshot/live) on the current connection."""
    silence_seconds: float | None = None
    """Seconds the server has said nothing since a handshake (see the client's metrics)."""
    dead_peer_timeout: float = 0.0
    """The silence after which the server counts as dead, as in force."""

    @property
    def stalled(self) -> bool:
        """The server has been silent longer than it may be: a stall (issue 14). A client
        that reports no dead-peer timeout (0) is never judged."""
        silence, limit = self.silence_seconds, self.dead_peer_timeout
        return silence is not None and limit > 0 and silence > limit

    @classmethod
    def parse(cls, metrics: Mapping[str, Any]) -> ClientView:
        """Read the dict of ``pipeline.dxlink.client.metrics.snapshot()`` (extra keys are ignored).

        Raises:
            KeyError: A documented key is missing (the client broke its contract).
        """
        connection = metrics["connection"]
        channels = metrics.get("channels", {})
        subscriptions = metrics.get("subscriptions", {})
        return cls(
            state=str(connection["state"]),
            connects=int(connection["connect_count"]),
            disconnects={str(k): int(v) for k, v in connection["disconnect_count"].items()},
            reconnect_attempts=int(connection["reconnect_attempts"]),
            connected_seconds=float(connection["total_uptime"]),
            malformed_messages=int(connection.get("malformed_messages", 0)),
            protocol_violations=int(connection.get("protocol_violations", 0)),
            token_refreshes=int(connection.get("token_refreshes", 0)),
            channels={str(r): _dataclass_from(ChannelMetrics, v) for r, v in channels.items()},
            queue_depths={
                str(role): int(values["queue_depth"])
                for role, values in channels.items()
                if values.get("queue_depth") is not None
            },
            delivery=_dataclass_from(DeliveryMetrics, metrics.get("delivery", {})),
            series_by_state={
                str(k): int(v) for k, v in subscriptions.get("candles_by_state", {}).items()
            },
            silence_seconds=_optional_float(connection.get("silence_seconds")),
            dead_peer_timeout=float(connection.get("dead_peer_timeout", 0.0)),
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Reading:
    """Everything read from the source at one instant (wall-clock ``now``, Unix seconds)."""

    now: float
    started_at: float
    service: ServiceCounters
    manager: ManagerStats
    series_limit: int
    pinned_limit: int
    store: StoreStats
    client: ClientView
    retention_seconds: Mapping[str, float] = field(default_factory=dict)
    """``store.retention`` in seconds by period label; periods kept forever are absent."""
    disk_free_bytes: int | None = None
    """Bytes available to the service on the store folder's filesystem (``None``: unknown)."""
    disk_size_bytes: int | None = None
    """That filesystem's size."""
    recording: RecorderStats | None = None
    """The recorder's counters (a copy), or None when not recording."""

    @property
    def flush_backlog(self) -> int:
        """Completed candles and deletions that wait for a flush (a lower bound, see module)."""
        return max(0, self.manager.dirty - self.manager.series) + self.manager.pending_deletions


def read_source(source: MetricsSource, *, now: float, started_at: float) -> Reading:
    """Read the source once (on the event loop).

    Args:
        source: The service.
        now: The current wall-clock time (Unix seconds).
        started_at: Used when ``source.stats.started_at`` is unset (0).
    """
    client = source.client
    try:
        store = source.store.stats
    except RuntimeError:  # the service has not opened its store yet: nothing written
        store = StoreStats()
    return Reading(
        now=now,
        started_at=source.stats.started_at or started_at,
        service=source.stats,
        manager=source.manager.stats(),
        series_limit=source.manager.max_series,
        pinned_limit=source.manager.max_pinned_candles,
        store=store,
        client=ClientView() if client is None else ClientView.parse(client.get_metrics()),
        retention_seconds={
            period: keep.total_seconds()
            for period, keep in source.config.store.retention_policy().items()
        },
        **_disk(source.config.store.path),
        recording=None if source.recording is None else replace(source.recording),
    )


def _disk(path: str) -> dict[str, int | None]:
    """Free and total bytes of the filesystem holding ``path`` (one statvfs call)."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:  # not created yet, or gone: unknown rather than zero
        return {"disk_free_bytes": None, "disk_size_bytes": None}
    return {"disk_free_bytes": usage.free, "disk_size_bytes": usage.total}
