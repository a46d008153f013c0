"""CandleStore upkeep: connection recycling (issue 7, memory) and orphan data files."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import pipeline.store.writer
from pipeline.store import LAKE, CandleStore, StoreError
from tests.helpers.store import MINUTE, T0, candle_frame, open_store


def writer_memory(store: CandleStore) -> dict[str, int]:
    """DuckDB's own accounting of the store's connection, bytes per tag (non-zero only)."""
    rows = store._con.execute(
        "SELECT tag, memory_usage_bytes FROM duckdb_memory() WHERE memory_usage_bytes > 0"
    ).fetchall()
    return {str(tag): int(size) for tag, size in rows}


def test_connection_is_recycled_after_n_upserts_and_after_each_compaction(tmp_path: Path) -> None:
    """Every recycle_after upserts and every compaction open a fresh connection; data stays."""
    with open_store(tmp_path / "data", recycle_after=3, clock=lambda: datetime.now(UTC)) as store:
        first = store._con
        for batch in range(7):
            store.upsert(candle_frame(n=5, start=T0 + batch * 5 * MINUTE))
        assert store.stats.connections_recycled == 2
        assert store._con is not first
        store.compact()
        assert store.stats.connections_recycled == 3
        assert store.count() == 35
        assert store.recent("AAPL{=m}", 2)["close"].to_list() == [103.0, 104.0]
        assert store.upsert(candle_frame(n=5, start=T0 + 35 * MINUTE)).inserted == 5


def test_a_failed_reopen_keeps_the_working_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """If the fresh connection cannot open, the store keeps writing on the old one."""
    with open_store(tmp_path / "data", recycle_after=2) as store:
        kept = store._con

        def unreachable(*args: object, **kwargs: object) -> None:
            raise StoreError("cannot open the lake: catalog unreachable")

        monkeypatch.setattr(pipeline.store.writer, "open_lake", unreachable)
        with caplog.at_level(logging.WARNING, logger="pipeline.store.writer"):
            for batch in range(4):
                store.upsert(candle_frame(n=5, start=T0 + batch * 5 * MINUTE))
        assert store._con is kept
        assert store.stats.connections_recycled == 0
        assert store.count() == 20
        reopen_warnings = [r for r in caplog.records if "could not reopen" in r.getMessage()]
        assert len(reopen_warnings) == 2  # one try per recycle_after upserts, not per upsert


def test_writer_connection_caches_stay_small_through_compactions(tmp_path: Path) -> None:
    """Compactions do not pile file blocks into the writer's caches (was ~2.8 MB each)."""
    with open_store(tmp_path / "data", clock=lambda: datetime.now(UTC)) as store:
        for batch in range(16):
            store.upsert(candle_frame(n=60, start=T0 + batch * 60 * MINUTE))
            if batch % 8 == 7:
                store.compact()
        store.recent("AAPL{=m}", 100)  # a read after the last compaction, as the service does
        usage = writer_memory(store)
    assert "EXTERNAL_FILE_CACHE" not in usage, usage
    assert sum(usage.values()) < 512 * 1024, usage


def test_compaction_deletes_orphan_files_only_past_the_retention(tmp_path: Path) -> None:
    """A killed write's old Parquet file goes; a young one (a shard about to commit) stays."""
    path = tmp_path / "data"
    with open_store(path, clock=lambda: datetime.now(UTC)) as store:
        store.upsert(candle_frame(n=50))
        (referenced,) = (path / "data").rglob("*.parquet")
        folder = referenced.parent
        old_orphan = folder / "ducklake-00000000-0000-7000-8000-000000000001.parquet"
        young_orphan = folder / "ducklake-00000000-0000-7000-8000-000000000002.parquet"
        not_ours = folder / "README.txt"
        for copy in (old_orphan, young_orphan):
            shutil.copy(referenced, copy)
        not_ours.write_text("left by a person\n")
        two_hours_ago = time.time() - 2 * 3600
        for aged in (old_orphan, not_ours):
            os.utime(aged, (two_hours_ago, two_hours_ago))
        result = store.compact(retain=timedelta(hours=1))
        assert not old_orphan.exists()
        assert young_orphan.exists() and not_ours.exists() and referenced.exists()
        assert result.files_removed >= 1
        assert store.count() == 50


def test_reopening_the_writer_never_opens_the_catalog_with_a_second_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's sqlite3 touches a catalog once per process, never while DuckDB holds it open
    (closing its descriptor dropped DuckDB's locks: a reader died of SIGBUS)."""
    opened: list[str] = []
    real_connect = sqlite3.connect

    def counting(path: str | Path) -> sqlite3.Connection:
        opened.append(str(path))
        return real_connect(path)

    monkeypatch.setattr(sqlite3, "connect", counting)
    with open_store(tmp_path / "data", recycle_after=2, clock=lambda: datetime.now(UTC)) as store:
        for batch in range(6):
            store.upsert(candle_frame(n=5, start=T0 + batch * 5 * MINUTE))
        store.compact()
        assert store.stats.connections_recycled == 4
    with open_store(tmp_path / "data") as again:
        assert again.count() == 30
    assert opened == [str(tmp_path / "data" / "catalog.sqlite")]


def test_ducklake_still_compares_cut_offs_as_text_on_a_sqlite_catalog(tmp_path: Path) -> None:
    """Canary: DuckLake 1.5.5's older_than counts every snapshot of the cut-off's day as older.

    CandleStore.compact works around it (pipeline/store/writer.py, _expire_snapshots). When
    this fails after a DuckDB/DuckLake upgrade, the bug is fixed: drop the workaround.
    """
    path = tmp_path / "data"
    with open_store(path, clock=lambda: datetime.now(UTC)) as store:
        store.upsert(candle_frame(n=20))
        store.upsert(candle_frame(n=20, start=T0 + 20 * MINUTE))
        con = store._con
        newest = con.execute(f"SELECT max(snapshot_time) FROM ducklake_snapshots('{LAKE}')")
        row = newest.fetchone()
        assert row is not None
        # One microsecond after midnight of the snapshots' own day: typed, nothing is older.
        cut_off = row[0].replace(hour=0, minute=0, second=0, microsecond=1)
        young = con.execute(
            f"SELECT count(*) FROM ducklake_snapshots('{LAKE}') WHERE snapshot_time >= ?",
            [cut_off],
        ).fetchone()
        listed = con.execute(
            f"SELECT count(*) FROM ducklake_expire_snapshots('{LAKE}', dry_run => true, "
            "older_than => ?)",
            [cut_off],
        ).fetchone()
    assert young is not None and listed is not None
    assert young[0] >= 3
    assert listed[0] == young[0] - 1, "DuckLake compares cut-offs correctly now: see docstring"


@pytest.mark.soak
def test_live_upserts_leave_the_python_heap_flat(tmp_path: Path) -> None:
    """A year of flushes must not pile up Python objects: 1,500 live-sized upserts (50 new
    candles, no deletions, as a minute of live ingest flushes) grow the traced heap by less
    than 64 bytes each (DuckDB's caches still filling included: ~10 bytes per upsert at this
    point, ~0 after a few thousand; benchmarks/README.md, "Second pass")."""
    import gc
    import tracemalloc

    import polars as pl

    keys = candle_frame(n=0).select("symbol", "period", "time", "sequence")
    symbols = [f"S{i:02d}" for i in range(50)]

    def minute(k: int) -> pl.DataFrame:
        return pl.concat([candle_frame(s, n=1, start=T0 + k * MINUTE) for s in symbols])

    with open_store(tmp_path / "data", recycle_after=10**9) as store:
        for k in range(100):  # caches that fill once, before the measurement
            store.upsert(minute(k), keys)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for k in range(100, 1_600):
                store.upsert(minute(k), keys)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert store.count() == 1_600 * len(symbols)
    assert grown / 1_500 < 64, f"{grown / 1_500:.0f} bytes per upsert"
