"""The client's frame tap sees every frame in and out, per connection, over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest

from pipeline.dxlink.client import Connected, ConnectionTap, SnapshotComplete
from pipeline.simulator import Simulator, SimulatorClock
from tests.dxlink.harness import HOUR, NOW, SIM_TOKEN, Lifecycle, make_client
from tests.helpers.service import eventually
from tests.helpers.timing import TIMEOUT


@dataclass
class TappedConnection:
    """A ``ConnectionTap`` keeping what it was given, in order."""

    url: str
    attempt: int
    secrets: tuple[str, ...]
    frames: list[tuple[str, str]] = field(default_factory=list)
    """(direction, text): ``<`` received, ``>`` sent."""
    ended: list[str] = field(default_factory=list)

    def received(self, frame: str | bytes) -> None:
        self.frames.append(("<", frame.decode() if isinstance(frame, bytes) else frame))

    def sent(self, frame: str) -> None:
        self.frames.append((">", frame))

    def closed(self, reason: str) -> None:
        self.ended.append(reason)


class ListTap:
    """A ``FrameTap`` keeping every connection in memory."""

    def __init__(self) -> None:
        self.connections: list[TappedConnection] = []

    def connection(self, url: str, *, attempt: int, secrets: tuple[str, ...]) -> ConnectionTap:
        record = TappedConnection(url, attempt, secrets)
        self.connections.append(record)
        return record


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(clock=SimulatorClock.manual(NOW), token=SIM_TOKEN) as simulator:
        yield simulator


def received(connection: TappedConnection) -> list[str]:
    return [text for direction, text in connection.frames if direction == "<"]


def types(frames: list[tuple[str, str]], direction: str) -> list[str]:
    return [orjson.loads(text)["type"] for d, text in frames if d == direction]


async def test_the_tap_sees_every_frame_both_ways_in_order(sim: Simulator) -> None:
    """Every frame the simulator sent is received by the tap, every frame it got was sent,
    in protocol order, with the token handed over as a secret."""
    tap, lifecycle = ListTap(), Lifecycle()
    async with make_client(sim, lifecycle, frame_tap=tap) as manager:
        await manager.subscribe_to_candles(symbol="AAPL", interval="5m", from_time=NOW - HOUR)
        await lifecycle.wait_for(SnapshotComplete)
        await sim.advance(300)
        await eventually(
            lambda: len(received(tap.connections[0])) >= sim.stats.messages_sent,
            within=TIMEOUT,
            what="every frame the simulator sent",
        )
    (connection,) = tap.connections
    assert connection.url == sim.url and connection.attempt == 0
    assert connection.secrets == (SIM_TOKEN,)
    assert len(received(connection)) == sim.stats.messages_sent
    assert len([t for d, t in connection.frames if d == ">"]) == sim.stats.messages_received
    assert types(connection.frames, ">")[:2] == ["SETUP", "AUTH"]
    assert types(connection.frames, "<")[:3] == ["SETUP", "AUTH_STATE", "AUTH_STATE"]
    assert "FEED_DATA" in types(connection.frames, "<")
    # AUTH went out only after the server's first AUTH_STATE (§2.2): the order is kept.
    order = [(d, orjson.loads(t)["type"]) for d, t in connection.frames]
    assert order.index((">", "AUTH")) > order.index(("<", "AUTH_STATE"))
    assert connection.ended == ["closed by the client"]


async def test_each_reconnect_is_a_new_tapped_connection_with_its_end(sim: Simulator) -> None:
    """A drop ends the tapped connection with the reason; the next one is tapped anew."""
    tap, lifecycle = ListTap(), Lifecycle()
    async with make_client(sim, lifecycle, frame_tap=tap) as manager:
        await manager.subscribe_to_candles(symbol="SPY", interval="1m", from_time=NOW - HOUR)
        await lifecycle.wait_for(SnapshotComplete)
        await sim.drop_connections()
        await lifecycle.wait_for(Connected, 2)
        await lifecycle.wait_for(SnapshotComplete, 2)
    first, second = tap.connections
    assert first.ended and "ConnectionClosed" in first.ended[0]
    assert second.attempt >= 1 and second.ended == ["closed by the client"]
    assert types(second.frames, ">")[:2] == ["SETUP", "AUTH"]
