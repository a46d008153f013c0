"""Prometheus ``/metrics`` and ``/health`` of the ingest service (DESIGN.md module map).

:class:`MetricsServer` serves both over a tiny asyncio HTTP/1.1 handler on a loopback port
(``metrics.host``/``metrics.port``; port 0 picks a free one, :attr:`MetricsServer.port` says
which). Everything is read at request time from the live service through
:class:`MetricsSource`, the attributes ``IngestService`` already has, by a custom collector in
the server's own ``CollectorRegistry`` (never the global one: many services can run in one
process). Names start with ``candles_``, carry their unit, counters end in ``_total``; labels
are only ``channel`` (``candles``/``events``), ``reason``, ``state`` and ``period`` (a candle
period such as ``1m``). Nothing per series is exported (cardinality); no token, URL credential
or error text ever is.

The parts: reading the service (:mod:`pipeline.metrics.source`), the health rules
(:mod:`pipeline.metrics.health`), the store check (:mod:`pipeline.metrics.store_check`) and the
Prometheus collector (:mod:`pipeline.metrics.collector`); this module is the HTTP server that
ties them together.

Definitions (the README copies them):

* ``candles_received_total``: events received from DXLink, revisions and snapshot replays
  included. ``candles_completed_total``: completed candles the manager handed to the store in
  successful flushes (a revised candle counts again). ``candles_stored_total``: rows the store
  inserted or rewrote (unchanged rows are not rewritten). ``candles_revised_total``: changes to
  candles that had already been handed out (late corrections, replayed snapshots, removals).
* ``candles_recording_*`` (only with ``[record] enabled``): records and compressed bytes the
  recorder wrote, frames it left out (its queue was full, or writing failed: each stretch is
  marked as a gap in the recording, ingest is not affected), and 1 while writing fails.
* ``candles_memory_bytes`` / ``candles_memory_limit_bytes``: the manager's estimate of what it
  holds, and of the most its configured bounds allow (``process_resident_memory_bytes`` is
  the real process).
* Store check (at start, then every ``check_interval`` seconds, in a worker thread, read-only;
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
  from the first observation of the outage) or has stopped for good; when the server is
  stalled (``candles_server_silence_seconds``, what it has not said since a handshake, across
  the reconnects after a stall, exceeds ``candles_dead_peer_timeout_seconds``); when the last flush
  failed; or when completed candles have waited more than 3 x ``flush_interval`` since the
  later of the last successful flush and the first observation of the backlog. The backlog is
  ``max(0, unstored - series) + pending_deletions`` (each series' open candle is unstored by
  nature), a lower bound that never raises a false alarm.
* Retention (``store.retention``): ``candles_retention_seconds{period}`` is the configured age
  limit, ``candles_oldest_candle_timestamp_seconds{period}`` the start of the oldest stored
  candle of that period over every series (from the store check, so every period in the
  store appears, retained or not), ``candles_pruned_total`` the candles the maintenance job
  removed, ``candles_retention_runs_total`` / ``candles_retention_failures_total`` its runs.
* Store size (store check): ``candles_store_snapshots``, ``candles_store_data_files``,
  ``candles_store_data_bytes`` and ``candles_store_files_awaiting_deletion`` show that
  compaction keeps the lake bounded; ``candles_store_disk_free_bytes`` /
  ``candles_store_disk_size_bytes`` (read at every scrape) are the filesystem of ``store.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from pipeline.config import is_loopback_host
from pipeline.metrics.collector import CandlesCollector, Observation
from pipeline.metrics.health import HealthMonitor
from pipeline.metrics.source import (
    MetricsSource,
    read_source,
)
from pipeline.metrics.store_check import StoreCheck, StoreCheckResult
from pipeline.store import S3Options, connect

__all__ = [
    "MetricsServer",
]

logger = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 16_384
"""Most bytes of request line + headers; a scraper sends a few hundred."""


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
                functools.partial(
                    connect,
                    store.path,
                    catalog=store.catalog,
                    data_path=store.data_path,
                    read_only=True,
                    s3=S3Options(**store.s3.model_dump()),
                )
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
        if not is_loopback_host(self.host):
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
        # The first check runs at once: `candles status` has gaps and backfill lag to show
        # from its first second, not after a whole interval (issue 17).
        while True:
            await self.check_store()
            await asyncio.sleep(self._check_interval)  # a schedule, not a synchronisation

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
