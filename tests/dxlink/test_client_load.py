"""Batching and pacing limits at 10,000 series, BAD_ACTION recovery, 1009, back-pressure.

Against the real simulator over real sockets. The simulator is given limits modelled on
dxFeed's: 8192-byte client frames (its JS client's chunk size, §8) and a FEED_SUBSCRIPTION
rate limit; the client runs with its *default* batching and pacing settings.
"""

from __future__ import annotations

import asyncio

import pytest

from pipeline.dxlink import Candle, ConfigurationError
from pipeline.dxlink.client import Backpressure, Connected, SnapshotComplete
from pipeline.simulator import Simulator, SimulatorClock
from tests.dxlink.harness import (
    HOUR,
    NOW,
    SIM_TOKEN,
    Collector,
    Lifecycle,
    make_client,
)
from tests.helpers.timing import TIMEOUT

MINUTE = 60_000
INTERVALS = ["1m", "5m", "15m", "1h", "1d"]


async def test_ten_thousand_series_trip_neither_1009_nor_bad_action() -> None:
    """10,000 candle series with default settings: no 1009 close, no BAD_ACTION, all served."""
    symbols = [f"S{n:04d}" for n in range(2_000)]
    lifecycle = Lifecycle()
    async with Simulator(
        clock=SimulatorClock.manual(NOW),
        token=SIM_TOKEN,
        max_frame_size=8_192,
        subscription_rate=25.0,
        subscription_burst=25.0,
        history_days=1,
    ) as sim:
        manager = make_client(sim, lifecycle)
        async with manager:
            Collector(manager)
            keys = await manager.subscribe_to_candles_many(symbols, INTERVALS, NOW - MINUTE)
            assert len(set(keys)) == 10_000
            async with asyncio.timeout(3 * TIMEOUT):
                await sim.wait_for_subscriptions(10_000)
            await lifecycle.wait_for(SnapshotComplete, 10_000)
            metrics = manager.get_metrics()
        assert (sim.stats.closes_1009, sim.stats.bad_actions) == (0, 0)
        assert sim.connect_count == 1
    candles = metrics["channels"]["candles"]
    assert candles["subscription_items"] == 10_000
    assert candles["subscription_messages"] < 120  # full frames, not one message per series
    assert metrics["subscriptions"]["candles_by_state"]["live"] == 10_000


async def test_bad_action_slows_down_and_resends_until_everything_is_subscribed() -> None:
    """Too fast for the server: BAD_ACTION → halve the rate, re-send; all series end up served."""
    lifecycle = Lifecycle()
    async with Simulator(
        clock=SimulatorClock.manual(NOW),
        token=SIM_TOKEN,
        subscription_rate=20.0,
        subscription_burst=4.0,
    ) as sim:
        manager = make_client(
            sim, lifecycle, batch_max_items=1, subscribe_rate=40.0, subscribe_burst=40.0
        )
        async with manager:
            Collector(manager)
            await lifecycle.wait_for(Connected)
            symbols = [f"B{n}" for n in range(12)]
            await manager.subscribe_to_candles_many(symbols, ["1h"], NOW - HOUR)
            wanted = {f"{s}{{=h}}" for s in symbols}

            def all_subscribed() -> bool:
                return any(set(keys) == wanted for keys in sim.subscriptions().values())

            async with asyncio.timeout(TIMEOUT):
                await sim.wait_for(all_subscribed)
            metrics = manager.get_metrics()
    assert sim.stats.bad_actions > 0
    assert metrics["channels"]["candles"]["error_count"] == sim.stats.bad_actions
    assert metrics["channels"]["candles"]["resent_batches"] > 0
    assert metrics["subscriptions"]["subscribe_rate"] == 20.0  # halved once
    assert metrics["connection"]["connect_count"] == 1


async def test_frames_above_the_server_limit_stop_with_advice() -> None:
    """A batch limit above the server's frame limit: 1009 close → fatal error naming the fix."""
    lifecycle = Lifecycle()
    async with Simulator(
        clock=SimulatorClock.manual(NOW), token=SIM_TOKEN, max_frame_size=2_048
    ) as sim:
        manager = make_client(sim, lifecycle, batch_max_bytes=6_000)
        async with manager:
            symbols = [f"LONGSYMBOLNAME{n:03d}" for n in range(100)]
            await manager.subscribe_to_candles_many(symbols, ["1h"], NOW - HOUR)
            with pytest.raises(ConfigurationError, match=r"1009.*lower max_batch_bytes"):
                async with asyncio.timeout(TIMEOUT):
                    async for _ in manager.candles():
                        pass
        assert sim.stats.closes_1009 == 1
        assert sim.connect_count == 1  # fatal: no retry loop resending the same frame


async def test_slow_consumer_applies_back_pressure_without_loss() -> None:
    """A consumer that stops reading blocks the reader at queue_size batches; once it reads
    again every candle arrives, in order, exactly once."""
    lifecycle = Lifecycle()
    async with Simulator(clock=SimulatorClock.manual(NOW), token=SIM_TOKEN, chunk_size=50) as sim:
        manager = make_client(sim, lifecycle, queue_size=2)
        async with manager:
            await manager.subscribe_to_candles_many(["AAPL", "SPY"], ["1m"], NOW - 4 * HOUR)
            await lifecycle.wait_for(Backpressure)  # nobody reads: the queue filled up
            stalled = manager.get_metrics()
            received: list[Candle] = []
            done = asyncio.Event()

            async def consume() -> None:
                async for batch in manager.candles():
                    received.extend(batch)
                    if lifecycle.counts[SnapshotComplete] == 2 and len(received) >= 480:
                        done.set()

            consumer = asyncio.create_task(consume())
            async with asyncio.timeout(TIMEOUT):
                await done.wait()
            metrics = manager.get_metrics()
        await consumer
    assert stalled["channels"]["candles"]["queue_high_water_mark"] == 2
    assert stalled["delivery"]["blocked_count"] >= 1
    assert metrics["channels"]["candles"]["queue_high_water_mark"] == 2
    assert metrics["delivery"]["blocked_seconds"] > 0
    for symbol in ("AAPL{=m}", "SPY{=m}"):
        series = [c.time for c in received if c.symbol == symbol]
        truth = [c.time for c in sim.truth(symbol, NOW - 4 * HOUR, include_live=True)]
        assert sorted(set(series)) == truth  # nothing lost
        assert len(series) == len(truth)  # nothing duplicated
