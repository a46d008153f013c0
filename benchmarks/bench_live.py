"""Live ingest (issue 6, item 3): S series updating at the simulator's accelerated clock.

The simulator runs in its own process (speed 60: one 1m candle per series per real second),
so this process's CPU time (``time.process_time``, every thread: the client, the manager and
the store's flushes, ``schedule.flush_interval`` = 1 s) is the ingest service's alone.

* **CPU seconds per 100,000 candle updates** at the first step (a publish round every
  100 ms). Baseline (same run, same simulator): a raw receiver that takes the same feed off
  the socket and does nothing with it (``e2e_common.raw_receive``).
* **Highest sustained update rate**: the simulator's publish interval is stepped down
  (more rounds per second, so more updates per second) while the service runs. A step is
  *kept up* when its received rate reaches 90 % of the rate offered, which a raw receiver
  connected alongside through every step measures (it takes frames off its socket and
  nothing else; its CPU, a few % of the service's, is in the step's CPU figure). The figure
  is the highest received rate of a kept-up step; the table also shows the first step that
  was not. A step where the raw receiver got nothing is not judged. Also shown: the ceiling
  that CPU time alone allows, one core / CPU per update. (The lag behind the simulator's
  clock is recorded per step but not judged: the newest candle's ``eventTime`` trails the
  clock by the market's quiet spells.)

Client settings: ``aggregation_period`` = 0 (the server may send every round), subscriptions
not rate-limited; everything else as the product ships.
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

__all__ = ["KEEP_UP_RATE", "SPEED", "main", "measure", "run"]

SPEED = 60.0
"""Simulated seconds per real second."""
KEEP_UP_RATE = 0.9
"""Least fraction of the offered update rate a kept-up step receives."""


def _events_between(tap: list[tuple[float, str | bytes]], begin: float, end: float) -> int:
    return count_feed_events([frame for at, frame in tap if begin <= at < end])


async def measure(
    series_count: int, intervals: Sequence[float], window: float, workdir: Path
) -> BenchResult:
    bases = symbols(series_count)
    keys = [f"{b}{{=1m}}" for b in bases]
    from_ms = START_MS - 2 * MINUTE_MS
    steps: list[dict[str, Any]] = []
    tap: list[tuple[float, str | bytes]] = []
    with SimulatorProcess(speed=SPEED, publish_interval=intervals[0]) as sim:
        # The raw receiver stays connected through every step: it measures what the
        # simulator offers. Alone first, it also gives the CPU floor of taking the feed.
        raw = asyncio.create_task(
            raw_receive(
                sim.url, keys, sim.sim_now_ms() - 2 * MINUTE_MS, idle=30.0,
                aggregation_period=0.0, into=tap,
            )
        )  # fmt: skip
        await wait_until(
            lambda: len(tap) > 0 or raw.done(), within=300, what="raw receiver's first frame"
        )
        if raw.done():
            raw.result()  # raises what ended it
        await asyncio.sleep(1.0)  # past the snapshot, into the live updates
        cpu, began = time.process_time(), time.perf_counter()
        await asyncio.sleep(window)  # the measurement window itself
        ended = time.perf_counter()
        raw_cpu = time.process_time() - cpu
        raw_events = _events_between(tap, began, ended)
        raw_rate = raw_events / (ended - began)
        config = bench_config(
            workdir / "store", bases=bases, from_ms=from_ms,
            overrides={"client.aggregation_period": 0.0, "schedule.flush_interval": 1.0},
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
                lambda: service.stats.candles_received >= series_count, within=300, what="snapshots"
            )  # fmt: skip
            for interval in intervals:
                sim.set_publish_interval(interval)
                await asyncio.sleep(2 * interval)  # let the new interval take effect
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
                offered = _events_between(tap, began, ended) / (ended - began)
                rate = updates / (ended - began)
                growth = lag() - lag_before
                steps.append(
                    {
                        "publish_interval": interval,
                        "offered_per_s": offered,
                        "received_per_s": rate,
                        "cpu_s_per_100k": used / max(updates, 1) * 100_000,
                        "cpu_fraction": used / (ended - began),
                        "lag_growth_s": growth,
                        # None: the raw receiver got nothing, so nothing to judge against.
                        "kept_up": rate >= KEEP_UP_RATE * offered if offered > 0 else None,
                    }
                )
                if steps[-1]["kept_up"] is False:
                    break
        finally:
            service.stop()
            raw.cancel()
            await asyncio.gather(runner, raw, return_exceptions=True)
            await asyncio.to_thread(store.close)
    kept = [s for s in steps if s["kept_up"] is True]
    best = max(kept, key=lambda s: s["received_per_s"], default=None)
    first = steps[0]
    figures = [
        Figure(
            "live CPU per 100k updates",
            first["cpu_s_per_100k"], "CPU s", "raw receive",
            raw_cpu / max(raw_events, 1) * 100_000,
        ),
        Figure(
            "live CPU-bound ceiling (one core, from CPU per update)",
            100_000 / first["cpu_s_per_100k"], "updates/s", "raw receive",
            100_000 / max(raw_cpu / max(raw_events, 1) * 100_000, 1e-9),
        ),
        Figure(
            "live highest sustained update rate",
            0.0 if best is None else best["received_per_s"], "updates/s",
            "offered then", None if best is None else best["offered_per_s"],
        ),
    ]  # fmt: skip
    missed = [s for s in steps if s["kept_up"] is False]
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
        {"steps": steps, "raw_events": raw_events, "raw_rate": raw_rate, "raw_cpu_s": raw_cpu},
    )


def run(quick: bool, workdir: Path) -> BenchResult:
    """Run the benchmark (``quick``: 100 series, two 1.5 s steps) in ``workdir``."""
    if quick:
        return asyncio.run(measure(100, (0.1, 0.05), 1.5, workdir))
    return asyncio.run(measure(1000, (0.1, 0.05, 0.025, 0.0125, 0.00625), 8.0, workdir))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bench_live [--quick]``."""
    return bench_main("live", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
