"""IngestService end to end against the real simulator: store == ground truth."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from pipeline.ingest import IngestService
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore
from tests.helpers.service import (
    START_MS,
    TOKEN,
    differences,
    eventually,
    make_service,
    series_keys,
    service_config,
    stored_frame,
    truth_frame,
)

MINUTE = 60_000


def _simulator(**kwargs: object) -> Simulator:
    return Simulator(token=TOKEN, seed=1, clock=SimulatorClock.manual(START_MS), **kwargs)  # type: ignore[arg-type]


async def _store_matches_truth(
    sim: Simulator, store_path: Path, keys: list[str], from_ms: int, to_ms: int
) -> list[str]:
    def compare() -> list[str]:
        with CandleStore(store_path) as store:
            problems = []
            for key in keys:
                if truth_frame(sim, key, from_ms, to_ms).height < 3:
                    problems.append(f"{key}: the truth holds almost nothing; test is vacuous")
                diff = differences(
                    truth_frame(sim, key, from_ms, to_ms), stored_frame(store, key, from_ms, to_ms)
                )
                problems += [f"{key}: {d}" for d in diff[:5]]
            return problems

    return await asyncio.to_thread(compare)


async def _finish_and_compare(
    sim: Simulator,
    service: IngestService,
    runner: asyncio.Task[None],
    store_path: Path,
    from_ms: int,
) -> list[str]:
    """Wait until the service has everything up to the simulator's now, flush, stop, and
    compare the store with the truth over every 5-minute-complete period since ``from_ms``."""
    end = sim.now_ms
    await eventually(lambda: service.stats.stream_time_ms >= end - MINUTE, what="caught up")
    await eventually(lambda: service.manager.stats().buffered_events == 0, what="snapshots applied")
    await service.flush("test")
    service.stop()
    await runner
    complete_end = end - 5 * MINUTE - end % (5 * MINUTE)
    keys = [s.normalized for s in service.series]
    return await _store_matches_truth(sim, store_path, keys, from_ms, complete_end)


async def test_backfill_and_live_candles_are_stored(tmp_path: Path) -> None:
    """History from fromTime and the candles completed live end up in the store, exactly."""
    store_path = tmp_path / "data"
    config = service_config(store_path)
    from_ms = START_MS - 2 * 3600_000
    async with _simulator() as sim:
        service = make_service(config, sim)
        runner = asyncio.create_task(service.run())
        await sim.wait_for_subscriptions(len(series_keys(config)))
        for _ in range(6):
            await sim.advance(60)
        end = START_MS + 6 * MINUTE
        await eventually(lambda: service.stats.stream_time_ms >= end - MINUTE, what="live data")
        await eventually(
            lambda: service.manager.stats().buffered_events == 0, what="snapshots applied"
        )
        await service.flush("test")
        service.stop()
        await runner
        problems = await _store_matches_truth(
            sim, store_path, series_keys(config), from_ms, end - 5 * MINUTE
        )
    assert problems == []
    assert service.stats.flush_failures == 0


async def test_a_backfill_is_flushed_in_batches_while_it_arrives(tmp_path: Path) -> None:
    """flush_batch_events received start a flush at once, unscheduled; the store equals truth
    (and store.recycle_after reaches the writer: its connection is reopened under way)."""
    store_path = tmp_path / "data"
    recycle: dict[str, Any] = {"store.recycle_after": 1}
    config = service_config(store_path, **recycle)
    from_ms = START_MS - 2 * 3600_000
    async with _simulator() as sim:
        service = make_service(config, sim)
        service.flush_batch_events = 100  # the backfill is ~290 events
        runner = asyncio.create_task(service.run())
        await sim.wait_for_subscriptions(len(series_keys(config)))
        await eventually(
            lambda: any(r.reason == "batch" for r in service.stats.recent_flushes),
            what="a batch flush",
        )
        problems = await _finish_and_compare(sim, service, runner, store_path, from_ms)
    assert problems == []
    assert service.stats.flush_failures == 0
    assert service.store.stats.connections_recycled == service.store.stats.upserts >= 1


async def test_disconnects_leave_no_gap(tmp_path: Path) -> None:
    """Random abrupt disconnects while time moves on: the store still equals the truth."""
    store_path = tmp_path / "data"
    config = service_config(store_path)
    from_ms = START_MS - 2 * 3600_000
    rng = random.Random(7)
    async with _simulator() as sim:
        service = make_service(config, sim)
        runner = asyncio.create_task(service.run())
        await sim.wait_for_subscriptions(len(series_keys(config)))
        for step in range(12):
            await sim.advance(rng.choice([30, 60, 90]))
            if step % 3 == 1:
                await service.flush("test")
                await sim.drop_connections()
                # The outage lasts while simulated time moves on: data the client misses.
                await sim.advance(rng.choice([60, 120, 300]))
                await sim.wait_for_subscriptions(len(series_keys(config)))
        problems = await _finish_and_compare(sim, service, runner, store_path, from_ms)
        connects = sim.connect_count
    assert problems == []
    assert connects >= 5


async def test_restart_resumes_from_the_store(tmp_path: Path) -> None:
    """A second service on the same store asks only for what is missing, and fills it."""
    store_path = tmp_path / "data"
    config = service_config(store_path)
    from_ms = START_MS - 2 * 3600_000
    async with _simulator() as sim:
        first = make_service(config, sim)
        runner = asyncio.create_task(first.run())
        await sim.wait_for_subscriptions(len(series_keys(config)))
        await sim.advance(120)
        await eventually(lambda: first.stats.stream_time_ms >= START_MS + MINUTE, what="live")
        first.stop()
        await runner
        stored_before = first.stats.candles_stored
        # Time passes while nothing runs.
        await sim.advance(600)
        second = make_service(config, sim)
        runner = asyncio.create_task(second.run())
        await sim.wait_for_subscriptions(len(series_keys(config)))
        resumed_from = sim.subscriptions()
        await sim.advance(60)
        problems = await _finish_and_compare(sim, second, runner, store_path, from_ms)
    assert problems == []
    assert stored_before > 0
    # The restart resumed near the end of what was stored, not from the original fromTime.
    from_times = [t for subs in resumed_from.values() for t in subs.values() if t is not None]
    assert from_times and min(from_times) > from_ms + 3600_000


@pytest.mark.parametrize("fault", ["stall", "close"])
async def test_other_faults_recover(tmp_path: Path, fault: str) -> None:
    """A graceful close or a stalled server: data flows again and nothing is missing."""
    store_path = tmp_path / "data"
    timeouts: dict[str, Any] = {"client.dead_peer_timeout": 1.0, "client.keepalive_timeout": 1.0}
    config = service_config(store_path, **timeouts)
    from_ms = START_MS - 2 * 3600_000
    async with _simulator(keepalive_timeout=1.0) as sim:
        service = make_service(config, sim)
        runner = asyncio.create_task(service.run())
        await sim.wait_for_subscriptions(len(series_keys(config)))
        await sim.advance(60)
        connects = sim.connect_count
        if fault == "stall":
            sim.stall(True)
            await sim.advance(120)
            await eventually(lambda: sim.connect_count > connects, what="reconnect after stall")
            sim.stall(False)
        else:
            await sim.close_connections(1001)
            await sim.advance(120)
        await sim.wait_for_subscriptions(len(series_keys(config)))
        await sim.advance(60)
        problems = await _finish_and_compare(sim, service, runner, store_path, from_ms)
    assert problems == []
