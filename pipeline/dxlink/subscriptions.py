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

Only ``client.py`` imports this module. No I/O, no clock: every method that needs the time
takes ``now`` (seconds).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from pipeline.dxlink.events import SNAPSHOT_BEGIN, SNAPSHOT_END, SNAPSHOT_SNIP
from pipeline.dxlink.symbols import CandleSymbol

__all__ = [
    "CandleSubscription",
    "SnapshotProgress",
    "SubscriptionRegistry",
    "SubscriptionState",
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
        raise ValueError(
            f"from_time must be an int of ms since the epoch (UTC), not {from_time!r}"
        )
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
