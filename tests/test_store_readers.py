"""Readers of the lake: the SQL views, other processes reading while ingest writes, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from pipeline.store import CandleStore, connect
from tests.helpers.store import (
    MINUTE,
    REPO,
    T0,
    ReaderProcess,
    bulk_frame,
    candle_frame,
    open_store,
)


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[tuple[CandleStore, duckdb.DuckDBPyConnection]]:
    with open_store(tmp_path / "data") as store:
        store.upsert(candle_frame(n=1))  # the table exists from the first open on
        con = connect(tmp_path / "data", verify_extensions=False)
        try:
            yield store, con
        finally:
            con.close()


# Views.


def test_reader_connection_is_read_only(
    reader: tuple[CandleStore, duckdb.DuckDBPyConnection],
) -> None:
    """connect() attaches read-only: a reader cannot change the lake."""
    _, con = reader
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DELETE FROM candles")


def test_reader_sees_new_commits_without_reopening(
    reader: tuple[CandleStore, duckdb.DuckDBPyConnection],
) -> None:
    """Each query on a held connection reads the latest committed snapshot."""
    store, con = reader
    assert con.execute("SELECT count(*) FROM candles").fetchone() == (1,)
    store.upsert(candle_frame(n=5, start=T0 + MINUTE))
    assert con.execute("SELECT count(*) FROM candles").fetchone() == (6,)


def test_a_held_connection_keeps_no_copy_of_the_files_it_read(
    reader: tuple[CandleStore, duckdb.DuckDBPyConnection],
) -> None:
    """A notebook holding its connection while ingest flushes must not keep every flushed
    file's blocks (DuckDB's external file cache): the OS page cache holds them already."""
    store, con = reader
    for k in range(1, 11):
        store.upsert(candle_frame(n=1, start=T0 + k * MINUTE))
        assert len(con.execute("SELECT * FROM candles").fetchall()) == k + 1
    assert con.execute("FROM duckdb_external_file_cache()").fetchall() == []


def test_latest_candles_has_one_row_per_series(
    reader: tuple[CandleStore, duckdb.DuckDBPyConnection],
) -> None:
    """latest_candles holds the newest stored candle of every (symbol, period)."""
    store, con = reader
    store.upsert(candle_frame("AAPL", "1m", 5))
    store.upsert(candle_frame("AAPL", "5m", 2, step=5 * MINUTE))
    store.upsert(candle_frame("SPY", "1m", 3))
    rows = con.sql(
        "SELECT symbol, period, epoch_ms(time), close FROM latest_candles ORDER BY ALL"
    ).fetchall()
    t0 = 1_756_301_400_000
    assert rows == [
        ("AAPL", "1m", t0 + 4 * 60_000, 104.0),
        ("AAPL", "5m", t0 + 5 * 60_000, 101.0),
        ("SPY", "1m", t0 + 2 * 60_000, 102.0),
    ]


def test_gaps_are_missing_periods_between_consecutive_candles(
    reader: tuple[CandleStore, duckdb.DuckDBPyConnection],
) -> None:
    """candle_gaps uses each series' own period; non-fixed periods have no gaps."""
    store, con = reader
    minutes = candle_frame("AAPL", "1m", 8)
    store.upsert(minutes.filter(~pl.col("time").is_in([T0 + 2 * MINUTE, T0 + 3 * MINUTE])))
    fives = candle_frame("QQQ", "5m,tho=true", 4, step=5 * MINUTE)
    store.upsert(fives.filter(pl.col("time") != T0 + 10 * MINUTE))
    friday = datetime(2025, 8, 22, tzinfo=UTC)
    store.upsert(
        pl.concat(
            [
                candle_frame("SPY", "1d", 1, start=friday),
                candle_frame("SPY", "1d", 1, start=friday + timedelta(days=3)),
            ]
        )
    )
    store.upsert(candle_frame("TICK", "100t", 2, step=timedelta(hours=5)))
    store.upsert(candle_frame("MON", "1mo", 2, step=timedelta(days=90)))
    rows = con.sql(
        "SELECT symbol, period, epoch_ms(gap_start), epoch_ms(gap_end), missing_periods "
        "FROM candle_gaps ORDER BY symbol"
    ).fetchall()
    t0, day = 1_756_301_400_000, 86_400_000
    friday_ms = 1_755_820_800_000
    assert rows == [
        ("AAPL", "1m", t0 + 2 * 60_000, t0 + 4 * 60_000, 2),
        ("QQQ", "5m,tho=true", t0 + 10 * 60_000, t0 + 15 * 60_000, 1),
        # A weekend is a gap too: the view has no session calendar (see sql/gaps.sql).
        ("SPY", "1d", friday_ms + day, friday_ms + 3 * day, 2),
    ]


def volume_weighted_vwap(candles: pl.DataFrame) -> float:
    """The vwap of ``candles`` taken together: their vwaps weighted by volume."""
    weighted = candles.select((pl.col("vwap") * pl.col("volume")).sum() / pl.col("volume").sum())
    return float(weighted.item())


def test_resample_rolls_minutes_into_wider_buckets(
    reader: tuple[CandleStore, duckdb.DuckDBPyConnection],
) -> None:
    """resample(): first open, last close, max high, min low, sums, weighted vwap, count."""
    store, con = reader
    minutes = candle_frame("AAPL", "1m", 10, start=T0).with_columns(
        pl.when(pl.col("time") == T0 + 6 * MINUTE)
        .then(float("nan"))
        .otherwise(pl.col("vwap"))
        .alias("vwap")
    )
    store.upsert(minutes)
    frame = con.sql("SELECT * FROM resample('AAPL', '1m', INTERVAL 5 MINUTE)").pl()
    assert frame["candles"].to_list() == [5, 5]
    assert frame["open"].to_list() == [99.5, 104.5]
    assert frame["close"].to_list() == [104.0, 109.0]
    assert frame["high"].to_list() == [105.0, 110.0]
    assert frame["low"].to_list() == [99.0, 104.0]
    assert frame["volume"].to_list() == [5010.0, 5035.0]
    assert frame["count"].to_list() == [60, 85]
    assert frame["vwap"][0] == pytest.approx(volume_weighted_vwap(minutes.head(5)))
    later = minutes.slice(5, 5).filter(pl.col("vwap").is_not_nan())
    assert frame["vwap"][1] == pytest.approx(volume_weighted_vwap(later))
    hourly = con.sql("SELECT time, candles FROM resample('AAPL', '1m', INTERVAL 1 HOUR)").pl()
    assert hourly.rows() == [(datetime(2025, 8, 27, 13, 0, tzinfo=UTC), 10)]


# Other processes.


def test_reader_processes_never_block_the_writer(tmp_path: Path) -> None:
    """Two reader processes query in a loop through upserts and a compaction: no errors."""
    path = tmp_path / "data"
    batch = 200
    with open_store(path) as store:
        store.upsert(bulk_frame(0, batch))
        readers = [ReaderProcess(path, "hold"), ReaderProcess(path, "reopen")]
        try:
            for proc in readers:
                proc.wait_until_seen(batch)
            results = []
            for step in range(1, 5):
                results.append(store.upsert(bulk_frame(step * batch, batch)))
                if step == 2:
                    store.compact()
                for proc in readers:  # each reader saw this commit while it kept querying
                    proc.wait_until_seen((step + 1) * batch)
            reports = [proc.finish() for proc in readers]
        finally:
            for proc in readers:
                proc.kill()
        assert [r.inserted for r in results] == [batch] * 4
        assert store.stats.retries == 0 and store.stats.busy_failures == 0
    for report in reports:
        assert report["errors"] == []
        assert report["backwards"] == 0
        assert isinstance(report["queries"], int) and report["queries"] >= 5


WRITER = """
import sys
from pipeline.store import CandleStore
from tests.helpers.store import bulk_frame
store = CandleStore(sys.argv[1], verify_extensions=False)
size = int(sys.argv[2])
for step in range(1000):
    frame = bulk_frame(step * size, size)
    print(f"begin {step}", flush=True)
    store.upsert(frame)
    print(f"committed {step}", flush=True)
"""


def test_kill_during_a_write_leaves_a_readable_lake(tmp_path: Path) -> None:
    """SIGKILL while an upsert runs: the lake reads whole batches only, and recovers."""
    path = tmp_path / "data"
    size = 20_000
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(size)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert writer.stdout is not None
    try:
        while writer.stdout.readline().strip() != "committed 1":
            pass
        assert writer.stdout.readline().strip() == "begin 2"
        os.kill(writer.pid, signal.SIGKILL)  # batch 2 is being written now
    finally:
        writer.kill()
        writer.wait()
    con = connect(path, verify_extensions=False)
    try:
        total, distinct, checksum = con.execute(
            "SELECT count(*), count(DISTINCT (symbol, period, time)), sum(close) FROM candles"
        ).fetchone() or (None, None, None)
    finally:
        con.close()
    assert total in (2 * size, 3 * size)  # batch 2 entirely, or not at all
    assert distinct == total
    assert checksum == sum(range(total))
    with open_store(path, clock=lambda: datetime.now(UTC)) as store:
        store.upsert(bulk_frame(10 * size, 100))
        store.compact(retain=timedelta(0))  # also deletes the killed write's orphan file
        con = connect(path, verify_extensions=False)
        try:
            listed = con.execute("SELECT data_file FROM ducklake_list_files('lake', 'candles')")
            referenced = {Path(row[0]).name for row in listed.fetchall()}
        finally:
            con.close()
        on_disk = {file.name for file in (path / "data").rglob("*.parquet")}
        assert on_disk == referenced
        assert store.count() == total + 100
