"""The lake's data on object storage: a real S3 server (moto) behind a switchable relay.

One S3 server serves the module (tests/helpers/s3.py); each test gets its own bucket. The keys
are random per server and reach the store only through the environment; every test that can
print, log or store something looks for them in it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline import analysis
from pipeline.cli import cli
from pipeline.config import S3Config, loads_config
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import (
    CandleStore,
    S3Options,
    StoreError,
    connect,
    export_store,
    parse_s3_url,
    redact,
    run_query,
)
from tests.helpers.s3 import S3Server, running_s3
from tests.helpers.service import (
    START_MS,
    TOKEN,
    differences,
    eventually,
    make_service,
    series_keys,
    service_config,
    stored_frame,
    truth_frame,
)
from tests.helpers.store import candle_frame

MINUTE = 60_000
_buckets = itertools.count(1)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3() as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket's ``s3://`` URL; the server's keys and endpoint in the environment."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3.create_bucket(f"lake-{next(_buckets)}")


def _files_holding(root: Path, needle: str) -> list[Path]:
    return [
        path for path in root.rglob("*") if path.is_file() and needle.encode() in path.read_bytes()
    ]


def test_store_on_s3_writes_reads_and_compacts(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """Upserts land as Parquet objects in the bucket; re-sends change nothing; revisions and
    compaction work; the store folder holds only the catalog, never a key."""
    data = bucket + "candles/"
    with CandleStore(tmp_path, data_path=data, verify_extensions=False) as store:
        first = store.upsert(candle_frame("AAPL", "1m", 3000))
        assert first.inserted == 3000
        assert store.upsert(candle_frame("AAPL", "1m", 3000)).unchanged == 3000
        revised = store.upsert(candle_frame("AAPL", "1m", 20, close=500.0, revision=1))
        assert revised.updated == 20
        store.upsert(candle_frame("SPY", "1m", 2000))
        before = len(s3.objects(bucket[5:-1], "candles/"))
        store.compact(retain=timedelta(0))
        assert store.count() == 5000
        assert store.history("AAPL{=m}")["close"][:3].to_list() == [500.0, 501.0, 502.0]
    objects = s3.objects(bucket[5:-1], "candles/")
    assert before >= 3 and 1 <= len(objects) < before
    assert all(o.key.startswith("candles/main/candles/ducklake-") for o in objects)
    assert not list(tmp_path.rglob("*.parquet")), "no data file may land in the local folder"
    assert _files_holding(tmp_path, s3.secret) == []


def test_compaction_removes_files_a_killed_writer_left_in_the_bucket(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """An object no snapshot references is deleted once older than the retention, not before."""
    name = bucket[5:-1]
    data = bucket + "lake/"
    with CandleStore(tmp_path, data_path=data, verify_extensions=False) as store:
        store.upsert(candle_frame("AAPL", "1m", 2000))
    left = "lake/main/candles/ducklake-00000000-dead-beef-0000-000000000000.parquet"
    s3.put_object(name, left, b"a torn upload: no footer")
    now = datetime.now(UTC)
    with CandleStore(tmp_path, data_path=data, verify_extensions=False, clock=lambda: now) as store:
        store.compact(retain=timedelta(hours=1))  # the leftover is seconds old: kept
        assert left in {o.key for o in s3.objects(name)}
        assert store.count() == 2000
    later = now + timedelta(hours=2)
    with CandleStore(
        tmp_path, data_path=data, verify_extensions=False, clock=lambda: later
    ) as store:
        result = store.compact(retain=timedelta(hours=1))
        assert result.files_removed >= 1
        assert store.count() == 2000
    assert left not in {o.key for o in s3.objects(name)}


def test_readers_attach_the_s3_lake_from_anywhere(
    s3: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """connect(), candles query/export and analysis.connect() (CANDLES_STORE__* variables)
    read a lake whose data is in the bucket."""
    data = bucket + "lake/"
    with CandleStore(tmp_path / "writer", data_path=data, verify_extensions=False) as store:
        store.upsert(candle_frame("AAPL", "1m", 1500))
    writer = tmp_path / "writer"
    con = connect(writer, data_path=data, verify_extensions=False)
    try:
        assert con.execute("SELECT count(*) FROM candles").fetchone() == (1500,)
        assert con.execute("SELECT count(*) FROM latest_candles").fetchone() == (1,)
        secrets = con.execute("SELECT scope, secret_string FROM duckdb_secrets()").fetchall()
    finally:
        con.close()
    assert secrets[0][0] == [data]  # the key signs requests to the lake's prefix only
    assert s3.secret not in str(secrets)
    frame = run_query("SELECT count(*) AS n FROM candles", path=writer, data_path=data)
    assert frame["n"].to_list() == [1500]
    assert export_store(tmp_path / "out", path=writer, data_path=data) == 1500
    monkeypatch.setenv("CANDLES_STORE", str(writer))
    monkeypatch.setenv("CANDLES_STORE__DATA_PATH", data)
    with analysis.connect(verify_extensions=False) as notebook:
        assert notebook.execute("SELECT count(*) FROM candles").fetchone() == (1500,)


def test_s3_errors_show_no_key(
    s3: S3Server, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lake in a bucket that does not exist fails with S3's answer; neither the message, the
    log, nor any file shows the key. (moto does not check signatures, so a wrong key cannot
    be refused here; the scrubbing is the same for any DuckDB message.)"""
    caplog.set_level(logging.DEBUG)
    with (
        pytest.raises(StoreError) as failure,
        CandleStore(
            tmp_path, data_path="s3://no-such-bucket-here/lake/", verify_extensions=False,
            max_retries=0,
        ) as store,
    ):  # fmt: skip
        store.upsert(candle_frame("AAPL", "1m", 2000))
    message = str(failure.value)
    assert "no-such-bucket-here" in message
    assert s3.secret not in message
    assert s3.secret not in caplog.text
    assert _files_holding(tmp_path, s3.secret) == []
    access = S3Options().resolve()
    assert access.secret == s3.secret and s3.secret not in repr(access)
    assert redact(f"DuckDB said: SECRET '{s3.secret}'") == "DuckDB said: SECRET '***'"


def test_a_malformed_s3_data_path_is_refused_clearly(tmp_path: Path) -> None:
    """A gs:// URL, credentials in the URL or a bad bucket name: one line saying what is right."""
    with pytest.raises(StoreError, match=r"use s3://bucket/prefix/"):
        CandleStore(tmp_path, data_path="gs://bucket/lake/", verify_extensions=False)
    with pytest.raises(StoreError, match="must not carry credentials") as failure:
        connect(tmp_path, data_path="s3://AKIAX:hunter22@bucket/lake/", verify_extensions=False)
    assert "hunter22" not in str(failure.value)
    with pytest.raises(ValueError, match="not an S3 bucket name"):
        parse_s3_url("s3://B/lake/")
    assert parse_s3_url("s3://candles-lake/prod") == ("candles-lake", "prod/")


def test_options_come_from_the_aws_environment() -> None:
    """Endpoint, TLS, URL style and region follow the AWS SDKs' variables unless configured."""
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "example-secret-key",
    }
    access = S3Options().resolve(env)
    assert (access.endpoint, access.use_ssl, access.url_style, access.region) == (
        "127.0.0.1:9000", False, "path", "eu-west-1",
    )  # fmt: skip
    aws = S3Options().resolve({"AWS_REGION": "us-west-2"})
    assert (aws.endpoint, aws.use_ssl, aws.url_style, aws.has_keys) == (None, True, "vhost", False)
    pinned = S3Options(endpoint="minio.internal:9000", url_style="vhost", region="x").resolve(env)
    assert (pinned.endpoint, pinned.use_ssl, pinned.url_style) == (
        "minio.internal:9000",
        True,
        "vhost",
    )
    assert "example-secret-key" not in repr(access)
    with pytest.raises(ValueError, match="is not host"):
        S3Options(endpoint="not a host").resolve({})


def test_config_s3_section_mirrors_the_store_options() -> None:
    """store.s3 has exactly S3Options' fields, so every entry point converts it the same way."""
    assert set(S3Config.model_fields) == set(S3Options.__dataclass_fields__)
    config = loads_config(
        '[store]\ndata_path = "s3://candles-lake/prod/"\n'
        'catalog = "postgres:dbname=lake host=db"\n[store.s3]\nendpoint = "https://minio:9000"\n',
        environ={},
    )
    assert S3Options(**config.store.s3.model_dump()).endpoint == "https://minio:9000"
    assert config.store.notes() == []


def test_config_check_names_a_bad_combination_and_the_single_host_note() -> None:
    """An s3:// data path with a SQLite catalog is allowed with a note; bad URLs are errors."""
    single = loads_config('[store]\ndata_path = "s3://candles-lake/prod/"\n', environ={})
    (note,) = single.store.notes()
    assert "only processes on this one host" in note and "postgres" in note
    for bad, problem in (
        ("gs://bucket/x/", "is not supported"),
        ("s3://key:secret@bucket/x/", "must not carry credentials"),
        ("s3://Bad_Bucket/x/", "is not an S3 bucket name"),
    ):
        with pytest.raises(Exception, match=problem) as failure:
            loads_config(f'[store]\ndata_path = "{bad}"\n', environ={})
        assert "secret@" not in str(failure.value)
    with pytest.raises(Exception, match="not an environment variable name"):
        loads_config('[store.s3]\nsecret_access_key_env = "abc def"\n', environ={})


# ------------------------------------------------------------------ the bucket goes away


async def test_an_s3_outage_keeps_candles_in_memory_until_it_returns(
    s3: S3Server, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The S3 endpoint refuses connections during ingest: flushes fail and keep their candles
    (/metrics and the errors show no key); once it is back the next flush stores them all;
    the store equals the simulator's truth."""
    store_path = tmp_path / "local"
    s3_options: dict[str, Any] = {
        "store.data_path": bucket + "lake/",
        "store.s3.endpoint": f"http://{s3.endpoint}",
    }
    config = service_config(store_path, **s3_options)
    from_ms = START_MS - 2 * 3600_000
    caplog.set_level(logging.INFO)
    async with Simulator(token=TOKEN, seed=3, clock=SimulatorClock.manual(START_MS)) as sim:
        service = make_service(config, sim)
        runner = asyncio.create_task(service.run())
        try:
            await sim.wait_for_subscriptions(len(series_keys(config)))
            await eventually(
                lambda: service.manager.stats().buffered_events == 0, what="snapshots applied"
            )
            assert (await service.flush("before")).error is None
            s3.stop()
            try:
                for _ in range(20):  # twenty simulated minutes of live candles while it is down
                    await sim.advance(60)
                end = sim.now_ms
                await eventually(
                    lambda: service.stats.stream_time_ms >= end - MINUTE, what="live candles"
                )
                failed = [await service.flush("outage") for _ in range(2)]
                assert all(report.error is not None for report in failed), failed
                assert s3.secret.encode() not in service.metrics.render_metrics()
                kept = service.manager.take_completed()
                service.manager.release(kept)
                assert kept.rows > 10  # kept, not dropped
            finally:
                s3.start()
            stored = await service.flush("after")
            assert stored.error is None and stored.written > 10
        finally:
            service.stop()
            await runner
        complete_end = end - 5 * MINUTE - end % (5 * MINUTE)

        def compare() -> list[str]:
            with CandleStore(
                store_path, data_path=bucket + "lake/", verify_extensions=False
            ) as store:
                problems: list[str] = []
                for key in series_keys(config):
                    truth = truth_frame(sim, key, from_ms, complete_end)
                    assert truth.height > 3, key
                    problems += differences(truth, stored_frame(store, key, from_ms, complete_end))
                return problems

        assert await asyncio.to_thread(compare) == []
    assert service.stats.flush_failures >= 2
    assert s3.secret not in caplog.text
    assert all(s3.secret not in (r.error or "") for r in service.stats.recent_flushes)


def test_the_environment_never_reaches_duckdb_files(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """The secret is temporary: no persistent secret directory appears under HOME."""
    home = Path(os.environ.get("HOME", "/root"))
    stored = home / ".duckdb" / "stored_secrets"
    before = sorted(stored.glob("*")) if stored.exists() else []
    with CandleStore(tmp_path, data_path=bucket, verify_extensions=False) as store:
        store.upsert(candle_frame("AAPL", "1m", 5))
    after = sorted(stored.glob("*")) if stored.exists() else []
    assert after == before


def test_config_check_reports_the_note_and_missing_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`candles config check` passes an s3:// lake with a SQLite catalog with the one-host
    note, and fails naming the key variables when they are unset."""
    config = tmp_path / "config.toml"
    config.write_text('[store]\ndata_path = "s3://candles-lake/prod/"\n')
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-for-check")
    monkeypatch.delenv("CANDLES_PROFILE", raising=False)
    ok = CliRunner().invoke(cli, ["config", "check", "--config", str(config)])
    assert ok.exit_code == 0, ok.output
    assert "note: store: data on s3://candles-lake/prod/ with a SQLite catalog" in ok.output
    assert "example-secret-for-check" not in ok.output
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    missing = CliRunner().invoke(cli, ["config", "check", "--config", str(config)])
    assert missing.exit_code == 1
    assert "AWS_SECRET_ACCESS_KEY" in missing.output
