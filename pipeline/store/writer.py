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

import functools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
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
from pipeline.store.retention import (
    PeriodPruned,
    RetentionResult,
    prune_period,
    retention_cutoff,
)
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
    "SMALL_FILE_BYTES",
    "TARGET_FILE_BYTES",
    "CandleStore",
    "CatalogStats",
    "CompactionResult",
    "StoreBusyError",
    "StoreMemory",
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


SMALL_FILE_BYTES = 4 << 20
"""Files under this size are merged by every compaction; larger ones once a day."""
TARGET_FILE_BYTES = 128 << 20
"""The largest file a merge makes (DuckLake's default is 512 MiB): bounds the daily rewrite.
A year of 200 one-minute series is a few dozen such files; a per-series read prunes them by
their time and symbol statistics."""


class StoreBusyError(StoreError):
    """A write kept colliding with another writer after every allowed retry."""


@dataclass(frozen=True, slots=True)
class CompactionResult:
    """What one :meth:`CandleStore.compact` did."""

    files_before: int
    files_after: int
    snapshots_expired: int
    files_removed: int


@dataclass(frozen=True, slots=True)
class StoreMemory:
    """DuckDB's own accounting of the writer's connection (``duckdb_memory()``).

    Taken by the store itself after every write, compaction and reopen, on the thread that
    already holds the connection, so reading :attr:`CandleStore.memory` from another thread
    (a soak, ``/metrics``) never waits for or interleaves with a write.
    """

    by_tag: Mapping[str, int] = field(default_factory=dict)
    """Bytes in memory per DuckDB memory tag (``BASE_TABLE``, ``METADATA``...), non-zero only."""
    temporary_bytes: int = 0
    """Bytes DuckDB spilled to temporary files."""

    @property
    def total(self) -> int:
        """Bytes in memory over every tag."""
        return sum(self.by_tag.values())


@dataclass(frozen=True, slots=True)
class CatalogStats:
    """How big the lake's catalog and data are (:meth:`CandleStore.catalog_stats`)."""

    snapshots: int
    """Snapshots the catalog keeps (each commit makes one; expiry removes old ones)."""
    data_files: int
    """Parquet data files of the candles table in the current snapshot."""
    data_bytes: int
    """Their total size."""
    delete_files: int
    """Delete files (revisions and deletions not compacted yet)."""
    inlined_tables: int
    """DuckLake's inlined-data tables in the catalog (one per schema version that took rows)."""
    awaiting_deletion: int
    """Files merged away or expired, waiting for compaction to delete them."""
    catalog_bytes: int | None
    """Size of a SQLite catalog file; ``None`` for a PostgreSQL catalog."""
    catalog_wal_bytes: int | None = None
    """Size of a SQLite catalog's write-ahead log (reused after each checkpoint, so it stays
    near SQLite's checkpoint size, 1,000 pages); ``None`` for a PostgreSQL catalog."""


@dataclass(slots=True)
class StoreStats:
    """Counters since the store was opened."""

    upserts: int = 0
    rows_written: int = 0
    rows_deleted: int = 0
    rows_pruned: int = 0
    """Candles removed by retention (:meth:`CandleStore.prune`)."""
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
        self._memory = StoreMemory()
        self._full_merge_day: date | None = None  # the UTC day of the last full merge
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
        self._note_memory()

    def __repr__(self) -> str:
        return f"CandleStore(root={str(self.root)!r}, catalog={self.catalog!r})"

    @staticmethod
    def describe_catalog(path: str | Path, catalog: str | None) -> str:
        """``sqlite catalog <file>`` or ``postgres catalog <conninfo>``, password redacted."""
        spec = parse_catalog(catalog, Path(path))
        return f"{spec.kind} catalog {redact(spec.target)}"

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

    @property
    def memory(self) -> StoreMemory:
        """DuckDB's memory accounting of the writer's connection after its last operation
        (see :class:`StoreMemory`); safe to read from any thread."""
        return self._memory

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
        self._note_memory()
        return result

    def compact(
        self, *, retain: timedelta = timedelta(hours=1), full: bool | None = None
    ) -> CompactionResult:
        """Merge small files, expire old snapshots and delete files nobody can read any more.

        Merging is tiered so that the disk work stays bounded however long the store runs:
        DuckLake merges adjacent files into one until it reaches the target size, so an
        hourly merge of everything rewrote the whole growing file every hour, and every
        rewritten copy waited for deletion (below) until the next UTC day. A compaction
        merges only files under :data:`SMALL_FILE_BYTES` (the flushes since the last one);
        the first compaction of each UTC day (by the store's clock) merges everything, up to
        :data:`TARGET_FILE_BYTES` per file.

        Safe while readers run: merged-away files are only scheduled for deletion, and
        deleted once they have been unreferenced for ``retain`` (longer than any query), so a
        reader on an older snapshot keeps its files. Orphan files a killed writer left behind
        are removed by the same rule. Snapshots expire exactly ``retain`` after they were
        taken. Files scheduled for deletion go as soon as every scheduled file is older than
        ``retain``, else at the first compaction on a UTC day after the one in which they
        became older than ``retain`` (see :func:`_expire_snapshots` and
        :func:`_cleanup_old_files` for why): merged-away files stay at most a day longer.

        Args:
            retain: How long snapshots and unreferenced files are kept.
            full: Merge every file (``True``) or only small ones (``False``); ``None`` merges
                everything on the first compaction of a UTC day.
        """
        today = self._clock().astimezone(UTC).date()
        merge_all = full if full is not None else self._full_merge_day != today

        def cutoff() -> datetime:
            return self._clock() - retain

        def attempt(con: duckdb.DuckDBPyConnection) -> CompactionResult:
            before = _count_files(con)
            con.execute(f"CALL ducklake_flush_inlined_data('{LAKE}')")
            # Revisions leave delete files; rewrite every file that has any (they are rare
            # for candles) so the merge below can fold it in with its neighbours.
            con.execute(f"CALL ducklake_rewrite_data_files('{LAKE}', delete_threshold => 0.0)")
            limit = "" if merge_all else f", max_file_size => {SMALL_FILE_BYTES}"
            con.execute(f"CALL ducklake_merge_adjacent_files('{LAKE}'{limit})")
            # Each cut-off is taken after the step before it, whose leftovers it then covers.
            # CALL, not count(*): under count(*) the cleanup reported files it did not delete.
            expired = _expire_snapshots(con, cutoff())
            removed = _cleanup_old_files(con, cutoff())
            removed += _called(con, "ducklake_delete_orphaned_files", cutoff())
            return CompactionResult(before, _count_files(con), expired, removed)

        if self._before_commit is not None:
            self._before_commit()  # a writer that lost its shard leaves the lake alone

        result = self._run(attempt)
        if merge_all:
            self._full_merge_day = today
        self.stats.compactions += 1
        logger.info("= compacted %s", result)
        # Compaction read every merged file: drop the connection's caches of them with it.
        self._recycle()
        self._note_memory()
        return result

    def prune(
        self, retention: Mapping[str, timedelta], *, now: datetime | None = None
    ) -> RetentionResult:
        """Remove candles older than their period's retention (see :mod:`.retention`).

        One transaction per period; each series' newest candle stays. Call :meth:`compact`
        afterwards: deleted rows leave delete files until it rewrites their data files.

        Args:
            retention: How long to keep candles, by period label without attributes (``1m``
                also covers ``1m,tho=true``); periods not listed are kept.
            now: The time the retention counts back from (the stream's clock); default the
                store's clock.

        Raises:
            ValueError: A key is not a period label, or a retention is not positive.
            StoreBusyError: Another writer kept the catalog busy through every retry.
        """
        when = (now or self._clock()).astimezone(UTC)
        pruned = []
        for period, keep in retention.items():
            label = CandleSymbol.parse(f"X{{={period}}}").period_label
            if label != period or "," in label:
                raise ValueError(
                    f"retention key {period!r} is not a period label without attributes "
                    f"(did you mean {label.split(',', 1)[0]!r}?)"
                )
            cutoff = retention_cutoff(when, keep)
            deleted = self._run(functools.partial(prune_period, period=period, cutoff=cutoff))
            self.stats.rows_pruned += deleted
            pruned.append(PeriodPruned(period, cutoff, deleted))
        result = RetentionResult(tuple(pruned))
        if result.deleted:
            logger.info(
                "= retention removed %s",
                ", ".join(f"{p.deleted} {p.period} candles before {p.cutoff:%Y-%m-%d %H:%M}"
                          for p in result.periods if p.deleted),
            )  # fmt: skip
        self._note_memory()
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

    def catalog_stats(self) -> CatalogStats:
        """Snapshots, data and delete files, inlined-data tables and the catalog's size now."""

        def attempt(con: duckdb.DuckDBPyConnection) -> CatalogStats:
            snapshots = count(con, f"SELECT count(*) FROM ducklake_snapshots('{LAKE}')")
            files = con.execute(
                "SELECT count(*), coalesce(sum(data_file_size_bytes), 0), count(delete_file) "
                f"FROM ducklake_list_files('{LAKE}', 'candles')"
            ).fetchone()
            assert files is not None
            inlined = count(con, f"SELECT count(*) FROM {METADATA}.ducklake_inlined_data_tables")
            waiting = count(
                con, f"SELECT count(*) FROM {METADATA}.ducklake_files_scheduled_for_deletion"
            )
            return CatalogStats(
                snapshots=snapshots,
                data_files=int(files[0]),
                data_bytes=int(files[1]),
                delete_files=int(files[2]),
                inlined_tables=inlined,
                awaiting_deletion=waiting,
                catalog_bytes=self._catalog_bytes(""),
                catalog_wal_bytes=self._catalog_bytes("-wal"),
            )

        return self._run(attempt)

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

    def _catalog_bytes(self, suffix: str) -> int | None:
        """The size of the SQLite catalog's file (``""``) or its WAL (``"-wal"``); ``None``
        for PostgreSQL."""
        if self.catalog.kind != "sqlite":
            return None
        path = Path(self.catalog.target + suffix)
        return path.stat().st_size if path.exists() else 0

    def _note_memory(self) -> None:
        """Take the :attr:`memory` snapshot (on the thread that uses the connection)."""
        with self._lock:
            try:
                rows = self._con.execute(
                    "SELECT tag, memory_usage_bytes, temporary_storage_bytes FROM duckdb_memory()"
                ).fetchall()
            except duckdb.Error as exc:  # an observation only: never fail a write for it
                logger.debug("duckdb_memory() failed: %s", exc)
                return
        self._memory = StoreMemory(
            by_tag={str(tag): int(size) for tag, size, _ in rows if size},
            temporary_bytes=sum(int(spilled) for _, _, spilled in rows),
        )

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
                # (duckdb_memory(); bench_memory, RSS). open_lake turns it off for a local
                # data path already; this covers object storage, where readers keep it.
                con.execute("SET enable_external_file_cache = false")
                # The writer's statements are small (a flush's lookups, one INSERT or file
                # registration, the commit; polars writes the data files): DuckDB's worker
                # threads only added scheduling, ~30 % of a 1,000-row live flush's CPU, and
                # competed with ingest's event loop for the same cores (benchmarks/README.md).
                con.execute("SET threads = 1")
                # The largest file a merge makes: what the daily merge rewrites at most.
                con.execute(f"SET ducklake_target_file_size = '{TARGET_FILE_BYTES}B'")
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
