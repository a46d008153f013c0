"""Conformance: a real third-party DXLink client, tastyware's ``DXLinkStreamer`` (tastytrade
13.2.3 from PyPI), against the simulator.

The streamer only needs a session whose ``_get("/api-quote-tokens")`` returns the DXLink URL and
token, and ``client_kwargs`` for its HTTP client (streamer.py ``__asynccontextmanager__``). It
runs its own handshake (SETUP, waits for AUTH_STATE, AUTH), opens channel 1 with contract
AUTO, sends FEED_SETUP with its 17 Candle fields in its own order and decodes COMPACT data
positionally (dxlink-protocol.md §7), so the simulator must honour acceptEventFields exactly.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from pipeline.dxlink import Candle as OurCandle
from pipeline.simulator import Simulator, SimulatorClock
from tests.helpers.timing import TIMEOUT

tastytrade = pytest.importorskip("tastytrade")
from tastytrade import DXLinkStreamer  # noqa: E402
from tastytrade.dxfeed import Candle  # noqa: E402

START = 1_756_252_800_000  # 2025-08-27T00:00Z
NOW = START + 2 * 3_600_000


class QuoteTokenSession:
    """Stands in for ``tastytrade.Session``: the REST call the streamer makes, answered."""

    def __init__(self, url: str, token: str) -> None:
        self.client_kwargs: dict[str, Any] = {}
        self._url = url
        self._token = token

    async def _get(self, path: str, **_: Any) -> dict[str, Any]:
        assert path == "/api-quote-tokens"
        return {"dxlink-url": self._url, "token": self._token, "level": "api"}


def same(received: Candle, truth: OurCandle) -> bool:
    """A tastyware Candle (Decimals, None for NaN) equals the simulator's truth."""

    def num(value: float) -> Decimal | None:
        return None if value != value else Decimal(repr(value))

    return (
        received.event_symbol == truth.symbol
        and received.time == truth.time
        and received.index == truth.index
        and received.count == truth.count
        and (received.open, received.high, received.low, received.close)
        == (num(truth.open), num(truth.high), num(truth.low), num(truth.close))
        and received.volume == num(truth.volume)
        and received.vwap == num(truth.vwap)
        and received.bid_volume == num(truth.bid_volume)
        and received.ask_volume == num(truth.ask_volume)
    )


async def next_candles(streamer: DXLinkStreamer, count: int) -> list[Candle]:
    async with asyncio.timeout(TIMEOUT):
        return [await streamer.get_event(Candle) for _ in range(count)]


async def test_tastyware_streamer_receives_the_true_candles() -> None:
    """Snapshot newest first with SB ... SE, then live updates: all equal to truth()."""
    async with Simulator(clock=SimulatorClock.manual(NOW), token="tt-token") as sim:
        session = QuoteTokenSession(sim.url, "tt-token")
        async with DXLinkStreamer(session) as streamer:  # type: ignore[arg-type]
            start = datetime.fromtimestamp(START / 1000, UTC)
            await streamer.subscribe_candle(["AAPL"], "5m", start)
            snapshot = await next_candles(streamer, 24)
            truth = sim.truth("AAPL{=5m,tho=true}", START)
            assert len(truth) == 24
            assert [c.time for c in snapshot] == [c.time for c in reversed(truth)]
            assert snapshot[0].snapshot_begin and snapshot[-1].snapshot_end
            assert all(same(r, t) for r, t in zip(snapshot, reversed(truth), strict=True))

            await sim.wait_for_subscriptions(1)
            await sim.advance(5 * 60 + 30)
            live = await next_candles(streamer, 2)
            latest = sim.truth("AAPL{=5m,tho=true}", NOW, include_live=True)
            assert [c.time for c in live] == [NOW, NOW + 300_000]
            assert all(same(r, t) for r, t in zip(live, latest, strict=True))
            assert not any(c.event_flags for c in live)
