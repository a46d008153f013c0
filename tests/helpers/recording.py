"""Recordings made by real ingest runs, and whole stores compared row by row.

``record_simulator_session`` runs the ingest service against the simulator (manual clock)
with recording on, through the faults a test names, and returns what it stored; the checked-in
fixture recording (``tests/recording/fixture/``) is made by it:
``CANDLES_UPDATE_FIXTURES=1 ./run pytest tests/recording/test_fixture.py`` rewrites it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import Config
from pipeline.ingest import IngestService
from pipeline.simulator import Simulator
from pipeline.store import run_query
from tests.helpers.service import eventually, make_service, series_keys, service_config

__all__ = [
    "MINUTE",
    "Recorded",
    "differences",
    "finish",
    "record_config",
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


@dataclass
class Recorded:
    """One recorded ingest run: its config, store and recording files."""

    config: Config
    store: Path
    files: list[Path]


async def run_recorded(
    sim: Simulator,
    config: Config,
    steps: Callable[[IngestService], Awaitable[None]],
) -> IngestService:
    """Run one recorded ingest service on ``sim`` through ``steps``, then finish it."""
    service = make_service(config, sim)
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
