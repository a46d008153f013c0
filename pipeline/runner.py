"""Running ``candles ingest`` as a process: source, signals, logging and the status line.

:class:`~pipeline.service.IngestService` is the library; this module is what a process adds
around it: start the built-in simulator when the config asks for it, install SIGINT/SIGTERM
handlers that stop the service gracefully (a second signal aborts), configure logging, and
draw a one-line live status on a terminal (plain periodic log lines otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from pipeline.config import Config
from pipeline.dxlink.errors import DXLinkError
from pipeline.service import IngestService, token_source_for
from pipeline.store import CandleStore, StoreError

__all__ = ["IngestError", "run_ingest", "status_line"]

logger = logging.getLogger("pipeline")

# How often the status line / status log is refreshed.
STATUS_INTERVAL_S = 1.0
LOG_STATUS_INTERVAL_S = 30.0


class IngestError(Exception):
    """Ingest could not start or had to stop; the message says what to fix."""


def run_ingest(config: Config, *, duration: float | None = None, interactive: bool = False) -> None:
    """Run ingest in this process until interrupted or ``duration`` seconds have passed."""
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
    try:
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
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _on_signal, service)
        status = asyncio.create_task(_report_status(service, interactive))
        try:
            await service.run(duration)
        finally:
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


def _on_signal(service: IngestService) -> None:
    if service.stopping:
        logger.warning("! second signal: aborting without the final flush")
        raise SystemExit(130)
    logger.info("stopping: flushing completed candles (signal again to abort)")
    service.stop()


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
        config.store.path, catalog=config.store.catalog, data_path=config.store.data_path
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
