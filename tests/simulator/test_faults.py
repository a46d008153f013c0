"""Each injected fault does what it says, over real sockets (STYLE.md §C).

Drops without a close frame, graceful closes, stalls with the socket open, malformed frames,
every ERROR code, token expiry, 1009 on a big client frame, BAD_ACTION on a subscription
burst, slow sending, and accept-then-drop for reconnect storms.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pipeline.dxlink import (
    Authorized,
    AuthRejected,
    CandlesReceived,
    ErrorCode,
    ErrorReceived,
    InvalidMessageReceived,
    SubscriptionItem,
)
from pipeline.dxlink.message_models import FeedSubscription
from pipeline.simulator import Simulator, SimulatorClock, parse_fault
from pipeline.simulator.periods import HOUR_MS, MINUTE_MS
from tests.helpers.timing import MS, TIMEOUT
from tests.simulator.client import TestClient

START = 1_756_252_800_000  # 2025-08-27T00:00Z
NOW = START + 2 * HOUR_MS


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(clock=SimulatorClock.manual(NOW)) as simulator:
        yield simulator


async def closed_by_server(client: TestClient) -> ConnectionClosed:
    """Read until the server ends the connection; return how it ended."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await client.receive()
    return info.value


async def test_drop_aborts_without_a_close_frame(sim: Simulator) -> None:
    """drop_connections: the client sees the connection lost, no close frame received."""
    client = await TestClient.authorized(sim.url)
    await sim.drop_connections()
    lost = await closed_by_server(client)
    assert lost.rcvd is None
    assert sim.stats.connections_dropped == 1


@pytest.mark.parametrize("code", [1000, 1001])
async def test_graceful_close_sends_the_close_code(sim: Simulator, code: int) -> None:
    """close_connections: a close frame with the given code."""
    client = await TestClient.authorized(sim.url)
    await sim.close_connections(code)
    closed = await closed_by_server(client)
    assert closed.rcvd is not None and closed.rcvd.code == code


async def test_stall_stops_everything_with_the_socket_open(sim: Simulator) -> None:
    """stall: nothing is sent (not even the snapshot) while the socket stays open; resuming
    delivers what was held."""
    client = await TestClient.authorized(sim.url)
    channel = await client.candle_channel()
    sent_before = sim.stats.messages_sent
    sim.stall(True)
    await client.subscribe(channel, "AAPL{=1m}", NOW - 5 * MINUTE_MS)
    await _until(sim, lambda: "AAPL{=m}" in sim.subscriptions()[1])
    await sim.advance(60)  # skips the stalled connection instead of waiting for it
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(50 * MS):
            await client.ws.recv()
    assert sim.stats.messages_sent == sent_before
    assert sim.connections == 1
    sim.stall(False)
    snapshot = await client.expect(CandlesReceived)
    assert [c.time for c in snapshot.candles] == [NOW - m * MINUTE_MS for m in range(1, 6)]


async def test_malformed_frame_reaches_the_client(sim: Simulator) -> None:
    """send_malformed: the client gets a frame that is not a DXLink message."""
    client = await TestClient.authorized(sim.url)
    await sim.send_malformed('{"type":"FEED_DATA","channel":')
    invalid = await client.expect(InvalidMessageReceived)
    assert "JSON" in invalid.error.reason


@pytest.mark.parametrize("code", list(ErrorCode))
async def test_error_messages_of_every_code(sim: Simulator, code: ErrorCode) -> None:
    """send_error: an ERROR with that code on channel 0 (§2.7)."""
    client = await TestClient.authorized(sim.url)
    await sim.send_error(code, "injected")
    received = await client.expect(ErrorReceived)
    assert (received.error.code, received.error.message, received.error.channel) == (
        code.value,
        "injected",
        0,
    )


async def test_token_rotation_rejects_the_old_token(sim: Simulator) -> None:
    """rotate_token: AUTH_STATE UNAUTHORIZED mid-session; the old token is refused, the new
    one accepted (on the same connection and on a new one)."""
    client = await TestClient.authorized(sim.url)
    await sim.rotate_token("fresh-token")
    await client.expect(AuthRejected)
    stale = await TestClient.open(sim.url, token="sim-token")
    await stale.expect(AuthRejected)
    await closed_by_server(stale)
    client.protocol.set_token("fresh-token")
    await client.flush()
    await client.expect(Authorized)
    fresh = await TestClient.authorized(sim.url, token="fresh-token")
    await fresh.close()


async def test_frame_above_the_size_limit_closes_with_1009() -> None:
    """A client frame larger than max_frame_size: close 1009 (§8)."""
    async with Simulator(clock=SimulatorClock.manual(NOW), max_frame_size=1024) as sim:
        client = await TestClient.authorized(sim.url)
        channel = await client.candle_channel()
        items = tuple(SubscriptionItem("Candle", f"SYM{i}{{=1m}}", NOW) for i in range(40))
        await client.send_message(FeedSubscription(channel, add=items))
        closed = await closed_by_server(client)
        assert closed.rcvd is not None and closed.rcvd.code == 1009
        await _until(sim, lambda: sim.connections == 0)
        assert sim.stats.closes_1009 == 1


async def test_subscription_burst_gets_bad_action() -> None:
    """Subscriptions faster than the token bucket allows: ERROR BAD_ACTION, not applied."""
    clock = SimulatorClock.manual(NOW)
    async with Simulator(clock=clock, subscription_rate=0.001, subscription_burst=2) as sim:
        client = await TestClient.authorized(sim.url)
        channel = await client.candle_channel()
        for symbol in ("A", "B", "C"):
            await client.subscribe(channel, f"{symbol}{{=1h}}", NOW - HOUR_MS)
        error = await client.expect(ErrorReceived)
        assert error.error.code == ErrorCode.BAD_ACTION and error.error.channel == channel
        assert "rate limit" in error.error.message
        await sim.wait_for_subscriptions(2)
        assert sorted(sim.subscriptions()[1]) == ["A{=h}", "B{=h}"]
        assert sim.stats.bad_actions == 1


async def test_slow_sending_delays_every_message(sim: Simulator) -> None:
    """set_send_delay: each message waits at least the delay."""
    client = await TestClient.authorized(sim.url)
    channel = await client.candle_channel()
    sim.set_send_delay(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sim.send_error(ErrorCode.UNKNOWN, "one")
    await sim.send_error(ErrorCode.UNKNOWN, "two")
    await client.subscribe(channel, "AAPL{=1h}", NOW - HOUR_MS)
    await client.expect(CandlesReceived)
    assert loop.time() - started >= 0.15  # two errors, FEED_CONFIG, FEED_DATA: >= 4 x 0.05


async def test_accept_then_drop_the_next_connections(sim: Simulator) -> None:
    """drop_next_connections(2): two attempts are accepted then dropped; the third works."""
    sim.drop_next_connections(2)
    for _ in range(2):
        ws = await connect(sim.url, ping_interval=None)
        with pytest.raises(ConnectionClosed) as lost:
            async with asyncio.timeout(TIMEOUT):
                await ws.recv()
        assert lost.value.rcvd is None
    client = await TestClient.authorized(sim.url)
    assert sim.connect_count == 3 and sim.connections == 1
    await client.close()


async def test_scheduled_faults_from_specs() -> None:
    """Faults given to the constructor (as the CLI does) fire on their schedule."""
    faults = [parse_fault("drop-next:1@0"), parse_fault("error:TIMEOUT@0.05")]
    async with Simulator(clock=SimulatorClock.manual(NOW), faults=faults) as sim:
        first = await connect(sim.url, ping_interval=None)
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(TIMEOUT):
                await first.recv()
        client = await TestClient.authorized(sim.url)
        error = await client.expect(ErrorReceived)
        assert error.error.code == "TIMEOUT"


async def _until(sim: Simulator, ready: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        await sim.wait_for(ready)
