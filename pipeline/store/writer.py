"""CandleStore: completed candles in a DuckLake lake (SQLite or PostgreSQL catalog + Parquet).

Why DuckLake (DESIGN.md "Store"): a plain ``.duckdb`` file admits one process and locks
readers out; DuckLake commits through its catalog, so readers in other processes (``candles
query``, notebooks, ``duckdb`` itself) see consistent snapshots while ingest writes, and a
write killed half-way leaves at most an orphan Parquet file that no snapshot references
(:meth:`CandleStore.compact` deletes it once it is older than the retention).

Module map: :mod:`pipeline.store.lake` opens and attaches the lake (extensions, catalog, the
reader's :func:`~pipeline.store.lake.connect`); :mod:`pipeline.store.upsert` is the upsert
transaction; this module is the writer's API. The package :mod:`pipeline.store` exports the
public names of all of them.

Two *writers* (a second ingest process, a compaction run from the CLI) can collide:
DuckLake reports "database is locked" or a transaction conflict, and :class:`CandleStore`
retries the whole transaction a bounded number of times with jittered exponential backoff,
counting every retry (:attr:`StoreStats.retries`).

Threading: a :class:`CandleStore` owns one DuckDB connection. Call it from one thread at a
time (the service runs it in a worker thread); an internal lock serialises overlapping calls
rather than corrupting the connection. Every call blocks.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import duckdb
import polars as pl

from pipeline.dxlink import CandleSymbol
from pipeline.store.folder import prepare_folder
from pipeline.store.lake import (
    LAKE,
    TABLE,
    StoreError,
    has_candles_table,
    migrate_sequence_column,
    open_lake,
    parse_catalog,
    read_sql,
    redact,
    resolve_data_path,
    rollback,
    table_folder,
)
from pipeline.store.object_store import S3Options
from pipeline.store.upsert import (
    NewestStored,
    UpsertResult,
    count,
    fetch,
    prepare_batch,
    prepare_keys,
    to_frame_schema,
    upsert_once,
)

__all__ = [
    "CandleStore",
    "CompactionResult",
    "StoreBusyError",
    "StoreStats",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# SQLite busy / DuckLake commit conflicts: the only errors worth retrying. Anything else (a
# type error, a full disk, a missing table) fails at once.
_TRANSIENT = re.compile(r"database is (locked|busy)|conflict", re.IGNORECASE)
# Two processes creating DuckLake's metadata tables in one new catalog at once.
_INIT_RACE = re.compile(r"already exists|duplicate key|conflict", re.IGNORECASE)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The catalog DuckLake attaches for its metadata tables (DuckLake names it after the lake).
METADATA = f"__ducklake_metadata_{LAKE}"
# recent(): the first lower bound lies n periods times this before the newest candle (room for
# nights and weekends of a market's 1m series); each retry widens it by the factor.
_RECENT_MARGIN = 4
_RECENT_WIDEN_FACTOR = 16
_RECENT_WIDENINGS = 3
_MIN_MS = -62_135_596_800_000  # 0001-01-01: a bound DuckDB's timestamps can hold


class StoreBusyError(StoreError):
    """A write kept colliding with another writer after every allowed retry."""


@dataclass(frozen=True, slots=True)
class CompactionResult:
    """What one :meth:`CandleStore.compact` did."""

    files_before: int
    files_after: int
    snapshots_expired: int
    files_removed: int


@dataclass(slots=True)
class StoreStats:
    """Counters since the store was opened."""

    upserts: int = 0
    rows_written: int = 0
    rows_deleted: int = 0
    retries: int = 0
    busy_failures: int = 0
    compactions: int = 0
    connections_recycled: int = 0


class CandleStore:
    """Idempotent upserts of completed candles, resume points and history reads.

    Args:
        path: The store folder (created if missing).
        catalog: See :func:`parse_catalog`; default ``sqlite:<path>/catalog.sqlite``.
        data_path: Folder of the Parquet files; default ``<path>/data``. Several ingest
            shards on one PostgreSQL catalog share one (docs/scaling.md); every process
            attaching the lake must name the same folder.
        max_retries: How often one transaction is retried after a transient collision
            (SQLite busy, DuckLake commit conflict) before :class:`StoreBusyError`.
        retry_delay_s: The first retry waits up to this long; each next one doubles.
        max_retry_delay_s: Cap on one retry wait.
        sleep: Waits between retries (injectable for tests).
        clock: Current UTC time, for ``ingested_at`` and compaction cut-offs.
        rng: Jitter source for the retry waits.
        verify_extensions: Let DuckDB check the signatures of the bundled extension binaries
            (each connection hashes every extension binary, tens of MB, before loading it).
            ``False`` skips the check; only for a trusted, pinned install such as the test
            suite.
        recycle_after: Reopen the DuckDB connection after this many upserts (and after
            every compaction). A connection keeps native memory that grows with every commit
            (neither tracemalloc nor ``duckdb_memory()`` sees it) and is only returned when
            the connection closes (issue 7; ``bench_memory``, RSS).
        s3: How to reach an ``s3://`` data path (:class:`~pipeline.store.S3Options`);
            ``None`` takes everything from the standard ``AWS_*`` environment variables.
        application_name: How the writer's connections name themselves to a PostgreSQL
            catalog (the shard lease ends a lost writer's sessions by it, docs/scaling.md).
        before_commit: Called right before every commit (upserts and compaction); raising
            aborts the transaction. The shard lease checks here that this process still
            owns its shard (:class:`~pipeline.store.CatalogLease`).
    """

    def __init__(
        self,
        path: str | Path = "data",
        *,
        catalog: str | None = None,
        data_path: str | Path | None = None,
        max_retries: int = 5,
        retry_delay_s: float = 0.05,
        max_retry_delay_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
        verify_extensions: bool = True,
        recycle_after: int = 500,
        s3: S3Options | None = None,
        application_name: str | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if recycle_after < 1:
            raise ValueError(f"recycle_after must be >= 1 upsert, got {recycle_after}")
        self.root = Path(path)
        """The store folder."""
        self.catalog = parse_catalog(catalog, self.root)
        """Where the catalog lives."""
        self.stats = StoreStats()
        """Counters since open."""
        self._max_retries = max_retries
        self._retry_delay_s = retry_delay_s
        self._max_retry_delay_s = max_retry_delay_s
        self._sleep = sleep
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._data_path = data_path
        self._s3 = s3
        self._application_name = application_name
        self._before_commit = before_commit
        self._verify_extensions = verify_extensions
        self._recycle_after = recycle_after
        self._upserts_on_connection = 0
        # Newest stored time (ms) per (symbol, period), for recent()'s lower bound; a hint
        # only (see recent), filled by recent() and kept up to date by upserts.
        self._newest: dict[tuple[str, str], int] = {}
        # The upsert's ceiling on stored times, per connection (emptied when it is recycled).
        self._newest_stored = NewestStored()
        prepare_folder(self.root)  # StoreError naming the path when it cannot work
        self._con = self._open_writer()
        try:
            try:
                self._run(self._create_schema)
            except StoreError as exc:
                if not _INIT_RACE.search(str(exc)):
                    raise
                self._run(self._create_schema)  # another shard created it first: now it exists
            data = resolve_data_path(self.root, data_path)
            self._data_folder = self._run(lambda con: table_folder(con, data))
        except BaseException:
            self._con.close()
            raise

    def __repr__(self) -> str:
        return f"CandleStore(root={str(self.root)!r}, catalog={self.catalog!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            self._con.close()

    # ---------------------------------------------------------------- writes

    def upsert(self, frame: pl.DataFrame, deletions: pl.DataFrame | None = None) -> UpsertResult:
        """Write a batch of candles and deletions in one transaction.

        The batch is deduplicated first (per key the highest ``revision`` wins, then the
        last row). Rows whose key is stored with the same values are left alone, so writing
        the same batch twice changes nothing (and commits no new snapshot). Deletions are
        applied before the upserts, so a key both deleted and upserted ends up upserted.

        Args:
            frame: Exactly the columns of :data:`pipeline.candles.CANDLE_SCHEMA`; a null
                ``ingested_at`` is set to the store's clock, a missing or null ``sequence``
                to 0 (time-based candles, §4.2).
            deletions: Keys (``symbol``, ``period``, ``time``, ``sequence``) to delete, or
                ``None``; a missing or null ``sequence`` means 0 (time-based candles).

        Returns:
            The row counts.

        Raises:
            ValueError: The frame has missing/extra columns, wrong types or null keys.
            StoreBusyError: Another writer kept the catalog busy through every retry.
        """
        batch = self._prepare(frame)
        keys = prepare_keys(deletions) if deletions is not None else None

        def attempt(con: duckdb.DuckDBPyConnection) -> UpsertResult:
            return upsert_once(
                con,
                batch,
                keys,
                newest=self._newest_stored,
                data_folder=self._data_folder,
                before_commit=self._before_commit,
            )

        result, retries = self._run_counted(attempt)
        if self._newest and result.written:
            self._note_newest(batch)
        if retries:
            result = _with_retries(result, retries)
        self.stats.upserts += 1
        self.stats.rows_written += result.written
        self.stats.rows_deleted += result.deleted
        self._upserts_on_connection += 1
        if self._upserts_on_connection >= self._recycle_after:
            self._recycle()
        return result

    def compact(self, *, retain: timedelta = timedelta(hours=1)) -> CompactionResult:
        """Merge small files, expire old snapshots and delete files nobody can read any more.

        Safe while readers run: merged-away files are only scheduled for deletion, and
        deleted once they have been unreferenced for ``retain`` (longer than any query), so a
        reader on an older snapshot keeps its files. Orphan files a killed writer left behind
        are removed by the same rule.

        Args:
            retain: How long snapshots and unreferenced files are kept.
        """

        def cutoff() -> datetime:
            return self._clock() - retain

        def attempt(con: duckdb.DuckDBPyConnection) -> CompactionResult:
            before = _count_files(con)
            con.execute(f"CALL ducklake_flush_inlined_data('{LAKE}')")
            # Revisions leave delete files; rewrite every file that has any (they are rare
            # for candles) so the merge below can fold it in with its neighbours.
            con.execute(f"CALL ducklake_rewrite_data_files('{LAKE}', delete_threshold => 0.0)")
            con.execute(f"CALL ducklake_merge_adjacent_files('{LAKE}')")
            # Each cut-off is taken after the step before it, whose leftovers it then covers.
            # CALL, not count(*): under count(*) the cleanup reported files it did not delete.
            expired = _expire_snapshots(con, cutoff())
            removed = _cleanup_old_files(con, cutoff())
            removed += _called(con, "ducklake_delete_orphaned_files", cutoff())
            return CompactionResult(before, _count_files(con), expired, removed)

        if self._before_commit is not None:
            self._before_commit()  # a writer that lost its shard leaves the lake alone

        result = self._run(attempt)
        self.stats.compactions += 1
        logger.info("= compacted %s", result)
        # Compaction read every merged file: drop the connection's caches of them with it.
        self._recycle()
        return result

    # ----------------------------------------------------------------- reads

    def resume_point(self, series: str) -> int | None:
        """Time (ms UTC) of the newest stored candle of a series, or ``None``.

        Every stored candle is complete, so this is where a (re)subscription resumes.
        """
        symbol, period = _series_parts(series)

        def attempt(con: duckdb.DuckDBPyConnection) -> int | None:
            row = con.execute(
                f"SELECT epoch_ms(max(time)) FROM {TABLE} WHERE symbol = ? AND period = ?",
                [symbol, period],
            ).fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return self._run(attempt)

    def resume_points(self, series: Iterable[str] | None = None) -> dict[str, int]:
        """Resume points of many series in one query, keyed by normalised series key.

        Args:
            series: Restrict to these series keys; ``None`` for every stored series.
                Series with no stored candle are absent from the result.
        """
        wanted: dict[tuple[str, str], str] | None = None
        if series is not None:
            wanted = {_series_parts(key): CandleSymbol.parse(key).normalized for key in series}

        def attempt(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int]]:
            rows = con.execute(
                f"SELECT symbol, period, epoch_ms(max(time)) FROM {TABLE} GROUP BY ALL"
            ).fetchall()
            return [(str(s), str(p), int(t)) for s, p, t in rows]

        points: dict[str, int] = {}
        for symbol, period, last in self._run(attempt):
            if wanted is None:
                points[_series_key(symbol, period)] = last
            elif (symbol, period) in wanted:
                points[wanted[(symbol, period)]] = last
        return points

    def history(
        self,
        series: str,
        start: datetime | int | None = None,
        end: datetime | int | None = None,
    ) -> pl.DataFrame:
        """Stored candles of one series with ``start <= time < end``, oldest first (by time,
        then sequence).

        Args:
            series: Series key, e.g. ``AAPL{=5m}``.
            start: Inclusive lower bound (aware datetime or ms UTC); ``None`` for no bound.
            end: Exclusive upper bound; ``None`` for no bound.
        """
        symbol, period = _series_parts(series)
        query = f"SELECT * FROM {TABLE} WHERE symbol = ? AND period = ?"
        params: list[object] = [symbol, period]
        if start is not None:
            query += " AND time >= epoch_ms(?::BIGINT)::TIMESTAMPTZ"
            params.append(_to_ms(start, "start"))
        if end is not None:
            query += " AND time < epoch_ms(?::BIGINT)::TIMESTAMPTZ"
            params.append(_to_ms(end, "end"))
        return self._read(query + " ORDER BY time, sequence", params)

    def recent(self, series: str, n: int) -> pl.DataFrame:
        """The newest ``n`` stored candles of a series, oldest first.

        A series' candles sit in a few large files after compaction; ``ORDER BY time DESC
        LIMIT n`` alone reads all of them (525,600 rows for a symbol-year of 1m). So the
        query gets a lower time bound, ``n`` periods (times a margin for market closures)
        before the series' newest candle, which lets DuckDB skip every row group outside it
        by its min/max statistics. The bound is only a hint: with no upper bound, when at
        least ``n`` rows lie above it they are the newest ``n``; otherwise it is widened and,
        at last, dropped. The newest time comes from this store's upserts or one query.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        parsed = CandleSymbol.parse(series)
        key = (parsed.base, parsed.period_label)
        query = (
            f"SELECT * FROM (SELECT * FROM {TABLE} WHERE symbol = ? AND period = ?{{bound}} "
            "ORDER BY time DESC, sequence DESC LIMIT ?) ORDER BY time, sequence"
        )
        newest = self._newest.get(key)
        if newest is None and parsed.period_ms is not None and n > 0:
            newest = self.resume_point(series)
            if newest is not None:
                self._newest[key] = newest
        if newest is not None and parsed.period_ms is not None:
            span = n * parsed.period_ms * _RECENT_MARGIN
            for _ in range(_RECENT_WIDENINGS):
                frame = self._read(
                    query.format(bound=" AND time >= epoch_ms(?::BIGINT)::TIMESTAMPTZ"),
                    [*key, max(newest - span, _MIN_MS), n],
                )
                if frame.height >= n:
                    return frame
                span *= _RECENT_WIDEN_FACTOR
        return self._read(query.format(bound=""), [*key, n])

    def count(self) -> int:
        """Number of stored candles."""
        return self._run(lambda con: count(con, f"SELECT count(*) FROM {TABLE}"))

    # -------------------------------------------------------------- plumbing

    def _read(self, query: str, params: list[object]) -> pl.DataFrame:
        frame = self._run(lambda con: fetch(con, query, params))
        return to_frame_schema(frame)

    def _prepare(self, frame: pl.DataFrame) -> pl.DataFrame:
        return prepare_batch(frame, self._clock().astimezone(UTC))

    def _create_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create the candles table, or migrate one made before ``sequence`` existed.

        A concurrent migration by another shard fails this one with a commit conflict
        (retried by :meth:`_run`) or "already exists" (retried once by ``__init__``); the
        retry finds the column and does nothing.
        """
        if has_candles_table(con):
            migrate_sequence_column(con)
            return
        con.execute(f"USE {LAKE}")  # schema.sql names the table unqualified
        con.execute("BEGIN")
        try:
            con.execute(read_sql("schema.sql"))
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise
        finally:
            con.execute("USE memory")

    def _note_newest(self, batch: pl.DataFrame) -> None:
        """Raise the cached newest times of the series ``recent()`` has asked about."""
        newest = batch.group_by("symbol", "period").agg(pl.col("time").max().dt.epoch("ms"))
        for symbol, period, time_ms in newest.iter_rows():
            key = (symbol, period)
            if key in self._newest:
                self._newest[key] = max(self._newest[key], time_ms)

    def reconnect(self) -> None:
        """Reopen the connection and forget what it knew about stored times.

        For a writer that lost its shard lease and got it back: another process may have
        written its series meanwhile, so the upsert's ceilings (:class:`NewestStored`) are
        read again from the lake.

        Raises:
            StoreError: The lake cannot be opened now (the old connection is kept).
        """
        with self._lock:
            fresh = self._open_writer()
            self._con.close()
            self._con = fresh
            self._newest_stored = NewestStored()
            self._newest.clear()
            self._upserts_on_connection = 0
            self.stats.connections_recycled += 1

    def _recycle(self) -> None:
        """Replace the connection with a fresh one (see ``recycle_after``).

        The new connection is opened before the old one closes: if it cannot be opened (the
        catalog unreachable for a moment) the old one stays in use, and the next try comes
        after another ``recycle_after`` upserts (one warning each, not one per flush).
        """
        with self._lock:
            self._upserts_on_connection = 0
            try:
                fresh = self._open_writer()
            except StoreError as exc:
                logger.warning("! could not reopen the store connection, keeping it: %s", exc)
                return
            self._con.close()
            self._con = fresh
            self._newest_stored = NewestStored()
            self.stats.connections_recycled += 1

    def _open_writer(self) -> duckdb.DuckDBPyConnection:
        """Attach the lake, retrying when another process initialises a new catalog.

        Shards started together on an empty PostgreSQL catalog race to create DuckLake's
        metadata tables; the losers fail with "already exists" / "duplicate key" and, on a
        retry, find the catalog the winner made.
        """
        for retry in range(self._max_retries + 1):
            try:
                con = open_lake(
                    self.root,
                    self.catalog,
                    self._data_path,
                    read_only=False,
                    verify_extensions=self._verify_extensions,
                    s3=self._s3,
                    application_name=self._application_name,
                )
            except StoreError as exc:
                if retry == self._max_retries or not _INIT_RACE.search(str(exc)):
                    raise
                self.stats.retries += 1
                delay = min(self._max_retry_delay_s, self._retry_delay_s * 2**retry)
                logger.warning("! catalog initialised concurrently, retry %d", retry + 1)
                self._sleep(delay * (0.5 + self._rng.random() / 2))
            else:
                # The writer reads little back (its upsert lookups, resume points); DuckDB's
                # cache of file blocks only grew here, by every file a compaction merged
                # (duckdb_memory(); bench_memory, RSS).
                con.execute("SET enable_external_file_cache = false")
                # The writer's statements are small (a flush's lookups, one INSERT or file
                # registration, the commit; polars writes the data files): DuckDB's worker
                # threads only added scheduling, ~30 % of a 1,000-row live flush's CPU, and
                # competed with ingest's event loop for the same cores (benchmarks/README.md).
                con.execute("SET threads = 1")
                return con
        raise AssertionError("unreachable: the loop returns or raises")

    def _run(self, attempt: Callable[[duckdb.DuckDBPyConnection], _T]) -> _T:
        """Run ``attempt`` under the lock, retrying transient collisions (see module doc)."""
        return self._run_counted(attempt)[0]

    def _run_counted(self, attempt: Callable[[duckdb.DuckDBPyConnection], _T]) -> tuple[_T, int]:
        """Like :meth:`_run`, also returning how many retries it took."""
        with self._lock:
            retries = 0
            while True:
                try:
                    return attempt(self._con), retries
                except duckdb.Error as exc:
                    rollback(self._con)
                    message = redact(str(exc))
                    if not _TRANSIENT.search(message):
                        raise StoreError(message) from exc
                    if retries >= self._max_retries:
                        self.stats.busy_failures += 1
                        raise StoreBusyError(
                            f"the catalog stayed busy through {retries} retries "
                            f"(another writer?): {message}"
                        ) from exc
                    retries += 1
                    self.stats.retries += 1
                    delay = min(self._max_retry_delay_s, self._retry_delay_s * 2 ** (retries - 1))
                    logger.warning(
                        "! store busy, retry %d in %.3fs: %s",
                        retries, delay, message.splitlines()[0],
                    )  # fmt: skip
                    # Full jitter on the upper half: two colliding writers drift apart.
                    self._sleep(delay * (0.5 + self._rng.random() / 2))


# ------------------------------------------------------------------------ helpers


def _with_retries(result: UpsertResult, retries: int) -> UpsertResult:
    return UpsertResult(result.inserted, result.updated, result.unchanged, result.deleted, retries)


# DuckLake 1.5.5 turns ``older_than => T`` of expire_snapshots and cleanup_old_files into the
# filter ``snapshot_time < '<date>T<time>+00'`` (resp. ``schedule_start``). A SQLite catalog
# keeps those times as text, '<date> <time>+00', and compares them as text: on the cut-off's
# own day ' ' < 'T' holds for every value, so every snapshot and every file scheduled for
# deletion that day counted as older than the cut-off, whatever its time. Compaction retaining
# an hour expired snapshots seconds old and deleted files merged away seconds before, which a
# reader on an older snapshot still needed (issue 14). DuckLake's main branch casts in the
# filter (7ad5b0e); until the pin moves there, neither function gets that cut-off:
# tests/test_store_upkeep.py checks the bug is still there.


def _expire_snapshots(con: duckdb.DuckDBPyConnection, older_than: datetime) -> int:
    """Expire the snapshots older than ``older_than``, except the newest; return how many.

    They are chosen here, where ``ducklake_snapshots`` compares typed timestamps, and passed
    to ``ducklake_expire_snapshots`` by id (see above).
    """
    rows = con.execute(
        f"SELECT snapshot_id FROM ducklake_snapshots('{LAKE}') WHERE snapshot_time < ? "
        f"AND snapshot_id < (SELECT max(snapshot_id) FROM ducklake_snapshots('{LAKE}'))",
        [older_than],
    ).fetchall()
    if not rows:
        return 0
    ids = [int(row[0]) for row in rows]
    return fetch(
        con, f"CALL ducklake_expire_snapshots('{LAKE}', versions => ?::UBIGINT[])", [ids]
    ).height


def _cleanup_old_files(con: duckdb.DuckDBPyConnection, older_than: datetime) -> int:
    """Delete the files scheduled for deletion before ``older_than``; return how many.

    When every scheduled file is older (read typed from the catalog), ``cleanup_all`` deletes
    exactly them. Otherwise the cut-off handed to DuckLake is the end of the day before
    ``older_than``'s: on a date that is not the one of any younger value the text comparison
    is right, so this deletes only files due anyway; the rest wait for a later compaction.
    """
    scheduled = con.execute(
        f"SELECT schedule_start::TIMESTAMPTZ FROM {METADATA}.ducklake_files_scheduled_for_deletion"
    ).fetchall()
    if not scheduled:
        return 0
    if all(row[0] < older_than for row in scheduled):
        return fetch(
            con, f"CALL ducklake_cleanup_old_files('{LAKE}', cleanup_all => true)", []
        ).height
    day = older_than.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return _called(con, "ducklake_cleanup_old_files", day - timedelta(microseconds=1))


def _called(con: duckdb.DuckDBPyConnection, function: str, older_than: datetime) -> int:
    """CALL a DuckLake maintenance function with a cut-off; the number of rows it reports."""
    return fetch(con, f"CALL {function}('{LAKE}', older_than => ?)", [older_than]).height


def _count_files(con: duckdb.DuckDBPyConnection) -> int:
    return count(con, f"SELECT count(*) FROM ducklake_list_files('{LAKE}', 'candles')")


def _series_parts(series: str) -> tuple[str, str]:
    parsed = CandleSymbol.parse(series)
    return parsed.base, parsed.period_label


def _series_key(symbol: str, period: str) -> str:
    return CandleSymbol.parse(f"{symbol}{{={period}}}").normalized


def _to_ms(value: datetime | int, name: str) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware (UTC) or ms since the epoch")
        return (value - _EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, int):
        return value
    raise ValueError(f"{name} must be a datetime or ms since the epoch, got {value!r}")
