"""Readers of the lake: the SQL views, other processes reading while ingest writes, crashes."""

from __future__ import annotations

import json
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

from pipeline.schema import CANDLE_SCHEMA
from pipeline.store import CandleStore, connect
from tests.test_store import MINUTE, T0, candle_frame, open_store

REPO = Path(__file__).resolve().parent.parent


def bulk_frame(first: int, n: int, *, symbols: int = 10) -> pl.DataFrame:
    """``n`` one-minute candles spread over ``symbols`` series, keys unique per ``first``."""
    rows = pl.int_range(first, first + n, eager=True).alias("i").to_frame()
    return rows.select(
        symbol=pl.format("S{}", pl.col("i") % symbols),
        period=pl.lit("1m"),
        time=pl.from_epoch(1_756_252_800_000 + (pl.col("i") // symbols) * 60_000, time_unit="ms"),
        open=pl.col("i").cast(pl.Float64),
        high=pl.col("i").cast(pl.Float64) + 1,
        low=pl.col("i").cast(pl.Float64) - 1,
        close=pl.col("i").cast(pl.Float64),
        volume=pl.lit(10.0),
        vwap=pl.col("i").cast(pl.Float64),
        count=pl.lit(3, pl.Int64),
        bid_volume=pl.lit(4.0),
        ask_volume=pl.lit(6.0),
        imp_volatility=pl.lit(float("nan")),
        open_interest=pl.lit(float("nan")),
        revision=pl.lit(0, pl.Int64),
        ingested_at=pl.lit(None, CANDLE_SCHEMA["ingested_at"]),
    ).with_columns(pl.col("time").dt.replace_time_zone("UTC"))


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

READER = """
import json, sys, threading
from pipeline.store import connect
path, mode = sys.argv[1], sys.argv[2]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
con = connect(path, verify_extensions=False)
queries, errors, backwards, last = 0, [], 0, -1
print("ready", flush=True)
while not stop.is_set():
    try:
        if mode == "reopen":  # `candles query`: a fresh connection per query
            con.close()
            con = connect(path, verify_extensions=False)
        n = con.execute("SELECT count(*) FROM candles").fetchone()[0]
        con.execute("SELECT count(*), max(missing_periods) FROM candle_gaps").fetchone()
        con.execute("SELECT sum(close) FROM latest_candles").fetchone()
        queries += 1
        backwards += n < last
        if n != last:
            print(json.dumps({"seen": n}), flush=True)
        last = n
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:300])
print(json.dumps({"queries": queries, "errors": errors, "backwards": backwards}), flush=True)
"""


class ReaderProcess:
    """A separate Python process querying the lake in a loop until told to stop."""

    def __init__(self, path: Path, mode: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", READER, str(path), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.line() == "ready"

    def line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def wait_until_seen(self, count: int) -> None:
        """Block until this reader has observed ``count`` rows (it reports every change)."""
        while True:
            line = self.line()
            assert line, "reader process ended early"
            if json.loads(line).get("seen") == count:
                return

    def finish(self) -> dict[str, object]:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        while "queries" not in (report := json.loads(self.line())):
            pass
        self.process.wait()
        assert isinstance(report, dict), f"the reader's report is not a JSON object: {report!r}"
        return report

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


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
from tests.test_store_readers import bulk_frame
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
