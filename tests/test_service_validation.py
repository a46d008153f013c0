"""Ingest against bad data (issue 14, items 1, 2 and 6), at the service level: the real
simulator over real sockets sends hostile Candle events; ingest keeps running, stores only
the truth and counts what it dropped; unsolicited series take no slot; a candle from the
future in the store never becomes a resume point; the status line survives any stream time."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.dxlink import Candle, index_of
from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.ingest.runner import status_line
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore
from tests.helpers.service import (
    START,
    START_MS,
    TOKEN,
    differences,
    eventually,
    make_service,
    service_config,
    stored_frame,
    truth_frame,
)
from tests.helpers.store import candle_frame

MINUTE = 60_000
SERIES = "AAPL{=m}"
YEAR_2038 = int(datetime(2038, 1, 1, tzinfo=UTC).timestamp() * 1000)


def _candle(symbol: str, time: int, **values: float) -> Candle:
    fields = {"count": 3, "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 1.0}
    fields.update(values)
    index = index_of(time) if -(2**31) * 1000 <= time < 2**31 * 1000 else 0
    return Candle(symbol, time, 0, 0, index, 0, **fields)  # type: ignore[arg-type]


async def test_hostile_events_neither_stop_ingest_nor_reach_the_store(tmp_path: Path) -> None:
    """Year 1, 2**62, a 2038 candle, negative volume, ±Inf, off-period and unsolicited
    events: ingest goes on, the store equals the truth, every drop is counted by reason."""
    store_path = tmp_path / "data"
    config = service_config(store_path, symbols=("AAPL",), intervals=("1m",))
    from_ms = START_MS - 3600_000
    async with Simulator(token=TOKEN, seed=3, clock=SimulatorClock.manual(START_MS)) as sim:
        service = make_service(config, sim)
        runner = asyncio.create_task(service.run())
        await sim.wait_for_subscriptions(1)
        await sim.advance(60)
        live = START_MS + MINUTE
        hostile = [
            _candle(SERIES, -62_135_596_800_000),  # year 1: struct.error on main
            _candle(SERIES, 2**62),  # ValueError in the status line on main
            _candle(SERIES, YEAR_2038),  # would become the resume point
            _candle(SERIES, live, volume=-5.0),
            _candle(SERIES, live, close=float("inf")),
            _candle(SERIES, live + 4_210),  # 1m candle off the minute
            _candle("MSFT{=m}", live),  # nobody subscribed it
        ]
        received = service.stats.candles_received
        await sim.send_candles(hostile)
        await eventually(
            lambda: service.stats.candles_received >= received + len(hostile),
            what="the hostile events received",
        )
        await sim.advance(120)
        end = sim.now_ms
        await eventually(
            lambda: runner.done() or service.stats.stream_time_ms >= end - MINUTE,
            what="live data",
        )
        assert not runner.done(), "ingest stopped on bad data"
        await service.flush("test")
        stats = service.manager.stats()
        stream_time = service.stats.stream_time_ms
        line = status_line(service, 0.0)
        service.stop()
        await runner
        with CandleStore(store_path) as store:
            problems = differences(
                truth_frame(sim, SERIES, from_ms, end - MINUTE),
                stored_frame(store, SERIES, from_ms, end - MINUTE),
            )
            everything = store.history(SERIES)
    assert problems == []
    assert everything["time"].dt.epoch("ms").to_list()[-1] < end  # nothing from 2038 or 2**62
    assert {k: v for k, v in stats.invalid_by_reason.items() if v} == {
        "time_range": 2, "future": 1, "negative": 1, "ohlc": 1, "off_period": 1,
    }  # fmt: skip
    assert stats.unsolicited_events == 1 and stats.series == 1
    assert stream_time < end + MINUTE  # the 2038 candle did not move the stream clock
    assert "stream 2026-11-03" in line


async def test_unsolicited_series_take_no_slot_of_the_services_series(tmp_path: Path) -> None:
    """The service's manager admits its configured series only, whatever arrives first."""
    config = service_config(tmp_path / "data", symbols=("AAPL",), intervals=("1m",))
    service = IngestService(config, token_source=SimulatorTokenSource("ws://127.0.0.1:9", TOKEN))
    first = [_candle(f"X{i}{{=m}}", START_MS) for i in range(1_000)]
    service.manager.update([*first, _candle(SERIES, START_MS)], START_MS)
    assert service.manager.series() == [SERIES]
    assert len(service.manager.history(SERIES)) == 1
    assert service.manager.stats().unsolicited_events == 1_000


async def test_a_future_candle_in_the_store_is_not_the_resume_point(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 2038 candle stored before the door existed: the series resumes from the configured
    lookback (said once in the log), and the candle is not warm-started either."""
    store_path = tmp_path / "data"
    from_ms = START_MS - 3600_000
    config = service_config(store_path, symbols=("AAPL",), intervals=("1m",), from_ms=from_ms)
    with CandleStore(store_path) as store:
        store.upsert(candle_frame("AAPL", "1m", 2, start=datetime(2038, 1, 1, tzinfo=UTC)))
    async with Simulator(token=TOKEN, seed=3, clock=SimulatorClock.manual(START_MS)) as sim:
        service = make_service(config, sim)
        with caplog.at_level(logging.WARNING, logger="pipeline"):
            runner = asyncio.create_task(service.run())
            await sim.wait_for_subscriptions(1)
            subscribed = sim.subscriptions()
            await sim.drop_connections()  # a reconnect asks for resume points again
            await eventually(lambda: sim.connect_count >= 2, what="a reconnect")
            await sim.wait_for_subscriptions(1)
            resubscribed = sim.subscriptions()
            await eventually(lambda: service.stats.candles_received > 0, what="data")
            held = service.manager.history(SERIES)
            service.stop()
            await runner
    from_times = [t for subs in (subscribed, resubscribed) for t in subs[max(subs)].values()]
    assert from_times == [from_ms, from_ms]
    assert held and all(c.timestamp.year == START.year for c in held)
    messages = [r.getMessage() for r in caplog.records]
    warned = [m for m in messages if "resuming from the configured lookback" in m]
    assert len(warned) == 1 and SERIES in warned[0] and "2038" in warned[0]
    assert any("(future; 1 so far" in m for m in messages)  # not warm-started either


@pytest.mark.parametrize("stream_ms", [2**62, -62_135_596_800_000, -(2**63), 0])
def test_the_status_line_survives_any_stream_time(tmp_path: Path, stream_ms: int) -> None:
    """Whatever time the stream reached, the status line renders instead of raising."""
    config = service_config(tmp_path / "data", symbols=("AAPL",), intervals=("1m",))
    service = IngestService(config, token_source=SimulatorTokenSource("ws://127.0.0.1:9", TOKEN))
    service.stats.stream_time_ms = stream_ms
    line = status_line(service, 12.0)
    assert "stream " in line and "12 candles/s" in line
