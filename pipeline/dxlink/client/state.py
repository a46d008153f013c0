"""What the parts of the DXLink client share (DESIGN.md; STYLE.md patterns 5, 6 and 9).

``DXLinkManager`` (``manager.py``) owns one :class:`ClientState` and one
:class:`ClientSettings`. The supervisor (``supervisor.py``, the only retry loop) and each
per-connection driver (``connection.py``) work on them; nothing else keeps client state.
Also here: the token-source shape, the :class:`EventBatch` record and the channel roles.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeAlias, runtime_checkable

from pipeline.dxlink.client.metrics import (
    ChannelMetrics,
    ConnectionMetrics,
    DeliveryMetrics,
    LifecycleEvent,
)
from pipeline.dxlink.client.tap import FrameTap
from pipeline.dxlink.client.throttle import LogThrottle
from pipeline.dxlink.events import CANDLE_FIELDS, Candle
from pipeline.dxlink.message_models import Contract, JsonObject, SubscriptionItem
from pipeline.dxlink.subscriptions import SubscriptionPacer, SubscriptionRegistry

__all__ = [
    "CANDLE_SETUP",
    "CONTRACTS",
    "END",
    "ClientSettings",
    "ClientState",
    "EventBatch",
    "LiveConnection",
    "QuoteToken",
    "ResumePoints",
    "TokenSource",
    "candle_item",
    "loop_time",
    "token_text",
]

# One logger for the whole client, whichever module logs (users filter on this name).
logger = logging.getLogger("pipeline.dxlink.client")

# Channel roles and their contracts (§3.1: candles on a dedicated HISTORY channel, #353).
CONTRACTS = {"candles": Contract.HISTORY, "events": Contract.AUTO}
CANDLE_SETUP = {"Candle": CANDLE_FIELDS}
END: Any = object()
"""End-of-stream marker in the delivery queues."""


class LiveConnection(Protocol):
    """What the rest of the client sees of the current connection's driver
    (``connection.ConnectionDriver``)."""

    @property
    def ready_at(self) -> float | None:
        """Loop time at which every channel was configured, or ``None`` while not yet."""

    def accepts(self, role: str) -> bool:
        """Whether the channel of ``role`` is configured and takes subscriptions now."""


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


class QuoteToken(Protocol):
    """What a token source hands out: the DXLink token and the URL to use it on."""

    @property
    def token(self) -> str | _Secret: ...
    @property
    def dxlink_url(self) -> str: ...


@runtime_checkable
class TokenSource(Protocol):
    """Hands out DXLink tokens: tastytrade's OAuth flow, the simulator's fixed token
    (:mod:`pipeline.ingest.sources`), or a test's."""

    async def get(self, force_refresh: bool = False) -> QuoteToken:
        """Return a token and the URL to use; ``force_refresh`` after a rejection."""
        ...


def token_text(quote: QuoteToken) -> str:
    """The token as text, whether the source gives a str or a secret wrapper."""
    secret = quote.token
    return secret if isinstance(secret, str) else secret.get_secret_value()


class EventBatch(NamedTuple):
    """Decoded events of one non-Candle type (dicts with the wire field names)."""

    event_type: str
    events: list[JsonObject]


ResumePoints: TypeAlias = Callable[
    [list[str]], Awaitable[Mapping[str, int | None]] | Mapping[str, int | None]
]


def loop_time() -> float:
    """The running loop's monotonic clock: the ``now`` the client passes to the protocol."""
    return asyncio.get_running_loop().time()


def candle_item(key: str, from_time: int) -> SubscriptionItem:
    """A Candle subscription item; §2.3: fromTime is part of add and remove alike."""
    return SubscriptionItem("Candle", key, from_time=from_time)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """The client's validated settings (see ``DXLinkManager.__init__`` for each)."""

    keepalive_timeout: float
    dead_peer_timeout: float
    max_dead_peer_timeout: float
    connect_timeout: float
    handshake_timeout: float
    close_timeout: float
    aggregation_period: float
    max_message_size: int
    max_attempts: int | None


@dataclass(slots=True)
class ClientState:
    """Everything that outlives one connection: desired subscriptions, queues, metrics."""

    registry: SubscriptionRegistry
    pacer: SubscriptionPacer
    candle_queue: asyncio.Queue[Sequence[Candle]]
    event_queue: asyncio.Queue[EventBatch]
    resume_points: ResumePoints | None
    on_event: Callable[[LifecycleEvent], None] | None
    wall_clock: Callable[[], float]
    connection_metrics: ConnectionMetrics = field(default_factory=ConnectionMetrics)
    channel_metrics: dict[str, ChannelMetrics] = field(
        default_factory=lambda: {role: ChannelMetrics() for role in CONTRACTS}
    )
    delivery: DeliveryMetrics = field(default_factory=DeliveryMetrics)
    log_throttle: LogThrottle = field(default_factory=lambda: LogThrottle(logger))
    """Rate-limits the log lines a server can provoke (malformed frames and the like)."""
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to re-arm the ticker at once (new subscriptions, a pause, a resume)."""
    connection: LiveConnection | None = None
    """The current connection's driver, from its WebSocket's opening to its failure."""
    connections: int = 0
    """Connections that got ready (every channel configured) so far."""
    frame_tap: FrameTap | None = None
    """Sees every frame of every connection (``tap.py``), e.g. a recorder."""

    def notify(self, event: LifecycleEvent) -> None:
        """Hand ``event`` to the ``on_event`` observer; a broken observer is only logged."""
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # a broken observer must not break the feed; logged with traceback
            logger.exception("! on_event callback failed for %s", type(event).__name__)

    def queue_all(self, role: str, from_times: Mapping[str, int]) -> None:
        """Queue every wanted item of ``role`` for a (re)configured channel."""
        registry = self.registry
        if role == "candles":
            items = [candle_item(key, from_times[key]) for key in registry.candles]
        else:
            items = [SubscriptionItem(t, s) for t, s in registry.regular]
        self.pacer.add(role, items)

    def wanted(self, item: SubscriptionItem) -> SubscriptionItem | None:
        """The item as the registry wants it now, or None if it is no longer wanted."""
        if item.from_time is None:
            return item if (item.type, item.symbol) in self.registry.regular else None
        subscription = self.registry.candles.get(item.symbol)
        if subscription is None:
            return None
        return candle_item(item.symbol, subscription.sent_from or subscription.from_time)
