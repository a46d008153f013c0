"""CandleStore: completed candles in a DuckLake lake (SQLite catalog + Parquet files).

Layout under one folder (default ``data/``)::

    data/catalog.sqlite      DuckLake catalog (SQLite, WAL journal)
    data/data/main/candles/  Parquet files written by DuckLake

Why DuckLake (DESIGN.md "Store"): a plain ``.duckdb`` file admits one process and locks
readers out; DuckLake commits through its catalog, so readers in other processes (``candles
query``, notebooks, ``duckdb`` itself) see consistent snapshots while ingest writes, and a
write killed half-way leaves at most an orphan Parquet file that no snapshot references.

The catalog runs in SQLite's WAL journal mode: with the default rollback journal a reader that
holds the catalog open blocks the writer's commit for SQLite's busy timeout and then fails it
("database is locked"); in WAL mode readers and the writer never wait on each other. What can
still collide is two *writers* (a second ingest process, a compaction run from the CLI):
DuckLake reports "database is locked" or a transaction conflict, and :class:`CandleStore`
retries the whole transaction a bounded number of times with jittered exponential backoff,
counting every retry (:attr:`StoreStats.retries`).

Extensions load offline from the PyPI packages ``duckdb-extension-ducklake``,
``duckdb-extension-sqlite-scanner`` and ``duckdb-extension-postgres-scanner`` (DESIGN.md
"Store"); auto-install and auto-load are switched off so nothing is ever downloaded.

Threading: a :class:`CandleStore` owns one DuckDB connection. Call it from one thread at a
time (the service runs it in a worker thread); an internal lock serialises overlapping calls
rather than corrupting the connection. Every call blocks.
"""

from __future__ import annotations

import importlib
import logging
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar

import duckdb
import polars as pl

from pipeline.candles import CANDLE_COLUMNS, CANDLE_SCHEMA, KEY_COLUMNS
from pipeline.dxlink.symbols import CandleSymbol

__all__ = [
    "CATALOG_FILE",
    "DATA_DIR",
    "LAKE",
    "SQL_DIR",
    "TABLE",
    "CandleStore",
    "CatalogSpec",
    "CompactionResult",
    "StoreBusyError",
    "StoreError",
    "StoreStats",
    "UpsertResult",
    "connect",
    "parse_catalog",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

CATALOG_FILE = "catalog.sqlite"
"""Default SQLite catalog file name inside the store folder."""
DATA_DIR = "data"
"""Parquet data folder inside the store folder (DuckLake's DATA_PATH)."""
LAKE = "lake"
"""The name the lake is attached under; reader connections ``USE`` it (``FROM candles``)."""
TABLE = f"{LAKE}.main.candles"
"""The candles table, qualified: the writer's connection stays on its in-memory database,
where registering a frame costs ~1 ms instead of ~45 ms with the lake as default."""
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
"""Where ``schema.sql`` and the view files live."""
VIEW_FILES = ("latest.sql", "gaps.sql", "resample.sql")

_DUCKDB_VERSION = "v" + duckdb.__version__
_EXTENSIONS = {
    "ducklake": ("duckdb_extension_ducklake", "ducklake"),
    "sqlite": ("duckdb_extension_sqlite_scanner", "sqlite_scanner"),
    "postgres": ("duckdb_extension_postgres_scanner", "postgres_scanner"),
    # Only for a data path on object storage (s3://, gs://, https://): docs/scaling.md.
    "httpfs": ("duckdb_extension_httpfs", "httpfs"),
}
# SQLite busy / DuckLake commit conflicts: the only errors worth retrying. Anything else (a
# type error, a full disk, a missing table) fails at once.
_TRANSIENT = re.compile(r"database is (locked|busy)|conflict", re.IGNORECASE)
# Two processes creating DuckLake's metadata tables in one new catalog at once.
_INIT_RACE = re.compile(r"already exists|duplicate key|conflict", re.IGNORECASE)
_SECRET = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
# Compared to decide "unchanged"; revision is not, so a restart that counts revisions from 0
# again does not rewrite candles whose values are already stored.
_VALUE_COLUMNS = tuple(
    c for c in CANDLE_COLUMNS if c not in (*KEY_COLUMNS, "revision", "ingested_at")
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KEY_MATCH = "c.symbol = b.symbol AND c.period = b.period AND c.time = b.time"
_TIME_RANGE = "c.time BETWEEN epoch_ms(?::BIGINT)::TIMESTAMPTZ AND epoch_ms(?::BIGINT)::TIMESTAMPTZ"


class StoreError(Exception):
    """The store could not do what was asked; the message says what and why."""


class StoreBusyError(StoreError):
    """A write kept colliding with another writer after every allowed retry."""


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """Row counts of one :meth:`CandleStore.upsert`."""

    inserted: int
    """Keys that were not stored before."""
    updated: int
    """Keys whose stored values changed."""
    unchanged: int
    """Keys stored already with the same values: not rewritten."""
    deleted: int
    """Stored rows removed by the batch's deletions."""
    retries: int = 0
    """Transient collisions retried before the transaction committed."""

    @property
    def written(self) -> int:
        """Rows inserted or rewritten."""
        return self.inserted + self.updated


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


@dataclass(frozen=True)
class CatalogSpec:
    """Where the DuckLake catalog lives: a SQLite file or a PostgreSQL database."""

    kind: Literal["sqlite", "postgres"]
    target: str = field(repr=False)
    """The SQLite path, or the libpq connection string (may hold a password: never shown)."""

    def __repr__(self) -> str:
        return f"CatalogSpec(kind={self.kind!r}, target={_redact(self.target)!r})"

    @property
    def attach_target(self) -> str:
        """The ``ducklake:`` URI body for ATTACH."""
        return f"{self.kind}:{self.target}"


def parse_catalog(catalog: str | None, root: Path) -> CatalogSpec:
    """Turn a catalog URL into a :class:`CatalogSpec`.

    Args:
        catalog: ``None`` for ``<root>/catalog.sqlite``, ``sqlite:<path>``, or
            ``postgres:<libpq string>`` (e.g. ``postgres:dbname=lake host=db``).
        root: The store folder, used for the default.

    Raises:
        ValueError: The URL has another scheme or no target.
    """
    if catalog is None:
        return CatalogSpec("sqlite", str(root / CATALOG_FILE))
    scheme, _, target = catalog.partition(":")
    if scheme in ("sqlite", "postgres") and target.strip():
        return CatalogSpec("sqlite" if scheme == "sqlite" else "postgres", target.strip())
    raise ValueError(
        f"catalog {_redact(catalog)!r} is not understood: use 'sqlite:<path to catalog file>' "
        "or 'postgres:<libpq connection string>' (e.g. 'postgres:dbname=lake host=localhost')"
    )


def connect(
    path: str | Path = "data",
    *,
    catalog: str | None = None,
    data_path: str | Path | None = None,
    read_only: bool = True,
    verify_extensions: bool = True,
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB connection with the lake attached and the views created.

    This is the reader's door (``candles query``, notebooks): it takes no lock that could
    block the ingest writer, and each query sees the latest committed snapshot. The
    connection ``USE``s the lake, so ``SELECT * FROM candles`` works, and it has the
    temporary views ``latest_candles`` and ``candle_gaps`` and the table macro ``resample``.

    Args:
        path: The store folder.
        catalog: See :func:`parse_catalog`.
        data_path: See :class:`CandleStore`.
        read_only: Attach read-only (the default for readers).
        verify_extensions: See :class:`CandleStore`.

    Raises:
        StoreError: There is no lake at ``path`` yet, or the extensions cannot load.
    """
    root = Path(path)
    spec = parse_catalog(catalog, root)
    if read_only and spec.kind == "sqlite" and not Path(spec.target).exists():
        raise StoreError(
            f"no candle store at {root}: {spec.target} does not exist; run ingest first "
            "or pass the folder that holds catalog.sqlite"
        )
    con = _open(root, spec, data_path, read_only=read_only, verify_extensions=verify_extensions)
    try:
        if not _has_candles_table(con):
            raise StoreError(f"the lake at {root} has no candles table yet; run ingest first")
        con.execute(f"USE {LAKE}")
        _create_views(con)
    except BaseException:
        con.close()
        raise
    return con


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
            (about 0.6 s per extension per connection, spent hashing ~35 MB files). ``False``
            skips the check; only for a trusted, pinned install such as the test suite.
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
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
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
        self.root.mkdir(parents=True, exist_ok=True)
        self._con = self._open_writer(data_path, verify_extensions)
        try:
            try:
                self._run(self._create_schema)
            except StoreError as exc:
                if not _INIT_RACE.search(str(exc)):
                    raise
                self._run(self._create_schema)  # another shard created it first: now it exists
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
                ``ingested_at`` is set to the store's clock.
            deletions: Keys (``symbol``, ``period``, ``time``) to delete, or ``None``.

        Returns:
            The row counts.

        Raises:
            ValueError: The frame has missing/extra columns, wrong types or null keys.
            StoreBusyError: Another writer kept the catalog busy through every retry.
        """
        batch = self._prepare(frame)
        keys = _prepare_keys(deletions) if deletions is not None else None

        def attempt(con: duckdb.DuckDBPyConnection) -> UpsertResult:
            return _upsert_once(con, batch, keys)

        result, retries = self._run_counted(attempt)
        if retries:
            result = _with_retries(result, retries)
        self.stats.upserts += 1
        self.stats.rows_written += result.written
        self.stats.rows_deleted += result.deleted
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
            expired = _called(con, "ducklake_expire_snapshots", cutoff())
            removed = _called(con, "ducklake_cleanup_old_files", cutoff())
            removed += _called(con, "ducklake_delete_orphaned_files", cutoff())
            return CompactionResult(before, _count_files(con), expired, removed)

        result = self._run(attempt)
        self.stats.compactions += 1
        logger.info("= compacted %s", result)
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
        """Stored candles of one series with ``start <= time < end``, oldest first.

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
        return self._read(query + " ORDER BY time", params)

    def recent(self, series: str, n: int) -> pl.DataFrame:
        """The newest ``n`` stored candles of a series, oldest first."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        symbol, period = _series_parts(series)
        return self._read(
            f"SELECT * FROM (SELECT * FROM {TABLE} WHERE symbol = ? AND period = ? "
            "ORDER BY time DESC LIMIT ?) ORDER BY time",
            [symbol, period, n],
        )

    def count(self) -> int:
        """Number of stored candles."""
        return self._run(lambda con: _count(con, f"SELECT count(*) FROM {TABLE}"))

    # -------------------------------------------------------------- plumbing

    def _read(self, query: str, params: list[object]) -> pl.DataFrame:
        frame = self._run(lambda con: _fetch(con, query, params))
        return _to_frame_schema(frame)

    def _prepare(self, frame: pl.DataFrame) -> pl.DataFrame:
        batch = _validate(frame, CANDLE_COLUMNS, "candle batch")
        now = self._clock().astimezone(UTC)
        batch = batch.with_columns(
            pl.col("ingested_at").fill_null(pl.lit(now, dtype=CANDLE_SCHEMA["ingested_at"]))
        )
        # Newest revision wins; for equal revisions the later row (stable sort).
        return (
            batch.sort("revision", maintain_order=True)
            .unique(subset=list(KEY_COLUMNS), keep="last", maintain_order=True)
            .with_columns(
                pl.col("time").dt.cast_time_unit("us"),
                pl.col("ingested_at").dt.cast_time_unit("us"),
            )
        )

    def _create_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        if _has_candles_table(con):
            return
        con.execute(f"USE {LAKE}")  # schema.sql names the table unqualified
        con.execute("BEGIN")
        try:
            con.execute((SQL_DIR / "schema.sql").read_text(encoding="utf-8"))
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        finally:
            con.execute("USE memory")

    def _open_writer(
        self, data_path: str | Path | None, verify_extensions: bool
    ) -> duckdb.DuckDBPyConnection:
        """Attach the lake, retrying when another process initialises a new catalog.

        Shards started together on an empty PostgreSQL catalog race to create DuckLake's
        metadata tables; the losers fail with "already exists" / "duplicate key" and, on a
        retry, find the catalog the winner made.
        """
        for retry in range(self._max_retries + 1):
            try:
                return _open(
                    self.root,
                    self.catalog,
                    data_path,
                    read_only=False,
                    verify_extensions=verify_extensions,
                )
            except StoreError as exc:
                if retry == self._max_retries or not _INIT_RACE.search(str(exc)):
                    raise
                self.stats.retries += 1
                delay = min(self._max_retry_delay_s, self._retry_delay_s * 2**retry)
                logger.warning("! catalog initialised concurrently, retry %d", retry + 1)
                self._sleep(delay * (0.5 + self._rng.random() / 2))
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
                    _rollback(self._con)
                    message = _redact(str(exc))
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


# ------------------------------------------------------------------- upsert core


def _upsert_once(
    con: duckdb.DuckDBPyConnection, batch: pl.DataFrame, deletions: pl.DataFrame | None
) -> UpsertResult:
    """One attempt: deletions, classification, delete + insert, commit (or nothing to do)."""
    with _registered(con, incoming=batch, deletion_keys=deletions):
        con.execute("BEGIN")
        try:
            deleted = 0
            if deletions is not None and deletions.height:
                deleted = _count(
                    con,
                    f"DELETE FROM {TABLE} c USING deletion_keys b WHERE {_KEY_MATCH} "
                    f"AND {_TIME_RANGE}",
                    *_time_range(deletions),
                )
            # Fetch the stored versions of the batch's keys; the time range lets DuckLake skip
            # every file whose min/max statistics lie outside it.
            stored = _fetch(
                con,
                f"SELECT c.* EXCLUDE (ingested_at) FROM {TABLE} c SEMI JOIN incoming b "
                f"ON {_KEY_MATCH} WHERE {_TIME_RANGE}",
                _time_range(batch),
            )
            changed, replaced = _classify(batch, stored)
            if changed.height == 0 and deleted == 0:
                _rollback(con)
                return UpsertResult(0, 0, batch.height, 0)
            with _registered(con, changed_rows=changed, replaced_keys=replaced):
                if replaced.height:
                    con.execute(
                        f"DELETE FROM {TABLE} c USING replaced_keys b WHERE {_KEY_MATCH} "
                        f"AND {_TIME_RANGE}",
                        _time_range(replaced),
                    )
                if changed.height:
                    columns = ", ".join(CANDLE_COLUMNS)
                    con.execute(
                        f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM changed_rows"
                    )
                con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
    return UpsertResult(
        inserted=changed.height - replaced.height,
        updated=replaced.height,
        unchanged=batch.height - changed.height,
        deleted=deleted,
    )


def _classify(batch: pl.DataFrame, stored: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a batch against its stored versions: (rows to write, keys to replace).

    A row whose key is stored with equal values (NaN equal to NaN) is not written again.
    """
    if stored.height == 0:
        return batch, batch.select(KEY_COLUMNS).clear()
    stored = stored.with_columns(pl.col("time").dt.cast_time_unit("us")).unique(
        subset=list(KEY_COLUMNS), keep="last"
    )
    joined = batch.join(stored, on=list(KEY_COLUMNS), how="left", suffix="_stored")
    existed = pl.col("revision_stored").is_not_null()
    same = pl.all_horizontal(pl.col(c).eq_missing(pl.col(f"{c}_stored")) for c in _VALUE_COLUMNS)
    flagged = joined.with_columns(existed.alias("_existed"), (existed & same).alias("_same"))
    changed = flagged.filter(~pl.col("_same"))
    replaced = changed.filter(pl.col("_existed")).select(KEY_COLUMNS)
    return changed.select(CANDLE_COLUMNS), replaced


def _time_range(frame: pl.DataFrame) -> list[object]:
    """Parameters for :data:`_TIME_RANGE`: the frame's first and last ``time`` in ms."""
    span = frame.select(
        pl.col("time").min().dt.epoch("ms").alias("low"),
        pl.col("time").max().dt.epoch("ms").alias("high"),
    ).row(0)
    return list(span)


def _with_retries(result: UpsertResult, retries: int) -> UpsertResult:
    return UpsertResult(result.inserted, result.updated, result.unchanged, result.deleted, retries)


@contextmanager
def _registered(con: duckdb.DuckDBPyConnection, **frames: pl.DataFrame | None) -> Iterator[None]:
    names = [name for name, frame in frames.items() if frame is not None]
    for name in names:
        con.register(name, frames[name])
    try:
        yield
    finally:
        for name in names:
            con.unregister(name)


# ------------------------------------------------------------------ connections


def _open(
    root: Path,
    spec: CatalogSpec,
    data_path: str | Path | None,
    *,
    read_only: bool,
    verify_extensions: bool,
) -> duckdb.DuckDBPyConnection:
    """A connection with the extensions loaded, the lake attached and UTC times."""
    con = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_unsigned_extensions": not verify_extensions,
        }
    )
    try:
        con.execute("SET TimeZone = 'UTC'")
        # DuckDB refuses any progress-bar setting inside Jupyter without ipywidgets
        # (duckdb#7590); the bar is off there anyway, so that refusal is harmless.
        with suppress(duckdb.InvalidInputException):
            con.execute("SET enable_progress_bar = false")
        _load_extension(con, "ducklake")
        _load_extension(con, spec.kind)
        if spec.kind == "sqlite":
            _prepare_sqlite_catalog(Path(spec.target), read_only=read_only)
        if _is_url(data_path):
            _load_extension(con, "httpfs")
            data = str(data_path)
        elif data_path is not None:
            data = str(Path(data_path).resolve())
        else:
            data = str(root.resolve() / DATA_DIR)
        options = f"DATA_PATH {_quote(data.rstrip('/') + '/')}"
        if spec.kind == "sqlite":
            # The folder is self-contained: a copied or moved store keeps working.
            options += ", OVERRIDE_DATA_PATH true"
        if read_only:
            options += ", READ_ONLY"
        con.execute(f"ATTACH {_quote('ducklake:' + spec.attach_target)} AS {LAKE} ({options})")
    except duckdb.Error as exc:
        con.close()
        raise StoreError(f"cannot open the lake at {root}: {_redact(str(exc))}") from exc
    return con


def _is_url(data_path: str | Path | None) -> bool:
    """An object-storage location such as ``s3://bucket/lake/`` rather than a folder."""
    return isinstance(data_path, str) and "://" in data_path


def _load_extension(con: duckdb.DuckDBPyConnection, kind: str) -> None:
    package, name = _EXTENSIONS[kind]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise StoreError(
            f"the DuckDB extension package {package!r} is not installed; "
            f"install {package.replace('_', '-')}=={duckdb.__version__}"
        ) from exc
    assert module.__file__ is not None
    path = (
        Path(module.__file__).parent / "extensions" / _DUCKDB_VERSION / f"{name}.duckdb_extension"
    )
    if not path.is_file():
        raise StoreError(
            f"{path} is missing: {package} must be the build for duckdb {duckdb.__version__}"
        )
    con.execute(f"LOAD {_quote(str(path))}")


def _prepare_sqlite_catalog(path: Path, *, read_only: bool) -> None:
    """Create the catalog file if needed and put it in WAL mode (see the module docstring)."""
    if read_only:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        mode = db.execute("PRAGMA journal_mode").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            try:
                db.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as exc:
                # Another process holds the catalog; it stays in its current mode.
                logger.warning("! could not switch %s to WAL: %s", path, exc)
    db.close()


def _has_candles_table(con: duckdb.DuckDBPyConnection) -> bool:
    # Probing the table is ~100x faster than listing duckdb_tables(), which scans the catalog.
    try:
        con.execute(f"SELECT 1 FROM {LAKE}.main.candles LIMIT 0")
    except duckdb.CatalogException:
        return False
    return True


def _create_views(con: duckdb.DuckDBPyConnection) -> None:
    for name in VIEW_FILES:
        con.execute((SQL_DIR / name).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------ helpers


def _validate(frame: pl.DataFrame, columns: tuple[str, ...], what: str) -> pl.DataFrame:
    if not isinstance(frame, pl.DataFrame):
        raise ValueError(f"{what} must be a polars DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    extra = [c for c in frame.columns if c not in columns]
    if missing or extra:
        raise ValueError(
            f"{what} has missing columns {missing} and unexpected columns {extra}; "
            f"expected exactly {list(columns)}"
        )
    for column in ("time", "ingested_at"):
        if column in columns:
            dtype = frame.schema[column]
            if not isinstance(dtype, pl.Datetime) or dtype.time_zone != "UTC":
                raise ValueError(
                    f"{what}: column {column!r} is {dtype}, expected Datetime('ms', 'UTC')"
                )
    try:
        out = frame.select(columns).cast({c: CANDLE_SCHEMA[c] for c in columns})
    except pl.exceptions.PolarsError as exc:
        raise ValueError(f"{what} does not fit the candle schema: {exc}") from exc
    nulls = [c for c in KEY_COLUMNS if out[c].null_count()]
    if nulls:
        raise ValueError(f"{what} has null key values in {nulls}; keys must be set")
    return out


def _prepare_keys(deletions: pl.DataFrame) -> pl.DataFrame:
    keys = _validate(deletions, KEY_COLUMNS, "deletions")
    return keys.unique(maintain_order=True).with_columns(pl.col("time").dt.cast_time_unit("us"))


def _to_frame_schema(frame: pl.DataFrame) -> pl.DataFrame:
    """Query results in the manager's frame schema (times as Datetime('ms', 'UTC'))."""
    return frame.cast({c: CANDLE_SCHEMA[c] for c in frame.columns if c in CANDLE_SCHEMA})


def _fetch(con: duckdb.DuckDBPyConnection, query: str, params: list[object]) -> pl.DataFrame:
    """Run a query into a polars frame.

    Through Arrow from ``execute``: ``con.sql(query, params=...).pl()`` took 2.3 s where
    this takes 40 ms (100k candles, duckdb 1.5.5).
    """
    frame = pl.from_arrow(con.execute(query, params).to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


def _count(con: duckdb.DuckDBPyConnection, query: str, *params: object) -> int:
    row = con.execute(query, list(params)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _called(con: duckdb.DuckDBPyConnection, function: str, older_than: datetime) -> int:
    """CALL a DuckLake maintenance function with a cut-off; the number of rows it reports."""
    return _fetch(con, f"CALL {function}('{LAKE}', older_than => ?)", [older_than]).height


def _count_files(con: duckdb.DuckDBPyConnection) -> int:
    return _count(con, f"SELECT count(*) FROM ducklake_list_files('{LAKE}', 'candles')")


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    # No transaction open means DuckDB already rolled back the failed statement or commit.
    with suppress(duckdb.TransactionException):
        con.execute("ROLLBACK")


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


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _redact(text: str) -> str:
    """Hide passwords of libpq strings in messages (secrets never reach logs)."""
    return _SECRET.sub(r"\1***", text)
