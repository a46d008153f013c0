"""Read-only queries and exports over a real DuckLake store."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.schema import CANDLE_SCHEMA
from pipeline.store import (
    CandleStore,
    QueryError,
    QueryRefused,
    export_store,
    format_frame,
    run_query,
)

START = datetime(2026, 11, 2, 14, 30, tzinfo=UTC)


def _frame(symbol: str, period: str, n: int, step: timedelta) -> pl.DataFrame:
    rows = [
        {
            "symbol": symbol,
            "period": period,
            "time": START + i * step,
            "open": 100.0 + i,
            "high": 101.0 + i,
            "low": 99.0 + i,
            "close": 100.5 + i,
            "volume": 1000.0 + i,
            "vwap": 100.2 + i,
            "count": 10 + i,
            "bid_volume": 400.0,
            "ask_volume": 500.0,
            "imp_volatility": float("nan"),
            "open_interest": float("nan"),
            "revision": 0,
            "ingested_at": None,
        }
        for i in range(n)
    ]
    return pl.DataFrame(rows, schema=CANDLE_SCHEMA)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the module: every test here only reads it."""
    path = tmp_path_factory.mktemp("query") / "data"
    with CandleStore(path) as store:
        store.upsert(_frame("AAPL", "1m", 30, timedelta(minutes=1)))
        store.upsert(_frame("SPY", "1d", 3, timedelta(days=1)))
    return path


def test_select_returns_rows(store_path: Path) -> None:
    """A SELECT returns the stored candles."""
    frame = run_query(
        "SELECT symbol, count(*) AS n FROM candles GROUP BY symbol ORDER BY symbol",
        path=store_path,
    )
    assert frame.rows() == [("AAPL", 30), ("SPY", 3)]


def test_views_are_available(store_path: Path) -> None:
    """The latest-candle view answers one row per series."""
    frame = run_query("SELECT symbol, period FROM latest_candles ORDER BY symbol", path=store_path)
    assert frame.rows() == [("AAPL", "1m"), ("SPY", "1d")]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM candles",
        "INSERT INTO candles SELECT * FROM candles",
        "DROP TABLE candles",
        "UPDATE candles SET close = 0",
        "COPY candles TO '/tmp/x.csv'",
        "ATTACH ':memory:' AS other",
        "SELECT 1; DELETE FROM candles",
        "CREATE TABLE t AS SELECT 1",
    ],
)
def test_writes_are_refused(store_path: Path, sql: str) -> None:
    """Anything but a read is refused before it runs, and the store is unchanged."""
    with pytest.raises(QueryRefused, match="read-only"):
        run_query(sql, path=store_path)
    assert run_query("SELECT count(*) FROM candles", path=store_path).item() == 33


def test_bad_sql_keeps_duckdb_message(store_path: Path) -> None:
    """Bad SQL surfaces DuckDB's own message."""
    with pytest.raises(QueryError, match=r"(?i)no_such_table"):
        run_query("SELECT * FROM no_such_table", path=store_path)
    with pytest.raises(QueryError, match=r"(?i)syntax"):
        run_query("SELEC 1", path=store_path)


def test_missing_store_is_explained(tmp_path: Path) -> None:
    """Querying a folder with no store says so and how to fix it."""
    with pytest.raises(QueryError, match="run ingest first"):
        run_query("SELECT 1", path=tmp_path / "nowhere")


def test_formats(store_path: Path) -> None:
    """Every output format renders the same rows."""
    frame = run_query("SELECT symbol, close FROM candles ORDER BY symbol, time", path=store_path)
    csv = format_frame(frame, "csv").decode().splitlines()
    assert csv[0] == "symbol,close" and len(csv) == 34
    assert len(json.loads(format_frame(frame, "json"))) == 33
    assert pl.read_parquet(io.BytesIO(format_frame(frame, "parquet"))).equals(frame)
    assert "AAPL" in format_frame(frame, "table").decode()


def test_csv_encodes_nested_columns_as_json(store_path: Path) -> None:
    """`--format csv` writes nested values (maps, lists, structs) as JSON text in their cell."""
    result = CliRunner().invoke(
        cli,
        ["query", "--store", str(store_path), "--format", "csv",
         "SELECT snapshot_id, changes, [1, 2] AS numbers, {'a': 1, 'b': [true]} AS thing, "
         "NULL::INT[] AS nothing FROM ducklake_snapshots('lake') ORDER BY snapshot_id"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) >= 2
    assert [json.loads(row["numbers"]) for row in rows] == [[1, 2]] * len(rows)
    assert json.loads(rows[0]["thing"]) == {"a": 1, "b": [True]}
    assert {row["nothing"] for row in rows} == {""}
    changes = [json.loads(row["changes"]) for row in rows]  # a map: a JSON object
    assert any("tables_inserted_into" in c for c in changes), changes


def test_export_is_hive_partitioned(store_path: Path, tmp_path: Path) -> None:
    """Export writes period=/date= partitions holding every candle."""
    out = tmp_path / "export"
    assert export_store(out, path=store_path) == 33
    periods = sorted(p.name for p in out.iterdir())
    assert periods == ["period=1d", "period=1m"]
    exported = pl.read_parquet(out / "**/*.parquet", hive_partitioning=True)
    assert exported.height == 33
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export.")]


def test_export_refuses_non_empty_target(store_path: Path, tmp_path: Path) -> None:
    """Export never overwrites an existing non-empty folder."""
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(QueryError, match="not empty"):
        export_store(out, path=store_path)
    assert (out / "keep.txt").read_text() == "mine"
