"""CandleStore over a real DuckLake lake (SQLite catalog + Parquet) under tmp_path."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from pipeline.schema import CANDLE_COLUMNS, CANDLE_SCHEMA
from pipeline.store import LAKE, CandleStore, StoreBusyError, StoreError, connect, parse_catalog
from tests.helpers.store import INGESTED, MINUTE, T0, T0_MS, candle_frame, keys, open_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CandleStore]:
    """One lake for the module; each test writes its own series (see ``sym``)."""
    with open_store(tmp_path_factory.mktemp("shared") / "data") as opened:
        yield opened


@pytest.fixture
def sym(request: pytest.FixtureRequest) -> str:
    """A symbol of this test's own, so tests sharing the lake do not see each other."""
    return "T" + hashlib.sha1(request.node.name.encode()).hexdigest()[:8].upper()


def snapshot_count(path: Path) -> int:
    con = connect(path, verify_extensions=False)
    try:
        row = con.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchone()
        assert row is not None
        return int(row[0])
    finally:
        con.close()


# Layout and opening.


def test_layout_is_one_folder_with_wal_catalog_and_parquet(tmp_path: Path) -> None:
    """Opening creates catalog.sqlite in WAL mode and writes Parquet under data/."""
    path = tmp_path / "data"
    with open_store(path) as store:
        store.upsert(candle_frame(n=50))  # more than DuckLake inlines into the catalog
    with sqlite3.connect(path / "catalog.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    assert list((path / "data").rglob("*.parquet"))


def test_default_open_verifies_extension_signatures(tmp_path: Path) -> None:
    """The default (signature-checked) extension load works offline and reopens the lake."""
    with CandleStore(tmp_path / "data") as store:
        store.upsert(candle_frame())
    with CandleStore(tmp_path / "data") as store:
        assert store.count() == 3


def test_a_moved_store_folder_still_opens(tmp_path: Path) -> None:
    """The folder is self-contained: copied elsewhere, readers and the writer use it."""
    with open_store(tmp_path / "old" / "data") as store:
        store.upsert(candle_frame(n=30))
    moved = (tmp_path / "old").rename(tmp_path / "new") / "data"
    con = connect(moved, verify_extensions=False)
    try:
        assert con.execute("SELECT count(*) FROM candles").fetchone() == (30,)
    finally:
        con.close()
    with open_store(moved) as store:
        assert store.upsert(candle_frame(n=30, start=T0 + 30 * MINUTE)).inserted == 30
        assert store.count() == 60
    assert len(list(moved.rglob("*.parquet"))) == 2  # the new file went to the new place
    assert not (tmp_path / "old").exists()


def test_schema_matches_the_contract(store: CandleStore) -> None:
    """The candles table has exactly the contract's columns, in order."""
    con = connect(store.root, verify_extensions=False)
    try:
        names = [row[0] for row in con.execute("DESCRIBE candles").fetchall()]
    finally:
        con.close()
    assert tuple(names) == CANDLE_COLUMNS


# Upsert.


def test_upsert_round_trips_values_and_sets_ingested_at(store: CandleStore, sym: str) -> None:
    """Rows come back as written (NaN kept); a null ingested_at takes the store clock."""
    frame = candle_frame(sym)
    result = store.upsert(frame)
    assert (result.inserted, result.updated, result.unchanged, result.deleted) == (3, 0, 0, 0)
    back = store.history(f"{sym}{{=m}}")
    assert back.schema == pl.Schema(CANDLE_SCHEMA)
    assert back.drop("ingested_at").equals(frame.drop("ingested_at"))
    assert back["ingested_at"].to_list() == [INGESTED] * 3


def test_given_ingested_at_is_kept(store: CandleStore, sym: str) -> None:
    """An ingested_at set by the caller is stored as given."""
    when = datetime(2025, 1, 1, tzinfo=UTC)
    store.upsert(candle_frame(sym, n=1).with_columns(pl.lit(when).alias("ingested_at")))
    assert store.history(f"{sym}{{=m}}")["ingested_at"].to_list() == [when]


def test_same_batch_twice_changes_nothing(store: CandleStore, sym: str) -> None:
    """Writing a flush again reports it unchanged and commits no new snapshot."""
    frame = candle_frame(sym, n=20)
    store.upsert(frame)
    before = snapshot_count(store.root)
    again = store.upsert(frame)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 20)
    assert snapshot_count(store.root) == before
    assert store.history(f"{sym}{{=m}}").height == 20


def test_changed_values_replace_the_stored_row(store: CandleStore, sym: str) -> None:
    """A revised candle replaces its stored row; other rows stay; no duplicates appear."""
    store.upsert(candle_frame(sym, n=3))
    revised = candle_frame(sym, n=3, revision=1).with_columns(
        pl.when(pl.col("time") == T0 + MINUTE).then(555.0).otherwise(pl.col("close")).alias("close")
    )
    result = store.upsert(revised)
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 2)
    back = store.history(f"{sym}{{=m}}")
    assert back["close"].to_list() == [100.0, 555.0, 102.0]
    assert back["revision"].to_list() == [0, 1, 0]


def test_revision_alone_does_not_rewrite(store: CandleStore, sym: str) -> None:
    """Equal values with another revision (a restart counts from 0 again) are unchanged."""
    store.upsert(candle_frame(sym, n=2, revision=3))
    result = store.upsert(candle_frame(sym, n=2, revision=0))
    assert result.unchanged == 2
    assert store.history(f"{sym}{{=m}}")["revision"].to_list() == [3, 3]


def test_batch_is_deduplicated_newest_revision_first(store: CandleStore, sym: str) -> None:
    """Duplicate keys in one batch: the highest revision wins, then the last row."""
    older = candle_frame(sym, n=1, close=1.0, revision=2)
    stale = candle_frame(sym, n=1, close=2.0, revision=1)
    tie_first = candle_frame(sym, n=1, start=T0 + MINUTE, close=3.0, revision=0)
    tie_last = candle_frame(sym, n=1, start=T0 + MINUTE, close=4.0, revision=0)
    result = store.upsert(pl.concat([older, stale, tie_first, tie_last]))
    assert result.inserted == 2
    assert store.history(f"{sym}{{=m}}")["close"].to_list() == [1.0, 4.0]


def test_deletions_apply_in_the_same_transaction(store: CandleStore, sym: str) -> None:
    """Deletions remove stored keys; a key deleted and upserted in one batch is upserted."""
    store.upsert(candle_frame(sym, n=4))
    gone = keys(candle_frame(sym, n=1))
    both = keys(candle_frame(sym, n=1, start=T0 + MINUTE))
    update = candle_frame(sym, n=1, start=T0 + MINUTE, close=9.0, revision=1)
    result = store.upsert(update, pl.concat([gone, both]))
    assert result.deleted == 2
    assert result.inserted == 1
    assert store.history(f"{sym}{{=m}}")["close"].to_list() == [9.0, 102.0, 103.0]


def test_deleting_a_missing_key_is_a_no_op(store: CandleStore, sym: str) -> None:
    """Deleting keys that are not stored deletes nothing and fails nothing."""
    store.upsert(candle_frame(sym, n=2))
    result = store.upsert(
        candle_frame(sym, n=0), keys(candle_frame(sym, n=1, start=T0 + 10 * MINUTE))
    )
    assert result.deleted == 0
    assert store.history(f"{sym}{{=m}}").height == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop("vwap"), "missing columns ['vwap']"),
        (lambda f: f.with_columns(pl.lit(1).alias("extra")), "unexpected columns ['extra']"),
        (lambda f: f.with_columns(pl.col("time").dt.replace_time_zone(None)), "'time'"),
        (lambda f: f.with_columns(pl.lit(None, pl.String).alias("symbol")), "null key"),
        (lambda f: f.with_columns(pl.lit("x").alias("close")), "does not fit"),
    ],
)
def test_bad_batches_are_rejected_with_a_clear_error(
    store: CandleStore, sym: str, change: object, message: str
) -> None:
    """A batch that does not match the contract names what is wrong; nothing is written."""
    frame = change(candle_frame(sym))  # type: ignore[operator]
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        store.upsert(frame)
    assert store.history(f"{sym}{{=m}}").height == 0


# Reads.


def test_resume_points_come_from_the_newest_stored_candle(tmp_path: Path) -> None:
    """resume_point is the newest stored time per series; resume_points answers all at once."""
    store = open_store(tmp_path / "data")
    store.upsert(candle_frame("AAPL", "1m", 5))
    store.upsert(candle_frame("AAPL", "1d", 2, step=timedelta(days=1)))
    store.upsert(candle_frame("SPY", "5m,tho=true", 3, step=5 * MINUTE))
    assert store.resume_point("AAPL{=m}") == T0_MS + 4 * 60_000
    assert store.resume_point("AAPL{=1d}") == T0_MS + 86_400_000
    assert store.resume_point("MSFT{=m}") is None
    assert store.resume_points() == {
        "AAPL{=m}": T0_MS + 4 * 60_000,
        "AAPL{=d}": T0_MS + 86_400_000,
        "SPY{=5m,tho=true}": T0_MS + 10 * 60_000,
    }
    assert store.resume_points(["AAPL{=1m}", "QQQ{=m}"]) == {"AAPL{=m}": T0_MS + 4 * 60_000}
    store.close()


def test_history_bounds_are_start_inclusive_end_exclusive(store: CandleStore, sym: str) -> None:
    """history(start, end) takes datetimes or ms, includes start and excludes end."""
    store.upsert(candle_frame(sym, n=10))
    by_datetime = store.history(f"{sym}{{=m}}", T0 + 2 * MINUTE, T0 + 5 * MINUTE)
    by_ms = store.history(f"{sym}{{=m}}", T0_MS + 2 * 60_000, T0_MS + 5 * 60_000)
    assert by_datetime["close"].to_list() == [102.0, 103.0, 104.0]
    assert by_ms.equals(by_datetime)
    assert store.history(f"{sym}{{=m}}", start=T0 + 8 * MINUTE)["close"].to_list() == [108.0, 109.0]
    with pytest.raises(ValueError, match="timezone-aware"):
        store.history(f"{sym}{{=m}}", datetime(2025, 8, 27))


def test_recent_returns_the_newest_n_oldest_first(store: CandleStore, sym: str) -> None:
    """recent(n) is the last n candles of the series in time order."""
    store.upsert(candle_frame(sym, n=10))
    store.upsert(candle_frame(sym + "X", n=10))
    assert store.recent(f"{sym}{{=m}}", 3)["close"].to_list() == [107.0, 108.0, 109.0]
    assert store.recent(f"{sym}{{=m}}", 0).height == 0
    with pytest.raises(ValueError, match="n must be"):
        store.recent(f"{sym}{{=m}}", -1)


def newest_by_sql(store: CandleStore, series: str, n: int) -> list[float]:
    """The oracle for recent(): the unbounded query, closes oldest first."""
    frame = store.history(series)
    return frame["close"].tail(n).to_list()


def test_recent_is_exact_across_gaps_wider_than_its_first_bound(
    store: CandleStore, sym: str
) -> None:
    """recent() widens its time bound over gaps (weeks between 1m candles) and still returns n."""
    series = f"{sym}{{=m}}"
    store.upsert(candle_frame(sym, n=12, step=timedelta(days=7)))
    store.upsert(candle_frame(sym, n=3, start=T0 + 84 * timedelta(days=7)))
    assert store.recent(series, 5)["close"].to_list() == newest_by_sql(store, series, 5)
    assert store.recent(series, 50)["close"].to_list() == newest_by_sql(store, series, 50)
    assert store.recent(series, 50).height == 15


def test_recent_sees_newer_candles_of_another_writer_and_deletions(tmp_path: Path) -> None:
    """recent()'s remembered newest time is a hint: other writers' and deleted rows stay exact."""
    series = "AAPL{=m}"
    with open_store(tmp_path / "data") as first, open_store(tmp_path / "data") as second:
        first.upsert(candle_frame(n=20))
        assert first.recent(series, 3)["close"].to_list() == [117.0, 118.0, 119.0]
        second.upsert(candle_frame(n=5, start=T0 + 20 * MINUTE, close=200.0))
        assert first.recent(series, 3)["close"].to_list() == [202.0, 203.0, 204.0]
        first.upsert(candle_frame(n=0), deletions=keys(first.recent(series, 10)))
        assert first.recent(series, 3)["close"].to_list() == [112.0, 113.0, 114.0]
        first.upsert(candle_frame(n=2, start=T0 + 40 * MINUTE, close=300.0))
        assert first.recent(series, 3)["close"].to_list() == [114.0, 300.0, 301.0]


def test_unknown_series_key_is_a_clear_error(store: CandleStore) -> None:
    """A malformed series key raises the symbol parser's ValueError."""
    with pytest.raises(ValueError, match="no candle period"):
        store.history("AAPL")


# Catalog URLs and secrets.


def test_catalog_urls(tmp_path: Path) -> None:
    """sqlite: and postgres: URLs parse; others fail naming the accepted forms."""
    assert parse_catalog(None, tmp_path).target == str(tmp_path / "catalog.sqlite")
    assert parse_catalog("sqlite:/x/c.sqlite", tmp_path).attach_target == "sqlite:/x/c.sqlite"
    spec = parse_catalog("postgres:dbname=lake host=db password=hunter2", tmp_path)
    assert spec.kind == "postgres"
    assert "hunter2" not in repr(spec)
    with pytest.raises(ValueError, match="'sqlite:<path") as raised:
        parse_catalog("mysql:password=hunter2", tmp_path)
    assert "hunter2" not in str(raised.value)


def test_unreachable_postgres_catalog_fails_without_leaking_the_password(tmp_path: Path) -> None:
    """The postgres path loads its extension; a connection failure hides the password."""
    catalog = "postgres:host=127.0.0.1 port=1 dbname=lake user=u password=hunter2 connect_timeout=1"
    with pytest.raises(StoreError) as raised:
        open_store(tmp_path / "data", catalog=catalog)
    assert "hunter2" not in str(raised.value)
    assert "cannot open the lake" in str(raised.value)


def test_connect_without_a_lake_says_so(tmp_path: Path) -> None:
    """A reader pointed at an empty folder is told there is no store there."""
    with pytest.raises(StoreError, match="no candle store"):
        connect(tmp_path / "nothing", verify_extensions=False)


# Compaction.


def test_compaction_merges_files_and_removes_the_old_ones(tmp_path: Path) -> None:
    """compact() leaves one data file, deletes the merged-away ones and keeps every row."""
    path = tmp_path / "data"
    # DuckLake stamps snapshots with the wall clock, so the cut-off must use it too.
    with open_store(path, clock=lambda: datetime.now(UTC)) as store:
        for batch in range(4):
            store.upsert(candle_frame(n=20, start=T0 + batch * 20 * MINUTE))
        # Revise 15 of the first file's 20 rows: a delete file plus a data file.
        store.upsert(candle_frame(n=15, close=7.0, revision=1))
        before = sorted((path / "data").rglob("*.parquet"))
        result = store.compact(retain=timedelta(0))
        after = sorted((path / "data").rglob("*.parquet"))
        assert result.files_before == 5
        assert result.files_after == 1
        assert result.snapshots_expired > 0
        assert len(after) == 1 and after[0] not in before
        assert store.count() == 80
        assert store.recent("AAPL{=m}", 80)["close"].head(2).to_list() == [7.0, 8.0]


def test_compaction_keeps_files_a_reader_snapshot_still_needs(tmp_path: Path) -> None:
    """With the default retention a reader mid-transaction keeps reading after compaction."""
    path = tmp_path / "data"
    with open_store(path) as store:
        for batch in range(3):
            store.upsert(candle_frame(n=20, start=T0 + batch * 20 * MINUTE))
        reader = connect(path, verify_extensions=False)
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT sum(close) FROM candles").fetchone() is not None
            store.compact()
            row = reader.execute("SELECT count(*), sum(volume) FROM candles").fetchone()
            reader.execute("COMMIT")
        finally:
            reader.close()
        assert row is not None and row[0] == 60


def test_compaction_keeps_snapshots_and_files_younger_than_the_retention(tmp_path: Path) -> None:
    """compact(retain=1h) with the real clock expires no snapshot and deletes no file of the
    last hour, so a reader on any of them (time travel included) still reads (issue 14)."""
    path = tmp_path / "data"
    with open_store(path, clock=lambda: datetime.now(UTC)) as store:
        versions: list[int] = []
        for batch in range(3):
            store.upsert(candle_frame(n=20, start=T0 + batch * 20 * MINUTE))
            reader = connect(path, verify_extensions=False)
            try:
                versions.append(_current_snapshot(reader))
            finally:
                reader.close()
        files = sorted((path / "data").rglob("*.parquet"))
        result = store.compact(retain=timedelta(hours=1))
        assert result.files_after < result.files_before, "nothing was merged: no test"
        assert result.snapshots_expired == 0
        assert result.files_removed == 0
        assert [f for f in files if not f.exists()] == []
        reader = connect(path, verify_extensions=False)
        try:
            counts = [
                _count(reader, f"SELECT count(*) FROM candles AT (VERSION => {version})")
                for version in versions
            ]
        finally:
            reader.close()
        assert counts == [20, 40, 60]


def _current_snapshot(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute(f"SELECT max(snapshot_id) FROM ducklake_snapshots('{LAKE}')").fetchone()
    assert row is not None
    return int(row[0])


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_reopening_the_writer_leaves_other_catalog_connections_of_the_process_alone(
    tmp_path: Path,
) -> None:
    """A writer reopening its connection (every recycle_after upserts, after compaction) never
    opens the catalog with a second SQLite library: in one process that drops the locks of the
    SQLite inside DuckDB, so it took the catalog for unused, checkpointed and deleted the WAL
    and its shared-memory index under a reader's feet ("database disk image is malformed",
    'disk I/O error'; a mapped -shm truncated that way is a SIGBUS, issue 14)."""
    path = tmp_path / "data"
    with open_store(path, recycle_after=100_000) as store:
        store.upsert(candle_frame(n=2))
        reader = connect(path, verify_extensions=False)
        try:
            reader.execute("BEGIN")
            assert _count(reader, "SELECT count(*) FROM candles") == 2
            for batch in range(1, 40):
                store.upsert(candle_frame(n=2, start=T0 + batch * 2 * MINUTE))
            shm = path / "catalog.sqlite-shm"
            inode = shm.stat().st_ino
            store._recycle()
            assert shm.exists() and shm.stat().st_ino == inode, "the WAL index was replaced"
            assert _count(reader, f"SELECT count(*) FROM ducklake_snapshots('{LAKE}')") >= 2
            reader.execute("COMMIT")
            assert _count(reader, "SELECT count(*) FROM candles") == 80
        finally:
            reader.close()


def test_a_catalog_in_rollback_journal_mode_is_switched_to_wal(tmp_path: Path) -> None:
    """An existing catalog not in WAL mode (an older store) is switched on the writer's open."""
    path = tmp_path / "data"
    with open_store(path) as store:
        store.upsert(candle_frame(n=3))
    with sqlite3.connect(path / "catalog.sqlite") as db:
        assert db.execute("PRAGMA journal_mode = DELETE").fetchone() == ("delete",)
    db.close()
    with open_store(path) as store:
        assert store.count() == 3
    with sqlite3.connect(path / "catalog.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


# Transient collisions with another writer.

LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")  # what a second DuckLake writer holds while it commits
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
print("released", flush=True)
sys.stdin.readline()
"""


class CatalogLocker:
    """Another process holding the SQLite catalog's write lock until told to let go."""

    def __init__(self, catalog: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(catalog)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "released"

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def test_locked_catalog_is_retried_with_backoff_and_counted(tmp_path: Path) -> None:
    """'database is locked' is retried after a backoff wait; the retry is counted."""
    path = tmp_path / "data"
    waits: list[float] = []
    with open_store(path) as store:
        store.upsert(candle_frame(n=1))
        locker = CatalogLocker(path / "catalog.sqlite")
        try:

            def sleep(seconds: float) -> None:
                waits.append(seconds)
                if len(waits) == 1:
                    locker.release()  # the other writer finishes during our first wait

            store._sleep = sleep
            result = store.upsert(candle_frame(n=5, start=T0 + MINUTE))
        finally:
            locker.close()
        assert result.inserted == 5 and result.retries == 1
        assert store.stats.retries == 1 and store.stats.busy_failures == 0
        assert len(waits) == 1 and 0.025 <= waits[0] <= 0.05
        assert store.count() == 6


def test_retries_are_bounded_then_busy_error_and_nothing_written(tmp_path: Path) -> None:
    """A lock held through every retry ends in StoreBusyError; the store stays usable."""
    path = tmp_path / "data"
    waits: list[float] = []
    with open_store(path, max_retries=3, sleep=waits.append) as store:
        store.upsert(candle_frame(n=1))
        locker = CatalogLocker(path / "catalog.sqlite")
        try:
            with pytest.raises(StoreBusyError, match="3 retries"):
                store.upsert(candle_frame(n=5, start=T0 + MINUTE))
            doubling = zip(waits, [0.05, 0.1, 0.2], strict=True)
            assert all(limit / 2 <= wait <= limit for wait, limit in doubling)
            assert store.stats.busy_failures == 1 and store.stats.retries == 3
            locker.release()
        finally:
            locker.close()
        assert store.count() == 1
        assert store.upsert(candle_frame(n=5, start=T0 + MINUTE)).inserted == 5
