"""A raw DXLink test client: a ``websockets`` connection driving a ``ClientProtocol``.

Every wait is for an explicit event (a frame, a protocol event, a close) bounded by
``TIMEOUT``, never a sleep. Frames the protocol would not send on its own (AUTH before
AUTH_STATE, oversized subscriptions) are encoded with ``messages.encode``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TypeVar

from websockets.asyncio.client import ClientConnection, connect

from pipeline.dxlink import (
    CANDLE_FIELDS,
    SNAPSHOT_END,
    SNAPSHOT_SNIP,
    Authorized,
    Candle,
    CandlesReceived,
    ChannelOpened,
    ClientProtocol,
    DataFormat,
    FeedConfigured,
    ProtocolEvent,
    SubscriptionItem,
    encode,
)
from pipeline.dxlink.message_models import Message
from tests.helpers.timing import TIMEOUT

__all__ = ["TestClient", "comparable"]


def comparable(candles: Iterable[Candle]) -> list[tuple[object, ...]]:
    """Candles as tuples in which NaN is None, so that ``==`` works (NaN != NaN)."""
    return [tuple(None if v != v else v for v in candle) for candle in candles]


E = TypeVar("E")


class TestClient:
    """One client connection to the simulator, with the events it has received."""

    __test__ = False  # not a pytest class

    def __init__(self, ws: ClientConnection, protocol: ClientProtocol) -> None:
        self.ws = ws
        self.protocol = protocol
        self.events: list[ProtocolEvent] = []
        """Every event received and not yet taken by ``expect``."""
        self.frames: list[str] = []
        """Every frame received, in order."""

    @classmethod
    async def open(
        cls, url: str, token: str | None = "sim-token", *, keepalive_timeout: float = 60
    ) -> TestClient:
        """Connect and send SETUP (the handshake goes on as frames arrive)."""
        ws = await connect(url, ping_interval=None, compression=None, max_size=2**24)
        protocol = ClientProtocol(
            token=token, keepalive_timeout=keepalive_timeout, accept_keepalive_timeout=60
        )
        client = cls(ws, protocol)
        protocol.start(asyncio.get_running_loop().time())
        await client.flush()
        return client

    @classmethod
    async def raw(cls, url: str) -> TestClient:
        """Connect without starting the protocol: the test sends every message itself."""
        ws = await connect(url, ping_interval=None, compression=None, max_size=2**24)
        return cls(ws, ClientProtocol(token=None))

    @classmethod
    async def authorized(cls, url: str, token: str = "sim-token") -> TestClient:
        """Connect and complete the handshake up to AUTHORIZED."""
        client = await cls.open(url, token)
        await client.expect(Authorized)
        return client

    async def flush(self) -> None:
        """Send everything the protocol has queued."""
        for frame in self.protocol.messages_to_send():
            await self.ws.send(frame)

    async def send_message(self, message: Message) -> None:
        """Send one message directly, bypassing the client state machine."""
        await self.ws.send(encode(message))

    async def next_frame(self) -> str:
        """Wait for one frame and record it, without feeding the protocol (raw clients)."""
        async with asyncio.timeout(TIMEOUT):
            frame = await self.ws.recv()
        assert isinstance(frame, str)
        self.frames.append(frame)
        return frame

    async def frame_containing(self, text: str) -> str:
        """Read raw frames until one contains ``text``; return it."""
        while True:
            frame = await self.next_frame()
            if text in frame:
                return frame

    async def receive(self) -> list[ProtocolEvent]:
        """Wait for one frame and return the events it produced."""
        async with asyncio.timeout(TIMEOUT):
            frame = await self.ws.recv()
        assert isinstance(frame, str)
        self.frames.append(frame)
        self.protocol.receive_message(frame, asyncio.get_running_loop().time())
        events = self.protocol.events_received()
        self.events.extend(events)
        await self.flush()
        return events

    async def expect(self, kind: type[E], where: Callable[[E], bool] = lambda _: True) -> E:
        """Return (and take) the first event of ``kind`` matching ``where``, reading frames
        as needed."""
        while True:
            for i, event in enumerate(self.events):
                if isinstance(event, kind) and where(event):
                    del self.events[i]
                    return event
            await self.receive()

    async def candle_channel(
        self,
        contract: str = "HISTORY",
        *,
        fields: tuple[str, ...] = CANDLE_FIELDS,
        data_format: DataFormat = DataFormat.COMPACT,
        aggregation_period: float = 0.1,
    ) -> int:
        """Open a FEED channel and set it up for candles; return its number."""
        channel = self.protocol.open_channel(contract)
        await self.flush()
        await self.expect(ChannelOpened, lambda e: e.channel == channel)
        self.protocol.setup_feed(
            channel,
            aggregation_period=aggregation_period,
            data_format=data_format,
            event_fields={"Candle": fields},
        )
        await self.flush()
        await self.expect(FeedConfigured, lambda e: e.channel == channel)
        return channel

    async def subscribe(self, channel: int, symbol: str, from_time: int) -> None:
        """Add one Candle subscription."""
        self.protocol.subscribe(channel, add=[SubscriptionItem("Candle", symbol, from_time)])
        await self.flush()

    async def candles(self, count: int) -> list[Candle]:
        """Read until ``count`` candles arrived (in order) and return exactly those."""
        received: list[Candle] = []
        while len(received) < count:
            event = await self.expect(CandlesReceived)
            received.extend(event.candles)
        assert len(received) == count, f"expected {count} candles, got {len(received)}"
        return received

    async def snapshot(self) -> list[Candle]:
        """Read candles up to and including the one that ends a snapshot (END or SNIP)."""
        received: list[Candle] = []
        while not received or not received[-1].flags & (SNAPSHOT_END | SNAPSHOT_SNIP):
            received.extend((await self.expect(CandlesReceived)).candles)
        return received

    async def close(self) -> None:
        """Close the connection (1000)."""
        await self.ws.close()
