"""§2.6 end to end: a stalled consumer keeps the connection; a silent server is still dropped.

DXLinkManager against the scripted server over real sockets on 127.0.0.1, with the server
running its protocol timer like the simulator (KEEPALIVEs, and a close for a client that
stays silent longer than its advertised keepaliveTimeout). Timeouts are a few tenths of a
second (an accelerated clock for 60 s ones); waits are on explicit events, never sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import serve

from pipeline.dxlink import Candle, KeepaliveReceived, PeerTimedOut
from pipeline.dxlink.client import (
    Backpressure,
    Connected,
    Disconnected,
    DisconnectReason,
    DXLinkManager,
)
from tests.dxlink.harness import T0, Lifecycle, ScriptedServer, make_manager
from tests.helpers.timing import TIMEOUT

# The server advertises 0.3 s (so the client judges it dead after 0.3 s of reading silence)
# and drops a client silent for its advertised 0.6 s; both sides send every min/2 = 0.15 s,
# which leaves a loaded machine 0.45 s of scheduling slack before a false drop.
SERVER_TIMEOUT = 0.3
CLIENT_TIMEOUT = 0.6
SYMBOLS = ["AAPL", "SPY", "QQQ"]


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    scripted.keepalive_timeout = SERVER_TIMEOUT
    scripted.run_timers = True
    async with serve(scripted.handler, "127.0.0.1", 0) as ws_server:
        scripted.server = ws_server
        yield scripted
        for task in scripted._tasks:
            task.cancel()


def manager_for(server: ScriptedServer, lifecycle: Lifecycle) -> DXLinkManager:
    manager, _ = make_manager(
        server,
        lifecycle,
        keepalive_timeout=CLIENT_TIMEOUT,
        dead_peer_timeout=SERVER_TIMEOUT,
        queue_size=1,
    )
    return manager


async def keepalives_after(server: ScriptedServer, count: int) -> None:
    """Wait until the first session has received ``count`` more KEEPALIVEs than now."""
    target = len(server.events(KeepaliveReceived, 0)) + count
    await server.wait_for(lambda: len(server.events(KeepaliveReceived, 0)) >= target)


async def take(manager: DXLinkManager, batches: int) -> list[Candle]:
    """Read ``batches`` candle batches, within the generous limit."""
    received: list[Candle] = []
    async with asyncio.timeout(TIMEOUT):
        stream = aiter(manager.candles())
        for _ in range(batches):
            received += await anext(stream)
    return received


async def test_stalled_consumer_keeps_sending_keepalives_and_stays_connected(
    server: ScriptedServer,
) -> None:
    """The reader blocks on a full queue for 4x the dead-peer timeout: the server keeps
    receiving KEEPALIVEs in time, nobody drops anybody, and every candle arrives after."""
    lifecycle = Lifecycle()
    manager = manager_for(server, lifecycle)
    async with manager:
        await manager.subscribe_to_candles_many(SYMBOLS, ["1m"], T0)
        await lifecycle.wait_for(Backpressure)  # queue_size=1, nobody reads: reader blocked
        stalled_from = asyncio.get_running_loop().time()
        await keepalives_after(server, 8)  # 8 x 0.15 s = 1.2 s = 4x the 0.3 s dead-peer timeout
        stalled_for = asyncio.get_running_loop().time() - stalled_from
        assert manager.get_metrics()["delivery"]["batches"] == 1  # still stalled
        received = await take(manager, len(SYMBOLS))
    assert stalled_for > 3 * SERVER_TIMEOUT
    assert lifecycle.of(Disconnected) == []
    assert len(server.sessions) == 1
    # The server's own timer (run here) is the judge: it drops a client silent for
    # CLIENT_TIMEOUT. (The wall-clock gaps between frames are a figure of the machine's
    # scheduling, not of the client: the sans-I/O tests pin the cadence on a manual clock.)
    assert server.events(PeerTimedOut) == []  # the server never gave up on us
    assert {c.symbol for c in received} == {f"{s}{{=m}}" for s in SYMBOLS}
    assert len(received) == len(SYMBOLS) * server.snapshot_size


async def test_silent_server_is_detected_while_reading(server: ScriptedServer) -> None:
    """A consumer keeping up (reader reading): a server gone quiet is dead after 0.3 s."""
    lifecycle = Lifecycle()
    manager = manager_for(server, lifecycle)
    async with manager:
        await manager.subscribe_to_candles_many(SYMBOLS[:1], ["1m"], T0)
        await take(manager, 1)
        await keepalives_after(server, 2)
        server.silent = True
        await lifecycle.wait_for(Disconnected)
    (disconnected,) = lifecycle.of(Disconnected)
    assert disconnected.reason is DisconnectReason.PEER_TIMEOUT
    assert "nothing received for 0.3" in disconnected.error


async def test_silent_server_is_detected_once_a_stalled_reader_resumes(
    server: ScriptedServer,
) -> None:
    """After a long stall the reader resumes; a server silent since then is still dropped."""
    lifecycle = Lifecycle()
    manager = manager_for(server, lifecycle)
    async with manager:
        await manager.subscribe_to_candles_many(SYMBOLS, ["1m"], T0)
        await lifecycle.wait_for(Backpressure)
        await keepalives_after(server, 4)
        server.silent = True
        await take(manager, len(SYMBOLS))  # the reader resumes and drains what was sent
        await lifecycle.wait_for(Disconnected)
        server.silent = False
        await lifecycle.wait_for(Connected, 2)  # and a new connection replaced it
    (disconnected,) = lifecycle.of(Disconnected)
    assert disconnected.reason is DisconnectReason.PEER_TIMEOUT
