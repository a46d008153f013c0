"""Recovery (issue 6, item 4): abrupt disconnect -> first new data, and -> gap in the store.

An in-process simulator on a manual clock serves S series of 1m candles to an
:class:`IngestService` (product defaults for backoff and timeouts, except ``healthy_after``
= 0: rounds are seconds apart, and each models the drop of a connection that had been
healthy long enough for the backoff to start over). Each round:

1. flush, so the store's resume points are current;
2. ``drop_connections()`` (TCP abort, no close frame, §2.6's "network failed"), then the clock
   moves two minutes while nobody is connected: a gap of two candles per series;
3. time until the service receives its first candle after the drop (**first data**);
4. once every series' snapshot and live candle arrived, one flush; time until then, and check
   the store holds exactly the simulator's candles over the gap (**gap closed by the next
   flush**).

Baseline (same run): a fresh :class:`DXLinkManager` connect + handshake + subscribe to the
first candle batch. Target: first data <= 1 s (median); gap closed by the next flush.
Observer resolution: 2 ms for first data, 20 ms for "every series caught up".
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.e2e_common import (
    MINUTE_MS,
    START_MS,
    TOKEN,
    BenchResult,
    Figure,
    bench_config,
    bench_main,
    symbols,
    wait_until,
)
from pipeline.dxlink.client import DXLinkManager
from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.ingest.tuning import ingest_process_tuning
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore

__all__ = ["TARGET_SECONDS", "fresh_connect_seconds", "main", "measure", "run"]

TARGET_SECONDS = 1.0
"""Median seconds from an abrupt disconnect to the first new data (issue 6)."""
POLL_CAUGHT_UP = 0.02
"""Polling of "every series caught up" (it reads every held candle): its resolution."""


async def fresh_connect_seconds(sim: Simulator, series: str, from_ms: int) -> float:
    """Seconds from a new client's start to its first candle batch (connect + handshake +
    subscribe + first data)."""
    client = DXLinkManager(
        SimulatorTokenSource(sim.url, TOKEN), wall_clock=lambda: sim.now_ms / 1000
    )
    began = time.perf_counter()
    try:
        await client.start()
        await client.subscribe_to_candles(symbol=series, from_time=from_ms)
        async for _batch in client.candles():
            return time.perf_counter() - began
    finally:
        await client.aclose()
    raise RuntimeError("the client ended before any candle arrived")


def _gap_stored(
    sim: Simulator, store: CandleStore, keys: Sequence[str], gap: tuple[int, int]
) -> bool:
    """Whether the store holds every final candle the simulator serves in ``gap``."""
    for key in keys:
        want = [c.time for c in sim.truth(key, *gap)]
        have = store.history(key, *gap)
        if have.height != len(want) or not want:
            return False
    return True


def _caught_up(service: IngestService, keys: Sequence[str], newest_ms: int) -> bool:
    """Every series holds a candle at ``newest_ms`` or later, and none is mid-snapshot."""
    if service.manager.stats().buffered_events:
        return False
    for key in keys:
        held = service.manager.history(key)
        if not held or held[-1].timestamp.timestamp() * 1000 < newest_ms:
            return False
    return True


async def measure(series_count: int, rounds: int, workdir: Path) -> BenchResult:
    bases = symbols(series_count)
    keys = [f"{b}{{=1m}}" for b in bases]
    from_ms = START_MS - 30 * MINUTE_MS
    first_data: list[float] = []
    closed: list[float] = []
    closed_by_one_flush: list[bool] = []
    fresh: list[float] = []
    async with Simulator(token=TOKEN, clock=SimulatorClock.manual(START_MS)) as sim:
        # Rounds are seconds apart; each models the drop of a connection that had been
        # healthy for the product's healthy_after (30 s), after which backoff starts over.
        healthy = {"client.healthy_after": 0.0}
        config = bench_config(workdir / "store", bases=bases, from_ms=from_ms, overrides=healthy)
        store = await asyncio.to_thread(CandleStore, workdir / "store")
        service = IngestService(
            config,
            token_source=SimulatorTokenSource(sim.url, TOKEN),
            source_clock_ms=lambda: sim.now_ms,
            store=store,
        )
        runner = asyncio.create_task(service.run())
        try:
            await sim.wait_for_subscriptions(series_count)
            for _ in range(rounds):
                fresh.append(await fresh_connect_seconds(sim, keys[0], sim.now_ms - MINUTE_MS))
                await sim.advance(60)
                await wait_until(
                    lambda: service.stats.stream_time_ms >= sim.now_ms - MINUTE_MS,
                    within=60, what="live data before the drop",
                )  # fmt: skip
                await service.flush("benchmark")
                gap_from = sim.now_ms - MINUTE_MS
                received = service.stats.candles_received

                def first_after(before: int = received) -> bool:
                    return service.stats.candles_received > before

                connects = sim.connect_count
                dropped = time.perf_counter()
                await sim.drop_connections()
                await sim.advance(120)
                got = await wait_until(first_after, within=60, what="first data")
                first_data.append(got - dropped)
                if sim.connect_count <= connects:
                    raise RuntimeError("first data after the drop came without a reconnect")
                await wait_until(
                    lambda: _caught_up(service, keys, sim.now_ms - MINUTE_MS),
                    within=60, what="every series' gap snapshot applied", poll=POLL_CAUGHT_UP,
                )  # fmt: skip
                await service.flush("benchmark")
                closed.append(time.perf_counter() - dropped)
                gap = (gap_from, sim.now_ms - MINUTE_MS)
                closed_by_one_flush.append(
                    await asyncio.to_thread(_gap_stored, sim, store, keys, gap)
                )
        finally:
            service.stop()
            await runner
            await asyncio.to_thread(store.close)
    median_first = statistics.median(first_data)
    median_fresh = statistics.median(fresh)
    all_closed = all(closed_by_one_flush)
    figures = [
        Figure(
            "recovery: disconnect -> first new data (median)",
            median_first, "s", "fresh connect+handshake", median_fresh,
            f"<= {TARGET_SECONDS} s", median_first <= TARGET_SECONDS,
        ),
        Figure(
            "recovery: disconnect -> gap durable (median)",
            statistics.median(closed), "s", "fresh connect+handshake", median_fresh,
            "closed by the next flush", all_closed,
        ),
    ]  # fmt: skip
    return BenchResult(
        "recovery",
        f"Recovery: {series_count} series, {rounds} abrupt disconnects, loopback",
        figures,
        {
            "series": series_count,
            "rounds": rounds,
            "backoff_initial": config.client.backoff_initial,
        },
        {
            "first_data_s": first_data,
            "gap_durable_s": closed,
            "fresh_connect_s": fresh,
            "gap_closed_by_one_flush": closed_by_one_flush,
        },
    )


def run(quick: bool, workdir: Path) -> BenchResult:
    """Run the benchmark (``quick``: 5 series, 3 rounds) in ``workdir``."""
    series, rounds = (5, 3) if quick else (50, 9)
    with ingest_process_tuning():  # as `candles ingest` runs the service
        return asyncio.run(measure(series, rounds, workdir))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bench_recovery [--quick]``."""
    return bench_main("recovery", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
