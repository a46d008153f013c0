"""Running ``candles ingest`` as a process: source, signals, logging and the status line.

:class:`~pipeline.ingest.service.IngestService` is the library; this module is what a process adds
around it: start the built-in simulator when the config asks for it, install SIGINT/SIGTERM
handlers that stop the service gracefully, configure logging, and draw a one-line live status
on a terminal (plain periodic log lines otherwise).

A stop is bounded (issue 7): a store that never becomes writable again would keep the final
flush retrying forever. :class:`ShutdownGuard` gives the shutdown ``ingest.shutdown_timeout``
seconds (a second signal: none), then cancels it. Whatever completed candles are still unstored
then are counted and logged, and ingest ends with :data:`EXIT_UNSTORED`. Nothing is lost while
the server keeps the history: the next start resumes every series from its last stored candle
(DESIGN.md, "the store is the truth").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from pipeline import __version__
from pipeline.config import Config
from pipeline.dxlink import DXLinkError
from pipeline.dxlink.client import TokenSource
from pipeline.ingest.service import IngestService
from pipeline.ingest.sources import SimulatorTokenSource
from pipeline.ingest.tastytrade import TastytradeTokenSource
from pipeline.ingest.tuning import ingest_process_tuning
from pipeline.store import CandleStore, S3Options, StoreError

__all__ = [
    "EXIT_UNSTORED",
    "IngestError",
    "ShutdownGuard",
    "ShutdownIncomplete",
    "run_ingest",
    "startup_line",
    "status_line",
    "token_source_for",
    "unstored_completed",
]

logger = logging.getLogger("pipeline")

# How often the status line / status log is refreshed.
STATUS_INTERVAL_S = 1.0
LOG_STATUS_INTERVAL_S = 30.0

EXIT_UNSTORED = 75
"""Exit status when ingest stopped with completed candles not stored (sysexits' EX_TEMPFAIL:
a temporary failure; the next start fetches those candles from the server again)."""
ABANDON_GRACE_S = 5.0
"""Seconds a cancelled shutdown may take to unwind before the process exits regardless."""
RECANCEL_S = 1.0
"""A shutdown step may absorb one cancellation (it suppresses ``CancelledError`` to drain):
a cancelled shutdown is cancelled again this often until it ends."""


class IngestError(Exception):
    """Ingest could not start or had to stop; the message says what to fix."""


class ShutdownIncomplete(IngestError):
    """Ingest stopped with completed candles not stored; the message says how many and why.

    Args:
        message: The explanation (already logged by :func:`run_ingest`).
        candles: Completed candles that were not stored.
        deletions: Server-side removals that were not applied to the store.
    """

    exit_code = EXIT_UNSTORED

    def __init__(self, message: str, *, candles: int, deletions: int) -> None:
        super().__init__(message)
        self.candles = candles
        self.deletions = deletions


class ShutdownGuard:
    """Bounds a stopping service: ask it to stop once, cancel its shutdown when that takes
    too long or a second stop is requested.

    Args:
        stop: Asks the service to finish (``IngestService.stop``).
        timeout: Seconds from the first request until the shutdown is cancelled; 0 waits
            forever (``ingest.shutdown_timeout``).
        grace: Seconds the cancelled run may take to unwind before :meth:`supervise` returns
            without it (a store call hung in the OS cannot be interrupted).
        recancel_every: Seconds between cancellations while the run unwinds.
    """

    def __init__(
        self,
        stop: Callable[[], None],
        *,
        timeout: float,
        grace: float = ABANDON_GRACE_S,
        recancel_every: float = RECANCEL_S,
    ) -> None:
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds (0 waits forever), got {timeout}")
        if grace <= 0:
            raise ValueError(f"grace must be > 0 seconds, got {grace}")
        if recancel_every <= 0:
            raise ValueError(f"recancel_every must be > 0 seconds, got {recancel_every}")
        self._stop = stop
        self.timeout = timeout
        self.grace = grace
        self.recancel_every = recancel_every
        self.requested_by: str | None = None
        """What asked for the stop first (``"SIGTERM"``, ``"duration"``), or ``None``."""
        self.abandoned_because: str | None = None
        """Why the shutdown was cancelled, or ``None`` while it was not."""
        self._requested = asyncio.Event()
        self._abandon = asyncio.Event()

    def request(self, reason: str) -> None:
        """Stop the service; a second request cancels its shutdown at once (signal-safe)."""
        if self.requested_by is None:
            self.requested_by = reason
            self._requested.set()
            self._stop()
        elif not self._abandon.is_set():
            self.abandoned_because = f"{reason} arrived while stopping ({self.requested_by})"
            self._abandon.set()

    def on_signal(self, sig: signal.Signals) -> None:
        """SIGINT/SIGTERM handler: say what happens, then :meth:`request` the stop."""
        if self.requested_by is None:
            limit = f"{self.timeout:g}s" if self.timeout else "no time limit"
            logger.info(
                "stopping (%s): storing completed candles (%s; signal again to give up)",
                sig.name, limit,
            )  # fmt: skip
        else:
            logger.warning("! %s again: giving up on storing the remaining candles", sig.name)
        self.request(sig.name)

    async def supervise(self, run: asyncio.Task[Any]) -> bool:
        """Wait for ``run`` (the service's ``run()``) through its shutdown, bounded.

        Returns:
            ``True`` when the shutdown was cancelled; ``run`` may then still be unwinding
            (it did not end within ``grace``). ``False`` when ``run`` ended by itself.

        Raises:
            Exception: Whatever ``run`` raised when it ended by itself.
        """
        if not await self._first_of(run, self._requested):
            limit = self.timeout or None  # 0 waits forever
            if not await self._first_of(run, self._abandon, within=limit):
                if self.abandoned_because is None:
                    self.abandoned_because = (
                        f"it did not finish within ingest.shutdown_timeout = {self.timeout:g}s"
                    )
                await self._unwind(run)
                return True
        run.result()
        return False

    @staticmethod
    async def _first_of(
        run: asyncio.Task[Any], event: asyncio.Event, *, within: float | None = None
    ) -> bool:
        """Wait until ``run`` ends, ``event`` is set or ``within`` s pass; True if ``run`` ended."""
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([run, waiter], timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        return run.done()

    async def _unwind(self, run: asyncio.Task[Any]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        while not run.done() and (left := deadline - loop.time()) > 0:
            run.cancel()
            await asyncio.wait([run], timeout=min(left, self.recancel_every))
        if run.done() and not run.cancelled() and run.exception() is not None:
            logger.warning("! the cancelled shutdown ended with %r", run.exception())


def unstored_completed(service: IngestService, *, now_ms: int | None = None) -> tuple[int, int]:
    """(completed candles, deletions) the service holds that the store does not have.

    Asks the manager what a flush would write and hands that back untouched.

    Args:
        service: The stopped service.
        now_ms: Move the manager's clock here first (an abandoned shutdown may not have
            flushed at the current time); ``None`` counts at the clock of the last flush, so
            a candle completed only by time passing after a successful final flush is not
            reported as lost.
    """
    manager = service.manager
    if now_ms is not None:
        manager.advance(now_ms)
    batch = manager.take_completed()
    manager.release(batch)
    return batch.rows, batch.deletions.height


def run_ingest(config: Config, *, duration: float | None = None, interactive: bool = False) -> None:
    """Run ingest in this process until interrupted or ``duration`` seconds have passed.

    Raises:
        ShutdownIncomplete: It stopped with completed candles not stored (exit with
            :data:`EXIT_UNSTORED`); the explanation is logged already.
        IngestError: It could not start or had to stop; the message says what to fix.
    """
    logging.basicConfig(
        level=config.logging.level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Library chatter (every scheduled run, every socket open/close) drowns our own lines.
    level = logging.getLevelName(config.logging.level)
    logging.getLogger("websockets").setLevel(max(logging.WARNING, level))
    # APScheduler warns on every run skipped while a slow flush is still going: that skip is
    # the intended max_instances=1 behaviour, and our own flush log says what happened.
    logging.getLogger("apscheduler").setLevel(max(logging.ERROR, level))
    if duration is not None and duration <= 0:
        raise IngestError(f"duration must be > 0 seconds, got {duration:g}")
    try:
        with ingest_process_tuning():  # process-wide settings: this entry point's alone
            asyncio.run(_main(config, duration, interactive))
    except (DXLinkError, ConnectionError, StoreError, OSError) as exc:
        # Fatal by classification (bad credentials, unsupported protocol, attempts exhausted,
        # an unusable store or port): the message says what to fix; no traceback.
        raise IngestError(f"{type(exc).__name__}: {exc}") from None


async def _main(config: Config, duration: float | None, interactive: bool) -> None:
    async with _source(config) as (url, clock_ms):
        service = IngestService(
            config, token_source=token_source_for(config, simulator_url=url),
            source_clock_ms=clock_ms,
        )  # fmt: skip
        logger.info("%s", startup_line(config, service))
        guard = ShutdownGuard(service.stop, timeout=config.ingest.shutdown_timeout)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, guard.on_signal, sig)
        # The runner, not the service, times --duration, so that stop is bounded too.
        timer = None if duration is None else loop.call_later(duration, guard.request, "duration")
        status = asyncio.create_task(_report_status(service, interactive))
        run = asyncio.create_task(service.run(), name="ingest-service")
        try:
            abandoned = await guard.supervise(run)
        finally:
            if timer is not None:
                timer.cancel()
            status.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if interactive:
                sys.stderr.write("\n")
            logger.info(
                "stopped: %d candles stored in %d flushes, %d flush failures",
                service.stats.candles_stored, service.stats.flushes, service.stats.flush_failures,
            )  # fmt: skip
        _report_unstored(service, guard.abandoned_because if abandoned else None, run)


def _report_unstored(service: IngestService, abandoned: str | None, run: asyncio.Task[Any]) -> None:
    """Log and raise :class:`ShutdownIncomplete` when completed candles were not stored."""
    candles, deletions = unstored_completed(
        service, now_ms=None if abandoned is None else service.now_ms()
    )
    if abandoned is None and not (candles or deletions):
        return
    why = f"shutdown gave up ({abandoned})" if abandoned else "the final flush failed"
    also = f" (and {deletions:,} server-side deletions)" if deletions else ""
    message = (
        f"{why}: {candles:,} completed candles{also} were not stored. The next start fetches "
        "them from the server again: it resumes every series from its last stored candle, "
        "so nothing is lost as long as the server still has that history."
    )
    logger.error("! %s", message)
    if not run.done():
        # A store call is stuck in the OS (a hung disk) and would keep the process from
        # exiting; the store is crash-safe (tests/chaos), so leave without closing it.
        logger.error("! a store operation is still hung; exiting without closing the store")
        logging.shutdown()
        os._exit(EXIT_UNSTORED)
    raise ShutdownIncomplete(message, candles=candles, deletions=deletions)


@contextlib.asynccontextmanager
async def _source(
    config: Config,
) -> AsyncIterator[tuple[str | None, Callable[[], int] | None]]:
    """Yield (simulator URL or None, source clock) for the configured source."""
    sim_cfg = config.source.simulator
    if config.source.kind != "simulator":
        yield None, lambda: int(time.time() * 1000)
        return
    if sim_cfg.url is not None:
        yield sim_cfg.url, None
        return
    from pipeline.simulator import Simulator, SimulatorClock

    start_ms = await asyncio.to_thread(_simulated_start_ms, config)
    simulator = Simulator(
        host=sim_cfg.host,
        port=sim_cfg.port,
        token=sim_cfg.token,
        seed=sim_cfg.seed,
        history_days=sim_cfg.history_days,
        clock=SimulatorClock.accelerated(speed=sim_cfg.speed, start_ms=start_ms),
    )
    async with simulator:
        logger.info("built-in DXLink simulator at %s (speed %gx)", simulator.url, sim_cfg.speed)
        yield simulator.url, lambda: simulator.now_ms


def _simulated_start_ms(config: Config) -> int:
    """Where the in-process simulator's clock starts: now, or after the newest stored candle.

    The simulator's clock runs ahead of the wall clock (speed x). Starting a restarted
    simulator *after* what the store already holds keeps the simulated time monotonic across
    restarts, so resuming from the store never asks for the future.
    """
    now = int(time.time() * 1000)
    store = CandleStore(
        config.store.path,
        catalog=config.store.catalog,
        data_path=config.store.data_path,
        s3=S3Options(**config.store.s3.model_dump()),
    )
    try:
        newest = max(store.resume_points().values(), default=None)
    finally:
        store.close()
    return max(now, newest + 60_000) if newest is not None else now


async def _report_status(service: IngestService, interactive: bool) -> None:
    previous = (time.monotonic(), 0)
    last_log = time.monotonic()
    while True:
        await asyncio.sleep(STATUS_INTERVAL_S)
        now = time.monotonic()
        rate = (service.stats.candles_received - previous[1]) / max(now - previous[0], 1e-9)
        previous = (now, service.stats.candles_received)
        line = status_line(service, rate)
        if interactive:
            sys.stderr.write("\r\x1b[2K" + line)
            sys.stderr.flush()
        elif now - last_log >= LOG_STATUS_INTERVAL_S:
            last_log = now
            logger.info("%s", line)


def startup_line(config: Config, service: IngestService) -> str:
    """What this process runs, in one log line: enough to read a journal without the config.

    Secrets never appear (the catalog's conninfo is redacted; tokens are not in the config).
    """
    series = [s.normalized for s in service.series]
    shown = ", ".join(series[:4]) + (f", ... ({len(series)} in all)" if len(series) > 4 else "")
    store = config.store
    catalog = CandleStore.describe_catalog(store.path, store.catalog)
    keep = ", ".join(f"{period} {age}" for period, age in store.retention.items()) or "keep all"
    source: str = config.source.kind
    if config.source.kind == "tastytrade":
        source += f" ({config.source.tastytrade.api_url})"
    return (
        f"starting candle-pipeline {__version__} (pid {os.getpid()}): source {source}; "
        f"series {shown}; shard {service.shard}; store {store.path} ({catalog}); "
        f"flush every {config.schedule.flush_interval:g}s, maintenance every "
        f"{config.schedule.compaction_interval:g}s (retention: {keep}); "
        f"shutdown_timeout {config.ingest.shutdown_timeout:g}s"
    )


def status_line(service: IngestService, rate: float) -> str:
    """One line: connection state, candles/s, series, last flush, stored, failures."""
    stats = service.stats
    state = service.connection_state()
    held = service.manager.stats()
    if stats.last_flush_at is None:
        flushed = "no flush yet"
    else:
        flushed = f"flushed {time.time() - stats.last_flush_at:.0f}s ago"
    stream = datetime.fromtimestamp(service.now_ms() / 1000, UTC).strftime("%Y-%m-%d %H:%M")
    failures = f" | {stats.flush_failures} flush failures" if stats.flush_failures else ""
    return (
        f"{state} | {rate:,.0f} candles/s | {held.series} series | {flushed} | "
        f"{stats.candles_stored:,} stored | stream {stream}{failures}"
    )


def token_source_for(config: Config, *, simulator_url: str | None = None) -> TokenSource:
    """The token source the config asks for (the simulator's needs its URL)."""
    if config.source.kind == "tastytrade":
        return TastytradeTokenSource.from_config(config.source.tastytrade)
    if simulator_url is None:
        raise ValueError("the simulator source needs the URL of a running simulator")
    return SimulatorTokenSource(simulator_url, config.source.simulator.token)
