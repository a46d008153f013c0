"""Which series a recorded FEED_DATA carries, and the same data for fewer of them."""

from __future__ import annotations

from pipeline.recording.feed import feed_series, restrict, series_key

FIELDS = {"Candle": ("eventType", "eventSymbol", "close"), "Quote": ("eventSymbol", "bidPrice")}


def test_compact_pairs_are_read_and_cut_per_event() -> None:
    """COMPACT data with two event types: series per event; only the kept events remain."""
    data = [
        "Candle",
        ["Candle", "AAPL{=5m}", 1.0, "Candle", "SPY{=5m}", 2.0, "Candle", "AAPL{=5m}", 3.0],
        "Quote",
        ["AAPL", 10.5, "SPY", 11.5],
    ]
    assert feed_series(data, FIELDS) == {"AAPL{=5m}", "SPY{=5m}", "AAPL", "SPY"}
    kept = restrict(data, FIELDS, {"AAPL{=5m}", "SPY"}.__contains__)
    assert kept == [
        "Candle",
        ["Candle", "AAPL{=5m}", 1.0, "Candle", "AAPL{=5m}", 3.0],
        "Quote",
        ["SPY", 11.5],
    ]
    assert restrict(data, FIELDS, lambda _: False) == []


def test_full_events_are_read_and_cut() -> None:
    """FULL data: one object per event, eventSymbol names the series."""
    data = [
        {"eventType": "Candle", "eventSymbol": "AAPL{=m}", "close": 1.0},
        {"eventType": "Candle", "eventSymbol": "SPY{=m}", "close": 2.0},
    ]
    assert feed_series(data, {}) == {"AAPL{=m}", "SPY{=m}"}
    assert restrict(data, {}, {"SPY{=m}"}.__contains__) == [data[1]]


def test_unknown_layouts_are_not_guessed() -> None:
    """Fields never announced, or values that are not whole events: the series are unknown."""
    assert feed_series(["Trade", ["AAPL", 1.0]], FIELDS) is None
    assert feed_series(["Candle", ["Candle", "AAPL{=m}"]], FIELDS) is None
    assert feed_series({"not": "data"}, FIELDS) is None


def test_candle_symbols_match_however_they_are_spelled() -> None:
    """AAPL{=1m} and AAPL{=m} are one series (§5.3); plain symbols are kept as they are."""
    assert series_key("AAPL{=1m}") == series_key("AAPL{=m}") == "AAPL{=m}"
    assert series_key("AAPL{=5m,tho=true}") == "AAPL{=5m,tho=true}"
    assert series_key("BTC/USD:CXTALP") == "BTC/USD:CXTALP"
