"""Shard specs, the stable series-to-shard hash, the compaction owner and their wiring."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import ConfigError, loads_config
from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.sharding import SINGLE, ShardSpec, shard_of
from pipeline.store import CandleStore, StoreError, connect
from tests.helpers.service import TOKEN, service_config
from tests.helpers.store import candle_frame

SERIES = [f"SYM{i}{{={interval}}}" for i in range(200) for interval in ("m", "5m")]


@pytest.mark.parametrize(
    ("text", "index", "count"), [("1/1", 1, 1), ("2/3", 2, 3), (" 4 / 4 ", 4, 4)]
)
def test_parse_accepts_k_of_n(text: str, index: int, count: int) -> None:
    """K/N parses to a 1-based shard index and a count, spaces allowed."""
    spec = ShardSpec.parse(text)
    assert (spec.index, spec.count) == (index, count)
    assert str(spec) == f"{index}/{count}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/3", "K in K/N runs from 1 to 3"),
        ("4/3", "K in K/N runs from 1 to 3"),
        ("1/0", "shard count must be 1..4096"),
        ("3", "is not K/N"),
        ("a/b", "is not K/N"),
        ("-1/3", "is not K/N"),
    ],
)
def test_parse_rejects_bad_specs_naming_the_rule(text: str, message: str) -> None:
    """A bad K/N is refused with a message saying what would be right."""
    with pytest.raises(ValueError, match=message):
        ShardSpec.parse(text)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_every_series_has_exactly_one_shard(count: int) -> None:
    """The shards of N partition the series: each series is owned by exactly one."""
    shards = [ShardSpec(k, count) for k in range(1, count + 1)]
    for series in SERIES:
        assert sum(shard.owns(series) for shard in shards) == 1
    assert sorted(s for shard in shards for s in shard.select(SERIES)) == sorted(SERIES)


def test_assignment_spreads_series_evenly() -> None:
    """400 series over 4 shards: every shard gets between 70 and 130 of the 100 expected."""
    counts = [len(ShardSpec(k, 4).select(SERIES)) for k in range(1, 5)]
    assert sum(counts) == len(SERIES)
    assert all(70 <= c <= 130 for c in counts), counts


def test_assignment_follows_the_normalised_key() -> None:
    """Two spellings of one series land on the same shard."""
    for count in (2, 3, 5, 11):
        assert shard_of("AAPL{=d}", count) == shard_of("AAPL{=1d}", count)


def test_assignment_is_the_same_in_every_process() -> None:
    """Another interpreter with another hash seed assigns every series identically."""
    script = (
        "import sys; from pipeline.sharding import shard_of; "
        "print(','.join(str(shard_of(s, 3)) for s in sys.argv[1:]))"
    )
    sample = SERIES[:50]
    output = subprocess.run(
        [sys.executable, "-c", script, *sample],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout  # fmt: skip
    assert output.strip().split(",") == [str(shard_of(s, 3)) for s in sample]


def test_only_shard_one_compacts() -> None:
    """Compaction belongs to shard 1 of N; an unsharded ingest is 1/1 and compacts."""
    assert SINGLE.runs_compaction and SINGLE.owns("AAPL{=m}")
    assert [ShardSpec(k, 3).runs_compaction for k in (1, 2, 3)] == [True, False, False]


def test_config_takes_and_normalises_ingest_shard() -> None:
    """ingest.shard accepts K/N, stores it as K/N and defaults to every series (1/1)."""
    config = loads_config('[ingest]\nshard = " 2 / 3"\n')
    assert config.ingest.shard == "2/3"
    assert config.ingest.shard_spec == ShardSpec(2, 3)
    assert loads_config("").ingest.shard_spec == SINGLE


def test_config_rejects_a_bad_shard_with_the_allowed_form() -> None:
    """An impossible shard names the key and the allowed form."""
    with pytest.raises(ConfigError) as caught:
        loads_config('[ingest]\nshard = "5/4"\n')
    assert "ingest.shard: " in str(caught.value)
    assert '"K/N" with 1 <= K <= N' in str(caught.value)


def test_config_takes_store_data_path() -> None:
    """store.data_path is optional and kept as written."""
    assert loads_config("").store.data_path is None
    assert loads_config('[store]\ndata_path = "/shared/lake"\n').store.data_path == "/shared/lake"


def test_cli_ingest_rejects_a_bad_shard() -> None:
    """candles ingest --shard 0/2 fails before connecting, naming the option and the rule."""
    result = CliRunner().invoke(cli, ["ingest", "--shard", "0/2"], env={"CANDLES_CONFIG": ""})
    assert result.exit_code == 1
    assert "ingest.shard" in result.output
    assert "K in K/N runs from 1 to 2" in result.output


async def test_service_captures_only_its_shard(tmp_path: Path) -> None:
    """Each shard's service subscribes to its own series; together they cover the config."""
    symbols = tuple(f"S{i}" for i in range(12))
    owned: list[str] = []
    schedules: list[set[str]] = []
    for k in (1, 2, 3):
        shard: dict[str, Any] = {"ingest.shard": f"{k}/3"}
        config = service_config(tmp_path, symbols=symbols, **shard)
        service = IngestService(config, token_source=SimulatorTokenSource("ws://x", TOKEN))
        owned.extend(s.normalized for s in service.series)
        assert all(shard_of(s, 3) == k for s in service.series)
        service._start_scheduler()
        assert service._scheduler is not None
        schedules.append({job.id for job in service._scheduler.get_jobs()})
        service._scheduler.shutdown(wait=False)
    configured = service_config(tmp_path, symbols=symbols).subscriptions.candle_symbols()
    every = [s.normalized for s in configured]
    assert sorted(owned) == sorted(every)
    assert schedules == [{"flush", "compaction"}, {"flush"}, {"flush"}]


def test_store_writes_parquet_under_a_separate_data_path(tmp_path: Path) -> None:
    """With data_path the Parquet files go there, and readers naming it see the candles."""
    shared = tmp_path / "shared-data"
    with CandleStore(tmp_path / "store", data_path=shared, verify_extensions=False) as store:
        store.upsert(candle_frame("AAPL", "1m", 500))
    assert list(shared.rglob("*.parquet"))
    assert not (tmp_path / "store" / "data").exists()
    con = connect(tmp_path / "store", data_path=shared, verify_extensions=False)
    try:
        assert con.sql("SELECT count(*) FROM candles").fetchone() == (500,)
    finally:
        con.close()


@pytest.mark.skipif(
    importlib.util.find_spec("duckdb_extension_httpfs") is not None,
    reason="httpfs is installed; this checks the message shown without it",
)
def test_object_storage_data_path_names_the_missing_extension(tmp_path: Path) -> None:
    """An s3:// data path without the httpfs package fails naming the package to install."""
    with pytest.raises(StoreError, match="install duckdb-extension-httpfs=="):
        CandleStore(tmp_path, data_path="s3://bucket/lake/", verify_extensions=False)
