"""A recorded session through faults, rebuilt and replayed: the same store, the truth, no token.

Ingest runs against the simulator with recording on through drops, a stall (the client's
dead-peer timer ends the connection), a graceful close and a restart. Then:

* ``rebuild`` of the recording gives the original store row for row (every column but
  ``ingested_at``);
* ingest against ``ReplayServer`` gives the same rows, except a series' last candle when only
  the recorded clock completed it (no newer candle in the stream: a DXLink client of a
  replay knows only the stream's time);
* both equal the simulator's truth, and the token is in no file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pipeline.dxlink import CandleSymbol
from pipeline.ingest import IngestService, SimulatorTokenSource, rebuild
from pipeline.recording import Recording, ReplayServer, recording_files
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore
from tests.helpers.recording import differences, record_config, run_recorded, stored_rows
from tests.helpers.service import (
    START_MS,
    eventually,
    series_keys,
    service_config,
    stored_frame,
    truth_frame,
)
from tests.helpers.service import differences as truth_differences
from tests.helpers.timing import TIMEOUT
from tests.recording.files import decompressed

TOKEN = "session-token-0d9c8b7a6f"
FROM_MS = START_MS - 2 * 3600_000
FAST_TIMEOUTS: dict[str, Any] = {"client.dead_peer_timeout": 1.0, "client.keepalive_timeout": 1.0}


def truth_problems(sim: Simulator, store: Path, keys: list[str]) -> list[str]:
    end = sim.now_ms - 5 * 60_000
    with CandleStore(store) as opened:
        problems = []
        for key in keys:
            truth = truth_frame(sim, key, FROM_MS, end)
            assert truth.height > 3, f"{key}: the truth holds almost nothing; the test is vacuous"
            diff = truth_differences(truth, stored_frame(opened, key, FROM_MS, end))
            problems += [f"{key}: {d}" for d in diff[:5]]
        return problems


@pytest.mark.timeout(240)
async def test_a_session_through_faults_rebuilds_and_replays_to_the_same_store(
    tmp_path: Path,
) -> None:
    """Drops, a stall, a close and a restart recorded; rebuilt and replayed to the same store."""
    original, recordings = tmp_path / "original", tmp_path / "recordings"
    config = record_config(original, recordings, **FAST_TIMEOUTS)
    keys = series_keys(config)
    clock = SimulatorClock.manual(START_MS)
    async with Simulator(token=TOKEN, seed=3, clock=clock, keepalive_timeout=1.0) as sim:

        async def faults(service: IngestService) -> None:
            await sim.advance(60)
            await sim.drop_connections()
            await sim.advance(180)  # missed while disconnected
            await sim.wait_for_subscriptions(len(keys))
            await sim.advance(60)
            connects = sim.connect_count
            sim.stall(True)
            await sim.advance(120)
            await eventually(lambda: sim.connect_count > connects, what="reconnect after stall")
            sim.stall(False)
            await sim.wait_for_subscriptions(len(keys))
            await sim.advance(60)
            await sim.close_connections(1001)
            await sim.advance(60)
            await sim.wait_for_subscriptions(len(keys))
            await sim.advance(60)

        async def after_restart(service: IngestService) -> None:
            for _ in range(2):
                await sim.advance(60)

        await run_recorded(sim, config, faults, token=TOKEN)
        await sim.advance(600)  # ingest is down: a restart resumes from the store
        await run_recorded(sim, config, after_restart, token=TOKEN)
        assert truth_problems(sim, original, keys) == []

        files = recording_files([recordings])
        recording = Recording(files)
        assert len(recording.sessions) == 2
        report = rebuild(recording, service_config(tmp_path / "rebuilt"))
        assert report.problems == [] and report.connections >= 5
        assert differences(stored_rows(original), stored_rows(tmp_path / "rebuilt")) == []
        assert truth_problems(sim, tmp_path / "rebuilt", keys) == []

        async with ReplayServer(Recording(files)) as replay:
            replayed = IngestService(
                service_config(tmp_path / "replayed", **FAST_TIMEOUTS),
                token_source=SimulatorTokenSource(replay.url, "any-token"),
            )
            runner = asyncio.create_task(replayed.run())
            async with asyncio.timeout(TIMEOUT * 3):
                await replay.wait_finished()
            await eventually(
                lambda: replayed.stats.candles_received == report.candles_received,
                what="every recorded candle event received",
            )
            replayed.stop()
            await runner
        assert replay.stats.served == report.connections
        assert truth_problems(sim, tmp_path / "replayed", keys) == []

    expected, got = stored_rows(original), stored_rows(tmp_path / "replayed")
    problems = differences(expected, got)
    assert all(p.startswith("missing ") for p in problems), problems
    missing = expected.join(got, on=["symbol", "period", "time", "sequence"], how="anti")
    assert missing.height <= len(keys)
    for row in missing.iter_rows(named=True):
        period = CandleSymbol.of(row["symbol"], row["period"]).period_ms
        assert period is not None
        # Complete only by the recorded clock: no newer candle came before the stream ended.
        assert int(row["time"].timestamp() * 1000) + period > replayed.stats.stream_time_ms
    for path in files:
        assert TOKEN.encode() not in decompressed(path)
        assert TOKEN.encode() not in path.read_bytes()
