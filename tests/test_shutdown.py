"""A bounded shutdown (issue 7): an unwritable store cannot keep ``candles ingest`` from exiting.

The process tests run ``candles ingest`` against a simulator whose clock the test moves, and
make the store unwritable the way a vanished or read-only volume does (the Parquet folder is
replaced by a plain file: ``chmod`` does not stop root). The unit tests drive
:class:`ShutdownGuard` with stand-in runs whose ends are explicit events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest

from pipeline.dxlink import Candle, index_of
from pipeline.ingest import EXIT_UNSTORED, IngestService, ShutdownGuard, SimulatorTokenSource
from pipeline.ingest.runner import unstored_completed
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore
from tests.helpers.service import (
    START_MS,
    TOKEN,
    differences,
    eventually,
    service_config,
    stored_frame,
    truth_frame,
    write_ingest_config,
)
from tests.helpers.timing import MS, TIMEOUT

MINUTE = 60_000
SERIES = ["AAPL{=m}", "AAPL{=5m}", "SPY{=m}", "SPY{=5m}"]
FROM_MS = START_MS - 600_000
SHUTDOWN_TIMEOUT = 1.0
BACKPRESSURE = "flushing before taking more data"
GAVE_UP = re.compile(
    r"shutdown gave up \(it did not finish within ingest\.shutdown_timeout = 1s\): "
    r"(?P<candles>[\d,]+) completed candles (\(and [\d,]+ server-side deletions\) )?were not "
    r"stored\. The next start fetches them from the server again"
)


# --------------------------------------------------------------------------- the process


def _write_config(folder: Path, store: Path, url: str, *, tight: bool) -> Path:
    """A config for ``candles ingest``; ``tight`` makes a failing store stall intake fast."""
    limits = {"manager.max_historical_candles": 5, "manager.max_unstored": 5} if tight else {}
    return write_ingest_config(
        folder / ("tight.toml" if tight else "config.toml"),
        store,
        url,
        from_ms=FROM_MS,
        **limits,
        **{"ingest.shutdown_timeout": SHUTDOWN_TIMEOUT},
    )


class Ingest:
    """``candles ingest`` as a child process whose log lines the test can wait for."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._seen: dict[str, asyncio.Event] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, config: Path) -> Ingest:
        """Start ingest with ``config`` (no profile from the environment)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipeline", "ingest", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "CANDLES_PROFILE": ""},
        )  # fmt: skip
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            for text, event in self._seen.items():
                if text in line:
                    event.set()

    async def logged(self, text: str) -> None:
        """Wait until a log line contains ``text``."""
        event = self._seen.setdefault(text, asyncio.Event())
        if any(text in line for line in self.lines):
            event.set()
        await self.bounded(event.wait(), f"a log line with {text!r}", 3 * TIMEOUT)

    async def wait(self) -> int:
        """Wait for the exit (bounded) and the last log line; the exit status."""
        await self.bounded(self.process.wait(), "the process to exit", 6 * TIMEOUT)
        await self.bounded(self._reader, "the end of its log", TIMEOUT)
        assert self.process.returncode is not None
        return self.process.returncode

    async def bounded(self, step: Awaitable[object], what: str, limit: float) -> None:
        """Await ``step`` for at most ``limit`` seconds; else fail showing the log tail."""
        try:
            await asyncio.wait_for(step, limit)
        except TimeoutError:
            raise AssertionError(
                f"waited {limit:g}s for {what}; log tail:\n{self.log_tail()}"
            ) from None

    def log_tail(self) -> str:
        return "\n".join(self.lines[-40:])

    async def kill(self) -> None:
        """End the process if it still runs (test cleanup)."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def ingesting(config: Path) -> AsyncIterator[Ingest]:
    ingest = await Ingest.start(config)
    try:
        yield ingest
    finally:
        await ingest.kill()


def _newest_stored(store_path: Path) -> int:
    if not (store_path / "catalog.sqlite").exists():
        return 0
    with CandleStore(store_path) as store:
        return max(store.resume_points(SERIES).values(), default=0)


async def _minutes(sim: Simulator, count: int) -> None:
    """Move the simulator's clock ``count`` minutes, publishing minute by minute."""
    for _ in range(count):
        await sim.advance(60)


async def _first_flush(ingest: Ingest, store_path: Path) -> None:
    """Wait until the store holds a candle (the ingest process flushed)."""

    async def stored_any() -> bool:
        return await asyncio.to_thread(_newest_stored, store_path) > 0

    try:
        await eventually(stored_any, within=3 * TIMEOUT, what="a first flush")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; log tail:\n{ingest.log_tail()}") from None


def _make_unwritable(store_path: Path) -> None:
    """Put a plain file where the Parquet folder was: every new data file fails to open."""
    (store_path / "data").rename(store_path / "data.unplugged")
    (store_path / "data").write_text("not a folder\n")


def _make_writable(store_path: Path) -> None:
    (store_path / "data").unlink()
    (store_path / "data.unplugged").rename(store_path / "data")


async def _sigterm_with_a_dead_store(
    tmp_path: Path, sim: Simulator, store_path: Path
) -> tuple[int, str, float]:
    """Ingest until the first flush, kill the store, stall intake behind it, send SIGTERM:
    the exit status, the log, and the seconds from the signal to the exit."""
    async with ingesting(_write_config(tmp_path, store_path, sim.url, tight=True)) as ingest:
        await ingest.bounded(sim.wait_for_subscriptions(len(SERIES)), "subscriptions", 3 * TIMEOUT)
        await ingest.bounded(_minutes(sim, 1), "a simulated minute", TIMEOUT)
        await _first_flush(ingest, store_path)
        await asyncio.to_thread(_make_unwritable, store_path)
        # Half an hour of candles that can no longer be stored.
        await ingest.bounded(_minutes(sim, 30), "30 simulated minutes", 3 * TIMEOUT)
        await ingest.logged(BACKPRESSURE)  # intake is stalled behind the failing store
        stopped_at = time.monotonic()
        ingest.process.send_signal(signal.SIGTERM)
        code = await ingest.wait()
        took = time.monotonic() - stopped_at
    return code, "\n".join(ingest.lines), took


def _assert_gave_up(code: int, log: str) -> None:
    """Exit 75, and the log names how many completed candles were not stored."""
    assert code == EXIT_UNSTORED, log[-3000:]
    found = GAVE_UP.search(log)
    assert found is not None, log[-3000:]
    assert int(found["candles"].replace(",", "")) > 0


async def test_unwritable_store_sigterm_gives_up_then_restart_loses_nothing(
    tmp_path: Path,
) -> None:
    """SIGTERM with a dead store: the stop gives up (exit 75, naming the unstored count);
    a restart on a working store then holds exactly the simulator's truth."""
    store_path = tmp_path / "data"
    async with Simulator(token=TOKEN, seed=7, clock=SimulatorClock.manual(START_MS)) as sim:
        code, log, _ = await _sigterm_with_a_dead_store(tmp_path, sim, store_path)
        _assert_gave_up(code, log)

        await asyncio.to_thread(_make_writable, store_path)
        async with ingesting(_write_config(tmp_path, store_path, sim.url, tight=False)) as ingest:
            await ingest.bounded(
                sim.wait_for_subscriptions(len(SERIES)), "subscriptions", 3 * TIMEOUT
            )
            await ingest.bounded(_minutes(sim, 1), "a simulated minute", TIMEOUT)
            end = sim.now_ms
            complete_end = end - 5 * MINUTE - end % (5 * MINUTE)

            async def caught_up() -> bool:
                return await asyncio.to_thread(_newest_stored, store_path) >= complete_end

            try:
                await eventually(caught_up, within=6 * TIMEOUT, what="the restart caught up")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; log tail:\n{ingest.log_tail()}") from None
            ingest.process.send_signal(signal.SIGTERM)
            assert await ingest.wait() == 0, ingest.log_tail()

    with CandleStore(store_path) as store:
        for series in SERIES:
            truth = truth_frame(sim, series, FROM_MS, complete_end)
            assert truth.height > 5
            assert differences(truth, stored_frame(store, series, FROM_MS, complete_end)) == []


@pytest.mark.soak
async def test_unwritable_store_sigterm_exits_soon_after_the_timeout(tmp_path: Path) -> None:
    """The stop that gives up exits within ``shutdown_timeout`` plus one cancellation round
    and the process exit (a bound in seconds: opt-in, it depends on the machine)."""
    async with Simulator(token=TOKEN, seed=7, clock=SimulatorClock.manual(START_MS)) as sim:
        code, log, took = await _sigterm_with_a_dead_store(tmp_path, sim, tmp_path / "data")
    _assert_gave_up(code, log)
    assert took < SHUTDOWN_TIMEOUT + 15_000 * MS, f"exit took {took:.1f}s"


# --------------------------------------------------------------------------- the guard


class StandIn:
    """A service stand-in: ``run()`` ends when ``finish`` is set; counts ``stop()`` calls."""

    def __init__(self, *, absorb_cancellations: int = 0) -> None:
        self.finish = asyncio.Event()
        self.stops = 0
        self.cancellations = 0
        self._absorb = absorb_cancellations

    def stop(self) -> None:
        self.stops += 1

    async def run(self) -> str:
        while True:
            try:
                await self.finish.wait()
                return "ended"
            except asyncio.CancelledError:
                # Like the service's drain step, which suppresses one cancellation.
                self.cancellations += 1
                if self.cancellations > self._absorb:
                    raise


async def test_guard_returns_when_the_run_ends_by_itself() -> None:
    """Without a stop request the guard just waits for the run and never calls stop()."""
    service = StandIn()
    guard = ShutdownGuard(service.stop, timeout=1.0)
    run = asyncio.create_task(service.run())
    asyncio.get_running_loop().call_soon(service.finish.set)
    assert await guard.supervise(run) is False
    assert service.stops == 0 and guard.abandoned_because is None


async def test_guard_reraises_what_the_run_raised() -> None:
    """A run that fails on its own (a fatal client error) fails supervise() the same way."""

    async def fatal() -> None:
        raise ConnectionError("the feed is gone")

    guard = ShutdownGuard(lambda: None, timeout=1.0)
    with pytest.raises(ConnectionError, match="the feed is gone"):
        await guard.supervise(asyncio.create_task(fatal()))


async def test_guard_stops_once_and_waits_for_a_shutdown_that_finishes() -> None:
    """The first request calls stop() once; a shutdown ending in time is not abandoned."""
    service = StandIn()

    def stop() -> None:
        service.stop()
        service.finish.set()

    guard = ShutdownGuard(stop, timeout=60.0)
    run = asyncio.create_task(service.run())
    guard.request("SIGTERM")
    assert await guard.supervise(run) is False
    assert (service.stops, guard.requested_by, guard.abandoned_because) == (1, "SIGTERM", None)


async def test_guard_with_timeout_zero_never_abandons() -> None:
    """shutdown_timeout = 0 waits for the shutdown however long it takes (no deadline armed)."""
    service = StandIn()
    guard = ShutdownGuard(service.stop, timeout=0)
    run = asyncio.create_task(service.run())
    guard.request("duration")
    supervising = asyncio.create_task(guard.supervise(run))
    await asyncio.wait([supervising], timeout=50 * MS)  # a bound: it must not end by itself
    assert not supervising.done() and not run.done()
    service.finish.set()
    assert await supervising is False
    assert guard.abandoned_because is None


async def test_guard_abandons_a_shutdown_that_outlives_the_timeout() -> None:
    """A shutdown still running after ``timeout`` seconds is cancelled, and says why."""
    service = StandIn()
    guard = ShutdownGuard(service.stop, timeout=0.05)
    run = asyncio.create_task(service.run())
    guard.request("SIGTERM")
    assert await asyncio.wait_for(guard.supervise(run), TIMEOUT) is True  # a limit, not a figure
    assert run.cancelled()
    assert guard.abandoned_because == "it did not finish within ingest.shutdown_timeout = 0.05s"


async def test_guard_second_request_abandons_immediately() -> None:
    """A second request cancels the shutdown without waiting for the timeout."""
    service = StandIn()
    guard = ShutdownGuard(service.stop, timeout=3600.0)
    run = asyncio.create_task(service.run())
    guard.request("SIGINT")
    asyncio.get_running_loop().call_soon(guard.request, "SIGINT")
    assert await guard.supervise(run) is True
    assert run.cancelled() and service.stops == 1
    assert guard.abandoned_because == "SIGINT arrived while stopping (SIGINT)"


async def test_guard_cancels_again_a_shutdown_that_absorbs_a_cancellation() -> None:
    """A shutdown step that swallows one cancellation is cancelled again until it ends."""
    service = StandIn(absorb_cancellations=2)
    guard = ShutdownGuard(service.stop, timeout=0.01, grace=TIMEOUT, recancel_every=0.01)
    run = asyncio.create_task(service.run())
    guard.request("SIGTERM")
    assert await guard.supervise(run) is True
    assert run.cancelled() and service.cancellations == 3


async def test_guard_returns_after_grace_when_the_run_will_not_end() -> None:
    """A run that ignores every cancellation (a hung store call) is left after ``grace``."""
    service = StandIn(absorb_cancellations=1_000_000)
    guard = ShutdownGuard(service.stop, timeout=0.01, grace=0.05)
    run = asyncio.create_task(service.run())
    guard.request("SIGTERM")
    assert await guard.supervise(run) is True
    assert not run.done() and service.cancellations >= 1
    service.finish.set()
    assert await run == "ended"


def test_signal_handler_stops_then_gives_up_on_the_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGINT stops (logging the bound); a second SIGINT abandons the shutdown at once."""
    service = StandIn()
    guard = ShutdownGuard(service.stop, timeout=60.0)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        guard.on_signal(signal.SIGINT)
        assert (service.stops, guard.abandoned_because) == (1, None)
        guard.on_signal(signal.SIGINT)
    assert service.stops == 1
    assert guard.abandoned_because == "SIGINT arrived while stopping (SIGINT)"
    assert [r.getMessage() for r in caplog.records] == [
        "stopping (SIGINT): storing completed candles (60s; signal again to give up)",
        "! SIGINT again: giving up on storing the remaining candles",
    ]


@pytest.mark.parametrize(
    ("timeout", "grace", "message"),
    [(-1.0, 1.0, "timeout must be >= 0 seconds"), (1.0, 0.0, "grace must be > 0 seconds")],
)
def test_guard_rejects_bad_bounds(timeout: float, grace: float, message: str) -> None:
    """Negative timeouts and non-positive grace periods are refused with the rule."""
    with pytest.raises(ValueError, match=message):
        ShutdownGuard(lambda: None, timeout=timeout, grace=grace)


# --------------------------------------------------------------------------- the count


def _minute(slot: int) -> Candle:
    time_ms = START_MS + slot * MINUTE
    return Candle(
        "AAPL{=m}", time_ms, index=index_of(time_ms), count=3,
        open=10.0, high=11.0, low=9.0, close=10.5, volume=100.0, vwap=10.2,
    )  # fmt: skip


def test_unstored_completed_counts_what_a_flush_would_write_and_keeps_it(tmp_path: Path) -> None:
    """The count is the completed, unstored candles; they stay held for a later flush."""
    config = service_config(tmp_path / "store", symbols=("AAPL",), intervals=("1m",))
    service = IngestService(config, token_source=SimulatorTokenSource("ws://127.0.0.1:9", TOKEN))
    service.manager.update([_minute(slot) for slot in range(4)], START_MS)
    # Slots 0-2 are complete (a newer candle exists); slot 3 is the live one.
    assert unstored_completed(service) == (3, 0)
    assert unstored_completed(service) == (3, 0)  # handed back, not consumed
    # With the clock moved past slot 3's end (grace 0), the live candle is complete too.
    assert unstored_completed(service, now_ms=START_MS + 4 * MINUTE) == (4, 0)
    assert service.manager.take_completed().frame.height == 4
