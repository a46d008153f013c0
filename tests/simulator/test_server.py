"""The simulator over real sockets: handshake, channels, feed setup, snapshots, live updates.

Covers dxlink-protocol.md §2.2 (handshake and its variants), §2.4 (channels), §2.6
(keepalive), §3.1/§3.2 (contracts, FEED_SETUP/FEED_CONFIG), §6.2 (snapshots) and §6.4 (live
updates). Clients are raw ``websockets`` connections driving a ``ClientProtocol``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from websockets.exceptions import ConnectionClosed

from pipeline.dxlink import (
    REMOVE_EVENT,
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    SNAPSHOT_SNIP,
    Authorized,
    AuthRejected,
    CandlesReceived,
    ChannelClosed,
    ChannelOpened,
    DataFormat,
    ErrorCode,
    ErrorReceived,
    FeedConfigured,
    ServerSetup,
    SubscriptionItem,
)
from pipeline.dxlink.message_models import (
    Auth,
    ChannelCancel,
    ChannelRequest,
    FeedSetup,
    FeedSubscription,
    Setup,
)
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.simulator.periods import HOUR_MS, MINUTE_MS
from tests.helpers.timing import TIMEOUT
from tests.simulator.client import TestClient, comparable

START = 1_756_252_800_000  # 2025-08-27T00:00Z
NOW = START + 2 * HOUR_MS


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(clock=SimulatorClock.manual(NOW), token="sim-token") as simulator:
        yield simulator


async def test_handshake_setup_then_unsolicited_unauthorized_then_authorized(
    sim: Simulator,
) -> None:
    """§2.2: SETUP reply, AUTH_STATE UNAUTHORIZED unprompted, AUTHORIZED with a userId."""
    client = await TestClient.open(sim.url)
    setup = await client.expect(ServerSetup)
    assert setup.keepalive_timeout == 60
    authorized = await client.expect(Authorized)
    assert authorized.user_id == "sim-user"
    states = [f for f in client.frames if '"AUTH_STATE"' in f]
    assert '"UNAUTHORIZED"' in states[0] and '"AUTHORIZED"' in states[1]
    assert client.frames[0].startswith('{"type":"SETUP"')


@pytest.mark.parametrize(("accept", "advertised"), [(10, 10), (0.5, 0.5), (120, 60)])
async def test_setup_reply_honours_a_shorter_accept_keepalive_timeout(
    sim: Simulator, accept: float, advertised: float
) -> None:
    """§2.6: a client asking acceptKeepaliveTimeout below the server's 60 s gets it promised."""
    client = await TestClient.raw(sim.url)
    await client.send_message(Setup("0.1-DXF-JS/0.3.0", 60, accept))
    reply = json.loads(await client.frame_containing('"SETUP"'))
    assert reply["keepaliveTimeout"] == advertised


async def test_auth_sent_before_auth_state_is_tolerated(sim: Simulator) -> None:
    """§2.2: a client that pipelines AUTH right after SETUP (like dxFeed's JS client) gets in."""
    client = await TestClient.raw(sim.url)
    await client.send_message(Setup("0.1-js/1.0.0", 60, 60))
    await client.send_message(Auth("sim-token"))
    for _ in range(3):
        await client.next_frame()
    assert '"SETUP"' in client.frames[0]
    assert '"UNAUTHORIZED"' in client.frames[1]
    assert '"AUTHORIZED"' in client.frames[2] and "sim-user" in client.frames[2]


async def test_wrong_token_is_refused_then_closed(sim: Simulator) -> None:
    """§2.2: a wrong token gets AUTH_STATE UNAUTHORIZED, then the socket closes."""
    client = await TestClient.open(sim.url, token="not-the-token")
    await client.expect(AuthRejected)
    with pytest.raises(ConnectionClosed):
        await client.receive()
    assert client.ws.close_code == 1008
    assert sim.stats.auth_failures == 1


async def test_channel_traffic_before_auth_gets_error_unauthorized(sim: Simulator) -> None:
    """§2.7: a CHANNEL_REQUEST before AUTHORIZED is answered with ERROR UNAUTHORIZED."""
    client = await TestClient.raw(sim.url)
    await client.send_message(Setup("0.1-DXF-JS/0.3.0", 60, 60))
    await client.send_message(ChannelRequest(1, "FEED", {"contract": "AUTO"}))
    error = await client.frame_containing('"ERROR"')
    assert '"UNAUTHORIZED"' in error and '"channel":1' in error


async def test_protocol_violations_are_logged_and_counted_per_message_type(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Every violation is logged at INFO and counted in stats.violations by message type."""
    caplog.set_level(logging.INFO, logger="pipeline.simulator")
    early = await TestClient.raw(sim.url)
    await early.send_message(Setup("0.1-DXF-JS/0.3.0", 60, 60))
    await early.send_message(ChannelRequest(1, "FEED", {"contract": "AUTO"}))
    await early.frame_containing('"UNAUTHORIZED","message"')  # the protocol's own reply
    client = await TestClient.authorized(sim.url)
    channel = client.protocol.open_channel("AUTO")
    await client.flush()
    await client.expect(ChannelOpened)
    await client.send_message(ChannelRequest(channel, "FEED", {"contract": "AUTO"}))  # #113
    error = await client.expect(ErrorReceived)
    assert error.error.code == ErrorCode.BAD_ACTION and "already OPENED" in error.error.message
    assert sim.stats.violations == {"CHANNEL_REQUEST": 2}
    logged = [r.getMessage() for r in caplog.records if "violation" in r.getMessage()]
    assert len(logged) == 2 and all(r.startswith("! CHANNEL_REQUEST violation: ") for r in logged)
    assert "not allowed for server in AWAIT_AUTH" in logged[0]
    assert "already OPENED" in logged[1]


async def test_odd_channels_open_with_subformat_and_cancel_closes(sim: Simulator) -> None:
    """§2.4/§2.3: CHANNEL_OPENED echoes the parameters plus subFormat; CANCEL gets CLOSED."""
    client = await TestClient.authorized(sim.url)
    channel = client.protocol.open_channel("AUTO")
    await client.flush()
    opened = await client.expect(ChannelOpened)
    assert (opened.channel, opened.parameters) == (1, {"contract": "AUTO", "subFormat": "LIST"})
    await client.send_message(ChannelCancel(channel))
    closed = await client.expect(ChannelClosed)
    assert closed.channel == channel


@pytest.mark.parametrize(
    ("channel", "parameters", "reason"),
    [
        (2, {"contract": "AUTO"}, "even"),
        (3, {"contract": "TICKER"}, "contract"),
    ],
)
async def test_unusable_channel_requests_get_bad_action(
    sim: Simulator, channel: int, parameters: dict[str, str], reason: str
) -> None:
    """Even channel numbers and unsimulated contracts: ERROR BAD_ACTION, then CHANNEL_CLOSED."""
    client = await TestClient.authorized(sim.url)
    await client.send_message(ChannelRequest(channel, "FEED", parameters))
    error = await client.expect(ErrorReceived)
    assert error.error.code == ErrorCode.BAD_ACTION and reason in error.error.message
    assert error.error.channel == channel
    if not any('"CHANNEL_CLOSED"' in frame for frame in client.frames):
        await client.frame_containing('"CHANNEL_CLOSED"')
    assert sim.stats.bad_actions == 1


async def test_feed_config_honours_format_period_and_fields(sim: Simulator) -> None:
    """§3.2: FEED_CONFIG echoes period and FULL format; unknown fields are ignored and the
    field list comes lazily before the first FEED_DATA."""
    client = await TestClient.authorized(sim.url)
    channel = client.protocol.open_channel("HISTORY")
    await client.flush()
    await client.expect(ChannelOpened)
    fields: dict[str, tuple[str, ...]] = {
        "Candle": ("eventSymbol", "time", "eventFlags", "close", "noSuchField")
    }
    await client.send_message(FeedSetup(channel, 2.5, DataFormat.FULL, fields))
    config = await client.expect(FeedConfigured)
    assert (config.aggregation_period, config.data_format) == (2.5, DataFormat.FULL)
    assert config.event_fields == {}
    await client.subscribe(channel, "AAPL{=1h}", NOW - HOUR_MS)
    lazy = await client.expect(FeedConfigured)
    assert lazy.event_fields == {"Candle": ("eventSymbol", "time", "eventFlags", "close")}
    candles = (await client.expect(CandlesReceived)).candles
    assert [(c.time, c.flags) for c in candles] == [(NOW - HOUR_MS, SNAPSHOT_BEGIN | SNAPSHOT_END)]
    assert candles[0].close == sim.truth("AAPL{=1h}", NOW - HOUR_MS)[0].close
    assert '"data":[{"eventType":"Candle"' in client.frames[-1]


@pytest.mark.parametrize("contract", ["AUTO", "HISTORY"])
async def test_snapshot_then_live_updates_match_the_truth(sim: Simulator, contract: str) -> None:
    """§6.2/§6.4: the snapshot and then the live updates are exactly what truth() says."""
    client = await TestClient.authorized(sim.url)
    channel = await client.candle_channel(contract)
    await client.subscribe(channel, "AAPL{=5m}", START)
    snapshot = await client.candles(24)
    assert [c.time for c in snapshot] == [NOW - (i + 1) * 5 * MINUTE_MS for i in range(24)]
    assert snapshot[0].flags == SNAPSHOT_BEGIN and snapshot[-1].flags == SNAPSHOT_END
    unflagged = sorted(c._replace(flags=0) for c in snapshot)
    assert comparable(unflagged) == comparable(sim.truth("AAPL{=5m}", START))
    await sim.wait_for_subscriptions(1)
    await sim.advance(7 * 60)  # one complete 5m candle and a live one
    live = await client.candles(2)
    assert [c.time for c in live] == [NOW, NOW + 5 * MINUTE_MS]
    assert comparable(live) == comparable(sim.truth("AAPL{=5m}", NOW, include_live=True))
    assert all(c.flags == 0 for c in live)


async def test_a_client_applying_every_event_ends_up_with_the_truth() -> None:
    """Snapshot, live updates, revisions and REMOVE_EVENTs (§6.3 assembly) add up to truth()."""
    clock = SimulatorClock.manual(NOW)
    async with Simulator(clock=clock, correction_rate=1.0, seed=5) as sim:
        client = await TestClient.authorized(sim.url)
        channel = await client.candle_channel()
        await client.subscribe(channel, "AAPL{=1m}", START)
        held = {c.time: c._replace(flags=0) for c in await client.snapshot() if c.count}
        await sim.wait_for_subscriptions(1)
        removals = 0
        for _ in range(12):  # three hours in 15-minute steps: a correction per hour
            await sim.advance(15 * 60)
            # An ERROR queued after the updates marks their end on this connection.
            await sim.send_error(ErrorCode.UNKNOWN, "end of round")
            while not any(isinstance(event, ErrorReceived) for event in await client.receive()):
                pass
            for event in client.events:
                for candle in event.candles if isinstance(event, CandlesReceived) else ():
                    if candle.flags & REMOVE_EVENT:
                        removals += 1
                        held.pop(candle.time, None)
                    else:
                        held[candle.time] = candle
            client.events.clear()
        truth = sim.truth("AAPL{=1m}", START, include_live=True)
        assert comparable(sorted(held.values())) == comparable(truth)
        assert removals >= 1


async def test_history_limit_snips_a_long_snapshot() -> None:
    """§6.1: beyond history_limit the last snapshot event carries SNAPSHOT_SNIP."""
    clock = SimulatorClock.manual(NOW)
    async with Simulator(clock=clock, history_limit=30) as sim:
        client = await TestClient.authorized(sim.url)
        channel = await client.candle_channel()
        await client.subscribe(channel, "AAPL{=1m}", START)
        candles = await client.candles(30)
        assert candles[-1].flags == SNAPSHOT_SNIP
        assert candles[-1].time == NOW - 30 * MINUTE_MS


async def test_large_snapshot_is_chunked_and_does_not_block_others() -> None:
    """A 10,000-candle snapshot goes out in messages of <= 500 events; a client that does not
    read it holds up nobody else."""
    async with Simulator(clock=SimulatorClock.manual(NOW + 7 * 24 * HOUR_MS)) as sim:
        greedy = await TestClient.authorized(sim.url)
        channel = await greedy.candle_channel()
        await greedy.subscribe(channel, "AAPL{=1m}", START)  # ~10k candles, never read
        other = await TestClient.authorized(sim.url)
        second = await other.candle_channel()
        await other.subscribe(second, "MSFT{=1h}", START)
        assert len(await other.candles(170)) == 170  # 2 + 7 * 24 hours
        received = 0
        while received < 10_000:
            event = await greedy.expect(CandlesReceived)
            assert len(event.candles) <= 500
            received += len(event.candles)
        assert received == 10_000


async def test_server_sends_keepalive_when_idle_and_drops_a_silent_client() -> None:
    """§2.6: KEEPALIVE when idle; a client silent beyond its advertised timeout is closed."""
    async with Simulator(clock=SimulatorClock.manual(NOW), keepalive_timeout=0.2) as sim:
        client = await TestClient.raw(sim.url)
        await client.send_message(Setup("0.1-DXF-JS/0.3.0", 0.3, 60))
        await client.send_message(Auth("sim-token"))
        await client.frame_containing('"AUTHORIZED"')
        await client.frame_containing('"KEEPALIVE"')
        timeout = await client.frame_containing('"ERROR"')  # then silence from us: dropped
        assert '"TIMEOUT"' in timeout
        with pytest.raises(ConnectionClosed):
            await client.next_frame()
        assert client.ws.close_code == 1000
        assert sim.stats.keepalive_timeouts == 1


async def test_subscription_remove_and_reset_stop_updates(sim: Simulator) -> None:
    """§2.3: removed series get no more updates; reset clears the channel."""
    client = await TestClient.authorized(sim.url)
    channel = await client.candle_channel()
    items = [SubscriptionItem("Candle", s, NOW - MINUTE_MS) for s in ("AAPL{=1m}", "IBM{=1m}")]
    await client.send_message(FeedSubscription(channel, add=tuple(items)))
    await client.candles(2)
    await sim.wait_for_subscriptions(2)
    assert sim.subscriptions() == {1: {"AAPL{=m}": NOW - MINUTE_MS, "IBM{=m}": NOW - MINUTE_MS}}
    await client.send_message(FeedSubscription(channel, remove=tuple(items[:1])))
    await sim.wait_for_subscriptions(1)
    await _until(sim, lambda: sim.subscriptions()[1] == {"IBM{=m}": NOW - MINUTE_MS})
    await sim.advance(60)
    (live,) = await client.candles(1)
    assert live.symbol == "IBM{=m}"
    await client.send_message(FeedSubscription(channel, reset=True))
    await _until(sim, lambda: sim.subscriptions()[1] == {})


async def test_same_seed_serves_the_same_history_after_a_restart() -> None:
    """Determinism: a restarted simulator with the same seed sends identical frames."""
    snapshots = []
    for _ in range(2):
        async with Simulator(clock=SimulatorClock.manual(NOW), seed=42) as sim:
            client = await TestClient.authorized(sim.url)
            channel = await client.candle_channel()
            await client.subscribe(channel, "AAPL{=15m}", START)
            snapshots.append(comparable(await client.candles(8)))
    assert snapshots[0] == snapshots[1]


async def test_advance_needs_a_manual_clock() -> None:
    """advance() on a running clock is refused."""
    async with Simulator(clock=SimulatorClock.accelerated(60, NOW)) as sim:
        with pytest.raises(ValueError, match="manual clock"):
            await sim.advance(1)


async def test_accelerated_clock_publishes_on_its_own() -> None:
    """With speed 3600 the live candle updates arrive without advance()."""
    async with Simulator(clock=SimulatorClock.accelerated(3600, NOW), publish_interval=0.02) as sim:
        client = await TestClient.authorized(sim.url)
        channel = await client.candle_channel(aggregation_period=0.01)
        await client.subscribe(channel, "AAPL{=1m}", NOW - MINUTE_MS)
        snapshot = await client.expect(CandlesReceived)  # one message: a few candles
        assert snapshot.candles[0].flags & SNAPSHOT_BEGIN
        update = await client.expect(CandlesReceived)
        assert all(c.flags == 0 and c.time >= snapshot.candles[0].time for c in update.candles)


# -- helpers ----------------------------------------------------------------------------------


async def _until(sim: Simulator, ready: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        await sim.wait_for(ready)


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [
        ("0.0.0.0", "simulator", "reachable from other machines, and its token is the well-known"),
        ("0.0.0.0", "a-long-private-token", "reachable from other machines; bind it"),
        ("127.0.0.1", "simulator", None),
        ("localhost", "sim-token", None),
    ],
)
async def test_listening_beyond_loopback_is_warned_about(
    caplog: pytest.LogCaptureFixture, host: str, token: str, warned: str | None
) -> None:
    """A simulator reachable from other machines says so at WARNING, louder with a default
    token; on loopback it says nothing (issue 14)."""
    caplog.set_level(logging.INFO, logger="pipeline.simulator")
    async with Simulator(host=host, token=token, clock=SimulatorClock.manual(NOW)):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warned in warnings[0], warnings
        assert "a-long-private-token" not in warnings[0]
