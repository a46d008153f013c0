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

Where the wall time goes (details): the event loop thread's CPU seconds, its seconds runnable
but waiting for a core (Linux ``/proc/self/task/<tid>/schedstat``: the box's load, not ours),
the rest (blocked: the GIL, the socket); the process's CPU seconds, the simulator process's;
and the garbage collector's collections and seconds per generation, all over the service's run.

**CPU bound**: the rate this code could reach on this box if nothing waited, from the CPU it
spent: the event loop thread runs on one core at a time, and ingest plus simulator share the
box's cores, so the run cannot take less than ``max(loop thread CPU, (ingest CPU + simulator
CPU) / cores)``. A target above this bound needs less CPU per candle, not less waiting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.ingest.tuning import ingest_process_tuning
from pipeline.store import CandleStore

__all__ = ["TARGET", "main", "measure", "measure_service", "run"]

TARGET = 200_000.0
"""Candles per second made durable (issue 6)."""


def _thread_schedstat() -> tuple[float, float] | None:
    """(CPU s, run-queue wait s) of the calling thread, or None where Linux does not say."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as stat:
            on_cpu, waiting, _ = stat.read().split()
    except (OSError, ValueError):
        return None
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def _process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) another process has used so far (Linux ``/proc``), else 0."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # Fields after the parenthesised command: utime and stime are the 12th and 13th.
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _where_time_goes(into: dict[str, Any], simulator_pid: int | None) -> Iterator[None]:
    """Fill ``into`` with the calling (event loop) thread's and the GC's share of the block,
    and the simulator process's CPU over it."""
    collections = {generation: [0, 0.0] for generation in range(3)}
    began_at = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began_at[0] = time.perf_counter()
        else:
            spent = collections[info["generation"]]
            spent[0] += 1
            spent[1] += time.perf_counter() - began_at[0]

    gc.callbacks.append(on_gc)
    before, cpu_before, wall_before = _thread_schedstat(), time.process_time(), time.perf_counter()
    simulator_before = _process_cpu(simulator_pid)
    try:
        yield
    finally:
        gc.callbacks.remove(on_gc)
        wall = time.perf_counter() - wall_before
        after = _thread_schedstat()
        into["process_cpu_s"] = round(time.process_time() - cpu_before, 3)
        into["simulator_cpu_s"] = round(_process_cpu(simulator_pid) - simulator_before, 3)
        into["gc_collections"] = [spent[0] for spent in collections.values()]
        into["gc_s"] = [round(spent[1], 3) for spent in collections.values()]
        if before is not None and after is not None:
            on_cpu, waiting = after[0] - before[0], after[1] - before[1]
            into["loop_thread_s"] = {
                "wall": round(wall, 3),
                "cpu": round(on_cpu, 3),
                "runqueue_wait": round(waiting, 3),
                "blocked": round(wall - on_cpu - waiting, 3),
            }


async def measure_service(
    url: str,
    bases: Sequence[str],
    candles: int,
    store_path: Path,
    expected_events: int,
    simulator_pid: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the ingest service until ``expected_events`` arrived and one flush stored them.

    ``overrides`` are further config settings (``bench_recording`` turns recording on).

    Returns:
        Timings (perf_counter seconds) and counts: ``startup``, ``received``, ``durable``
        (both from the client's start), ``stored`` rows, ``events`` received, ``flushes``,
        ``backpressure_waits`` (the reader held until a flush made room), each flush's
        seconds and rows, where the time went (see the module docstring), and with recording
        on the recorder's counters (``recording``).
    """
    from_ms = START_MS - candles * MINUTE_MS
    # The product's flush schedule (5 s): flushes overlap the receiving, as they would.
    settings: dict[str, Any] = {"schedule.flush_interval": 5.0, **(overrides or {})}
    config = bench_config(store_path, bases=bases, from_ms=from_ms, overrides=settings)
    store = await asyncio.to_thread(CandleStore, store_path)
    service = IngestService(
        config,
        token_source=SimulatorTokenSource(url, TOKEN),
        source_clock_ms=lambda: START_MS,  # the child's manual clock never moves
        store=store,
    )
    began = time.perf_counter()
    runner = asyncio.create_task(service.run())
    spent: dict[str, Any] = {}
    try:
        subscribed = await wait_until(lambda: service.client is not None, within=120, what="client")
        with _where_time_goes(spent, simulator_pid):
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
    if service.recorder is not None:
        spent["recording"] = dataclasses.asdict(service.recorder.stats)
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
        **spent,
    }


async def measure(series: int, candles: int, workdir: Path) -> BenchResult:
    bases = symbols(series)
    keys = [f"{b}{{=1m}}" for b in bases]
    from_ms = START_MS - candles * MINUTE_MS
    idle = 1.0
    with SimulatorProcess(history_limit=candles + 100, history_days=None) as sim:
        first = await raw_receive(sim.url, keys, from_ms, idle=idle)
        events = count_feed_events(first.frames)
        ours = await measure_service(sim.url, bases, candles, workdir / "store", events, sim.pid)
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
    bound = cpu_bound(ours, expected)
    if bound is not None:
        figures.append(
            Figure("CPU bound of this code here", bound, "candles/s", "durable", durable_rate)
        )
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


def cpu_bound(spent: dict[str, Any], candles: int) -> float | None:
    """Candles/s this code could reach here from the CPU it spent (module docstring)."""
    loop = spent.get("loop_thread_s")
    if loop is None:
        return None
    cores = os.cpu_count() or 1
    total = spent["process_cpu_s"] + spent.get("simulator_cpu_s", 0.0)
    floor = max(loop["cpu"], total / cores)
    return candles / floor if floor > 0 else None


def run(quick: bool, workdir: Path) -> BenchResult:
    """Run the benchmark (``quick``: 20 series x 500 candles) in ``workdir``."""
    series, candles = (20, 500) if quick else (200, 2000)
    with ingest_process_tuning():  # as `candles ingest` runs the service
        return asyncio.run(measure(series, candles, workdir))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bench_backfill [--quick]``."""
    return bench_main("backfill", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
