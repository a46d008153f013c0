"""Backfill end to end (issue 6, item 2): subscribe to S series x N candles of history,
time until every completed candle is durable in the store.

The simulator runs in its own process on a manual clock that stands at ``START_MS`` (so it
serves snapshots only). Side by side in the same run:

* **raw receive** (the floor): the same subscription over a socket, frames received and
  dropped, no decoding (``e2e_common.raw_receive``), best of one run before and one after;
* **ours**: :class:`IngestService` with an already open store and the product's flush
  schedule (every 5 s, in a thread, overlapping the receiving), from the moment its client
  exists (subscriptions go out at once) until the service has received every event and a
  last flush has made every completed candle durable. Startup (warm start over the empty
  store) is reported apart.

Target: >= 200,000 candles/s durable. Observer resolution: 2 ms.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.e2e_common import (
    MINUTE_MS,
    START_MS,
    TOKEN,
    BenchResult,
    Figure,
    SimulatorProcess,
    bench_config,
    bench_main,
    count_feed_events,
    raw_receive,
    symbols,
    wait_until,
)
from pipeline.service import IngestService
from pipeline.store import CandleStore
from pipeline.tastytrade import SimulatorTokenSource

__all__ = ["TARGET", "main", "measure", "measure_service", "run"]

TARGET = 200_000.0
"""Candles per second made durable (issue 6)."""


async def measure_service(
    url: str, bases: Sequence[str], candles: int, store_path: Path, expected_events: int
) -> dict[str, Any]:
    """Run the ingest service until ``expected_events`` arrived and one flush stored them.

    Returns:
        Timings (perf_counter seconds) and counts: ``startup``, ``received``, ``durable``
        (both from the client's start), ``stored`` rows, ``events`` received, ``flushes``,
        ``backpressure_waits`` (the reader held until a flush made room) and each flush's
        seconds and rows.
    """
    from_ms = START_MS - candles * MINUTE_MS
    # The product's flush schedule (5 s): flushes overlap the receiving, as they would.
    flushes = {"schedule.flush_interval": 5.0}
    config = bench_config(store_path, bases=bases, from_ms=from_ms, overrides=flushes)
    store = await asyncio.to_thread(CandleStore, store_path)
    service = IngestService(
        config,
        token_source=SimulatorTokenSource(url, TOKEN),
        source_clock_ms=lambda: START_MS,  # the child's manual clock never moves
        store=store,
    )
    began = time.perf_counter()
    runner = asyncio.create_task(service.run())
    try:
        subscribed = await wait_until(lambda: service.client is not None, within=120, what="client")
        received = await wait_until(
            lambda: service.stats.candles_received >= expected_events,
            within=600,
            what=f"{expected_events} events received",
        )
        report = await service.flush("benchmark")
        durable = time.perf_counter()
        if report.error is not None:
            raise RuntimeError(f"the benchmark's flush failed: {report.error}")
        stored = await asyncio.to_thread(store.count)
    finally:
        service.stop()
        await runner
        await asyncio.to_thread(store.close)
    return {
        "startup_s": subscribed - began,
        "received_s": received - subscribed,
        "durable_s": durable - subscribed,
        "flush_s": durable - received,
        "stored": stored,
        "events": service.stats.candles_received,
        "flushes": service.stats.flushes,
        "backpressure_waits": service.stats.backpressure_waits,
        "flush_seconds": [round(f.seconds, 3) for f in service.stats.recent_flushes],
        "flush_rows": [f.written for f in service.stats.recent_flushes],
    }


async def measure(series: int, candles: int, workdir: Path) -> BenchResult:
    bases = symbols(series)
    keys = [f"{b}{{=1m}}" for b in bases]
    from_ms = START_MS - candles * MINUTE_MS
    idle = 1.0
    with SimulatorProcess(history_limit=candles + 100, history_days=None) as sim:
        first = await raw_receive(sim.url, keys, from_ms, idle=idle)
        events = count_feed_events(first.frames)
        ours = await measure_service(sim.url, bases, candles, workdir / "store", events)
        second = await raw_receive(sim.url, keys, from_ms, idle=idle)
    raw = min(first, second, key=lambda r: r.seconds)
    raw_rate = events / raw.seconds
    durable_rate = ours["stored"] / ours["durable_s"]
    received_rate = ours["events"] / ours["received_s"]
    expected = series * candles
    figures = [
        Figure(
            "backfill durable (subscribe -> stored)",
            durable_rate,
            "candles/s",
            "raw socket receive",
            raw_rate,
            f">= {TARGET:,.0f} candles/s",
            durable_rate >= TARGET,
        ),
        Figure(
            "backfill received into the manager",
            received_rate,
            "events/s",
            "raw socket receive",
            raw_rate,
        ),
        Figure("backfill durable, seconds", ours["durable_s"], "s", "raw receive", raw.seconds),
    ]
    details = {
        **ours,
        "expected_complete": expected,
        "raw_events": events,
        "raw_bytes": raw.bytes,
        "raw_frames": len(raw.frames),
        "raw_seconds": [first.seconds, second.seconds],
    }
    if ours["stored"] != expected:
        raise RuntimeError(f"stored {ours['stored']} candles, expected {expected}")
    return BenchResult(
        "backfill",
        f"Backfill: {series} series x {candles} 1m candles, simulator in its own process",
        figures,
        {"series": series, "candles_per_series": candles},
        details,
    )


def run(quick: bool, workdir: Path) -> BenchResult:
    """Run the benchmark (``quick``: 20 series x 500 candles) in ``workdir``."""
    series, candles = (20, 500) if quick else (200, 2000)
    return asyncio.run(measure(series, candles, workdir))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bench_backfill [--quick]``."""
    return bench_main("backfill", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
