"""One connection's candle subscriptions and what the server sends for them.

Pure: no sockets, no clock; every call takes ``now_ms`` (simulated time). The server feeds it
the subscription requests that ``ServerProtocol`` decoded and hands what it returns back to
``SimServerProtocol.send_candle_events``. Snapshots stay columns (``wire.CandleColumns``: bar
rows from the market, no ``Candle`` per event) until they are encoded. References are to
``dxlink-protocol.md``.

What a Candle subscription with ``fromTime`` gets (§6.2):

1. a snapshot, newest candle first: the first event has SNAPSHOT_BEGIN; the last has
   SNAPSHOT_END if a candle starts exactly at ``fromTime``, else a synthetic event at
   ``fromTime`` with SNAPSHOT_END|REMOVE_EVENT (0x0A) follows; with no candle at all the one
   event has flags 14 (SB|SE|RE); past ``history_limit`` candles the last event has
   SNAPSHOT_SNIP and no boundary event follows;
2. then live updates, flags 0: the current candle whenever it changed (conflated: one event per
   candle per round), then the next candle once it has trades;
3. late corrections of candles already sent: the revised candle, or REMOVE_EVENT.

Without ``fromTime`` a subscription gets the latest candle and its updates, no snapshot
(§6.2: "probably behaves like a lasting/ticker event").
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from pipeline.dxlink import (
    REMOVE_EVENT,
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    SNAPSHOT_SNIP,
    Candle,
    CandleSymbol,
    SubscriptionItem,
)
from pipeline.simulator.bars import Bar, bar_to_candle, removal_candle
from pipeline.simulator.generator import FIELDS, Rows
from pipeline.simulator.market import Market
from pipeline.simulator.periods import MINUTE_MS, Period, visible_end
from pipeline.simulator.wire import CandleColumns

__all__ = [
    "EMPTY_SNAPSHOT",
    "SNAPSHOT_BOUNDARY",
    "CandleSubscription",
    "FeedSession",
    "Series",
    "snapshot_chunks",
    "snapshot_columns",
]

CANDLE = "Candle"
# §6.1/§6.2 flag combinations of the synthetic events.
EMPTY_SNAPSHOT = SNAPSHOT_BEGIN | SNAPSHOT_END | REMOVE_EVENT  # 14
SNAPSHOT_BOUNDARY = SNAPSHOT_END | REMOVE_EVENT  # 0x0A
_TRADES = Bar._fields.index("trades")
_PAIRS_PER_BLOCK = 512
_new_bar = functools.partial(tuple.__new__, Bar)  # a Bar from a row, skipping Bar.__new__


@dataclass(frozen=True)
class Series:
    """A candle series the market can serve: ``key`` is the normalised symbol (§5.3)."""

    key: str
    base: str
    period: Period

    @classmethod
    def parse(cls, symbol: str | tuple[str, str]) -> Series:
        """A series from a candle symbol (``AAPL{=5m}``) or a ``(base, period)`` pair.

        Attributes other than the period (``tho=true``, ``price=bid``...) are kept in the key,
        the way the server echoes them, but do not change the simulated trades.

        Raises:
            ValueError: the symbol is malformed, or its period is not simulated (only s, m,
                h, d and w periods are).
        """
        parsed = (
            CandleSymbol.of(*symbol) if isinstance(symbol, tuple) else CandleSymbol.parse(symbol)
        )
        return cls(
            parsed.normalized, parsed.base, Period.of(parsed.period_value, parsed.period_unit)
        )


@dataclass(eq=False)
class CandleSubscription:
    """One subscribed series on one channel, and how far it has been served."""

    series: Series
    from_ms: int | None
    """The requested ``fromTime``; None asks for the latest candle only."""
    served: bool = False
    """True once its snapshot (or first candle) went out; updates follow only then."""
    published_ms: int = 0
    """Simulated time up to which this subscription has been served."""
    oldest_ms: int | None = None
    """The oldest candle time the client may hold: corrections older than this are skipped."""
    live_time: int | None = None
    live_bar: Bar | None = None


def snapshot_chunks(
    series: Series,
    candles: Iterable[tuple[int, Bar]],
    from_ms: int,
    *,
    history_limit: int,
    chunk_size: int,
) -> Iterator[list[Candle]]:
    """The snapshot events (§6.2) for ``candles`` given newest first, in chunks.

    ``snapshot_columns`` on ``(time, Bar)`` pairs, with the events as ``Candle`` tuples.

    Args:
        series: The series; its key is every event's ``eventSymbol``.
        candles: ``(time, bar)`` newest first, all with ``time >= from_ms``.
        from_ms: The subscription's ``fromTime``.
        history_limit: Most real candles to send; beyond it the snapshot is SNIPped.
        chunk_size: Most events per chunk (one FEED_DATA message each).
    """
    pairs = iter(candles)

    def blocks() -> Iterator[tuple[list[int], Rows]]:
        while block := list(islice(pairs, _PAIRS_PER_BLOCK)):
            rows = np.array([bar for _, bar in block], dtype=np.int64)
            yield [time_ms for time_ms, _ in block], rows

    for chunk in snapshot_columns(
        series, blocks(), from_ms, history_limit=history_limit, chunk_size=chunk_size
    ):
        yield list(chunk)


def snapshot_columns(
    series: Series,
    blocks: Iterable[tuple[list[int], Rows]],
    from_ms: int,
    *,
    history_limit: int,
    chunk_size: int,
) -> Iterator[CandleColumns]:
    """The snapshot events (§6.2) for candles given as column blocks, newest first, in chunks.

    1. The first event has SNAPSHOT_BEGIN.
    2. The last real candle has SNAPSHOT_END when it starts exactly at ``from_ms``; else a
       synthetic event at ``from_ms`` with SNAPSHOT_END|REMOVE_EVENT (0x0A) follows.
    3. Past ``history_limit`` candles the last one sent has SNAPSHOT_SNIP and no boundary
       event follows; with no candle at all the one event has flags 14 (SB|SE|RE).

    Args:
        series: The series; its key is every event's ``eventSymbol``.
        blocks: ``(times, rows)`` newest first throughout, all times ``>= from_ms``; read only
            as far as ``history_limit`` needs.
        from_ms: The subscription's ``fromTime``.
        history_limit: Most real candles to send; beyond it the snapshot is SNIPped.
        chunk_size: Most events per chunk (one FEED_DATA message each).
    """
    if chunk_size < 1 or history_limit < 1:
        raise ValueError("chunk_size and history_limit must be at least 1")
    key = series.key
    times: list[int] = []
    parts: list[Rows] = []
    for block_times, block_rows in blocks:
        times += block_times
        parts.append(block_rows)
        if len(times) > history_limit:
            break  # one more than allowed: enough to know the snapshot is snipped
    if not times:
        yield CandleColumns.empty_event(key, from_ms, EMPTY_SNAPSHOT)
        return
    snipped = len(times) > history_limit
    del times[history_limit:]
    rows = (parts[0] if len(parts) == 1 else np.concatenate(parts))[: len(times)]
    flags = [0] * len(times)
    flags[0] = SNAPSHOT_BEGIN
    if snipped:
        flags[-1] |= SNAPSHOT_SNIP
    elif times[-1] == from_ms:
        flags[-1] |= SNAPSHOT_END
    else:
        times.append(from_ms)
        flags.append(SNAPSHOT_BOUNDARY)
        rows = np.concatenate((rows, np.zeros((1, FIELDS), dtype=np.int64)))
    for start in range(0, len(times), chunk_size):
        stop = start + chunk_size
        yield CandleColumns(key, times[start:stop], flags[start:stop], rows[start:stop])


@dataclass
class _Channel:
    subscriptions: dict[str, CandleSubscription] = field(default_factory=dict)


class FeedSession:
    """The candle subscriptions of one connection, per channel, and the events they get.

    Args:
        market: Where the candles come from.
        history_limit: Most candles in one snapshot (then SNAPSHOT_SNIP).
        chunk_size: Most events per FEED_DATA message.
    """

    def __init__(self, market: Market, *, history_limit: int, chunk_size: int = 500) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be at least 1 candle, got {history_limit}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 event, got {chunk_size}")
        self.market = market
        self.history_limit = history_limit
        self.chunk_size = chunk_size
        self._channels: dict[int, _Channel] = {}

    def open_channel(self, channel: int) -> None:
        """Start serving ``channel`` (a FEED channel the server opened)."""
        self._channels[channel] = _Channel()

    def close_channel(self, channel: int) -> None:
        """Forget ``channel`` and its subscriptions (CHANNEL_CANCEL or server close)."""
        self._channels.pop(channel, None)

    def subscriptions(self) -> dict[int, dict[str, int | None]]:
        """Channel -> series key -> fromTime, for every current subscription."""
        return {
            number: {key: sub.from_ms for key, sub in channel.subscriptions.items()}
            for number, channel in self._channels.items()
        }

    def served_count(self) -> int:
        """How many current subscriptions have had their snapshot (or first candle) served."""
        return sum(
            sub.served
            for channel in self._channels.values()
            for sub in channel.subscriptions.values()
        )

    def subscription(self, channel: int, key: str) -> CandleSubscription | None:
        """The current subscription of ``key`` on ``channel``, if any."""
        known = self._channels.get(channel)
        return None if known is None else known.subscriptions.get(key)

    def apply(
        self,
        channel: int,
        *,
        add: Iterable[SubscriptionItem] = (),
        remove: Iterable[SubscriptionItem] = (),
        reset: bool = False,
        now_ms: int | None = None,
    ) -> tuple[list[CandleSubscription], list[str]]:
        """Apply a FEED_SUBSCRIPTION: reset, then remove, then add (§2.3).

        Adding a series again replaces it, with a new snapshot (§6.2). Non-Candle items are
        ignored (the simulator serves candles only), as are symbols the market cannot serve.
        Given ``now_ms``, the market draws the added series' current candles in one batch
        (``Market.prepare``) rather than one series at a time as their snapshots are served.

        Returns:
            The new subscriptions (each needs ``serve``), and a note per ignored item.
        """
        known = self._channels.get(channel)
        if known is None:
            raise ValueError(f"channel {channel} is not open in this session")
        if reset:
            known.subscriptions.clear()
        ignored: list[str] = []
        for item in remove:
            series = self._series(item, ignored)
            if series is not None:
                known.subscriptions.pop(series.key, None)
        added: list[CandleSubscription] = []
        for item in add:
            series = self._series(item, ignored)
            if series is not None:
                subscription = CandleSubscription(series, item.from_time)
                known.subscriptions[series.key] = subscription
                added.append(subscription)
        if now_ms is not None and added:
            self._prepare(added, now_ms)
        return added, ignored

    def _prepare(self, subscriptions: Iterable[CandleSubscription], now_ms: int) -> None:
        """Have the market draw what serving ``subscriptions`` at ``now_ms`` takes, in one
        batch (``Market.prepare``): one draw per symbol costs the same as one for hundreds."""
        oldest: dict[str, int] = {}
        for subscription in subscriptions:
            since = now_ms if subscription.from_ms is None else subscription.from_ms
            base = subscription.series.base
            oldest[base] = min(since, oldest.get(base, since))
        self.market.prepare(oldest, now_ms)

    def _series(self, item: SubscriptionItem, ignored: list[str]) -> Series | None:
        if item.type != CANDLE:
            ignored.append(f"{item.type} {item.symbol}: only Candle events are simulated")
            return None
        try:
            return Series.parse(item.symbol)
        except ValueError as exc:
            ignored.append(f"{item.symbol}: {exc}")
            return None

    def serve(self, subscription: CandleSubscription, now_ms: int) -> Iterator[CandleColumns]:
        """The first events of a new subscription at ``now_ms``: its snapshot, in chunks.

        Marks the subscription served up to ``now_ms``; later changes come from ``updates``.
        """
        series = subscription.series
        subscription.published_ms = now_ms
        subscription.served = True
        market = self.market
        from_ms = subscription.from_ms
        if not market.trades(series.base):
            return  # §6.2: unknown symbols get no error, just silence
        if not market.prepared(series.base, now_ms):
            # A new minute since the subscriptions came in: draw it for all that wait.
            waiting = (
                sub
                for channel in self._channels.values()
                for sub in channel.subscriptions.values()
                if not sub.served or sub is subscription
            )
            self._prepare(waiting, now_ms)
        if from_ms is None:
            latest = market.latest_bars(series.base, series.period, 0, now_ms, 1)[0]
            if latest:
                time_ms, bar = latest[0]
                subscription.oldest_ms = subscription.live_time = time_ms
                subscription.live_bar = bar
                yield CandleColumns(series.key, [time_ms], [0], np.array([bar], dtype=np.int64))
            return
        subscription.oldest_ms = from_ms
        newest: Bar | None = None
        newest_time = from_ms
        for chunk in snapshot_columns(
            series,
            market.latest_blocks(series.base, series.period, from_ms, now_ms),
            from_ms,
            history_limit=self.history_limit,
            chunk_size=self.chunk_size,
        ):
            if newest is None and chunk.rows[0, _TRADES]:
                newest_time, newest = chunk.times[0], _new_bar(chunk.rows[0].tolist())
            yield chunk
        if newest is not None:
            subscription.live_time, subscription.live_bar = newest_time, newest

    def updates(self, channel: int, now_ms: int) -> list[Candle]:
        """Everything that changed on ``channel``'s served subscriptions up to ``now_ms``."""
        known = self._channels.get(channel)
        if known is None:
            return []
        due = [
            subscription
            for subscription in known.subscriptions.values()
            if subscription.served and now_ms > subscription.published_ms
        ]
        # One batch of new splits for every symbol's new minute, not one draw per symbol.
        self.market.prepare(dict.fromkeys((sub.series.base for sub in due), now_ms), now_ms)
        # And one aggregation for every live candle that changed the same way.
        alike: dict[tuple[Period, int], list[str]] = {}
        for sub in due:
            first = _first_changed(sub, sub.published_ms, now_ms)
            if first is not None:
                alike.setdefault((sub.series.period, first), []).append(sub.series.base)
        for (period, first), bases in alike.items():
            if len(bases) > 1:
                self.market.fill_round_bars(bases, period, first, now_ms)
        events: list[Candle] = []
        for subscription in due:
            events.extend(self._subscription_updates(subscription, now_ms))
        return events

    def _subscription_updates(self, sub: CandleSubscription, now_ms: int) -> list[Candle]:
        series = sub.series
        period = series.period
        base = series.base
        market = self.market
        previous_ms = sub.published_ms
        sub.published_ms = now_ms
        changed: dict[int, Bar | None] = {}
        # Newly visible trades: the candle that was live, and any that started since.
        first = _first_changed(sub, previous_ms, now_ms)
        if first is not None:
            for time_ms, bar in market.round_bars(base, period, first, now_ms + 1, now_ms):
                if time_ms == sub.live_time and bar == sub.live_bar:
                    continue
                changed[time_ms] = bar
        # §6.4: late corrections of candles the client may already hold.
        for fix in market.corrections_published(base, previous_ms, now_ms):
            time_ms = period.start_of(fix.minute_ms)
            last = period.start_of(fix.minute_ms + MINUTE_MS - 1)
            while time_ms <= last:
                if sub.oldest_ms is not None and time_ms >= sub.oldest_ms:
                    end = time_ms + period.length_ms
                    before = market.bar(base, time_ms, end, fix.published_ms - 1)
                    after = market.bar(base, time_ms, end, now_ms)
                    if before != after:
                        changed[time_ms] = after
                time_ms += period.length_ms
        events: list[Candle] = []
        for time_ms in sorted(changed):
            updated = changed[time_ms]
            if updated is None:
                events.append(removal_candle(series.key, time_ms))
            else:
                events.append(bar_to_candle(series.key, time_ms, updated))
            if sub.live_time is None or time_ms >= sub.live_time:
                sub.live_time, sub.live_bar = time_ms, updated
        if sub.live_time is not None and sub.oldest_ms is None:
            sub.oldest_ms = sub.live_time
        return events


def _first_changed(sub: CandleSubscription, previous_ms: int, now_ms: int) -> int | None:
    """The first candle time that trades visible since ``previous_ms`` may have changed
    (the candle that was live, and any that started since); None when nothing new is visible."""
    seen_end = visible_end(previous_ms)
    if visible_end(now_ms) <= seen_end:
        return None
    first = sub.series.period.start_of(seen_end)
    if sub.live_time is not None and sub.live_time < first:
        first = sub.live_time
    if sub.oldest_ms is not None:
        first = max(first, sub.oldest_ms)
    return first
