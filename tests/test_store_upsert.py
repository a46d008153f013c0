"""The upsert's fast paths: data files the writer writes itself, and the newest-time ceiling.

Every test lowers ``FILE_MIN_ROWS`` so that small frames take the data-file path; the
differential test runs the same writes through DuckLake's ``INSERT`` as well and compares.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq  # type: ignore[import-untyped]  # pyarrow ships no stubs
import pytest

import pipeline.store.lake
import pipeline.store.upsert
from pipeline.schema import CANDLE_COLUMNS, KEY_COLUMNS
from pipeline.store import CandleStore, StoreError, connect
from pipeline.store.lake import table_folder, write_data_file
from pipeline.store.upsert import fetch, prepare_batch
from tests.helpers.store import INGESTED, MINUTE, REPO, T0, candle_frame, keys, open_store

NAN = float("nan")
_METADATA = "__ducklake_metadata_lake"


@pytest.fixture(autouse=True)
def data_files_for_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small test frames take the data-file path (the default threshold is 1,000 rows)."""
    monkeypatch.setattr(pipeline.store.upsert, "FILE_MIN_ROWS", 1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CandleStore]:
    with open_store(tmp_path / "data") as opened:
        yield opened


def stored(store: CandleStore) -> pl.DataFrame:
    """Every stored row, in key order, in the frame schema."""
    rows = store._read(f"SELECT * FROM {pipeline.store.lake.TABLE}", [])
    return rows.sort(KEY_COLUMNS)


def registered_files(store: CandleStore) -> list[tuple[str, int, int | None]]:
    """(path, rows, mapping id) of the table's live data files."""
    rows = store._con.execute(
        f"SELECT path, record_count, mapping_id FROM {_METADATA}.ducklake_data_file "
        "WHERE end_snapshot IS NULL ORDER BY data_file_id"
    ).fetchall()
    return [(str(path), int(count), mapping) for path, count, mapping in rows]


def snapshots(store: CandleStore) -> int:
    return int(store._con.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchone()[0])  # type: ignore[index]


def with_nan(frame: pl.DataFrame, column: str, row: int) -> pl.DataFrame:
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(NAN).otherwise(pl.col(column)).alias(column)
    )


# Writing data files.


def test_a_batch_becomes_one_registered_file_in_the_table_folder(store: CandleStore) -> None:
    """The rows land in one Parquet file under DATA_PATH/main/candles, read back exactly."""
    frame = candle_frame(n=50)
    result = store.upsert(frame)
    assert (result.inserted, result.updated, result.unchanged) == (50, 0, 0)
    files = registered_files(store)
    assert len(files) == 1 and files[0][1] == 50
    folder = store.root / "data" / "main" / "candles"
    assert (folder / files[0][0]).is_file(), "recorded relative to the table folder"
    back = stored(store)
    assert (
        back.select(CANDLE_COLUMNS)
        .drop("ingested_at")
        .equals(frame.drop("ingested_at"), null_equal=True)
    )
    assert back["ingested_at"].unique().to_list() == [INGESTED]


def test_column_types_are_the_tables(store: CandleStore) -> None:
    """Times read back as TIMESTAMPTZ at ms precision; sequence INTEGER; count BIGINT."""
    frame = candle_frame(n=3).with_columns(
        pl.col("time") + pl.duration(milliseconds=123), pl.lit(7, pl.Int32).alias("sequence")
    )
    store.upsert(frame)
    types = store._con.execute(
        f"SELECT typeof(time), typeof(ingested_at), typeof(sequence), typeof(count) "
        f"FROM {pipeline.store.lake.TABLE} LIMIT 1"
    ).fetchone()
    assert types == ("TIMESTAMP WITH TIME ZONE",) * 2 + ("INTEGER", "BIGINT")
    assert stored(store)["time"].to_list() == frame["time"].to_list()


def test_resending_a_batch_changes_nothing(store: CandleStore) -> None:
    """The same batch again is all unchanged: no new file, no new snapshot."""
    store.upsert(candle_frame(n=20))
    before = (registered_files(store), snapshots(store))
    again = store.upsert(candle_frame(n=20))
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 20)
    assert (registered_files(store), snapshots(store)) == before
    assert store.count() == 20


def test_revised_new_and_unchanged_rows_in_one_batch(store: CandleStore) -> None:
    """A mixed batch: revised rows replace theirs, new rows are added, equal rows stay."""
    store.upsert(candle_frame(n=10))
    revised = candle_frame(n=4, start=T0 + 3 * MINUTE, close=500.0, revision=1)
    equal = candle_frame(n=10).slice(0, 3)
    new = candle_frame(n=5, start=T0 + 10 * MINUTE, close=900.0)
    mixed = pl.concat([new, revised, equal])  # out of key order on purpose
    result = store.upsert(mixed)
    assert (result.inserted, result.updated, result.unchanged) == (5, 4, 3)
    back = stored(store)
    assert back.height == 15
    unchanged, revised_closes, kept = [100.0, 101.0, 102.0], [500.0, 501.0, 502.0, 503.0], [107.0]
    closes = [*unchanged, *revised_closes, *kept, 108.0, 109.0, 900.0, 901.0, 902.0, 903.0, 904.0]
    assert back["close"].to_list() == closes
    assert back["revision"].to_list()[3:7] == [1, 1, 1, 1]


def test_the_file_is_sorted_by_key_and_has_the_pruning_statistics(store: CandleStore) -> None:
    """Rows are written in key order; time and key columns carry min/max statistics."""
    frame = pl.concat([candle_frame("MSFT", n=5), candle_frame("AAPL", n=5)]).reverse()
    store.upsert(frame)
    [(path, _, _)] = registered_files(store)
    parquet = pq.ParquetFile(store.root / "data" / "main" / "candles" / path)
    table = parquet.read()
    assert table.column("symbol").to_pylist() == ["AAPL"] * 5 + ["MSFT"] * 5
    times = table.column("time").to_pylist()
    assert times[:5] == sorted(times[:5])
    group = parquet.metadata.row_group(0)
    stats = {group.column(i).path_in_schema: group.column(i).statistics for i in range(17)}
    assert stats["symbol"].min == "AAPL" and stats["symbol"].max == "MSFT"
    assert stats["time"].has_min_max
    # DuckLake copied them into its catalog, where it prunes files before opening them.
    catalog = store._con.execute(
        f"SELECT c.column_name, s.min_value, s.max_value "
        f"FROM {_METADATA}.ducklake_file_column_stats s "
        f"JOIN {_METADATA}.ducklake_column c USING (column_id) "
        "WHERE c.column_name IN ('symbol', 'time') ORDER BY 1"
    ).fetchall()
    assert catalog == [
        ("symbol", "AAPL", "MSFT"),
        ("time", "2025-08-27 13:30:00+00", "2025-08-27 13:34:00+00"),
    ]


def test_nan_rows_match_range_filters_as_duckdb_does(tmp_path: Path) -> None:
    """A price column with NaN gets no min/max, so `close > x` still finds the NaN rows."""
    frame = with_nan(with_nan(candle_frame(n=6), "close", 2), "vwap", 0)
    with open_store(tmp_path / "data") as store:
        store.upsert(frame)
        [(path, _, _)] = registered_files(store)
        metadata = pq.ParquetFile(store.root / "data" / "main" / "candles" / path).metadata
        group = metadata.row_group(0)
        with_stats = {
            group.column(i).path_in_schema
            for i in range(group.num_columns)
            if group.column(i).statistics is not None and group.column(i).statistics.has_min_max
        }
        assert {"close", "vwap"}.isdisjoint(with_stats)
        assert {"time", "symbol", "open", "high"} <= with_stats
    reader = connect(tmp_path / "data", verify_extensions=False)
    try:
        # DuckDB orders NaN above every number (and an INSERT-written file agrees).
        assert reader.execute("SELECT count(*) FROM candles WHERE close > 1e9").fetchone() == (1,)
        assert reader.execute("SELECT count(*) FROM candles WHERE vwap > 1e9").fetchone() == (1,)
        assert reader.execute("SELECT count(*) FROM candles WHERE open > 1e9").fetchone() == (0,)
        all_nan = "SELECT count(*) FROM candles WHERE imp_volatility > 1e9"
        assert reader.execute(all_nan).fetchone() == (6,)
    finally:
        reader.close()


def test_frames_without_mixed_nan_columns_are_written_by_polars(tmp_path: Path) -> None:
    """No column mixes NaN with numbers: polars writes it (faster); all-NaN columns still match."""
    with open_store(tmp_path / "data") as store:
        store.upsert(candle_frame(n=6))  # imp_volatility and open_interest: NaN throughout
        store.upsert(with_nan(candle_frame(n=6, start=T0 + 6 * MINUTE), "close", 0))
        writers = [
            pq.ParquetFile(store.root / "data" / "main" / "candles" / path).metadata.created_by
            for path, _, _ in registered_files(store)
        ]
    assert writers[0].startswith("Polars") and writers[1].startswith("DuckDB")
    reader = connect(tmp_path / "data", verify_extensions=False)
    try:
        all_nan = "SELECT count(*) FROM candles WHERE imp_volatility > 1e9 AND close < 1e9"
        assert reader.execute(all_nan).fetchone() == (11,)
        assert reader.execute("SELECT count(*) FROM candles WHERE close > 1e9").fetchone() == (1,)
    finally:
        reader.close()


def test_data_files_and_insert_give_the_same_lake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same writes through data files and through INSERT read back identically."""
    steps: list[tuple[pl.DataFrame, pl.DataFrame | None]] = [
        (pl.concat([candle_frame("AAPL", n=30), candle_frame("MSFT", "5m", n=12)]), None),
        (candle_frame("AAPL", n=5, start=T0 + 28 * MINUTE, close=300.0, revision=2), None),
        (candle_frame("AAPL", n=0), keys(candle_frame("AAPL", n=3, start=T0 + 10 * MINUTE))),
        (with_nan(candle_frame("AAPL", n=4, start=T0 + 10 * MINUTE, close=50.0), "low", 1), None),
        (candle_frame("MSFT", "5m", n=3, start=T0 + 60 * MINUTE, close=7.0), None),
    ]
    results = {}
    for threshold in (1, 10**9):
        monkeypatch.setattr(pipeline.store.upsert, "FILE_MIN_ROWS", threshold)
        with open_store(tmp_path / f"data-{threshold}") as store:
            results[threshold] = (
                [store.upsert(frame, deletions) for frame, deletions in steps],
                stored(store),
                [store.recent("AAPL{=1m}", 5)["close"].to_list(), store.resume_points()],
            )
            files = registered_files(store)
            assert all(mapping is not None for _, _, mapping in files) == (threshold == 1)
    assert results[1][0] == results[10**9][0]
    assert results[1][1].equals(results[10**9][1], null_equal=True)
    assert results[1][2] == results[10**9][2]


def test_compaction_merges_registered_files_and_keeps_every_row(tmp_path: Path) -> None:
    """Files the writer registered merge like DuckLake's own; every row stays."""
    now = [datetime(2026, 1, 2, tzinfo=UTC)]
    with open_store(tmp_path / "data", clock=lambda: now[0]) as store:
        for day in range(4):
            store.upsert(candle_frame(n=30, start=T0 + timedelta(days=day)))
        store.upsert(candle_frame(n=3, start=T0 + timedelta(days=1), close=5.0, revision=1))
        before = stored(store)
        assert len(registered_files(store)) == 5
        # Columns are mapped by name, through one mapping that every file shares.
        mappings = f"SELECT count(*) FROM {_METADATA}.ducklake_column_mapping"
        assert store._con.execute(mappings).fetchone() == (1,)
        # DuckLake schedules replaced files for deletion at the real time: retain past that.
        now[0] = datetime.now(UTC) + timedelta(hours=2)
        result = store.compact(retain=timedelta(hours=1))
        assert result.files_after == 1
        assert stored(store).equals(before, null_equal=True)
        [(path, rows, _)] = registered_files(store)
        assert rows == 120
    on_disk = sorted(p.name for p in (tmp_path / "data" / "data" / "main" / "candles").iterdir())
    assert on_disk == [path]


def test_a_moved_store_still_finds_its_registered_files(tmp_path: Path) -> None:
    """Registered files are recorded relative to the data path: a copied folder reads back."""
    with open_store(tmp_path / "data") as store:
        store.upsert(candle_frame(n=12))
        expected = stored(store)
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    shutil.rmtree(tmp_path / "data")
    with open_store(tmp_path / "moved") as moved:
        assert stored(moved).equals(expected, null_equal=True)


# Failures between writing the file and the commit.

FULL_DISK = """
import resource, signal, sys
from pathlib import Path
import duckdb
import polars as pl
from datetime import UTC, datetime
from pipeline.store.lake import write_data_file
from pipeline.store.upsert import prepare_batch
from tests.helpers.store import candle_frame
folder, mixed = Path(sys.argv[1]), sys.argv[2] == "mixed"
frame = candle_frame(n=2_000)
if mixed:  # a float column mixing NaN and numbers takes DuckDB's COPY
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(float("nan"))
                               .otherwise(pl.col("vwap")).alias("vwap"))
batch = prepare_batch(frame, datetime(2026, 1, 2, tzinfo=UTC))
# The disk takes 4 KiB more, then the write fails (EFBIG, as ENOSPC would: no space left).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
try:
    write_data_file(duckdb.connect(), folder, batch)
except Exception as exc:  # polars words it ComputeError, DuckDB IOException
    print("failed", type(exc).__name__)
else:
    print("written")
"""


@pytest.mark.parametrize("writer", ["polars", "mixed"])
def test_a_data_file_the_disk_cannot_take_leaves_no_file_behind(
    tmp_path: Path, writer: str
) -> None:
    """A write that runs out of space raises and deletes its partial file (no zero-byte or
    torn orphan Parquet file in the table folder, issue 14)."""
    folder = tmp_path / "table"
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(folder), writer],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert result.stdout.split()[:1] == ["failed"], result.stdout + result.stderr[-2000:]
    assert sorted(folder.iterdir()) == []


def test_a_failed_registration_removes_its_file_and_stores_nothing(
    store: CandleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If registering fails before COMMIT, the written file is deleted and the lake unchanged."""
    store.upsert(candle_frame(n=5))
    written: list[Path] = []

    def failing_add(con: duckdb.DuckDBPyConnection, path: Path) -> None:
        written.append(path)
        raise duckdb.IOException(f"cannot read {path.name}: disk gone")

    monkeypatch.setattr(pipeline.store.upsert, "add_data_file", failing_add)
    with pytest.raises(StoreError, match="disk gone"):
        store.upsert(candle_frame(n=5, start=T0 + 5 * MINUTE))
    assert len(written) == 1 and not written[0].exists()
    monkeypatch.undo()
    monkeypatch.setattr(pipeline.store.upsert, "FILE_MIN_ROWS", 1)
    assert store.upsert(candle_frame(n=10)).inserted == 5, "the retry stores what was lost"
    assert store.count() == 10


def test_compaction_removes_a_file_left_by_a_writer_killed_before_its_commit(
    tmp_path: Path,
) -> None:
    """An unregistered data file (its writer died before COMMIT) is deleted after `retain`."""
    now = [datetime(2026, 1, 2, tzinfo=UTC)]
    with open_store(tmp_path / "data", clock=lambda: now[0]) as store:
        store.upsert(candle_frame(n=10))
        folder = table_folder(store._con, pipeline.store.lake.resolve_data_path(store.root, None))
        assert folder is not None
        batch = prepare_batch(candle_frame(n=10, start=T0 + 10 * MINUTE), now[0])
        orphan = write_data_file(store._con, folder, batch)  # what the killed writer left behind
        old = time.time() - 2 * 3600
        os.utime(orphan, (old, old))
        in_flight = write_data_file(store._con, folder, batch)  # another shard's, not committed yet
        now[0] = datetime.now(UTC)
        store.compact(retain=timedelta(hours=1))
        assert not orphan.exists()
        assert in_flight.exists(), "a file younger than `retain` may still be committed"
        assert store.count() == 10


def test_table_folder_is_none_on_object_storage(store: CandleStore) -> None:
    """A data path on object storage has no local folder: the upsert writes through INSERT."""
    assert table_folder(store._con, "s3://bucket/lake/") is None
    local = table_folder(store._con, pipeline.store.lake.resolve_data_path(store.root, None))
    assert local == (store.root / "data" / "main" / "candles").resolve()


# The newest-time ceiling.


def test_a_deleted_key_written_again_is_stored(store: CandleStore) -> None:
    """Deleting the newest rows leaves the ceiling high; writing them again stores them."""
    store.upsert(candle_frame(n=10))
    newest = keys(candle_frame(n=3, start=T0 + 7 * MINUTE))
    assert store.upsert(candle_frame(n=0), deletions=newest).deleted == 3
    assert store.count() == 7
    again = store.upsert(candle_frame(n=3, start=T0 + 7 * MINUTE, close=1.0))
    assert (again.inserted, again.updated) == (3, 0)
    assert store.count() == 10
    assert stored(store)["close"].to_list()[-3:] == [1.0, 2.0, 3.0]


def test_deleted_and_upserted_in_one_call_ends_upserted(store: CandleStore) -> None:
    """A key deleted and upserted in the same call is stored with the new values."""
    store.upsert(candle_frame(n=5))
    frame = candle_frame(n=2, start=T0 + 3 * MINUTE, close=70.0)
    result = store.upsert(frame, deletions=keys(frame))
    assert (result.deleted, result.inserted, result.updated) == (2, 2, 0)
    assert stored(store)["close"].to_list() == [100.0, 101.0, 102.0, 70.0, 71.0]


def test_a_restarted_writer_reads_its_ceilings_from_the_lake(tmp_path: Path) -> None:
    """A new store on an existing lake looks stored rows up: a re-sent batch is unchanged."""
    with open_store(tmp_path / "data") as first:
        first.upsert(candle_frame(n=20))
    with open_store(tmp_path / "data") as second:
        again = second.upsert(candle_frame(n=25))
        assert (again.inserted, again.unchanged) == (5, 20)
        assert second.count() == 25
        assert second._newest_stored.ceiling("AAPL", "1m") == _epoch_us(T0 + 24 * MINUTE)


def test_only_rows_above_the_ceiling_skip_the_lookup(
    store: CandleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pure append looks nothing up; a batch reaching back looks up only the older rows."""
    store.upsert(candle_frame(n=10))
    looked_up: list[int] = []
    lookup = pipeline.store.upsert._stored_versions

    def counting(con: duckdb.DuckDBPyConnection, batch: pl.DataFrame) -> pl.DataFrame:
        looked_up.append(batch.height)
        return lookup(con, batch)

    monkeypatch.setattr(pipeline.store.upsert, "_stored_versions", counting)
    store.upsert(candle_frame(n=5, start=T0 + 10 * MINUTE))
    result = store.upsert(candle_frame(n=6, start=T0 + 12 * MINUTE, close=40.0))
    assert looked_up == [0, 3]
    assert (result.inserted, result.updated) == (3, 3)
    assert store.count() == 18


def test_shards_writing_different_series_keep_every_row(tmp_path: Path) -> None:
    """Two writers on one lake, each with its own series, interleaved: every row, once."""
    with open_store(tmp_path / "data") as one, open_store(tmp_path / "data") as two:
        for step in range(3):
            start = T0 + 10 * step * MINUTE
            one.upsert(candle_frame("AAPL", n=10, start=start))
            two.upsert(candle_frame("MSFT", n=10, start=start))
            one.upsert(candle_frame("AAPL", n=10, start=start, close=1.0, revision=1))
        counts = one._read(
            f"SELECT symbol, count(*) AS n, count(DISTINCT time) AS times "
            f"FROM {pipeline.store.lake.TABLE} GROUP BY ALL ORDER BY symbol",
            [],
        )
    assert counts.rows() == [("AAPL", 30, 30), ("MSFT", 30, 30)]


def test_a_recycled_connection_starts_with_no_ceilings(tmp_path: Path) -> None:
    """The ceiling belongs to one connection: a recycle empties it, the next upsert reloads."""
    with open_store(tmp_path / "data", recycle_after=2) as store:
        store.upsert(candle_frame(n=5))
        assert len(store._newest_stored) == 1
        store.upsert(candle_frame(n=5, start=T0 + 5 * MINUTE))
        assert len(store._newest_stored) == 0
        # Times 5-9 hold other closes than candle_frame(n=12) has there: found and replaced.
        again = store.upsert(candle_frame(n=12))
        assert (again.inserted, again.updated, again.unchanged) == (2, 5, 5)


# Input checks the data-file path relies on.


def test_a_null_revision_is_refused_naming_the_column(store: CandleStore) -> None:
    """revision is NOT NULL in the table; a registered file is not checked by DuckLake."""
    frame = candle_frame(n=2).with_columns(pl.lit(None, pl.Int64).alias("revision"))
    with pytest.raises(ValueError, match=r"null values in \['revision'\]"):
        store.upsert(frame)
    assert store.count() == 0


def test_repeated_keys_keep_the_newest_revision_then_the_last_row(store: CandleStore) -> None:
    """Within one batch: the highest revision wins; among equal revisions the later row."""
    frame = pl.concat(
        [
            candle_frame(n=1, close=1.0, revision=2),
            candle_frame(n=1, close=2.0, revision=1),
            candle_frame(n=1, close=3.0, revision=2),
            candle_frame(n=2, close=9.0),
        ]
    )
    result = store.upsert(frame)
    assert result.inserted == 2
    assert stored(store)["close"].to_list() == [3.0, 10.0]


def _epoch_us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def test_fetch_binds_ints_and_other_values_and_refuses_a_miscount() -> None:
    """fetch binds an int as its literal and anything else (a string, a time) as a session
    variable, with the types DuckDB gives parameters; a placeholder count that does not
    match the parameters is refused before anything runs."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        frame = fetch(
            con,
            "SELECT ? AS n, ? AS s, ? AS t, ? AS b",
            [7, "it's", datetime(2026, 1, 2, tzinfo=UTC), True],
        )
        assert frame.row(0) == (7, "it's", datetime(2026, 1, 2, tzinfo=UTC), True)
        with pytest.raises(ValueError, match="2 placeholders for 1 parameters"):
            fetch(con, "SELECT ?, ?", [1])
    finally:
        con.close()
