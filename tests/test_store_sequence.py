"""Candles that share a millisecond (tick/volume/price periods) are all kept (issue 7, §4.2).

The key is (symbol, period, time, sequence) from the manager's frames through the upsert,
deletions, warm start and the reader's views; a store made before the ``sequence`` column
is migrated on open, once, also when several processes open it at the same time.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from pipeline.candles import CandleDataManager
from pipeline.dxlink import REMOVE_EVENT, SNAPSHOT_BEGIN, SNAPSHOT_END, Candle, index_of
from pipeline.schema import CANDLE_COLUMNS
from pipeline.store import TABLE, CandleStore, connect, parse_catalog
from pipeline.store.lake import has_sequence_column, migrate_sequence_column, open_lake, rollback
from tests.helpers.store import open_and_count

T0 = 1_756_303_200_000  # 2025-08-27T14:00Z
TICKS = "AAPL{=t}"
INGESTED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
# (time offset ms, sequence, close): three ticks in the first millisecond, one later; the
# newest completes the others (tick candles complete only by a newer one, §6.5).
TICK_ROWS = [(0, 0, 10.0), (0, 1, 11.0), (0, 2, 12.0), (5, 0, 13.0)]

# The candles table as the version before `sequence` created it (sql/schema.sql then).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS candles (
    symbol         VARCHAR     NOT NULL,
    period         VARCHAR     NOT NULL,
    time           TIMESTAMPTZ NOT NULL,
    open           DOUBLE,
    high           DOUBLE,
    low            DOUBLE,
    close          DOUBLE,
    volume         DOUBLE,
    vwap           DOUBLE,
    count          BIGINT,
    bid_volume     DOUBLE,
    ask_volume     DOUBLE,
    imp_volatility DOUBLE,
    open_interest  DOUBLE,
    revision       BIGINT      NOT NULL,
    ingested_at    TIMESTAMPTZ NOT NULL
);
ALTER TABLE candles SET SORTED BY (symbol, period, time);
"""
OLD_ROWS = """
INSERT INTO candles VALUES
    ('AAPL', '1m', TIMESTAMPTZ '2025-08-27 14:00:00+00', 1, 2, 0.5, 1.5, 100, 1.2, 5,
     40, 60, 'NaN', 'NaN', 0, TIMESTAMPTZ '2025-08-27 14:01:00+00'),
    ('AAPL', '1m', TIMESTAMPTZ '2025-08-27 14:01:00+00', 2, 3, 1.5, 2.5, 100, 2.2, 5,
     40, 60, 'NaN', 'NaN', 0, TIMESTAMPTZ '2025-08-27 14:02:00+00')
"""


def tick(offset_ms: int, sequence: int, close: float, flags: int = 0) -> Candle:
    """A tick candle at ``T0 + offset_ms`` with its index from time and sequence (§4.2)."""
    time = T0 + offset_ms
    index = index_of(time, sequence)
    if flags & REMOVE_EVENT:
        return Candle(TICKS, time, sequence, flags=flags, index=index)
    return Candle(
        TICKS, time, sequence, flags=flags, index=index, count=1,
        open=close, high=close, low=close, close=close, volume=1.0, vwap=close,
    )  # fmt: skip


def ticks_snapshot() -> list[Candle]:
    """TICK_ROWS as one snapshot, newest first as the server sends it (§6.3)."""
    events = [tick(*row) for row in reversed(TICK_ROWS)]
    events[0] = tick(*TICK_ROWS[-1], flags=SNAPSHOT_BEGIN)
    events[-1] = tick(*TICK_ROWS[0], flags=SNAPSHOT_END)
    return events


def open_store(path: Path) -> CandleStore:
    """A store with a fixed clock; extension signatures unchecked (faster opens)."""
    return CandleStore(path, clock=lambda: INGESTED, verify_extensions=False)


def stored(store: CandleStore, series: str = TICKS) -> list[tuple[int, int, float]]:
    """A series' stored candles as (time offset ms, sequence, close), oldest first."""
    frame = store.history(series)
    times = frame["time"].dt.epoch("ms").to_list()
    return [
        (time - T0, sequence, close)
        for time, sequence, close in zip(
            times, frame["sequence"].to_list(), frame["close"].to_list(), strict=True
        )
    ]


def flush(manager: CandleDataManager, store: CandleStore) -> tuple[int, int, int, int]:
    """Hand the manager's batch to the store and commit it: (inserted, updated, unchanged,
    deleted)."""
    batch = manager.take_completed()
    result = store.upsert(batch.frame, batch.deletions)
    manager.commit(batch)
    return result.inserted, result.updated, result.unchanged, result.deleted


@pytest.fixture
def ticked(tmp_path: Path) -> Iterator[tuple[CandleDataManager, CandleStore]]:
    """A manager that received TICK_ROWS and a store holding the three complete ones."""
    manager = CandleDataManager(grace_ms=0)
    manager.update(ticks_snapshot(), T0 + 10)
    with open_store(tmp_path / "data") as store:
        assert flush(manager, store) == (3, 0, 0, 0)
        yield manager, store


def old_store(path: Path) -> int:
    """A store as the version before `sequence` made it, with two 1m candles; returns its
    count of schema-changing snapshots (see :func:`altered_snapshots`)."""
    path.mkdir(parents=True)
    con = open_lake(path, parse_catalog(None, path), None, read_only=False, verify_extensions=False)
    try:
        con.execute("USE lake")
        con.execute(OLD_SCHEMA)
        con.execute(OLD_ROWS)
    finally:
        con.close()
    return altered_snapshots(path)


def column_names(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [str(row[0]) for row in con.execute(f"DESCRIBE {relation}").fetchall()]


def altered_snapshots(path: Path) -> int:
    """How many snapshots of the lake changed a table's schema (the migration makes one)."""
    con = connect(path, verify_extensions=False)
    try:
        rows = con.execute("SELECT changes FROM ducklake_snapshots('lake')").fetchall()
    finally:
        con.close()
    return sum(1 for (changes,) in rows if "tables_altered" in changes)


# The manager's frames.


def test_batch_frame_keys_ticks_of_one_millisecond_by_sequence() -> None:
    """take_completed's frame carries each candle's sequence; deletions name it too."""
    manager = CandleDataManager(grace_ms=0)
    manager.update(ticks_snapshot(), T0 + 10)
    batch = manager.take_completed()
    assert batch.frame.columns == list(CANDLE_COLUMNS)
    assert batch.frame.select("sequence", "close").rows() == [(0, 10.0), (1, 11.0), (2, 12.0)]
    assert batch.frame["time"].dt.epoch("ms").to_list() == [T0] * 3
    manager.commit(batch)
    manager.update([tick(0, 1, float("nan"), flags=REMOVE_EVENT)], T0 + 10)
    deletions = manager.take_completed().deletions
    assert deletions.columns == ["symbol", "period", "time", "sequence"]
    assert deletions.select("symbol", "period", "sequence").rows() == [("AAPL", "1t", 1)]
    assert deletions["time"].dt.epoch("ms").to_list() == [T0]


def test_history_tells_ticks_of_one_millisecond_apart() -> None:
    """The manager's CandleData carry the sequence of each candle."""
    manager = CandleDataManager(grace_ms=0)
    manager.update(ticks_snapshot(), T0 + 10)
    assert [(c.sequence, c.close) for c in manager.history(TICKS)] == [
        (0, 10.0), (1, 11.0), (2, 12.0), (0, 13.0)
    ]  # fmt: skip


# Manager + store round trip.


def test_ticks_sharing_a_millisecond_are_all_stored(
    ticked: tuple[CandleDataManager, CandleStore],
) -> None:
    """Three complete ticks at one time are three rows, ordered by sequence."""
    _, store = ticked
    assert stored(store) == [(0, 0, 10.0), (0, 1, 11.0), (0, 2, 12.0)]
    assert store.count() == 3


def test_a_revision_of_one_tick_touches_only_it(
    ticked: tuple[CandleDataManager, CandleStore],
) -> None:
    """A changed tick replaces its own row; its millisecond's neighbours stay as they were."""
    manager, store = ticked
    manager.update([tick(0, 1, 99.0)], T0 + 10)
    assert flush(manager, store) == (0, 1, 0, 0)
    assert stored(store) == [(0, 0, 10.0), (0, 1, 99.0), (0, 2, 12.0)]
    assert store.history(TICKS)["revision"].to_list() == [0, 1, 0]


def test_a_deletion_of_one_tick_touches_only_it(
    ticked: tuple[CandleDataManager, CandleStore],
) -> None:
    """A removed tick deletes its own row, not the others of its millisecond."""
    manager, store = ticked
    manager.update([tick(0, 2, float("nan"), flags=REMOVE_EVENT)], T0 + 10)
    assert flush(manager, store) == (0, 0, 0, 1)
    assert stored(store) == [(0, 0, 10.0), (0, 1, 11.0)]


def test_warm_start_restores_every_tick_of_a_millisecond(
    ticked: tuple[CandleDataManager, CandleStore],
) -> None:
    """load_history rebuilds each index from time and sequence; all count as stored."""
    _, store = ticked
    restarted = CandleDataManager(grace_ms=0)
    assert restarted.load_history(TICKS, store.history(TICKS)) == 3
    assert [(c.sequence, c.close) for c in restarted.history(TICKS)] == [
        (0, 10.0), (1, 11.0), (2, 12.0)
    ]  # fmt: skip
    assert restarted.take_completed().empty
    restarted.update([tick(0, 1, 42.0)], T0 + 10)
    frame = restarted.take_completed().frame
    assert frame.select("sequence", "close", "revision").rows() == [(1, 42.0, 1)]


def test_resume_point_is_still_the_newest_time(
    ticked: tuple[CandleDataManager, CandleStore],
) -> None:
    """Several ticks at the newest time give one resume point: that time."""
    _, store = ticked
    assert store.resume_point(TICKS) == T0
    assert store.resume_points() == {TICKS: T0}


def test_recent_orders_ticks_by_time_then_sequence(
    ticked: tuple[CandleDataManager, CandleStore],
) -> None:
    """The newest n are picked by time then sequence, and returned oldest first."""
    _, store = ticked
    assert store.recent(TICKS, 2).select("sequence", "close").rows() == [(1, 11.0), (2, 12.0)]


def test_latest_candles_picks_the_highest_sequence_of_the_newest_time(
    ticked: tuple[CandleDataManager, CandleStore],
) -> None:
    """The reader's latest_candles view breaks a tie of time by sequence."""
    _, store = ticked
    con = connect(store.root, verify_extensions=False)
    try:
        rows = con.execute("SELECT period, sequence, close FROM latest_candles").fetchall()
        resampled = con.execute(
            "SELECT open, close, candles FROM resample('AAPL', '1t', INTERVAL 1 MINUTE)"
        ).fetchall()
    finally:
        con.close()
    assert rows == [("1t", 2, 12.0)]
    assert resampled == [(10.0, 12.0, 3)]  # first and last by (time, sequence)


# Batches from callers.


def test_a_batch_without_sequence_stores_time_based_candles_as_zero(tmp_path: Path) -> None:
    """A frame (or deletion keys) without the column, or with nulls, means sequence 0."""
    manager = CandleDataManager(grace_ms=0)
    manager.update(ticks_snapshot(), T0 + 10)
    frame = manager.take_completed().frame.head(1)
    with open_store(tmp_path / "data") as store:
        assert store.upsert(frame.drop("sequence")).inserted == 1
        nulls = frame.with_columns(pl.lit(None, pl.Int32).alias("sequence"))
        assert store.upsert(nulls).unchanged == 1
        assert stored(store) == [(0, 0, 10.0)]
        keys = frame.select("symbol", "period", "time")
        assert store.upsert(frame.clear(), keys).deleted == 1
        assert store.count() == 0


@pytest.mark.parametrize("sequence", [-1, 0x400000])
def test_a_sequence_outside_22_bits_is_rejected(tmp_path: Path, sequence: int) -> None:
    """A sequence that no index can hold names the allowed range; nothing is written."""
    manager = CandleDataManager(grace_ms=0)
    manager.update(ticks_snapshot(), T0 + 10)
    frame = manager.take_completed().frame.with_columns(
        pl.lit(sequence, pl.Int64).alias("sequence")
    )
    with open_store(tmp_path / "data") as store:
        with pytest.raises(ValueError, match=r"sequence .* 0\.\.4194303"):
            store.upsert(frame)
        assert store.count() == 0


# A store made before the column.


def test_a_reader_of_an_unmigrated_store_sees_sequence_zero(tmp_path: Path) -> None:
    """Read-only, the old table is not changed; queries and views see sequence 0."""
    path = tmp_path / "data"
    old_store(path)
    con = connect(path, verify_extensions=False)
    try:
        assert column_names(con, "candles") == list(CANDLE_COLUMNS)
        assert con.execute("SELECT DISTINCT sequence FROM candles").fetchall() == [(0,)]
        latest = con.execute("SELECT epoch_ms(time), sequence FROM latest_candles").fetchall()
        assert latest == [(T0 + 60_000, 0)]
        resampled = "SELECT candles, close FROM resample('AAPL', '1m', INTERVAL 1 HOUR)"
        assert con.execute(resampled).fetchall() == [(2, 2.5)]
        assert not has_sequence_column(con)
    finally:
        con.close()


def test_the_writer_migrates_an_old_store_once_and_keeps_its_rows(tmp_path: Path) -> None:
    """Opening adds `sequence` (old rows read 0); later opens change nothing; ticks fit."""
    path = tmp_path / "data"
    before = old_store(path)
    with open_store(path) as store:
        history = store.history("AAPL{=m}")
        assert history.columns == list(CANDLE_COLUMNS)
        assert history["sequence"].to_list() == [0, 0]
        assert history["close"].to_list() == [1.5, 2.5]
        assert store.resume_point("AAPL{=m}") == T0 + 60_000
        manager = CandleDataManager(grace_ms=0)
        manager.update(ticks_snapshot(), T0 + 10)
        assert flush(manager, store) == (3, 0, 0, 0)
        assert [row[1] for row in stored(store)] == [0, 1, 2]
    assert altered_snapshots(path) == before + 1
    with open_store(path) as store:
        assert store.count() == 5
    assert altered_snapshots(path) == before + 1
    con = connect(path, verify_extensions=False)
    try:
        assert has_sequence_column(con)
        assert column_names(con, TABLE) == list(CANDLE_COLUMNS)
    finally:
        con.close()


def test_a_writable_reader_connection_migrates_too(tmp_path: Path) -> None:
    """connect(read_only=False) adds the column, so it can insert into the real table."""
    path = tmp_path / "data"
    old_store(path)
    con = connect(path, read_only=False, verify_extensions=False)
    try:
        assert has_sequence_column(con)
        assert not migrate_sequence_column(con)
        con.execute("INSERT INTO candles SELECT * REPLACE (sequence + 1 AS sequence) FROM candles")
        rows = con.execute("SELECT sequence, count(*) FROM candles GROUP BY ALL ORDER BY ALL")
        assert rows.fetchall() == [(0, 2), (1, 2)]
    finally:
        con.close()


def test_a_migration_that_loses_the_race_is_retried_as_a_no_op(tmp_path: Path) -> None:
    """Two writers add the column at once: the loser's commit fails, its retry does nothing."""
    path = tmp_path / "data"
    before = old_store(path)
    spec = parse_catalog(None, path)
    first = open_lake(path, spec, None, read_only=False, verify_extensions=False)
    second = open_lake(path, spec, None, read_only=False, verify_extensions=False)
    try:
        second.execute("BEGIN")  # the loser got as far as its ALTER ...
        second.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS sequence INTEGER DEFAULT 0")
        assert migrate_sequence_column(first)  # ... when the winner committed
        with pytest.raises(duckdb.Error) as lost:
            second.execute("COMMIT")
        rollback(second)
        assert "locked" in str(lost.value) or "onflict" in str(lost.value)
        assert not migrate_sequence_column(second)  # what CandleStore's retry runs
    finally:
        first.close()
        second.close()
    assert altered_snapshots(path) == before + 1


def test_shards_opening_an_old_store_together_all_succeed(tmp_path: Path) -> None:
    """Three processes open one old store at the same moment; each works, one migrates."""
    path = tmp_path / "data"
    before = old_store(path)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    results = context.Queue()
    children = [
        context.Process(target=open_and_count, args=(str(path), start, results)) for _ in range(3)
    ]
    for child in children:
        child.start()
    answers = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert answers == [2, 2, 2]
    assert altered_snapshots(path) == before + 1
