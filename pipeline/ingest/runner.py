"""Running ``candles ingest`` as a process: source, signals, logging and the status line.

:class:`~pipeline.ingest.service.IngestService` is the library; this module is what a process adds
around it: start the built-in simulator when the config asks for it, install SIGINT/SIGTERM
handlers that stop the service gracefully, configure logging, and draw a one-line live status
on a terminal (plain periodic log lines otherwise).

Exit status (what a supervisor such as systemd sees): 0 when every completed candle was stored;
1 (:class:`IngestError`) when ingest could not start or had to stop; :data:`EXIT_UNAVAILABLE`
when the run ended without ever connecting to its source (every attempt failed: a wrong URL, a
server that is down); :data:`EXIT_UNSTORED` when completed candles were not stored.

The built-in simulator's market clock starts ``source.simulator.start_behind`` behind the wall
clock (later when the store already holds newer candles), runs ``speed`` times faster until it
reaches the wall clock, then in real time: stored candles never lie in the future, however
often ingest restarts (issue 17).

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
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline import __version__
from pipeline.config import Config, parse_duration
from pipeline.dxlink import AuthenticationError, ConfigurationError, DXLinkError
from pipeline.dxlink.client import TokenSource, loggable_url
from pipeline.ingest.service import IngestService
from pipeline.ingest.sources import DXLinkTokenSource, SimulatorTokenSource
from pipeline.ingest.tastytrade import TastytradeTokenSource
from pipeline.ingest.tuning import ingest_process_tuning
from pipeline.store import CandleStore, S3Options, StoreError, connect

if TYPE_CHECKING:
    from pipeline.simulator import SimulatorClock

__all__ = [
    "EXIT_UNAVAILABLE",
    "EXIT_UNSTORED",
    "IngestError",
    "NeverConnected",
    "ShutdownGuard",
    "ShutdownIncomplete",
    "run_ingest",
    "simulator_start_ms",
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
EXIT_UNAVAILABLE = 69
"""Exit status when the run ended without ever connecting to its source (sysexits'
EX_UNAVAILABLE): every attempt failed, nothing was received."""
ABANDON_GRACE_S = 5.0
"""Seconds a cancelled shutdown may take to unwind before the process exits regardless."""
RECANCEL_S = 1.0
"""A shutdown step may absorb one cancellation (it suppresses ``CancelledError`` to drain):
a cancelled shutdown is cancelled again this often until it ends."""


class IngestError(Exception):
    """Ingest could not start or had to stop; the message says what to fix."""


class NeverConnected(IngestError):
    """The run ended (``--duration``, a signal) without one successful connection."""

    exit_code = EXIT_UNAVAILABLE


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
        # an unusable store or port): the message says what to fix; no traceback. Our own
        # errors already read as a sentence; the class name helps only for the others.
        plain = isinstance(exc, StoreError | ConfigurationError | AuthenticationError)
        raise IngestError(str(exc) if plain else f"{type(exc).__name__}: {exc}") from None


async def _main(config: Config, duration: float | None, interactive: bool) -> None:
    started = time.monotonic()
    async with open_source(config) as (url, clock_ms):
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
        _report_never_connected(service, config, url, time.monotonic() - started)


def _report_never_connected(
    service: IngestService, config: Config, url: str | None, seconds: float
) -> None:
    """Raise :class:`NeverConnected` when every connection attempt of the run failed.

    A run stopped before its first attempt finished (no failure seen) is not reported: it
    learned nothing about the source.
    """
    if service.client is None:
        return
    connection = service.client.get_metrics()["connection"]
    if connection["connect_count"] or not connection["last_error"]:
        return
    where = _describe_source(config, url)
    message = (
        f"never connected to {where} in {seconds:.0f}s, nothing was ingested; the last "
        f"attempt failed with {connection['last_error']}. `candles doctor` checks each step"
    )
    logger.error("! %s", message)
    raise NeverConnected(message)


def _describe_source(config: Config, url: str | None) -> str:
    """The source as messages name it (URLs without credentials or query)."""
    kind = config.source.kind
    if kind == "tastytrade":
        return f"tastytrade ({config.source.tastytrade.api_url})"
    if kind == "dxlink":
        return f"the DXLink endpoint {loggable_url(config.source.dxlink.url)}"
    return f"the simulator at {loggable_url(url)}" if url else "the simulator"


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
async def open_source(
    config: Config,
) -> AsyncIterator[tuple[str | None, Callable[[], int] | None]]:
    """Yield (simulator URL or None, source clock) for the configured source, starting the
    built-in simulator in-process when the config asks for it (``candles doctor`` too)."""
    sim_cfg = config.source.simulator
    if config.source.kind != "simulator":
        yield None, lambda: int(time.time() * 1000)
        return
    if sim_cfg.url is not None:
        yield sim_cfg.url, None
        return
    from pipeline.simulator import Simulator

    clock, started_how = await asyncio.to_thread(simulator_start, config)
    simulator = Simulator(
        host=sim_cfg.host,
        port=sim_cfg.port,
        token=sim_cfg.token,
        seed=sim_cfg.seed,
        history_days=sim_cfg.history_days,
        clock=clock,
    )
    async with simulator:
        logger.info("built-in DXLink simulator at %s: %s", simulator.url, started_how)
        yield simulator.url, lambda: simulator.now_ms


def simulator_start_ms(
    start_behind: str, newest_stored_ms: int | None, now_ms: int
) -> tuple[int, str]:
    """Where the in-process simulator's market clock starts, and why, in words.

    ``start_behind`` before ``now_ms``, or just after the newest stored candle when that is
    later (so a restart resumes every series from the store without asking for the
    future), but never after ``now_ms``. A store written by an older version, whose
    simulator ran ahead of the wall clock, is the one exception: starting before its candles
    would ask for the future, so the clock starts after them and runs in real time.

    Returns:
        (start in ms since the epoch, why: "1h behind the wall clock", ...).
    """
    behind = int(parse_duration(start_behind).total_seconds() * 1000)
    start, why = now_ms - behind, f"{start_behind} behind the wall clock"
    if newest_stored_ms is not None and newest_stored_ms + 60_000 > start:
        start, why = newest_stored_ms + 60_000, "just after the newest stored candle"
    if start > now_ms and (newest_stored_ms is None or newest_stored_ms < now_ms):
        start, why = now_ms, "at the wall clock"
    return start, why


def simulator_start(
    config: Config, *, wall: Callable[[], float] = time.time
) -> tuple[SimulatorClock, str]:
    """The in-process simulator's clock and the first log line's account of it.

    Returns:
        (a :class:`~pipeline.simulator.SimulatorClock`, a sentence for the log).
    """
    from pipeline.simulator import SimulatorClock

    sim = config.source.simulator
    now_ms = int(wall() * 1000)
    start, why = simulator_start_ms(sim.start_behind, _newest_stored_ms(config), now_ms)
    at = datetime.fromtimestamp(start / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if start > now_ms:
        logger.warning(
            "! the store holds candles up to %s, ahead of the wall clock (an older version's "
            "simulator ran ahead); the simulator continues after them in real time. Delete "
            "the store folder %s for a clean start",
            at, config.store.path,
        )  # fmt: skip
        return SimulatorClock.accelerated(1.0, start), f"market clock at {at} (ahead), real time"
    clock = SimulatorClock.catching_up(sim.speed, start, wall=wall)
    catch_up = clock.real_seconds_to_catch_up()
    if catch_up == 0:
        pace = "it runs in real time"
    elif catch_up is None:
        pace = f"it runs {sim.speed:g}x, slower than the wall clock"
    else:
        pace = (
            f"it runs {sim.speed:g}x until it reaches the wall clock (in about {catch_up:.0f}s), "
            "then in real time"
        )
    return clock, f"market clock starts {why} ({at}); {pace}, never ahead of the wall clock"


def _newest_stored_ms(config: Config) -> int | None:
    """The newest candle time in the store, read without writing; None when there is none."""
    store = config.store
    try:
        con = connect(
            store.path,
            catalog=store.catalog,
            data_path=store.data_path,
            s3=S3Options(**store.s3.model_dump()),
        )
    except StoreError:
        return None  # no store yet, or an unusable one: opening it for writing says why
    try:
        row = con.execute("SELECT epoch_ms(max(time)) FROM candles").fetchone()
    finally:
        con.close()
    return int(row[0]) if row is not None and row[0] is not None else None


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
    return (
        f"starting candle-pipeline {__version__} (pid {os.getpid()}): source "
        f"{_describe_source(config, None)}; "
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
    stream_ms = service.now_ms()
    try:
        stream = datetime.fromtimestamp(stream_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):  # beyond what a datetime holds: the number
        stream = f"{stream_ms} ms"
    failures = f" | {stats.flush_failures} flush failures" if stats.flush_failures else ""
    return (
        f"{state} | {rate:,.0f} candles/s | {held.series} series | {flushed} | "
        f"{stats.candles_stored:,} stored | stream {stream}{failures}"
    )


def token_source_for(
    config: Config,
    *,
    simulator_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> TokenSource:
    """The token source the config asks for (the simulator's needs its URL); secrets come
    from ``environ`` (default ``os.environ``)."""
    if config.source.kind == "tastytrade":
        return TastytradeTokenSource.from_config(config.source.tastytrade, environ=environ)
    if config.source.kind == "dxlink":
        return DXLinkTokenSource.from_config(config.source.dxlink, environ=environ)
    if simulator_url is None:
        raise ValueError("the simulator source needs the URL of a running simulator")
    return SimulatorTokenSource(simulator_url, config.source.simulator.token)
