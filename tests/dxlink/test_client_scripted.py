"""DXLinkManager against a scripted DXLink server over real sockets on 127.0.0.1.

The scripted server drives ``ServerProtocol`` exactly like the simulator, but each test can
bend one rule (hold a reply, reject a token, send an ERROR, close a channel) and read back
every message the client sent, in order. Faults of the full simulator are in
``test_client.py``. Waits are on explicit events with generous limits, never sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from pipeline.dxlink import (
    CANDLE_FIELDS,
    AuthRequested,
    Candle,
    ChannelRequested,
    ClientSetup,
    ConfigurationError,
    DataFormat,
    ErrorCode,
    FeedData,
    FeedSetupRequested,
    KeepaliveReceived,
    SubscriptionRequested,
    UnsupportedProtocol,
    UsageError,
    encode,
)
from pipeline.dxlink.client import (
    Connected,
    Disconnected,
    DisconnectReason,
    DXLinkManager,
    HandshakeTimeout,
    SnapshotComplete,
    Stopped,
)
from pipeline.dxlink.message_models import FeedConfig
from pipeline.ingest import TastytradeAPIError, TastytradeAuthError
from tests.dxlink.harness import (
    MINUTE,
    T0,
    TOKEN,
    Lifecycle,
    ScriptedServer,
    Session,
    TokenSource,
    make_manager,
)
from tests.helpers.timing import TIMEOUT, short_backoff


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    async with serve(scripted.handler, "127.0.0.1", 0) as ws_server:
        scripted.server = ws_server
        yield scripted
        for task in scripted._tasks:
            task.cancel()


async def next_batch(manager: DXLinkManager) -> Sequence[Candle]:
    async with asyncio.timeout(TIMEOUT):
        return await anext(aiter(manager.candles()))


async def test_handshake_follows_the_tastytrade_safe_order(server: ScriptedServer) -> None:
    """SETUP → (AUTH only after AUTH_STATE) → HISTORY + AUTO channels → FEED_SETUP → subscribe."""
    server.hold_auth_state = asyncio.Event()
    lifecycle = Lifecycle()
    manager, _ = make_manager(server, lifecycle, keepalive_timeout=0.2)
    await manager.subscribe_to_candles(symbol="AAPL", interval="5m", from_time=T0)
    async with manager:
        # The client has our SETUP reply; a KEEPALIVE proves it went idle without AUTH.
        await server.wait_for(lambda: bool(server.events(KeepaliveReceived)))
        assert not server.events(AuthRequested)
        server.hold_auth_state.set()
        await lifecycle.wait_for(Connected)
        await server.wait_for(lambda: bool(server.events(SubscriptionRequested)))
    kinds = [type(e) for e in server.sessions[0].received if not isinstance(e, KeepaliveReceived)]
    assert kinds[:2] == [ClientSetup, AuthRequested]
    assert kinds[2:4] == [ChannelRequested, ChannelRequested]
    assert kinds[4:6] == [FeedSetupRequested, FeedSetupRequested]
    assert kinds[6] is SubscriptionRequested
    requests = server.events(ChannelRequested)
    assert [r.parameters["contract"] for r in requests] == ["HISTORY", "AUTO"]
    assert [r.channel for r in requests] == [1, 3]
    candle_setup = server.events(FeedSetupRequested)[0]
    assert candle_setup.accept_data_format is DataFormat.COMPACT
    assert candle_setup.accept_event_fields == {"Candle": CANDLE_FIELDS}
    (subscription,) = server.events(SubscriptionRequested)
    assert subscription.channel == 1
    assert [(i.type, i.symbol, i.from_time) for i in subscription.add] == [
        ("Candle", "AAPL{=5m}", T0)
    ]


async def test_candles_flow_and_snapshot_completion_is_announced(server: ScriptedServer) -> None:
    """Snapshot candles reach candles(); the series turns live and SnapshotComplete fires."""
    lifecycle = Lifecycle()
    manager, _ = make_manager(server, lifecycle)
    async with manager:
        key = await manager.subscribe_to_candles(symbol="AAPL{=1m}", from_time=T0)
        batch = await next_batch(manager)
        await lifecycle.wait_for(SnapshotComplete)
    assert [c.time for c in batch] == [T0 + 2 * MINUTE, T0 + MINUTE, T0]
    assert lifecycle.of(SnapshotComplete) == [SnapshotComplete("AAPL{=m}", snipped=False)]
    assert manager.subscription_metadata[key].state == "live"
    metrics = manager.get_metrics()
    assert metrics["channels"]["candles"]["message_count"] == 1
    assert metrics["channels"]["candles"]["event_count"] == 3
    assert metrics["connection"]["connect_count"] == 1
    assert metrics["connection"]["state"] == "closed"
    assert metrics["subscriptions"]["candles"] == 1


async def test_missing_setup_reply_times_out_and_reconnects(server: ScriptedServer) -> None:
    """Every handshake wait has a limit: no SETUP reply → HandshakeTimeout → a new attempt."""
    server.reply_setup = False
    lifecycle = Lifecycle()
    manager, _ = make_manager(server, lifecycle, handshake_timeout=0.05)
    async with manager:
        await lifecycle.wait_for(Disconnected, 2)
    first = lifecycle.of(Disconnected)[0]
    assert first.reason is DisconnectReason.HANDSHAKE_TIMEOUT
    assert "no SETUP within 0.05 s" in first.error
    assert HandshakeTimeout.__name__ in first.error
    assert len(server.sessions) >= 2


async def test_rejected_token_is_refreshed_then_connects(server: ScriptedServer) -> None:
    """AUTH_STATE UNAUTHORIZED after AUTH → get(force_refresh=True) → reconnect with it."""
    lifecycle = Lifecycle()
    manager, source = make_manager(server, lifecycle, tokens=["expired-token", TOKEN])
    async with manager:
        await lifecycle.wait_for(Connected)
    assert source.calls == [False, True]
    (rejected,) = lifecycle.of(Disconnected)
    assert rejected.reason is DisconnectReason.AUTH_REJECTED
    assert manager.get_metrics()["connection"]["token_refreshes"] == 1


async def test_unsupported_protocol_is_fatal_with_a_clear_error(server: ScriptedServer) -> None:
    """ERROR UNSUPPORTED_PROTOCOL stops the manager; candles() raises it, no retry."""

    def reject(session: Session, event: SubscriptionRequested) -> None:
        session.protocol.send_error(ErrorCode.UNSUPPORTED_PROTOCOL, "version 0.1 retired")

    server.on_subscription = reject
    lifecycle = Lifecycle()
    manager, _ = make_manager(server, lifecycle)
    await manager.subscribe_to_candles(symbol="AAPL", interval="1m", from_time=T0)
    async with manager:
        with pytest.raises(UnsupportedProtocol, match=r"version 0\.1 retired"):
            async with asyncio.timeout(TIMEOUT):
                async for _ in manager.candles():
                    pass
    (stopped,) = lifecycle.of(Stopped)
    assert isinstance(stopped.error, UnsupportedProtocol)
    assert len(server.sessions) == 1
    assert manager.state == "closed"


async def test_max_attempts_ends_with_connection_error_carrying_the_cause() -> None:
    """With max_attempts, repeated failures end in ConnectionError whose cause is the last one."""
    lifecycle = Lifecycle()
    async with serve(lambda ws: ws.close(), "127.0.0.1", 0) as refusing:
        port = refusing.sockets[0].getsockname()[1]
        source = TokenSource(f"ws://127.0.0.1:{port}/", [TOKEN])
        manager = DXLinkManager(
            source, max_attempts=3, reconnect_delays=short_backoff, on_event=lifecycle
        )
        async with manager:
            with pytest.raises(ConnectionError, match="after 3 consecutive") as caught:
                async with asyncio.timeout(TIMEOUT):
                    async for _ in manager.candles():
                        pass
    assert caught.value.__cause__ is not None
    assert "max_attempts=3" in str(caught.value)
    assert len(source.calls) == 3


async def test_oversized_frames_are_fatal_with_advice() -> None:
    """A server 1009 close means our frame was too big: stop and say which setting to lower."""

    async def close_1009(ws: ServerConnection) -> None:
        await ws.close(1009, "message too big")

    async with serve(close_1009, "127.0.0.1", 0) as closing:
        port = closing.sockets[0].getsockname()[1]
        manager = DXLinkManager(
            TokenSource(f"ws://127.0.0.1:{port}/", [TOKEN]), reconnect_delays=short_backoff
        )
        async with manager:
            with pytest.raises(ConfigurationError, match="lower max_batch_bytes"):
                async with asyncio.timeout(TIMEOUT):
                    async for _ in manager.candles():
                        pass


async def test_token_never_appears_in_logs_errors_or_metrics(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a rejection, a refresh and a full handshake, no token text (nor a password
    in the URL) leaks into logs, lifecycle events or metrics."""
    caplog.set_level(logging.DEBUG)
    lifecycle = Lifecycle()
    stale = "stale-token-77c1"
    url = server.url.replace("ws://", "ws://user:url-password-9d2@")
    manager = DXLinkManager(
        TokenSource(url, [stale, TOKEN]), reconnect_delays=short_backoff, on_event=lifecycle
    )
    async with manager:
        await manager.subscribe_to_candles(symbol="AAPL", interval="1m", from_time=T0)
        await next_batch(manager)
    # The scripted server's own frame log is the test double's, not the client's.
    texts = [r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server")]
    texts += [repr(event) for event in lifecycle.events]
    texts += [repr(manager.get_metrics()), repr(manager.subscription_metadata)]
    assert any("AUTH frame (token hidden)" in text for text in texts)  # frames were logged
    basic = base64.b64encode(b"user:url-password-9d2").decode()
    assert any("Authorization: <hidden>" in text for text in texts)
    for secret in (TOKEN, stale, "url-password-9d2", basic):
        assert not [text for text in texts if secret in text]
    assert lifecycle.of(Connected)[0].url == server.url


async def idle_keepalive_gaps(server: ScriptedServer, lifecycle: Lifecycle) -> list[float]:
    """Connect with keepalive_timeout 0.4 s, say nothing until six KEEPALIVEs arrived, and
    return the seconds between the frames the server received."""
    manager, _ = make_manager(server, lifecycle, keepalive_timeout=0.4)
    async with manager:
        await lifecycle.wait_for(Connected)
        await server.wait_for(lambda: len(server.events(KeepaliveReceived)) >= 6)
    arrivals = server.sessions[0].arrivals
    return [later - earlier for earlier, later in itertools.pairwise(arrivals)]


async def test_idle_connection_keeps_sending_keepalives(server: ScriptedServer) -> None:
    """With nothing to say the client still sends KEEPALIVEs and stays connected (their
    cadence, keepalive_timeout / 2, is pinned by the sans-I/O tests on a manual clock)."""
    lifecycle = Lifecycle()
    gaps = await idle_keepalive_gaps(server, lifecycle)
    assert len(gaps) >= 5
    assert lifecycle.of(Disconnected) == []


@pytest.mark.soak
async def test_idle_connection_keepalives_arrive_within_the_timeout(
    server: ScriptedServer,
) -> None:
    """Over real sockets no two frames are further apart than keepalive_timeout (a bound in
    wall-clock seconds: opt-in, a loaded machine can stall the event loop)."""
    gaps = await idle_keepalive_gaps(server, Lifecycle())
    assert max(gaps) < 0.4  # the server, with the same timeout, would never drop us


async def test_server_closing_a_channel_reopens_it_and_resubscribes(server: ScriptedServer) -> None:
    """CHANNEL_CLOSED from the server affects that channel only: a new one, same series."""
    lifecycle = Lifecycle()
    manager, _ = make_manager(server, lifecycle)
    async with manager:
        await manager.subscribe_to_candles(symbol="AAPL", interval="1m", from_time=T0)
        await lifecycle.wait_for(SnapshotComplete)
        session = server.sessions[0]
        session.protocol.close_channel(session.channels["HISTORY"])
        for text in session.protocol.messages_to_send():
            await session.ws.send(text)
        await lifecycle.wait_for(SnapshotComplete, 2)
    requests = server.events(ChannelRequested)
    assert [(r.channel, r.parameters["contract"]) for r in requests] == [
        (1, "HISTORY"),
        (3, "AUTO"),
        (5, "HISTORY"),
    ]
    (first, again) = server.events(SubscriptionRequested)
    assert (first.channel, again.channel) == (1, 5)
    assert again.add == first.add
    assert len(server.sessions) == 1 and lifecycle.of(Disconnected) == []


async def test_regular_events_use_the_auto_channel_and_are_delivered(
    server: ScriptedServer,
) -> None:
    """subscribe() goes to the AUTO channel, events() yields the decoded events, and a
    reconnect resubscribes them; unsubscribe() sends a remove."""
    lifecycle = Lifecycle()
    manager, _ = make_manager(server, lifecycle)
    await manager.subscribe(["AAPL", "SPY"], event_type="Quote")
    async with manager:
        await server.wait_for(lambda: bool(server.events(SubscriptionRequested)))
        session = server.sessions[0]
        channel = session.channels["AUTO"]
        fields = ("eventType", "eventSymbol", "bidPrice", "askPrice")
        await session.ws.send(
            encode(FeedConfig(channel, 0.1, DataFormat.COMPACT, {"Quote": fields}))
        )
        await session.ws.send(encode(FeedData(channel, ["Quote", ["Quote", "AAPL", 1.5, 1.6]])))
        async with asyncio.timeout(TIMEOUT):
            batch = await anext(aiter(manager.events()))
        await manager.unsubscribe("SPY", event_type="Quote")
        await server.wait_for(lambda: len(server.events(SubscriptionRequested)) == 2)
        await session.ws.close(1001)
        await lifecycle.wait_for(Connected, 2)
        await server.wait_for(lambda: len(server.events(SubscriptionRequested)) == 3)
    assert batch.event_type == "Quote"
    assert batch.events == [
        {"eventType": "Quote", "eventSymbol": "AAPL", "bidPrice": 1.5, "askPrice": 1.6}
    ]
    first, removal, resubscribed = server.events(SubscriptionRequested)
    assert first.channel == channel
    assert sorted(i.symbol for i in first.add) == ["AAPL", "SPY"]
    assert [(i.type, i.symbol) for i in removal.remove] == [("Quote", "SPY")]
    assert [(i.type, i.symbol) for i in resubscribed.add] == [("Quote", "AAPL")]
    assert manager.get_metrics()["channels"]["events"]["event_count"] == 1


async def test_candle_unsubscribe_sends_remove_with_from_time(server: ScriptedServer) -> None:
    """§2.3: a time-series remove carries fromTime; the registry forgets the series."""
    lifecycle = Lifecycle()
    manager, _ = make_manager(server, lifecycle)
    async with manager:
        await manager.subscribe_to_candles(symbol="AAPL", interval="1m", from_time=T0)
        await lifecycle.wait_for(SnapshotComplete)
        assert await manager.unsubscribe_from_candles(symbol="AAPL", interval="1m")
        assert not await manager.unsubscribe_from_candles(symbol="AAPL", interval="1m")
        await server.wait_for(lambda: not server.subscribed)
    (_, removal) = server.events(SubscriptionRequested)
    assert [(i.symbol, i.from_time) for i in removal.remove] == [("AAPL{=m}", T0)]
    assert dict(manager.subscription_metadata) == {}


async def test_candles_ends_after_aclose_once_drained(server: ScriptedServer) -> None:
    """After aclose() the consumer still gets what was queued, then the iteration ends."""
    lifecycle = Lifecycle()
    manager, _ = make_manager(server, lifecycle)
    async with manager:
        await manager.subscribe_to_candles(symbol="AAPL", interval="1m", from_time=T0)
        await lifecycle.wait_for(SnapshotComplete)
    batches = [batch async for batch in manager.candles()]
    assert [len(b) for b in batches] == [3]
    assert lifecycle.of(Stopped) == [Stopped(None)]
    with pytest.raises(UsageError, match="closed"):
        await manager.start()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"symbol": "AAPL", "interval": "5x", "from_time": T0}, "not a candle period"),
        ({"symbol": "AAPL{=5m", "from_time": T0}, "unbalanced or misplaced braces"),
        ({"symbol": "AAPL", "from_time": T0}, "has no candle period"),
        ({"symbol": "AAPL{=5m}", "interval": "5m", "from_time": T0}, "already has a period"),
        ({"symbol": "AAPL", "interval": "5m", "from_time": T0 // 1000}, "looks like seconds"),
        ({"symbol": "AAPL", "interval": "5m", "from_time": 2 * T0}, "in the future"),
    ],
)
async def test_bad_candle_requests_fail_with_clear_errors(
    kwargs: dict[str, Any], message: str
) -> None:
    """Unknown intervals, malformed symbols and implausible fromTimes are refused up front."""
    manager = DXLinkManager(TokenSource("ws://127.0.0.1:1/", [TOKEN]))
    with pytest.raises(ValueError, match=message):
        await manager.subscribe_to_candles(**kwargs)
    assert len(manager.subscription_metadata) == 0


class FailingSource(TokenSource):
    """A token source whose first calls fail with the given errors."""

    def __init__(self, url: str, failures: list[Exception]) -> None:
        super().__init__(url, [TOKEN])
        self.failures = failures

    async def get(self, force_refresh: bool = False) -> Any:
        if self.failures:
            self.calls.append(force_refresh)
            raise self.failures.pop(0)
        return await super().get(force_refresh)


async def test_rejected_login_is_fatal_and_never_connects(server: ScriptedServer) -> None:
    """The token source cannot log in (REST rejected the credentials): stop, say what to fix."""
    rejected = TastytradeAuthError(
        "tastytrade rejected the refresh token; set TASTYTRADE_REFRESH_TOKEN",
        env_vars=("TASTYTRADE_REFRESH_TOKEN",),
    )
    lifecycle = Lifecycle()
    manager = DXLinkManager(FailingSource(server.url, [rejected]), on_event=lifecycle)
    async with manager:
        with pytest.raises(TastytradeAuthError, match="set TASTYTRADE_REFRESH_TOKEN"):
            async with asyncio.timeout(TIMEOUT):
                async for _ in manager.candles():
                    pass
    assert server.sessions == []
    assert lifecycle.of(Stopped) == [Stopped(rejected)]


async def test_transient_token_source_failure_is_retried(server: ScriptedServer) -> None:
    """A 503 from the token endpoint is transient: back off and try again."""
    unavailable = TastytradeAPIError("GET /api-quote-tokens", status=503)
    lifecycle = Lifecycle()
    source = FailingSource(server.url, [unavailable])
    manager = DXLinkManager(source, reconnect_delays=short_backoff, on_event=lifecycle)
    async with manager:
        await lifecycle.wait_for(Connected)
    assert source.calls == [False, False]
    (failed,) = lifecycle.of(Disconnected)
    assert failed.reason is DisconnectReason.CONNECTION_LOST and "503" in failed.error
