"""What should be subscribed, and how subscriptions go out: registry, batching, pacing.

A *subscription* is something the user asked for and that must hold on every connection:

* a **regular** subscription, ``(event_type, symbol)`` (e.g. ``("Quote", "AAPL")``), sent on
  the AUTO channel;
* a **candle** subscription, keyed by the normalised candle symbol (``AAPL{=5m}``, §5.3: the
  *series key*), with its requested ``fromTime`` and per-connection progress
  (pending → snapshot → live), sent on the dedicated HISTORY channel (§3.1).

:class:`SubscriptionRegistry` holds the **desired** state, which survives reconnects (STYLE.md
pattern 10, after ib_async's ``_subscriptions.py``). ``fromTime`` is not part of a candle
subscription's identity (§2.3: re-adding the same type and symbol replaces it). Adding what
exists is a no-op (or updates ``fromTime``); removing what does not exist is a no-op.

:class:`SubscriptionPacer` holds what still has to be *sent* on the current connection: it
coalesces pending adds and removes per item, cuts them into FEED_SUBSCRIPTION batches limited
by item count and by encoded size (the server closes with 1009 on a large frame, §8), and lets
them out through a token bucket (the server answers a burst with BAD_ACTION).

Only the client (:mod:`pipeline.dxlink.client`) uses this module. No I/O, no clock: every
method that needs the time takes ``now`` (seconds).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping, Set
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from pipeline.dxlink.errors import UsageError
from pipeline.dxlink.events import SNAPSHOT_BEGIN, SNAPSHOT_END, SNAPSHOT_SNIP
from pipeline.dxlink.message_models import FeedSubscription, SubscriptionItem
from pipeline.dxlink.messages import encode
from pipeline.dxlink.pacing import TokenBucket
from pipeline.dxlink.symbols import CandleInterval, CandleSymbol

__all__ = [
    "CandleSubscription",
    "SnapshotProgress",
    "SubscriptionBatch",
    "SubscriptionPacer",
    "SubscriptionRegistry",
    "SubscriptionState",
    "batch_size",
    "candle_symbol",
    "item_size",
    "symbol_list",
    "validate_event_type",
    "validate_from_time",
    "validate_symbol",
]

CANDLE = "Candle"


class SubscriptionState(StrEnum):
    """Progress of a candle subscription on the current connection (§6.2)."""

    PENDING = "pending"
    """Wanted, but no snapshot has begun on this connection yet."""
    SNAPSHOT = "snapshot"
    """SNAPSHOT_BEGIN arrived; the history is coming."""
    LIVE = "live"
    """SNAPSHOT_END (or SNIP) arrived; only live updates from here on."""


@dataclass(frozen=True, slots=True)
class CandleSubscription:
    """One candle series that should be subscribed, with its metadata (read-only)."""

    symbol: CandleSymbol
    """The parsed candle symbol; ``symbol.normalized`` is the series key."""
    from_time: int
    """The ``fromTime`` the user asked for (ms since the epoch, UTC)."""
    added_at: float
    """When it was added or its ``from_time`` last changed (the caller's clock, seconds)."""
    state: SubscriptionState = SubscriptionState.PENDING
    """Progress on the current connection."""
    sent_from: int | None = None
    """The ``fromTime`` last sent on the current connection (a resume point), or None."""

    @property
    def key(self) -> str:
        """The series key: the normalised candle symbol (§5.3)."""
        return self.symbol.normalized


@dataclass(frozen=True, slots=True)
class SnapshotProgress:
    """What one candle's eventFlags changed for its series (returned by ``observe``)."""

    key: str
    """The series key."""
    state: SubscriptionState
    """The series' new state."""
    snipped: bool = False
    """True when the snapshot ended with SNAPSHOT_SNIP: older history exists but won't come."""


class _SetView(Set[tuple[str, str]]):
    """A read-only live view of a set (no copy per access)."""

    __slots__ = ("_data",)

    def __init__(self, data: set[tuple[str, str]]) -> None:
        self._data = data

    def __contains__(self, item: object) -> bool:
        return item in self._data

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"{{{', '.join(map(repr, sorted(self._data)))}}}"


_SNAPSHOT_END_FLAGS = SNAPSHOT_END | SNAPSHOT_SNIP


def validate_event_type(event_type: str) -> str:
    """Return ``event_type`` if it can be a regular subscription's type, else raise.

    Raises:
        ValueError: for a non-identifier, or ``Candle`` (which needs a candle symbol and
            ``fromTime``: use ``subscribe_to_candles``).
    """
    if not isinstance(event_type, str) or not event_type.isidentifier():
        raise ValueError(
            f"event type {event_type!r} is not a dxFeed event type name; "
            "use e.g. Quote, Trade, Summary, Profile, Greeks, TimeAndSale"
        )
    if event_type == CANDLE:
        raise ValueError(
            "Candle is not a regular subscription: use subscribe_to_candles(symbol=..., "
            "interval=..., from_time=...) so the series gets a fromTime (§2.3)"
        )
    return event_type


def validate_symbol(symbol: str) -> str:
    """Return ``symbol`` (stripped) if it can be a regular subscription's symbol, else raise.

    Raises:
        ValueError: for an empty symbol, whitespace inside it, or braces (candle syntax).
    """
    if not isinstance(symbol, str):
        raise ValueError(f"a symbol must be a string, not {type(symbol).__name__}")
    text = symbol.strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError(
            f"{symbol!r} is not a symbol; use a streamer symbol without spaces, "
            "e.g. AAPL, /ESZ25:XCME, BTC/USD:CXTALP"
        )
    if "{" in text or "}" in text:
        raise ValueError(
            f"{symbol!r} looks like a candle symbol; use subscribe_to_candles() for candles"
        )
    return text


# fromTime is in ms (§6.2). 1e11 ms is 1973-03-03, while 1e11 *seconds* is the year 5138: a
# value below it is almost surely a timestamp in seconds (tastytrade's own prose example is).
_MIN_PLAUSIBLE_MS = 100_000_000_000


def validate_from_time(from_time: int | datetime, now_ms: int) -> int:
    """Return ``from_time`` as ms since the epoch, or raise a clear error.

    Args:
        from_time: ms since the epoch (UTC), or a timezone-aware datetime.
        now_ms: the current time in ms, to reject times in the future.

    Raises:
        ValueError: for a naive datetime, a non-integer, a value that looks like seconds
            (< 1e11), a negative value or a time in the future.
    """
    if isinstance(from_time, datetime):
        if from_time.tzinfo is None or from_time.utcoffset() is None:
            raise ValueError(
                f"from_time {from_time.isoformat()} has no time zone; pass an aware datetime "
                "(e.g. datetime(..., tzinfo=timezone.utc)) or ms since the epoch"
            )
        from_time = round(from_time.timestamp() * 1000)
    if isinstance(from_time, bool) or not isinstance(from_time, int):
        raise ValueError(f"from_time must be an int of ms since the epoch (UTC), not {from_time!r}")
    if from_time < 0:
        raise ValueError(f"from_time {from_time} is negative; use ms since the epoch (UTC)")
    if from_time < _MIN_PLAUSIBLE_MS:
        raise ValueError(
            f"from_time {from_time} looks like seconds, but DXLink wants milliseconds since "
            f"the epoch (§6.2); use {from_time * 1000}"
        )
    if from_time > now_ms:
        raise ValueError(
            f"from_time {from_time} is {(from_time - now_ms) / 1000:.0f} s in the future "
            f"(now is {now_ms}); use a time in the past: history comes from fromTime to now"
        )
    return from_time


def candle_symbol(
    symbol: str | CandleSymbol, interval: str | CandleInterval | None
) -> CandleSymbol:
    """Parse ``symbol`` (+ ``interval``) into a candle symbol, or raise a clear ValueError."""
    if isinstance(symbol, CandleSymbol):
        if interval is not None:
            raise ValueError(f"{symbol.normalized!r} already has a period; pass interval=None")
        return symbol
    if interval is None:
        return CandleSymbol.parse(symbol)
    if "{" in symbol:
        raise ValueError(
            f"{symbol!r} already has a period; pass either a candle symbol, or a streamer "
            "symbol with interval=..."
        )
    return CandleSymbol.of(symbol, str(interval))


def symbol_list(symbols: Iterable[str]) -> list[str]:
    """``"AAPL"`` means one symbol, not four."""
    return [symbols] if isinstance(symbols, str) else list(symbols)


class SubscriptionRegistry:
    """The desired subscriptions; survives reconnects.

    Mutators are idempotent and return what actually changed, so the caller sends exactly
    that. Read access goes through live read-only views (:attr:`regular`, :attr:`candles`).
    """

    def __init__(self) -> None:
        self._regular: set[tuple[str, str]] = set()
        self._candles: dict[str, CandleSubscription] = {}
        self.regular: Set[tuple[str, str]] = _SetView(self._regular)
        """Read-only live view of the regular subscriptions, ``(event_type, symbol)``."""
        self.candles: Mapping[str, CandleSubscription] = MappingProxyType(self._candles)
        """Read-only live view of the candle subscriptions by series key."""

    def __len__(self) -> int:
        return len(self._regular) + len(self._candles)

    # Regular subscriptions.

    def add_regular(self, event_type: str, symbols: list[str]) -> list[tuple[str, str]]:
        """Add ``(event_type, symbol)`` pairs; return the ones that were new.

        Raises:
            ValueError: for a bad event type or symbol; nothing is added then.
        """
        validate_event_type(event_type)
        pairs = [(event_type, validate_symbol(symbol)) for symbol in symbols]
        added = [pair for pair in dict.fromkeys(pairs) if pair not in self._regular]
        self._regular.update(added)
        return added

    def remove_regular(self, event_type: str, symbols: list[str]) -> list[tuple[str, str]]:
        """Remove ``(event_type, symbol)`` pairs; return the ones that were there."""
        pairs = [(event_type, symbol.strip()) for symbol in symbols]
        removed = [pair for pair in dict.fromkeys(pairs) if pair in self._regular]
        self._regular.difference_update(removed)
        return removed

    # Candle subscriptions.

    def add_candle(
        self, symbol: CandleSymbol, from_time: int, now: float
    ) -> CandleSubscription | None:
        """Add a candle series, or move its ``fromTime``; return it if anything changed.

        Re-adding with the same ``from_time`` changes nothing and returns None. A new
        ``from_time`` replaces the old one (§2.3) and resets the series to PENDING, since
        the server answers with a new snapshot.
        """
        key = symbol.normalized
        existing = self._candles.get(key)
        if existing is not None and existing.from_time == from_time:
            return None
        subscription = CandleSubscription(symbol=symbol, from_time=from_time, added_at=now)
        self._candles[key] = subscription
        return subscription

    def remove_candle(self, key: str) -> CandleSubscription | None:
        """Remove a candle series by key; return it, or None if it was not there."""
        return self._candles.pop(key, None)

    def sent(self, key: str, from_time: int) -> None:
        """Record the ``fromTime`` sent for a series on this connection."""
        subscription = self._candles.get(key)
        if subscription is not None:
            self._candles[key] = replace(
                subscription, sent_from=from_time, state=SubscriptionState.PENDING
            )

    def observe(self, key: str, flags: int) -> SnapshotProgress | None:
        """Advance a series' state from one candle's eventFlags (§6.1); return the change.

        Call it only for candles whose flags have a snapshot bit (the hot path skips the
        rest). SNAPSHOT_BEGIN moves the series to SNAPSHOT; SNAPSHOT_END or SNAPSHOT_SNIP
        (possibly in the same event, e.g. an empty snapshot, flags 14) moves it to LIVE.
        Unknown keys (e.g. a series removed while its data was in flight) are ignored.
        """
        subscription = self._candles.get(key)
        if subscription is None:
            return None
        state = subscription.state
        if flags & SNAPSHOT_BEGIN:
            state = SubscriptionState.SNAPSHOT
        if flags & _SNAPSHOT_END_FLAGS and state is SubscriptionState.SNAPSHOT:
            state = SubscriptionState.LIVE
        if state is subscription.state:
            return None
        self._candles[key] = replace(subscription, state=state)
        return SnapshotProgress(key, state, snipped=bool(flags & SNAPSHOT_SNIP))

    def on_disconnect(self) -> None:
        """Forget per-connection progress: every series is PENDING with nothing sent."""
        for key, subscription in self._candles.items():
            if subscription.state is not SubscriptionState.PENDING or subscription.sent_from:
                self._candles[key] = replace(
                    subscription, state=SubscriptionState.PENDING, sent_from=None
                )

    def resume_from(self, resume_points: Mapping[str, int | None]) -> dict[str, int]:
        """Return the ``fromTime`` to resubscribe each candle series with after a reconnect.

        A series resumes from its resume point (the store's "last complete candle minus one
        period"), but never earlier than the ``from_time`` the user asked for: an older
        point would fetch history nobody requested. Without a resume point (None or
        missing) it starts from its original ``from_time``.
        """
        result: dict[str, int] = {}
        for key, subscription in self._candles.items():
            point = resume_points.get(key)
            result[key] = (
                subscription.from_time if point is None else max(point, subscription.from_time)
            )
        return result

    def counts(self) -> dict[str, object]:
        """Return subscription counts by kind, and candle series by state."""
        by_state = dict.fromkeys((str(s) for s in SubscriptionState), 0)
        for subscription in self._candles.values():
            by_state[subscription.state] += 1
        return {
            "regular": len(self._regular),
            "candles": len(self._candles),
            "candles_by_state": by_state,
        }


# --------------------------------------------------------------------------------------------
# Sending: a token bucket, batching by count and bytes, and the pacer that combines them.

# §8: the server closes with 1009 on a large client frame; dxFeed's JS client cuts
# subscriptions into chunks of ~8192 estimated characters. We measure exact encoded bytes and
# stay well below that by default.
DEFAULT_MAX_BATCH_BYTES = 6_000
# A generous cap on items per message; for candle items the byte limit binds first (~90).
DEFAULT_MAX_BATCH_ITEMS = 500
# FEED_SUBSCRIPTION messages per second and burst: STYLE.md pattern 9 ("in-flight subscribes
# ~20, BAD_ACTION"); 10,000 candle series (~110 messages) go out in about five seconds.
DEFAULT_SUBSCRIBE_RATE = 20.0
DEFAULT_SUBSCRIBE_BURST = 20.0
# After BAD_ACTION the rate halves, but never below this.
MIN_SUBSCRIBE_RATE = 1.0
# Batches sent this long before a BAD_ACTION count as possibly rejected and are re-sent.
DEFAULT_RESEND_WINDOW = 2.0

# Room for a channel number of up to five digits in the measured envelope (§2.4: 1, 3, 5 ...).
_CHANNEL_FOR_SIZING = 99_999
_ENVELOPE = len(encode(FeedSubscription(channel=_CHANNEL_FOR_SIZING)).encode())
_ADD_OVERHEAD = len(',"add":[]')
_REMOVE_OVERHEAD = len(',"remove":[]')


def item_size(item: SubscriptionItem) -> int:
    """Return the UTF-8 bytes ``item`` adds to a FEED_SUBSCRIPTION list (without the comma)."""
    alone = encode(FeedSubscription(channel=_CHANNEL_FOR_SIZING, add=(item,))).encode()
    return len(alone) - _ENVELOPE - _ADD_OVERHEAD


def batch_size(add_sizes: list[int], remove_sizes: list[int]) -> int:
    """Return the encoded size of a FEED_SUBSCRIPTION carrying items of these sizes.

    Exact for a channel number of up to five digits (an upper bound for shorter ones).
    """
    size = _ENVELOPE
    if add_sizes:
        size += _ADD_OVERHEAD + sum(add_sizes) + len(add_sizes) - 1
    if remove_sizes:
        size += _REMOVE_OVERHEAD + sum(remove_sizes) + len(remove_sizes) - 1
    return size


@dataclass(frozen=True, slots=True)
class SubscriptionBatch:
    """One FEED_SUBSCRIPTION to send on the channel of ``role``."""

    role: str
    """The channel role: ``"candles"`` (HISTORY) or ``"events"`` (AUTO)."""
    add: tuple[SubscriptionItem, ...] = ()
    """Items to add."""
    remove: tuple[SubscriptionItem, ...] = ()
    """Items to remove (candle items keep their ``fromTime``, §2.3)."""
    size: int = 0
    """Encoded bytes of the message (for a channel number of up to five digits)."""


_ItemKey = tuple[str, str, str | None]


class SubscriptionPacer:
    """What remains to be sent on this connection, cut into batches and paced.

    Pending operations are kept per channel role and per item identity (type, symbol,
    source; §2.3), so an add followed by a remove of the same item before it went out
    becomes one remove, and adding 10,000 series one call at a time still goes out in full
    batches. :meth:`ready` returns the batches the token bucket allows at ``now``; the
    caller sends them and asks :meth:`next_ready` when to come back.
    """

    def __init__(
        self,
        *,
        now: float,
        max_items: int = DEFAULT_MAX_BATCH_ITEMS,
        max_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        rate: float = DEFAULT_SUBSCRIBE_RATE,
        burst: float = DEFAULT_SUBSCRIBE_BURST,
        resend_window: float = DEFAULT_RESEND_WINDOW,
    ) -> None:
        """Create an empty pacer.

        Args:
            now: the current time in seconds.
            max_items: the most items (add + remove) in one message.
            max_bytes: the largest encoded message, in bytes; must hold at least one item.
            rate: FEED_SUBSCRIPTION messages per second.
            burst: messages that may go out at once before pacing starts.
            resend_window: seconds before a BAD_ACTION in which sent batches count as
                possibly rejected (:meth:`bad_action`).

        Raises:
            ValueError: for limits that cannot work, naming the setting.
        """
        if max_items < 1:
            raise ValueError(f"max_batch_items must be >= 1, got {max_items!r}")
        smallest = batch_size([item_size(SubscriptionItem("Quote", "A"))], [])
        if max_bytes < smallest:
            raise ValueError(
                f"max_batch_bytes={max_bytes!r} cannot hold even one item ({smallest} bytes); "
                "use a few KB, e.g. the default 6000 (the server closes with 1009 above its "
                "frame limit, dxFeed's own client uses about 8192)"
            )
        self.max_items = max_items
        """The most items in one message."""
        self.max_bytes = max_bytes
        """The largest encoded message, in bytes."""
        self.configured_rate = rate
        """The rate asked for; :attr:`bucket` may run slower after BAD_ACTION."""
        self.bucket = TokenBucket(rate=rate, capacity=burst, now=now)
        """The message pacer (one token per FEED_SUBSCRIPTION)."""
        self.resend_window = resend_window
        self._pending: dict[str, dict[_ItemKey, tuple[bool, SubscriptionItem, int]]] = {
            "candles": {},
            "events": {},
        }
        self._recent: deque[tuple[float, SubscriptionBatch]] = deque()
        self._slowed_at: float | None = None
        self._turn = 0

    def __len__(self) -> int:
        """The number of items waiting to be sent."""
        return sum(len(queue) for queue in self._pending.values())

    def _queue(self, role: str) -> dict[_ItemKey, tuple[bool, SubscriptionItem, int]]:
        try:
            return self._pending[role]
        except KeyError:
            raise UsageError(f"unknown channel role {role!r}; use 'candles' or 'events'") from None

    def _put(self, role: str, items: Iterable[SubscriptionItem], adding: bool) -> None:
        queue = self._queue(role)
        for item in items:
            size = item_size(item)
            if batch_size([size], []) > self.max_bytes:
                raise ValueError(
                    f"the subscription item for {item.symbol[:60]!r} alone is {size} bytes, "
                    f"more than max_batch_bytes={self.max_bytes}; use a shorter symbol"
                )
            key = (item.type, item.symbol, item.source)
            queue.pop(key, None)  # the newest operation on an item wins, at the back
            queue[key] = (adding, item, size)

    def add(self, role: str, items: Iterable[SubscriptionItem]) -> None:
        """Queue items to add on the channel of ``role``."""
        self._put(role, items, adding=True)

    def remove(self, role: str, items: Iterable[SubscriptionItem]) -> None:
        """Queue items to remove on the channel of ``role``."""
        self._put(role, items, adding=False)

    def _cut(self, role: str) -> SubscriptionBatch:
        """Take the next batch of ``role`` off its queue, within the count and byte limits."""
        queue = self._pending[role]
        add: list[SubscriptionItem] = []
        remove: list[SubscriptionItem] = []
        size = _ENVELOPE
        for adding, item, item_bytes in queue.values():
            if len(add) + len(remove) == self.max_items:
                break
            items = add if adding else remove
            # The first item of a list pays for its key and brackets, later ones for a comma.
            opening = _ADD_OVERHEAD if adding else _REMOVE_OVERHEAD
            grown = size + item_bytes + (1 if items else opening)
            if grown > self.max_bytes and (add or remove):
                break
            items.append(item)
            size = grown
        for item in (*add, *remove):
            del queue[(item.type, item.symbol, item.source)]
        return SubscriptionBatch(role, tuple(add), tuple(remove), size)

    def ready(self, now: float, roles: Collection[str] | None = None) -> list[SubscriptionBatch]:
        """Return the batches that may be sent at ``now`` (and count them as sent).

        Roles take turns, so a huge candle resubscription does not starve the events
        channel. ``roles`` limits which channels may send (e.g. those configured).
        """
        out: list[SubscriptionBatch] = []

        def waiting() -> list[str]:
            return [r for r, q in self._pending.items() if q and (roles is None or r in roles)]

        ready_roles = waiting()
        while ready_roles and self.bucket.delay(1, now) == 0.0:
            role = ready_roles[self._turn % len(ready_roles)]
            self._turn += 1
            self.bucket.take(1, now)
            batch = self._cut(role)
            out.append(batch)
            self._recent.append((now, batch))
            ready_roles = waiting()
        self._forget_before(now - self.resend_window)
        return out

    def next_ready(self, now: float, roles: Collection[str] | None = None) -> float | None:
        """Return when :meth:`ready` will next have a batch for ``roles`` (all if None), or
        None if nothing waits for them."""
        if not any(q for r, q in self._pending.items() if roles is None or r in roles):
            return None
        return now + self.bucket.delay(1, now)

    def _forget_before(self, cutoff: float) -> None:
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()

    def bad_action(self, role: str, now: float) -> list[SubscriptionBatch]:
        """React to BAD_ACTION on the channel of ``role``: slow down, return what to re-send.

        DXLink does not acknowledge subscriptions, so the rejected message cannot be named
        exactly. The batches of ``role`` sent within ``resend_window`` before ``now`` are
        returned (once: they leave the recent list) for the caller to queue again from the
        registry's *current* state. The bucket is emptied and the rate halves (not below
        1 message/s), once per ``resend_window``: one burst rejected message by message
        brings one BAD_ACTION each, and should slow us down once, not ten times.
        """
        self._queue(role)
        self._forget_before(now - self.resend_window)
        affected = [batch for _, batch in self._recent if batch.role == role]
        self._recent = deque(entry for entry in self._recent if entry[1].role != role)
        if self._slowed_at is None or now - self._slowed_at >= self.resend_window:
            self._slowed_at = now
            self.bucket.set_rate(max(MIN_SUBSCRIBE_RATE, self.bucket.rate / 2), now)
        self.bucket.drain(now)
        return affected

    def clear(self) -> None:
        """Drop everything pending and recent (the connection is gone)."""
        for queue in self._pending.values():
            queue.clear()
        self._recent.clear()
