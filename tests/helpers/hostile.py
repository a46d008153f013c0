"""A small malicious DXLink server for tests (issue 14): a correct handshake, then mischief.

:class:`HostileServer` speaks DXLink from raw JSON (no ``ServerProtocol``: it must be able to
say what no well-behaved server would), over real sockets on 127.0.0.1. The handshake follows
§2.2 (SETUP, AUTH_STATE, CHANNEL_OPENED, FEED_CONFIG echoing the requested Candle fields), so
the client under test gets as far as a real server would let it; then each test bends it:

* ``setup``: what the SETUP reply advertises (``keepaliveTimeout: 1e9``...; by default the
  client's own acceptKeepaliveTimeout, as an obliging server would);
* ``keepalive_every``: seconds between the server's KEEPALIVEs (None: never), and ``silent``:
  send nothing at all after the handshake (a stall; the socket stays open);
* ``deaf``: stop reading the client's frames after the handshake (half-open towards us);
* ``feed``: called with each candle subscription, returns the frames to answer it with;
  :meth:`candle_frame` builds COMPACT ``FEED_DATA`` from field values, absurd ones included.

Everything random comes from ``seed``, so a failing case replays exactly. The market it
serves, :class:`Market`, is deterministic too, and is the truth the store must equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from pipeline.dxlink import SNAPSHOT_BEGIN, SNAPSHOT_END, CandleSymbol, index_of
from tests.helpers.timing import TIMEOUT

__all__ = ["TOKEN", "Feed", "HostileServer", "HostileSession", "Market", "candle_values"]

TOKEN = "hostile-token-7c21"
Feed = Callable[["HostileSession", int, str, int], Sequence[str]]
"""``feed(session, channel, symbol, from_time) -> frames`` for one candle subscription."""


@dataclass
class HostileSession:
    """One accepted connection as the hostile server saw it."""

    ws: ServerConnection
    received: list[dict[str, Any]] = field(default_factory=list)
    """Every frame the client sent that was a JSON object, in order."""
    channels: dict[str, int] = field(default_factory=dict)
    """Channel number by contract (``HISTORY``, ``AUTO``)."""
    fields: dict[int, list[str]] = field(default_factory=dict)
    """The Candle fields each channel was configured with (the client's own list)."""
    subscriptions: dict[str, int] = field(default_factory=dict)
    """Candle symbol -> the latest fromTime asked for."""
    subscribed: list[tuple[int, str, int]] = field(default_factory=list)
    """Every candle subscription in order: (channel, symbol, fromTime)."""
    ready: bool = False
    """The client configured every channel it asked for (the handshake is over)."""
    close_frame: Close | None = None
    """The close frame the client sent, or None when it dropped TCP without one."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def types(self) -> list[str]:
        return [str(frame.get("type")) for frame in self.received]


class HostileServer:
    """A DXLink server that does what a test tells it (see the module docstring)."""

    def __init__(
        self,
        *,
        seed: int = 14,
        setup: Mapping[str, Any] | None = None,
        keepalive_every: float | None = 0.05,
        feed: Feed | None = None,
        receive_buffer: int | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.setup: dict[str, Any] = dict(setup or {})
        """Fields of the SETUP reply; by default both timeouts echo the client's
        acceptKeepaliveTimeout, as a server honouring it would (§2.6)."""
        self.keepalive_every = keepalive_every
        self.silent = False
        """Send nothing after the handshake, keepalives included (a stall)."""
        self.deaf = False
        """Stop reading the client's frames once the handshake is over."""
        self.feed = feed
        self.receive_buffer = receive_buffer
        """SO_RCVBUF of accepted sockets (small: a deaf server fills up quickly)."""
        self.sessions: list[HostileSession] = []
        self.sent_frames = 0
        self._server: Server | None = None
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> HostileServer:
        sock: socket.socket | None = None
        if self.receive_buffer is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            sock.bind(("127.0.0.1", 0))
        options: dict[str, Any] = {"sock": sock} if sock else {"host": "127.0.0.1", "port": 0}
        self._server = await serve(
            self._handle,
            ping_interval=None,
            max_size=None,
            max_queue=4,
            compression=None,
            # Closing the server waits this long for a client's close frame; a deaf session
            # (reading paused) never sees the client's reset, so it would wait the default 10 s.
            close_timeout=1,
            **options,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    async def wait_for(self, predicate: Callable[[], bool], within: float = TIMEOUT) -> None:
        """Wait until ``predicate()`` holds after something happened on some session."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------------ sending

    async def send(self, session: HostileSession, frame: str | bytes | Mapping[str, Any]) -> None:
        """Send one frame: a dict is JSON-encoded (``allow_nan``: NaN/Infinity on purpose)."""
        text = frame if isinstance(frame, str | bytes) else json.dumps(frame, allow_nan=True)
        with contextlib.suppress(ConnectionClosed):
            await session.ws.send(text)
            self.sent_frames += 1

    async def broadcast(self, frames: Iterable[str | bytes | Mapping[str, Any]]) -> None:
        """Send ``frames`` on every ready session."""
        frames = list(frames)
        for session in [s for s in self.sessions if s.ready and not s.closed.is_set()]:
            for frame in frames:
                await self.send(session, frame)

    @staticmethod
    def candle_frame(
        channel: int, fields: Sequence[str], events: Iterable[Mapping[str, Any]]
    ) -> str:
        """COMPACT FEED_DATA (§3.4) of ``events`` (field -> value; a missing field is NaN or 0)."""
        values: list[Any] = []
        for event in events:
            for name in fields:
                default: Any = "NaN" if name not in _INT_FIELDS else 0
                value = event.get(name, default)
                if isinstance(value, float) and not math.isfinite(value):
                    value = (
                        "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
                    )
                values.append(value)
        return json.dumps({"type": "FEED_DATA", "channel": channel, "data": ["Candle", values]})

    # ------------------------------------------------------------------ the handler

    async def _handle(self, ws: ServerConnection) -> None:
        session = HostileSession(ws)
        self.sessions.append(session)
        try:
            async for frame in ws:
                try:
                    message = json.loads(frame)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                session.received.append(message)
                await self._react(session, message)
                await self._notify()
                if self.deaf and session.ready:
                    # Read nothing more: websockets' queue fills, it stops reading the socket,
                    # and the client's frames pile up in the kernel buffers, then in its own.
                    await ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            session.close_frame = ws.protocol.close_rcvd
            session.closed.set()
            await self._notify()

    async def _react(self, session: HostileSession, message: dict[str, Any]) -> None:
        kind, channel = message.get("type"), message.get("channel", 0)
        if kind == "SETUP":
            accept = message.get("acceptKeepaliveTimeout", 60)
            setup = {"type": "SETUP", "channel": 0, "version": "1.0-hostile"}
            setup |= {"keepaliveTimeout": accept, "acceptKeepaliveTimeout": accept} | self.setup
            await self.send(session, setup)
            await self.send(session, {"type": "AUTH_STATE", "channel": 0, "state": "UNAUTHORIZED"})
        elif kind == "AUTH":
            state = "AUTHORIZED" if message.get("token") == TOKEN else "UNAUTHORIZED"
            await self.send(session, {"type": "AUTH_STATE", "channel": 0, "state": state})
        elif kind == "CHANNEL_REQUEST":
            contract = str(message.get("parameters", {}).get("contract"))
            session.channels[contract] = channel
            reply = {"type": "CHANNEL_OPENED", "channel": channel, "service": "FEED"}
            reply["parameters"] = {"contract": contract, "subFormat": "LIST"}
            await self.send(session, reply)
        elif kind == "FEED_SETUP":
            fields = message.get("acceptEventFields", {}).get("Candle", [])
            session.fields[channel] = list(fields)
            config: dict[str, Any] = {"type": "FEED_CONFIG", "channel": channel}
            config |= {"aggregationPeriod": 0.1, "dataFormat": "COMPACT"}
            if fields:
                config["eventFields"] = {"Candle": fields}
            await self.send(session, config)
            if len(session.fields) == len(session.channels) and not session.ready:
                session.ready = True
                self._after_handshake(session)
        elif kind == "FEED_SUBSCRIPTION":
            for item in message.get("add", []):
                if item.get("type") != "Candle":
                    continue
                symbol, from_time = str(item.get("symbol")), int(item.get("fromTime", 0))
                session.subscriptions[symbol] = from_time
                session.subscribed.append((channel, symbol, from_time))
                if self.feed is not None and not self.silent:
                    for frame in self.feed(session, channel, symbol, from_time):
                        await self.send(session, frame)

    def _after_handshake(self, session: HostileSession) -> None:
        if self.keepalive_every is not None:
            task = asyncio.create_task(self._keepalives(session))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _keepalives(self, session: HostileSession) -> None:
        while not session.closed.is_set():
            await asyncio.sleep(self.keepalive_every or 0)  # a timer, not a synchronisation
            if not self.silent:
                await self.send(session, {"type": "KEEPALIVE", "channel": 0})


_INT_FIELDS = frozenset({"eventFlags", "index", "time", "sequence", "count", "eventTime"})


def candle_values(
    symbol: str, time_ms: int, *, flags: int = 0, rng: random.Random | None = None, **fields: Any
) -> dict[str, Any]:
    """One Candle event as field values: a plausible candle at ``time_ms`` (seeded by
    ``rng``), with ``fields`` overriding any of them (absurd ones included)."""
    rng = rng or random.Random(time_ms)
    low = round(rng.uniform(90, 110), 2)
    high = round(low + rng.uniform(0, 3), 2)
    open_, close = (round(rng.uniform(low, high), 2) for _ in range(2))
    values: dict[str, Any] = {
        "eventType": "Candle",
        "eventSymbol": symbol,
        "eventTime": 0,
        "eventFlags": flags,
        "index": index_of(time_ms),
        "time": time_ms,
        "sequence": 0,
        "count": rng.randint(1, 500),
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": float(rng.randint(100, 100_000)),
        "vwap": round((low + high) / 2, 4),
        "bidVolume": "NaN",
        "askVolume": "NaN",
        "impVolatility": "NaN",
        "openInterest": "NaN",
    }
    values.update(fields)
    return values


class Market:
    """The hostile server's truth: ``count`` seeded candles per series, ending at ``end_ms``.

    Args:
        seed: Every value derives from it and the series key.
        end_ms: The start of the newest candle of each series (on its period).
        count: Candles per series.
    """

    def __init__(self, seed: int, end_ms: int, count: int) -> None:
        self.seed = seed
        self.end_ms = end_ms
        self.count = count

    def candles(self, symbol: str, from_ms: int = 0) -> list[dict[str, Any]]:
        """The series' candles at or after ``from_ms``, oldest first."""
        period = CandleSymbol.parse(symbol).period_ms
        assert period is not None, symbol
        rng = random.Random(f"{self.seed}:{symbol}")
        first = self.end_ms - (self.count - 1) * period
        series = [candle_values(symbol, first + n * period, rng=rng) for n in range(self.count)]
        return [c for c in series if c["time"] >= from_ms]

    def snapshot(self, symbol: str, from_ms: int) -> list[dict[str, Any]]:
        """The candles from ``from_ms`` as a §6.2 snapshot: newest first, BEGIN ... END."""
        candles = [dict(c) for c in reversed(self.candles(symbol, from_ms))]
        if not candles:
            return [candle_values(symbol, from_ms, flags=SNAPSHOT_BEGIN | SNAPSHOT_END | 0x02)]
        candles[0]["eventFlags"] |= SNAPSHOT_BEGIN
        candles[-1]["eventFlags"] |= SNAPSHOT_END
        return candles
