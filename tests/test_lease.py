"""The shard lease in a real PostgreSQL catalog database (pipeline/store/lease.py).

One throwaway PostgreSQL server serves the module (tests/helpers/postgres.py); each test gets
its own database. "Hosts" are leases with different host names in this process, and real
processes where dying matters.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.sharding import ShardSpec
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import (
    CandleStore,
    CatalogLease,
    LeaseLost,
    StoreBusy,
    with_application_name,
)
from tests.helpers.postgres import PostgresServer, running_postgres
from tests.helpers.service import (
    START_MS,
    TOKEN,
    eventually,
    make_service,
    series_keys,
    service_config,
)
from tests.helpers.store import candle_frame
from tests.helpers.timing import TIMEOUT

_databases = itertools.count(1)

HOLDER = """
import sys
from pipeline.sharding import ShardSpec
from pipeline.store import CatalogLease
lease = CatalogLease(sys.argv[1], ShardSpec.parse(sys.argv[2]), host="host-child")
lease.acquire()
print("held", flush=True)
sys.stdin.read()  # hold until killed
"""


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def conninfo(postgres: PostgresServer) -> str:
    """The libpq string of a fresh catalog database."""
    name = f"lease{next(_databases)}"
    postgres.create_database(name)
    return postgres.conninfo(name)


def _lease(conninfo: str, shard: str, host: str, pid: int = 4242) -> CatalogLease:
    return CatalogLease(conninfo, ShardSpec.parse(shard), host=host, pid=pid)


def _sessions(conninfo: str, application_name: str) -> list[int]:
    with psycopg.connect(conninfo, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def _terminate(conninfo: str, application_name: str) -> None:
    """What a catalog restart or a dropped network does to a session: end it server-side."""
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (application_name,),
        )


def test_a_held_shard_is_refused_naming_the_holder(conninfo: str) -> None:
    """The same K/N, another N, or an unsharded writer is refused with host, pid and since;
    other shards of the same N start; a release frees the shard at once."""
    holder = _lease(conninfo, "2/3", "host-a", pid=111)
    holder.acquire()
    try:
        for shard in ("2/3", "1/2", "1/1"):
            with pytest.raises(StoreBusy, match=r"shard 2/3 on host host-a, pid 111, since 20"):
                _lease(conninfo, shard, "host-b").acquire()
        with _lease(conninfo, "3/3", "host-c") as neighbour:
            assert neighbour.held
    finally:
        holder.release()
    with _lease(conninfo, "2/3", "host-b") as successor:
        assert successor.held


def test_a_killed_holder_frees_its_shard(conninfo: str) -> None:
    """A SIGKILLed process releases its shard (its session ends): the next claim succeeds."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, conninfo, "1/2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"held"
        with pytest.raises(StoreBusy, match="host-child"):
            _lease(conninfo, "1/2", "host-b").acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(TIMEOUT)
    # PostgreSQL sees the socket close when the kernel reaps the process; the claim may race
    # the backend's exit by a moment, so a refusal is retried until a generous limit.
    lease = _lease(conninfo, "1/2", "host-b")
    for _ in range(int(TIMEOUT / 0.05)):
        try:
            lease.acquire()
            break
        except StoreBusy:
            with psycopg.connect(conninfo, autocommit=True) as admin:
                admin.execute("SELECT pg_sleep(0.05)")  # server-side wait: no client sleep
    assert lease.held
    lease.release()


def test_a_lost_lease_blocks_commits_until_claimed_back(conninfo: str, tmp_path: Path) -> None:
    """When the lease session ends, the next commit is refused (nothing written); after the
    claim succeeds again the store writes."""
    lease = _lease(conninfo, "1/1", "host-a")
    lease.acquire()
    store = CandleStore(
        tmp_path, catalog=f"postgres:{conninfo}", data_path=tmp_path / "data",
        verify_extensions=False, application_name=lease.application_name,
        before_commit=lease.check,
    )  # fmt: skip
    try:
        store.upsert(candle_frame("AAPL", "1m", 5))
        _terminate(conninfo, "candles-lease-1-of-1")
        with pytest.raises(LeaseLost, match="does not hold shard 1/1"):
            store.upsert(candle_frame("AAPL", "1m", 10))
        assert not lease.held
        assert store.count() == 5
        with pytest.raises(LeaseLost):
            store.compact()
        lease.acquire()
        store.reconnect()
        assert store.upsert(candle_frame("AAPL", "1m", 10)).inserted == 5
        assert store.count() == 10
    finally:
        store.close()
        lease.release()


def test_a_takeover_aborts_the_lost_writers_commit_in_flight(conninfo: str, tmp_path: Path) -> None:
    """A writer passed its lease check, then lost the lease (a partition) before its COMMIT
    reached the catalog: the next holder ends that writer's catalog sessions, so the commit
    fails instead of landing after the takeover."""
    old = _lease(conninfo, "2/2", "host-a")
    old.acquire()
    successor = _lease(conninfo, "2/2", "host-b")

    def lose_and_take_over() -> None:
        old.check()  # the last check passes...
        _terminate(conninfo, "candles-lease-2-of-2")  # ...then the lease session dies
        successor.acquire()  # and another host claims the shard before our COMMIT

    store = CandleStore(
        tmp_path, catalog=f"postgres:{conninfo}", data_path=tmp_path / "data",
        verify_extensions=False, application_name=old.application_name, max_retries=0,
    )  # fmt: skip
    try:
        store.upsert(candle_frame("AAPL", "1m", 5))
        store._before_commit = lose_and_take_over
        with pytest.raises(Exception, match=r"(?i)failed to commit|connection|terminat"):
            store.upsert(candle_frame("SPY", "1m", 10))
        assert successor.held
        assert _sessions(conninfo, old.application_name) == []
        store._before_commit = None
        assert store.history("SPY{=m}").height == 0  # the commit in flight did not land
    finally:
        store.close()
        successor.release()
        old.release()


def test_maintenance_goes_to_one_shard_per_interval(conninfo: str) -> None:
    """Of all shards asking within one interval, one gets the turn; a run never overlaps."""
    leases = [_lease(conninfo, f"{k}/3", f"host-{k}") for k in (1, 2, 3)]
    for lease in leases:
        lease.acquire()
    try:
        with leases[1].maintenance_turn(3600) as second:
            with leases[2].maintenance_turn(0) as overlapping:
                assert not overlapping  # the second shard's run is still going
            assert second
        with leases[0].maintenance_turn(3600) as first, leases[2].maintenance_turn(3600) as third:
            assert not first and not third  # shard 2 ran it moments ago
        with leases[2].maintenance_turn(0) as due:
            assert due  # an interval of 0 has passed: shard 3 takes the next turn
    finally:
        for lease in leases:
            lease.release()


async def test_the_service_claims_a_lost_shard_back_or_stops_when_taken_over(
    conninfo: str, tmp_path: Path
) -> None:
    """Ingest on a PostgreSQL catalog: a lost lease fails flushes (candles kept); the check
    claims it back and the kept candles are stored; a shard another host took stops ingest
    with an error naming that host, and no final flush is attempted."""
    options: dict[str, Any] = {
        "store.catalog": f"postgres:{conninfo}",
        "store.data_path": str(tmp_path / "data"),
        "store.lease_check_interval": 3600.0,  # the test runs the checks itself
    }
    config = service_config(tmp_path / "local", **options)
    async with Simulator(token=TOKEN, seed=5, clock=SimulatorClock.manual(START_MS)) as sim:
        service = make_service(config, sim)
        runner = asyncio.create_task(service.run())
        try:
            await sim.wait_for_subscriptions(len(series_keys(config)))
            await eventually(
                lambda: service.manager.stats().buffered_events == 0, what="snapshots applied"
            )
            assert (await service.flush("first")).error is None
            stored = service.store.count()
            await asyncio.to_thread(_terminate, conninfo, "candles-lease-1-of-1")
            for _ in range(5):
                await sim.advance(60)
            end = sim.now_ms
            await eventually(lambda: service.stats.stream_time_ms >= end - 60_000, what="live")
            failed = await service.flush("lost")
            assert failed.error is not None and "does not hold shard 1/1" in failed.error
            assert service.store.count() == stored
            await service.check_lease()  # nobody else took it: claimed back
            assert service.lease is not None and service.lease.held
            again = await service.flush("back")
            assert again.error is None and again.written >= 5
            await asyncio.to_thread(_terminate, conninfo, "candles-lease-1-of-1")
            intruder = _lease(conninfo, "1/1", "host-b", pid=777)
            await asyncio.to_thread(intruder.acquire)
            try:
                failures = service.stats.flush_failures
                await service.check_lease()
                with pytest.raises(LeaseLost, match=r"taken over.*host host-b, pid 777"):
                    await asyncio.wait_for(runner, TIMEOUT)
                assert service.stats.flush_failures == failures  # no doomed final flush
            finally:
                intruder.release()
        finally:
            service.stop()
            if not runner.done():
                await runner


def test_writer_sessions_are_named_whatever_form_the_catalog_takes(
    postgres: PostgresServer,
) -> None:
    """Both libpq forms, key=value and URI, reach PostgreSQL with the writer's name."""
    postgres.create_database("named")
    uri = f"postgresql://postgres@{postgres.host}:{postgres.port}/named"
    for conninfo in (postgres.conninfo("named"), uri, uri + "?connect_timeout=5"):
        named = with_application_name(conninfo, "candles-ingest-2-of-3")
        with psycopg.connect(named, autocommit=True) as con:
            row = con.execute("SHOW application_name").fetchone()
        assert row == ("candles-ingest-2-of-3",), conninfo
