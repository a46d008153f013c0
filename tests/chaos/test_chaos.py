"""Seeded chaos: the store equals the simulator's truth after a schedule of every fault.

The default suite runs two short seeds; ``--run-soak`` adds a long run over many seeds.
A failure prints the seed and the fault timeline; ``ChaosRun(seed, tmp_path)`` replays it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.simulator import Simulator, SimulatorClock
from tests.chaos.process import KillRun
from tests.chaos.runner import (
    FAULT_KINDS,
    ChaosReport,
    ChaosRun,
    FaultyStore,
    PlannedFault,
    plan_faults,
)
from tests.helpers.service import START_MS, TOKEN, eventually, series_keys, service_config

SOAK_SEEDS = int(os.environ.get("CHAOS_SOAK_SEEDS", "24"))


def _check(report: ChaosReport) -> None:
    assert report.problems == [], report.describe()
    assert report.memory_limit_bytes > 0, report.describe()
    assert report.peak_memory_bytes <= report.memory_limit_bytes, report.describe()
    assert report.peak_queue <= report.queue_limit, report.describe()


def test_a_seed_gives_the_same_schedule() -> None:
    """plan_faults is a function of the seed: same seed, same faults; another seed differs."""
    assert plan_faults(11, 20) == plan_faults(11, 20)
    assert plan_faults(11, 20) != plan_faults(12, 20)


def test_a_schedule_holds_every_fault_kind_when_there_is_room() -> None:
    """With at least one step per kind, every fault kind is injected at least once."""
    for seed in range(20):
        faults = plan_faults(seed, len(FAULT_KINDS) + 1)
        assert {f.kind for f in faults} == set(FAULT_KINDS)
        assert len({f.step for f in faults}) == len(faults)
        assert all(f.step >= 1 for f in faults)


def test_a_bad_plan_is_refused_with_what_is_allowed() -> None:
    """Unknown fault kinds and too few steps are refused, naming the valid choices."""
    with pytest.raises(ValueError, match=r"unknown fault kinds.*'drop'"):
        plan_faults(1, 10, ("drop", "earthquake"))
    with pytest.raises(ValueError, match="at least 2 steps"):
        plan_faults(1, 1)


def test_a_failure_report_names_the_seed_and_the_timeline() -> None:
    """describe() carries the seed, each problem and the whole timeline for a replay."""
    report = ChaosReport(seed=42, faults=[PlannedFault(3, "drop", "", 60)])
    report.timeline += ["[  0.10s] step 3: drop() for 60s", "[  0.20s] drained"]
    report.problems.append("AAPL{=m}: missing 2026-11-03 15:04")
    text = report.describe()
    assert "seed=42" in text and "ChaosRun(seed=42" in text
    assert "missing 2026-11-03 15:04" in text
    assert "step 3: drop() for 60s" in text and "drained" in text


# The default suite splits the fault kinds over two seeds to stay quick; every kind runs.
SHORT_RUNS = [(1, FAULT_KINDS[0::2]), (2, FAULT_KINDS[1::2])]


def test_the_short_runs_cover_every_fault_kind() -> None:
    """Together the default-suite seeds inject every fault kind."""
    assert {kind for _, kinds in SHORT_RUNS for kind in kinds} == set(FAULT_KINDS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("seed", "kinds"), SHORT_RUNS)
async def test_chaos_short(tmp_path: Path, seed: int, kinds: tuple[str, ...]) -> None:
    """Each fault once, seeded order: no missing, duplicate or wrong candle; bounded memory."""
    run = ChaosRun(seed, tmp_path, steps=len(kinds) + 2, kinds=kinds, subscription_rate=10.0)
    report = await run.run()
    _check(report)
    assert {f.kind for f in report.faults} == set(kinds)
    assert report.bad_actions > 0, "the subscription bursts never met BAD_ACTION"
    if "close1009" in kinds:
        assert report.services_started >= 2, "close 1009 must have restarted the service"
    if "disk_full" in kinds:
        assert report.flush_failures > 0, "the full disk never failed a flush"


@pytest.mark.timeout(60)
async def test_a_consumer_held_by_a_full_disk_resumes_when_a_flush_succeeds(
    tmp_path: Path,
) -> None:
    """After a failed back-pressure flush the consumer retries once any flush got through,
    not only after its 5 s pause (found by chaos: a recovered disk still stalled the feed)."""
    tight: dict[str, Any] = {"manager.max_historical_candles": 40, "manager.max_unstored": 20}
    config = service_config(tmp_path / "store", **tight)
    store = FaultyStore(tmp_path / "store")
    store.failures_left = 1_000_000
    async with Simulator(token=TOKEN, seed=3, clock=SimulatorClock.manual(START_MS)) as sim:
        service = IngestService(
            config,
            token_source=SimulatorTokenSource(sim.url, TOKEN),
            source_clock_ms=lambda: sim.now_ms,
            store=store,
        )
        runner = asyncio.create_task(service.run())
        try:
            await asyncio.wait_for(sim.wait_for_subscriptions(len(series_keys(config))), 30)
            stats = service.stats
            await eventually(
                lambda: stats.backpressure_waits >= 1 and stats.flush_failures >= 1,
                what="the consumer held back by a failed flush",
            )
            store.failures_left = 0
            assert (await service.flush("disk recovered")).error is None
            received = stats.candles_received
            await sim.advance(60)
            # Well inside the 5 s pause the consumer would otherwise sit out.
            await eventually(
                lambda: stats.candles_received > received, within=2.5, what="consumer resumed"
            )
        finally:
            service.stop()
            await asyncio.wait_for(runner, 30)
            store.close()


@pytest.mark.timeout(120)
async def test_ingest_killed_mid_flush_restarts_without_loss(tmp_path: Path) -> None:
    """SIGKILL of the ingest process while it flushes, then a restart: store == truth."""
    report = await KillRun(seed=5, workdir=tmp_path, kills=1).run()
    assert report.problems == [], report.describe()
    assert report.kills == 1, report.describe()


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("seed", range(100, 100 + SOAK_SEEDS))
async def test_chaos_long(tmp_path: Path, seed: int) -> None:
    """A long schedule per seed (40 steps, faults drawn at random): store == truth, bounded."""
    report = await ChaosRun(seed, tmp_path, steps=40).run()
    _check(report)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("seed", range(200, 206))
async def test_kill_long(tmp_path: Path, seed: int) -> None:
    """Five SIGKILLs at seeded moments per seed: the restarted ingest loses nothing."""
    report = await KillRun(seed=seed, workdir=tmp_path, kills=5).run()
    assert report.problems == [], report.describe()
