"""DXLinkManager: the reconnecting DXLink client (DESIGN.md, STYLE.md patterns 5, 6 and 9).

The public face of the client: settings, subscriptions, the candle and event streams, the
metrics. The work is done by its parts, one job each:

* ``supervisor.py``: the only retry loop (connect, run, classify the failure, back off);
* ``connection.py``: one connection's reader pump and ticker, handshake steps, back-pressure;
* ``transport.py``: how the WebSocket is opened, and secrets kept out of its logs;
* ``state.py``: what they share (registry, pacer, queues, metrics, settings);
* ``retry.py``: what a failure means; ``metrics.py``: the counters and lifecycle events.

The package :mod:`pipeline.dxlink.client` exports ``DXLinkManager`` with the lifecycle events,
``EventBatch``, ``TokenSource`` and the metrics types.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import datetime
from typing import Any

from pipeline.dxlink.client.metrics import (
    ConnectionMetrics,
    ConnectionState,
    Disconnected,
    DisconnectReason,
    LifecycleEvent,
    Stopped,
    snapshot,
)
from pipeline.dxlink.client.retry import describe
from pipeline.dxlink.client.state import (
    END,
    ClientSettings,
    ClientState,
    EventBatch,
    ResumePoints,
    TokenSource,
    candle_item,
    loop_time,
)
from pipeline.dxlink.client.supervisor import Supervisor
from pipeline.dxlink.client.tap import FrameTap
from pipeline.dxlink.client.transport import DEFAULT_MAX_MESSAGE_SIZE
from pipeline.dxlink.errors import UsageError
from pipeline.dxlink.events import Candle
from pipeline.dxlink.message_models import SubscriptionItem
from pipeline.dxlink.pacing import DEFAULT_INITIAL_DELAY, DEFAULT_MAX_DELAY, Backoff, backoff
from pipeline.dxlink.protocol import DEFAULT_MAX_DEAD_PEER_TIMEOUT
from pipeline.dxlink.subscriptions import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_ITEMS,
    DEFAULT_SUBSCRIBE_BURST,
    DEFAULT_SUBSCRIBE_RATE,
    CandleSubscription,
    SubscriptionPacer,
    SubscriptionRegistry,
    candle_symbol,
    symbol_list,
    validate_from_time,
)
from pipeline.dxlink.symbols import CandleInterval, CandleSymbol

__all__ = [
    "DXLinkManager",
]

logger = logging.getLogger("pipeline.dxlink.client")  # one logger for the whole client

DEFAULT_DEAD_PEER_TIMEOUT = 10.0
"""Seconds of silence before a server is judged dead, asked of it as acceptKeepaliveTimeout:
a stall is detected within about 10 s by any server that keeps to it (issue 14)."""


class DXLinkManager:
    """A reconnecting DXLink client delivering candle batches through a bounded queue.

    Use ``async with DXLinkManager(source) as manager:`` (or ``start()``/``aclose()``),
    subscribe at any time (also before the first connection), and consume
    ``async for batch in manager.candles()``. The module docstring lists its parts.
    """

    def __init__(
        self,
        token_source: TokenSource,
        *,
        keepalive_timeout: float = 60.0,
        dead_peer_timeout: float = DEFAULT_DEAD_PEER_TIMEOUT,
        max_dead_peer_timeout: float = DEFAULT_MAX_DEAD_PEER_TIMEOUT,
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
        frame_tap: FrameTap | None = None,
        reconnect_delays: Callable[[], Iterator[float]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure the manager; nothing connects before ``start()``.

        Args:
            token_source: ``await token_source.get(force_refresh=...)`` gives ``.token`` (str
                or a secret with ``get_secret_value()``) and ``.dxlink_url``.
            keepalive_timeout: seconds we promise never to stay silent (our SETUP, §2.6).
            dead_peer_timeout: seconds of receiving nothing before the server counts as
                dead, and what we ask the server to keep within (our SETUP's
                acceptKeepaliveTimeout, §2.6). A server advertising a longer keepaliveTimeout
                is given that long, up to ``max_dead_peer_timeout``.
            max_dead_peer_timeout: the most silence any server's SETUP can make us accept
                (no server can switch dead-peer detection off).
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
            max_message_size: largest server message accepted, in bytes; a larger one is a
                fault: the connection is closed with 1009 and re-established.
            resume_points: called once per reconnect with every candle series key; returns
                (or awaits to) ``{key: fromTime ms}``. Series without a point resume from
                the fromTime they were subscribed with.
            on_event: called with each :data:`LifecycleEvent` (must not block).
            frame_tap: sees every WebSocket frame in and out of every connection, e.g. a
                :class:`pipeline.recording.Recorder` (``tap.py``; must not block).
            reconnect_delays: factory of delay iterators replacing the default backoff.
            sleep: awaited with each reconnect delay (tests record the delays).
            wall_clock: Unix seconds, for fromTime validation and ``last_message_time``.

        Raises:
            ValueError: for settings that cannot work, naming the setting.
        """
        for name, value in (
            ("keepalive_timeout", keepalive_timeout),
            ("dead_peer_timeout", dead_peer_timeout),
            ("max_dead_peer_timeout", max_dead_peer_timeout),
            ("connect_timeout", connect_timeout),
            ("handshake_timeout", handshake_timeout),
            ("close_timeout", close_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if max_dead_peer_timeout < dead_peer_timeout:
            raise ValueError(
                f"max_dead_peer_timeout ({max_dead_peer_timeout!r}) must be >= "
                f"dead_peer_timeout ({dead_peer_timeout!r})"
            )
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1 batch, got {queue_size!r}")
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be >= 1 byte, got {max_message_size!r}")
        if max_attempts is not None and max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0 (0 or None: forever), got {max_attempts}")
        self._settings = ClientSettings(
            keepalive_timeout=keepalive_timeout,
            dead_peer_timeout=dead_peer_timeout,
            max_dead_peer_timeout=max_dead_peer_timeout,
            connect_timeout=connect_timeout,
            handshake_timeout=handshake_timeout,
            close_timeout=close_timeout,
            aggregation_period=aggregation_period,
            max_message_size=max_message_size,
            max_attempts=max_attempts or None,
        )
        if reconnect_delays is None:
            reconnect_delays = functools.partial(
                backoff, initial=backoff_initial, max_delay=backoff_max
            )
            next(reconnect_delays())  # validate the settings now, not at the first reconnect
        pacer = SubscriptionPacer(
            now=0.0,
            max_items=batch_max_items,
            max_bytes=batch_max_bytes,
            rate=subscribe_rate,
            burst=subscribe_burst,
        )
        self._state = ClientState(
            connection_metrics=ConnectionMetrics(dead_peer_timeout=dead_peer_timeout),
            registry=SubscriptionRegistry(),
            pacer=pacer,
            candle_queue=asyncio.Queue(queue_size),
            event_queue=asyncio.Queue(queue_size),
            resume_points=resume_points,
            on_event=on_event,
            wall_clock=wall_clock,
            frame_tap=frame_tap,
        )
        self._registry = self._state.registry
        self._supervisor = Supervisor(
            self._state,
            self._settings,
            token_source,
            Backoff(reconnect_delays, healthy_after=healthy_after),
            sleep,
        )
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._finished = False

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
        return self._state.connection_metrics.state

    def get_metrics(self) -> dict[str, Any]:
        """Return every counter as plain dicts (a copy): connection, channels, delivery."""
        state = self._state
        loop_now = loop_time() if self._task else 0.0
        subscriptions = self._registry.counts()
        subscriptions["pending_items"] = len(state.pacer)
        subscriptions["subscribe_rate"] = state.pacer.bucket.rate
        metrics = snapshot(
            state.connection_metrics,
            state.channel_metrics,
            state.delivery,
            subscriptions,
            loop_now,
        )
        depths = {"candles": state.candle_queue.qsize(), "events": state.event_queue.qsize()}
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
        self._state.connection_metrics.state = ConnectionState.CLOSED
        for queue in (self._state.candle_queue, self._state.event_queue):
            with contextlib.suppress(asyncio.QueueFull):  # full: the reader checks _finished
                queue.put_nowait(END)
        self._state.notify(Stopped(error))

    async def candles(self) -> AsyncIterator[Sequence[Candle]]:
        """Yield candle batches in arrival order until the manager stops.

        A batch is a list of ``Candle``, or for a large frame a
        :class:`~pipeline.dxlink.candle_block.CandleBlock`: the same events as columns, also
        a ``Sequence[Candle]``.

        Ends after ``aclose()`` once everything queued was yielded; raises the fatal error
        (e.g. ``ConnectionError`` after ``max_attempts``) if the manager stopped on one.
        """
        async for batch in self._drain(self._state.candle_queue):
            yield batch

    async def events(self) -> AsyncIterator[EventBatch]:
        """Yield batches of non-Candle events (from ``subscribe()``), like ``candles()``.

        Consume this if you subscribe to regular events: its queue is bounded too.
        """
        async for batch in self._drain(self._state.event_queue):
            yield batch

    async def _drain(self, queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
        while not (self._finished and queue.empty()):
            item = await queue.get()
            if item is END:
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
        from_ms = validate_from_time(from_time, round(self._state.wall_clock() * 1000))
        now = loop_time()
        changed = [self._registry.add_candle(s, from_ms, now) for s in parsed]
        items = [candle_item(c.key, from_ms) for c in changed if c is not None]
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
        self._enqueue("candles", [candle_item(removed.key, from_ms)], adding=False)
        return True

    def _enqueue(self, role: str, items: list[SubscriptionItem], *, adding: bool) -> None:
        """Queue items for the live channel; without one, its (re)configuration sends all."""
        connection, pacer = self._state.connection, self._state.pacer
        if not items or connection is None or not connection.accepts(role):
            return
        (pacer.add if adding else pacer.remove)(role, items)
        self._state.wakeup.set()

    # ------------------------------------------------------------------ supervisor

    async def _supervise(self) -> None:
        """Run the supervisor until it gives up (fatal) or the manager closes (cancelled)."""
        try:
            await self._supervisor.run()
        except Exception as exc:
            logger.error("! DXLink client stopped: %s", describe(exc))
            self._state.notify(Disconnected(DisconnectReason.FATAL, describe(exc), None))
            self._finish(exc)
        except asyncio.CancelledError:
            if self._state.connection is not None:
                self._state.connection = None
                self._state.connection_metrics.record_disconnect(
                    DisconnectReason.CLIENT_CLOSED, loop_time()
                )
            raise
