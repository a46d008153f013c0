"""Test helpers for the DXLink client: token sources, lifecycle recorders, a scripted server."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr
from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed

from pipeline.dxlink import (
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    AuthRequested,
    Candle,
    ChannelRequested,
    ClientSetup,
    DataFormat,
    FeedSetupRequested,
    PeerTimedOut,
    ProtocolEvent,
    ServerProtocol,
    SubscriptionRequested,
    index_of,
)
from pipeline.dxlink.client import (
    DXLinkManager,
    LifecycleEvent,
)
from pipeline.simulator import Simulator
from tests.helpers.timing import TIMEOUT, short_backoff

START = 1_756_252_800_000  # 2025-08-27T00:00Z

HOUR = 3_600_000

NOW = START + 6 * HOUR

SIM_TOKEN = "sim-token-5e1d"


class TokenSource:
    """A TokenSource with the real shape: ``.token`` is a SecretStr, refresh hands the next."""

    def __init__(self, url: str, tokens: list[str]) -> None:
        self.url = url
        self.tokens = tokens
        self.calls: list[bool] = []

    async def get(self, force_refresh: bool = False) -> Any:
        self.calls.append(force_refresh)
        if force_refresh and len(self.tokens) > 1:
            self.tokens.pop(0)
        return _Quote(SecretStr(self.tokens[0]), self.url)


@dataclass(frozen=True)
class _Quote:
    token: SecretStr
    dxlink_url: str


class Lifecycle:
    """Records lifecycle events; tests wait on them instead of sleeping."""

    def __init__(self) -> None:
        self.events: list[LifecycleEvent] = []
        self.counts: Counter[type[Any]] = Counter()
        self._changed = asyncio.Event()

    def __call__(self, event: LifecycleEvent) -> None:
        self.events.append(event)
        self.counts[type(event)] += 1
        self._changed.set()

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, kind: type[Any], count: int = 1) -> None:
        """Wait until ``count`` events of ``kind`` have been seen in total."""
        async with asyncio.timeout(TIMEOUT):
            while self.counts[kind] < count:
                self._changed.clear()
                await self._changed.wait()


def make_client(sim: Simulator, lifecycle: Lifecycle, **kwargs: Any) -> DXLinkManager:
    settings: dict[str, Any] = {
        "reconnect_delays": short_backoff,
        "on_event": lifecycle,
        "wall_clock": lambda: NOW / 1000,  # the simulator's time, for fromTime checks
    }
    settings.update(kwargs)
    tokens = settings.pop("tokens", [SIM_TOKEN])
    return DXLinkManager(TokenSource(sim.url, tokens), **settings)


class Collector:
    """Consumes candles() in the background, like the service does."""

    def __init__(self, manager: DXLinkManager) -> None:
        self.candles: list[Candle] = []
        self.batches = 0
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._run(manager))

    async def _run(self, manager: DXLinkManager) -> None:
        async for batch in manager.candles():
            self.candles.extend(batch)
            self.batches += 1
            self._changed.set()

    async def wait_batches(self, count: int) -> None:
        """Wait until ``count`` batches have arrived in total."""
        async with asyncio.timeout(TIMEOUT):
            while self.batches < count:
                self._changed.clear()
                await self._changed.wait()


T0 = 1_756_252_800_000  # 2025-08-27T00:00Z

MINUTE = 60_000

TOKEN = "tok-3f9a1c-secret"


@dataclass
class Session:
    """One accepted connection as the server saw it."""

    protocol: ServerProtocol
    ws: ServerConnection
    received: list[ProtocolEvent] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    """The server's loop time at each frame received."""
    channels: dict[str, int] = field(default_factory=dict)  # contract -> channel
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while frames go out, so the reader's and the timer's frames keep their order."""


class ScriptedServer:
    """A DXLink server on ``ServerProtocol`` whose behaviour a test can bend."""

    def __init__(self) -> None:
        self.tokens = {TOKEN}
        """Tokens AUTH accepts."""
        self.keepalive_timeout = 60.0
        self.run_timers = False
        """When True: each session runs the protocol's timer like the simulator (KEEPALIVEs,
        and a close for a client silent longer than its keepaliveTimeout, §2.6)."""
        self.silent = False
        """When True: frames are dropped instead of sent (a server gone quiet, socket open)."""
        self.reply_setup = True
        self.hold_auth_state: asyncio.Event | None = None
        """When set: the initial AUTH_STATE waits for this event."""
        self.snapshot_size = 3
        """Candles per snapshot (newest first, SNAPSHOT_BEGIN ... SNAPSHOT_END)."""
        self.on_subscription: Callable[[Session, SubscriptionRequested], None] | None = None
        self.sessions: list[Session] = []
        self.subscribed: dict[str, int] = {}
        """Candle symbol -> fromTime, across connections (latest add wins)."""
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self.server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds after some message was processed."""
        async with asyncio.timeout(TIMEOUT), self._changed:
            await self._changed.wait_for(predicate)

    def events(self, kind: type[Any], session: int | None = None) -> list[Any]:
        sessions = self.sessions if session is None else [self.sessions[session]]
        return [e for s in sessions for e in s.received if isinstance(e, kind)]

    async def handler(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        protocol = ServerProtocol(keepalive_timeout=self.keepalive_timeout)
        session = Session(protocol, ws)
        self.sessions.append(session)
        protocol.start(loop.time())
        if self.run_timers:
            self._tasks.add(asyncio.create_task(self.time(session)))
        with contextlib.suppress(ConnectionClosed):  # clients may vanish without a close
            async for frame in ws:
                session.arrivals.append(loop.time())
                protocol.receive_message(frame, loop.time())
                for event in protocol.events_received():
                    session.received.append(event)
                    await self.react(session, event)
                await self.flush(session)
                async with self._changed:
                    self._changed.notify_all()

    async def flush(self, session: Session) -> None:
        """Send what the session's protocol queued (or drop it while ``silent``)."""
        async with session.send_lock:
            for text in session.protocol.messages_to_send():
                if not self.silent:
                    await session.ws.send(text)

    async def time(self, session: Session) -> None:
        """The server's timer (as in the simulator): sleep to the protocol's deadline, fire it."""
        loop = asyncio.get_running_loop()
        protocol = session.protocol
        with contextlib.suppress(ConnectionClosed):
            while (deadline := protocol.next_deadline()) is not None:
                await asyncio.sleep(max(0.0, deadline - loop.time()))  # a timer, not a sync
                protocol.handle_timer(loop.time())
                events = protocol.events_received()
                session.received += events
                await self.flush(session)
                if any(isinstance(event, PeerTimedOut) for event in events):
                    await session.ws.close(1011, "keepalive timeout")
                async with self._changed:
                    self._changed.notify_all()

    async def release_auth_state(self, session: Session) -> None:
        """Send the initial AUTH_STATE once the test allows it (the handler keeps reading)."""
        assert self.hold_auth_state is not None
        await self.hold_auth_state.wait()
        session.protocol.send_auth_state(False)
        await self.flush(session)

    async def react(self, session: Session, event: ProtocolEvent) -> None:
        protocol = session.protocol
        if isinstance(event, ClientSetup) and self.reply_setup:
            protocol.send_setup()
            if self.hold_auth_state is None:
                protocol.send_auth_state(False)
            else:
                self._tasks.add(asyncio.create_task(self.release_auth_state(session)))
        elif isinstance(event, AuthRequested):
            protocol.send_auth_state(event.token in self.tokens, "user-1")
        elif isinstance(event, ChannelRequested):
            session.channels[str(event.parameters.get("contract"))] = event.channel
            protocol.open_channel(event.channel)
        elif isinstance(event, FeedSetupRequested):
            protocol.configure_feed(
                event.channel,
                aggregation_period=event.accept_aggregation_period or 0.1,
                data_format=event.accept_data_format or DataFormat.COMPACT,
                event_fields=event.accept_event_fields,
            )
        elif isinstance(event, SubscriptionRequested):
            for item in event.add:
                if item.type == "Candle" and item.from_time is not None:
                    self.subscribed[item.symbol] = item.from_time
                    protocol.send_candles(event.channel, self.snapshot(item.symbol, item.from_time))
            for item in event.remove:
                self.subscribed.pop(item.symbol, None)
            if self.on_subscription is not None:
                self.on_subscription(session, event)

    def snapshot(self, symbol: str, from_time: int) -> list[Candle]:
        """``snapshot_size`` one-minute candles from ``from_time``, newest first (§6.2)."""
        times = [from_time + n * MINUTE for n in reversed(range(self.snapshot_size))]
        candles = []
        for position, time_ms in enumerate(times):
            flags = SNAPSHOT_BEGIN if position == 0 else 0
            if position == len(times) - 1:
                flags |= SNAPSHOT_END
            candles.append(
                Candle(symbol, time_ms, flags=flags, index=index_of(time_ms), close=100.0)
            )
        return candles


def make_manager(
    server: ScriptedServer, lifecycle: Lifecycle, tokens: list[str] | None = None, **kwargs: Any
) -> tuple[DXLinkManager, TokenSource]:
    source = TokenSource(server.url, tokens or [TOKEN])
    settings: dict[str, Any] = {"reconnect_delays": short_backoff, "on_event": lifecycle}
    settings.update(kwargs)
    return DXLinkManager(source, **settings), source
