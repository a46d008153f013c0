"""One simulator connection: drives a ``ServerProtocol`` over a websockets connection.

The driver is thin (STYLE.md pattern 5). Three tasks share one ``ServerProtocol`` and one
``FeedSession`` (the protocol is ``wire.SimServerProtocol``: FEED_DATA built from columns):

* the *reader* feeds every frame to ``protocol.receive_message`` and answers the protocol's
  events (SETUP, AUTH, CHANNEL_REQUEST, FEED_SETUP, FEED_SUBSCRIPTION...);
* the *timer* sleeps until ``protocol.next_deadline()`` and calls ``handle_timer`` (KEEPALIVE
  when idle, and the close of a client that stayed silent too long, §2.6);
* the *writer* is the only caller of ``ws.send``. It runs jobs one at a time, in order:
  flushes, snapshots (streamed in FEED_DATA chunks, yielding between them so other clients
  are never blocked), publish rounds (live updates) and injected faults. One writer per
  connection keeps a subscription's live updates behind its snapshot.

Faults that act on the writer: ``stalled`` holds every frame (keepalives too) with the socket
open; ``send_delay`` waits before each frame. No JSON here: every frame comes from
``ServerProtocol``, except the deliberately malformed ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from pipeline.dxlink import (
    AUTHORIZED,
    CONFIGURED,
    OPENED,
    AuthRequested,
    Candle,
    ChannelCancelled,
    ChannelRequested,
    ClientSetup,
    Contract,
    DataFormat,
    ErrorCode,
    ErrorReceived,
    FeedSetupRequested,
    InvalidMessageReceived,
    PeerTimedOut,
    ProtocolEvent,
    SubscriptionRequested,
    TokenBucket,
    UsageError,
    ViolationReceived,
)
from pipeline.simulator.market import Market
from pipeline.simulator.session import CandleSubscription, FeedSession
from pipeline.simulator.wire import SimServerProtocol

__all__ = ["ConnectionSettings", "Owner", "SimConnection", "SimulatorStats"]

logger = logging.getLogger("pipeline.simulator")

# §3.2: what a FEED_SETUP without preferences gets (tastytrade's web app uses 0.1 s).
DEFAULT_AGGREGATION_PERIOD = 0.1
_CONTRACTS = frozenset({Contract.AUTO.value, Contract.HISTORY.value})


@dataclass
class SimulatorStats:
    """Counters for tests and benchmarks; all since the simulator started."""

    messages_sent: int = 0
    messages_received: int = 0
    candles_sent: int = 0
    snapshots_served: int = 0
    bad_actions: int = 0
    closes_1009: int = 0
    auth_failures: int = 0
    keepalive_timeouts: int = 0
    invalid_messages: int = 0
    connections_dropped: int = 0
    fault_failures: int = 0
    violations: dict[str, int] = field(default_factory=dict)
    """Protocol violations received (well-formed messages not allowed then), per message type."""


@dataclass(frozen=True)
class ConnectionSettings:
    """What every connection of one simulator shares."""

    keepalive_timeout: float
    history_limit: int
    chunk_size: int
    user_id: str
    subscription_rate: float | None
    subscription_burst: float
    rate_items: bool
    require_auth: bool = True
    """False: AUTH_STATE AUTHORIZED right after SETUP, as a server that needs no token (§2.2)."""


class Owner(Protocol):
    """What a connection needs from its simulator."""

    stats: SimulatorStats
    market: Market
    send_delay: float

    def token_accepted(self, token: str) -> bool:
        """True when ``token`` is the current token."""

    def sim_now_ms(self) -> int:
        """The simulated time."""

    def clock_is_manual(self) -> bool:
        """True when only ``advance()`` moves time (every publish round is then due)."""

    def subscriptions_changed(self) -> None:
        """Wake whoever waits on subscriptions or connections."""


@dataclass(eq=False)
class _Job:
    """One unit of the writer's work; ``done`` resolves when it has been sent."""

    run: Callable[[], object] | None = None
    serve: tuple[int, CandleSubscription] | None = None
    publish_ms: int | None = None
    raw: str | None = None
    close: tuple[int, str] | None = None
    """Close the connection with (code, reason) once everything queued has been sent."""
    done: asyncio.Future[None] | None = None


class SimConnection:
    """The server side of one client connection. ``run()`` serves it until it closes."""

    def __init__(
        self, number: int, ws: ServerConnection, owner: Owner, settings: ConnectionSettings
    ) -> None:
        self.number = number
        """1 for the first connection the simulator accepted, then 2, 3..."""
        self.ws = ws
        self.owner = owner
        self.settings = settings
        self.log = logging.LoggerAdapter(logger, {"connection": number})
        self.protocol = SimServerProtocol(
            keepalive_timeout=settings.keepalive_timeout,
            accept_keepalive_timeout=settings.keepalive_timeout,
            logger=self.log,
        )
        self.session = FeedSession(
            owner.market, history_limit=settings.history_limit, chunk_size=settings.chunk_size
        )
        self.running = asyncio.Event()
        """Set while sending is allowed; cleared by the stall fault."""
        self.running.set()
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._publish: _Job | None = None
        self._aggregation: dict[int, float] = {}
        self._last_published: dict[int, float] = {}
        self._bucket: TokenBucket | None = None
        if settings.subscription_rate is not None:
            self._bucket = TokenBucket(
                rate=settings.subscription_rate,
                capacity=settings.subscription_burst,
                now=self._loop_time(),
            )

    def __repr__(self) -> str:
        return f"SimConnection({self.number}, {self.protocol.state.name})"

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    @property
    def authorized(self) -> bool:
        """True once AUTHORIZED (and until a token rotation)."""
        return self.protocol.state is AUTHORIZED

    @property
    def stalled(self) -> bool:
        """True while the stall fault holds every frame."""
        return not self.running.is_set()

    def served_subscriptions(self) -> int:
        """How many subscriptions have had their snapshot sent."""
        return self.session.served_count()

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until the client goes away or a fault ends it."""
        self.protocol.start(self._loop_time())
        writer = asyncio.create_task(self._write(), name=f"sim-writer-{self.number}")
        timer = asyncio.create_task(self._time(), name=f"sim-timer-{self.number}")
        try:
            async for frame in self.ws:
                self.owner.stats.messages_received += 1
                self.protocol.receive_message(frame, self._loop_time())
                self._handle(self.protocol.events_received())
                self.enqueue(_Job())
        except ConnectionClosed:
            pass
        finally:
            sent = self.ws.protocol.close_sent
            if sent is not None and sent.code == 1009:  # websockets enforced max_size (§8)
                self.owner.stats.closes_1009 += 1
            self.protocol.close()
            for task in (writer, timer):
                task.cancel()
            await asyncio.gather(writer, timer, return_exceptions=True)
            self._fail_pending()

    def enqueue(self, job: _Job) -> None:
        """Queue work for the writer (a job with nothing set is a plain flush)."""
        self._jobs.put_nowait(job)

    def request(
        self,
        *,
        run: Callable[[], object] | None = None,
        raw: str | None = None,
        close: tuple[int, str] | None = None,
    ) -> asyncio.Future[None]:
        """Queue a job and return a future that resolves once it has been sent."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.enqueue(_Job(run=run, raw=raw, close=close, done=done))
        return done

    def request_publish(self, now_ms: int) -> asyncio.Future[None]:
        """Queue a publish round up to ``now_ms``, merged with one still waiting."""
        pending = self._publish
        if pending is not None and pending.done is not None and not pending.done.done():
            pending.publish_ms = max(now_ms, pending.publish_ms or now_ms)
            return pending.done
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._publish = _Job(publish_ms=now_ms, done=done)
        self.enqueue(self._publish)
        return done

    async def abort(self) -> None:
        """Drop the connection without a close frame (the transport is aborted)."""
        self.ws.transport.abort()
        await asyncio.sleep(0)

    def _fail_pending(self) -> None:
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job.done is not None and not job.done.done():
                job.done.set_result(None)

    async def _time(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.protocol.next_deadline()
            if deadline is None:
                return
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            self.protocol.handle_timer(loop.time())
            events = self.protocol.events_received()
            self._handle(events)
            self.enqueue(_Job())
            if any(isinstance(event, PeerTimedOut) for event in events):
                return

    async def _write(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await self._do(job)
            except ConnectionClosed:
                return  # the reader sees the close too and ends the connection
            except UsageError as exc:
                # A fault aimed at a connection in the wrong state (e.g. closing): skip it.
                self.log.info("! job skipped: %s", exc)
            finally:
                if job.done is not None and not job.done.done():
                    job.done.set_result(None)

    async def _do(self, job: _Job) -> None:
        if job.run is not None:
            job.run()
        if job.raw is not None:
            await self._send(job.raw)
        if job.serve is not None:
            await self._serve(*job.serve)
        if job.publish_ms is not None:
            if job is self._publish:
                self._publish = None
            await self._publish_round(job.publish_ms)
        await self._flush()
        if job.close is not None:
            await self.ws.close(*job.close)

    async def _send(self, frame: str) -> None:
        await self.running.wait()
        delay = self.owner.send_delay
        if delay > 0:
            await asyncio.sleep(delay)
        await self.ws.send(frame)
        self.owner.stats.messages_sent += 1

    async def _flush(self) -> None:
        for frame in self.protocol.messages_to_send():
            await self._send(frame)

    # -- candles ------------------------------------------------------------------------------

    def _ensure_configured(self, channel: int) -> None:
        # A subscription before FEED_SETUP gets the server's defaults (§3.2).
        if self.protocol.channel_state(channel) is OPENED:
            self._configure(channel, None, None, None)

    def _send_candles(self, channel: int, candles: Sequence[Candle]) -> None:
        size = self.settings.chunk_size
        for start in range(0, len(candles), size):
            chunk = candles[start : start + size]
            self.protocol.send_candle_events(channel, chunk)
            self.owner.stats.candles_sent += len(chunk)

    async def _serve(self, channel: int, subscription: CandleSubscription) -> None:
        if self.session.subscription(channel, subscription.series.key) is not subscription:
            return  # removed or replaced before its turn
        if self.protocol.channel_state(channel) not in (OPENED, CONFIGURED):
            return
        self._ensure_configured(channel)
        for chunk in self.session.serve(subscription, self.owner.sim_now_ms()):
            self._send_candles(channel, chunk)
            await self._flush()  # yields: other clients go on between chunks
        self.owner.stats.snapshots_served += 1
        self.owner.subscriptions_changed()

    async def _publish_round(self, now_ms: int) -> None:
        if not self.authorized:
            return
        loop_now = self._loop_time()
        every_round = self.owner.clock_is_manual()
        for channel in list(self.session.subscriptions()):
            if self.protocol.channel_state(channel) is not CONFIGURED:
                continue
            period = self._aggregation.get(channel, DEFAULT_AGGREGATION_PERIOD)
            last = self._last_published.get(channel)
            if not every_round and last is not None and loop_now - last < period:
                continue  # §6.4: conflated per aggregation period
            self._last_published[channel] = loop_now
            updates = self.session.updates(channel, now_ms)
            if updates:
                self._send_candles(channel, updates)
                await self._flush()

    # -- protocol events ----------------------------------------------------------------------

    def _handle(self, events: list[ProtocolEvent]) -> None:
        for event in events:
            if isinstance(event, ClientSetup):
                # §2.6: acceptKeepaliveTimeout asks us to stay silent no longer than that. We
                # send every min(all timeouts)/2 anyway, so we can promise it, and do, as a
                # server honouring the hint would (assumed of dxFeed's server; unverified).
                accept = event.accept_keepalive_timeout
                if accept is not None and 0 < accept < self.protocol.keepalive_timeout:
                    self.protocol.keepalive_timeout = accept
                # §2.2: our SETUP, then the unsolicited AUTH_STATE: UNAUTHORIZED ("auth
                # required"), or AUTHORIZED from a server that needs no token.
                self.protocol.send_setup()
                if self.settings.require_auth:
                    self.protocol.send_auth_state(False)
                else:
                    self.protocol.send_auth_state(True, self.settings.user_id)
            elif isinstance(event, AuthRequested):
                self._authenticate(event.token)
            elif isinstance(event, ChannelRequested):
                self._open(event)
            elif isinstance(event, FeedSetupRequested):
                self._configure(
                    event.channel,
                    event.accept_aggregation_period,
                    event.accept_data_format,
                    event.accept_event_fields,
                )
            elif isinstance(event, SubscriptionRequested):
                self._subscribe(event)
            elif isinstance(event, ChannelCancelled):
                self.session.close_channel(event.channel)
                self.owner.subscriptions_changed()
            elif isinstance(event, InvalidMessageReceived):
                self.owner.stats.invalid_messages += 1
                self.protocol.send_error(ErrorCode.INVALID_MESSAGE, event.error.reason)
            elif isinstance(event, ViolationReceived):
                self._violation(event)
            elif isinstance(event, ErrorReceived):
                self.log.info("client error %s: %.200s", event.error.code, event.error.message)
            elif isinstance(event, PeerTimedOut):
                self.owner.stats.keepalive_timeouts += 1
                self.enqueue(_Job(close=(1000, "keepalive timeout")))

    def _violation(self, event: ViolationReceived) -> None:
        kind = str(event.message_type)
        self.log.info("! %s violation: %s", kind, event.error)
        violations = self.owner.stats.violations
        violations[kind] = violations.get(kind, 0) + 1
        if self.authorized:
            # Before AUTHORIZED the protocol itself answers ERROR UNAUTHORIZED (§2.7).
            self.protocol.send_error(ErrorCode.BAD_ACTION, str(event.error))

    def _authenticate(self, token: str) -> None:
        if self.owner.token_accepted(token):
            self.protocol.send_auth_state(True, self.settings.user_id)
            return
        # §2.2: a rejected token gets AUTH_STATE UNAUTHORIZED, then the socket closes.
        self.owner.stats.auth_failures += 1
        self.protocol.send_auth_state(False)
        self.log.info("! AUTH rejected: wrong or expired token")
        self.enqueue(_Job(close=(1008, "unauthorized")))

    def _open(self, event: ChannelRequested) -> None:
        channel = event.channel
        contract = event.parameters.get("contract")
        problem = None
        if channel % 2 == 0:
            problem = f"channel {channel} is even; use odd channel numbers (§2.4)"
        elif event.service != "FEED":
            problem = f"service {event.service!r} is not simulated; use FEED"
        elif contract not in _CONTRACTS:
            problem = f"contract {contract!r} is not simulated; use AUTO or HISTORY (§3.1)"
        if problem is not None:
            self.owner.stats.bad_actions += 1
            self.protocol.send_error(ErrorCode.BAD_ACTION, problem, channel)
            self.protocol.close_channel(channel)
            return
        self.protocol.open_channel(channel)
        self.session.open_channel(channel)

    def _configure(
        self,
        channel: int,
        aggregation_period: float | None,
        data_format: DataFormat | None,
        event_fields: dict[str, tuple[str, ...]] | None,
    ) -> None:
        period = DEFAULT_AGGREGATION_PERIOD if aggregation_period is None else aggregation_period
        period = min(max(period, 0.0), 60.0)
        self._aggregation[channel] = period
        self.protocol.configure_feed(
            channel,
            aggregation_period=period,
            data_format=data_format or DataFormat.COMPACT,
            event_fields=event_fields,
        )

    def _subscribe(self, event: SubscriptionRequested) -> None:
        channel = event.channel
        if self._bucket is not None:
            now = self._loop_time()
            items = len(event.add) + len(event.remove)
            cost = max(1, items) if self.settings.rate_items else 1
            if self._bucket.delay(cost, now) > 0:
                self.owner.stats.bad_actions += 1
                self.protocol.send_error(
                    ErrorCode.BAD_ACTION,
                    "subscription rate limit exceeded: slow down FEED_SUBSCRIPTION",
                    channel,
                )
                return
            self._bucket.take(cost, now)
        added, ignored = self.session.apply(
            channel,
            add=event.add,
            remove=event.remove,
            reset=event.reset,
            now_ms=self.owner.sim_now_ms(),
        )
        for note in ignored:
            self.log.info("subscription ignored: %s", note)
        for subscription in added:
            self.enqueue(_Job(serve=(channel, subscription)))
        self.owner.subscriptions_changed()
