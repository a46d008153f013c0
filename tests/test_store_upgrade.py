"""Upgrades (issue 16): stores written by older versions of this repository open with this
code, keep every candle, and are migrated once, also by several shards opening at once.

The fixtures are real stores written by the code at a git tag (``tests/helpers/store_fixture``
says which and how to regenerate them): ``store-v1`` before the ``sequence`` key column,
``store-v2`` as ``main`` wrote them when issue 16 began.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import polars as pl
import pytest

from pipeline.schema import CANDLE_COLUMNS
from pipeline.store import CandleStore, connect
from tests.helpers.store import candle_frame, open_and_count, open_store
from tests.helpers.store_fixture import TAGS, commit_of, expected, extract, fixture_path


def _schema_changes(path: Path) -> int:
    """Snapshots of the lake that changed a table's schema."""
    con = connect(path, verify_extensions=False)
    try:
        rows = con.execute("SELECT changes FROM ducklake_snapshots('lake')").fetchall()
    finally:
        con.close()
    return sum(1 for (changes,) in rows if "tables_altered" in changes)


def _stored(store: CandleStore) -> pl.DataFrame:
    frames = [
        store.history(f"{symbol}{{={period}}}")
        for symbol, period in expected().select("symbol", "period").unique().rows()
    ]
    return pl.concat(frames).sort("symbol", "period", "time")


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_a_store_of_an_older_version_opens_and_keeps_every_candle(tmp_path: Path, tag: str) -> None:
    """The writer opens it (migrating when needed) and finds every candle as written; new
    candles, ticks of one millisecond included, fit beside them."""
    path = tmp_path / "data"
    extract(tag, path)
    with open_store(path) as store:
        stored = _stored(store)
        assert stored.columns == list(CANDLE_COLUMNS)
        want = expected()
        assert stored.select(want.columns).equals(want)
        assert stored["sequence"].to_list() == [0] * want.height
        assert store.count() == want.height
        store.upsert(candle_frame("QQQ", "1m", 3))
        ticks = candle_frame("QQQ", "5t", 2).with_columns(pl.Series("sequence", [0, 1], pl.Int32))
        ticks = ticks.with_columns(pl.lit(ticks["time"][0]).alias("time"))
        assert store.upsert(ticks).inserted == 2
        assert store.count() == want.height + 5
    changes = _schema_changes(path)
    with open_store(path) as store:  # a second open changes nothing
        assert store.count() == want.height + 5
    assert _schema_changes(path) == changes
    con = connect(path, verify_extensions=False)
    try:
        assert con.execute("SELECT count(*) FROM latest_candles").fetchone() == (4,)
    finally:
        con.close()


def test_the_store_before_sequence_is_migrated_by_exactly_one_schema_change(tmp_path: Path) -> None:
    """store-v1 lacks the column: opening adds it in one schema change, readers first see it
    as 0 without migrating."""
    path = tmp_path / "data"
    extract("store-v1", path)
    reader = connect(path, verify_extensions=False)
    try:
        assert reader.execute("SELECT DISTINCT sequence FROM candles").fetchall() == [(0,)]
    finally:
        reader.close()
    before = _schema_changes(path)
    with open_store(path):
        pass
    assert _schema_changes(path) == before + 1


def test_three_shards_opening_a_store_v1_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Three processes open the old store at the same moment: each works, one migrates."""
    path = tmp_path / "data"
    extract("store-v1", path)
    before = _schema_changes(path)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    results = context.Queue()
    children = [
        context.Process(target=open_and_count, args=(str(path), start, results)) for _ in range(3)
    ]
    for child in children:
        child.start()
    answers = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert answers == [expected().height] * 3
    assert _schema_changes(path) == before + 1


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_each_fixture_was_written_by_the_commit_its_tag_names(tmp_path: Path, tag: str) -> None:
    """FIXTURE.json names its tag's commit (regenerate the fixture when a tag moves)."""
    assert fixture_path(tag).stat().st_size < 64 * 1024  # a few KB, committed
    meta = extract(tag, tmp_path / "store")
    assert meta["tag"] == tag and meta["candles"] == expected().height
    commit = commit_of(tag)
    if commit is None:
        pytest.skip(f"tag {tag} is not in this checkout (git fetch --tags)")
    assert meta["commit"] == commit
