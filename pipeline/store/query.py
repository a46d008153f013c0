"""Read-only SQL over the candle store, and exports of it.

``candles query`` and ``candles export`` call these. Both open the lake through
:func:`pipeline.store.connect` (read-only attach: no lock that could stall ingest) and refuse
anything that could change it, twice over: the statement types are checked before anything
runs, and the lake itself is attached read-only.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import duckdb
import polars as pl

from pipeline.store.lake import StoreError, connect
from pipeline.store.object_store import S3Options

__all__ = [
    "OUTPUT_FORMATS",
    "TABLE_MAX_ROWS",
    "TABLE_SHOWN_ROWS",
    "QueryError",
    "QueryRefused",
    "export_store",
    "format_frame",
    "run_query",
]

OutputFormat = Literal["table", "csv", "json", "parquet"]
OUTPUT_FORMATS: tuple[str, ...] = ("table", "csv", "json", "parquet")

# Statement kinds that only read. Everything else (INSERT, UPDATE, DELETE, CREATE, DROP,
# COPY, ATTACH, SET, CALL, ...) is refused: `candles query` must never modify the store.
_READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}

# A reader may race compaction, which deletes files an older snapshot still lists; a fresh
# attempt sees the new snapshot (storage-and-libs.md §1: one retry fixed every case).
_RETRIES = 2
# DuckLake's maintenance functions are table functions, so a SELECT can call them. On the
# read-only attach they fail when they commit, but merge and rewrite write their new Parquet
# files first and leave them behind: refused by name, like query()/query_table(), which could
# build such a name at run time. (Reading ones, e.g. ducklake_snapshots, stay allowed.)
_WRITING_FUNCTIONS = re.compile(
    r"\b(ducklake_(?:merge_adjacent_files|rewrite_data_files|expire_snapshots|cleanup_old_files"
    r"|delete_orphaned_files|add_data_files|flush_inlined_data|set_option|set_commit_message)"
    r"|query|query_table)\s*\(",
    re.IGNORECASE,
)
# `EXPLAIN [(options)] [ANALYZE|ANALYSE]` in front of the statement it explains.
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(?:\([^)]*\)\s*)?(?:ANALY[SZ]E\s+)?", re.IGNORECASE)


class QueryError(Exception):
    """The SQL failed; the message is DuckDB's own."""


class QueryRefused(QueryError):
    """The SQL would modify something; only SELECT / EXPLAIN are allowed."""


def _check_read_only(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc
    if not statements:
        raise QueryError("no SQL statement given; try: SELECT * FROM candles LIMIT 10")
    for statement in statements:
        kind = statement.type
        if kind == duckdb.StatementType.EXPLAIN:
            # EXPLAIN ANALYZE *runs* what it explains: judge the explained statement itself.
            inner = _EXPLAIN_PREFIX.sub("", statement.query, count=1)
            if inner == statement.query:
                raise QueryRefused("this EXPLAIN form is not supported; use EXPLAIN SELECT ...")
            _check_read_only(inner)
        elif kind not in _READ_ONLY:
            raise QueryRefused(
                f"{kind.name} statements are not allowed: `candles query` is read-only and only "
                "runs SELECT (including WITH, DESCRIBE, SHOW, SUMMARIZE) and EXPLAIN [ANALYZE] "
                "SELECT"
            )
        elif found := _WRITING_FUNCTIONS.search(statement.query):
            raise QueryRefused(
                f"{found.group(1)}() is not allowed: `candles query` is read-only; store "
                "maintenance runs inside `candles ingest` (compaction), and query()/"
                "query_table() are refused because they run SQL given as text"
            )


def run_query(
    sql: str,
    *,
    path: str | Path = "data",
    catalog: str | None = None,
    data_path: str | Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
    s3: S3Options | None = None,
) -> pl.DataFrame:
    """Run read-only SQL against the store and return the last statement's result.

    Raises:
        QueryRefused: The SQL contains a statement that is not read-only.
        QueryError: DuckDB rejected the SQL (its message is kept), or there is no store.
    """
    _check_read_only(sql)
    statements = duckdb.extract_statements(sql)
    for attempt in range(_RETRIES + 1):
        try:
            con = connect(path, catalog=catalog, data_path=data_path, read_only=True, s3=s3)
        except StoreError as exc:
            raise QueryError(str(exc)) from exc
        try:
            for statement in statements[:-1]:
                con.execute(statement)
            return con.sql(statements[-1].query).pl()
        except duckdb.IOException as exc:
            if attempt == _RETRIES:
                raise QueryError(str(exc)) from exc
            sleep(0.05 * (attempt + 1))
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from exc
        finally:
            con.close()
    raise AssertionError("unreachable")  # pragma: no cover


TABLE_MAX_ROWS = 1000
"""A table with more rows shows its first and last :data:`TABLE_SHOWN_ROWS` / 2 and says so."""
TABLE_SHOWN_ROWS = 40


def format_frame(frame: pl.DataFrame, fmt: OutputFormat) -> bytes:
    """Render a result for the terminal or a pipe.

    One NaN convention in every format (issue 17): a NaN (a field the feed did not send,
    or 0/0 in SQL) is written as null: JSON ``null``, an empty CSV field, a Parquet null,
    ``null`` in the table. JSON has no NaN, so null is the one spelling all formats share.
    """
    frame = frame.fill_nan(None)
    if fmt == "table":
        cut = frame.height > TABLE_MAX_ROWS
        with pl.Config(
            tbl_rows=TABLE_SHOWN_ROWS if cut else -1,
            tbl_cols=-1,
            tbl_width_chars=200,
            fmt_str_lengths=60,
            tbl_hide_dataframe_shape=False,
        ):
            text = str(frame) + "\n"
        if cut:
            text += (
                f"showing {TABLE_SHOWN_ROWS} of {frame.height:,} rows (the first and last "
                f"{TABLE_SHOWN_ROWS // 2}); --format csv, json or parquet writes them all\n"
            )
        return text.encode()
    if fmt == "csv":
        return frame.write_csv().encode()
    if fmt == "json":
        return frame.write_json().encode() + b"\n"
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        return buffer.getvalue()
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")


def export_store(
    out: str | Path,
    *,
    path: str | Path = "data",
    catalog: str | None = None,
    data_path: str | Path | None = None,
    fmt: Literal["parquet", "csv"] = "parquet",
    where: str | None = None,
    s3: S3Options | None = None,
) -> int:
    """Export the candles to ``out``, hive-partitioned by ``period=/date=``.

    The files are written to a temporary folder next to ``out`` and moved into place only
    when complete, so a killed export never leaves torn files under ``out``.

    Returns:
        The number of candles exported.

    Raises:
        QueryError: No store, a bad ``where`` filter, or ``out`` exists and is not empty.
    """
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise QueryError(f"{target} exists and is not empty; choose a new or empty folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    filter_sql = f"WHERE {where}" if where else ""
    if where:
        _check_read_only(f"SELECT 1 FROM candles WHERE {where}")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        con = connect(path, catalog=catalog, data_path=data_path, read_only=True, s3=s3)
    except StoreError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise QueryError(str(exc)) from exc
    try:
        rows = con.sql(f"SELECT count(*) FROM candles {filter_sql}").fetchone()
        count = int(rows[0]) if rows else 0
        options = "FORMAT parquet, COMPRESSION zstd" if fmt == "parquet" else "FORMAT csv"
        columns = _nan_as_null(con)
        con.execute(
            f"COPY (SELECT {columns}, CAST(time AS DATE) AS date FROM candles {filter_sql} "
            f"ORDER BY symbol, time) TO '{_sql_text(str(staging))}' "
            f"({options}, PARTITION_BY (period, date), OVERWRITE_OR_IGNORE)"
        )
    except duckdb.Error as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise QueryError(str(exc)) from exc
    finally:
        con.close()
    if target.exists():
        target.rmdir()
    os.replace(staging, target)
    return count


def _nan_as_null(con: duckdb.DuckDBPyConnection) -> str:
    """The select list of ``candles`` with every NaN as NULL (see :func:`format_frame`)."""
    described = con.execute("DESCRIBE candles").fetchall()
    floats = [str(name) for name, kind, *_ in described if str(kind) in ("DOUBLE", "FLOAT")]
    if not floats:
        return "*"
    replaced = ", ".join(
        f'CASE WHEN isnan("{c}") THEN NULL ELSE "{c}" END AS "{c}"' for c in floats
    )
    return f"* REPLACE ({replaced})"


def _sql_text(text: str) -> str:
    return text.replace("'", "''")
