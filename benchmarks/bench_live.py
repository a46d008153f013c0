"""Live ingest (issue 6, item 3): S series updating at the simulator's accelerated clock.

The simulator runs in its own process (speed 60: one 1m candle per series per real second),
and so does the raw receiver that measures what it offers (``e2e_common.RawTap``), so this
process's CPU time (``time.process_time``, every thread: the client, the manager and the
store's flushes, ``schedule.flush_interval`` = 1 s) is the ingest service's alone.

* **CPU seconds per 100,000 candle updates** at the first step (a publish round every
  100 ms). Baseline (same run, same simulator): the raw receiver, which takes the same feed
  off its socket and does nothing with it, measured alone before the service starts.
* **Highest sustained update rate**: the simulator's publish interval is stepped down
  (more rounds per second, so more updates per second) while the service runs. A step is
  *kept up* when the service receives at least 90 % of the rate the raw receiver got in the
  same window (the rate offered). The figure is the highest received rate of a kept-up step;
  the table also shows the first step that was not. When every step is kept up the figure is
  what the simulator could offer, a lower bound of the client's (``limited_by``). Also shown:
  the ceiling that CPU time alone allows, one core / CPU per update. (The lag behind the
  simulator's clock is recorded per step but not judged: the newest candle's ``eventTime``
  trails the clock by the market's quiet spells.)

The service subscribes from two minutes before the simulator's clock (as the raw receiver
does), and the steps start once its snapshots are in (3 events per series, then 1 s), so no
step counts snapshot events as updates.

Client settings: ``aggregation_period`` = 0 (the server may send every round), subscriptions
not rate-limited; everything else as the product ships, except the manager's grace
(:data:`GRACE_S` of simulated time, half the 1 s = 60 simulated s between flushes). With none,
a candle whose period has just ended is handed out before the round that brings its successor
(and its own last update) arrives, and is written again as a revision: each flush wrote
~1,000 or ~2,000 rows depending on where it fell against the simulated minute, and the figure
moved by up to 0.4 CPU s per 100,000 updates between runs of the same code. On tastytrade the
product's grace (5 s) covers the ~1 s between a period's end and its successor's first
update; here one round alone is 6 simulated seconds, and a loaded box delays rounds further.
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
    TOKEN,
    BenchResult,
    Figure,
    RawTap,
    SimulatorProcess,
    bench_config,
    bench_main,
    symbols,
    wait_until,
)
from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.ingest.tuning import ingest_process_tuning
from pipeline.store import CandleStore

__all__ = ["GRACE_S", "KEEP_UP_RATE", "SPEED", "main", "measure", "run"]

SPEED = 60.0
"""Simulated seconds per real second."""
KEEP_UP_RATE = 0.9
"""Least fraction of the offered update rate a kept-up step receives."""
GRACE_S = 30.0
"""The manager's grace in simulated seconds (see the module docstring)."""


async def measure(
    series_count: int, intervals: Sequence[float], window: float, workdir: Path
) -> BenchResult:
    bases = symbols(series_count)
    keys = [f"{b}{{=1m}}" for b in bases]
    steps: list[dict[str, Any]] = []
    with (
        SimulatorProcess(speed=SPEED, publish_interval=intervals[0]) as sim,
        RawTap(sim.url, keys, sim.sim_now_ms() - 2 * MINUTE_MS) as tap,
    ):
        # The raw receiver alone first: the CPU floor of taking the feed.
        await wait_until(
            lambda: tap.events_between(0.0, float("inf")) > 0,
            within=300, what="the raw tap's first frame", poll=0.1,
        )  # fmt: skip
        await asyncio.sleep(1.0)  # past the snapshot, into the live updates
        cpu, began = tap.cpu_seconds(), time.perf_counter()
        await asyncio.sleep(window)  # the measurement window itself
        ended = time.perf_counter()
        raw_cpu = tap.cpu_seconds() - cpu
        raw_events = tap.events_between(began, ended)
        raw_rate = raw_events / (ended - began)
        config = bench_config(
            workdir / "store", bases=bases, from_ms=sim.sim_now_ms() - 2 * MINUTE_MS,
            overrides={
                "client.aggregation_period": 0.0,
                "schedule.flush_interval": 1.0,
                "manager.grace_seconds": GRACE_S,
            },
        )  # fmt: skip
        store = await asyncio.to_thread(CandleStore, workdir / "store")
        service = IngestService(
            config,
            token_source=SimulatorTokenSource(sim.url, TOKEN),
            source_clock_ms=sim.sim_now_ms,
            store=store,
        )
        runner = asyncio.create_task(service.run())

        def lag() -> float:
            return (sim.sim_now_ms() - service.stats.stream_time_ms) / SPEED / 1000

        try:
            await wait_until(
                lambda: service.stats.candles_received >= 3 * series_count, within=300,
                what="snapshots",
            )  # fmt: skip
            await asyncio.sleep(1.0)  # the last snapshots' events in, live updates flowing
            for interval in intervals:
                sim.set_publish_interval(interval)
                await asyncio.sleep(max(2 * interval, 0.5))  # the new interval in effect
                received, cpu, lag_before = (
                    service.stats.candles_received,
                    time.process_time(),
                    lag(),
                )
                began = time.perf_counter()
                await asyncio.sleep(window)  # the measurement window itself
                ended = time.perf_counter()
                updates = service.stats.candles_received - received
                used = time.process_time() - cpu
                growth = lag() - lag_before
                offered = await asyncio.to_thread(tap.events_between, began, ended)
                offered_rate = offered / (ended - began)
                rate = updates / (ended - began)
                steps.append(
                    {
                        "publish_interval": interval,
                        "offered_per_s": offered_rate,
                        "received_per_s": rate,
                        "cpu_s_per_100k": used / max(updates, 1) * 100_000,
                        "cpu_fraction": used / (ended - began),
                        "lag_growth_s": growth,
                        # None: the raw receiver got nothing, so nothing to judge against.
                        "kept_up": rate >= KEEP_UP_RATE * offered_rate if offered else None,
                    }
                )
                if steps[-1]["kept_up"] is False:
                    break
        finally:
            service.stop()
            await asyncio.gather(runner, return_exceptions=True)
            await asyncio.to_thread(store.close)
    kept = [s for s in steps if s["kept_up"] is True]
    best = max(kept, key=lambda s: s["received_per_s"], default=None)
    missed = [s for s in steps if s["kept_up"] is False]
    first = steps[0]
    raw_per_100k = raw_cpu / max(raw_events, 1) * 100_000
    figures = [
        Figure(
            "live CPU per 100k updates", first["cpu_s_per_100k"], "CPU s", "raw receive",
            raw_per_100k,
        ),
        Figure(
            "live CPU-bound ceiling (one core, from CPU per update)",
            100_000 / first["cpu_s_per_100k"], "updates/s", "raw receive",
            100_000 / max(raw_per_100k, 1e-9),
        ),
        Figure(
            "live highest sustained update rate",
            0.0 if best is None else best["received_per_s"], "updates/s",
            "offered then", None if best is None else best["offered_per_s"],
        ),
    ]  # fmt: skip
    if missed:
        figures.append(
            Figure(
                "live first step not kept up: received",
                missed[0]["received_per_s"], "updates/s", "offered", missed[0]["offered_per_s"],
            )
        )  # fmt: skip
    return BenchResult(
        "live",
        f"Live ingest: {series_count} series of 1m candles, speed {SPEED:.0f}x, "
        f"{window:.0f} s per step",
        figures,
        {"series": series_count, "speed": SPEED, "window_s": window, "intervals": list(intervals)},
        {
            "steps": steps,
            "limited_by": "client" if missed else "simulator (every step kept up)",
            "raw_events": raw_events,
            "raw_rate": raw_rate,
            "raw_cpu_s": raw_cpu,
        },
    )


def run(quick: bool, workdir: Path) -> BenchResult:
    """Run the benchmark (``quick``: 100 series, two 1.5 s steps) in ``workdir``."""
    with ingest_process_tuning():  # as `candles ingest` runs the service
        if quick:
            return asyncio.run(measure(100, (0.1, 0.05), 1.5, workdir))
        return asyncio.run(measure(1000, (0.1, 0.05, 0.025, 0.0125, 0.00625), 8.0, workdir))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bench_live [--quick]``."""
    return bench_main("live", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
