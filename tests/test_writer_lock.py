"""One ingest writer per store or shard (pipeline/store/writer_lock.py): a second one is refused."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.sharding import SINGLE, ShardSpec
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import StoreBusy, WriterLock
from tests.helpers.service import START_MS, TOKEN, service_config, start_ingest, write_ingest_config

# A child that takes the lock, says so, and holds it until its stdin closes.
HOLDER = """
import sys
from pipeline.sharding import ShardSpec
from pipeline.store import WriterLock
lock = WriterLock(sys.argv[1], ShardSpec.parse(sys.argv[2]))
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_second_unsharded_writer_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    """Same store twice: the second is refused, naming the holder; after release it works."""
    first = WriterLock(tmp_path, SINGLE)
    first.acquire()
    with pytest.raises(StoreBusy, match=r"already being written .*pid \d+, shard 1/1.*--shard"):
        WriterLock(tmp_path, SINGLE).acquire()
    first.release()
    assert not first.held
    with WriterLock(tmp_path, SINGLE) as second:
        assert second.held
    assert (tmp_path / ".ingest.lock").read_text() == ""  # no note of a gone holder


def test_shards_run_side_by_side_but_each_once_and_never_next_to_an_unsharded_writer(
    tmp_path: Path,
) -> None:
    """1/2 and 2/2 coexist; a second 1/2 and an unsharded writer are refused, and vice versa."""
    with WriterLock(tmp_path, ShardSpec(1, 2)), WriterLock(tmp_path, ShardSpec(2, 2)):
        with pytest.raises(StoreBusy, match=r"shard 1/2 .* exactly one process"):
            WriterLock(tmp_path, ShardSpec(1, 2)).acquire()
        with pytest.raises(StoreBusy, match="already being written"):
            WriterLock(tmp_path, SINGLE).acquire()
    with WriterLock(tmp_path, SINGLE):
        refused = WriterLock(tmp_path, ShardSpec(2, 2))
        with pytest.raises(StoreBusy):
            refused.acquire()
        assert not refused.held  # nothing half-taken is kept


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    """The kernel drops a killed process's lock: the next writer starts at once."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), "1/1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(StoreBusy, match=f"pid {holder.pid}"):
            WriterLock(tmp_path, SINGLE).acquire()
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
        with WriterLock(tmp_path, SINGLE) as lock:
            assert lock.held
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()


async def test_a_service_on_a_store_being_written_starts_nothing(tmp_path: Path) -> None:
    """IngestService.run raises StoreBusy before opening the store or connecting."""
    store = tmp_path / "data"
    config = service_config(store)
    service = IngestService(config, token_source=SimulatorTokenSource("ws://127.0.0.1:9", TOKEN))
    with WriterLock(store, SINGLE), pytest.raises(StoreBusy):
        await service.run()
    assert service.client is None and not (store / "catalog.sqlite").exists()


async def test_candles_ingest_started_twice_exits_with_what_to_do(tmp_path: Path) -> None:
    """A second `candles ingest` on the same config exits non-zero at once, saying why."""
    store = tmp_path / "data"
    async with Simulator(token=TOKEN, seed=3, clock=SimulatorClock.manual(START_MS)) as sim:
        config = write_ingest_config(tmp_path / "config.toml", store, sim.url)
        first = start_ingest(config)
        try:
            await sim.wait_for_subscriptions(4)  # the first holds the lock before subscribing
            second = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "pipeline", "ingest", "--config", str(config)],
                capture_output=True,
                timeout=120,
            )
            assert second.returncode != 0
            err = second.stderr.decode()
            assert "already being written" in err and f"pid {first.pid}" in err, err[-2000:]
            first.send_signal(signal.SIGTERM)
            # Off the loop: the simulator (on this loop) must answer the closing handshake.
            _, first_err = await asyncio.to_thread(first.communicate, timeout=60)
            assert first.returncode == 0, first_err.decode()[-2000:]
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
