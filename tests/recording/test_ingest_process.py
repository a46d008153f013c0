"""``candles ingest --record DIR`` as a real process: stopped, or killed mid-write.

A SIGTERM'd ingest closes its recording whole: rebuilt, it equals the store the process left.
A SIGKILL'd one may leave its last block cut short: the rest rebuilds into candles that are
all the simulator's truth, and the cut, if any, is named.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.ingest import rebuild
from pipeline.recording import Recording, recording_files
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore
from tests.helpers.recording import differences, stored_rows
from tests.helpers.service import (
    START_MS,
    TOKEN,
    eventually,
    service_config,
    stored_frame,
    truth_frame,
    write_ingest_config,
)
from tests.helpers.service import differences as truth_differences
from tests.recording.files import decompressed

SERIES = ["AAPL{=m}", "AAPL{=5m}", "SPY{=m}", "SPY{=5m}"]
FROM_MS = START_MS - 3600_000


def start_recording_ingest(config: Path, recordings: Path) -> subprocess.Popen[bytes]:
    """``candles ingest --config CONFIG --record DIR`` as a child process."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "ingest",
            "--config",
            str(config),
            "--record",
            str(recordings),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "CANDLES_PROFILE": ""},
    )


def recorded_bytes(folder: Path) -> int:
    """Uncompressed bytes recorded so far (blocks reach the disk about once a second)."""
    if not folder.is_dir():
        return 0
    return sum(len(decompressed(path)) for path in folder.iterdir())


async def run_and_end(tmp_path: Path, sim: Simulator, how: signal.Signals) -> tuple[Path, Path]:
    """Run a recording ingest process until blocks of live data are on disk, then signal it."""
    store, recordings = tmp_path / "data", tmp_path / "recordings"
    config = write_ingest_config(tmp_path / "config.toml", store, sim.url)
    process = start_recording_ingest(config, recordings)
    try:
        await sim.wait_for_subscriptions(len(SERIES))
        await eventually(lambda: recorded_bytes(recordings) > 20_000, what="the snapshots recorded")
        before = recorded_bytes(recordings)
        for _ in range(3):
            await sim.advance(60)
        await eventually(lambda: recorded_bytes(recordings) > before, what="live data recorded")
        process.send_signal(how)
        _, err = await asyncio.to_thread(process.communicate, timeout=60)
        expected = 0 if how is signal.SIGTERM else -signal.SIGKILL
        assert process.returncode == expected, err.decode()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return store, recordings


async def test_a_stopped_ingest_leaves_a_whole_recording_that_rebuilds_its_store(
    tmp_path: Path,
) -> None:
    """SIGTERM: the recording closes cleanly; rebuilt, it gives the process's store exactly."""
    async with Simulator(token=TOKEN, seed=4, clock=SimulatorClock.manual(START_MS)) as sim:
        store, recordings = await run_and_end(tmp_path, sim, signal.SIGTERM)
    recording = Recording(recording_files([recordings]))
    report = rebuild(recording, service_config(tmp_path / "rebuilt"))
    assert report.problems == []
    assert differences(stored_rows(store), stored_rows(tmp_path / "rebuilt")) == []


async def test_a_killed_ingest_leaves_a_recording_usable_up_to_the_cut(tmp_path: Path) -> None:
    """SIGKILL: at most the last block is cut (and named); everything rebuilt from the rest
    is the simulator's truth."""
    async with Simulator(token=TOKEN, seed=4, clock=SimulatorClock.manual(START_MS)) as sim:
        _, recordings = await run_and_end(tmp_path, sim, signal.SIGKILL)
        files = recording_files([recordings])
        report = rebuild(Recording(files), service_config(tmp_path / "rebuilt"))
        assert len(report.problems) <= 1
        assert all("the last block is cut short" in p for p in report.problems)
        assert report.candles_stored > 0
        end = sim.now_ms
        with CandleStore(tmp_path / "rebuilt") as store:
            for key in SERIES:
                stored = stored_frame(store, key, FROM_MS, end)
                truth = truth_frame(sim, key, FROM_MS, end)
                assert stored.height > 10
                # Every rebuilt candle is true; the truth may hold more (recorded or not).
                extra = [p for p in truth_differences(truth, stored) if not p.startswith("missing")]
                assert extra == [], key
