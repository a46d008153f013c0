"""Seeded SIGKILL chaos: ``candles ingest`` as a process, killed while it flushes, restarted.

The process flushes back to back (``schedule.flush_interval`` = 0.05 s) while the simulator
publishes a large backlog, so a kill at a seeded moment lands inside or between flushes of
big batches. After each kill the store must open and be consistent (no half-written
batch visible), and after the last restart it must equal the simulator's truth.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore
from tests.helpers.service import START_MS, differences, eventually, stored_frame, truth_frame

__all__ = ["KillReport", "KillRun"]

MINUTE_MS = 60_000
SERIES = ("AAPL{=m}", "AAPL{=5m}", "SPY{=m}", "SPY{=5m}")
FROM_MS = START_MS - 6 * 3600_000
TOKEN = "kill-token"


@dataclass(slots=True)
class KillReport:
    """What a kill run did and found."""

    seed: int
    kills: int = 0
    timeline: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The seed, the problems and the timeline, for replaying a failure."""
        return "\n".join(
            [
                f"kill chaos seed={self.seed}: replay with KillRun(seed={self.seed}, ...)",
                *(f"  problem: {p}" for p in self.problems[:40]),
                "  timeline:",
                *(f"    {entry}" for entry in self.timeline),
            ]
        )


class KillRun:
    """Start ingest, SIGKILL it ``kills`` times at seeded moments, restart, compare.

    Args:
        seed: Seeds the kill moments, the outages and the simulator's market.
        workdir: A fresh folder for the config, the store and the process logs.
        kills: How many times the process is killed.
    """

    def __init__(self, seed: int, workdir: Path, *, kills: int = 2) -> None:
        self.seed = seed
        self.kills = kills
        self.workdir = workdir
        self.store_path = workdir / "store"
        self.report = KillReport(seed)
        self._rng = random.Random(seed)
        self._started = time.monotonic()
        self._logs: list[Path] = []

    async def run(self) -> KillReport:
        """Run the kills and the final comparison; problems go into the report."""
        clock = SimulatorClock.manual(START_MS)
        async with Simulator(token=TOKEN, seed=self.seed, clock=clock) as sim:
            settings = self._settings(sim.url)
            process: subprocess.Popen[bytes] | None = None
            try:
                for number in range(self.kills):
                    process = self._start(settings)
                    await self._kill_while_flushing(sim, process, number)
                    await self._check_store_opens()
                process = self._start(settings)
                await self._finish(sim, process)
            except AssertionError as exc:
                self.report.problems.append(str(exc))
            finally:
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
            if not self.report.problems:
                await asyncio.to_thread(self._compare, sim)
        return self.report

    async def _kill_while_flushing(
        self, sim: Simulator, process: subprocess.Popen[bytes], number: int
    ) -> None:
        await asyncio.wait_for(sim.wait_for_subscriptions(len(SERIES)), 60)
        self._log(f"ingest {number} subscribed")
        # A backlog of simulated minutes: the next flushes carry big batches.
        backlog = self._rng.choice([5, 15, 30, 60])
        for _ in range(backlog // 5):
            await sim.advance(300)
        files_before = self._data_files()
        await eventually(
            lambda: self._data_files() > files_before, within=60, what="a flush after the backlog"
        )
        self._log(f"ingest {number} flushing the backlog")
        # The kill moment is the fault, not a synchronisation: flushes run back to back.
        await asyncio.sleep(self._rng.uniform(0.0, 0.2))
        process.send_signal(signal.SIGKILL)
        code = await asyncio.to_thread(process.wait, 30)
        if code != -signal.SIGKILL:
            raise AssertionError(f"kill {number}: the process ended with {code}, not SIGKILL")
        self.report.kills += 1
        outage = self._rng.choice([60, 300, 900])
        await sim.advance(outage)
        self._log(f"kill {number} after a {backlog} min backlog; outage {outage}s")

    async def _check_store_opens(self) -> None:
        """After a kill the store opens and answers; a kill inside the very first flush
        leaves it empty (DuckLake writes Parquet, then commits: nothing half-visible)."""

        def check() -> str:
            with CandleStore(self.store_path, verify_extensions=False) as store:
                points = store.resume_points(list(SERIES))
            return f"store opens, {len(points)} series stored"

        self._log(await asyncio.to_thread(check))

    async def _finish(self, sim: Simulator, process: subprocess.Popen[bytes]) -> None:
        await asyncio.wait_for(sim.wait_for_subscriptions(len(SERIES)), 60)
        await sim.advance(60)
        await sim.advance(60)
        end = sim.now_ms
        self.complete_end = end - 5 * MINUTE_MS - end % (5 * MINUTE_MS)

        async def caught_up() -> bool:
            return await asyncio.to_thread(self._newest_stored) >= self.complete_end

        await eventually(caught_up, within=60, what="restarted ingest caught up")
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 60)
        if code != 0:
            log = self._logs[-1].read_text()[-2000:]
            raise AssertionError(f"ingest stopped with {code}: {log}")
        self._log("final ingest caught up and stopped cleanly")

    def _compare(self, sim: Simulator) -> None:
        with CandleStore(self.store_path, verify_extensions=False) as store:
            for series in SERIES:
                truth = truth_frame(sim, series, FROM_MS, self.complete_end)
                if truth.height < 50:
                    self.report.problems.append(f"{series}: truth has {truth.height}; vacuous")
                diff = differences(truth, stored_frame(store, series, FROM_MS, self.complete_end))
                self.report.problems += [f"{series}: {d}" for d in diff[:8]]

    def _data_files(self) -> int:
        """Parquet files in the store: a new one appears with each flush that wrote."""
        return sum(1 for _ in self.store_path.rglob("*.parquet"))

    def _newest_stored(self) -> int:
        if not (self.store_path / "catalog.sqlite").exists():
            return 0
        with CandleStore(self.store_path, verify_extensions=False) as store:
            return max(store.resume_points(list(SERIES)).values(), default=0)

    def _settings(self, url: str) -> dict[str, str]:
        """The process's configuration, as ``CANDLES_*`` environment overrides (config.py)."""
        settings = {
            "SOURCE__KIND": "simulator",
            "SOURCE__SIMULATOR__URL": url,
            "SOURCE__SIMULATOR__TOKEN": TOKEN,
            "SUBSCRIPTIONS__SYMBOLS": '["AAPL", "SPY"]',
            "SUBSCRIPTIONS__INTERVALS": '["1m", "5m"]',
            "SUBSCRIPTIONS__FROM_TIME": datetime.fromtimestamp(FROM_MS / 1000, UTC).isoformat(),
            "CLIENT__BACKOFF_INITIAL": "0.05",
            "CLIENT__BACKOFF_MAX": "0.5",
            "MANAGER__GRACE_SECONDS": "0.0",
            "STORE__PATH": str(self.store_path),
            "SCHEDULE__FLUSH_INTERVAL": "0.05",  # flushes back to back
            "METRICS__ENABLED": "false",
        }
        return {f"CANDLES_{name}": value for name, value in settings.items()}

    def _start(self, settings: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"ingest-{len(self._logs)}.log"
        self._logs.append(log)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CANDLES_")}
        with log.open("wb") as stderr:
            return subprocess.Popen(
                [sys.executable, "-m", "pipeline", "ingest"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**environ, **settings},
                cwd=self.workdir,
            )

    def _log(self, entry: str) -> None:
        self.report.timeline.append(f"[{time.monotonic() - self._started:6.2f}s] {entry}")
