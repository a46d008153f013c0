"""/metrics and /health of a real ingest run: the counters move, health reflects reality."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pipeline.simulator import Simulator, SimulatorClock
from tests.helpers.service import (
    START_MS,
    TOKEN,
    eventually,
    make_service,
    series_keys,
    service_config,
)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _scrape(base: str) -> dict[str, float]:
    """Every sample of /metrics as ``name{labels}`` -> value."""
    status, body = await asyncio.to_thread(_get, base + "/metrics")
    assert status == 200
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def test_metrics_move_during_ingest_and_health_follows(tmp_path: Path) -> None:
    """Scrapes during ingest show candles received and stored growing; /health says ok."""
    metrics_on: dict[str, Any] = {"metrics.enabled": True, "metrics.port": 0}
    config = service_config(tmp_path / "data", **metrics_on)
    async with Simulator(token=TOKEN, seed=1, clock=SimulatorClock.manual(START_MS)) as sim:
        service = make_service(config, sim)
        runner = asyncio.create_task(service.run())
        await sim.wait_for_subscriptions(len(series_keys(config)))
        await eventually(lambda: service.metrics.url is not None, what="metrics server up")
        base = service.metrics.url
        assert base is not None and base.startswith("http://127.0.0.1:")
        await sim.advance(60)
        await eventually(lambda: service.stats.candles_received > 0, what="data")
        await service.flush("test")
        first = await _scrape(base)
        await sim.advance(120)
        stream_target = sim.now_ms - 60_000
        await eventually(lambda: service.stats.stream_time_ms >= stream_target, what="more data")
        await service.flush("test")
        second = await _scrape(base)

        status, body = await asyncio.to_thread(_get, base + "/health")
        health = json.loads(body)
        assert status == 200, health
        assert health["status"] == "ok" and health["reasons"] == []
        assert health["connection_state"] == "connected"

        for name in (
            "candles_received_total{}",
            "candles_stored_total{}",
            "candles_flushes_total{}",
        ):
            assert second[name] > first[name] > 0, name
        assert second["candles_connects_total{}"] >= 1
        assert second["candles_series{}"] == len(series_keys(config))
        assert TOKEN not in json.dumps(second) + body.decode()

        service.stop()
        await runner
