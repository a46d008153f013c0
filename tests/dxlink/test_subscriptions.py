"""The subscription registry, validation, batching by count and bytes, and pacing; no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.dxlink import (
    REMOVE_EVENT,
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    SNAPSHOT_SNIP,
    CandleSymbol,
    SubscriptionItem,
    TokenBucket,
    UsageError,
    encode,
)
from pipeline.dxlink.message_models import FeedSubscription
from pipeline.dxlink.subscriptions import (
    DEFAULT_MAX_BATCH_BYTES,
    SnapshotProgress,
    SubscriptionBatch,
    SubscriptionPacer,
    SubscriptionRegistry,
    SubscriptionState,
    batch_size,
    item_size,
    validate_event_type,
    validate_from_time,
    validate_symbol,
)

NOW_MS = 1_756_300_000_000  # 2025-08-27T13:06:40Z
T0 = 1_756_252_800_000  # 2025-08-27T00:00Z

PENDING, SNAPSHOT, LIVE = SubscriptionState


def aapl_5m() -> CandleSymbol:
    return CandleSymbol.of("AAPL", "5m")


# Regular subscriptions.


def test_regular_add_is_idempotent_and_reports_only_new_pairs() -> None:
    """Adding an existing (type, symbol) is a no-op; the return value lists only new ones."""
    registry = SubscriptionRegistry()
    assert registry.add_regular("Quote", ["AAPL", "SPY", "AAPL"]) == [
        ("Quote", "AAPL"),
        ("Quote", "SPY"),
    ]
    assert registry.add_regular("Quote", ["SPY", " QQQ "]) == [("Quote", "QQQ")]
    assert set(registry.regular) == {("Quote", "AAPL"), ("Quote", "SPY"), ("Quote", "QQQ")}
    assert registry.add_regular("Trade", ["AAPL"]) == [("Trade", "AAPL")]


def test_regular_remove_reports_what_was_there() -> None:
    """Removing returns only pairs that existed; removing again is a no-op."""
    registry = SubscriptionRegistry()
    registry.add_regular("Quote", ["AAPL", "SPY"])
    assert registry.remove_regular("Quote", ["AAPL", "MSFT"]) == [("Quote", "AAPL")]
    assert registry.remove_regular("Quote", ["AAPL"]) == []
    assert ("Quote", "SPY") in registry.regular and len(registry.regular) == 1


def test_regular_add_with_one_bad_symbol_adds_nothing() -> None:
    """Validation happens before any change, so a bad batch leaves the registry untouched."""
    registry = SubscriptionRegistry()
    with pytest.raises(ValueError, match="not a symbol"):
        registry.add_regular("Quote", ["AAPL", "BAD SYMBOL"])
    assert len(registry) == 0


def test_views_are_read_only_and_live() -> None:
    """`regular` and `candles` reflect changes but cannot be mutated through the view."""
    registry = SubscriptionRegistry()
    regular, candles = registry.regular, registry.candles
    registry.add_regular("Quote", ["AAPL"])
    registry.add_candle(aapl_5m(), T0, now=1.0)
    assert ("Quote", "AAPL") in regular and "AAPL{=5m}" in candles
    assert not hasattr(regular, "add")
    with pytest.raises(TypeError):
        candles["X{=m}"] = candles["AAPL{=5m}"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("event_type", "message"),
    [
        ("Candle", "use subscribe_to_candles"),
        ("", "not a dxFeed event type"),
        ("Quote!", "not a dxFeed event type"),
    ],
)
def test_event_type_validation(event_type: str, message: str) -> None:
    """Bad event types (and Candle, which needs fromTime) are refused with the fix named."""
    with pytest.raises(ValueError, match=message):
        validate_event_type(event_type)


@pytest.mark.parametrize(
    ("symbol", "message"),
    [("", "not a symbol"), ("A B", "not a symbol"), ("AAPL{=5m}", "subscribe_to_candles")],
)
def test_symbol_validation(symbol: str, message: str) -> None:
    """Empty symbols, spaces and candle syntax are refused with a clear message."""
    with pytest.raises(ValueError, match=message):
        validate_symbol(symbol)


# Candle subscriptions.


def test_candle_add_keys_by_normalised_symbol() -> None:
    """`AAPL{=1d}` and `AAPL{=d}` are one series; its metadata records fromTime and added_at."""
    registry = SubscriptionRegistry()
    added = registry.add_candle(CandleSymbol.parse("AAPL{=1d}"), T0, now=5.0)
    assert added is not None and added.key == "AAPL{=d}"
    assert registry.add_candle(CandleSymbol.parse("AAPL{=d}"), T0, now=6.0) is None
    meta = registry.candles["AAPL{=d}"]
    assert (meta.from_time, meta.added_at, meta.state, meta.sent_from) == (T0, 5.0, PENDING, None)


def test_candle_re_add_with_new_from_time_replaces_it() -> None:
    """§2.3: the same series with a new fromTime replaces the old one and restarts it."""
    registry = SubscriptionRegistry()
    registry.add_candle(aapl_5m(), T0, now=1.0)
    registry.sent("AAPL{=5m}", T0)
    registry.observe("AAPL{=5m}", SNAPSHOT_BEGIN | SNAPSHOT_END)
    changed = registry.add_candle(aapl_5m(), T0 - 60_000, now=2.0)
    assert changed is not None
    assert (changed.from_time, changed.added_at, changed.state) == (T0 - 60_000, 2.0, PENDING)
    assert len(registry.candles) == 1


def test_candle_remove_is_idempotent() -> None:
    """Removing returns the subscription once, then None."""
    registry = SubscriptionRegistry()
    registry.add_candle(aapl_5m(), T0, now=1.0)
    removed = registry.remove_candle("AAPL{=5m}")
    assert removed is not None and removed.from_time == T0
    assert registry.remove_candle("AAPL{=5m}") is None
    assert len(registry) == 0


@pytest.mark.parametrize(
    ("flags_seen", "state", "snipped"),
    [
        ([SNAPSHOT_BEGIN], SNAPSHOT, False),
        ([SNAPSHOT_BEGIN, 0, 0, SNAPSHOT_END], LIVE, False),
        ([SNAPSHOT_BEGIN, SNAPSHOT_SNIP], LIVE, True),
        ([SNAPSHOT_BEGIN | SNAPSHOT_END | REMOVE_EVENT], LIVE, False),  # empty snapshot, 14
        ([SNAPSHOT_END], PENDING, False),  # an END without a BEGIN starts nothing
    ],
)
def test_observe_tracks_snapshot_progress(flags_seen: list[int], state: str, snipped: bool) -> None:
    """eventFlags move a series pending → snapshot → live (§6.1, §6.2)."""
    registry = SubscriptionRegistry()
    registry.add_candle(aapl_5m(), T0, now=1.0)
    changes = [registry.observe("AAPL{=5m}", flags) for flags in flags_seen]
    assert registry.candles["AAPL{=5m}"].state == state
    last = [c for c in changes if c is not None]
    if state is LIVE:
        assert last[-1] == SnapshotProgress("AAPL{=5m}", LIVE, snipped=snipped)


def test_observe_ignores_series_not_in_the_registry() -> None:
    """Data for a series removed while in flight changes nothing."""
    assert SubscriptionRegistry().observe("AAPL{=5m}", SNAPSHOT_BEGIN) is None


def test_on_disconnect_resets_progress_but_keeps_subscriptions() -> None:
    """After a disconnect every series is pending again, with no fromTime sent."""
    registry = SubscriptionRegistry()
    registry.add_regular("Quote", ["AAPL"])
    registry.add_candle(aapl_5m(), T0, now=1.0)
    registry.sent("AAPL{=5m}", T0 + 1)
    registry.observe("AAPL{=5m}", SNAPSHOT_BEGIN | SNAPSHOT_END)
    registry.on_disconnect()
    meta = registry.candles["AAPL{=5m}"]
    assert (meta.state, meta.sent_from, meta.from_time) == (PENDING, None, T0)
    assert len(registry) == 2


def test_resume_from_uses_resume_points_but_never_before_the_request() -> None:
    """A resume point wins when later than fromTime; missing or None falls back to fromTime."""
    registry = SubscriptionRegistry()
    for base in ("A", "B", "C", "D"):
        registry.add_candle(CandleSymbol.of(base, "1m"), T0, now=1.0)
    got = registry.resume_from({"A{=m}": T0 + 600_000, "B{=m}": T0 - 600_000, "C{=m}": None})
    assert got == {"A{=m}": T0 + 600_000, "B{=m}": T0, "C{=m}": T0, "D{=m}": T0}


def test_counts_by_kind_and_state() -> None:
    """counts() reports regular and candle totals and candle series per state."""
    registry = SubscriptionRegistry()
    registry.add_regular("Quote", ["AAPL", "SPY"])
    registry.add_candle(aapl_5m(), T0, now=1.0)
    registry.add_candle(CandleSymbol.of("SPY", "1d"), T0, now=1.0)
    registry.observe("SPY{=d}", SNAPSHOT_BEGIN)
    assert registry.counts() == {
        "regular": 2,
        "candles": 2,
        "candles_by_state": {"pending": 1, "snapshot": 1, "live": 0},
    }


# fromTime validation.


def test_from_time_in_ms_passes() -> None:
    """A plausible ms timestamp in the past comes back unchanged."""
    assert validate_from_time(T0, NOW_MS) == T0


def test_from_time_in_seconds_is_refused_with_the_ms_value() -> None:
    """A value < 1e11 is almost surely seconds: the error says so and gives the ms value."""
    with pytest.raises(ValueError, match=r"looks like seconds.*use 1756252800000"):
        validate_from_time(1_756_252_800, NOW_MS)


def test_from_time_in_the_future_is_refused() -> None:
    """History runs from fromTime to now, so a future fromTime is an error."""
    with pytest.raises(ValueError, match="in the future"):
        validate_from_time(NOW_MS + 3_600_000, NOW_MS)


def test_from_time_accepts_aware_datetimes_only() -> None:
    """An aware datetime converts to ms; a naive one is refused as ambiguous."""
    aware = datetime(2025, 8, 27, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    assert validate_from_time(aware, NOW_MS) == T0
    assert validate_from_time(datetime(2025, 8, 27, tzinfo=UTC), NOW_MS) == T0
    with pytest.raises(ValueError, match="no time zone"):
        validate_from_time(datetime(2025, 8, 27), NOW_MS)


@pytest.mark.parametrize("bad", [True, 1.5e12, "1756252800000", -5])
def test_from_time_rejects_non_integers_and_negatives(bad: object) -> None:
    """Booleans, floats, strings and negative numbers are refused with a clear message."""
    with pytest.raises(ValueError, match="from_time"):
        validate_from_time(bad, NOW_MS)  # type: ignore[arg-type]


# Token bucket.


def test_token_bucket_allows_a_burst_then_paces_at_the_rate() -> None:
    """A full bucket lets `capacity` tokens go at once; later ones wait 1/rate each."""
    bucket = TokenBucket(rate=10.0, capacity=5.0, now=100.0)
    for _ in range(5):
        assert bucket.delay(1, 100.0) == 0.0
        bucket.take(1, 100.0)
    assert bucket.delay(1, 100.0) == pytest.approx(0.1)
    assert bucket.delay(1, 100.05) == pytest.approx(0.05)
    assert bucket.delay(1, 100.1) == pytest.approx(0.0, abs=1e-9)


def test_token_bucket_never_holds_more_than_capacity() -> None:
    """A long idle time refills only up to `capacity`."""
    bucket = TokenBucket(rate=1.0, capacity=3.0, now=0.0)
    bucket.take(3, 0.0)
    assert bucket.tokens(1_000.0) == 3.0


def test_token_bucket_oversized_cost_waits_for_a_full_bucket_then_owes() -> None:
    """A cost above capacity waits for a full bucket and leaves a debt that later spends repay."""
    bucket = TokenBucket(rate=2.0, capacity=4.0, now=0.0)
    assert bucket.delay(10, 0.0) == 0.0
    bucket.take(10, 0.0)
    assert bucket.tokens(0.0) == -6.0
    assert bucket.delay(1, 0.0) == pytest.approx(3.5)


def test_token_bucket_slow_down_and_drain() -> None:
    """After `drain` and a lower rate, the next token takes 1/new_rate seconds."""
    bucket = TokenBucket(rate=10.0, capacity=10.0, now=0.0)
    bucket.set_rate(2.0, 0.0)
    bucket.drain(0.0)
    assert bucket.delay(1, 0.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("rate", "capacity", "message"),
    [(0.0, 1.0, "rate must be > 0"), (1.0, 0.5, "capacity must be >= 1")],
)
def test_token_bucket_rejects_bad_settings(rate: float, capacity: float, message: str) -> None:
    """A zero rate or a capacity below one token is refused with a clear message."""
    with pytest.raises(ValueError, match=message):
        TokenBucket(rate=rate, capacity=capacity, now=0.0)


@given(
    st.lists(st.tuples(st.floats(0, 5), st.floats(0.1, 3)), min_size=1, max_size=40),
    st.floats(0.5, 50),
    st.floats(1, 20),
)
def test_token_bucket_honours_the_rate_over_any_schedule(
    steps: list[tuple[float, float]], rate: float, capacity: float
) -> None:
    """Spending only when `delay` says 0 never exceeds capacity + rate * elapsed."""
    bucket = TokenBucket(rate=rate, capacity=capacity, now=0.0)
    now = 0.0
    spent = 0.0
    for gap, cost in steps:
        now += gap
        now += bucket.delay(cost, now)
        bucket.take(cost, now)
        spent += cost
        assert spent <= capacity + rate * now + max(cost for _, cost in steps) + 1e-6


# Batching and pacing.


def candle_item(n: int, from_time: int = T0) -> SubscriptionItem:
    return SubscriptionItem("Candle", f"SYM{n:05d}{{=5m}}", from_time=from_time)


def encoded(batch: SubscriptionBatch, channel: int = 1) -> int:
    message = FeedSubscription(channel=channel, add=batch.add, remove=batch.remove)
    return len(encode(message).encode())


def drain(pacer: SubscriptionPacer, now: float = 0.0) -> list[SubscriptionBatch]:
    """Take every batch, advancing a fake clock as the pacer asks (no sleeping)."""
    batches: list[SubscriptionBatch] = []
    while (when := pacer.next_ready(now)) is not None:
        now = when
        batches.extend(pacer.ready(now))
    return batches


def test_item_and_batch_sizes_match_the_encoder_exactly() -> None:
    """`size` equals the encoded FEED_SUBSCRIPTION bytes for a five-digit channel."""
    pacer = SubscriptionPacer(now=0.0, rate=1e6, burst=1e6)
    pacer.add("candles", [candle_item(n) for n in range(7)])
    pacer.remove("candles", [candle_item(n) for n in range(100, 103)])
    (batch,) = drain(pacer)
    assert batch.size == encoded(batch, channel=99_999)
    assert batch_size([item_size(i) for i in batch.add], [item_size(i) for i in batch.remove]) == (
        batch.size
    )


@pytest.mark.parametrize(("max_items", "max_bytes"), [(500, 6_000), (50, 100_000), (7, 300)])
def test_batches_respect_count_and_byte_limits(max_items: int, max_bytes: int) -> None:
    """Every batch holds at most `max_items` items and encodes to at most `max_bytes`."""
    pacer = SubscriptionPacer(now=0.0, max_items=max_items, max_bytes=max_bytes, rate=1e6)
    items = [candle_item(n) for n in range(2_000)]
    pacer.add("candles", items)
    batches = drain(pacer)
    assert [i for b in batches for i in b.add] == items
    for batch in batches:
        assert len(batch.add) <= max_items
        assert encoded(batch) <= encoded(batch, channel=99_999) == batch.size <= max_bytes


def test_ten_thousand_series_go_out_in_full_frames_well_under_8kb() -> None:
    """10,000 candle series with the defaults: every frame < 6 KB, none wasted, ~110 frames."""
    pacer = SubscriptionPacer(now=0.0)
    for n in range(10_000):  # one call per series, as a naive caller would
        pacer.add("candles", [candle_item(n)])
    batches = drain(pacer)
    assert sum(len(b.add) for b in batches) == 10_000
    assert max(encoded(b) for b in batches) <= DEFAULT_MAX_BATCH_BYTES < 8_192
    one_more = item_size(candle_item(0)) + 1
    assert all(b.size + one_more > DEFAULT_MAX_BATCH_BYTES for b in batches[:-1])
    assert len(batches) < 120


def test_pacing_follows_the_token_bucket() -> None:
    """A burst goes at once, then one message per 1/rate seconds."""
    pacer = SubscriptionPacer(now=0.0, max_items=1, rate=10.0, burst=3.0)
    pacer.add("candles", [candle_item(n) for n in range(5)])
    assert len(pacer.ready(0.0)) == 3
    assert pacer.ready(0.0) == []
    assert pacer.next_ready(0.0) == pytest.approx(0.1)
    assert len(pacer.ready(0.1)) == 1
    assert len(pacer.ready(0.2)) == 1
    assert pacer.next_ready(0.2) is None and len(pacer) == 0


def test_later_operation_on_an_item_replaces_the_earlier_one() -> None:
    """Add then remove of one item before sending goes out as a single remove."""
    pacer = SubscriptionPacer(now=0.0)
    pacer.add("candles", [candle_item(1), candle_item(2)])
    pacer.remove("candles", [candle_item(1)])
    (batch,) = pacer.ready(0.0)
    assert batch.add == (candle_item(2),) and batch.remove == (candle_item(1),)


def test_ready_and_next_ready_can_be_limited_to_some_roles() -> None:
    """Items of a channel that is not usable yet neither go out nor make the caller wake."""
    pacer = SubscriptionPacer(now=0.0)
    pacer.add("candles", [candle_item(1)])
    assert pacer.next_ready(0.0, {"events"}) is None
    assert pacer.ready(0.0, {"events"}) == []
    assert pacer.next_ready(0.0, {"candles"}) == 0.0
    assert [b.role for b in pacer.ready(0.0, {"candles"})] == ["candles"]


def test_roles_take_turns() -> None:
    """A long candle queue does not starve the events channel."""
    pacer = SubscriptionPacer(now=0.0, max_items=1, rate=1.0, burst=2.0)
    pacer.add("candles", [candle_item(n) for n in range(10)])
    pacer.add("events", [SubscriptionItem("Quote", "AAPL")])
    assert sorted(b.role for b in pacer.ready(0.0)) == ["candles", "events"]


def test_bad_action_returns_recent_batches_once_and_slows_down() -> None:
    """BAD_ACTION hands back the role's recent batches once and halves the rate."""
    pacer = SubscriptionPacer(now=0.0, max_items=1, rate=20.0, burst=5.0, resend_window=1.0)
    pacer.add("candles", [candle_item(n) for n in range(3)])
    pacer.add("events", [SubscriptionItem("Quote", "AAPL")])
    sent = pacer.ready(0.0)
    assert len(sent) == 4
    affected = pacer.bad_action("candles", 0.5)
    assert [b.add for b in affected] == [b.add for b in sent if b.role == "candles"]
    assert pacer.bad_action("candles", 0.5) == []
    assert pacer.bucket.rate == 10.0 and pacer.bucket.delay(1, 0.5) == pytest.approx(0.1)
    for n in range(10):  # one halving per resend window, down to the floor
        pacer.bad_action("events", 1.5 + n)
    assert pacer.bucket.rate == 1.0


def test_bad_action_forgets_batches_outside_the_window() -> None:
    """Batches sent longer ago than `resend_window` are not re-sent."""
    pacer = SubscriptionPacer(now=0.0, max_items=1, burst=5.0, resend_window=1.0)
    pacer.add("candles", [candle_item(1)])
    pacer.ready(0.0)
    assert pacer.bad_action("candles", 1.5) == []


def test_clear_drops_pending_and_recent() -> None:
    """After a disconnect nothing is left to send or to re-send."""
    pacer = SubscriptionPacer(now=0.0, max_items=1, burst=1.0)
    pacer.add("candles", [candle_item(n) for n in range(3)])
    pacer.ready(0.0)
    pacer.clear()
    assert len(pacer) == 0 and pacer.next_ready(0.0) is None
    assert pacer.bad_action("candles", 0.1) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_items": 0}, "max_batch_items must be >= 1"), ({"max_bytes": 40}, "cannot hold")],
)
def test_pacer_rejects_unworkable_limits(kwargs: dict[str, int], message: str) -> None:
    """Limits that cannot carry a single item are refused with the setting named."""
    with pytest.raises(ValueError, match=message):
        SubscriptionPacer(now=0.0, **kwargs)


def test_pacer_rejects_an_item_larger_than_a_frame() -> None:
    """An absurdly long symbol is refused at queue time, not sent as an oversized frame."""
    pacer = SubscriptionPacer(now=0.0, max_bytes=200)
    with pytest.raises(ValueError, match="alone is"):
        pacer.add("candles", [SubscriptionItem("Candle", "X" * 300, from_time=T0)])


def test_pacer_rejects_unknown_roles() -> None:
    """Only the 'candles' and 'events' channels exist; anything else is a caller bug."""
    with pytest.raises(UsageError, match="unknown channel role"):
        SubscriptionPacer(now=0.0).add("quotes", [SubscriptionItem("Quote", "A")])
