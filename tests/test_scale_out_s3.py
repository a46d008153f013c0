"""Hosts that share no disk: shard processes on a PostgreSQL catalog with the data in S3.

A throwaway PostgreSQL (tests/helpers/postgres.py) and a local S3 server (tests/helpers/s3.py)
serve the module. Every shard runs in a working folder of its own (its own store.path and
current directory: no local path is shared), reaches the bucket with keys from its
environment, and owns its shard through the lease in the catalog database.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.sharding import shard_of
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore, S3Options, connect
from tests.helpers.postgres import PostgresServer, running_postgres
from tests.helpers.s3 import S3Server, running_s3
from tests.helpers.scale_out import (
    FROM_MS,
    INTERVALS,
    MINUTE,
    SERIES,
    SHARDS,
    SYMBOLS,
    newest_stored,
    start_reader,
)
from tests.helpers.service import (
    START_MS,
    TOKEN,
    differences,
    eventually,
    stored_frame,
    truth_frame,
    write_ingest_config,
)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3() as server:
        yield server


def _host(tmp_path: Path, k: int, catalog: str, data: str, s3: S3Server, url: str) -> Path:
    """Shard k's own working folder with its own config (store.path inside it)."""
    home = tmp_path / f"host{k}"
    home.mkdir(exist_ok=True)
    options: dict[str, Any] = {
        "subscriptions.symbols": SYMBOLS,
        "subscriptions.intervals": INTERVALS,
        "store.catalog": catalog,
        "store.data_path": data,
        "store.s3.endpoint": f"http://{s3.endpoint}",
        "store.lease_check_interval": 0.5,
        "schedule.compaction_interval": 1.0,
    }
    return write_ingest_config(home / "config.toml", home / "local", url, **options)


def _env(s3: S3Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "CANDLES_PROFILE": "", "AWS_ACCESS_KEY_ID": s3.key_id,
            "AWS_SECRET_ACCESS_KEY": s3.secret}  # fmt: skip


def _start_shard(config: Path, k: int | None, log: Path, s3: S3Server) -> subprocess.Popen[bytes]:
    """``candles ingest`` of shard k/3 (``None``: unsharded) in its own folder."""
    shard = [] if k is None else ["--shard", f"{k}/{SHARDS}"]
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "ingest", "--config", str(config), *shard],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env=_env(s3), cwd=config.parent,
    )  # fmt: skip


def _start_reader(catalog: str, data: str, stop: Path, s3: S3Server) -> subprocess.Popen[bytes]:
    """The reader on "another machine": only the standard AWS variables tell it the endpoint."""
    return start_reader(
        catalog, data, stop, {**_env(s3), "AWS_ENDPOINT_URL_S3": f"http://{s3.endpoint}"}
    )


def _files_holding(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def _newest(catalog: str, data: str, root: Path, s3: S3Server) -> dict[str, int]:
    return newest_stored(catalog, data, root, S3Options(endpoint=f"http://{s3.endpoint}"))


@pytest.mark.timeout(300)  # five processes on a shared 2-core box: 25-60 s measured
async def test_shards_on_hosts_sharing_no_disk_equal_the_truth(
    postgres: PostgresServer, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 shard processes, each in its own folder, PostgreSQL catalog + S3 data: shard 2 is
    SIGKILLed and restarted, a second claimant of a held shard is refused naming the holder,
    a reader queries throughout; the lake equals the truth; no output shows a key."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    catalog = postgres.create_database("hosts")
    data = s3.create_bucket("candles-hosts") + "lake/"
    assert {shard_of(s, SHARDS) for s in SERIES} == {1, 2, 3}, "every shard must own a series"
    logs = {k: tmp_path / f"shard{k}.log" for k in range(1, SHARDS + 1)}
    stop = tmp_path / "reader" / "stop"
    stop.parent.mkdir()
    async with Simulator(token=TOKEN, seed=11, clock=SimulatorClock.manual(START_MS)) as sim:
        configs = {k: _host(tmp_path, k, catalog, data, s3, sim.url) for k in logs}
        shards = {k: _start_shard(configs[k], k, logs[k], s3) for k in logs}
        reader: subprocess.Popen[bytes] | None = None
        refused: subprocess.CompletedProcess[bytes] | None = None
        try:
            async with asyncio.timeout(60):
                await sim.wait_for_subscriptions(len(SERIES))
            for _ in range(3):
                await sim.advance(60)

            async def every_series_stored() -> bool:
                newest = await asyncio.to_thread(_newest, catalog, data, tmp_path, s3)
                return newest.keys() == set(SERIES)

            await eventually(every_series_stored, within=60, what="first flushes of all shards")
            reader = _start_reader(catalog, data, stop, s3)

            # A second host starting shard 3 while it runs: refused at once, naming the holder.
            intruder = _host(tmp_path, 9, catalog, data, s3, sim.url)
            refused = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "pipeline", "ingest", "--config", str(intruder),
                 "--shard", f"3/{SHARDS}"],
                capture_output=True, env=_env(s3), cwd=intruder.parent, timeout=60,
            )  # fmt: skip
            assert refused.returncode == 1, refused.stderr.decode()[-2000:]
            message = refused.stderr.decode()
            assert f"shard 3/{SHARDS} on host" in message
            assert f"pid {shards[3].pid}, since" in message

            shards[2].send_signal(signal.SIGKILL)
            assert shards[2].wait(timeout=30) == -signal.SIGKILL
            async with asyncio.timeout(30):
                await sim.wait_for(lambda: sim.connections == SHARDS - 1)
            await sim.advance(300)  # shard 2's outage: five simulated minutes
            await sim.advance(60)
            shards[2] = _start_shard(configs[2], 2, logs[2], s3)  # its lease died with it
            async with asyncio.timeout(60):
                await sim.wait_for(lambda: sim.connections == SHARDS)
                await sim.wait_for_subscriptions(len(SERIES))
            await sim.advance(60)
            await sim.advance(60)
            end = sim.now_ms
            complete_end = end - 5 * MINUTE - end % (5 * MINUTE)
            await sim.advance(60)

            targets = {s: max(c.time for c in sim.truth(s, FROM_MS, complete_end)) for s in SERIES}
            newest: dict[str, int] = {}

            async def caught_up() -> bool:
                newest.update(await asyncio.to_thread(_newest, catalog, data, tmp_path, s3))
                return all(newest.get(s, 0) >= target for s, target in targets.items())

            await eventually(caught_up, within=60, what=f"caught up: {targets=} {newest=}")
            for process in shards.values():
                process.send_signal(signal.SIGTERM)
            for k, process in shards.items():
                # Off the loop: the simulator (on this loop) answers the closing handshakes.
                code = await asyncio.to_thread(process.wait, timeout=60)
                assert code == 0, logs[k].read_text()[-2000:]
            stop.touch()
            out, err = await asyncio.to_thread(reader.communicate, timeout=60)
            assert reader.returncode == 0, err.decode()[-2000:]
        finally:
            stop.touch()
            for process in [*shards.values(), *([reader] if reader else [])]:
                if process.poll() is None:
                    process.kill()
                    process.wait()

        con = connect(tmp_path, catalog=catalog, data_path=data, verify_extensions=False)
        try:
            duplicates = con.execute(
                "SELECT count(*) - count(DISTINCT (symbol, period, time)) FROM candles"
            ).fetchone()
        finally:
            con.close()
        assert duplicates == (0,)
        report = json.loads(out)
        assert report["errors"] == []
        assert report["ok"] >= 1
        logged = {k: logs[k].read_text() for k in logs}
        assert any("= compacted" in text for text in logged.values()), "someone compacts"
        with CandleStore(
            tmp_path / "check", catalog=catalog, data_path=data, verify_extensions=False
        ) as store:
            problems: list[str] = []
            for series in SERIES:
                truth = truth_frame(sim, series, FROM_MS, complete_end)
                assert truth.height > 10, f"{series}: the truth holds almost nothing"
                stored = stored_frame(store, series, FROM_MS, complete_end)
                problems += [f"{series}: {p}" for p in differences(truth, stored)]
        assert problems == []
    for k in logs:  # no shard kept anything on its own disk but the catalog's lock notes
        assert not list((tmp_path / f"host{k}").rglob("*.parquet"))
    outputs = [*logged.values(), out.decode(), err.decode(), message, refused.stdout.decode()]
    assert all(s3.secret not in text for text in outputs)
    assert _files_holding(tmp_path, s3.secret) == []


@pytest.mark.soak
async def test_a_20s_s3_outage_under_a_running_ingest_process_loses_nothing(
    postgres: PostgresServer, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`candles ingest` with its data in S3: the endpoint refuses connections for 20 real
    seconds while candles arrive; flushes fail and keep them; afterwards the lake equals the
    truth and the process stops cleanly (exit 0)."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    catalog = postgres.create_database("outage")
    data = s3.create_bucket("candles-outage") + "lake/"
    log = tmp_path / "ingest.log"
    async with Simulator(token=TOKEN, seed=7, clock=SimulatorClock.manual(START_MS)) as sim:
        config = _host(tmp_path, 1, catalog, data, s3, sim.url)
        ingest = _start_shard(config, None, log, s3)
        try:
            async with asyncio.timeout(60):
                await sim.wait_for_subscriptions(len(SERIES))

            async def stored() -> bool:
                newest = await asyncio.to_thread(_newest, catalog, data, tmp_path, s3)
                return newest.keys() == set(SERIES)

            await eventually(stored, within=60, what="the first flush")
            s3.stop()
            try:
                for _ in range(10):
                    await sim.advance(60)
                await asyncio.sleep(20)  # the outage itself (a soak run: real time is the point)
                assert "flush (schedule) failed" in log.read_text()
            finally:
                s3.start()
            await sim.advance(60)
            end = sim.now_ms
            complete_end = end - 5 * MINUTE - end % (5 * MINUTE)
            await sim.advance(60)
            targets = {s: max(c.time for c in sim.truth(s, FROM_MS, complete_end)) for s in SERIES}

            async def caught_up() -> bool:
                newest = await asyncio.to_thread(_newest, catalog, data, tmp_path, s3)
                return all(newest.get(s, 0) >= t for s, t in targets.items())

            await eventually(caught_up, within=60, what="stored after the outage")
            ingest.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(ingest.wait, timeout=60)  # the loop answers the close
            assert code == 0, log.read_text()[-2000:]
        finally:
            if ingest.poll() is None:
                ingest.kill()
                ingest.wait()
        with CandleStore(
            tmp_path / "check", catalog=catalog, data_path=data, verify_extensions=False
        ) as store:
            problems = [
                f"{series}: {p}"
                for series in SERIES
                for p in differences(
                    truth_frame(sim, series, FROM_MS, complete_end),
                    stored_frame(store, series, FROM_MS, complete_end),
                )
            ]
        assert problems == []
    assert s3.secret not in log.read_text()
