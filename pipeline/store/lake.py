"""The DuckLake lake: extensions, catalog location, attaching it, and the reader's door.

Layout under one folder (default ``data/``)::

    data/catalog.sqlite      DuckLake catalog (SQLite, WAL journal)
    data/data/main/candles/  Parquet files written by DuckLake

The catalog runs in SQLite's WAL journal mode: with the default rollback journal a reader that
holds the catalog open blocks the writer's commit for SQLite's busy timeout and then fails it
("database is locked"); in WAL mode readers and the writer never wait on each other.

Extensions load offline from the PyPI packages ``duckdb-extension-ducklake``,
``duckdb-extension-sqlite-scanner``, ``duckdb-extension-postgres-scanner`` and, for a data path
on object storage, ``duckdb-extension-httpfs`` (DESIGN.md "Store"); auto-install and auto-load
are switched off so nothing is ever downloaded.

A data path on object storage (``s3://bucket/prefix/``) gets a temporary DuckDB secret made
from the environment, scoped to that path (:mod:`pipeline.store.object_store`); the data files
DuckLake writes there are its own (``INSERT``), :func:`table_folder` is ``None``.

Every connection caches Parquet footers (``parquet_metadata_cache``): DuckLake never changes a
data file after writing it (new data gets a new file name), so a cached footer cannot go
stale, and a per-series read then skips re-parsing the footer of a large compacted file on
every query (``bench_store``, last 1,000 candles).

DuckDB's external file cache, which keeps the blocks of every file a connection reads for as
long as the connection lives (also after compaction deleted the file), is off for a local
data path (the writer turns it off on object storage too, as it reads little back): the
operating system's page cache holds those blocks already, and a reader holding one
connection while ingest flushed kept ~100 KB per flushed file of 100 series in it
(benchmarks/README.md, "Why long-lived DuckDB connections grew"). Object storage keeps it:
there it saves a download.
"""

from __future__ import annotations

import importlib
import importlib.resources
import logging
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import polars as pl

from pipeline.store.object_store import S3Options, is_object_store, parse_s3_url, scrub

__all__ = [
    "CATALOG_FILE",
    "DATA_DIR",
    "LAKE",
    "SQL_FILES",
    "TABLE",
    "VIEW_FILES",
    "CatalogSpec",
    "FrameScan",
    "StoreError",
    "add_data_file",
    "connect",
    "create_views",
    "has_candles_table",
    "has_sequence_column",
    "migrate_sequence_column",
    "open_lake",
    "parse_catalog",
    "quote",
    "read_sql",
    "redact",
    "registered",
    "resolve_data_path",
    "rollback",
    "table_folder",
    "with_application_name",
    "write_data_file",
]

logger = logging.getLogger(__name__)

CATALOG_FILE = "catalog.sqlite"
"""Default SQLite catalog file name inside the store folder."""
DATA_DIR = "data"
"""Parquet data folder inside the store folder (DuckLake's DATA_PATH)."""
LAKE = "lake"
"""The name the lake is attached under; reader connections ``USE`` it (``FROM candles``)."""
TABLE = f"{LAKE}.main.candles"
"""The candles table, qualified: the writer's connection stays on its in-memory database,
where registering a frame does not go through the lake's catalog (``bench_store``)."""
SQL_FILES = importlib.resources.files("pipeline") / "sql"
"""``schema.sql`` and the view files: the repository's top-level ``sql/`` folder, which the
package links to (``pipeline/sql``) and the wheel ships inside the package."""
VIEW_FILES = ("latest.sql", "gaps.sql", "resample.sql")
"""The reader's views and macros, created on every :func:`connect`."""

_DUCKDB_VERSION = "v" + duckdb.__version__
_EXTENSIONS = {
    "ducklake": ("duckdb_extension_ducklake", "ducklake"),
    "sqlite": ("duckdb_extension_sqlite_scanner", "sqlite_scanner"),
    "postgres": ("duckdb_extension_postgres_scanner", "postgres_scanner"),
    # Only for a data path on object storage (s3://, gs://, https://): docs/scaling.md.
    "httpfs": ("duckdb_extension_httpfs", "httpfs"),
}
_SECRET = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
_S3_SECRET = "candles_lake_s3"
_USERINFO = re.compile(r"://[^/@]*@")  # credentials pasted into a URL are never shown


class StoreError(Exception):
    """The store could not do what was asked; the message says what and why."""


@dataclass(frozen=True)
class CatalogSpec:
    """Where the DuckLake catalog lives: a SQLite file or a PostgreSQL database."""

    kind: Literal["sqlite", "postgres"]
    target: str = field(repr=False)
    """The SQLite path, or the libpq connection string (may hold a password: never shown)."""

    def __repr__(self) -> str:
        return f"CatalogSpec(kind={self.kind!r}, target={redact(self.target)!r})"

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
        f"catalog {redact(catalog)!r} is not understood: use 'sqlite:<path to catalog file>' "
        "or 'postgres:<libpq connection string>' (e.g. 'postgres:dbname=lake host=localhost')"
    )


def connect(
    path: str | Path = "data",
    *,
    catalog: str | None = None,
    data_path: str | Path | None = None,
    read_only: bool = True,
    verify_extensions: bool = True,
    s3: S3Options | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB connection with the lake attached and the views created.

    This is the reader's door (``candles query``, notebooks): it takes no lock that could
    block the ingest writer, and each query sees the latest committed snapshot. The
    connection ``USE``s the lake, so ``SELECT * FROM candles`` works, and it has the
    temporary views ``latest_candles`` and ``candle_gaps`` and the table macro ``resample``.

    A store written before the ``sequence`` column existed is migrated by a writable
    connection; a read-only one cannot, and sees ``candles`` through a temporary view that
    adds ``sequence`` = 0 (every candle of such a store is keyed by time alone).

    Args:
        path: The store folder.
        catalog: See :func:`parse_catalog`.
        data_path: See :class:`pipeline.store.CandleStore`.
        read_only: Attach read-only (the default for readers).
        verify_extensions: See :class:`pipeline.store.CandleStore`.
        s3: How to reach an ``s3://`` data path (:class:`S3Options`); ``None`` takes
            everything from the standard ``AWS_*`` environment variables.

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
    con = open_lake(
        root, spec, data_path, read_only=read_only, verify_extensions=verify_extensions, s3=s3
    )
    try:
        if not has_candles_table(con):
            raise StoreError(f"the lake at {root} has no candles table yet; run ingest first")
        if not read_only:
            try:
                migrate_sequence_column(con)
            except duckdb.Error as exc:
                if not has_sequence_column(con):  # else another process migrated it first
                    raise StoreError(
                        f"cannot add the sequence column to the lake at {root}: {redact(str(exc))}"
                    ) from exc
        con.execute(f"USE {LAKE}")
        if not has_sequence_column(con):
            # Unqualified `candles` resolves to the temp view first, so queries and the
            # views below see one shape of the table, migrated or not.
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW candles AS "
                f"SELECT *, CAST(0 AS INTEGER) AS sequence FROM {TABLE}"
            )
        create_views(con)
    except BaseException:
        con.close()
        raise
    return con


def open_lake(
    root: Path,
    spec: CatalogSpec,
    data_path: str | Path | None,
    *,
    read_only: bool,
    verify_extensions: bool,
    s3: S3Options | None = None,
    application_name: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """A connection with the extensions loaded, the lake attached and UTC times.

    Args:
        root: The store folder (the default data path is ``<root>/data``).
        spec: Where the catalog lives.
        data_path: A folder or object-storage URL for the Parquet files, or ``None``.
        read_only: Attach read-only.
        verify_extensions: Check the extension binaries' signatures.
        s3: How to reach an ``s3://`` data path; ``None``: the ``AWS_*`` environment.
        application_name: How the connection names itself to a PostgreSQL catalog
            (``pg_stat_activity``); the shard lease finds a lost writer's sessions by it.

    Raises:
        StoreError: The extensions or the lake cannot be opened (passwords and keys
            redacted).
    """
    con = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_unsigned_extensions": not verify_extensions,
        }
    )
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET parquet_metadata_cache = true")  # see the module docstring
        if not _is_url(data_path):
            con.execute("SET enable_external_file_cache = false")  # see the module docstring
        # DuckDB refuses any progress-bar setting inside Jupyter without ipywidgets
        # (duckdb#7590); the bar is off there anyway, so that refusal is harmless.
        with suppress(duckdb.InvalidInputException):
            con.execute("SET enable_progress_bar = false")
        _load_extension(con, "ducklake")
        _load_extension(con, spec.kind)
        if spec.kind == "sqlite":
            _prepare_sqlite_catalog(Path(spec.target), read_only=read_only)
        data = resolve_data_path(root, data_path)
        if _is_url(data_path):
            _load_extension(con, "httpfs")
            _create_s3_secret(con, data, s3 or S3Options())
        options = f"DATA_PATH {quote(data)}"
        if spec.kind == "sqlite":
            # The folder is self-contained: a copied or moved store keeps working.
            options += ", OVERRIDE_DATA_PATH true"
        if read_only:
            options += ", READ_ONLY"
        target = spec.attach_target
        if application_name is not None and spec.kind == "postgres":
            target = f"postgres:{with_application_name(spec.target, application_name)}"
        con.execute(f"ATTACH {quote('ducklake:' + target)} AS {LAKE} ({options})")
    except (duckdb.Error, ValueError) as exc:
        con.close()
        where = _USERINFO.sub("://", str(data_path)) if _is_url(data_path) else root
        raise StoreError(f"cannot open the lake at {where}: {redact(str(exc))}") from exc
    return con


def with_application_name(conninfo: str, name: str) -> str:
    """A libpq connection string (``key=value`` or ``postgresql://`` URI) that names itself
    ``name`` in ``pg_stat_activity``; a later setting wins over one already there."""
    if conninfo.startswith(("postgres://", "postgresql://")):
        return f"{conninfo}{'&' if '?' in conninfo else '?'}application_name={name}"
    return f"{conninfo} application_name={name}"


def _create_s3_secret(con: duckdb.DuckDBPyConnection, data: str, s3: S3Options) -> None:
    """A temporary S3 secret scoped to the data path (see :mod:`.object_store`).

    Raises:
        ValueError: The data path or the endpoint is malformed (the message says how).
    """
    parse_s3_url(data)
    access = s3.resolve()
    if not access.has_keys:
        logger.warning(
            "! no S3 credentials in %s / %s: the bucket is read unsigned, which only works for "
            "a public bucket", s3.access_key_id_env, s3.secret_access_key_env,
        )  # fmt: skip
    con.execute(access.secret_sql(_S3_SECRET, data))


def resolve_data_path(root: Path, data_path: str | Path | None) -> str:
    """The lake's DATA_PATH as attached: an absolute folder or a URL, ending in ``/``.

    Args:
        root: The store folder (the default data path is ``<root>/data``).
        data_path: A folder or object-storage URL, or ``None`` for the default.
    """
    if _is_url(data_path):
        data = str(data_path)
    elif data_path is not None:
        data = str(Path(data_path).resolve())
    else:
        data = str(root.resolve() / DATA_DIR)
    return data.rstrip("/") + "/"


def has_candles_table(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the attached lake has the candles table yet."""
    # Probing the table reads one table's entry; duckdb_tables() would scan the catalog.
    try:
        con.execute(f"SELECT 1 FROM {TABLE} LIMIT 0")
    except duckdb.CatalogException:
        return False
    return True


def has_sequence_column(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the candles table has the ``sequence`` key column (stores made before it lack it)."""
    try:
        con.execute(f"SELECT sequence FROM {TABLE} LIMIT 0")
    except duckdb.BinderException:
        return False
    return True


def migrate_sequence_column(con: duckdb.DuckDBPyConnection) -> bool:
    """Add the ``sequence`` column to a store made before it existed; a no-op after that.

    Rows stored before read ``sequence`` = 0, which is what they were: the old key was
    (symbol, period, time), so a tick candle sharing a millisecond had overwritten the other
    (issue 7). Several processes may open one old store at once; a loser of the race sees
    the column on its retry (``IF NOT EXISTS``), or fails with a commit conflict or
    "already exists", which :class:`pipeline.store.CandleStore` retries.

    Returns:
        Whether this call added the column.

    Raises:
        duckdb.Error: The ALTER failed (for instance a concurrent migration's conflict).
    """
    if has_sequence_column(con):
        return False
    con.execute("BEGIN")
    try:
        # Again inside the transaction: another process may have committed the column since
        # the check above, and re-running SET SORTED BY would commit a second schema change.
        if has_sequence_column(con):
            rollback(con)
            return False
        con.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS sequence INTEGER DEFAULT 0")
        con.execute(f"ALTER TABLE {TABLE} SET SORTED BY (symbol, period, time, sequence)")
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise
    logger.info("= added the sequence column to %s (issue 7)", TABLE)
    return True


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction, if there is one."""
    # No transaction open means DuckDB already rolled back the failed statement or commit.
    with suppress(duckdb.TransactionException):
        con.execute("ROLLBACK")


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """Create the reader's temporary views and macros (the connection ``USE``s the lake)."""
    for name in VIEW_FILES:
        con.execute(read_sql(name))


def read_sql(name: str) -> str:
    """The text of one of the shipped SQL files (:data:`SQL_FILES`), e.g. ``schema.sql``."""
    return (SQL_FILES / name).read_text(encoding="utf-8")


def quote(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def redact(text: str) -> str:
    """Hide passwords of libpq strings and object-storage keys in messages (secrets never
    reach logs)."""
    return scrub(_SECRET.sub(r"\1***", text))


def _is_url(data_path: str | Path | None) -> bool:
    """An object-storage location such as ``s3://bucket/lake/`` rather than a folder."""
    return is_object_store(data_path)


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
    con.execute(f"LOAD {quote(str(path))}")


def _prepare_sqlite_catalog(path: Path, *, read_only: bool) -> None:
    """Create the catalog file if needed and put it in WAL mode (see the module docstring).

    Never with this process's own SQLite once the catalog exists: Python's ``sqlite3`` is a
    second copy of SQLite beside the one inside DuckDB's sqlite_scanner, and two copies in one
    process break SQLite's locking (POSIX locks are per process, and closing one copy's file
    descriptor drops the other's locks: sqlite.org/howtocorrupt.html, 2.2). Opening the
    catalog that way while a DuckDB connection of this process used it (the writer reopens
    every ``recycle_after`` upserts and after each compaction; readers may be open) took the
    catalog for unused: it truncated the shared-memory WAL index another connection had mapped
    (a SIGBUS on touching it), checkpointed and deleted the WAL, and left readers failing with
    "database disk image is malformed" or "disk I/O error" (issue 14). So: a catalog already
    in WAL mode (read from the file header, no SQLite involved) is left alone; a new one is
    created here, where no connection can have it open yet; an existing one in another
    journal mode is switched in a child process, whose locks SQLite sees.
    """
    if read_only or _in_wal_mode(path):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            db = sqlite3.connect(path)
            try:
                _switch_to_wal(db, path)
            finally:
                db.close()
            return
    except (OSError, sqlite3.Error) as exc:
        # One line naming the file, not sqlite3's traceback (issue 17).
        raise StoreError(f"cannot open the catalog {path}: {exc}") from None
    result = subprocess.run(
        [sys.executable, "-c", _SWITCH_TO_WAL, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    reason = (result.stderr.strip().splitlines() or ["no reason given"])[-1][:300]
    if result.returncode == _CANNOT_OPEN:
        raise StoreError(f"cannot open the catalog {path}: {reason}")
    if result.returncode != 0:
        # Another process holds the catalog; it stays in its current mode.
        logger.warning("! could not switch %s to WAL: %s", path, reason)


def _in_wal_mode(path: Path) -> bool:
    """Whether the catalog's header says WAL (file format write and read versions 2: bytes
    18 and 19 of the SQLite header, sqlite.org/fileformat2.html)."""
    try:
        with path.open("rb") as file:
            header = file.read(20)
    except OSError:
        return False
    return header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"


def _switch_to_wal(db: sqlite3.Connection, path: Path) -> None:
    mode = db.execute("PRAGMA journal_mode").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        try:
            db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            # Another process holds the catalog; it stays in its current mode.
            logger.warning("! could not switch %s to WAL: %s", path, exc)


_CANNOT_OPEN = 3
_SWITCH_TO_WAL = """
import sqlite3, sys
try:
    db = sqlite3.connect(sys.argv[1])
    db.execute("PRAGMA journal_mode").fetchone()
except (OSError, sqlite3.Error) as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
db.execute("PRAGMA journal_mode = WAL")
db.close()
"""


# ------------------------------------------------------------- data files we write ourselves

_METADATA = f"__ducklake_metadata_{LAKE}"  # where DuckLake attaches the lake's catalog
_DATA_FILE_ROW_GROUP = 122_880  # DuckDB's own row group size, so pruning works as on its files
_COPIED = "candles_data_file"  # the frame's name while COPY writes it


def table_folder(con: duckdb.DuckDBPyConnection, data_path: str) -> Path | None:
    """The folder of the candles table's Parquet files, or ``None`` on object storage.

    DuckLake keeps each schema's and table's folder in its catalog, relative to the data path
    (or absolute); a file the writer puts there is recorded with a relative path, so a moved
    store (``OVERRIDE_DATA_PATH``) still finds it.

    Args:
        con: A connection with the lake attached and the candles table created.
        data_path: :func:`resolve_data_path` of the lake.
    """
    if _is_url(data_path):
        return None
    row = con.execute(
        f"SELECT s.path, s.path_is_relative, t.path, t.path_is_relative "
        f"FROM {_METADATA}.ducklake_table t JOIN {_METADATA}.ducklake_schema s USING (schema_id) "
        "WHERE s.schema_name = 'main' AND t.table_name = 'candles' "
        "AND s.end_snapshot IS NULL AND t.end_snapshot IS NULL"
    ).fetchone()
    if row is None:
        raise StoreError("the lake has no candles table yet")
    schema_path, schema_relative, table_path, table_relative = row
    schema_folder = Path(data_path) / schema_path if schema_relative else Path(schema_path)
    return schema_folder / table_path if table_relative else Path(table_path)


class FrameScan:
    """A polars frame as DuckDB scans it without pyarrow: through the Arrow C stream interface.

    DuckDB 1.5 converts a polars ``DataFrame`` it scans through pyarrow, and the first scan of
    any Python object imports pyarrow (and pandas) to recognise it. An object offering only
    ``__arrow_c_stream__`` it reads straight from polars' own export, at the same speed, with
    neither imported: every frame the store hands DuckDB is wrapped in this, and the ingest
    process keeps pyarrow out (:mod:`pipeline.ingest.tuning`; benchmarks/README.md, "Memory
    at start").
    """

    __slots__ = ("frame",)

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        return self.frame.__arrow_c_stream__(requested_schema)


@contextmanager
def registered(con: duckdb.DuckDBPyConnection, **frames: pl.DataFrame | None) -> Iterator[None]:
    """The frames, by name, as tables of ``con`` for a while (scanned as :class:`FrameScan`);
    ``None`` registers nothing."""
    present = {name: frame for name, frame in frames.items() if frame is not None}
    for name, frame in present.items():
        con.register(name, FrameScan(frame))
    try:
        yield
    finally:
        for name in present:
            con.unregister(name)


def write_data_file(con: duckdb.DuckDBPyConnection, folder: Path, frame: pl.DataFrame) -> Path:
    """Write ``frame`` as one Parquet file in ``folder``, as DuckDB would, and return its path.

    polars writes a batch of candles in a fraction of the time DuckDB's ``COPY`` (and so a
    DuckLake ``INSERT``) takes (``bench_store``, the write floor in its details). A float
    column that mixes NaN with numbers must get no min/max statistics: Parquet writers leave
    NaN out of min/max, but DuckDB orders NaN above every number and would skip the file for
    ``close > x`` although its NaN rows match. polars cannot omit statistics per column, so
    such a frame goes through DuckDB's ``COPY`` on ``con``, whose writer omits exactly those
    (slower per row; ``bench_store``). Every other column keeps its statistics, and files are
    pruned by series and time as DuckLake's own are.

    Args:
        con: A connection to run the ``COPY`` on (the writer's; the file is not part of its
            transaction until :func:`add_data_file`).
        folder: :func:`table_folder` (created if missing).
        frame: Candles in the table's column order and types (times in µs, UTC).
    """
    floats = [name for name, dtype in frame.schema.items() if dtype.is_float()]
    nans = frame.select(pl.col(floats).is_nan().sum()).row(0) if floats else ()
    mixed = any(0 < count < frame.height for count in nans)
    folder.mkdir(parents=True, exist_ok=True)
    # DuckLake's own naming, so its orphan cleanup treats a file left by a crash like its own.
    path = folder / f"ducklake-{uuid.uuid4()}.parquet"
    try:
        # snappy: DuckLake's default codec (compaction rewrites the file with the lake's own).
        if not mixed:
            frame.write_parquet(path, compression="snappy", row_group_size=_DATA_FILE_ROW_GROUP)
            return path
        with registered(con, **{_COPIED: frame}):
            con.execute(
                f"COPY (FROM {_COPIED}) TO {quote(str(path))} "
                f"(FORMAT parquet, COMPRESSION snappy, ROW_GROUP_SIZE {_DATA_FILE_ROW_GROUP})"
            )
        return path
    except BaseException:
        # A full disk (or any failure) must not leave a torn or empty file behind (issue 14).
        path.unlink(missing_ok=True)
        raise


def add_data_file(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Register a Parquet file written by :func:`write_data_file` in the open transaction.

    DuckLake reads its footer (row count, column statistics) and maps its columns by name;
    the file becomes DuckLake's like one it wrote: compaction merges and deletes it.
    """
    con.execute(f"CALL ducklake_add_data_files({quote(LAKE)}, 'candles', {quote(str(path))})")
