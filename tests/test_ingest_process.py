"""`candles ingest` as a real process: SIGKILL mid-run, restart, and nothing is lost."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore
from tests.helpers.service import (
    START_MS,
    TOKEN,
    differences,
    eventually,
    start_ingest,
    stored_frame,
    truth_frame,
    write_ingest_config,
)

MINUTE = 60_000
SERIES = ["AAPL{=m}", "AAPL{=5m}", "SPY{=m}", "SPY{=5m}"]
FROM_MS = START_MS - 3600_000


def _newest_stored(store_path: Path) -> int:
    if not (store_path / "catalog.sqlite").exists():
        return 0
    with CandleStore(store_path) as store:
        return max(store.resume_points(SERIES).values(), default=0)


async def test_sigkill_and_restart_lose_nothing(tmp_path: Path) -> None:
    """SIGKILL while ingesting, time passes, restart: the store equals the simulator's truth."""
    store_path = tmp_path / "data"
    async with Simulator(token=TOKEN, seed=5, clock=SimulatorClock.manual(START_MS)) as sim:
        config = write_ingest_config(tmp_path / "config.toml", store_path, sim.url)
        process = start_ingest(config)
        try:
            await sim.wait_for_subscriptions(len(SERIES))
            for _ in range(3):
                await sim.advance(60)

            async def flushed() -> bool:
                return await asyncio.to_thread(_newest_stored, store_path) > 0

            await eventually(flushed, what="first flushes")
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
            # The outage: ten simulated minutes nobody receives.
            await sim.advance(600)
            process = start_ingest(config)
            await sim.wait_for_subscriptions(len(SERIES))
            await sim.advance(60)
            await sim.advance(60)
            end = sim.now_ms
            complete_end = end - 5 * MINUTE - end % (5 * MINUTE)

            async def caught_up() -> bool:
                newest = await asyncio.to_thread(_newest_stored, store_path)
                return newest >= complete_end

            await eventually(caught_up, within=60, what="restarted ingest caught up")
            process.send_signal(signal.SIGTERM)
            # Off the loop: the simulator (on this loop) must answer the closing handshake.
            _, err = await asyncio.to_thread(process.communicate, timeout=60)
            assert process.returncode == 0, err.decode()[-2000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

        with CandleStore(store_path) as store:
            for series in SERIES:
                truth = truth_frame(sim, series, FROM_MS, complete_end)
                assert truth.height > 10
                assert differences(truth, stored_frame(store, series, FROM_MS, complete_end)) == []
