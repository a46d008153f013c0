"""A seeded chaos scenario: the ingest service against the simulator under a fault schedule.

A seed draws a schedule of faults (``plan_faults``); ``ChaosRun`` drives the simulator's
manual clock through it while an in-process :class:`~pipeline.ingest.IngestService` ingests,
then checks that the store equals the simulator's ground truth for every series over the
whole run and that the manager's memory stayed within its configured bound.

Everything that happens is appended to a timeline, and a failure message carries the seed
and that timeline, so ``ChaosRun(seed, ...)`` replays the same schedule.

The faults (issue 7): abrupt disconnects, stalls, graceful closes, malformed frames, ERROR
messages of every code (UNSUPPORTED_PROTOCOL is fatal by design, retry.py ``classify``),
token expiry, close 1009 (fatal by design: "lower max_batch_bytes"), BAD_ACTION under
subscription bursts (a simulator rate limit below the client's burst), a simulator restart
(same seed, same port, same clock), a full disk during flushes (a store whose upsert raises
``OSError(ENOSPC)`` for a while), and a stalled consumer (the store blocks a flush while the
manager's unstored bound is small, so the consumer waits and the socket reader with it).
A fatal fault is followed by what a process supervisor does: start a new service on the
same store.
"""

from __future__ import annotations

import asyncio
import errno
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import Config
from pipeline.dxlink import ErrorCode
from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore, UpsertResult
from tests.helpers.service import (
    START_MS,
    differences,
    series_keys,
    service_config,
    stored_frame,
    truth_frame,
)

__all__ = [
    "FAULT_KINDS",
    "ChaosReport",
    "ChaosRun",
    "FaultyStore",
    "PlannedFault",
    "plan_faults",
]

MINUTE_MS = 60_000
FAULT_KINDS = (
    "drop",
    "close",
    "stall",
    "malformed",
    "error",
    "token",
    "close1009",
    "restart_sim",
    "disk_full",
    "consumer_stall",
)
"""Every fault a schedule can hold."""
FATAL_ERROR_CODES = frozenset({ErrorCode.UNSUPPORTED_PROTOCOL.value})
"""ERROR codes after which the client stops by design (a supervisor restarts ingest)."""
MALFORMED_FRAMES = (
    '{"type":"FEED_DATA","channel":',
    "not json at all",
    '{"type":"NO_SUCH_TYPE","channel":0}',
    '{"type":"FEED_DATA","channel":1,"data":["Candle",[1,2,3]]}',
    "[" * 5000,
)
WAIT_S = 30.0
"""Longest wait for any one observable condition before the run fails."""


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """One fault of a schedule, injected after the clock moved on at ``step``."""

    step: int
    kind: str
    detail: str
    """The fault's argument: an ERROR code, a close code, a frame, a failure count."""
    outage_s: int
    """Simulated seconds that pass while the fault is in effect."""

    def __str__(self) -> str:
        return f"step {self.step}: {self.kind}({self.detail}) for {self.outage_s}s"


def plan_faults(seed: int, steps: int, kinds: tuple[str, ...] = FAULT_KINDS) -> list[PlannedFault]:
    """Draw a fault schedule from ``seed``: every kind at least once when ``steps`` allows.

    Args:
        seed: The schedule's seed; the same seed gives the same schedule.
        steps: Clock steps in the run (one fault at most per step, none at step 0).
        kinds: Which faults may be drawn.

    Returns:
        The faults, ordered by step.
    """
    if steps < 2:
        raise ValueError(f"a chaos run needs at least 2 steps, got {steps}")
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
    rng = random.Random(seed)
    slots = list(range(1, steps))
    rng.shuffle(slots)
    count = min(len(slots), max(len(kinds), len(slots) * 2 // 3))
    # Every kind once first (as far as there is room), then kinds drawn at random.
    ordered = list(kinds)
    rng.shuffle(ordered)
    picks = ordered + [rng.choice(kinds) for _ in range(count - len(ordered))]
    faults = [
        PlannedFault(step, kind, _detail(kind, rng), rng.choice([0, 30, 60, 120, 300]))
        for step, kind in zip(slots[:count], picks, strict=False)
    ]
    return sorted(faults, key=lambda f: f.step)


def _detail(kind: str, rng: random.Random) -> str:
    if kind == "close":
        return str(rng.choice([1000, 1001, 1011, 1012]))
    if kind == "error":
        return rng.choice([code.value for code in ErrorCode])
    if kind == "malformed":
        return str(rng.randrange(len(MALFORMED_FRAMES)))
    if kind == "disk_full":
        return str(rng.randint(1, 3))
    if kind == "token":
        return f"rotated-{rng.getrandbits(32):08x}"
    return ""


class FaultyStore(CandleStore):
    """A real store whose writes can fail with ENOSPC or block, as a full or hung disk does."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, verify_extensions=False, **kwargs)
        self.failures_left = 0
        """Upserts still to fail with ``OSError(ENOSPC)``."""
        self.failed = 0
        """Upserts that failed so far."""
        self.open_gate = threading.Event()
        self.open_gate.set()
        self.blocked = threading.Event()
        """Set once an upsert waits at the closed gate."""

    def upsert(self, frame: pl.DataFrame, deletions: pl.DataFrame | None = None) -> UpsertResult:
        """Wait while the gate is closed; fail while failures are due; else write."""
        if not self.open_gate.is_set():
            self.blocked.set()
            if not self.open_gate.wait(WAIT_S):
                raise TimeoutError("the chaos runner never reopened the store gate")
        if self.failures_left > 0:
            self.failures_left -= 1
            self.failed += 1
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        return super().upsert(frame, deletions)


@dataclass(slots=True)
class ChaosReport:
    """What a run did and found."""

    seed: int
    faults: list[PlannedFault]
    timeline: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    connects: int = 0
    services_started: int = 0
    flush_failures: int = 0
    bad_actions: int = 0
    peak_memory_bytes: int = 0
    memory_limit_bytes: int = 0
    peak_queue: int = 0
    queue_limit: int = 0
    candles_compared: int = 0

    def describe(self) -> str:
        """The seed, the problems and the fault timeline, for replaying a failure."""
        lines = [
            f"chaos seed={self.seed}: replay with ChaosRun(seed={self.seed}, ...)",
            *(f"  problem: {p}" for p in self.problems[:40]),
            "  timeline:",
            *(f"    {entry}" for entry in self.timeline),
        ]
        return "\n".join(lines)


class ChaosRun:
    """One seeded chaos scenario; ``await run()`` returns its :class:`ChaosReport`.

    Args:
        seed: Seeds the fault schedule, the step lengths and the simulator's market.
        workdir: Where the store goes (a fresh folder).
        steps: Clock steps (each 30-90 simulated seconds plus any fault's outage).
        symbols: Symbols captured; every one in each of ``intervals``.
        intervals: Candle periods captured.
        kinds: Faults the schedule may hold.
        subscription_rate: The simulator's FEED_SUBSCRIPTION messages per second (burst 1)
            before BAD_ACTION; the client is set to burst far above it.
    """

    def __init__(
        self,
        seed: int,
        workdir: Path,
        *,
        steps: int = 14,
        symbols: tuple[str, ...] = ("AAPL", "SPY", "QQQ"),
        intervals: tuple[str, ...] = ("1m", "5m"),
        kinds: tuple[str, ...] = FAULT_KINDS,
        subscription_rate: float = 4.0,
    ) -> None:
        self.seed = seed
        self.subscription_rate = subscription_rate
        self.faults = plan_faults(seed, steps, kinds)
        self.steps = steps
        self._rng = random.Random(seed * 7919 + 1)
        self.from_ms = START_MS - 2 * 3600_000
        self.config: Config = service_config(
            workdir / "store",
            symbols=symbols,
            intervals=intervals,
            from_ms=self.from_ms,
            **{
                "client.dead_peer_timeout": 1.0,
                "client.keepalive_timeout": 1.0,
                # Subscribe in small batches, all at once: the simulator's rate limit below
                # answers the burst with BAD_ACTION on every (re)connect.
                "client.batch_max_items": 2,
                "client.subscribe_rate": 1000.0,
                "client.subscribe_burst": 1000,
                "client.queue_size": 4,
                # Small enough that a blocked store stalls the consumer within one outage
                # (candles beyond the history bound are pinned until stored).
                "manager.max_historical_candles": 40,
                "manager.max_unstored": 20,
                # The manager's memory bound is computed from max_series: make it this run's.
                "manager.max_series": len(symbols) * len(intervals),
            },
        )
        self.keys = series_keys(self.config)
        self.clock = SimulatorClock.manual(START_MS)
        self.token = f"chaos-token-{seed}"
        self.report = ChaosReport(seed, self.faults)
        self._store = FaultyStore(workdir / "store")
        self._sim: Simulator | None = None
        self._port = 0
        self._tokens: SimulatorTokenSource | None = None
        self._service: IngestService | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = time.monotonic()

    # ------------------------------------------------------------------ driving

    async def run(self) -> ChaosReport:
        """Run the schedule, drain, compare the store with the truth; never raises on a
        mismatch (the report lists it), only on an unexpected crash of the runner."""
        try:
            await self._start_simulator()
            await self._start_service()
            by_step = {f.step: f for f in self.faults}
            for step in range(self.steps):
                await self._advance(self._rng.choice([30, 60, 90]), f"step {step}")
                fault = by_step.get(step)
                if fault is not None:
                    self._log(str(fault))
                    await self._inject(fault)
                self._sample_memory()
            await self._drain()
            await self._compare()
        except AssertionError as exc:
            self.report.problems.append(str(exc))
        finally:
            await self._teardown()
        return self.report

    async def _start_simulator(self) -> None:
        self._sim = Simulator(
            token=self.token,
            seed=self.seed,
            clock=self.clock,
            port=self._port,
            keepalive_timeout=1.0,
            subscription_rate=self.subscription_rate,
            subscription_burst=1.0,
        )
        await self._sim.start()
        self._port = self._sim.port
        if self._tokens is None:
            self._tokens = SimulatorTokenSource(self._sim.url, self.token)

    async def _start_service(self) -> None:
        assert self._tokens is not None
        if self._service is not None:  # a supervisor restart: keep the old service's count
            self.report.flush_failures += self._service.stats.flush_failures
        self._service = IngestService(
            self.config,
            token_source=self._tokens,
            source_clock_ms=lambda: self.clock.now_ms(),
            store=self._store,
        )
        self._task = asyncio.create_task(self._service.run(), name="chaos-service")
        self.report.services_started += 1
        await self._settled(lambda: True, "service subscribed")

    async def _advance(self, seconds: int, why: str) -> None:
        assert self._sim is not None
        await self._sim.advance(seconds)
        self._log(f"{why}: clock +{seconds}s -> {_at(self.clock.now_ms())}")

    @property
    def sim(self) -> Simulator:
        assert self._sim is not None
        return self._sim

    @property
    def service(self) -> IngestService:
        assert self._service is not None
        return self._service

    # ------------------------------------------------------------------ faults

    async def _inject(self, fault: PlannedFault) -> None:
        sim, before = self.sim, self.sim.connect_count
        kind = fault.kind
        if kind == "drop":
            await sim.drop_connections()
        elif kind == "close":
            await sim.close_connections(int(fault.detail))
        elif kind == "stall":
            sim.stall(True)
            await self._advance(max(fault.outage_s, 30), "stalled")
            await self._wait(lambda: sim.connect_count > before, "reconnect after the stall")
            sim.stall(False)
        elif kind == "malformed":
            await sim.send_malformed(MALFORMED_FRAMES[int(fault.detail)])
        elif kind == "error":
            await sim.send_error(fault.detail, "chaos")
        elif kind == "token":
            assert self._tokens is not None
            self._tokens.replace_token(fault.detail)
            self.token = fault.detail  # a restarted simulator keeps the market's current token
            await sim.rotate_token(fault.detail)
        elif kind == "close1009":
            await sim.close_connections(1009, "message too big (chaos)")
        elif kind == "restart_sim":
            await self._restart_simulator(fault.outage_s)
            return
        elif kind == "disk_full":
            await self._disk_full(int(fault.detail))
            return
        elif kind == "consumer_stall":
            await self._consumer_stall(fault.outage_s)
            return
        if fault.outage_s and kind != "stall":
            await self._advance(fault.outage_s, "outage")
        fatal = kind == "close1009" or (kind == "error" and fault.detail in FATAL_ERROR_CODES)
        if fatal:
            await self._supervisor_restart()
        elif kind == "malformed":
            # Malformed frames are counted and skipped, never a reason to reconnect.
            await self._settled(lambda: True, "after a malformed frame")
        else:
            await self._settled(lambda: sim.connect_count > before, f"recovery from {kind}")

    async def _restart_simulator(self, outage_s: int) -> None:
        await self.sim.stop()
        self._log("simulator stopped")
        self.clock.advance_ms(outage_s * 1000)
        await self._start_simulator()
        self._log(f"simulator restarted on port {self._port} at {_at(self.clock.now_ms())}")
        await self._settled(lambda: self.sim.connect_count > 0, "reconnect to the new simulator")

    async def _disk_full(self, failures: int) -> None:
        store, stats = self._store, self.service.stats
        failed_before, flush_failures_before = store.failed, stats.flush_failures
        store.failures_left = failures
        # Any flush may hit the full disk: ours, or the consumer's back-pressure flush. A
        # consumer whose flush failed waits up to 5 s before taking data again (service.py),
        # so flush until the next failure happened, whenever completed candles come.
        while store.failures_left:
            left = store.failures_left
            await self._advance(30, "disk full")

            async def failed_again(left: int) -> None:
                while store.failures_left == left:
                    await self.service.flush("chaos")
                    await asyncio.sleep(0.02)

            await _bounded(failed_again(left), "a flush to meet the full disk")
        surfaced = stats.flush_failures - flush_failures_before
        if surfaced != store.failed - failed_before:
            raise AssertionError(
                f"disk full: {store.failed - failed_before} ENOSPC writes but {surfaced} failed "
                "flushes counted"
            )
        self._log(f"disk full: {surfaced} flush(es) failed with ENOSPC")
        await self._advance(60, "disk recovered")
        report = await self.service.flush("chaos")
        if report.error is not None:
            raise AssertionError(f"flush after the disk recovered failed: {report.error}")
        self._log(f"disk recovered: flush wrote {report.written}")

    async def _consumer_stall(self, outage_s: int) -> None:
        store = self._store
        store.open_gate.clear()
        store.blocked.clear()
        flush = asyncio.create_task(self.service.flush("chaos-stall"))
        try:
            await self._wait(store.blocked.is_set, "the flush blocked in the store")
            # Time moves on while nothing is stored: the unstored bound stalls the consumer.
            for _ in range(max(outage_s, 60) // 30):
                await self._advance(30, "consumer stalled")
                self._sample_memory()
        finally:
            store.open_gate.set()
        report = await flush
        self._log(
            f"store released: flush wrote {report.written}, "
            f"backpressure waits so far {self.service.stats.backpressure_waits}"
        )

    async def _supervisor_restart(self) -> None:
        """A fatal fault ends ingest with a clear error; start a new service, as systemd would."""
        assert self._task is not None
        task = self._task
        await self._wait(task.done, "the service to stop after a fatal fault", service_may_end=True)
        error = task.exception()
        if error is None:
            raise AssertionError("a fatal fault ended the service without an error")
        text = str(error)
        self._log(f"service ended: {type(error).__name__}: {text[:160]}")
        if len(text) < 20:
            raise AssertionError(f"the fatal error does not say what to fix: {text!r}")
        await self._start_service()

    # ------------------------------------------------------------------ waiting

    async def _wait(
        self, condition: Callable[[], bool], what: str, *, service_may_end: bool = False
    ) -> None:
        """Poll ``condition`` as the loop runs; fail after WAIT_S or if the service dies."""

        async def poll() -> None:
            while not condition():
                task = self._task
                if not service_may_end and task is not None and task.done():
                    error = None if task.cancelled() else task.exception()
                    raise AssertionError(f"the service ended while waiting for {what}: {error!r}")
                await asyncio.sleep(0.02)

        try:
            await asyncio.wait_for(poll(), WAIT_S)
        except TimeoutError:
            raise AssertionError(f"not within {WAIT_S}s: {what}") from None

    async def _settled(self, reconnected: Callable[[], bool], what: str) -> None:
        """Wait for ``reconnected`` and then for every series served on one connection."""
        sim = self.sim
        await self._wait(reconnected, what)
        await self._wait(lambda: sim.connections == 1, f"{what}: one connection")
        await self._wait(
            lambda: sum(len(s) for s in sim.subscriptions().values()) >= len(self.keys),
            f"{what}: subscribed",
        )
        await _bounded(sim.wait_for_subscriptions(len(self.keys)), f"{what}: snapshots served")
        self.report.bad_actions = sim.stats.bad_actions

    def _sample_memory(self) -> None:
        stats = self.service.manager.stats()
        self.report.peak_memory_bytes = max(self.report.peak_memory_bytes, stats.memory_bytes)
        self.report.memory_limit_bytes = stats.memory_limit_bytes
        if stats.memory_bytes > stats.memory_limit_bytes:
            self.report.problems.append(
                f"manager memory {stats.memory_bytes} over its bound {stats.memory_limit_bytes}"
            )
        client = self.service.client
        if client is not None:
            channels = client.get_metrics()["channels"].values()
            deepest = max((int(c["queue_high_water_mark"]) for c in channels), default=0)
            self.report.peak_queue = max(self.report.peak_queue, deepest)
            self.report.queue_limit = self.config.client.queue_size
            if deepest > self.config.client.queue_size:
                self.report.problems.append(f"client queue depth {deepest} over its bound")

    # ------------------------------------------------------------------ checking

    async def _drain(self) -> None:
        service = self.service
        await self._advance(60, "final")
        end = self.clock.now_ms()
        await self._wait(lambda: service.stats.stream_time_ms >= end - MINUTE_MS, "caught up")
        await self._wait(lambda: service.manager.stats().buffered_events == 0, "snapshots applied")
        report = await service.flush("chaos-final")
        if report.error is not None:
            raise AssertionError(f"the final flush failed: {report.error}")
        service.stop()
        assert self._task is not None
        await _bounded(self._task, "service shutdown")
        self.report.connects = self.sim.connect_count
        self.report.flush_failures += service.stats.flush_failures
        self._log(f"drained at {_at(end)}")

    async def _compare(self) -> None:
        end = self.clock.now_ms()
        complete_end = end - 5 * MINUTE_MS - end % (5 * MINUTE_MS)
        sim, store = self.sim, self._store

        def compare() -> list[str]:
            problems: list[str] = []
            for key in self.keys:
                truth = truth_frame(sim, key, self.from_ms, complete_end)
                self.report.candles_compared += truth.height
                stored = stored_frame(store, key, self.from_ms, complete_end)
                problems += [f"{key}: {d}" for d in differences(truth, stored)[:8]]
            # Some seeds leave a symbol quiet; the run as a whole must compare something.
            if self.report.candles_compared < 50 * len(self.keys):
                problems.append(f"only {self.report.candles_compared} candles compared: vacuous")
            return problems

        self.report.problems += await asyncio.to_thread(compare)

    async def _teardown(self) -> None:
        if self._service is not None:
            self._service.stop()
        self._store.open_gate.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(self._task, WAIT_S)
            except Exception as exc:  # the report already says what went wrong first
                self.report.problems.append(f"service did not stop cleanly: {exc!r}")
        if self._sim is not None:
            await self._sim.stop()
        await asyncio.to_thread(self._store.close)

    def _log(self, entry: str) -> None:
        elapsed = time.monotonic() - self._started
        self.report.timeline.append(f"[{elapsed:6.2f}s] {entry}")


async def _bounded(awaitable: Awaitable[Any], what: str) -> None:
    try:
        await asyncio.wait_for(awaitable, WAIT_S)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT_S}s: {what}") from None


def _at(ms: int) -> str:
    return f"{datetime.fromtimestamp(ms / 1000, UTC):%m-%d %H:%M:%S}"
