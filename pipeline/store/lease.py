"""One ingest writer per shard across hosts: a lease in the PostgreSQL catalog database.

The local ``flock`` (:mod:`pipeline.store.writer_lock`) cannot see another machine. Ingest hosts
that share nothing but the catalog database and the bucket (docs/scaling.md) guard "one writer
per shard" through that database instead:

* **The lease** is a session-level advisory lock (``pg_try_advisory_lock``) on a connection of
  its own, held for the life of the writer. PostgreSQL releases it when the session ends,
  however the process ends, so a dead host frees its shard without manual cleanup. (DuckDB's
  postgres scanner cannot hold it: with duckdb 1.5.5 a lock taken through ``postgres_query``
  was gone from ``pg_locks`` on the next query, run by the same backend; its pooled
  connections are reset between uses.)
* **The holder's name** (host, pid, since when) is a row of ``candles_ingest_writers`` in the
  same database, written in the claim's transaction: a refused claimant reads it and says who
  holds the shard. A row counts only while its backend still holds the lock (``pg_locks``),
  so a dead holder's row is never reported and is replaced by the next claim.
* **Claims are serialised** by a transaction-level advisory lock, so the check "no live
  holder conflicts" and the taking are one step: the same ``K/N`` twice is refused, and so is
  a shard of another count ``N`` (two counts at once would give one series two owners).
  An unsharded writer is ``1/1``: it conflicts with any other.
* **Fencing.** A writer checks the lease (one round trip on the lease's connection) right
  before every commit (:class:`~pipeline.store.CandleStore` ``before_commit``) and every
  ``store.lease_check_interval`` seconds. Its DuckLake connections name themselves
  :attr:`CatalogLease.application_name`; whoever claims the shard next first terminates every
  session of that name (``pg_terminate_backend``), so a commit still in flight from a writer
  that lost its lease is aborted by PostgreSQL rather than landing after the takeover.
* **Partitions.** The lease session sets TCP keepalives and ``tcp_user_timeout`` on both ends
  (about 10 s), so PostgreSQL frees the shard of a host it can no longer reach, and that host's
  own checks fail within the same time: it stops writing before anyone else can start.

Maintenance (compaction, snapshot expiry, orphan cleanup) runs on one host at a time: every
shard's compaction job asks :meth:`CatalogLease.maintenance_turn`, which hands the turn to one
of them per ``schedule.compaction_interval`` (the time of the last run is kept in the database,
on its clock), so compaction goes on while any shard is up.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.sharding import ShardSpec
from pipeline.store.lake import StoreError, redact
from pipeline.store.writer_lock import StoreBusy

if TYPE_CHECKING:
    # Imported where used, not here: only a PostgreSQL catalog needs psycopg, and importing it
    # costs every other ingest process ~230 modules and ~10 MB of RSS
    # (benchmarks/README.md, "Memory at start").
    import psycopg

__all__ = ["CatalogLease", "LeaseHolder", "LeaseLost", "lease_key"]

logger = logging.getLogger(__name__)

WRITERS_TABLE = "candles_ingest_writers"
MAINTENANCE_TABLE = "candles_ingest_maintenance"
_DEFAULT_TIMEOUT_S = 10.0
# Of an interval, the part that must have passed since the last maintenance run: the jobs of
# several hosts drift, and a turn missed by a few seconds should not wait a whole interval.
_TURN_SLACK = 0.9
_U32 = 0xFFFF_FFFF


def lease_key(name: str) -> int:
    """A stable, non-negative 63-bit advisory-lock key for ``name`` (BLAKE2b, not ``hash()``)."""
    digest = hashlib.blake2b(f"candles-ingest {name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


_REGISTRY_KEY = lease_key("registry")
_MAINTENANCE_KEY = lease_key("maintenance")

# A row is live while its backend holds the advisory lock it names (pg_locks splits a bigint
# key into classid = high 32 bits, objid = low 32 bits, objsubid = 1).
_LIVE = """
    EXISTS (SELECT 1 FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.pid = w.backend_pid
              AND l.classid::bigint = w.lock_key >> 32
              AND l.objid::bigint = w.lock_key & 4294967295)
"""
_CREATE_WRITERS = f"""
    CREATE TABLE IF NOT EXISTS {WRITERS_TABLE} (
        shard text PRIMARY KEY,
        lock_key bigint NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        backend_pid integer NOT NULL,
        since timestamptz NOT NULL
    )
"""
_CREATE_MAINTENANCE = f"""
    CREATE TABLE IF NOT EXISTS {MAINTENANCE_TABLE} (
        job text PRIMARY KEY,
        last_run timestamptz NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL
    )
"""


class LeaseLost(StoreError):
    """This process no longer owns its shard (catalog unreachable, or another took it)."""


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who holds a shard: what a refused claimant reports."""

    shard: str
    host: str
    pid: int
    since: datetime

    def __str__(self) -> str:
        since = self.since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"shard {self.shard} on host {self.host}, pid {self.pid}, since {since}"


class CatalogLease:
    """The lease one ingest process holds on its shard of a PostgreSQL-catalog lake.

    Args:
        conninfo: The catalog's libpq connection string (``store.catalog`` without
            ``postgres:``); the password comes from ``PGPASSWORD`` or ``~/.pgpass``.
        shard: This process's shard (``1/1`` when not sharded).
        timeout: Seconds a claim or check may wait on the database; also the TCP timeouts
            that end the session of a host the database can no longer reach.
        host: How the holder is named to others (default: this host's name).
        pid: Likewise (default: this process).
    """

    def __init__(
        self,
        conninfo: str,
        shard: ShardSpec,
        *,
        timeout: float = _DEFAULT_TIMEOUT_S,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.shard = shard
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.key = lease_key(f"shard {shard}")
        self._conninfo = conninfo
        self._timeout = timeout
        self._lock = threading.Lock()
        self._con: psycopg.Connection[Any] | None = None
        self._lost: str | None = None

    def __repr__(self) -> str:
        return f"CatalogLease(shard={str(self.shard)!r}, host={self.host!r}, held={self.held})"

    @property
    def application_name(self) -> str:
        """What this shard's writer connections call themselves in ``pg_stat_activity``."""
        return f"candles-ingest-{self.shard.index}-of-{self.shard.count}"

    @property
    def held(self) -> bool:
        """Whether the lease was taken and not known to be lost."""
        return self._con is not None and self._lost is None

    # ------------------------------------------------------------------ claim and release

    def acquire(self) -> None:
        """Take the shard, or fail at once naming the holder.

        Raises:
            StoreBusy: Another live process holds this shard, or a shard of another count.
            StoreError: The catalog database cannot be reached.
        """
        with self._lock:
            if self._con is not None and self._lost is None:
                return
            self._close()
            con = self._connect()
            try:
                self._claim(con)
            except BaseException:
                con.close()
                raise
            self._con, self._lost = con, None
        logger.info("= holding %s in the catalog database (lease)", self.shard)

    def release(self) -> None:
        """Give the shard up (closing the session releases the lock); idempotent."""
        with self._lock:
            self._close()

    def __enter__(self) -> CatalogLease:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # ------------------------------------------------------------------ while writing

    def check(self) -> None:
        """Prove the lease is still held (one round trip); the guard before every commit.

        Raises:
            LeaseLost: The lease session is gone or no longer holds the lock; nothing may be
                written until :meth:`acquire` succeeds again.
        """
        import psycopg  # here, not at the top: see the imports

        with self._lock:
            if self._lost is not None or self._con is None:
                raise LeaseLost(self._lost_message())
            try:
                row = self._con.execute(
                    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND objsubid = 1 AND pid = pg_backend_pid() AND classid = %s AND objid = %s",
                    (self.key >> 32, self.key & _U32),
                ).fetchone()
            except psycopg.Error as exc:
                self._lose(f"the catalog connection failed: {redact(str(exc).strip())}")
                raise LeaseLost(self._lost_message()) from None
            if row is None:
                self._lose("the catalog no longer shows this process holding it")
                raise LeaseLost(self._lost_message())

    @contextlib.contextmanager
    def maintenance_turn(self, interval_s: float) -> Iterator[bool]:
        """Whether this process should run the lake's maintenance now (see the module doc).

        Yields ``True`` to one caller per ``interval_s`` among all shards (the last run's
        time is kept in the database), and holds a session lock meanwhile so that runs never
        overlap; ``False`` when another host ran it recently or runs it now.

        Raises:
            LeaseLost: The lease session is gone (nothing is run).
        """
        got = self._take_turn(interval_s)
        try:
            yield got
        finally:
            if got:
                self._end_turn()

    # ------------------------------------------------------------------ internals

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg  # here, not at the top: see the imports

        # Keepalives and a user timeout on our end: a check never hangs on a dead network
        # for longer than ~timeout; the server-side equivalents are set in the session.
        seconds = max(1, int(self._timeout))
        try:
            con = psycopg.connect(
                self._conninfo,
                autocommit=True,
                application_name=f"candles-lease-{self.shard.index}-of-{self.shard.count}",
                connect_timeout=seconds,
                keepalives=1,
                keepalives_idle=max(1, seconds // 2),
                keepalives_interval=max(1, seconds // 5),
                keepalives_count=3,
                tcp_user_timeout=seconds * 1000,
            )
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot reach the catalog database to claim shard {self.shard}: "
                f"{redact(str(exc).strip())}"
            ) from None
        try:
            for setting, value in (
                ("statement_timeout", f"{seconds}s"),
                ("idle_session_timeout", "0"),  # the lease session is idle by design
                ("tcp_keepalives_idle", str(max(1, seconds // 2))),
                ("tcp_keepalives_interval", str(max(1, seconds // 5))),
                ("tcp_keepalives_count", "3"),
                ("tcp_user_timeout", str(seconds * 1000)),
            ):
                with contextlib.suppress(psycopg.errors.UndefinedObject):  # older servers
                    con.execute(f"SET {setting} = '{value}'")
        except psycopg.Error as exc:
            con.close()
            raise StoreError(f"cannot set up the lease session: {redact(str(exc))}") from None
        return con

    def _claim(self, con: psycopg.Connection[Any]) -> None:
        """One transaction: serialise, look for conflicting live holders, lock, note us."""
        import psycopg  # here, not at the top: see the imports

        locked = False
        try:
            with con.transaction():
                con.execute("SELECT pg_advisory_xact_lock(%s)", (_REGISTRY_KEY,))
                con.execute(_CREATE_WRITERS)
                live = [
                    LeaseHolder(str(shard), str(host), int(pid), since)
                    for shard, host, pid, since in con.execute(
                        f"SELECT shard, host, pid, since FROM {WRITERS_TABLE} w WHERE {_LIVE} "
                        "ORDER BY shard"
                    ).fetchall()
                ]
                conflicts = [h for h in live if self._conflicts(h)]
                if conflicts:
                    raise StoreBusy(self._refusal(conflicts))
                row = con.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                locked = bool(row and row[0])
                if not locked:
                    raise StoreBusy(self._refusal([], backend=self._lock_holder_pid(con)))
                con.execute(f"DELETE FROM {WRITERS_TABLE} w WHERE NOT {_LIVE}")
                con.execute(
                    f"INSERT INTO {WRITERS_TABLE} (shard, lock_key, host, pid, backend_pid, since) "
                    "VALUES (%s, %s, %s, %s, pg_backend_pid(), now()) ON CONFLICT (shard) DO "
                    "UPDATE SET lock_key = EXCLUDED.lock_key, host = EXCLUDED.host, "
                    "pid = EXCLUDED.pid, backend_pid = EXCLUDED.backend_pid, since = now()",
                    (str(self.shard), self.key, self.host, self.pid),
                )
            self._fence(con)
        except psycopg.Error as exc:
            if locked:
                with contextlib.suppress(psycopg.Error):
                    con.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            raise StoreError(
                f"cannot claim shard {self.shard} in the catalog database: {redact(str(exc))}"
            ) from None
        except BaseException:
            if locked:
                with contextlib.suppress(psycopg.Error):
                    con.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            raise

    def _conflicts(self, holder: LeaseHolder) -> bool:
        try:
            other = ShardSpec.parse(holder.shard)
        except ValueError:
            return True  # a row we cannot read: be safe, refuse and show it
        return other == self.shard or other.count != self.shard.count

    def _fence(self, con: psycopg.Connection[Any]) -> None:
        """End the sessions a previous holder of this shard may still have open."""
        import psycopg  # here, not at the top: see the imports

        rows = con.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND pid <> pg_backend_pid()",
            (self.application_name,),
        ).fetchall()
        if not rows:
            return
        wait = con.info.server_version >= 140000  # pg_terminate_backend(pid, timeout): 14+
        for (pid,) in rows:
            try:
                if wait:
                    con.execute(
                        "SELECT pg_terminate_backend(%s, %s)", (pid, int(self._timeout * 1000))
                    )
                else:
                    con.execute("SELECT pg_terminate_backend(%s)", (pid,))
            except psycopg.Error as exc:  # e.g. another role's session: the guard still holds
                logger.warning("! could not end a stale writer session (pid %s): %s", pid, exc)
        logger.warning(
            "! ended %d catalog session(s) of a previous writer of shard %s", len(rows), self.shard
        )

    def _lock_holder_pid(self, con: psycopg.Connection[Any]) -> int | None:
        row = con.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND classid = %s AND objid = %s",
            (self.key >> 32, self.key & _U32),
        ).fetchone()
        return None if row is None else int(row[0])

    def _refusal(self, holders: list[LeaseHolder], *, backend: int | None = None) -> str:
        if holders:
            who = "; ".join(str(h) for h in holders)
        else:
            who = f"catalog backend pid {backend}" if backend is not None else "holder unknown"
        if self.shard.count > 1:
            return (
                f"shard {self.shard} cannot start: {who} is running on this lake; each shard "
                "runs in exactly one process and all shards use one count N (docs/scaling.md)"
            )
        return (
            f"this lake is already being written ({who}); stop that writer first, or split the "
            "series between processes with --shard K/N (docs/scaling.md): two writers of one "
            "series would store re-sent candles twice"
        )

    def _take_turn(self, interval_s: float) -> bool:
        import psycopg  # here, not at the top: see the imports

        with self._lock:
            if self._lost is not None or self._con is None:
                raise LeaseLost(self._lost_message())
            con = self._con
            try:
                with con.transaction():
                    con.execute("SELECT pg_advisory_xact_lock(%s)", (_REGISTRY_KEY,))
                    con.execute(_CREATE_MAINTENANCE)
                got = con.execute("SELECT pg_try_advisory_lock(%s)", (_MAINTENANCE_KEY,)).fetchone()
                if not (got and got[0]):
                    return False
                try:
                    row = con.execute(
                        f"SELECT now() - last_run >= make_interval(secs => %s) OR last_run IS "
                        f"NULL FROM (SELECT max(last_run) AS last_run FROM {MAINTENANCE_TABLE} "
                        "WHERE job = 'compaction') j",
                        (interval_s * _TURN_SLACK,),
                    ).fetchone()
                    if not (row and row[0]):
                        con.execute("SELECT pg_advisory_unlock(%s)", (_MAINTENANCE_KEY,))
                        return False
                    con.execute(
                        f"INSERT INTO {MAINTENANCE_TABLE} (job, last_run, host, pid) "
                        "VALUES ('compaction', now(), %s, %s) ON CONFLICT (job) DO UPDATE SET "
                        "last_run = now(), host = EXCLUDED.host, pid = EXCLUDED.pid",
                        (self.host, self.pid),
                    )
                except BaseException:
                    with contextlib.suppress(psycopg.Error):
                        con.execute("SELECT pg_advisory_unlock(%s)", (_MAINTENANCE_KEY,))
                    raise
                return True
            except psycopg.Error as exc:
                self._lose(f"the catalog connection failed: {redact(str(exc).strip())}")
                raise LeaseLost(self._lost_message()) from None

    def _end_turn(self) -> None:
        import psycopg  # here, not at the top: see the imports

        with self._lock:
            if self._con is None:
                return
            try:
                self._con.execute("SELECT pg_advisory_unlock(%s)", (_MAINTENANCE_KEY,))
            except psycopg.Error as exc:
                self._lose(f"the catalog connection failed: {redact(str(exc).strip())}")

    def _lose(self, why: str) -> None:
        import psycopg  # here, not at the top: see the imports

        if self._lost is None:
            logger.error("! lost the lease on shard %s: %s", self.shard, why)
        self._lost = why
        if self._con is not None:
            with contextlib.suppress(psycopg.Error):
                self._con.close()

    def _lost_message(self) -> str:
        why = self._lost or "it was not taken"
        return (
            f"this process does not hold shard {self.shard} any more ({why}); nothing is "
            "written until it is claimed again"
        )

    def _close(self) -> None:
        import psycopg  # here, not at the top: see the imports

        con, self._con = self._con, None
        if con is None:
            return
        try:
            if self._lost is None:
                # Ending the session frees the lock only when its backend has exited, a
                # moment after close(): unlocking first frees the shard at once.
                with contextlib.suppress(psycopg.Error):
                    con.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        finally:
            with contextlib.suppress(psycopg.Error):
                con.close()
