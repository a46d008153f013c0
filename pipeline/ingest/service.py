"""IngestService: client → CandleDataManager → CandleStore, on a schedule.

The service owns one of each part and wires them (DESIGN.md "Data flow"):

* a :class:`~pipeline.dxlink.client.DXLinkManager` streams Candle batches; its resume
  callback asks the *store* where each series stands, so every reconnect re-requests exactly
  what is missing (the store is the truth for "what do we have", DESIGN.md rules);
* a consumer task feeds the batches into the :class:`~pipeline.candles.CandleDataManager`;
  when the manager refuses a batch because too many candles wait for the store, the consumer
  flushes and retries, and meanwhile nothing is read from the socket (back-pressure);
* a flush also starts as soon as :attr:`IngestService.flush_batch_events` events arrived
  since the last one began, so during a backfill the store's work (in its thread, where
  DuckDB releases the GIL) overlaps receiving and the last flush only writes the tail;
* an APScheduler ``AsyncIOScheduler`` runs the flush job every ``schedule.flush_interval``
  and the maintenance job every ``schedule.compaction_interval`` (storage-and-libs.md §5:
  coalesce, one instance, no silent misfire drops; blocking DuckDB work runs in a thread):
  retention (``store.retention``, one transaction per period, by the stream's clock), then
  compaction;
* on stop (SIGINT/SIGTERM or ``duration``): pause the scheduler, stop the client, drain what
  was received, flush everything completed, close. A failed flush keeps the candles in
  memory and is retried; the final one again and again for ``ingest.shutdown_timeout``
  seconds, so a store that recovers meanwhile loses nothing.
* one writer per shard: a SQLite-catalog store is guarded by an ``flock`` in its folder, a
  PostgreSQL-catalog lake (hosts that share no disk) by a lease in the catalog database that
  is checked before every commit and every ``store.lease_check_interval``; a lease lost (the
  catalog restarted or unreachable) is claimed back, meanwhile flushes fail and candles stay
  in memory; a shard taken over by another process stops this one (docs/scaling.md);
* with ``[record] enabled`` a :class:`~pipeline.recording.Recorder` taps the client and
  writes every frame of every connection to ``record.dir`` (a thread; never blocks the reader);
* the service changes no process-wide setting: the ``candles ingest`` process applies those
  (garbage collector, malloc, DuckDB's lazy imports) around it, :mod:`pipeline.ingest.tuning`.

Time: the manager completes candles by the *stream's* clock. With the built-in simulator that
is the simulator's clock (accelerated); with tastytrade it is the wall clock. Either way the
newest candle time seen (of events the manager accepted) is a floor, so a source clock that
runs behind cannot hold candles back. With a source clock the manager also drops candles that
start more than :data:`FUTURE_TOLERANCE_MS` after it, and no resume point is ever later than
that: a candle from the future stored by an older version makes its series start again from
the configured lookback (said once in the log), not from the future.

The manager admits only the series this service subscribes (its shard's share of the
configured ones), each with the ``fromTime`` it was subscribed with: events of other series
are counted and dropped, and cannot take a subscribed series' place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from pipeline.candles import BackpressureError, Batch, CandleDataManager, time_text
from pipeline.config import Config
from pipeline.dxlink import Candle, CandleSymbol, ConfigurationError
from pipeline.dxlink.client import DXLinkManager, TokenSource
from pipeline.metrics import MetricsServer
from pipeline.recording import Recorder, RecorderStats
from pipeline.store import (
    CandleStore,
    CatalogLease,
    LeaseLost,
    RetentionResult,
    S3Options,
    StoreBusy,
    StoreError,
    UpsertResult,
    WriterLock,
    parse_catalog,
)

__all__ = [
    "FLUSH_BATCH_EVENTS",
    "FUTURE_TOLERANCE_MS",
    "FlushReport",
    "IngestService",
    "ServiceStats",
]

logger = logging.getLogger(__name__)

# How many stored candles per series are loaded into the manager on a warm start: enough to
# merge a replayed snapshot against, small enough to start thousands of series quickly.
WARM_START_CANDLES = 500
# Events received between two flushes at most, whatever the schedule. A store write has a
# fixed cost plus a cost per candle (bench_pipeline); 50,000 keeps the fixed part small while
# a backfill at the target rate still hands the store a batch several times a second, so
# storing overlaps receiving (bench_backfill).
FLUSH_BATCH_EVENTS = 50_000
# How far after the source's clock a candle may start, and a resume point lie: clocks of a
# server and of this host disagree by seconds (NTP keeps both within a second or so); a
# minute leaves room for a badly synced host while a candle dated hours or years ahead, or a
# resume point there, is refused.
FUTURE_TOLERANCE_MS = 60_000
# The final flush of a stop retries a failing store after this long, doubling up to the max.
FINAL_FLUSH_RETRY_S = 0.25
FINAL_FLUSH_RETRY_MAX_S = 4.0
# Seconds a stop waits for the recording's last blocks: its bounded queue is written long
# before that on any working disk, so a disk that takes longer is hung and the stop goes on.
RECORDER_CLOSE_TIMEOUT = 10.0


@dataclass(slots=True)
class FlushReport:
    """What one flush did."""

    reason: str
    written: int = 0
    deleted: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass(slots=True)
class _Maintenance:
    """What one maintenance run did (or the error of each step)."""

    pruned: RetentionResult | Exception | None = None
    compaction: Exception | None = None


@dataclass(slots=True)
class ServiceStats:
    """Counters of the service itself (the client and the manager keep their own)."""

    started_at: float = 0.0
    batches: int = 0
    candles_received: int = 0
    flushes: int = 0
    flush_failures: int = 0
    candles_stored: int = 0
    candles_deleted: int = 0
    last_flush_at: float | None = None
    last_flush_seconds: float = 0.0
    last_flush_error: str | None = None
    compactions: int = 0
    compaction_failures: int = 0
    retention_runs: int = 0
    retention_failures: int = 0
    candles_pruned: int = 0
    backpressure_waits: int = 0
    stream_time_ms: int = 0
    recent_flushes: list[FlushReport] = field(default_factory=list)


class IngestService:
    """Runs ingest until stopped; see the module docstring.

    Args:
        config: The validated configuration.
        token_source: Where DXLink URLs and tokens come from (:func:`token_source_for`
            builds the one the config asks for; ``pipeline.ingest.runner`` starts the simulator).
        source_clock_ms: The source's current time in ms: the wall clock for tastytrade, the
            simulator's clock for an in-process simulator. ``None`` (a simulator in another
            process, whose clock we cannot read) uses the stream's own time alone: the newest
            candle ``time`` / ``eventTime`` received.
        store: An open store to use (tests); by default one is opened from the config.
    """

    def __init__(
        self,
        config: Config,
        *,
        token_source: TokenSource,
        source_clock_ms: Callable[[], int] | None = None,
        store: CandleStore | None = None,
    ) -> None:
        self.config = config
        self.stats = ServiceStats()
        self.shard = config.ingest.shard_spec
        """Which share of the configured series this process captures (docs/scaling.md)."""
        self.series: tuple[CandleSymbol, ...] = self.shard.select(
            config.subscriptions.candle_symbols()
        )
        """Every series this service captures: the configured ones its shard owns."""
        if len(self.series) > config.manager.max_series:
            raise ConfigurationError(
                f"{len(self.series)} series are configured (symbols x intervals) but "
                f"manager.max_series is {config.manager.max_series}; raise it or shard ingest"
            )
        self._periods = {s.normalized: s for s in self.series}
        self._token_source = token_source
        self._source_clock_ms = source_clock_ms
        self._own_store = store is None
        self._store = store
        # A store of our own is ours alone (or our shard's): refuse to start next to another
        # writer of the same series, on this machine (a SQLite catalog: pipeline.store.
        # writer_lock) or on any machine (a PostgreSQL catalog: pipeline.store.lease).
        self._writer_lock: WriterLock | None = None
        self.lease: CatalogLease | None = None
        """The shard lease in a PostgreSQL catalog, or ``None``."""
        if store is None:
            spec = parse_catalog(config.store.catalog, Path(config.store.path))
            if spec.kind == "postgres":
                self.lease = CatalogLease(spec.target, self.shard)
            else:
                self._writer_lock = WriterLock(config.store.path, self.shard)
        self._lease_task: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None
        self.manager = CandleDataManager(
            # The service knows exactly which series it captures; bounding the manager to
            # them keeps its memory bound (and the figure reported for it) meaningful.
            max_series=max(1, len(self.series)),
            max_historical_candles=config.manager.max_historical_candles,
            max_pinned_candles=config.manager.max_unstored,
            grace_ms=int(config.manager.grace_seconds * 1000),
            # Only a source clock can tell a candle from the future; the stream cannot.
            future_tolerance_ms=FUTURE_TOLERANCE_MS if source_clock_ms is not None else None,
        )
        for symbol in self.series:  # the only series the manager admits
            self.manager.subscribe(symbol.normalized)
        self._future_points_logged: set[str] = set()
        self.client: DXLinkManager | None = None
        self.recorder: Recorder | None = None
        """Records every DXLink frame (``[record]``); started by :meth:`run`."""
        self.recorder_close_timeout = RECORDER_CLOSE_TIMEOUT
        """Seconds a stop waits for the recording to reach the disk (a hung disk must not
        hold the stop: what is not written is the last block's)."""
        if config.record.enabled:
            record = config.record
            self.recorder = Recorder(
                record.dir,
                rotate_bytes=int(record.rotate_size_mb * 2**20),
                rotate_seconds=record.rotate_seconds,
                max_queue_bytes=int(record.queue_mb * 2**20),
                clock=self._client_clock,
                meta={
                    "source": config.source.kind,
                    "series": [s.normalized for s in self.series],
                    "grace_seconds": config.manager.grace_seconds,
                    # What completed candles: the clock each record's t holds (a source
                    # clock), or the newest candle time alone (t is then the wall clock).
                    "completion_clock": "recorded" if source_clock_ms else "stream",
                },
            )
        self.metrics = MetricsServer.for_service(self)
        """Prometheus ``/metrics`` and ``/health`` (``metrics.enabled``)."""
        self.flush_batch_events = FLUSH_BATCH_EVENTS
        """Start a flush once this many events arrived since the last one began."""
        self._unflushed_events = 0
        self._batch_flush: asyncio.Task[FlushReport] | None = None
        self._flush_lock = asyncio.Lock()
        self._flushed = asyncio.Event()
        """Set by every successful flush: a consumer waiting out a failed one retries then."""
        self._stop = asyncio.Event()
        self._scheduler: AsyncIOScheduler | None = None
        self._consumer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def store(self) -> CandleStore:
        if self._store is None:
            raise RuntimeError("the service has not started")
        return self._store

    @property
    def recording(self) -> RecorderStats | None:
        """The recorder's counters, or None when not recording."""
        return None if self.recorder is None else self.recorder.stats

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """:meth:`stop` was called."""
        return self._stop.is_set()

    def connection_state(self) -> str:
        """The client's connection state, or ``starting`` before it exists; a stall (the
        server silent past its dead-peer limit) is named with it, e.g. ``connected, stalled
        42s``."""
        if self.client is None:
            return "starting"
        connection = self.client.get_metrics()["connection"]
        state = str(connection["state"])
        silence = connection.get("silence_seconds")
        if silence is not None and silence > connection["dead_peer_timeout"]:
            state += f", stalled {silence:.0f}s"
        return state

    async def run(self, duration: float | None = None) -> None:
        """Ingest until :meth:`stop` or ``duration`` seconds, then shut down cleanly."""
        self.stats.started_at = time.time()
        if self._store is None:
            cfg = self.config.store
            if self._writer_lock is not None:
                self._writer_lock.acquire()  # StoreBusy: nothing was started or written
            try:
                if self.lease is not None:
                    await asyncio.to_thread(self.lease.acquire)  # StoreBusy names the holder
                self._store = await asyncio.to_thread(
                    CandleStore,
                    cfg.path,
                    catalog=cfg.catalog,
                    data_path=cfg.data_path,
                    recycle_after=cfg.recycle_after,
                    s3=S3Options(**cfg.s3.model_dump()),
                    application_name=self.lease.application_name if self.lease else None,
                    before_commit=self.lease.check if self.lease else None,
                )
            except BaseException:
                self._release_writer_guard()
                raise
        try:
            if self.recorder is not None:
                await asyncio.to_thread(self._start_recorder, self.recorder)
            await self.metrics.start()
            await self._warm_start()
            self.client = self._build_client()
            await self.client.start()
            resume = await self._resume_points([s.normalized for s in self.series])
            for symbol in self.series:
                from_time = resume.get(symbol.normalized) or self._first_from_time(symbol)
                # A reconnect never asks from earlier (DXLinkManager resumes from
                # max(resume point, this)): the floor of what the server may send.
                self.manager.subscribe(symbol.normalized, from_ms=from_time)
                await self.client.subscribe_to_candles(
                    symbol=symbol.normalized, from_time=from_time
                )
            self._consumer = asyncio.create_task(self._consume(), name="candles-consumer")
            if self.lease is not None:
                self._lease_task = asyncio.create_task(self._watch_lease(), name="shard-lease")
            self._start_scheduler()
            waiters: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(self._stop.wait()),
                self._consumer,
            ]
            if duration is not None:
                waiters.append(asyncio.ensure_future(asyncio.sleep(duration)))
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                if waiter is not self._consumer:
                    waiter.cancel()
            if self._consumer in done:
                # The client ended on its own: a fatal error (raised here) or a closed feed.
                self._consumer.result()
        finally:
            await self._shutdown()
        if self._fatal is not None:
            raise self._fatal

    async def _shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.pause()  # §5: no new submissions; the final flush is ours
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        if self.client is not None:
            await self.client.aclose()
        if self._consumer is not None:
            # The client has stopped; the consumer drains what was already queued, then ends.
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        if self._batch_flush is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._batch_flush  # flush() reports store failures, it does not raise
        if self._fatal is None:  # a shard taken over is the new owner's to store
            report = await self._final_flush()
            if report.error is not None:
                logger.error("! final flush failed, %s", report.error)
        if self.recorder is not None:
            await self._close_recorder(self.recorder)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        await self.metrics.stop()
        if self._own_store and self._store is not None:
            await asyncio.to_thread(self._store.close)
        self._release_writer_guard()

    def _release_writer_guard(self) -> None:
        if self._writer_lock is not None:
            self._writer_lock.release()
        if self.lease is not None:
            self.lease.release()

    async def _watch_lease(self) -> None:
        """Run :meth:`check_lease` every ``store.lease_check_interval`` until it stops us."""
        while not self._stop.is_set():
            await asyncio.sleep(self.config.store.lease_check_interval)
            await self.check_lease()

    async def check_lease(self) -> None:
        """Check the shard lease now; after a loss claim it back, or stop the service when
        another process holds the shard (:meth:`run` then raises
        :class:`~pipeline.store.LeaseLost` naming it). A no-op without a lease."""
        lease = self.lease
        if lease is None or self._fatal is not None:
            return
        try:
            await asyncio.to_thread(lease.check)
            return
        except LeaseLost:
            pass  # logged by the lease; flushes fail (and keep their candles) meanwhile
        try:
            await asyncio.to_thread(lease.acquire)
            # Another process may have written our series while we did not own them.
            await asyncio.to_thread(self.store.reconnect)
            logger.warning("! shard %s claimed back; writing again", self.shard)
        except StoreBusy as exc:
            self._fatal = LeaseLost(f"shard {self.shard} was taken over: {exc}")
            logger.error("! %s; stopping", self._fatal)
            self.stop()
        except StoreError as exc:
            logger.warning("! cannot claim shard %s back yet: %s", self.shard, exc)

    async def _final_flush(self) -> FlushReport:
        """Flush everything completed; while the store fails, try again until it works or
        ``ingest.shutdown_timeout`` seconds have passed (0: until it works).

        A store that comes back within the timeout (a remounted volume, a freed disk) loses
        nothing; one that does not is reported by whoever bounds the stop (the runner's
        :class:`~pipeline.ingest.runner.ShutdownGuard`, exit 75).
        """
        loop = asyncio.get_running_loop()
        limit = self.config.ingest.shutdown_timeout
        deadline = loop.time() + limit if limit else math.inf
        delay = FINAL_FLUSH_RETRY_S
        report = await self.flush("shutdown")
        while report.error is not None and loop.time() + delay < deadline:
            left = "" if math.isinf(deadline) else f", {deadline - loop.time():.0f}s left"
            logger.warning(
                "! final flush failed (%s); retrying in %.1fs (ingest.shutdown_timeout%s)",
                report.error, delay, left,
            )  # fmt: skip
            await asyncio.sleep(delay)  # a retry schedule, not a synchronisation
            delay = min(delay * 2, FINAL_FLUSH_RETRY_MAX_S)
            report = await self.flush("shutdown")
        return report

    # ------------------------------------------------------------------ wiring

    async def _close_recorder(self, recorder: Recorder) -> None:
        """Close the recording, waiting at most ``recorder_close_timeout`` for the disk."""
        limit = self.recorder_close_timeout
        if not await asyncio.to_thread(recorder.close, limit):
            logger.warning(
                "! the recording did not close within %g s (a hung disk?); its last block may "
                "be cut short", limit,
            )  # fmt: skip

    def _start_recorder(self, recorder: Recorder) -> None:
        try:
            recorder.start()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot record to {str(recorder.directory)!r}: {exc.strerror or exc}; "
                "choose another record.dir (or run without recording)"
            ) from None

    def _client_clock(self) -> float:
        """The client's wall clock, Unix seconds: the *source's* clock (see ``now_ms``)."""
        return self.now_ms() / 1000 if self._source_clock_ms else time.time()

    def _build_client(self) -> DXLinkManager:
        cfg = self.config.client
        return DXLinkManager(
            self._token_source,
            keepalive_timeout=cfg.keepalive_timeout,
            dead_peer_timeout=cfg.dead_peer_timeout,
            max_dead_peer_timeout=cfg.max_dead_peer_timeout,
            connect_timeout=cfg.connect_timeout,
            handshake_timeout=cfg.handshake_timeout,
            backoff_initial=cfg.backoff_initial,
            backoff_max=cfg.backoff_max,
            healthy_after=cfg.healthy_after,
            max_attempts=cfg.max_attempts or None,
            batch_max_items=cfg.batch_max_items,
            batch_max_bytes=cfg.batch_max_bytes,
            subscribe_rate=cfg.subscribe_rate,
            subscribe_burst=cfg.subscribe_burst,
            queue_size=cfg.queue_size,
            aggregation_period=cfg.aggregation_period,
            max_message_size=cfg.max_message_size,
            resume_points=self._resume_points,
            # fromTime validation and message times use the *source's* clock: the simulator
            # runs accelerated, and its resume points are in the wall clock's future.
            wall_clock=self._client_clock,
            frame_tap=self.recorder,
        )

    def _first_from_time(self, symbol: CandleSymbol) -> int:
        """Where a series with nothing stored starts: from_time, or now - lookback, rounded
        down to the series' period so the first candle asked for is a whole one.

        Never before the period's retention (``store.retention``): candles older than that
        would be stored only for the next maintenance run to delete them again.
        """
        clock = self._source_clock_ms or (lambda: int(time.time() * 1000))
        now = datetime.fromtimestamp(clock() / 1000, UTC)
        start = int(self.config.subscriptions.start_time(now).timestamp() * 1000)
        keep = self.config.store.retention_for(symbol.period_label)
        if keep is not None and start < (kept := int((now - keep).timestamp() * 1000)):
            logger.info(
                "%s: history before %s is past store.retention (%s); asking from there",
                symbol.normalized, f"{now - keep:%Y-%m-%d %H:%M}", keep,
            )  # fmt: skip
            start = kept
        if symbol.period_ms and symbol.period_unit in ("s", "m", "h", "d"):
            # Epoch-aligned units; weeks start on Monday, not on the epoch's Thursday.
            return start - start % symbol.period_ms
        return start

    async def _resume_points(self, keys: Iterable[str]) -> dict[str, int]:
        """Per series: one period before the last complete stored candle (DESIGN.md).

        Asking from one period earlier makes the server's snapshot overlap what we hold, so
        a candle that was still being revised when we lost the connection comes again. A
        point later than now + :data:`FUTURE_TOLERANCE_MS` (a candle from the future stored
        before the manager's door existed) is left out: the series then starts from its
        configured lookback, or on a reconnect from the fromTime it was subscribed with.
        """
        wanted = list(keys)
        stored = await asyncio.to_thread(self.store.resume_points, wanted)
        # The clock fromTime is validated against (DXLinkManager's wall_clock).
        now = self._source_clock_ms() if self._source_clock_ms else int(time.time() * 1000)
        points: dict[str, int] = {}
        for key, last in stored.items():
            symbol = self._periods.get(key) or CandleSymbol.parse(key)
            point = last - (symbol.period_ms or 0)
            if point <= now + FUTURE_TOLERANCE_MS:
                points[key] = point
            elif key not in self._future_points_logged:  # bounded: keys are our series
                self._future_points_logged.add(key)
                logger.warning(
                    "! %s: the store's newest candle (%s) is later than now (%s); resuming "
                    "from the configured lookback instead. Delete that row to silence this.",
                    key, time_text(last), time_text(now),
                )  # fmt: skip
        return points

    async def _warm_start(self) -> None:
        """Load each series' recent stored candles, so replayed snapshots merge with them."""
        # One catalog query finds the series that hold anything: a read per series pays
        # DuckLake's fixed cost even on an empty table, once per series (bench_backfill,
        # subscribe to first data).
        keys = [symbol.normalized for symbol in self.series]
        stored = await asyncio.to_thread(self.store.resume_points, keys)
        self.manager.advance(self._door_clock_ms())  # what "future" is judged against
        for symbol in self.series:
            if symbol.normalized not in stored:
                continue
            frame = await asyncio.to_thread(
                self.store.recent, symbol.normalized, WARM_START_CANDLES
            )
            if frame.height:
                self.manager.load_history(symbol.normalized, frame)

    def _start_scheduler(self) -> None:
        schedule = self.config.schedule
        scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        scheduler.add_job(
            self._scheduled_flush, "interval", seconds=schedule.flush_interval, id="flush"
        )
        # One compactor per lake: with a lease, whichever shard gets the maintenance turn;
        # without (one host), shard 1 (pipeline.sharding).
        if self.lease is not None or self.shard.runs_compaction:
            scheduler.add_job(
                self.maintain, "interval", seconds=schedule.compaction_interval, id="compaction"
            )
        scheduler.start()
        self._scheduler = scheduler

    # ------------------------------------------------------------------ data path

    def now_ms(self) -> int:
        """The stream's time: the source clock, never behind the newest candle accepted."""
        if self._source_clock_ms is None:
            return self.stats.stream_time_ms
        return max(self._source_clock_ms(), self.stats.stream_time_ms)

    def _door_clock_ms(self) -> int:
        """The clock the manager judges "future" by: the source's alone (the stream's own
        time cannot vouch for itself); without a source clock, the stream time (the
        manager then judges no time as future)."""
        if self._source_clock_ms is None:
            return self.stats.stream_time_ms
        return self._source_clock_ms()

    async def _consume(self) -> None:
        assert self.client is not None
        async for batch in self.client.candles():
            await self._apply(batch)

    async def _apply(self, batch: Sequence[Candle]) -> None:
        self.stats.batches += 1
        self.stats.candles_received += len(batch)
        while True:
            try:
                self.manager.update(batch, self._door_clock_ms())
                # The stream's time moves with what the manager accepted, never with a
                # candle it dropped (one from 2038 would complete every live candle).
                newest = self.manager.newest_ms
                if newest > self.stats.stream_time_ms:
                    self.stats.stream_time_ms = newest
                self.manager.advance(self.now_ms())
                self._flush_when_batch_is_full(len(batch))
                return
            except BackpressureError as exc:
                # Too many completed candles wait for the store: flush, and until that
                # works, keep this batch (and so the socket reader) waiting.
                self.stats.backpressure_waits += 1
                logger.warning("! %s; flushing before taking more data", exc)
                report = await self.flush("backpressure")
                if report.error is not None:
                    # Retry as soon as another flush (scheduled or manual) got through, so a
                    # store that recovered does not keep the socket reader waiting; else
                    # after a pause.
                    self._flushed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._flushed.wait(), min(5.0, self.config.schedule.flush_interval)
                        )

    def _flush_when_batch_is_full(self, events: int) -> None:
        """Start a flush (a task: receiving goes on meanwhile) once ``flush_batch_events``
        arrived since the last flush began, unless one is running already."""
        self._unflushed_events += events
        if self._unflushed_events < self.flush_batch_events or self._flush_lock.locked():
            return
        if self._batch_flush is not None and not self._batch_flush.done():
            return
        self._unflushed_events = 0
        self._batch_flush = asyncio.create_task(self.flush("batch"), name="batch-flush")

    async def _scheduled_flush(self) -> None:
        await self.flush("schedule")

    async def flush(self, reason: str = "manual") -> FlushReport:
        """Write every completed, unstored candle; on failure keep them for the next try."""
        report = FlushReport(reason)
        async with self._flush_lock:
            self._unflushed_events = 0
            self.manager.advance(self.now_ms())
            batch: Batch = self.manager.take_completed()
            if batch.empty:
                return report
            started = time.perf_counter()
            try:
                # The batch's frame is built in the writing thread too, off the event loop.
                result: UpsertResult = await asyncio.to_thread(self._write, batch)
            except Exception as exc:  # any store failure: keep the data, retry next time
                self.manager.release(batch)
                report.error = f"{type(exc).__name__}: {exc}"
                self.stats.flush_failures += 1
                self.stats.last_flush_error = report.error
                logger.error("! flush (%s) failed, candles kept for retry: %s", reason, exc)
                return report
            self.manager.commit(batch)
            self._flushed.set()
            report.seconds = time.perf_counter() - started
            report.written = batch.rows
            report.deleted = batch.deletions.height
            self.stats.flushes += 1
            self.stats.candles_stored += report.written
            self.stats.candles_deleted += report.deleted
            self.stats.last_flush_at = time.time()
            self.stats.last_flush_seconds = report.seconds
            self.stats.last_flush_error = None
            self.stats.recent_flushes = [*self.stats.recent_flushes[-19:], report]
            logger.debug(
                "= flushed %d candles, %d deletions in %.3fs (%s, %s)",
                report.written, report.deleted, report.seconds, reason, result,
            )  # fmt: skip
        return report

    def _compact_if_our_turn(self) -> bool:
        """Compact when this process runs the lake's maintenance now; whether it did."""
        if self.lease is None:
            self.store.compact()
            return True
        with self.lease.maintenance_turn(self.config.schedule.compaction_interval) as ours:
            if ours:
                self.store.compact()
            return ours

    def _write(self, batch: Batch) -> UpsertResult:
        return self.store.upsert(batch.frame, batch.deletions)

    async def maintain(self) -> None:
        """The scheduled maintenance, in this process's turn (one process per lake): retention
        (``store.retention``, counting back from the stream's clock), then compaction. Either
        failing is logged and counted; the next run tries again."""
        now = datetime.fromtimestamp(self.now_ms() / 1000, UTC)
        try:
            done = await asyncio.to_thread(self._maintain_if_our_turn, now)
        except Exception as exc:  # the turn itself failed (a lost lease): as compaction
            self.stats.compaction_failures += 1
            logger.error("! maintenance failed: %s", exc)
            return
        if done is None:
            return
        if isinstance(done.pruned, Exception):
            self.stats.retention_failures += 1
            logger.error("! retention failed: %s", done.pruned)
        elif done.pruned is not None:
            self.stats.retention_runs += 1
            self.stats.candles_pruned += done.pruned.deleted
        if done.compaction is not None:
            self.stats.compaction_failures += 1
            logger.error("! compaction failed: %s", done.compaction)
        else:
            self.stats.compactions += 1

    def _maintain_if_our_turn(self, now: datetime) -> _Maintenance | None:
        """Retention then compaction when this process runs the lake's maintenance now."""
        if self.lease is None:
            return self._maintenance(now)
        with self.lease.maintenance_turn(self.config.schedule.compaction_interval) as ours:
            return self._maintenance(now) if ours else None

    def _maintenance(self, now: datetime) -> _Maintenance:
        done = _Maintenance()
        policy = self.config.store.retention_policy()
        if policy:
            try:
                done.pruned = self.store.prune(policy, now=now)
            except Exception as exc:  # housekeeping: reported by maintain()
                done.pruned = exc
        try:
            self.store.compact()
        except Exception as exc:
            done.compaction = exc
        return done

    async def compact(self) -> None:
        """Merge small Parquet files and expire old snapshots (scheduled)."""
        try:
            if not await asyncio.to_thread(self._compact_if_our_turn):
                return
            self.stats.compactions += 1
        except Exception as exc:  # compaction is housekeeping: log, count, carry on
            self.stats.compaction_failures += 1
            logger.error("! compaction failed: %s", exc)
