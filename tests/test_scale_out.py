"""Scale-out on a real PostgreSQL catalog: concurrent writers, shard processes, a reader.

One throwaway PostgreSQL server serves the module (tests/helpers/postgres.py); each test gets its
own database and its own shared data folder.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.sharding import shard_of
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore, StoreError, connect
from tests.helpers.postgres import PostgresServer, running_postgres
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
from tests.helpers.store import candle_frame

_databases = itertools.count(1)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def lake(postgres: PostgresServer, tmp_path: Path) -> tuple[str, Path]:
    """A fresh PostgreSQL-catalog lake: (catalog URL, shared data folder)."""
    catalog = postgres.create_database(f"lake{next(_databases)}")
    return catalog, tmp_path / "shared"


def test_postgres_catalog_lake_round_trips(lake: tuple[str, Path], tmp_path: Path) -> None:
    """A store on a PostgreSQL catalog with a shared data path writes, reads and compacts."""
    catalog, shared = lake
    frame = candle_frame("AAPL", "1m", 300)
    with CandleStore(
        tmp_path / "a", catalog=catalog, data_path=shared, verify_extensions=False
    ) as store:
        assert store.upsert(frame).inserted == 300
        assert store.upsert(frame).unchanged == 300
        store.compact(retain=timedelta(0))
        assert store.count() == 300
    assert list(shared.rglob("*.parquet"))
    con = connect(tmp_path / "b", catalog=catalog, data_path=shared, verify_extensions=False)
    try:
        assert con.execute("SELECT count(*) FROM candles").fetchone() == (300,)
    finally:
        con.close()


def test_a_different_data_path_is_refused(lake: tuple[str, Path], tmp_path: Path) -> None:
    """A process naming another data folder than the lake's gets a clear error, not a split lake."""
    catalog, shared = lake
    with CandleStore(tmp_path, catalog=catalog, data_path=shared, verify_extensions=False):
        pass
    with pytest.raises(StoreError, match="does not match existing data path"):
        CandleStore(
            tmp_path, catalog=catalog, data_path=tmp_path / "elsewhere", verify_extensions=False
        )


def test_concurrent_writers_and_compaction_keep_every_row(
    lake: tuple[str, Path], tmp_path: Path
) -> None:
    """Two writers rewrite rows in files a compaction merged, concurrently: all land once."""
    catalog, shared = lake

    def open_store() -> CandleStore:
        return CandleStore(
            tmp_path, catalog=catalog, data_path=shared, verify_extensions=False,
            retry_delay_s=0.01, max_retries=20,
        )  # fmt: skip

    with open_store() as setup:
        for symbol in ("AAPL", "SPY"):
            setup.upsert(candle_frame(symbol, "1m", 200))
        setup.compact(retain=timedelta(0))  # both series now share one file
    stores = [open_store(), open_store()]
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def write(store: CandleStore, symbol: str) -> None:
        try:
            barrier.wait()
            for revision in range(1, 6):
                store.upsert(candle_frame(symbol, "1m", 200, close=100.0 + revision))
        except BaseException as exc:  # reported below with the assertion
            failures.append(exc)

    threads = [
        threading.Thread(target=write, args=(stores[0], "AAPL")),
        threading.Thread(target=write, args=(stores[1], "SPY")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        for symbol in ("AAPL", "SPY"):
            stored = stores[0].history(f"{symbol}{{=m}}")
            assert stored.height == 200
            assert stored["close"].to_list() == [105.0 + i for i in range(200)]
    finally:
        for store in stores:
            store.close()


# ------------------------------------------------------------------ shard processes


def _config(tmp_path: Path, catalog: str, shared: Path, url: str) -> Path:
    options: dict[str, Any] = {
        "subscriptions.symbols": SYMBOLS,
        "subscriptions.intervals": INTERVALS,
        "store.catalog": catalog,
        "store.data_path": str(shared),
        "schedule.compaction_interval": 1.0,
    }
    return write_ingest_config(tmp_path / "config.toml", tmp_path / "local", url, **options)


def _start_shard(config: Path, k: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "ingest", "--config", str(config),
         "--shard", f"{k}/{SHARDS}"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        env={**os.environ, "CANDLES_PROFILE": ""},
    )  # fmt: skip


async def test_three_shards_one_killed_equal_the_truth(
    lake: tuple[str, Path], tmp_path: Path
) -> None:
    """3 shard processes, shard 2 SIGKILLed and restarted, a reader throughout: lake == truth."""
    catalog, shared = lake
    assert {shard_of(s, SHARDS) for s in SERIES} == {1, 2, 3}, "every shard must own a series"
    logs = {k: tmp_path / f"shard{k}.log" for k in range(1, SHARDS + 1)}
    stop = tmp_path / "stop-reader"
    async with Simulator(token=TOKEN, seed=11, clock=SimulatorClock.manual(START_MS)) as sim:
        config = _config(tmp_path, catalog, shared, sim.url)
        shards = {k: _start_shard(config, k, logs[k]) for k in logs}
        reader: subprocess.Popen[bytes] | None = None
        try:
            async with asyncio.timeout(60):
                await sim.wait_for_subscriptions(len(SERIES))
            for _ in range(3):
                await sim.advance(60)

            async def every_series_stored() -> bool:
                newest = await asyncio.to_thread(newest_stored, catalog, str(shared), tmp_path)
                return newest.keys() == set(SERIES)

            await eventually(every_series_stored, within=60, what="first flushes of all shards")
            reader = start_reader(catalog, str(shared), stop)

            shards[2].send_signal(signal.SIGKILL)
            assert shards[2].wait(timeout=30) == -signal.SIGKILL
            async with asyncio.timeout(30):
                await sim.wait_for(lambda: sim.connections == SHARDS - 1)
            await sim.advance(300)  # shard 2's outage: five simulated minutes
            await sim.advance(60)
            shards[2] = _start_shard(config, 2, logs[2])
            async with asyncio.timeout(60):
                await sim.wait_for(lambda: sim.connections == SHARDS)
                await sim.wait_for_subscriptions(len(SERIES))
            await sim.advance(60)
            await sim.advance(60)
            end = sim.now_ms
            complete_end = end - 5 * MINUTE - end % (5 * MINUTE)
            await sim.advance(60)  # the stream moves past the end of the last 5m candle checked

            # Per series, the start of its last complete candle (quiet series have gaps).
            targets = {s: max(c.time for c in sim.truth(s, FROM_MS, complete_end)) for s in SERIES}
            newest: dict[str, int] = {}

            async def caught_up() -> bool:
                newest.update(
                    await asyncio.to_thread(newest_stored, catalog, str(shared), tmp_path)
                )
                return all(newest.get(s, 0) >= target for s, target in targets.items())

            await eventually(
                caught_up, within=60, what=f"every shard caught up: {targets=} {newest=}"
            )
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

        con = connect(tmp_path, catalog=catalog, data_path=shared, verify_extensions=False)
        try:  # every key stored once: no candle written by two shards or twice by one
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
        # The lease hands compaction to one shard per interval, whichever asks first.
        assert any("= compacted" in logged[k] for k in logged), "someone compacts"
        with CandleStore(
            tmp_path / "check", catalog=catalog, data_path=shared, verify_extensions=False
        ) as store:
            problems: list[str] = []
            for series in SERIES:
                truth = truth_frame(sim, series, FROM_MS, complete_end)
                assert truth.height > 10, f"{series}: the truth holds almost nothing"
                stored = stored_frame(store, series, FROM_MS, complete_end)
                problems += [f"{series}: {p}" for p in differences(truth, stored)]
        assert problems == []


class _CommitHook:
    """A connection stand-in that runs ``before_commit`` once, right before the first COMMIT."""

    def __init__(self, con: Any, before_commit: Callable[[], object]) -> None:
        self._con = con
        self._before_commit: Callable[[], object] | None = before_commit

    def execute(self, query: str, *args: Any) -> Any:
        if query == "COMMIT" and self._before_commit is not None:
            hook, self._before_commit = self._before_commit, None
            hook()
        return self._con.execute(query, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def test_a_conflicting_commit_is_retried_and_lands(lake: tuple[str, Path], tmp_path: Path) -> None:
    """Another shard commits a delete in the same file first: the loser retries and lands."""
    catalog, shared = lake
    stores = [
        CandleStore(tmp_path, catalog=catalog, data_path=shared, verify_extensions=False,
                    sleep=lambda _: None)
        for _ in range(2)
    ]  # fmt: skip
    try:
        first, other = stores
        for symbol in ("AAPL", "SPY"):
            first.upsert(candle_frame(symbol, "1m", 200))
        first.compact(retain=timedelta(0))  # one file holds both series now
        first._con = _CommitHook(  # type: ignore[assignment]
            first._con, lambda: other.upsert(candle_frame("SPY", "1m", 200, close=300.0))
        )
        result = first.upsert(candle_frame("AAPL", "1m", 200, close=200.0))
        assert result.retries >= 1 and result.updated == 200
        assert first.stats.retries >= 1
        assert other.history("SPY{=m}")["close"].to_list() == [300.0 + i for i in range(200)]
        assert other.history("AAPL{=m}")["close"].to_list() == [200.0 + i for i in range(200)]
    finally:
        for store in stores:
            store.close()
