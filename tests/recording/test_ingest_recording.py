"""Ingest with ``[record]``: every connection recorded, and a broken disk never felt by ingest."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import Config
from pipeline.dxlink import ConfigurationError
from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.recording import CLOSED, OPENED, RECEIVED, SENT, Recorder, Recording
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore
from tests.helpers.recording import finish, record_config
from tests.helpers.service import (
    START_MS,
    differences,
    series_keys,
    stored_frame,
    truth_frame,
)
from tests.helpers.timing import TIMEOUT
from tests.recording.files import Disk, GatedFile, decompressed, records

SECRET_TOKEN = "sim-secret-token-4b2e91"


def _simulator() -> Simulator:
    return Simulator(token=SECRET_TOKEN, seed=1, clock=SimulatorClock.manual(START_MS))


def _service(config: Config, sim: Simulator) -> IngestService:
    return IngestService(
        config,
        token_source=SimulatorTokenSource(sim.url, SECRET_TOKEN),
        source_clock_ms=lambda: sim.now_ms,
    )


def _health(url: str) -> str:
    with urllib.request.urlopen(url + "/health", timeout=TIMEOUT) as response:
        return str(json.loads(response.read())["status"])


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=TIMEOUT) as response:
        body = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if not sample.labels
    }


async def test_every_connection_is_recorded_through_a_drop(tmp_path: Path) -> None:
    """Two connections (a drop between): each opened, its frames both ways, its end; the
    token appears nowhere in the files; the metrics count what was written."""
    config = record_config(
        tmp_path / "data", tmp_path / "rec", **{"metrics.enabled": True, "metrics.port": 0}
    )
    async with _simulator() as sim:
        service = _service(config, sim)
        runner = asyncio.create_task(service.run())
        await sim.wait_for_subscriptions(len(series_keys(config)))
        await sim.advance(60)
        await sim.drop_connections()
        await sim.wait_for_subscriptions(len(series_keys(config)))
        await sim.advance(60)
        assert service.metrics.url is not None
        assert service.recorder is not None
        assert await asyncio.to_thread(service.recorder.flush, TIMEOUT)
        scraped = await asyncio.to_thread(_scrape, service.metrics.url)
        await finish(sim, service, runner)
    assert scraped["candles_recording_records_total"] > 0
    assert scraped["candles_recording_bytes_total"] > 0
    assert scraped["candles_recording_dropped_frames_total"] == 0
    assert scraped["candles_recording_failing"] == 0
    files = sorted((tmp_path / "rec").iterdir())
    recording = Recording(files)
    assert recording.unusable == [] and len(recording.sessions) == 1
    header = recording.files[0].header
    assert header.meta["series"] == series_keys(config) and header.meta["source"] == "simulator"
    kept = list(records(e.item for e in recording.entries()))
    assert [(r.c, r.d) for r in kept if r.d in (OPENED, CLOSED)] == [
        (1, OPENED),
        (1, CLOSED),
        (2, OPENED),
        (2, CLOSED),
    ]
    for number in (1, 2):
        sent = [orjson.loads(r.f)["type"] for r in kept if r.c == number and r.d == SENT]
        got = [orjson.loads(r.f)["type"] for r in kept if r.c == number and r.d == RECEIVED]
        assert sent[:2] == ["SETUP", "AUTH"] and "FEED_SUBSCRIPTION" in sent
        assert got[:3] == ["SETUP", "AUTH_STATE", "AUTH_STATE"] and "FEED_DATA" in got
    # The simulator's clock, as the client read it, is each record's t.
    assert kept[0].t >= START_MS and max(r.t for r in kept) <= START_MS + 3 * 60_000
    for path in files:
        assert SECRET_TOKEN.encode() not in decompressed(path)
        assert SECRET_TOKEN.encode() not in path.read_bytes()


async def test_a_full_disk_costs_the_recording_never_the_ingest(tmp_path: Path) -> None:
    """The recording's disk fails for the whole run: the store still equals the simulator's
    truth, /health stays ok, /metrics counts the frames left out and says it is failing."""
    config = record_config(
        tmp_path / "data", tmp_path / "rec", **{"metrics.enabled": True, "metrics.port": 0}
    )
    disk = Disk()
    async with _simulator() as sim:
        service = _service(config, sim)
        service.recorder = Recorder(tmp_path / "rec", opener=disk.open)  # the same, on Disk
        disk.full = True
        # The first file cannot even be created: a full disk at start is refused loudly...
        with pytest.raises(ConfigurationError, match=r"cannot record to .*No space left"):
            await service.run()
        # ...and one that fills up later is survived quietly.
        disk.full = False
        service = _service(config, sim)
        service.recorder = Recorder(tmp_path / "rec", opener=disk.open)
        runner = asyncio.create_task(service.run())
        await sim.wait_for_subscriptions(len(series_keys(config)))
        disk.full = True
        for _ in range(5):
            await sim.advance(60)
        assert await asyncio.to_thread(service.recorder.flush, TIMEOUT)
        assert service.metrics.url is not None
        scraped = await asyncio.to_thread(_scrape, service.metrics.url)
        assert await asyncio.to_thread(_health, service.metrics.url) == "ok"
        await finish(sim, service, runner)
        end = sim.now_ms - 5 * 60_000
        with CandleStore(tmp_path / "data") as store:
            problems = [
                f"{key}: {d}"
                for key in series_keys(config)
                for d in differences(
                    truth_frame(sim, key, START_MS - 2 * 3600_000, end),
                    stored_frame(store, key, START_MS - 2 * 3600_000, end),
                )
            ]
    assert problems == []
    assert scraped["candles_recording_dropped_frames_total"] > 0
    assert scraped["candles_recording_failing"] == 1
    assert service.stats.flush_failures == 0


async def test_a_hung_disk_does_not_hold_the_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The recording's writes never return: ingest still stops, its store complete; the
    recorder is left behind after recorder_close_timeout, with a warning."""
    gate, entered = threading.Event(), threading.Event()
    config = record_config(tmp_path / "data", tmp_path / "rec")
    try:
        async with _simulator() as sim:
            service = _service(config, sim)
            service.recorder = Recorder(
                tmp_path / "rec", opener=lambda path: GatedFile(path, gate, entered)
            )
            service.recorder_close_timeout = 0.1
            runner = asyncio.create_task(service.run())
            await sim.wait_for_subscriptions(len(series_keys(config)))
            await sim.advance(60)
            assert service.recorder is not None
            service.recorder.flush(timeout=0)  # the next block write hangs
            assert await asyncio.to_thread(entered.wait, TIMEOUT)
            with caplog.at_level(logging.WARNING, logger="pipeline.ingest"):
                async with asyncio.timeout(TIMEOUT):
                    await finish(sim, service, runner)
            end = sim.now_ms - 5 * 60_000
            with CandleStore(tmp_path / "data") as store:
                problems = [
                    d
                    for key in series_keys(config)
                    for d in differences(
                        truth_frame(sim, key, START_MS - 2 * 3600_000, end),
                        stored_frame(store, key, START_MS - 2 * 3600_000, end),
                    )
                ]
    finally:
        gate.set()  # let the abandoned thread finish
    assert problems == []
    assert any("the recording did not close within" in r.getMessage() for r in caplog.records)
