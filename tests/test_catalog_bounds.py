"""Bounded catalog and files (issue 16): a store written for days keeps its catalog size,
Parquet file count and snapshot count bounded, readers never fail through compactions, and
compaction keeps what a reader's snapshot needs for exactly the configured retention.

The writes are what the ingest service sends: every ``flush_minutes`` of simulated time one
upsert of the candles completed since (1m and 5m of several symbols), the maintenance job
every ``maintain_minutes`` (retention by the simulated clock, then compaction, merging every
file at the first run of each simulated day as the product does each UTC day). DuckLake
stamps snapshots and files awaiting deletion with the real clock, so compaction runs on it,
with the snapshot retention scaled down with the simulation (:data:`RETAIN`); files awaiting
deletion go on the next real UTC day (see ``CandleStore.compact``), so within a test they
are counted, not deleted. Two reader processes (one holding its connection like a notebook,
one reconnecting like ``candles query``) query throughout. The default suite runs two
simulated days; the month is behind ``--run-soak`` and prints its figures (``-s``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from pipeline.schema import CANDLE_SCHEMA
from pipeline.store import CandleStore, CatalogStats, connect
from tests.helpers.store import ReaderProcess, open_store

MIB = 1 << 20
DAY = timedelta(days=1)
AWAITING_ROW_BYTES = 256
"""Catalog bytes one file awaiting deletion may take (its path and schedule time)."""
RETAIN = timedelta(seconds=5)
"""The snapshot retention in the simulations: the product's hour, scaled down with the clock
(and still far longer than any reader's query)."""


class SimulatedClock:
    """The store's clock: real time at the start plus the simulated time that has passed."""

    def __init__(self) -> None:
        self.origin = datetime.now(UTC).replace(microsecond=0)
        self.elapsed = timedelta(0)

    def __call__(self) -> datetime:
        return self.origin + self.elapsed


def completed(symbols: int, start: datetime, end: datetime) -> pl.DataFrame:
    """The 1m and 5m candles of ``symbols`` series that complete in ``[start, end)``."""
    start, end = (t.replace(second=0, microsecond=0) for t in (start, end))
    frames = []
    for period, step in (("1m", 1), ("5m", 5)):
        first = start + (-(start.minute % step) % step) * timedelta(minutes=1)
        times = pl.datetime_range(
            first, end - timedelta(minutes=step), timedelta(minutes=step), time_zone="UTC",
            eager=True,
        )  # fmt: skip
        if times.is_empty():
            continue
        grid = pl.DataFrame({"time": times}).join(
            pl.DataFrame({"symbol": [f"S{i:03d}" for i in range(symbols)]}), how="cross"
        )
        index = pl.col("time").dt.epoch("s") // 60
        frames.append(
            grid.select(
                "symbol",
                period=pl.lit(period),
                time=pl.col("time").dt.cast_time_unit("ms"),
                open=index.cast(pl.Float64),
                high=index.cast(pl.Float64) + 1,
                low=index.cast(pl.Float64) - 1,
                close=index.cast(pl.Float64) + 0.5,
                volume=pl.lit(100.0),
                vwap=index.cast(pl.Float64),
                count=pl.lit(7, pl.Int64),
                bid_volume=pl.lit(40.0),
                ask_volume=pl.lit(60.0),
                imp_volatility=pl.lit(float("nan")),
                open_interest=pl.lit(float("nan")),
                revision=pl.lit(0, pl.Int64),
                ingested_at=pl.lit(None, CANDLE_SCHEMA["ingested_at"]),
                sequence=pl.lit(0, pl.Int32),
            )
        )
    return pl.concat(frames).cast(CANDLE_SCHEMA)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Day:
    """The store at the end of one simulated day (after that day's last maintenance)."""

    day: int
    stats: CatalogStats
    rows: int
    stale_snapshots: int
    """Snapshots (the newest aside) older than ``RETAIN`` when the last compaction began."""

    def __str__(self) -> str:
        s = self.stats
        return (
            f"day {self.day:3d}  catalog {(s.catalog_bytes or 0) / MIB:6.2f} MiB "
            f"(WAL {(s.catalog_wal_bytes or 0) / MIB:5.2f})  "
            f"snapshots {s.snapshots:4d}  files {s.data_files:3d}  "
            f"delete files {s.delete_files:2d}  data {s.data_bytes / MIB:7.2f} MiB  "
            f"inlined tables {s.inlined_tables}  awaiting deletion {s.awaiting_deletion:4d}  "
            f"rows {self.rows:,}  stale snapshots {self.stale_snapshots}"
        )


def stale_snapshots(path: Path, compacted_at: datetime) -> int:
    """Snapshots but the newest that were already older than ``RETAIN`` when the compaction
    that began at ``compacted_at`` ran: it should have expired every one of them."""
    reader = connect(path, verify_extensions=False)
    try:
        row = reader.execute(
            "SELECT count(*) FROM ducklake_snapshots('lake') WHERE snapshot_time < ?"
            " AND snapshot_id < (SELECT max(snapshot_id) FROM ducklake_snapshots('lake'))",
            [compacted_at - RETAIN],
        ).fetchone()
    finally:
        reader.close()
    assert row is not None
    return int(row[0])


def simulate(
    path: Path,
    *,
    days: int,
    symbols: int,
    flush_minutes: int,
    maintain_minutes: int,
    retention: dict[str, timedelta],
    on_day: Callable[[Day], None] = print,
) -> tuple[list[Day], list[dict[str, object]]]:
    """Write ``days`` simulated days as the service would, with readers; the store at the end
    of each day, and the readers' reports."""
    clock = SimulatedClock()
    history: list[Day] = []
    with open_store(path, clock=lambda: datetime.now(UTC)) as store:
        store.upsert(completed(symbols, clock() - timedelta(hours=1), clock()))
        readers = [ReaderProcess(path, mode, pause=0.05) for mode in ("hold", "reopen")]
        try:
            minute = 0
            compacted_at = datetime.now(UTC)
            while minute < days * 24 * 60:
                start = clock()
                minute += flush_minutes
                clock.elapsed = timedelta(minutes=minute)
                store.upsert(completed(symbols, start, clock()))
                if minute % maintain_minutes == 0:
                    store.prune(retention, now=clock())
                    first_of_day = minute % (24 * 60) <= maintain_minutes
                    compacted_at = datetime.now(UTC)
                    store.compact(retain=RETAIN, full=first_of_day)
                if minute % (24 * 60) == 0:
                    stale = stale_snapshots(path, compacted_at)
                    day = Day(minute // (24 * 60), store.catalog_stats(), store.count(), stale)
                    history.append(day)
                    on_day(history[-1])
        finally:
            reports = [reader.finish() for reader in readers]
    return history, reports


def _assert_bounded(history: list[Day], reports: list[dict[str, object]], compare_day: int) -> None:
    base, end = history[compare_day - 1].stats, history[-1].stats
    for report in reports:
        assert report["errors"] == [], report
        assert isinstance(report["queries"], int) and report["queries"] > 0
        # (a reader's count can go down: retention removes candles)
    # Snapshots: each compaction expired every one older than RETAIN (real seconds), so only
    # those of the last RETAIN remain however many days passed. (How many that is depends on
    # how fast this box wrote them, so it is not compared with day 1.)
    assert [day.stale_snapshots for day in history] == [0] * len(history), history
    assert end.data_files <= base.data_files + 2, (base, end)
    assert end.delete_files == 0, end
    assert end.inlined_tables == base.inlined_tables, (base, end)
    assert end.catalog_bytes is not None and base.catalog_bytes is not None
    # The catalog file holds the live files, the recent snapshots and one small row per file
    # awaiting deletion. Those rows and files go at the first compaction of the next real UTC
    # day (test_snapshots_expire_after_the_hour_and_their_files_go_the_next_day), which a
    # simulation minutes long does not reach: they are the only growth allowed here.
    waiting = end.awaiting_deletion - base.awaiting_deletion
    allowed = base.catalog_bytes * 1.25 + 256 * 1024 + waiting * AWAITING_ROW_BYTES
    assert end.catalog_bytes <= allowed, (base, end)
    assert (end.catalog_wal_bytes or 0) <= 16 * MIB, end


@pytest.mark.timeout(300)
def test_two_simulated_days_keep_catalog_files_and_snapshots_bounded(tmp_path: Path) -> None:
    """Day 2 ends with the catalog, files and snapshots of day 1; readers never fail."""
    history, reports = simulate(
        tmp_path / "data", days=2, symbols=10, flush_minutes=60, maintain_minutes=240,
        retention={"1m": timedelta(days=1)},
    )  # fmt: skip
    _assert_bounded(history, reports, compare_day=1)
    # Retention bounds the data too: day 2 holds one day of 1m candles, like day 1.
    assert history[-1].rows <= history[0].rows * 1.5


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_a_simulated_month_keeps_catalog_files_and_snapshots_bounded(tmp_path: Path) -> None:
    """Thirty days of flushes every 5 minutes: the end looks like day 1, and once retention
    is full (1m kept 7 days, 5m 14) the data stops growing too; readers never fail."""
    history, reports = simulate(
        tmp_path / "data", days=30, symbols=20, flush_minutes=5, maintain_minutes=60,
        retention={"1m": timedelta(days=7), "5m": timedelta(days=14)},
    )  # fmt: skip
    print("\n" + "\n".join(str(day) for day in history))
    print("catalog rows per table at the end:", _catalog_rows(tmp_path / "data"))
    _assert_bounded(history, reports, compare_day=1)
    full, end = history[15], history[-1]
    assert end.rows <= full.rows * 1.05, (full, end)
    assert end.stats.data_bytes <= full.stats.data_bytes * 1.25, (full, end)


def _catalog_rows(path: Path) -> dict[str, int]:
    """Rows per table of the SQLite catalog (read-only), largest first."""
    with contextlib.closing(
        sqlite3.connect(f"file:{path / 'catalog.sqlite'}?mode=ro", uri=True)
    ) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {name: db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}
    return dict(sorted(rows.items(), key=lambda item: -item[1])[:8])


# ---------------------------------------------------------------- retention of old snapshots


def _files(path: Path) -> set[Path]:
    return set((path / "data").rglob("*.parquet"))


def _snapshot_store(path: Path, clock: SimulatedClock) -> CandleStore:
    """A store whose newest snapshot is three hourly files: what a reader then holds."""
    store = open_store(path, clock=clock)
    for hour in range(3):
        start = clock.origin - timedelta(hours=3 - hour)
        store.upsert(completed(3, start, start + timedelta(hours=1)))
    return store


def _half_hour(store: CandleStore, clock: SimulatedClock) -> int:
    """Store the next half hour's candles (a fourth file); how many there were."""
    frame = completed(3, clock.origin, clock.origin + timedelta(minutes=30))
    store.upsert(frame)
    return frame.height


@pytest.mark.parametrize("held", [timedelta(0), timedelta(minutes=10), timedelta(minutes=59)])
def test_a_reader_holding_a_snapshot_within_the_hour_reads_on_through_compaction(
    tmp_path: Path, held: timedelta
) -> None:
    """A reader that began its snapshot `held` ago (up to the 1 h ``retain``) keeps reading
    the same rows through a compaction that merged its files away, and its snapshot stays."""
    path = tmp_path / "data"
    clock = SimulatedClock()
    with _snapshot_store(path, clock) as store:
        reader = connect(path, verify_extensions=False)
        try:
            reader.execute("BEGIN")  # the reader's snapshot: three files
            seen = reader.execute("SELECT count(*), sum(close) FROM candles").fetchone()
            held_files = _files(path)
            snapshots = store.catalog_stats().snapshots
            _half_hour(store, clock)
            clock.elapsed = held  # the store's clock: the reader has held it this long
            result = store.compact()  # the product's retain: one hour
            assert result.files_before == 4 and result.files_after == 1
            assert result.snapshots_expired == 0
            assert store.catalog_stats().snapshots > snapshots
            assert held_files <= _files(path)
            assert reader.execute("SELECT count(*), sum(close) FROM candles").fetchone() == seen
            reader.execute("COMMIT")
        finally:
            reader.close()


def test_snapshots_expire_after_the_hour_and_their_files_go_the_next_day(tmp_path: Path) -> None:
    """Past ``retain`` the old snapshots expire; their merged-away files are deleted by the
    first compaction on a later UTC day (DuckLake's text cut-off allows no finer rule)."""
    path = tmp_path / "data"
    clock = SimulatedClock()
    with _snapshot_store(path, clock) as store:
        old_files, rows = _files(path), store.count()
        rows += _half_hour(store, clock)
        clock.elapsed = timedelta(hours=2)
        result = store.compact()
        assert result.snapshots_expired >= 4
        assert store.catalog_stats().snapshots <= 2
        clock.elapsed = timedelta(days=1, hours=2)
        store.compact()
        assert not old_files & _files(path)
        assert store.catalog_stats().data_files == len(_files(path)) == 1
        assert store.count() == rows
