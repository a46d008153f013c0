"""Recordings made by real ingest runs, and whole stores compared row by row.

``record_simulator_session`` runs the ingest service against the simulator (manual clock)
with recording on, through the faults a test names, and returns what it stored; the checked-in
fixture recording (``tests/recording/fixture/``) is made by it:
``CANDLES_UPDATE_FIXTURES=1 ./run pytest tests/recording/test_fixture.py`` rewrites it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import Config
from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import run_query
from tests.helpers.service import START_MS, eventually, series_keys, service_config

__all__ = [
    "FIXTURE",
    "FIXTURE_TOKEN",
    "MINUTE",
    "FixtureFacts",
    "differences",
    "finish",
    "fixture_facts",
    "make_fixture_recording",
    "record_config",
    "run_recorded",
    "stored_rows",
]

MINUTE = 60_000


def record_config(store: Path, recordings: Path, **overrides: Any) -> Config:
    """A test service config (``service_config``) with recording into ``recordings``."""
    settings: dict[str, Any] = {"record.enabled": True, "record.dir": str(recordings)}
    settings.update(overrides)
    return service_config(store, **settings)


async def finish(sim: Simulator, service: IngestService, runner: asyncio.Task[None]) -> None:
    """Let the service catch up with the simulator's clock, then stop it cleanly."""
    end = sim.now_ms
    await eventually(lambda: service.stats.stream_time_ms >= end - MINUTE, what="caught up")
    await eventually(lambda: service.manager.stats().buffered_events == 0, what="snapshots applied")
    service.stop()
    await runner


async def run_recorded(
    sim: Simulator,
    config: Config,
    steps: Callable[[IngestService], Awaitable[None]],
    *,
    token: str,
) -> IngestService:
    """Run one recorded ingest service on ``sim`` through ``steps``, then finish it."""
    service = IngestService(
        config,
        token_source=SimulatorTokenSource(sim.url, token),
        source_clock_ms=lambda: sim.now_ms,
    )
    runner = asyncio.create_task(service.run())
    await sim.wait_for_subscriptions(len(series_keys(config)))
    await steps(service)
    await finish(sim, service, runner)
    return service


def stored_rows(store: Path) -> pl.DataFrame:
    """Every row of the store but ``ingested_at``, in key order."""
    return run_query("SELECT * EXCLUDE (ingested_at) FROM candles ORDER BY ALL", path=store)


def differences(
    expected: pl.DataFrame, actual: pl.DataFrame, keys: Sequence[str] = ()
) -> list[str]:
    """Rows only in one of two stores, or differing in any column (empty when equal)."""
    on = list(keys) or ["symbol", "period", "time", "sequence"]
    joined = expected.join(actual, on=on, how="full", coalesce=True, nulls_equal=True)
    problems: list[str] = []
    for row in joined.iter_rows(named=True):
        left = {k: v for k, v in row.items() if k not in on and not k.endswith("_right")}
        right = {k: row[f"{k}_right"] for k in left}
        where = ", ".join(str(row[k]) for k in on)
        if all(v is None for v in right.values()):
            problems.append(f"missing {where}")
        elif all(v is None for v in left.values()):
            problems.append(f"extra {where}")
        elif not all(_same(left[k], right[k]) for k in left):
            changed = {k: (left[k], right[k]) for k in left if not _same(left[k], right[k])}
            problems.append(f"differs at {where}: {changed}")
    return problems


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # both NaN
    return a == b


# --------------------------------------------------------------------------- the fixture

FIXTURE = Path(__file__).resolve().parents[1] / "recording" / "fixture"
"""The checked-in recording: ``dxlink-*.jsonl.zst`` files and ``fixture.json`` (its facts)."""
FIXTURE_TOKEN = "fixture-sim-token-3a7c19e5"
"""The simulator's token when the fixture was recorded: it must appear nowhere in it."""


@dataclass(frozen=True)
class FixtureFacts:
    """What a test needs to know about the fixture to compute the simulator's truth."""

    seed: int
    from_ms: int
    end_ms: int
    series: list[str]
    stored: int
    """Rows the recorded runs left in their store."""


def fixture_facts(folder: Path = FIXTURE) -> FixtureFacts:
    """Read ``fixture.json``."""
    return FixtureFacts(**json.loads((folder / "fixture.json").read_text()))


async def make_fixture_recording(folder: Path, work: Path) -> FixtureFacts:
    """Record the fixture's two ingest runs into ``folder`` (replacing its recording files).

    Run 1 backfills an hour of AAPL and SPY 1m/5m candles, goes live for two minutes, loses
    its connection (a drop), misses two minutes and resumes; then ingest stops, five minutes
    pass, and run 2 (a restart: a new session) resumes from the store for two more minutes.
    """
    from_ms = START_MS - 3600_000
    config = record_config(work / "store", work / "recording", from_ms=from_ms)

    async def first(service: IngestService) -> None:
        for _ in range(2):
            await sim.advance(60)
        await sim.drop_connections()
        await sim.advance(120)
        await sim.wait_for_subscriptions(len(series_keys(config)))
        await sim.advance(60)

    async def second(service: IngestService) -> None:
        for _ in range(2):
            await sim.advance(60)

    clock = SimulatorClock.manual(START_MS)
    async with Simulator(token=FIXTURE_TOKEN, seed=1, clock=clock) as sim:
        await run_recorded(sim, config, first, token=FIXTURE_TOKEN)
        await sim.advance(300)
        await run_recorded(sim, config, second, token=FIXTURE_TOKEN)
        end_ms = sim.now_ms
    facts = FixtureFacts(
        seed=1,
        from_ms=from_ms,
        end_ms=end_ms,
        series=series_keys(config),
        stored=stored_rows(work / "store").height,
    )
    await asyncio.to_thread(_replace_fixture, folder, work / "recording", facts)
    return facts


def _replace_fixture(folder: Path, recording: Path, facts: FixtureFacts) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jsonl.zst"):
        old.unlink()
    for path in sorted(recording.iterdir()):
        shutil.copy(path, folder / path.name)
    (folder / "fixture.json").write_text(json.dumps(facts.__dict__, indent=1) + "\n")
