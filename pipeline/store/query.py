"""Read-only SQL over the candle store, and exports of it.

``candles query`` and ``candles export`` call these. Both open the lake through
:func:`pipeline.store.connect` (read-only attach: no lock that could stall ingest) and refuse
anything that could change it, twice over: DuckDB's own parser checks every statement before
anything runs (its type, and each function a SELECT calls, so quoting, comments or case cannot
hide a name), and the lake itself is attached read-only.
"""

from __future__ import annotations

import io
import json
import os
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

# A reader may race compaction, which deletes files an older snapshot still lists; a fresh
# attempt sees the new snapshot (storage-and-libs.md §1: one retry fixed every case).
_RETRIES = 2
# DuckLake's maintenance functions are table functions, so a SELECT can call them. On the
# read-only attach they fail when they commit, but merge and rewrite write their new Parquet
# files first and leave them behind. So every ``ducklake_*`` function is refused except the
# ones that only read (a maintenance function DuckLake adds later is refused too), and so
# are query()/query_table(), which run SQL or name a table given as text, and checkpoints.
_READING_DUCKLAKE_FUNCTIONS = frozenset(
    {
        "ducklake_current_snapshot",
        "ducklake_last_committed_snapshot",
        "ducklake_list_files",
        "ducklake_options",
        "ducklake_scan",
        "ducklake_settings",
        "ducklake_snapshots",
        "ducklake_table_changes",
        "ducklake_table_deletions",
        "ducklake_table_info",
        "ducklake_table_insertions",
    }
)
_REFUSED_FUNCTIONS = frozenset({"query", "query_table", "checkpoint", "force_checkpoint"})
_READ_ONLY_HINT = (
    "`candles query` is read-only and only runs SELECT (including WITH, DESCRIBE, SHOW, "
    "SUMMARIZE) and EXPLAIN [ANALYZE] SELECT"
)


class QueryError(Exception):
    """The SQL failed; the message is DuckDB's own."""


class QueryRefused(QueryError):
    """The SQL would modify something; only SELECT / EXPLAIN are allowed."""


def _check_read_only(sql: str) -> None:
    """Refuse ``sql`` unless every statement only reads, judged on DuckDB's own parse.

    DuckDB's parser splits the statements and types them; each SELECT is serialised to its
    parse tree (``json_serialize_sql``), in which every function call, table function or
    scalar, appears by name whatever quoting, comments, case or schema the text used.
    """
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc
    if not statements:
        raise QueryError("no SQL statement given; try: SELECT * FROM candles LIMIT 10")
    with duckdb.connect() as parser:
        for statement in statements:
            _check_statement(parser, statement.type, statement.query)


def _check_statement(
    parser: duckdb.DuckDBPyConnection, kind: duckdb.StatementType, text: str
) -> None:
    if kind == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE *runs* what it explains: judge the explained statement itself.
        inner = _explained(text)
        try:
            (statement,) = duckdb.extract_statements(inner)
        except (duckdb.Error, ValueError):
            raise QueryRefused(f"this EXPLAIN form is not supported; {_READ_ONLY_HINT}") from None
        if statement.type == duckdb.StatementType.EXPLAIN:
            raise QueryRefused(f"EXPLAIN of an EXPLAIN is not supported; {_READ_ONLY_HINT}")
        _check_statement(parser, statement.type, statement.query)
    elif kind == duckdb.StatementType.LOAD:
        # DuckDB types INSTALL and LOAD alike; name the one that was written.
        word = "INSTALL" if "INSTALL" in _leading_keywords(text) else "LOAD"
        raise QueryRefused(
            f"{word} statements are not allowed: `candles query` is read-only and installs or "
            "loads no extension (the store's own are loaded already); run DuckDB itself "
            "for other extensions"
        )
    elif kind != duckdb.StatementType.SELECT:
        raise QueryRefused(f"{kind.name} statements are not allowed: {_READ_ONLY_HINT}")
    else:
        refused = sorted(name for name in _functions_called(parser, text) if _is_refused(name))
        if refused:
            raise QueryRefused(
                f"{refused[0]}() is not allowed: `candles query` is read-only; store "
                "maintenance runs inside `candles ingest` (compaction), and query()/"
                "query_table() are refused because they run SQL given as text"
            )


def _is_refused(name: str) -> bool:
    name = name.lower()
    if name.startswith("ducklake_"):
        return name not in _READING_DUCKLAKE_FUNCTIONS
    return name in _REFUSED_FUNCTIONS


def _functions_called(parser: duckdb.DuckDBPyConnection, select: str) -> set[str]:
    """Every function name in one SELECT's parse tree (table functions and scalars alike)."""
    row = parser.execute("SELECT json_serialize_sql(?)", [select]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True}
    if not isinstance(tree, dict) or tree.get("error") is not False:
        message = tree.get("error_message") if isinstance(tree, dict) else None
        raise QueryRefused(
            f"this statement could not be checked ({message or 'no parse tree'}); {_READ_ONLY_HINT}"
        )
    names: set[str] = set()
    stack: list[object] = [tree]
    while stack:  # iterative: a deeply nested query must not exhaust Python's stack
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("function_name")
            if isinstance(name, str):
                names.add(name)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return names


def _leading_keywords(text: str) -> list[str]:
    """The statement's words up to its first non-keyword token, upper-cased."""
    words: list[str] = []
    tokens = duckdb.tokenize(text)
    for (start, kind), following in zip(tokens, [*tokens[1:], (len(text), None)], strict=True):
        if kind != duckdb.token_type.keyword:
            break
        words.append(text[start : following[0]].strip().upper())
    return words


def _explained(text: str) -> str:
    """The statement an ``EXPLAIN [(options)] [ANALYZE]`` statement explains, by tokens.

    DuckDB's tokenizer skips comments, so a comment anywhere cannot hide the keywords.
    """
    tokens = duckdb.tokenize(text)
    ends = [start for start, _ in tokens[1:]] + [len(text)]
    words = [text[start:end].strip().upper() for (start, _), end in zip(tokens, ends, strict=True)]
    at = 1 if words[:1] == ["EXPLAIN"] else len(words)
    if at < len(words) and words[at] == "(":
        while at < len(words) and words[at] != ")":
            at += 1
        at += 1
    if at < len(words) and words[at] in ("ANALYZE", "ANALYSE"):
        at += 1
    return text[tokens[at][0] :] if at < len(tokens) else ""


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
        return _flat(frame).write_csv().encode()
    if fmt == "json":
        return frame.write_json().encode() + b"\n"
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        return buffer.getvalue()
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")


def _flat(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with each nested column (list, array, struct; DuckDB maps arrive as lists of
    key/value structs) as JSON text, which CSV can hold; a null stays an empty cell."""
    nested = [name for name, dtype in frame.schema.items() if dtype.is_nested()]
    return frame.with_columns(
        pl.when(pl.col(name).is_null())
        .then(None)
        # json_encode works on structs: wrap the value as {"v": ...} and cut the wrapper off.
        .otherwise(pl.struct(pl.col(name).alias("v")).struct.json_encode().str.slice(5))
        .str.strip_suffix("}")
        .alias(name)
        for name in nested
    )


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
