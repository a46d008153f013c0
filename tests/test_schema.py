"""``sql/schema.sql`` and ``pipeline/schema.py`` describe one table (schema.py's promise).

The manager builds its frames in :data:`CANDLE_SCHEMA` and the store writes them into the
table ``schema.sql`` creates, so both must list the same columns in the same order with types
DuckDB maps onto each other: a frame in ``CANDLE_SCHEMA`` scanned by DuckDB has exactly the
table's column types.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from pipeline.schema import CANDLE_SCHEMA, KEY_COLUMNS
from pipeline.store import CandleStore, run_query
from tests.helpers.layering import ROOT

SCHEMA_SQL = ROOT / "sql" / "schema.sql"


def frame_columns() -> list[tuple[str, str]]:
    """(name, DuckDB type) of an empty frame in CANDLE_SCHEMA, as DuckDB scans it."""
    con = duckdb.connect()
    con.register("frame", pl.DataFrame(schema=CANDLE_SCHEMA).to_arrow())
    rows = con.execute("DESCRIBE SELECT * FROM frame").fetchall()
    return [(name, kind) for name, kind, *_ in rows]


def test_schema_sql_creates_the_columns_of_candle_schema_in_order() -> None:
    """The CREATE TABLE of schema.sql, run alone, has CANDLE_SCHEMA's columns and types."""
    statements = duckdb.extract_statements(SCHEMA_SQL.read_text(encoding="utf-8"))
    (create,) = [s for s in statements if s.type == duckdb.StatementType.CREATE]
    con = duckdb.connect()
    con.execute(create.query)
    rows = con.execute("DESCRIBE candles").fetchall()
    assert [(name, kind) for name, kind, *_ in rows] == frame_columns()
    not_null = {name for name, _, null, *_ in rows if null == "NO"}
    assert set(KEY_COLUMNS) <= not_null  # a key is never null


def test_a_new_store_holds_the_table_of_candle_schema(tmp_path: Path) -> None:
    """The table a new DuckLake store gets (schema.sql through the package) is the same."""
    CandleStore(tmp_path / "store", verify_extensions=False).close()
    described = run_query("DESCRIBE candles", path=tmp_path / "store")
    assert list(zip(described["column_name"], described["column_type"], strict=True)) == (
        frame_columns()
    )
