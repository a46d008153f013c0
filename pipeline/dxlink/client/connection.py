"""One DXLink connection: the reader pump, the ticker and the handshake steps (STYLE.md 5, 9).

``run_connection`` opens the WebSocket and runs a :class:`ConnectionDriver` until something
fails; it always raises, and never reconnects: the supervisor (``supervisor.py``) decides.
Two child tasks run in a TaskGroup:

* the *reader* is the pump: ``ws.recv()`` → ``protocol.receive_message`` → handle events →
  ``flush()``. Candle batches go to a bounded queue and the reader awaits ``put()``: a slow
  consumer stops the reads, websockets' own ``max_queue`` then stops reading TCP (pattern 9);
  the time spent waiting is a metric. Nothing is dropped. While it waits the protocol is told
  reading is paused, so KEEPALIVEs keep going out and the server is not judged dead for a
  silence we caused (§2.6).
* the *ticker* owns the single timer: it sleeps until ``protocol.next_deadline()``, the
  subscription pacer's next slot or the handshake step's deadline (or until woken by a new
  subscription), then runs ``protocol.handle_timer`` (KEEPALIVE, or ``PeerTimedOut`` after the
  server's keepalive timeout of silence while reading, §2.6) and sends due subscription batches.

``flush()`` is the only caller of ``ws.send`` and holds a lock so frames leave in the order
the protocol queued them. There is no JSON or protocol logic here: that is ``protocol.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any, NoReturn

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from pipeline.dxlink.candle_block import CandleBlock
from pipeline.dxlink.client.metrics import (
    Backpressure,
    Connected,
    ConnectionState,
    SnapshotComplete,
)
from pipeline.dxlink.client.retry import HandshakeTimeout, PeerTimeout, describe
from pipeline.dxlink.client.state import (
    CANDLE_SETUP,
    CONTRACTS,
    ClientSettings,
    ClientState,
    EventBatch,
    QuoteToken,
    loop_time,
    token_text,
)
from pipeline.dxlink.client.tap import ConnectionTap
from pipeline.dxlink.client.transport import loggable_url, open_websocket
from pipeline.dxlink.errors import BadAction, ServerError, Unauthorized, UnsupportedProtocol
from pipeline.dxlink.events import SNAPSHOT_BEGIN, SNAPSHOT_END, SNAPSHOT_SNIP
from pipeline.dxlink.message_models import Contract, DataFormat
from pipeline.dxlink.protocol import ClientProtocol
from pipeline.dxlink.protocol_core import AWAIT_AUTH
from pipeline.dxlink.protocol_events import (
    Authorized,
    AuthRejected,
    CandlesReceived,
    ChannelClosed,
    ChannelOpened,
    ErrorReceived,
    EventsReceived,
    FeedConfigured,
    InvalidMessageReceived,
    PeerTimedOut,
    ProtocolEvent,
    ServerSetup,
    ViolationReceived,
)
from pipeline.dxlink.subscriptions import SubscriptionBatch, SubscriptionState

__all__ = ["ConnectionDriver", "run_connection"]

logger = logging.getLogger("pipeline.dxlink.client")  # one logger for the whole client

_SNAPSHOT_FLAGS = SNAPSHOT_BEGIN | SNAPSHOT_END | SNAPSHOT_SNIP


async def run_connection(
    state: ClientState, settings: ClientSettings, quote: QuoteToken, *, attempt: int
) -> NoReturn:
    """Open the WebSocket for ``quote`` and run one connection until it fails; always raises.

    Args:
        state: the client's shared state; ``state.connection`` is this driver meanwhile.
        settings: the client's settings.
        quote: the token and the URL to connect to.
        attempt: consecutive failed attempts before this one (for the Connected event).
    """
    token = token_text(quote)
    async with open_websocket(
        quote.dxlink_url,
        open_timeout=settings.connect_timeout,
        close_timeout=settings.close_timeout,
        max_size=settings.max_message_size,
    ) as ws:
        protocol = ClientProtocol(
            token=token,
            keepalive_timeout=settings.keepalive_timeout,
            # §2.6: ask the server to be silent no longer than we are willing to wait.
            accept_keepalive_timeout=settings.dead_peer_timeout,
            dead_peer_timeout=settings.dead_peer_timeout,
            max_dead_peer_timeout=settings.max_dead_peer_timeout,
        )
        url = loggable_url(quote.dxlink_url)
        tap = None
        if state.frame_tap is not None:
            tap = state.frame_tap.connection(url, attempt=attempt, secrets=(token,))
        driver = ConnectionDriver(state, settings, ws, protocol, url, attempt=attempt, tap=tap)
        driver.token = token
        state.connection = driver
        try:
            await driver.run()
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            if tap is not None:
                tap.closed("closed by the client" if cancelled else describe(exc))
            if cancelled:
                # Our own clean stop (aclose): a normal closure, 1000, not websockets' default
                # 1011 for leaving the connection through an exception.
                await ws.close()
            elif isinstance(exc, PeerTimeout | HandshakeTimeout):
                # The server is not answering: waiting close_timeout for its close frame would
                # only delay the reconnect. Drop the socket at once.
                ws.transport.abort()
            raise
    raise AssertionError("unreachable: ConnectionDriver.run() always raises")


class ConnectionDriver:
    """Drives one ``ClientProtocol`` over one WebSocket; a new one for every attempt."""

    def __init__(
        self,
        state: ClientState,
        settings: ClientSettings,
        ws: ClientConnection,
        protocol: ClientProtocol,
        url: str,
        *,
        attempt: int,
        tap: ConnectionTap | None = None,
    ) -> None:
        """Wrap an open WebSocket and a fresh protocol; nothing is sent before ``run()``.

        Args:
            state: the client's shared state.
            settings: the client's settings (handshake timeout, aggregation period).
            ws: the open WebSocket; ``flush()`` is the only code that sends on it.
            protocol: a new ``ClientProtocol`` for this connection.
            url: the server's URL without credentials, for logs and ``Connected``.
            attempt: consecutive failed attempts before this one.
            tap: sees every frame received and sent, and the end (``tap.py``).
        """
        self.state = state
        self.settings = settings
        self.ws = ws
        self.protocol = protocol
        self.url = url
        """The server's URL without credentials (safe to log)."""
        self.attempt = attempt
        self.channels: dict[str, int] = {}
        """Channel number by role (``"candles"``, ``"events"``)."""
        self.roles: dict[int, str] = {}
        """Role by channel number."""
        self.configured: set[str] = set()
        """Roles whose channel got FEED_CONFIG."""
        self.ready_at: float | None = None
        """When every channel was configured and resubscribing began; None before."""
        self.token = ""
        """This connection's token, only to mask it in what the server's frames make us log."""
        self.waiting_for = "SETUP"
        self.step_deadline = loop_time() + settings.handshake_timeout
        self._send_lock = asyncio.Lock()
        self._tap = tap

    async def run(self) -> NoReturn:
        """Start the protocol, then run the reader and the ticker until one fails."""
        protocol = self.protocol
        protocol.start(loop_time())
        await self.flush()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(), name="dxlink-reader")
                group.create_task(self._tick(), name="dxlink-ticker")
        except BaseExceptionGroup as failures:
            raise failures.exceptions[0] from None
        finally:
            protocol.close()
        raise AssertionError("unreachable: the reader and the ticker only end by raising")

    def accepts(self, role: str) -> bool:
        """Whether new items for ``role`` go to the pacer now (else its setup sends them)."""
        return self.ready_at is not None and role in self.configured

    async def _read(self) -> None:
        """The pump: recv → protocol → events → flush. Raises when the connection ends."""
        ws, protocol, tap = self.ws, self.protocol, self._tap
        metrics = self.state.connection_metrics
        while True:
            frame = await ws.recv(decode=False)  # orjson reads bytes; skip a UTF-8 decode
            if tap is not None:
                tap.received(frame)
            now = loop_time()
            protocol.receive_message(frame, now)
            if self.ready_at is not None:
                metrics.heard(now)  # the stall clock: what the server said after a handshake
            elif protocol.state is AWAIT_AUTH and not self.token:
                # §2.2: the server asks for a token and we have none to send: say so now,
                # rather than wait out the handshake step as if the server were silent.
                raise Unauthorized("the server requires a token (AUTH_STATE UNAUTHORIZED)")
            await self._handle(protocol.events_received())
            await self.flush()

    async def _tick(self) -> None:
        """The one timer: keepalive, dead peer, handshake step limit, subscription pacing."""
        protocol, pacer, wakeup = self.protocol, self.state.pacer, self.state.wakeup
        while True:
            now = loop_time()
            deadlines = [protocol.next_deadline()]
            if self.ready_at is None:
                deadlines.append(self.step_deadline)
            else:
                deadlines.append(pacer.next_ready(now, self.configured))
            due = min((d for d in deadlines if d is not None and d < math.inf), default=None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(due):
                    await wakeup.wait()
            wakeup.clear()
            now = loop_time()
            if self.ready_at is None and now >= self.step_deadline:
                raise HandshakeTimeout(
                    f"no {self.waiting_for} within {self.settings.handshake_timeout:g} s"
                )
            # Keepalives go out even while the reader is paused; the protocol then holds
            # back its dead-peer judgement (pause_reading, §2.6).
            protocol.handle_timer(now)
            await self._handle(protocol.events_received())  # may raise PeerTimeout
            if self.ready_at is not None:
                self._send_batches(pacer.ready(now, self.configured))
            await self.flush()

    async def flush(self) -> None:
        """Send what the protocol queued, in order; the only caller of ``ws.send``.

        Raises:
            PeerTimeout: a send waited ``dead_peer_timeout`` for the socket to drain: the
                server stopped reading (a half-open connection), so the ticker, waiting here
                too, could never judge it dead.
        """
        async with self._send_lock:
            texts = self.protocol.messages_to_send()
            if not texts:
                return
            limit = self.protocol.dead_peer_timeout
            try:
                async with asyncio.timeout(limit):
                    for text in texts:
                        await self.ws.send(text)
                        if self._tap is not None:
                            self._tap.sent(text)
            except TimeoutError:
                raise PeerTimeout(
                    f"could not send for {limit:.1f} s: the server stopped reading"
                ) from None

    # ------------------------------------------------------------------ events

    def _step(self, waiting_for: str) -> None:
        self.waiting_for = waiting_for
        self.step_deadline = loop_time() + self.settings.handshake_timeout

    async def _handle(self, events: list[ProtocolEvent]) -> None:
        for event in events:
            if isinstance(event, CandlesReceived):
                await self._on_candles(event)
            elif isinstance(event, EventsReceived):
                self._count_data(event.channel, len(event.events))
                batch = EventBatch(event.event_type, event.events)
                await self._deliver(self.state.event_queue, batch, "events")
            elif isinstance(event, ServerSetup):
                self.state.connection_metrics.dead_peer_timeout = self.protocol.dead_peer_timeout
                self._step("AUTH_STATE")
            elif isinstance(event, Authorized):
                for role, contract in CONTRACTS.items():
                    self._open(role, contract)
                self._step("CHANNEL_OPENED")
            elif isinstance(event, ChannelOpened):
                fields = CANDLE_SETUP if self.roles[event.channel] == "candles" else {}
                self.protocol.setup_feed(
                    event.channel,
                    aggregation_period=self.settings.aggregation_period,
                    data_format=DataFormat.COMPACT,
                    event_fields=fields,
                )
                self._step("FEED_CONFIG")
            elif isinstance(event, FeedConfigured):
                await self._on_configured(self.roles[event.channel])
            elif isinstance(event, ErrorReceived):
                self._on_error(event.error)
            elif isinstance(event, ChannelClosed):
                # The server closed a channel on its own: open a new one for that role; its
                # subscriptions start over there, resumed from the store (_on_configured).
                role = self.roles[event.channel]
                logger.warning("! server closed the %s channel %d", role, event.channel)
                self.configured.discard(role)
                self._open(role, CONTRACTS[role])
            elif isinstance(event, AuthRejected):
                raise Unauthorized("the server rejected the token (AUTH_STATE UNAUTHORIZED)")
            elif isinstance(event, PeerTimedOut):
                # The protocol queued ERROR TIMEOUT for the server: a courtesy, sent if the
                # socket takes it at once (a dead peer's may not), never waited for.
                with contextlib.suppress(TimeoutError, ConnectionClosed, PeerTimeout):
                    async with asyncio.timeout(0):
                        await self.flush()
                raise PeerTimeout(f"nothing received for {event.silence_seconds:.1f} s")
            elif isinstance(event, InvalidMessageReceived):
                metrics = self.state.connection_metrics
                metrics.malformed_messages += 1
                self._noisy("malformed", event.error, metrics.malformed_messages)
            elif isinstance(event, ViolationReceived):
                metrics = self.state.connection_metrics
                metrics.protocol_violations += 1
                self._noisy("illegal", event.error, metrics.protocol_violations)

    def _noisy(self, kind: str, error: Exception, total: int) -> None:
        """A WARNING for a bad frame the server sent (counted, skipped), at most one a minute
        per kind: its reason, never the frame itself, shortened, our token masked."""
        reason = str(getattr(error, "reason", error))[:200]
        if self.token:
            reason = reason.replace(self.token, "<token>")
        self.state.log_throttle.warning(
            kind,
            loop_time(),
            "! skipped a %s frame from the server (%d so far): %s",
            "malformed" if kind == "malformed" else "protocol-breaking",
            total,
            reason,
        )

    def _open(self, role: str, contract: Contract) -> None:
        channel = self.protocol.open_channel(contract)
        self.channels[role] = channel
        self.roles[channel] = role

    async def _on_configured(self, role: str) -> None:
        if role in self.configured:
            return  # a later FEED_CONFIG (e.g. lazy eventFields, §3.2): nothing to do
        state = self.state
        self.configured.add(role)
        if self.ready_at is not None:  # a channel the server had closed is back
            # Resubscribe as after a reconnect: each series from where the store stands, not
            # from its original fromTime (that would download the whole history again).
            candles = state.registry.candles
            # Without the store's word, each series resumes where this connection last asked.
            resume: dict[str, int | None] = {k: s.sent_from for k, s in candles.items()}
            if state.resume_points is not None and role == "candles" and candles:
                async with self._reading_paused():
                    resume.update(await self._ask_resume_points(list(candles)))
            state.queue_all(role, state.registry.resume_from(resume))
            state.wakeup.set()
            return
        if self.configured != set(CONTRACTS):
            return
        keys = list(state.registry.candles)
        points: Mapping[str, int | None] = {}
        if state.resume_points is not None and state.connections and keys:
            self.waiting_for, self.step_deadline = "resume points", math.inf  # own limit
            async with self._reading_paused():
                points = await self._ask_resume_points(keys)
        from_times = state.registry.resume_from(points)
        for role_ in CONTRACTS:
            state.queue_all(role_, from_times)
        self.ready_at = loop_time()
        metrics = state.connection_metrics
        metrics.heard_at = self.ready_at  # a stall that ended the last connection stays
        metrics.state = ConnectionState.CONNECTED
        metrics.connect_count += 1
        metrics.connected_since = self.ready_at
        metrics.last_connect_time = state.wall_clock()
        state.connections += 1
        logger.info("= connected to %s; resubscribing %d items", self.url, len(state.pacer))
        state.notify(Connected(self.url, self.attempt))
        state.wakeup.set()

    async def _ask_resume_points(self, keys: list[str]) -> Mapping[str, int | None]:
        """Call the resume-point callback (sync or async) with a time limit; {} on failure."""
        callback = self.state.resume_points
        assert callback is not None
        try:
            async with asyncio.timeout(self.settings.handshake_timeout):
                result = callback(keys)
                if inspect.isawaitable(result):
                    result = await result
            return result
        except Exception as exc:  # the store is down: resume from the requested fromTime
            logger.warning("! resume_points failed (%s); using each series' fromTime", exc)
            return {}

    def _send_batches(self, batches: list[SubscriptionBatch]) -> None:
        for batch in batches:
            self.protocol.subscribe(self.channels[batch.role], add=batch.add, remove=batch.remove)
            metrics = self.state.channel_metrics[batch.role]
            metrics.subscription_messages += 1
            metrics.subscription_items += len(batch.add) + len(batch.remove)
            for item in batch.add:
                if item.from_time is not None:
                    self.state.registry.sent(item.symbol, item.from_time)

    def _on_error(self, error: ServerError) -> None:
        role = self.roles.get(error.channel)
        if role is None or isinstance(error, Unauthorized | UnsupportedProtocol):
            raise error  # connection level (§2.7), or auth/version: the supervisor decides
        state = self.state
        state.channel_metrics[role].error_count += 1
        if not isinstance(error, BadAction):
            return  # a channel-level error affects only that channel; logged by the protocol
        # BAD_ACTION: subscriptions came too fast. Slow down; queue again, from the
        # registry's current state, what may have been rejected.
        affected = state.pacer.bad_action(role, loop_time())
        state.channel_metrics[role].resent_batches += len(affected)
        for batch in affected:
            for item in (*batch.add, *batch.remove):
                wanted = state.wanted(item)
                (state.pacer.add if wanted else state.pacer.remove)(role, [wanted or item])
        state.wakeup.set()

    async def _on_candles(self, event: CandlesReceived) -> None:
        candles = event.candles
        self._count_data(event.channel, len(candles))
        observe = self.state.registry.observe
        if isinstance(candles, CandleBlock):  # look at the flagged events only
            flags = candles.flags
            marks = [
                (candles.symbols[at], int(flags[at]))
                for at in np.flatnonzero(flags & _SNAPSHOT_FLAGS).tolist()
            ]
        else:
            marks = [(c.symbol, c.flags) for c in candles if c.flags & _SNAPSHOT_FLAGS]
        for symbol, flags_of_event in marks:
            progress = observe(symbol, flags_of_event)
            if progress is not None and progress.state is SubscriptionState.LIVE:
                self.state.notify(SnapshotComplete(progress.key, progress.snipped))
        await self._deliver(self.state.candle_queue, candles, "candles")

    def _count_data(self, channel: int, events: int) -> None:
        metrics = self.state.channel_metrics[self.roles[channel]]
        metrics.message_count += 1
        metrics.event_count += events
        metrics.last_message_time = self.state.wall_clock()

    async def _deliver(self, queue: asyncio.Queue[Any], item: Any, role: str) -> None:
        """Hand a batch to the consumer; wait (back-pressure) while its queue is full."""
        delivery = self.state.delivery
        if queue.full():
            await self.flush()  # replies the protocol queued must not wait on a consumer
            started = loop_time()
            delivery.blocked_count += 1
            self.state.notify(Backpressure(role))
            try:
                async with self._reading_paused():
                    await queue.put(item)
            finally:
                delivery.blocked_seconds += loop_time() - started
        else:
            queue.put_nowait(item)
        delivery.batches += 1
        metrics = self.state.channel_metrics[role]
        metrics.queue_high_water_mark = max(metrics.queue_high_water_mark, queue.qsize())

    @contextlib.asynccontextmanager
    async def _reading_paused(self) -> AsyncIterator[None]:
        """The reader stops reading for a while: tell the protocol, so only its dead-peer
        timer pauses while keepalives keep going out (§2.6), and re-arm the ticker."""
        metrics = self.state.connection_metrics
        paused_at = loop_time()
        self.protocol.pause_reading(paused_at)
        metrics.deaf_since = paused_at
        self.state.wakeup.set()
        try:
            yield
        finally:
            resumed_at = loop_time()
            self.protocol.resume_reading(resumed_at)
            if metrics.heard_at is not None:  # a pause is our silence, not the server's
                metrics.heard_at = min(resumed_at, metrics.heard_at + resumed_at - paused_at)
            metrics.deaf_since = None
            self.state.wakeup.set()
