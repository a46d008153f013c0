"""Tests for pipeline/simulator/market.py: a deterministic market whose periods all agree."""

from __future__ import annotations

import pytest

from pipeline.simulator import Market, MarketConfig, Period
from pipeline.simulator.bars import Bar, bar_to_candle, check_bar, combine
from pipeline.simulator.periods import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    SECOND_MS,
    WEEK_MS,
    WEEK_ORIGIN_MS,
    visible_end,
)

START = 1_756_252_800_000  # Wed 2025-08-27T00:00Z
NOW = START + 3 * DAY_MS + 7 * HOUR_MS + 30 * MINUTE_MS + 15 * SECOND_MS + 250
M1, M5, H1, D1, S1 = (Period.of(1, "m"), Period.of(5, "m"), Period.of(1, "h"),
                      Period.of(1, "d"), Period.of(1, "s"))  # fmt: skip


def bars_of(
    market: Market, period: Period, start: int, end: int, symbol: str = "AAPL"
) -> dict[int, Bar]:
    return dict(market.candle_bars(symbol, period, start, end, NOW))


def test_period_of_units_and_week_alignment() -> None:
    """Periods are fixed lengths; weeks start on Monday 00:00 UTC."""
    assert Period.of(5, "m") == Period(300_000)
    assert Period.of(1.5, "h").length_ms == 5_400_000
    week = Period.of(1, "w")
    assert week.offset_ms == WEEK_ORIGIN_MS
    assert week.start_of(START) == START - 2 * DAY_MS  # Wed -> Mon 2025-08-25
    assert M5.start_of(START + 7 * MINUTE_MS) == START + 5 * MINUTE_MS


@pytest.mark.parametrize(("value", "unit", "problem"), [(1, "t", "not simulated"),
                                                         (1, "mo", "not simulated"),
                                                         (0.5, "s", "whole number")])  # fmt: skip
def test_period_of_rejects_what_is_not_simulated(value: float, unit: str, problem: str) -> None:
    """Tick, month and sub-second periods are refused with the reason."""
    with pytest.raises(ValueError, match=problem):
        Period.of(value, unit)


def test_same_seed_same_market_across_restarts() -> None:
    """Two markets with one seed serve identical candles, whatever the query order."""
    first = Market(MarketConfig(seed=7))
    second = Market(MarketConfig(seed=7))
    later = bars_of(second, M1, START + DAY_MS, START + DAY_MS + HOUR_MS)
    assert bars_of(first, M1, START + DAY_MS, START + DAY_MS + HOUR_MS) == later
    assert bars_of(first, D1, START - 20 * DAY_MS, START) == bars_of(
        second, D1, START - 20 * DAY_MS, START
    )


def test_different_seeds_and_symbols_differ() -> None:
    """Seed and symbol both change the trades."""
    one = bars_of(Market(MarketConfig(seed=1)), H1, START, START + DAY_MS)
    assert one != bars_of(Market(MarketConfig(seed=2)), H1, START, START + DAY_MS)
    assert one != bars_of(Market(MarketConfig(seed=1)), H1, START, START + DAY_MS, "MSFT")


@pytest.mark.parametrize(
    ("coarse", "fine", "span"),
    [
        (M5, M1, 2 * HOUR_MS),
        (H1, M1, 3 * HOUR_MS),
        (D1, H1, 3 * DAY_MS),
        (M1, S1, 10 * MINUTE_MS),
        (Period.of(1, "w"), D1, 3 * WEEK_MS),
        (Period.of(90, "s"), S1, 15 * MINUTE_MS),
    ],
)
def test_every_period_is_the_aggregate_of_finer_ones(
    coarse: Period, fine: Period, span: int
) -> None:
    """A coarse candle equals the exact aggregate of the fine candles it covers."""
    market = Market()
    start = coarse.start_of(START - span)
    fine_bars = bars_of(market, fine, start, start + span)
    coarse_bars = bars_of(market, coarse, start, start + span)
    assert coarse_bars
    for time_ms, bar in coarse_bars.items():
        check_bar(bar)
        parts = [
            fine_bars.get(t) for t in range(time_ms, time_ms + coarse.length_ms, fine.length_ms)
        ]
        assert combine(parts) == bar


def test_candle_vwap_is_the_volume_weighted_mean_of_its_parts() -> None:
    """At the Candle level, 5m vwap = sum(vwap_i * volume_i) / sum(volume_i) of its 1m candles."""
    market = Market()
    minutes = bars_of(market, M1, START, START + 5 * MINUTE_MS)
    five = bar_to_candle("X{=5m}", START, bars_of(market, M5, START, START + 5 * MINUTE_MS)[START])
    ones = [bar_to_candle("X{=m}", t, bar) for t, bar in minutes.items()]
    assert five.volume == sum(c.volume for c in ones)
    assert five.count == sum(c.count for c in ones)
    assert five.vwap == pytest.approx(sum(c.vwap * c.volume for c in ones) / five.volume, rel=1e-12)


def test_trades_become_visible_when_their_second_ends() -> None:
    """On a minute boundary the minute before is complete and the next has not begun."""
    market = Market()
    boundary = START + 10 * MINUTE_MS
    at_boundary = dict(market.candle_bars("AAPL", M1, START, boundary + HOUR_MS, boundary))
    assert max(at_boundary) == boundary - MINUTE_MS
    assert (
        at_boundary[boundary - MINUTE_MS]
        == bars_of(market, M1, START, boundary)[boundary - MINUTE_MS]
    )
    halfway = boundary + 30 * SECOND_MS + 400
    live = dict(market.candle_bars("AAPL", M1, boundary, boundary + MINUTE_MS, halfway))[boundary]
    seconds = dict(market.candle_bars("AAPL", S1, boundary, boundary + MINUTE_MS, halfway))
    assert max(seconds) == boundary + 29 * SECOND_MS
    assert live == combine(seconds.values())
    assert visible_end(halfway) == boundary + 30 * SECOND_MS


def test_latest_bars_newest_first_with_a_limit() -> None:
    """The newest candles come first; past the limit the result says older ones exist."""
    market = Market()
    newest, snipped = market.latest_bars("AAPL", M1, START, NOW, 100)
    assert len(newest) == 100 and snipped
    times = [t for t, _ in newest]
    assert times == sorted(times, reverse=True)
    assert times[0] == M1.start_of(NOW)  # the live candle leads
    recent = NOW - 10 * MINUTE_MS
    few, cut = market.latest_bars("AAPL", M1, M1.start_of(recent), NOW, 100)
    assert not cut and len(few) == 11


def test_quiet_periods_leave_gaps() -> None:
    """With quiet_fraction, some minutes have no trades and so no candle."""
    market = Market(MarketConfig(quiet_fraction=0.3))
    days = bars_of(market, D1, START - 30 * DAY_MS, START)
    assert 0 < len(days) < 30  # whole days are quiet too
    start = max(days)
    minutes = bars_of(market, M1, start, start + 3 * HOUR_MS)
    assert 0 < len(minutes) < 180
    hours = bars_of(market, H1, start, start + 3 * HOUR_MS)
    for time_ms, bar in hours.items():
        assert combine(minutes.get(t) for t in range(time_ms, time_ms + HOUR_MS, MINUTE_MS)) == bar


def test_only_configured_symbols_trade() -> None:
    """A symbol outside MarketConfig.symbols has no candles at all."""
    market = Market(MarketConfig(symbols=frozenset({"AAPL"})))
    assert market.trades("AAPL") and not market.trades("MSFT")
    assert bars_of(market, M1, START, START + HOUR_MS, "MSFT") == {}
    assert market.latest_bars("MSFT", M1, START, NOW, 10) == ([], False)


def test_corrections_revise_or_remove_a_past_minute_in_every_period() -> None:
    """After a correction is published, the corrected minute and every candle over it change."""
    market = Market(MarketConfig(correction_rate=1.0, correction_remove_fraction=0.5))
    fixes = market.corrections_published("AAPL", START, START + 6 * HOUR_MS)
    assert len(fixes) == 6
    assert any(fix.removes for fix in fixes) and not all(fix.removes for fix in fixes)
    for fix in fixes:
        minute = fix.minute_ms
        assert fix.published_ms - 11 * MINUTE_MS <= minute <= fix.published_ms - MINUTE_MS
        before = market.bar("AAPL", minute, minute + MINUTE_MS, fix.published_ms - 1)
        after = market.bar("AAPL", minute, minute + MINUTE_MS, fix.published_ms)
        assert before is not None
        if fix.removes:
            assert after is None
            assert market.bar("AAPL", minute, minute + MINUTE_MS, NOW) is None
        else:
            assert after == before._replace(
                volume=before.volume + fix.extra_volume,
                turnover=before.turnover + fix.extra_volume * before.close,
            )
        hour = H1.start_of(minute)
        hour_bar = market.bar("AAPL", hour, hour + HOUR_MS, NOW)
        minutes = bars_of(market, M1, hour, hour + HOUR_MS)
        seconds = dict(market.candle_bars("AAPL", S1, minute, minute + MINUTE_MS, NOW))
        assert hour_bar == combine(minutes.get(t) for t in range(hour, hour + HOUR_MS, MINUTE_MS))
        assert minutes.get(minute) == combine(seconds.values())


def test_market_config_rejects_bad_values() -> None:
    """Out-of-range fractions name the setting."""
    with pytest.raises(ValueError, match="quiet_fraction"):
        MarketConfig(quiet_fraction=1.0)
    with pytest.raises(ValueError, match="correction_rate"):
        MarketConfig(correction_rate=2.0)


@pytest.mark.parametrize(("period", "count"), [(M1, 3_000), (S1, 2_500), (Period.of(1, "w"), 150)])
def test_a_long_history_matches_candles_queried_one_by_one(period: Period, count: int) -> None:
    """Candles drawn in one large batch equal the same candles drawn alone on a fresh market."""
    history, _ = Market(MarketConfig(quiet_fraction=0.1)).latest_bars("AAPL", period, 0, NOW, count)
    assert len(history) == count
    fresh = Market(MarketConfig(quiet_fraction=0.1))
    for time_ms, bar in history[::37]:
        assert fresh.bar("AAPL", time_ms, time_ms + period.length_ms, NOW) == bar


@pytest.mark.parametrize(
    ("start", "end", "parts", "corrections"),
    [
        (NOW - 2 * HOUR_MS - 61 * SECOND_MS, NOW, S1, 1.0),  # seconds, minutes, an hour...
        (NOW - 25 * SECOND_MS, NOW - 2 * SECOND_MS, S1, 1.0),  # some seconds of one minute
        (START - 9 * DAY_MS, START + 2 * HOUR_MS, H1, 0.0),  # a week, days, then hours
    ],
)
def test_bar_is_the_aggregate_of_the_candles_it_covers(
    start: int, end: int, parts: Period, corrections: float
) -> None:
    """bar() of an aligned range equals combine() of its finer candles (quiet periods,
    corrections and the start of history included)."""
    config = MarketConfig(
        quiet_fraction=0.2, correction_rate=corrections, history_start_ms=START - 8 * DAY_MS
    )
    market = Market(config)
    start, end = start - start % SECOND_MS, end - end % SECOND_MS
    pieces = [bar for _, bar in market.candle_bars("AAPL", parts, start, end, NOW)]
    assert pieces and market.bar("AAPL", start, end, NOW) == combine(pieces)
    assert market.bar("AAPL", START - 10 * DAY_MS, START - 9 * DAY_MS, NOW) is None  # no history
    with pytest.raises(ValueError, match="whole seconds"):
        market.bar("AAPL", start + 1, end, NOW)


def test_prepare_draws_ahead_in_one_batch_and_changes_nothing() -> None:
    """After prepare() the live candles and a snapshot's minutes need no further draws,
    and every candle is what an unprepared market gives."""
    symbols = [f"S{i}" for i in range(40)]
    prepared, plain = (
        Market(MarketConfig(quiet_fraction=0.1)),
        Market(MarketConfig(quiet_fraction=0.1)),
    )
    prepared.prepare(dict.fromkeys(symbols, NOW - 3 * HOUR_MS), NOW)
    assert all(prepared.prepared(symbol, NOW) for symbol in symbols)
    assert not plain.prepared("S0", NOW)
    drawn = prepared.splits_drawn
    for symbol in symbols:
        got = prepared.candle_bars(symbol, M1, NOW - 3 * HOUR_MS, NOW + MINUTE_MS, NOW)
        assert got == plain.candle_bars(symbol, M1, NOW - 3 * HOUR_MS, NOW + MINUTE_MS, NOW)
    assert prepared.splits_drawn == drawn
    prepared.prepare(dict.fromkeys(symbols, NOW), NOW + 20 * SECOND_MS)  # same minute: no-op
    assert prepared.splits_drawn == drawn
    small = Market(MarketConfig(quiet_fraction=0.1, cache_size=64))
    small.prepare(dict.fromkeys(symbols, NOW - 3 * HOUR_MS), NOW)  # capped at half the cache
    assert 0 < small.splits_drawn <= 5 * 32
    assert small.candle_bars("S7", M1, NOW - HOUR_MS, NOW, NOW) == plain.candle_bars(
        "S7", M1, NOW - HOUR_MS, NOW, NOW
    )
    assert 0 < small.splits_cached <= 64 < small.splits_drawn  # the cache stays bounded
    assert 0 < prepared.splits_cached <= drawn


def test_round_bars_are_candle_bars_remembered_for_one_moment() -> None:
    """round_bars gives candle_bars; asked again at the same now it is not recomputed, and a
    new now computes afresh."""
    market = Market(MarketConfig(correction_rate=0.5))
    live = M1.start_of(NOW)
    first = market.round_bars("AAPL", M1, live - MINUTE_MS, NOW + 1, NOW)
    assert list(first) == market.candle_bars("AAPL", M1, live - MINUTE_MS, NOW + 1, NOW)
    assert market.round_bars("AAPL", M1, live - MINUTE_MS, NOW + 1, NOW) is first
    later = NOW + 20 * SECOND_MS
    moved = market.round_bars("AAPL", M1, live - MINUTE_MS, NOW + 1, later)
    assert list(moved) == market.candle_bars("AAPL", M1, live - MINUTE_MS, NOW + 1, later)
    assert moved != first  # the live candle traded on


@pytest.mark.parametrize(("period", "count"), [(M1, 25), (M5, 25), (H1, 12), (D1, 5)])
def test_fill_round_bars_gives_what_each_symbol_computes_alone(period: Period, count: int) -> None:
    """Live candles aggregated for many symbols at once equal each symbol's candle_bars;
    markets with corrections, and ranges beyond the live candle, are left to round_bars."""
    symbols = [f"Q{i}" for i in range(count)]  # fewer for long periods: a day draws ~86k splits
    live = period.start_of(visible_end(NOW) - 1)
    for config in (MarketConfig(quiet_fraction=0.4), MarketConfig(correction_rate=1.0)):
        batched, alone = Market(config), Market(config)
        batched.fill_round_bars(symbols, period, live, NOW)
        batched.fill_round_bars(symbols, period, live - period.length_ms, NOW)  # two candles
        for symbol in symbols:
            for first in (live, live - period.length_ms):
                expected = alone.candle_bars(symbol, period, first, NOW + 1, NOW)
                assert list(batched.round_bars(symbol, period, first, NOW + 1, NOW)) == expected
