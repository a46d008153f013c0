"""Prometheus ``/metrics`` and ``/health`` of the ingest service (DESIGN.md module map).

:class:`MetricsServer` serves both over a tiny asyncio HTTP/1.1 handler on a loopback port
(``metrics.host``/``metrics.port``; port 0 picks a free one, :attr:`MetricsServer.port` says
which). Everything is read at request time from the live service through
:class:`MetricsSource`, the attributes ``IngestService`` already has, by a custom collector in
the server's own ``CollectorRegistry`` (never the global one: many services can run in one
process). Names start with ``candles_``, carry their unit, counters end in ``_total``; labels
are only ``channel`` (``candles``/``events``), ``reason`` and ``state``. Nothing per series is
exported (cardinality); no token, URL credential or error text ever is.

Definitions (the README copies them):

* ``candles_received_total``: events received from DXLink, revisions and snapshot replays
  included. ``candles_completed_total``: completed candles the manager handed to the store in
  successful flushes (a revised candle counts again). ``candles_stored_total``: rows the store
  inserted or rewrote (unchanged rows are not rewritten). ``candles_revised_total``: changes to
  candles that had already been handed out (late corrections, replayed snapshots, removals).
* ``candles_memory_bytes`` / ``candles_memory_limit_bytes``: the manager's estimate of what it
  holds, and of the most its configured bounds allow (``process_resident_memory_bytes`` is
  the real process).
* Store check (every ``check_interval`` seconds, in a worker thread, on a read-only connection;
  never on a scrape): ``candles_gaps`` / ``candles_gap_missing_periods`` are the rows of the
  store's ``candle_gaps`` view whose ``gap_end`` lies within ``gap_window`` of the source time,
  and the missing periods they span (market closures count: see ``sql/gaps.sql``).
  ``candles_backfill_lag_seconds`` is, for the worst configured fixed-length series, how long
  ago the first candle the store lacks at the head became complete:
  ``max(0, source_time - grace - (newest_stored_start + 2 * period))``. It is 0 while the store
  holds every completed candle, stays below the flush interval while ingest keeps up, and grows
  by one period per missing candle (also while a market is closed: the store cannot tell).
* Health (``/health``, ``candles_health_ok``): unhealthy when the client is not connected for
  longer than ``disconnect_grace`` (measured from the service start if it never connected, else
  from the first observation of the outage) or has stopped for good; when the last flush
  failed; or when completed candles have waited more than 3 x ``flush_interval`` since the
  later of the last successful flush and the first observation of the backlog. The backlog is
  ``max(0, unstored - series) + pending_deletions`` (each series' open candle is unstored by
  nature), a lower bound that never raises a false alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import duckdb
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.candles import CandleDataManager, ManagerStats
from pipeline.config import Config
from pipeline.dxlink.metrics import (
    ChannelMetrics,
    ConnectionState,
    DeliveryMetrics,
    DisconnectReason,
)
from pipeline.dxlink.symbols import CandleSymbol
from pipeline.store import StoreStats, connect

__all__ = [
    "CandlesCollector",
    "ClientView",
    "HealthMonitor",
    "HealthReport",
    "MetricsClient",
    "MetricsServer",
    "MetricsSource",
    "MetricsStore",
    "Observation",
    "Reading",
    "ServiceCounters",
    "StoreCheck",
    "StoreCheckResult",
    "read_source",
]

logger = logging.getLogger(__name__)

_D = TypeVar("_D", ChannelMetrics, DeliveryMetrics)

FLUSH_OVERDUE_FACTOR = 3.0
"""A backlog older than this many flush intervals makes the service unhealthy (issue 5)."""
MAX_REQUEST_HEAD = 16_384
"""Most bytes of request line + headers; a scraper sends a few hundred."""


# --------------------------------------------------------------------------- the source


class ServiceCounters(Protocol):
    """What is read of ``IngestService.stats`` (``pipeline.service.ServiceStats``)."""

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
    backpressure_waits: int
    stream_time_ms: int


class MetricsClient(Protocol):
    """The DXLink client: ``get_metrics()`` returns ``pipeline.dxlink.metrics.snapshot()``.

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

    @classmethod
    def parse(cls, metrics: Mapping[str, Any]) -> ClientView:
        """Read the dict of ``pipeline.dxlink.metrics.snapshot()`` (extra keys are ignored).

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
        )


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
    )


# --------------------------------------------------------------------------- health


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
    """Applies the health rules (module docstring) to successive readings.

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


# --------------------------------------------------------------------------- store check


@dataclass(frozen=True, slots=True)
class StoreCheckResult:
    """What one store check found (definitions in the module docstring)."""

    checked_at: float
    """Wall-clock time of the check (Unix seconds)."""
    seconds: float
    """How long the check took."""
    gaps: int
    missing_periods: int
    backfill_lag_seconds: float | None
    """``None`` when no configured fixed-length series has a stored candle yet."""
    series_without_candles: int
    """Configured series with no stored candle at all."""


class StoreCheck:
    """The periodic, blocking store queries behind gaps and backfill lag (run in a thread).

    Args:
        connect: Opens a read-only connection to the lake (``pipeline.store.connect``); called
            lazily, and again after a failure (the store may not exist yet at start).
        gap_window: Seconds of source time back from now in which gaps are counted.
        clock: Wall clock for ``checked_at``.
    """

    def __init__(
        self,
        connect: Callable[[], duckdb.DuckDBPyConnection],
        *,
        gap_window: float = 86_400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if gap_window <= 0:
            raise ValueError(f"gap_window must be > 0 seconds, got {gap_window}")
        self._connect = connect
        self._gap_window_ms = int(gap_window * 1000)
        self._clock = clock
        self._con: duckdb.DuckDBPyConnection | None = None

    def run(self, series: Sequence[CandleSymbol], now_ms: int, grace_ms: int) -> StoreCheckResult:
        """Count recent gaps and compute the backfill lag of ``series`` at source time ``now_ms``.

        Raises:
            pipeline.store.StoreError: The lake cannot be opened (not created yet).
            duckdb.Error: A query failed; the connection is reopened next time.
        """
        started = time.perf_counter()
        if self._con is None:
            self._con = self._connect()
        try:
            gap_row = self._con.execute(
                "SELECT count(*), coalesce(sum(missing_periods), 0) FROM candle_gaps "
                "WHERE epoch_ms(gap_end) >= ?",
                [now_ms - self._gap_window_ms],
            ).fetchone()
            newest = {
                (str(symbol), str(period)): int(start)
                for symbol, period, start in self._con.execute(
                    "SELECT symbol, period, epoch_ms(max(time)) FROM candles GROUP BY ALL"
                ).fetchall()
            }
        except duckdb.Error:
            self.close()
            raise
        lags: list[int] = []
        unstored = 0
        for symbol in series:
            start = newest.get((symbol.base, symbol.period_label))
            if start is None:
                unstored += 1
            elif (period := symbol.period_ms) is not None:
                lags.append(max(0, now_ms - grace_ms - (start + 2 * period)))
        gaps, missing = gap_row if gap_row is not None else (0, 0)
        return StoreCheckResult(
            checked_at=self._clock(),
            seconds=time.perf_counter() - started,
            gaps=int(gaps),
            missing_periods=int(missing),
            backfill_lag_seconds=max(lags) / 1000 if lags else None,
            series_without_candles=unstored,
        )

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._con is not None:
            self._con.close()
            self._con = None


# --------------------------------------------------------------------------- collector


@dataclass(frozen=True, slots=True)
class Observation:
    """What one scrape or health check sees."""

    reading: Reading
    health: HealthReport
    store_check: StoreCheckResult | None
    store_check_failures: int


def _family(name: str, doc: str, label: str | None = None) -> Metric:
    """A counter when the name ends in ``_total``, else a gauge."""
    kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
    return kind(name, doc, labels=None if label is None else [label])


def _plain_metrics(o: Observation) -> list[tuple[str, float | None, str]]:
    """(name, value, help) of every unlabelled metric; ``None`` values are left out."""
    r, s, m, st = o.reading, o.reading.service, o.reading.manager, o.reading.store
    c = r.client
    rows: list[tuple[str, float | None, str]] = [
        ("candles_health_ok", o.health.healthy, "1 when /health answers 200."),
        ("candles_uptime_seconds", max(0.0, r.now - r.started_at), "Service uptime."),
        ("candles_connects_total", c.connects, "Completed DXLink handshakes."),
        ("candles_reconnect_attempts_total", c.reconnect_attempts, "Attempts after the first."),
        ("candles_connected_seconds_total", c.connected_seconds, "Seconds connected in total."),
        ("candles_token_refreshes_total", c.token_refreshes, "Tokens refetched after rejection."),
        ("candles_malformed_messages_total", c.malformed_messages, "Invalid frames skipped."),
        ("candles_protocol_violations_total", c.protocol_violations, "Illegal messages."),
        ("candles_delivery_blocked_total", c.delivery.blocked_count, "Reader waits on full queue."),
        ("candles_delivery_blocked_seconds_total", c.delivery.blocked_seconds, "Time waited."),
        ("candles_received_total", s.candles_received, "Candle events received."),
        ("candles_batches_total", s.batches, "Candle batches received."),
        ("candles_completed_total", s.candles_stored, "Completed candles flushed to the store."),
        ("candles_stored_total", st.rows_written, "Rows the store inserted or rewrote."),
        ("candles_revised_total", m.revisions, "Changes to candles already handed out."),
        ("candles_deleted_total", s.candles_deleted, "Stored candles removed server-side."),
        ("candles_invalid_events_total", m.invalid_events, "Candle events rejected as invalid."),
        ("candles_refused_series_events_total", m.refused_series_events, "Over series limit."),
        ("candles_backpressure_waits_total", s.backpressure_waits, "Intake paused for a flush."),
        ("candles_flushes_total", s.flushes, "Successful flushes that wrote data."),
        ("candles_flush_failures_total", s.flush_failures, "Failed flushes."),
        ("candles_last_flush_failed", s.last_flush_error is not None, "1 if the last failed."),
        ("candles_last_flush_duration_seconds", s.last_flush_seconds, "Last successful flush."),
        ("candles_last_flush_timestamp_seconds", s.last_flush_at, "Unix time of that flush."),
        ("candles_compactions_total", s.compactions, "Store compactions run."),
        ("candles_compaction_failures_total", s.compaction_failures, "Failed compactions."),
        ("candles_store_retries_total", st.retries, "Store transactions retried (collision)."),
        ("candles_store_busy_failures_total", st.busy_failures, "Busy through every retry."),
        ("candles_stream_time_seconds", s.stream_time_ms / 1000 or None, "Newest candle start."),
        ("candles_series", m.series, "Candle series held in memory."),
        ("candles_series_limit", r.series_limit, "Most series held (manager bound)."),
        ("candles_held", m.candles_held, "Candles held in memory."),
        ("candles_unstored", m.dirty, "Held candles whose current version is unstored."),
        ("candles_flush_backlog", r.flush_backlog, "Completed, waiting for a flush (lower bound)."),
        ("candles_pinned", m.pinned, "Unstored candles held beyond the per-series bound."),
        ("candles_pinned_limit", r.pinned_limit, "Pinned candles before back-pressure."),
        ("candles_memory_bytes", m.memory_bytes, "Estimated memory held by candles."),
        ("candles_memory_limit_bytes", m.memory_limit_bytes, "Most the bounds allow (estimate)."),
        ("candles_store_check_failures_total", o.store_check_failures, "Failed store checks."),
    ]
    if (check := o.store_check) is not None:
        rows += [
            ("candles_gaps", check.gaps, "Gaps within the gap window, at the last check."),
            ("candles_gap_missing_periods", check.missing_periods, "Periods those gaps miss."),
            ("candles_backfill_lag_seconds", check.backfill_lag_seconds, "Worst series."),
            ("candles_series_without_stored_candles", check.series_without_candles, "None yet."),
            ("candles_store_check_timestamp_seconds", check.checked_at, "Last store check."),
            ("candles_store_check_duration_seconds", check.seconds, "Its duration."),
        ]
    return rows


class CandlesCollector(Collector):
    """A prometheus_client collector that turns one :class:`Observation` into metrics.

    Args:
        observe: Called once per scrape, on the scraping thread (the event loop).
    """

    def __init__(self, observe: Callable[[], Observation]) -> None:
        self._observe = observe

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (see the module docstring)."""
        o = self._observe()
        for name, value, doc in _plain_metrics(o):
            if value is not None:
                family = _family(name, doc)
                family.add_sample(name, {}, float(value))
                yield family
        client, now = o.reading.client, o.reading.now
        channels = client.channels
        states = {str(state): 0.0 for state in ConnectionState} | {client.state: 1.0}
        labelled: list[tuple[str, str, str, Mapping[str, float]]] = [
            ("candles_connection_state", "1 for the current state.", "state", states),
            ("candles_disconnects_total", "Ended connections and failed attempts.", "reason",
             {str(r): 0 for r in DisconnectReason} | dict(client.disconnects)),
            ("candles_subscriptions", "Candle subscriptions by snapshot state.", "state",
             client.series_by_state),
            ("candles_channel_messages_total", "FEED_DATA messages.", "channel",
             {k: v.message_count for k, v in channels.items()}),
            ("candles_channel_events_total", "Events decoded.", "channel",
             {k: v.event_count for k, v in channels.items()}),
            ("candles_channel_errors_total", "Channel ERROR messages.", "channel",
             {k: v.error_count for k, v in channels.items()}),
            ("candles_channel_last_message_age_seconds", "Since the last FEED_DATA.", "channel",
             {k: max(0.0, now - v.last_message_time)
              for k, v in channels.items() if v.last_message_time is not None}),
            ("candles_channel_queue_depth", "Batches waiting for the consumer.", "channel",
             client.queue_depths),
            ("candles_channel_queue_high_water_mark", "Deepest queue seen.", "channel",
             {k: v.queue_high_water_mark for k, v in channels.items()}),
        ]  # fmt: skip
        for name, doc, label, values in labelled:
            family = _family(name, doc, label)
            for key, value in sorted(values.items()):
                family.add_sample(name, {label: key}, float(value))
            yield family


# --------------------------------------------------------------------------- server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text format 0.0.4) and ``/health`` (JSON) over HTTP/1.1.

    One request per connection (``Connection: close``); ``GET`` and ``HEAD`` only. Wiring
    into the service is :meth:`for_service` plus :meth:`start` / :meth:`stop`.

    Args:
        source: The service to read.
        host: Interface to listen on; loopback by default (anything else is logged).
        port: TCP port; 0 picks a free one (see :attr:`port`).
        enabled: ``False`` makes :meth:`start` do nothing (``metrics.enabled = false``).
        disconnect_grace: Seconds not connected before ``/health`` answers 503.
        store_check: Gap and backfill-lag queries, run every ``check_interval`` seconds;
            ``None`` leaves those metrics out.
        check_interval: Seconds between store checks (each is about one scan of the lake).
        clock: Wall clock (Unix seconds); injectable for tests.
        request_timeout: Seconds a client may take to send its request or read the answer.
    """

    def __init__(
        self,
        source: MetricsSource,
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        enabled: bool = True,
        disconnect_grace: float = 100.0,
        store_check: StoreCheck | None = None,
        check_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
        request_timeout: float = 5.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535 (0 picks a free port), got {port}")
        if check_interval <= 0:
            raise ValueError(f"check_interval must be > 0 seconds, got {check_interval}")
        if request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {request_timeout}")
        self.host = host
        self.enabled = enabled
        self.health_monitor = HealthMonitor(
            disconnect_grace=disconnect_grace,
            flush_interval=source.config.schedule.flush_interval,
        )
        """The stateful health rules (shared by ``/health`` and ``candles_health_ok``)."""
        self.registry = CollectorRegistry(auto_describe=False)
        """This server's own registry: the candles collector and the process collector."""
        self.registry.register(CandlesCollector(self.observe))
        ProcessCollector(registry=self.registry)
        self._source = source
        self._requested_port = port
        self._store_check = store_check
        self._check_interval = check_interval
        self._clock = clock
        self._request_timeout = request_timeout
        self._created_at = clock()
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._check_task: asyncio.Task[None] | None = None
        self._check_lock = asyncio.Lock()
        self._check_future: asyncio.Future[StoreCheckResult] | None = None
        self._check_result: StoreCheckResult | None = None
        self._check_failures = 0

    @classmethod
    def for_service(cls, service: MetricsSource) -> MetricsServer:
        """A server configured from ``service.config`` (``[metrics]``, ``[client]``, ``[store]``).

        The disconnect grace is one worst-case reconnect: ``backoff_max`` of waiting, then
        ``connect_timeout`` and three handshake replies (SETUP, AUTH_STATE, CHANNEL_OPENED,
        §2.6) of ``handshake_timeout`` each. Longer means more than one attempt failed.
        """
        config = service.config
        client, store = config.client, config.store
        return cls(
            service,
            host=config.metrics.host,
            port=config.metrics.port,
            enabled=config.metrics.enabled,
            disconnect_grace=(
                client.backoff_max + client.connect_timeout + 3 * client.handshake_timeout
            ),
            store_check=StoreCheck(
                functools.partial(connect, store.path, catalog=store.catalog, read_only=True)
            ),
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int | None:
        """The bound port while serving, else ``None``."""
        return self._port

    @property
    def url(self) -> str | None:
        """``http://host:port`` while serving, else ``None``."""
        if self._port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        """Listen and start the periodic store check (does nothing when disabled).

        Raises:
            OSError: The address cannot be bound; the message says which and what to change.
        """
        if not self.enabled or self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self._requested_port, limit=MAX_REQUEST_HEAD
            )
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot serve metrics on {self.host}:{self._requested_port}: {exc.strerror}; "
                "set metrics.port (0 picks a free port) or metrics.enabled = false",
            ) from exc
        self._port = int(self._server.sockets[0].getsockname()[1])
        if not _is_loopback(self.host):
            logger.warning("! metrics are served on %s, not loopback: anyone who can reach "
                           "this host can read them", self.host)  # fmt: skip
        logger.info("= serving metrics at %s/metrics and %s/health", self.url, self.url)
        if self._store_check is not None:
            self._check_task = asyncio.create_task(self._check_periodically(), name="store-check")

    async def stop(self) -> None:
        """Stop listening, end open requests, wait for a running store check. Idempotent."""
        if self._check_task is not None:
            self._check_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._check_task
            self._check_task = None
        server, self._server, self._port = self._server, None, None
        if server is not None:
            server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        if self._check_future is not None:
            # The query thread cannot be interrupted: wait for it, so none outlives us.
            with contextlib.suppress(Exception):
                await self._check_future
            self._check_future = None
        if self._store_check is not None:
            await asyncio.to_thread(self._store_check.close)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ reading

    def observe(self) -> Observation:
        """Read the source and judge its health, now."""
        reading = read_source(self._source, now=self._clock(), started_at=self._created_at)
        return Observation(
            reading=reading,
            health=self.health_monitor.evaluate(reading),
            store_check=self._check_result,
            store_check_failures=self._check_failures,
        )

    def render_metrics(self) -> bytes:
        """The ``/metrics`` body (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry)

    async def check_store(self) -> StoreCheckResult | None:
        """Run the store check now, in a worker thread; ``None`` if it failed or is off."""
        if self._store_check is None:
            return None
        async with self._check_lock:
            series = tuple(self._source.series)
            now_ms = self._source.now_ms()
            grace_ms = int(self._source.config.manager.grace_seconds * 1000)
            future = asyncio.get_running_loop().run_in_executor(
                None, self._store_check.run, series, now_ms, grace_ms
            )
            self._check_future = future
            try:
                result = await asyncio.shield(future)
            except Exception as exc:  # counted and logged; the next check tries again
                self._check_failures += 1
                logger.warning("! store check failed: %s", exc)
                return None
            self._check_result = result
            return result

    async def _check_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval)  # a schedule, not a synchronisation
            await self.check_store()

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._request_timeout)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return  # a half-sent, oversized or stalled request: just close
            method, status, content_type, body = self._respond(head)
            answer = (
                f"HTTP/1.1 {status.value} {status.phrase}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                + ("Allow: GET, HEAD\r\n" if status is HTTPStatus.METHOD_NOT_ALLOWED else "")
                + "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            ).encode("ascii")
            writer.write(answer if method == "HEAD" else answer + body)
            await asyncio.wait_for(writer.drain(), self._request_timeout)
        except (ConnectionError, TimeoutError):
            pass  # the scraper went away; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            if task is not None:
                self._handlers.discard(task)

    def _respond(self, head: bytes) -> tuple[str, HTTPStatus, str, bytes]:
        """(method, status, content type, body) for one request head."""
        text = "text/plain; charset=utf-8"
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return "GET", HTTPStatus.BAD_REQUEST, text, b"expected: GET /metrics HTTP/1.1\n"
        method, path = parts[0], parts[1].split("?", 1)[0]
        if path not in ("/metrics", "/health"):
            return method, HTTPStatus.NOT_FOUND, text, b"not found; try /metrics or /health\n"
        if method not in ("GET", "HEAD"):
            return method, HTTPStatus.METHOD_NOT_ALLOWED, text, b"only GET and HEAD\n"
        try:
            if path == "/metrics":
                return method, HTTPStatus.OK, CONTENT_TYPE_PLAIN_0_0_4, self.render_metrics()
            report = self.observe().health
        except Exception as exc:  # a broken source must not take the server down
            logger.exception("! collecting metrics failed")
            body = f"collecting metrics failed ({type(exc).__name__}); see the log\n"
            return method, HTTPStatus.INTERNAL_SERVER_ERROR, text, body.encode()
        status = HTTPStatus.OK if report.healthy else HTTPStatus.SERVICE_UNAVAILABLE
        return method, status, "application/json", report.to_json()
