"""DXLinkManager against a server that misbehaves on purpose (issue 14, items 3, 4 and 9).

No server may switch dead-peer detection off (an absurd keepaliveTimeout, silence, a socket
that stops reading), stop ingest with one oversized frame, or make a clean stop look like a
crash; a reopened candle channel resumes from the store. The hostile server
(``tests/helpers/hostile.py``) speaks raw JSON over real sockets; timeouts are tenths of a
second and every wait is on an explicit event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from websockets.asyncio.server import serve

from pipeline.dxlink import SubscriptionRequested
from pipeline.dxlink.client import (
    Connected,
    Disconnected,
    DisconnectReason,
    DXLinkManager,
    SnapshotComplete,
)
from tests.dxlink.harness import (
    MINUTE,
    T0,
    Lifecycle,
    ScriptedServer,
    TokenSource,
    make_manager,
)
from tests.helpers.hostile import TOKEN, HostileServer, HostileSession, Market
from tests.helpers.service import eventually
from tests.helpers.timing import TIMEOUT, short_backoff

SYMBOL = "AAPL{=m}"


def manager_for(server: HostileServer, lifecycle: Lifecycle, **settings: Any) -> DXLinkManager:
    options: dict[str, Any] = {"reconnect_delays": short_backoff, "on_event": lifecycle}
    options.update(settings)
    return DXLinkManager(TokenSource(server.url, [TOKEN]), **options)


async def drain(manager: DXLinkManager, into: list[Any]) -> None:
    async for batch in manager.candles():
        into.extend(batch)


async def test_the_client_asks_for_a_short_keepalive_and_waits_ten_seconds_by_default() -> None:
    """Our SETUP asks the server for acceptKeepaliveTimeout 10 s, the dead-peer default."""
    lifecycle = Lifecycle()
    async with HostileServer() as server:
        manager = manager_for(server, lifecycle)
        assert manager.get_metrics()["connection"]["dead_peer_timeout"] == 10.0
        async with manager:
            await lifecycle.wait_for(Connected)
        (setup,) = [f for f in server.sessions[0].received if f["type"] == "SETUP"]
    assert setup["acceptKeepaliveTimeout"] == 10.0


@pytest.mark.parametrize("advertised", [1e9, 1e300, 3600])
async def test_an_absurd_keepalive_advertisement_cannot_switch_detection_off(
    advertised: float,
) -> None:
    """SETUP keepaliveTimeout 1e9, then silence: the client gives up at its cap, reconnects."""
    lifecycle = Lifecycle()
    async with HostileServer(setup={"keepaliveTimeout": advertised}) as server:
        server.silent = True
        manager = manager_for(server, lifecycle, dead_peer_timeout=0.2, max_dead_peer_timeout=0.4)
        async with manager:
            await lifecycle.wait_for(Disconnected)
            await lifecycle.wait_for(Connected, 2)
            metrics = manager.get_metrics()["connection"]
    disconnected = lifecycle.of(Disconnected)[0]
    assert disconnected.reason is DisconnectReason.PEER_TIMEOUT
    assert "nothing received for 0.4" in disconnected.error
    assert metrics["dead_peer_timeout"] == 0.4


async def test_a_dead_socket_is_dropped_without_waiting_for_a_closing_handshake() -> None:
    """After a peer timeout the client drops TCP at once: no close frame, no close_timeout."""
    lifecycle = Lifecycle()
    async with HostileServer() as server:
        server.silent = True
        manager = manager_for(server, lifecycle, dead_peer_timeout=0.2, close_timeout=30)
        async with manager:
            await lifecycle.wait_for(Disconnected)
            await asyncio.wait_for(server.sessions[0].closed.wait(), TIMEOUT)
            await lifecycle.wait_for(Connected, 2)  # well before the 30 s close_timeout
        first = server.sessions[0]
    assert first.close_frame is None, f"the client closed with {first.close_frame}"
    assert lifecycle.of(Disconnected)[0].reason is DisconnectReason.PEER_TIMEOUT


async def test_a_clean_stop_closes_the_websocket_with_1000() -> None:
    """aclose() ends the connection with a normal closure (1000), not 1011."""
    lifecycle = Lifecycle()
    async with HostileServer() as server:
        manager = manager_for(server, lifecycle)
        async with manager:
            await lifecycle.wait_for(Connected)
        await asyncio.wait_for(server.sessions[0].closed.wait(), TIMEOUT)
        frame = server.sessions[0].close_frame
    assert frame is not None and frame.code == 1000


async def test_one_oversized_frame_is_a_counted_fault_then_a_reconnect() -> None:
    """A frame over max_message_size drops that connection (1009), is counted, and the next
    connection delivers the history: ingest goes on."""
    market = Market(seed=3, end_ms=T0 + 9 * MINUTE, count=10)

    def feed(session: HostileSession, channel: int, symbol: str, from_time: int) -> list[str]:
        fields = session.fields[channel]
        frames = [server.candle_frame(channel, fields, market.snapshot(symbol, from_time))]
        if len(server.sessions) == 1:  # only the first connection gets the monster
            frames.insert(0, '{"type":"KEEPALIVE","channel":0,"pad":"' + "x" * 200_000 + '"}')
        return frames

    lifecycle = Lifecycle()
    received: list[Any] = []
    async with HostileServer(feed=feed) as server:
        manager = manager_for(server, lifecycle, max_message_size=65_536)
        async with manager:
            consumer = asyncio.create_task(drain(manager, received))
            await manager.subscribe_to_candles(symbol="AAPL", interval="1m", from_time=T0)
            await lifecycle.wait_for(SnapshotComplete)
            metrics = manager.get_metrics()["connection"]
        await consumer
    (disconnected,) = lifecycle.of(Disconnected)
    assert disconnected.reason is DisconnectReason.MESSAGE_TOO_BIG
    assert metrics["disconnect_count"] == {"message_too_big": 1}
    assert len(lifecycle.of(Connected)) == 2
    assert sorted(c.time for c in received) == [c["time"] for c in market.candles(SYMBOL)]


async def test_a_server_that_stops_reading_is_dropped_even_while_it_keeps_talking() -> None:
    """The server keeps sending KEEPALIVEs but reads nothing: our sends block, and after
    dead_peer_timeout of blocking the client drops it instead of hanging."""
    lifecycle = Lifecycle()
    async with HostileServer(receive_buffer=4096, keepalive_every=0.02) as server:
        server.deaf = True
        # ~8 MB of subscriptions in 64 KiB messages: the kernel buffers (up to 4 MB) and the
        # server's websockets queue (4 messages) hold about 4.3 MB of it, so a send blocks
        # whatever the scheduling. (1 MiB messages would leave 4 MB in that queue, and 6 MB
        # then fitted on a starved box: nothing blocked.)
        big = {"batch_max_bytes": 1 << 16, "batch_max_items": 100_000, "subscribe_burst": 200}
        manager = manager_for(server, lifecycle, dead_peer_timeout=0.3, **big)
        async with manager:
            symbols = [f"S{n:05d}" + "X" * 2_500 for n in range(3_200)]
            await manager.subscribe_to_candles_many(symbols, ["1m"], T0)
            await lifecycle.wait_for(Connected)
            await lifecycle.wait_for(Disconnected)
    # Blocked sends end it ("could not send"), or, when the reader was the one blocked in a
    # send, the silence it caused ("nothing received"): either way, never a hang.
    disconnected = lifecycle.of(Disconnected)[0]
    assert disconnected.reason is DisconnectReason.PEER_TIMEOUT
    assert "could not send" in disconnected.error or "nothing received" in disconnected.error


async def test_a_stall_is_reported_across_reconnects_until_the_server_talks() -> None:
    """silence_seconds keeps growing while every connection ends silent; a frame resets it."""
    lifecycle = Lifecycle()
    async with HostileServer(keepalive_every=0.02) as server:
        server.silent = True
        manager = manager_for(server, lifecycle, dead_peer_timeout=0.2)
        async with manager:
            await lifecycle.wait_for(Disconnected, 2)
            await lifecycle.wait_for(Connected, 3)
            stalled = manager.get_metrics()["connection"]["silence_seconds"]
            server.silent = False  # its KEEPALIVEs (every 20 ms) flow again

            await eventually(
                lambda: manager.get_metrics()["connection"]["silence_seconds"] < 0.2,
                within=TIMEOUT,
                what="the stall cleared by a frame",
            )
    assert stalled is not None and stalled > 2 * 0.2  # two silent connections and counting


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        server.server = ws_server
        yield server


async def test_a_reopened_candle_channel_resumes_each_series_from_the_store(
    scripted: ScriptedServer,
) -> None:
    """CHANNEL_CLOSED: the new channel asks the store where each series stands, like a
    reconnect, instead of downloading everything from the original fromTime again."""
    lifecycle = Lifecycle()
    asked: list[Sequence[str]] = []

    def resume_points(keys: list[str]) -> Mapping[str, int | None]:
        asked.append(list(keys))
        return {key: T0 + 30 * MINUTE for key in keys}

    manager, _ = make_manager(scripted, lifecycle, resume_points=resume_points)
    async with manager:
        await manager.subscribe_to_candles(symbol="AAPL", interval="1m", from_time=T0)
        await lifecycle.wait_for(SnapshotComplete)
        session = scripted.sessions[0]
        session.protocol.close_channel(session.channels["HISTORY"])
        for text in session.protocol.messages_to_send():
            await session.ws.send(text)
        await lifecycle.wait_for(SnapshotComplete, 2)
    first, again = scripted.events(SubscriptionRequested)
    assert [item.from_time for item in first.add] == [T0]
    assert [item.from_time for item in again.add] == [T0 + 30 * MINUTE]
    assert asked == [[SYMBOL]]
    assert len(scripted.sessions) == 1 and lifecycle.of(Disconnected) == []


async def test_malformed_frames_are_counted_and_logged_at_warning_a_few_times(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """5,000 malformed and illegal frames: all counted and skipped, the connection stays,
    and the log gets a WARNING for each kind, not one line per frame."""
    caplog.set_level(logging.INFO, logger="pipeline")
    lifecycle = Lifecycle()
    junk = ['{"type":"FEED_DATA","channel":', "[1,2,3]", '{"type":"AUTH_STATE","channel":0}']
    junk += ['{"type":"CHANNEL_OPENED","channel":99,"service":"FEED","parameters":{}}']
    async with HostileServer() as server:
        manager = manager_for(server, lifecycle)
        async with manager:
            await lifecycle.wait_for(Connected)
            await server.broadcast(junk * 1250)
            await eventually(
                lambda: (
                    sum(
                        manager.get_metrics()["connection"][key]
                        for key in ("malformed_messages", "protocol_violations")
                    )
                    == 5000
                ),
                within=TIMEOUT,
                what="every bad frame counted",
            )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lifecycle.of(Disconnected) == []
    assert any("malformed frame" in line for line in warnings), warnings
    assert any("protocol-breaking frame" in line for line in warnings), warnings
    assert len(warnings) <= 4, warnings
