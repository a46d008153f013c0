"""``candles replay``: a recording served again over DXLink, to any client.

:class:`ReplayServer` listens like a DXLink server. The *k*-th connection a client makes gets
the *k*-th recorded connection (in session order), because that is how the original client
met the server: a recorded reconnect (a drop, a stall, a restart) is replayed as a connection
the server ends, and the client's own reconnect picks up the next one. Within a connection,
the recorded server frames go out in recorded order, each only once the client asked for it:

* SETUP and AUTH_STATE once the client sent as many SETUP and AUTH messages as the recorded
  client had (any token is accepted: the recording's is redacted);
* a channel's frames once the client opened a channel for it, under the client's number:
  each CHANNEL_REQUEST is matched to a recorded channel of the same service, preferring one
  that carried data, then the same number, then the same contract (tastyware asks for candles
  on channel 1 with ``AUTO``, this client on 1 with ``HISTORY``); the frames are rewritten
  with the client's number when it differs;
* a FEED_CONFIG once the client sent its FEED_SETUP on that channel;
* a FEED_DATA frame once the client subscribed every series in it (:mod:`~pipeline.recording.feed`);
  the recorded ``fromTime`` is not compared, since what the server sent is what is replayed.

A step the client never takes (a channel it does not open, a series it does not subscribe)
is waited for ``wait_for_client`` seconds, then left out: logged once, counted, never
blocking the rest. Timing: with ``speed`` the frames keep their recorded spacing divided by
``speed`` (time spent waiting for the client shifts the schedule); without it they go as fast
as the client reads (websockets' write buffer applies back-pressure).

When every recorded connection was served, the last one stays open with keepalives, and any
later connection gets a plain handshake and no data, so a client is never pushed into a
reconnect loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from pipeline.dxlink import (
    Auth,
    AuthRequested,
    ChannelCancel,
    ChannelRequest,
    ChannelRequested,
    ClientSetup,
    DataFormat,
    FeedSetup,
    FeedSetupRequested,
    FeedSubscription,
    InvalidMessage,
    PeerTimedOut,
    ServerProtocol,
    Setup,
    UsageError,
    parse,
)
from pipeline.recording.feed import feed_series, restrict, series_key
from pipeline.recording.format import CLOSED, OPENED, RECEIVED, SENT, Record
from pipeline.recording.reader import Position, Recording
from pipeline.recording.stream import Problem, usable_records

__all__ = [
    "DEFAULT_WAIT_FOR_CLIENT",
    "RecordedChannel",
    "RecordedConnectionPlan",
    "ReplayServer",
    "ReplayStats",
    "index_connections",
]

logger = logging.getLogger("pipeline.recording.replay")

DEFAULT_WAIT_FOR_CLIENT: Final = 10.0
"""Seconds a recorded frame waits for the client step it answers before it is left out."""
KEEPALIVE_EVERY: Final = 15.0
"""Most seconds between keepalives once the recording is over (§2.6: tastytrade's 60 / 4)."""
_KEEPALIVE: Final = '{"type":"KEEPALIVE","channel":0}'
_FEED_DATA_CHANNEL = re.compile(r'\{"type":"FEED_DATA","channel":(\d+)')


@dataclass(frozen=True, slots=True)
class RecordedChannel:
    """A channel the recorded client requested."""

    number: int
    service: str
    contract: str | None
    has_data: bool


@dataclass(slots=True)
class RecordedConnectionPlan:
    """One recorded connection: where it starts, its channels, how much it holds."""

    session: str
    number: int
    start: Position
    url: str
    channels: dict[int, RecordedChannel] = field(default_factory=dict)
    server_frames: int = 0
    first_m: int = 0
    last_m: int = 0
    ended: str = "the recording ends"

    @property
    def seconds(self) -> float:
        """Recorded duration, first to last record."""
        return (self.last_m - self.first_m) / 1e9


@dataclass(slots=True)
class ReplayStats:
    """What the replay server did."""

    recorded_connections: int = 0
    connections: int = 0
    """Client connections accepted."""
    served: int = 0
    """Recorded connections whose frames were all offered to a client."""
    frames_sent: int = 0
    frames_rewritten: int = 0
    """Sent with another channel number or fewer events than recorded."""
    frames_left_out: int = 0
    """Not sent: a channel or series the client did not ask for."""


def index_connections(
    recording: Recording, on_problem: Callable[[Problem], None]
) -> list[RecordedConnectionPlan]:
    """Read the whole recording once: every usable connection, in order."""
    plans: dict[tuple[str, int], RecordedConnectionPlan] = {}
    for position, session, record in usable_records(recording.entries(), on_problem):
        key = (session, record.c)
        if record.d == OPENED:
            plans[key] = RecordedConnectionPlan(
                session, record.c, position, record.f, first_m=record.m, last_m=record.m
            )
            continue
        plan = plans[key]
        plan.last_m = record.m
        if record.d == RECEIVED:
            plan.server_frames += 1
            channel = _data_channel(record.f)
            known = plan.channels.get(channel) if channel is not None else None
            if known is not None and not known.has_data:
                plan.channels[known.number] = RecordedChannel(
                    known.number, known.service, known.contract, True
                )
        elif record.d == SENT and "CHANNEL_REQUEST" in record.f:
            request = _loads(record.f)
            number = request.get("channel")
            if request.get("type") == "CHANNEL_REQUEST" and isinstance(number, int):
                parameters = request.get("parameters") or {}
                contract = parameters.get("contract") if isinstance(parameters, dict) else None
                service = str(request.get("service", "FEED"))
                plan.channels.setdefault(number, RecordedChannel(number, service, contract, False))
        elif record.d == CLOSED:
            plan.ended = record.f
    return list(plans.values())


def _data_channel(frame: str) -> int | None:
    """The channel of a FEED_DATA frame (None for other frames)."""
    found = _FEED_DATA_CHANNEL.match(frame)
    if found:
        return int(found[1])
    if '"FEED_DATA"' not in frame:
        return None
    message = _loads(frame)
    channel = message.get("channel")
    return channel if message.get("type") == "FEED_DATA" and isinstance(channel, int) else None


def _loads(frame: str) -> dict[str, Any]:
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class ReplayServer:
    """Serves a recording over DXLink (see the module docstring).

    Args:
        recording: What to serve (read once up front: its connections and channels).
        host: Interface to listen on.
        port: TCP port; 0 picks a free one (see :attr:`url`).
        speed: Replay the recorded timing this many times faster; None: as fast as the
            client reads.
        wait_for_client: Seconds a recorded frame waits for the client step it answers.
    """

    def __init__(
        self,
        recording: Recording,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float | None = None,
        wait_for_client: float = DEFAULT_WAIT_FOR_CLIENT,
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(
                f"speed must be > 0 (or unset: as fast as the client reads), got {speed}"
            )
        if not wait_for_client > 0:
            raise ValueError(f"wait_for_client must be > 0 seconds, got {wait_for_client}")
        self.recording = recording
        self.host = host
        self.port = port
        self.speed = speed
        self.wait_for_client = wait_for_client
        self.problems: list[str] = [f"{d}; the file is not used" for d in recording.unusable]
        """Every part of the recording left out, and why (file and byte offset)."""
        self.connections = index_connections(recording, lambda p: self.problems.append(str(p)))
        """The recorded connections, in the order they are served."""
        self.stats = ReplayStats(recorded_connections=len(self.connections))
        self._next = 0
        self._finished = asyncio.Event()
        self._server: Server | None = None

    def __repr__(self) -> str:
        where = "stopped" if self._server is None else self.url
        return f"ReplayServer({where}, {len(self.connections)} recorded connections)"

    def describe(self) -> str:
        """One line: what is being served."""
        frames = sum(c.server_frames for c in self.connections)
        seconds = sum(c.seconds for c in self.connections)
        sessions = len({c.session for c in self.connections})
        return (
            f"{len(self.connections)} recorded connections from {sessions} sessions, "
            f"{frames:,} server frames over {seconds:,.1f} s of traffic"
        )

    @property
    def url(self) -> str:
        """``ws://host:port/`` of the running server."""
        if self._server is None:
            raise RuntimeError("the replay server is not running; start() it first")
        return f"ws://{self.host}:{self.port}/"

    @property
    def finished(self) -> bool:
        """Every recorded connection has been served."""
        return self._finished.is_set()

    async def wait_finished(self) -> None:
        """Return once every recorded connection has been served."""
        await self._finished.wait()

    async def start(self) -> None:
        """Listen."""
        if self._server is not None:
            raise RuntimeError("the replay server is already running")
        if not self.connections:
            self._finished.set()
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            ping_interval=None,  # DXLink keeps alive with KEEPALIVE messages (§2.6)
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("replaying %s at %s", self.describe(), self.url)

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> ReplayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, ws: ServerConnection) -> None:
        index = self._next
        self._next += 1
        self.stats.connections += 1
        if index >= len(self.connections):
            logger.info("= connection %d: the recording is over; handshake only", index + 1)
            await _AfterTheEnd(ws).run()
            return
        plan = self.connections[index]
        last = index == len(self.connections) - 1
        logger.info(
            "= connection %d replays recorded connection %d of session %s (%s, %d frames)",
            index + 1, plan.number, plan.session[:8], plan.url, plan.server_frames,
        )  # fmt: skip
        await _Replay(ws, plan, self, last=last).run()

    def _served(self, plan: RecordedConnectionPlan, *, last: bool) -> None:
        self.stats.served += 1
        if last and not self._finished.is_set():
            self._finished.set()
            logger.info(
                "replay finished: all %d recorded connections served", len(self.connections)
            )


class _ClientGone(Exception):
    pass


class _Replay:
    """One client connection served from one recorded connection."""

    def __init__(
        self,
        ws: ServerConnection,
        plan: RecordedConnectionPlan,
        server: ReplayServer,
        *,
        last: bool,
    ) -> None:
        self.ws = ws
        self.plan = plan
        self.server = server
        self.stats = server.stats
        self.last = last
        self.loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        self.gone = False
        self.send_lock = asyncio.Lock()
        self.keepalive_every = KEEPALIVE_EVERY
        # What the client did, live.
        self.setups = 0
        self.auths = 0
        self.feed_setups: Counter[int] = Counter()
        self.subscribed: dict[int, set[str]] = {}
        self.bound: dict[int, int] = {}
        """Recorded channel -> the client's channel."""
        self.live: dict[int, int] = {}
        """The client's channel -> recorded channel."""
        # What the recorded client had done so far, and what the recording announced.
        self.recorded_setups = 0
        self.recorded_auths = 0
        self.recorded_feed_setups: Counter[int] = Counter()
        self.fields: dict[int, dict[str, tuple[str, ...]]] = {}
        self.left_out_channels: set[int] = set()
        self.left_out_series: dict[int, set[str]] = {}
        # Timing (speed): the schedule's origin, and the time spent waiting for the client.
        self.origin = self.loop.time()
        self.shift = 0.0
        self.replies: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        reader = asyncio.create_task(self._read(), name="replay-reader")
        try:
            try:
                await self._pump()
            except (_ClientGone, ConnectionClosed):
                logger.info("! the client left during recorded connection %d", self.plan.number)
                self.server._served(self.plan, last=self.last)
                return
            self.server._served(self.plan, last=self.last)
            if self.last:
                await self._hold(reader)
            else:
                with contextlib.suppress(ConnectionClosed):
                    await self.ws.close(1001, "replay: the recorded connection ended here")
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    # ------------------------------------------------------------------ the client

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self._client_frame(frame)
        except ConnectionClosed:
            pass
        finally:
            self.gone = True
            self.changed.set()

    def _client_frame(self, frame: str | bytes) -> None:
        try:
            message = parse(frame)
        except InvalidMessage as exc:
            logger.info("! the client sent an invalid message: %s", exc)
            return
        if isinstance(message, Setup):
            self.setups += 1
            for timeout in (message.keepalive_timeout, message.accept_keepalive_timeout):
                if timeout:
                    self.keepalive_every = min(self.keepalive_every, timeout / 2)
        elif isinstance(message, Auth):
            self.auths += 1
        elif isinstance(message, ChannelRequest):
            contract = message.parameters.get("contract")
            self._bind(
                message.channel, message.service, contract if isinstance(contract, str) else None
            )
        elif isinstance(message, FeedSetup):
            self.feed_setups[message.channel] += 1
        elif isinstance(message, FeedSubscription):
            series = self.subscribed.setdefault(message.channel, set())
            if message.reset:
                series.clear()
            series.difference_update(series_key(item.symbol) for item in message.remove)
            series.update(series_key(item.symbol) for item in message.add)
        elif isinstance(message, ChannelCancel):
            recorded = self.live.pop(message.channel, None)
            if recorded is not None:
                del self.bound[recorded]
                self.left_out_channels.add(recorded)
            # §2.3: the server answers CHANNEL_CANCEL with CHANNEL_CLOSED.
            reply = asyncio.create_task(
                self._send_unless_gone(f'{{"type":"CHANNEL_CLOSED","channel":{message.channel}}}')
            )
            self.replies.add(reply)
            reply.add_done_callback(self.replies.discard)
        self.changed.set()

    def _bind(self, channel: int, service: str, contract: str | None) -> None:
        if channel in self.live:
            return  # a request for a channel that is open already: nothing to match
        free = [c for c in self.plan.channels.values() if c.number not in self.bound]
        if not free:
            logger.info(
                "! the client's CHANNEL_REQUEST %d (%s %s) matches no recorded channel; "
                "it gets no answer", channel, service, contract,
            )  # fmt: skip
            return
        best = max(
            free,
            key=lambda c: (
                c.service == service,
                c.has_data,
                c.number == channel,
                c.contract == contract,
            ),
        )
        self.bound[best.number] = channel
        self.live[channel] = best.number
        self.left_out_channels.discard(best.number)
        if best.number != channel:
            logger.info(
                "= the client's channel %d replays recorded channel %d", channel, best.number
            )

    # ------------------------------------------------------------------ the recording

    def _records(self) -> Iterator[Record]:
        """This connection's records, from its opening to its end."""
        key = (self.plan.session, self.plan.number)
        entries = self.server.recording.entries(self.plan.start)
        for _, session, record in usable_records(entries, lambda p: None):
            if (session, record.c) == key:
                yield record
                if record.d == CLOSED:
                    return

    async def _pump(self) -> None:
        first_m = self.plan.first_m
        for record in self._records():
            if self.gone:
                raise _ClientGone
            if self.server.speed is not None:
                await self._until(record.m - first_m)
            if record.d == SENT:
                self._recorded_client(record.f)
            elif record.d == RECEIVED:
                await self._serve(record.f)

    async def _until(self, elapsed_ns: int) -> None:
        """Sleep until ``elapsed_ns`` of recorded time (scaled by speed) have passed."""
        assert self.server.speed is not None
        target = self.origin + self.shift + elapsed_ns / 1e9 / self.server.speed
        delay = target - self.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def _recorded_client(self, frame: str) -> None:
        message = _loads(frame)
        kind = message.get("type")
        if kind == "SETUP":
            self.recorded_setups += 1
        elif kind == "AUTH":
            self.recorded_auths += 1
        elif kind == "FEED_SETUP" and isinstance(message.get("channel"), int):
            self.recorded_feed_setups[message["channel"]] += 1

    async def _serve(self, frame: str) -> None:
        message = _loads(frame)
        kind, channel = message.get("type"), message.get("channel")
        if not isinstance(channel, int) or channel == 0 or not message:
            if kind in ("SETUP", "AUTH_STATE"):
                await self._wait(
                    lambda: (
                        self.setups >= self.recorded_setups and self.auths >= self.recorded_auths
                    ),
                    "the client's SETUP and AUTH",
                )
            await self._send(frame)  # channel 0, or a frame that is not a message: as it was
            return
        if kind == "FEED_CONFIG":
            self._note_fields(channel, message)
        live = await self._live_channel(channel)
        if live is None:
            self.stats.frames_left_out += 1
            return
        if kind == "FEED_CONFIG":
            await self._wait(
                lambda: self.feed_setups[live] >= self.recorded_feed_setups[channel],
                f"the client's FEED_SETUP on channel {live}",
            )
        elif kind == "FEED_DATA":
            await self._serve_data(frame, message, channel, live)
            return
        await self._send(frame if live == channel else _rewritten(message, live))

    def _note_fields(self, channel: int, message: dict[str, Any]) -> None:
        announced = message.get("eventFields")
        if isinstance(announced, dict):
            fields = self.fields.setdefault(channel, {})
            for event_type, names in announced.items():
                if isinstance(names, list):
                    fields[event_type] = tuple(str(n) for n in names)

    async def _live_channel(self, channel: int) -> int | None:
        """The client's channel for recorded ``channel``, waiting for its request."""
        if channel in self.bound:
            return self.bound[channel]
        if channel in self.left_out_channels:
            return None
        if await self._wait(
            lambda: channel in self.bound, f"a CHANNEL_REQUEST for recorded channel {channel}"
        ):
            return self.bound[channel]
        self.left_out_channels.add(channel)
        logger.warning(
            "! the client opened no channel for recorded channel %d within %g s; its frames "
            "are left out", channel, self.server.wait_for_client,
        )  # fmt: skip
        return None

    async def _serve_data(
        self, frame: str, message: dict[str, Any], channel: int, live: int
    ) -> None:
        fields = self.fields.get(channel, {})
        data = message.get("data")
        series = feed_series(data, fields)
        if series is None:  # events that cannot be told apart: sent as they are
            await self._send(frame if live == channel else _rewritten(message, live))
            return
        left_out = self.left_out_series.setdefault(channel, set())

        def missing() -> set[str]:
            return series - self.subscribed.get(live, set()) - left_out

        if missing() and not await self._wait(
            lambda: not missing(), f"the client's subscription of {', '.join(sorted(missing()))}"
        ):
            late = missing()
            left_out |= late
            logger.warning(
                "! the client did not subscribe %s within %g s; their recorded events are "
                "left out", ", ".join(sorted(late)), self.server.wait_for_client,
            )  # fmt: skip
        keep = series & self.subscribed.get(live, set())
        if not keep:
            self.stats.frames_left_out += 1
            return
        if keep == series and live == channel:
            await self._send(frame)
            return
        assert isinstance(data, list)
        restricted = restrict(data, fields, keep.__contains__)
        self.stats.frames_rewritten += 1
        await self._send(_rewritten({**message, "data": restricted}, live))

    async def _wait(self, ready: Callable[[], bool], what: str) -> bool:
        """Wait (bounded) for the client to make ``ready()`` true; the time shifts the
        schedule. Raises _ClientGone when the client leaves meanwhile."""
        if ready():
            return True
        began = self.loop.time()
        deadline = began + self.server.wait_for_client
        try:
            while not ready():
                if self.gone:
                    raise _ClientGone
                self.changed.clear()
                left = deadline - self.loop.time()
                if left <= 0:
                    logger.debug("waited %g s for %s", self.server.wait_for_client, what)
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), left)
            return True
        finally:
            self.shift += self.loop.time() - began

    async def _send(self, text: str) -> None:
        async with self.send_lock:
            await self.ws.send(text)
        self.stats.frames_sent += 1

    async def _send_unless_gone(self, text: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._send(text)

    async def _hold(self, reader: asyncio.Task[None]) -> None:
        """The recording is over: keep the connection with keepalives until the client goes."""
        with contextlib.suppress(ConnectionClosed):
            while not reader.done():
                await asyncio.wait([reader], timeout=self.keepalive_every)
                if not reader.done():
                    await self._send(_KEEPALIVE)


def _rewritten(message: dict[str, Any], channel: int) -> str:
    return orjson.dumps({**message, "channel": channel}).decode()


class _AfterTheEnd:
    """A connection after the recording ended: a handshake, channels, keepalives, no data."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.loop = asyncio.get_running_loop()
        self.protocol = ServerProtocol()

    async def run(self) -> None:
        self.protocol.start(self.loop.time())
        timer = asyncio.create_task(self._time(), name="replay-after-end-timer")
        try:
            async for frame in self.ws:
                self.protocol.receive_message(frame, self.loop.time())
                self._answer()
                await self._flush()
        except ConnectionClosed:
            pass
        finally:
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)

    def _answer(self) -> None:
        protocol = self.protocol
        for event in protocol.events_received():
            try:
                if isinstance(event, ClientSetup):
                    protocol.send_setup()
                    protocol.send_auth_state(False)
                elif isinstance(event, AuthRequested):
                    protocol.send_auth_state(True, "replay")
                elif isinstance(event, ChannelRequested):
                    protocol.open_channel(event.channel)
                elif isinstance(event, FeedSetupRequested):
                    protocol.configure_feed(
                        event.channel,
                        aggregation_period=event.accept_aggregation_period or 0.1,
                        data_format=event.accept_data_format or DataFormat.COMPACT,
                        event_fields=event.accept_event_fields,
                    )
            except UsageError as exc:  # a client out of step: it gets no answer to that
                logger.info("! after the end: %s", exc)

    async def _flush(self) -> None:
        for text in self.protocol.messages_to_send():
            await self.ws.send(text)

    async def _time(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while (deadline := self.protocol.next_deadline()) is not None:
                await asyncio.sleep(max(0.0, deadline - self.loop.time()))
                self.protocol.handle_timer(self.loop.time())
                events = self.protocol.events_received()
                await self._flush()
                if any(isinstance(event, PeerTimedOut) for event in events):
                    await self.ws.close(1001, "replay: the client went silent")
                    return
