"""DXLinkManager: the reconnecting DXLink client (DESIGN.md, STYLE.md patterns 5, 6 and 9).

One supervisor task owns the connection and is the only code that reconnects::

    token_source.get() → connect → SETUP → AUTH_STATE UNAUTHORIZED → AUTH → AUTHORIZED
    → CHANNEL_REQUEST candles (HISTORY) + events (AUTO) → FEED_SETUP (COMPACT) → FEED_CONFIG
    → resubscribe everything in the registry (paced) → read until something fails
    → classify(failure): RETRY | REFRESH_TOKEN | FATAL → backoff → again

Per connection two child tasks run in a TaskGroup the supervisor owns; they never reconnect,
they raise, and the supervisor decides (``backoff.classify``):

* the *reader* is the pump: ``ws.recv()`` → ``protocol.receive_message`` → handle events →
  ``_flush()``. Candle batches go to a bounded queue and the reader awaits ``put()``: a slow
  consumer stops the reads, websockets' own ``max_queue`` then stops reading TCP (pattern 9);
  the time spent waiting is a metric. Nothing is dropped.
* the *ticker* owns the single timer: it sleeps until ``protocol.next_deadline()``, the
  subscription pacer's next slot or the handshake step's deadline (or until woken by a new
  subscription), then runs ``protocol.handle_timer`` (KEEPALIVE, or ``PeerTimedOut`` after the
  server's keepalive timeout of silence, §2.6) and sends due subscription batches.

``_flush()`` is the only caller of ``ws.send`` and holds a lock so frames leave in the order
the protocol queued them. There is no JSON or protocol logic here: that is ``protocol.py``.

websockets settings (storage-and-libs.md §4): ``max_size`` raised to 16 MiB (a history
snapshot can exceed the 1 MiB default, which would close with 1009), ``close_timeout`` short
(2 s: a dead server must not hold a reconnect for 10 s), library auto-reconnect not used (our
supervisor is the only retry loop), and **WebSocket pings off** (``ping_interval=None``): the
protocol's KEEPALIVE plus the dead-peer timer are the liveness check, as in tastytrade's own
clients; pings would add a second, inconsistent timeout, and while a slow consumer holds the
reader, unread pongs would make websockets close a healthy connection with 1011.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect

from pipeline.dxlink.backoff import (
    DEFAULT_INITIAL_DELAY,
    DEFAULT_MAX_DELAY,
    Action,
    Backoff,
    HandshakeTimeout,
    PeerTimeout,
    backoff,
    classify,
    describe,
    disconnect_reason,
    fatal_error,
)
from pipeline.dxlink.errors import (
    BadAction,
    ServerError,
    Unauthorized,
    UnsupportedProtocol,
    UsageError,
)
from pipeline.dxlink.events import (
    CANDLE_FIELDS,
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    SNAPSHOT_SNIP,
    Candle,
)
from pipeline.dxlink.messages import Contract, DataFormat, JsonObject, SubscriptionItem
from pipeline.dxlink.metrics import (
    Backpressure,
    ChannelMetrics,
    Connected,
    ConnectionMetrics,
    ConnectionState,
    DeliveryMetrics,
    Disconnected,
    DisconnectReason,
    LifecycleEvent,
    SnapshotComplete,
    Stopped,
    snapshot,
)
from pipeline.dxlink.protocol import (
    Authorized,
    AuthRejected,
    CandlesReceived,
    ChannelClosed,
    ChannelOpened,
    ClientProtocol,
    ErrorReceived,
    EventsReceived,
    FeedConfigured,
    InvalidMessageReceived,
    PeerTimedOut,
    ProtocolEvent,
    ServerSetup,
    ViolationReceived,
)
from pipeline.dxlink.subscriptions import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_ITEMS,
    DEFAULT_SUBSCRIBE_BURST,
    DEFAULT_SUBSCRIBE_RATE,
    CandleSubscription,
    SubscriptionBatch,
    SubscriptionPacer,
    SubscriptionRegistry,
    SubscriptionState,
    candle_symbol,
    symbol_list,
    validate_from_time,
)
from pipeline.dxlink.symbols import CandleInterval, CandleSymbol

__all__ = [
    "Backpressure",
    "CandleInterval",
    "ChannelMetrics",
    "Connected",
    "DXLinkManager",
    "Disconnected",
    "EventBatch",
    "LifecycleEvent",
    "SnapshotComplete",
    "Stopped",
    "TokenSource",
]

logger = logging.getLogger(__name__)


class _HideSecrets(logging.Filter):
    """websockets logs every frame and header at DEBUG: hide AUTH frames (the token) and
    credential headers (user info in the URL becomes ``Authorization: Basic``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
            record.args = (args[0], "<hidden>")
        elif '"AUTH"' in record.getMessage():
            record.msg, record.args = "%s AUTH frame (token hidden)", (str(record.msg)[:1],)
        return True


_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
# The logger handed to websockets; its filter keeps secrets out of its debug logs.
_ws_logger = logging.getLogger(f"{__name__}.websocket")
_ws_logger.addFilter(_HideSecrets())

# 16 MiB: a candle history snapshot can exceed websockets' 1 MiB default (storage-and-libs §4).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 2**20
_SNAPSHOT_FLAGS = SNAPSHOT_BEGIN | SNAPSHOT_END | SNAPSHOT_SNIP
# Channel roles and their contracts (§3.1: candles on a dedicated HISTORY channel, #353).
_CONTRACTS = {"candles": Contract.HISTORY, "events": Contract.AUTO}
_CANDLE_SETUP = {"Candle": CANDLE_FIELDS}


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


class _QuoteToken(Protocol):
    @property
    def token(self) -> str | _Secret: ...
    @property
    def dxlink_url(self) -> str: ...


class TokenSource(Protocol):
    """Hands out DXLink tokens (``pipeline.tastytrade.TokenSource`` has this shape)."""

    async def get(self, force_refresh: bool = False) -> _QuoteToken:
        """Return a token and the URL to use; ``force_refresh`` after a rejection."""
        ...


class EventBatch(NamedTuple):
    """Decoded events of one non-Candle type (dicts with the wire field names)."""

    event_type: str
    events: list[JsonObject]


_END: Any = object()  # end-of-stream marker in the delivery queues


@dataclass(slots=True)
class _Connection:
    """Per-connection state; a new one for every attempt."""

    ws: ClientConnection
    protocol: ClientProtocol
    url: str
    channels: dict[str, int] = field(default_factory=dict)  # role -> channel number
    roles: dict[int, str] = field(default_factory=dict)  # channel number -> role
    configured: set[str] = field(default_factory=set)
    ready_at: float | None = None
    waiting_for: str = "SETUP"
    step_deadline: float = 0.0


class DXLinkManager:
    """A reconnecting DXLink client delivering candle batches through a bounded queue.

    Use ``async with DXLinkManager(source) as manager:`` (or ``start()``/``aclose()``),
    subscribe at any time (also before the first connection), and consume
    ``async for batch in manager.candles()``. See the module docstring for the design.
    """

    def __init__(
        self,
        token_source: TokenSource,
        *,
        keepalive_timeout: float = 60.0,
        dead_peer_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        close_timeout: float = 2.0,
        backoff_initial: float = DEFAULT_INITIAL_DELAY,
        backoff_max: float = DEFAULT_MAX_DELAY,
        healthy_after: float = 30.0,
        max_attempts: int | None = None,
        batch_max_items: int = DEFAULT_MAX_BATCH_ITEMS,
        batch_max_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        subscribe_rate: float = DEFAULT_SUBSCRIBE_RATE,
        subscribe_burst: float = DEFAULT_SUBSCRIBE_BURST,
        queue_size: int = 256,
        aggregation_period: float = 0.1,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        resume_points: ResumePoints | None = None,
        on_event: Callable[[LifecycleEvent], None] | None = None,
        reconnect_delays: Callable[[], Iterator[float]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure the manager; nothing connects before ``start()``.

        Args:
            token_source: ``await token_source.get(force_refresh=...)`` gives ``.token`` (str
                or a secret with ``get_secret_value()``) and ``.dxlink_url``.
            keepalive_timeout: seconds we promise never to stay silent (our SETUP, §2.6).
            dead_peer_timeout: seconds of receiving nothing before the server counts as dead;
                the effective value is max(server keepaliveTimeout, this) (§2.6).
            connect_timeout: limit for fetching the token and opening the WebSocket.
            handshake_timeout: limit for each handshake reply (SETUP, AUTH_STATE,
                CHANNEL_OPENED, FEED_CONFIG; dxFeed's ``actionTimeout`` is 10 s).
            close_timeout: limit for the WebSocket closing handshake.
            backoff_initial: upper bound of the first reconnect delay (full jitter).
            backoff_max: cap of the reconnect delay.
            healthy_after: seconds a connection must last before the backoff starts over.
            max_attempts: consecutive failed attempts before giving up with
                ``ConnectionError``; None (or 0) retries forever.
            batch_max_items: most items in one FEED_SUBSCRIPTION.
            batch_max_bytes: largest encoded FEED_SUBSCRIPTION (§8: 1009 above the limit).
            subscribe_rate: FEED_SUBSCRIPTION messages per second (BAD_ACTION above it).
            subscribe_burst: messages that may go back to back.
            queue_size: candle (and event) batches buffered for the consumer.
            aggregation_period: acceptAggregationPeriod in seconds (§3.2).
            max_message_size: largest server message accepted, in bytes.
            resume_points: called once per reconnect with every candle series key; returns
                (or awaits to) ``{key: fromTime ms}``. Series without a point resume from
                the fromTime they were subscribed with.
            on_event: called with each :data:`LifecycleEvent` (must not block).
            reconnect_delays: factory of delay iterators replacing the default backoff.
            sleep: awaited with each reconnect delay (tests record the delays).
            wall_clock: Unix seconds, for fromTime validation and ``last_message_time``.

        Raises:
            ValueError: for settings that cannot work, naming the setting.
        """
        for name, value in (
            ("keepalive_timeout", keepalive_timeout),
            ("dead_peer_timeout", dead_peer_timeout),
            ("connect_timeout", connect_timeout),
            ("handshake_timeout", handshake_timeout),
            ("close_timeout", close_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1 batch, got {queue_size!r}")
        if max_attempts is not None and max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0 (0 or None: forever), got {max_attempts}")
        self._token_source = token_source
        self._keepalive_timeout = keepalive_timeout
        self._dead_peer_timeout = dead_peer_timeout
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._close_timeout = close_timeout
        self._max_attempts = max_attempts or None
        self._aggregation_period = aggregation_period
        self._max_message_size = max_message_size
        self._resume_points = resume_points
        self._on_event = on_event
        self._sleep = sleep
        self._wall_clock = wall_clock
        if reconnect_delays is None:
            reconnect_delays = functools.partial(
                backoff, initial=backoff_initial, max_delay=backoff_max
            )
            next(reconnect_delays())  # validate the settings now, not at the first reconnect
        self._backoff = Backoff(reconnect_delays, healthy_after=healthy_after)
        self._registry = SubscriptionRegistry()
        self._pacer = SubscriptionPacer(
            now=0.0,
            max_items=batch_max_items,
            max_bytes=batch_max_bytes,
            rate=subscribe_rate,
            burst=subscribe_burst,
        )
        self._candle_queue: asyncio.Queue[list[Candle]] = asyncio.Queue(queue_size)
        self._event_queue: asyncio.Queue[EventBatch] = asyncio.Queue(queue_size)
        self._connection_metrics = ConnectionMetrics()
        self._channel_metrics = {role: ChannelMetrics() for role in _CONTRACTS}
        self._delivery = DeliveryMetrics()
        self._conn: _Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._failure: BaseException | None = None
        self._finished = False
        self._connections = 0

    # ------------------------------------------------------------------ read-only views

    @property
    def active_subscriptions(self) -> Mapping[str, Any]:
        """``{"regular": {(event_type, symbol)}, "candles": {series key: metadata}}`` (live)."""
        return {"regular": self._registry.regular, "candles": self._registry.candles}

    @property
    def subscription_metadata(self) -> Mapping[str, CandleSubscription]:
        """Candle subscriptions by series key: fromTime, state, added_at (read-only, live)."""
        return self._registry.candles

    @property
    def state(self) -> ConnectionState:
        """Where the supervisor is in the connection lifecycle."""
        return self._connection_metrics.state

    def get_metrics(self) -> dict[str, Any]:
        """Return every counter as plain dicts (a copy): connection, channels, delivery."""
        loop_now = asyncio.get_running_loop().time() if self._task else 0.0
        subscriptions = self._registry.counts()
        subscriptions["pending_items"] = len(self._pacer)
        subscriptions["subscribe_rate"] = self._pacer.bucket.rate
        metrics = snapshot(
            self._connection_metrics,
            self._channel_metrics,
            self._delivery,
            subscriptions,
            loop_now,
        )
        depths = {"candles": self._candle_queue.qsize(), "events": self._event_queue.qsize()}
        for role, channel in metrics["channels"].items():
            channel["queue_depth"] = depths.get(role)
        return metrics

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the supervisor (idempotent); returns at once, connecting in the background."""
        if self._finished:
            raise UsageError("this DXLinkManager is closed; create a new one")
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name="dxlink-supervisor")

    async def aclose(self) -> None:
        """Stop: close the connection and end ``candles()`` once it is drained. Idempotent."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._finish(None)

    async def __aenter__(self) -> DXLinkManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _finish(self, error: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._failure = error
        self._connection_metrics.state = ConnectionState.CLOSED
        for queue in (self._candle_queue, self._event_queue):
            with contextlib.suppress(asyncio.QueueFull):  # full: the reader checks _finished
                queue.put_nowait(_END)
        self._notify(Stopped(error))

    async def candles(self) -> AsyncIterator[list[Candle]]:
        """Yield candle batches in arrival order until the manager stops.

        Ends after ``aclose()`` once everything queued was yielded; raises the fatal error
        (e.g. ``ConnectionError`` after ``max_attempts``) if the manager stopped on one.
        """
        async for batch in self._drain(self._candle_queue):
            yield batch

    async def events(self) -> AsyncIterator[EventBatch]:
        """Yield batches of non-Candle events (from ``subscribe()``), like ``candles()``.

        Consume this if you subscribe to regular events: its queue is bounded too.
        """
        async for batch in self._drain(self._event_queue):
            yield batch

    async def _drain(self, queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
        while not (self._finished and queue.empty()):
            item = await queue.get()
            if item is _END:
                break
            yield item
        if self._failure is not None:
            raise self._failure

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(self, symbols: Iterable[str], event_type: str = "Quote") -> None:
        """Subscribe regular events, e.g. ``subscribe(["AAPL"], "Quote")`` (idempotent)."""
        added = self._registry.add_regular(event_type, symbol_list(symbols))
        self._enqueue("events", [SubscriptionItem(t, s) for t, s in added], adding=True)

    async def unsubscribe(self, symbols: Iterable[str], event_type: str = "Quote") -> None:
        """Remove regular subscriptions (idempotent)."""
        removed = self._registry.remove_regular(event_type, symbol_list(symbols))
        self._enqueue("events", [SubscriptionItem(t, s) for t, s in removed], adding=False)

    async def subscribe_to_candles(
        self,
        *,
        symbol: str | CandleSymbol,
        interval: str | CandleInterval | None = None,
        from_time: int | datetime,
    ) -> str:
        """Subscribe one candle series from ``from_time``; return its series key.

        Args:
            symbol: a streamer symbol with ``interval`` (``"AAPL"``, ``"5m"``), or a whole
                candle symbol (``"AAPL{=5m,tho=true}"`` or a ``CandleSymbol``) without it.
            interval: any dxFeed period (``CandleInterval`` lists common ones).
            from_time: ms since the epoch (UTC) or an aware datetime; must be in the past.

        Raises:
            ValueError: unknown interval, malformed symbol, or a from_time in the future or
                in seconds; the message says what would be right.
        """
        (key,) = await self.subscribe_to_candles_many([symbol], [interval], from_time)
        return key

    async def subscribe_to_candles_many(
        self,
        symbols: Iterable[str | CandleSymbol],
        intervals: Iterable[str | CandleInterval | None],
        from_time: int | datetime,
    ) -> list[str]:
        """Subscribe every symbol x interval from ``from_time``; return the series keys.

        Everything is validated before anything is subscribed.
        """
        periods = [intervals] if isinstance(intervals, str) else list(intervals)
        bases = [symbols] if isinstance(symbols, str | CandleSymbol) else list(symbols)
        parsed = [candle_symbol(s, i) for s in bases for i in periods]
        from_ms = validate_from_time(from_time, round(self._wall_clock() * 1000))
        now = self._now()
        changed = [self._registry.add_candle(s, from_ms, now) for s in parsed]
        items = [_candle_item(c.key, from_ms) for c in changed if c is not None]
        self._enqueue("candles", items, adding=True)
        return [s.normalized for s in parsed]

    async def unsubscribe_from_candles(
        self, *, symbol: str | CandleSymbol, interval: str | CandleInterval | None = None
    ) -> bool:
        """Remove a candle series; return whether it was subscribed."""
        removed = self._registry.remove_candle(candle_symbol(symbol, interval).normalized)
        if removed is None:
            return False
        # §2.3: fromTime is required in a time-series remove, its value ignored.
        from_ms = removed.sent_from or removed.from_time
        self._enqueue("candles", [_candle_item(removed.key, from_ms)], adding=False)
        return True

    def _enqueue(self, role: str, items: list[SubscriptionItem], *, adding: bool) -> None:
        """Queue items for the live channel; without one, its (re)configuration sends all."""
        conn = self._conn
        if not items or conn is None or conn.ready_at is None or role not in conn.configured:
            return
        (self._pacer.add if adding else self._pacer.remove)(role, items)
        self._wakeup.set()

    # ------------------------------------------------------------------ supervisor

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _supervise(self) -> None:
        """The only retry loop: connect, run, classify the failure, back off, again."""
        refresh = False
        metrics = self._connection_metrics
        try:
            while True:
                metrics.state = ConnectionState.CONNECTING
                started = self._now()
                try:
                    async with asyncio.timeout(self._connect_timeout):
                        quote = await self._token_source.get(force_refresh=refresh)
                    refresh = False
                    await self._run_connection(quote)
                except Exception as exc:
                    action = classify(exc)
                    conn, self._conn = self._conn, None
                    uptime = 0.0
                    if conn is not None and conn.ready_at is not None:
                        uptime = self._now() - conn.ready_at
                    self._disconnected(exc, started)
                    if action is Action.FATAL:
                        fatal = fatal_error(exc, self._pacer.max_bytes, self._max_message_size)
                        if fatal is exc:
                            raise
                        raise fatal from exc
                    if action is Action.REFRESH_TOKEN:
                        refresh = True
                        metrics.token_refreshes += 1
                    delay = self._backoff.next_delay(uptime)
                    if self._max_attempts and self._backoff.attempt >= self._max_attempts:
                        raise ConnectionError(
                            f"gave up after {self._backoff.attempt} consecutive failed "
                            f"connection attempts (max_attempts={self._max_attempts}); "
                            f"last failure: {describe(exc)}"
                        ) from exc
                    metrics.state = ConnectionState.BACKING_OFF
                    self._notify(Disconnected(disconnect_reason(exc), describe(exc), delay))
                    logger.info("x reconnecting in %.3f s after %s", delay, describe(exc))
                    await self._sleep(delay)
                    metrics.reconnect_attempts += 1
        except Exception as exc:
            logger.error("! DXLink client stopped: %s", describe(exc))
            self._notify(Disconnected(DisconnectReason.FATAL, describe(exc), None))
            self._finish(exc)
        except asyncio.CancelledError:
            if self._conn is not None:
                self._conn = None
                self._connection_metrics.record_disconnect(
                    DisconnectReason.CLIENT_CLOSED, self._now()
                )
            raise

    def _disconnected(self, exc: BaseException, started: float) -> None:
        metrics = self._connection_metrics
        metrics.record_disconnect(disconnect_reason(exc), self._now())
        metrics.last_error = describe(exc)
        self._registry.on_disconnect()
        self._pacer.clear()
        logger.warning(
            "! connection ended after %.3f s: %s", self._now() - started, metrics.last_error
        )

    async def _run_connection(self, quote: _QuoteToken) -> None:
        """Run one connection until it fails; always raises."""
        secret = quote.token
        token = secret if isinstance(secret, str) else secret.get_secret_value()
        async with connect(
            quote.dxlink_url,
            open_timeout=self._connect_timeout,
            close_timeout=self._close_timeout,
            ping_interval=None,  # protocol KEEPALIVE is the liveness check (module docstring)
            max_size=self._max_message_size,
            logger=_ws_logger,
        ) as ws:
            protocol = ClientProtocol(
                token=token,
                keepalive_timeout=self._keepalive_timeout,
                dead_peer_timeout=self._dead_peer_timeout,
            )
            now = self._now()
            url = _loggable(quote.dxlink_url)
            conn = _Connection(ws, protocol, url, step_deadline=now + self._handshake_timeout)
            self._conn = conn
            protocol.start(now)
            await self._flush(conn)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._read(conn), name="dxlink-reader")
                    group.create_task(self._tick(conn), name="dxlink-ticker")
            except BaseExceptionGroup as failures:
                raise failures.exceptions[0] from None
            finally:
                protocol.close()

    async def _read(self, conn: _Connection) -> None:
        """The pump: recv → protocol → events → flush. Raises when the connection ends."""
        ws, protocol = conn.ws, conn.protocol
        while True:
            frame = await ws.recv(decode=False)  # orjson reads bytes; skip a UTF-8 decode
            protocol.receive_message(frame, self._now())
            await self._handle(conn, protocol.events_received())
            await self._flush(conn)

    async def _tick(self, conn: _Connection) -> None:
        """The one timer: keepalive, dead peer, handshake step limit, subscription pacing."""
        protocol = conn.protocol
        while True:
            now = self._now()
            deadlines = [protocol.next_deadline()]
            if conn.ready_at is None:
                deadlines.append(conn.step_deadline)
            else:
                deadlines.append(self._pacer.next_ready(now, conn.configured))
            due = min((d for d in deadlines if d is not None and d < math.inf), default=None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(due):
                    await self._wakeup.wait()
            self._wakeup.clear()
            now = self._now()
            if conn.ready_at is None and now >= conn.step_deadline:
                raise HandshakeTimeout(
                    f"no {conn.waiting_for} within {self._handshake_timeout:g} s"
                )
            # Keepalives go out even while the reader is paused; the protocol then holds
            # back its dead-peer judgement (pause_reading, §2.6).
            protocol.handle_timer(now)
            await self._handle(conn, protocol.events_received())  # may raise PeerTimeout
            if conn.ready_at is not None:
                self._send_batches(conn, self._pacer.ready(now, conn.configured))
            await self._flush(conn)

    async def _flush(self, conn: _Connection) -> None:
        """Send what the protocol queued, in order; the only caller of ``ws.send``."""
        async with self._send_lock:
            for text in conn.protocol.messages_to_send():
                await conn.ws.send(text)

    # ------------------------------------------------------------------ events

    def _step(self, conn: _Connection, waiting_for: str) -> None:
        conn.waiting_for = waiting_for
        conn.step_deadline = self._now() + self._handshake_timeout

    async def _handle(self, conn: _Connection, events: list[ProtocolEvent]) -> None:
        for event in events:
            if isinstance(event, CandlesReceived):
                await self._on_candles(conn, event)
            elif isinstance(event, EventsReceived):
                self._count_data(conn, event.channel, len(event.events))
                batch = EventBatch(event.event_type, event.events)
                await self._deliver(conn, self._event_queue, batch, "events")
            elif isinstance(event, ServerSetup):
                self._step(conn, "AUTH_STATE")
            elif isinstance(event, Authorized):
                for role, contract in _CONTRACTS.items():
                    self._open(conn, role, contract)
                self._step(conn, "CHANNEL_OPENED")
            elif isinstance(event, ChannelOpened):
                fields = _CANDLE_SETUP if conn.roles[event.channel] == "candles" else {}
                conn.protocol.setup_feed(
                    event.channel,
                    aggregation_period=self._aggregation_period,
                    data_format=DataFormat.COMPACT,
                    event_fields=fields,
                )
                self._step(conn, "FEED_CONFIG")
            elif isinstance(event, FeedConfigured):
                await self._on_configured(conn, conn.roles[event.channel])
            elif isinstance(event, ErrorReceived):
                self._on_error(conn, event.error)
            elif isinstance(event, ChannelClosed):
                # The server closed a channel on its own: open a new one for that role.
                role = conn.roles[event.channel]
                logger.warning("! server closed the %s channel %d", role, event.channel)
                conn.configured.discard(role)
                self._open(conn, role, _CONTRACTS[role])
            elif isinstance(event, AuthRejected):
                raise Unauthorized("the server rejected the token (AUTH_STATE UNAUTHORIZED)")
            elif isinstance(event, PeerTimedOut):
                await self._flush(conn)  # the protocol queued ERROR TIMEOUT for the server
                raise PeerTimeout(f"nothing received for {event.silence_seconds:.1f} s")
            elif isinstance(event, InvalidMessageReceived):
                self._connection_metrics.malformed_messages += 1  # logged by the protocol
            elif isinstance(event, ViolationReceived):
                self._connection_metrics.protocol_violations += 1  # logged by the protocol

    def _open(self, conn: _Connection, role: str, contract: Contract) -> None:
        channel = conn.protocol.open_channel(contract)
        conn.channels[role] = channel
        conn.roles[channel] = role

    async def _on_configured(self, conn: _Connection, role: str) -> None:
        if role in conn.configured:
            return  # a later FEED_CONFIG (e.g. lazy eventFields, §3.2): nothing to do
        conn.configured.add(role)
        if conn.ready_at is not None:  # a channel the server had closed is back
            self._queue_all(role, {k: s.sent_from or s.from_time for k, s in self._candles()})
            self._wakeup.set()
            return
        if conn.configured != set(_CONTRACTS):
            return
        keys = list(self._registry.candles)
        points: Mapping[str, int | None] = {}
        if self._resume_points is not None and self._connections and keys:
            conn.waiting_for, conn.step_deadline = "resume points", math.inf  # own limit
            async with self._reading_paused(conn):
                points = await self._ask_resume_points(keys)
        from_times = self._registry.resume_from(points)
        for role_ in _CONTRACTS:
            self._queue_all(role_, from_times)
        conn.ready_at = self._now()
        metrics = self._connection_metrics
        metrics.state = ConnectionState.CONNECTED
        metrics.connect_count += 1
        metrics.connected_since = conn.ready_at
        metrics.last_connect_time = self._wall_clock()
        self._connections += 1
        logger.info("= connected to %s; resubscribing %d items", conn.url, len(self._pacer))
        self._notify(Connected(conn.url, self._backoff.attempt))
        self._wakeup.set()

    def _candles(self) -> Iterable[tuple[str, CandleSubscription]]:
        return self._registry.candles.items()

    def _queue_all(self, role: str, from_times: Mapping[str, int]) -> None:
        if role == "candles":
            items = [_candle_item(key, from_times[key]) for key in self._registry.candles]
        else:
            items = [SubscriptionItem(t, s) for t, s in self._registry.regular]
        self._pacer.add(role, items)

    async def _ask_resume_points(self, keys: list[str]) -> Mapping[str, int | None]:
        """Call the resume-point callback (sync or async) with a time limit; {} on failure."""
        assert self._resume_points is not None
        try:
            async with asyncio.timeout(self._handshake_timeout):
                result = self._resume_points(keys)
                if inspect.isawaitable(result):
                    result = await result
            return result
        except Exception as exc:  # the store is down: resume from the requested fromTime
            logger.warning("! resume_points failed (%s); using each series' fromTime", exc)
            return {}

    def _send_batches(self, conn: _Connection, batches: list[SubscriptionBatch]) -> None:
        for batch in batches:
            conn.protocol.subscribe(conn.channels[batch.role], add=batch.add, remove=batch.remove)
            metrics = self._channel_metrics[batch.role]
            metrics.subscription_messages += 1
            metrics.subscription_items += len(batch.add) + len(batch.remove)
            for item in batch.add:
                if item.from_time is not None:
                    self._registry.sent(item.symbol, item.from_time)

    def _on_error(self, conn: _Connection, error: ServerError) -> None:
        role = conn.roles.get(error.channel)
        if role is None or isinstance(error, Unauthorized | UnsupportedProtocol):
            raise error  # connection level (§2.7), or auth/version: the supervisor decides
        self._channel_metrics[role].error_count += 1
        if not isinstance(error, BadAction):
            return  # a channel-level error affects only that channel; logged by the protocol
        # BAD_ACTION: subscriptions came too fast. Slow down; queue again, from the
        # registry's current state, what may have been rejected.
        affected = self._pacer.bad_action(role, self._now())
        self._channel_metrics[role].resent_batches += len(affected)
        for batch in affected:
            for item in (*batch.add, *batch.remove):
                wanted = self._wanted(item)
                (self._pacer.add if wanted else self._pacer.remove)(role, [wanted or item])
        self._wakeup.set()

    def _wanted(self, item: SubscriptionItem) -> SubscriptionItem | None:
        """The item as the registry wants it now, or None if it is no longer wanted."""
        if item.from_time is None:
            return item if (item.type, item.symbol) in self._registry.regular else None
        subscription = self._registry.candles.get(item.symbol)
        if subscription is None:
            return None
        return _candle_item(item.symbol, subscription.sent_from or subscription.from_time)

    async def _on_candles(self, conn: _Connection, event: CandlesReceived) -> None:
        candles = event.candles
        self._count_data(conn, event.channel, len(candles))
        observe = self._registry.observe
        for candle in candles:
            if candle.flags & _SNAPSHOT_FLAGS:
                progress = observe(candle.symbol, candle.flags)
                if progress is not None and progress.state is SubscriptionState.LIVE:
                    self._notify(SnapshotComplete(progress.key, progress.snipped))
        await self._deliver(conn, self._candle_queue, candles, "candles")

    def _count_data(self, conn: _Connection, channel: int, events: int) -> None:
        metrics = self._channel_metrics[conn.roles[channel]]
        metrics.message_count += 1
        metrics.event_count += events
        metrics.last_message_time = self._wall_clock()

    async def _deliver(
        self, conn: _Connection, queue: asyncio.Queue[Any], item: Any, role: str
    ) -> None:
        """Hand a batch to the consumer; wait (back-pressure) while its queue is full."""
        if queue.full():
            await self._flush(conn)  # replies the protocol queued must not wait on a consumer
            started = self._now()
            self._delivery.blocked_count += 1
            self._notify(Backpressure(role))
            try:
                async with self._reading_paused(conn):
                    await queue.put(item)
            finally:
                self._delivery.blocked_seconds += self._now() - started
        else:
            queue.put_nowait(item)
        self._delivery.batches += 1
        metrics = self._channel_metrics[role]
        metrics.queue_high_water_mark = max(metrics.queue_high_water_mark, queue.qsize())

    @contextlib.asynccontextmanager
    async def _reading_paused(self, conn: _Connection) -> AsyncIterator[None]:
        """The reader stops reading for a while: tell the protocol, so only its dead-peer
        timer pauses while keepalives keep going out (§2.6), and re-arm the ticker."""
        conn.protocol.pause_reading(self._now())
        self._wakeup.set()
        try:
            yield
        finally:
            conn.protocol.resume_reading(self._now())
            self._wakeup.set()

    def _notify(self, event: LifecycleEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:  # a broken observer must not break the feed; logged with traceback
            logger.exception("! on_event callback failed for %s", type(event).__name__)


ResumePoints: TypeAlias = Callable[
    [list[str]], Awaitable[Mapping[str, int | None]] | Mapping[str, int | None]
]


def _loggable(url: str) -> str:
    """``url`` without user info, query or fragment, which could carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _candle_item(key: str, from_time: int) -> SubscriptionItem:
    return SubscriptionItem("Candle", key, from_time=from_time)
