"""Tests for pipeline/simulator/wire.py: the column-built COMPACT FEED_DATA equals the general
encoder's, value for value and frame for frame; snapshots serve the same events as before."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dxlink import (
    CANDLE_FIELDS,
    REMOVE_EVENT,
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    SNAPSHOT_SNIP,
    Candle,
    DataFormat,
    SubscriptionItem,
    encode_candles,
)
from pipeline.simulator import Market, MarketConfig, Period, Series
from pipeline.simulator.bars import Bar, bar_to_candle, removal_candle
from pipeline.simulator.periods import MINUTE_MS
from pipeline.simulator.session import (
    EMPTY_SNAPSHOT,
    SNAPSHOT_BOUNDARY,
    FeedSession,
    snapshot_chunks,
)
from pipeline.simulator.wire import CandleColumns, SimServerProtocol, compact_values
from tests.simulator.strategies import bars

START = 1_756_252_800_000  # 2025-08-27T00:00Z
NOW = START + 3 * 60 * MINUTE_MS
M1 = Period.of(1, "m")
# tastyware's positional field order (dxlink-protocol.md §4.1, no eventType) and a short list.
TASTYWARE_FIELDS = (*CANDLE_FIELDS[1:8], *CANDLE_FIELDS[12:], *CANDLE_FIELDS[8:12])
SHORT_FIELDS = ("eventSymbol", "time", "close", "eventType", "eventFlags", "vwap")
FIELD_LISTS = (CANDLE_FIELDS, TASTYWARE_FIELDS, SHORT_FIELDS)


def general(candles: list[Candle], fields: tuple[str, ...]) -> list[object]:
    """The general encoder's COMPACT values for ``candles``."""
    data = encode_candles(candles, fields=fields, data_format=DataFormat.COMPACT)
    values = data[1]
    assert isinstance(values, list)
    return values


def same(left: list[object], right: list[object]) -> bool:
    """Equal value for value, types included (``1`` is not ``1.0`` on the wire)."""
    return orjson.dumps(left) == orjson.dumps(right) and [type(v) for v in left] == [
        type(v) for v in right
    ]


def columns_of(symbol: str, events: list[tuple[int, int, Bar | None]]) -> CandleColumns:
    """CandleColumns of (time, flags, bar or None for an event with no data)."""
    rows = np.array([bar or (0,) * 9 for _, _, bar in events], dtype=np.int64).reshape(-1, 9)
    return CandleColumns(symbol, [t for t, _, _ in events], [f for _, f, _ in events], rows)


def candles_of(symbol: str, events: list[tuple[int, int, Bar | None]]) -> list[Candle]:
    """The same events built the general way (bar_to_candle / removal_candle)."""
    return [
        removal_candle(symbol, t, flags=f)
        if bar is None
        else bar_to_candle(symbol, t, bar, flags=f)
        for t, f, bar in events
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**40), st.sampled_from([0, 4, 8, 2, 10, 14]), st.none() | bars()),
        min_size=1,
        max_size=30,
    )
)
def test_columns_are_the_candles_bar_to_candle_builds(
    events: list[tuple[int, int, Bar | None]],
) -> None:
    """Iterating CandleColumns gives exactly bar_to_candle / removal_candle, NaN for no data."""
    expected = candles_of("AAPL{=1m}", events)
    assert exact([columns_of("AAPL{=1m}", events)]) == exact([expected])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**40), st.sampled_from([0, 4, 10]), st.none() | bars()),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from(FIELD_LISTS),
)
def test_compact_values_of_columns_equal_the_general_encoder(
    events: list[tuple[int, int, Bar | None]], fields: tuple[str, ...]
) -> None:
    """COMPACT values from columns equal encode_candles of the same candles, any field order."""
    assert same(
        compact_values(columns_of("X{=5m}", events), fields),
        general(candles_of("X{=5m}", events), fields),
    )


def test_huge_turnover_keeps_pythons_correctly_rounded_vwap() -> None:
    """Past 2**53 the VWAP is Python's int / int, not numpy's rounded float quotient."""
    bar = Bar(100, 100, 100, 100, 3, 3 * 10**15 + 1, 300 * 10**15 + 100, 0, 0)
    events: list[tuple[int, int, Bar | None]] = [(START, 0, bar), (START + MINUTE_MS, 0, None)]
    assert same(
        compact_values(columns_of("A{=1m}", events), CANDLE_FIELDS),
        general(candles_of("A{=1m}", events), CANDLE_FIELDS),
    )


@pytest.mark.parametrize("fields", FIELD_LISTS)
def test_compact_values_of_candle_tuples_write_non_finite_doubles_as_strings(
    fields: tuple[str, ...],
) -> None:
    """Candle tuples with NaN, ±Infinity, ints in doubles and huge floats encode as before."""
    candles = [
        Candle("A{=1m}", START, flags=4, index=7, count=2, open=1.5, high=math.inf, low=-math.inf),
        Candle("A{=1m}", START + 1, close=float("nan"), volume=1e308, vwap=1e308),
        Candle("A{=1m}", START + 2, open=3, high=2.0, imp_volatility=0.25, open_interest=10.0),
        removal_candle("A{=1m}", START + 3),
    ]
    assert same(compact_values(candles, fields), general(candles, fields))
    assert same(compact_values(candles[1:2], fields), general(candles[1:2], fields))


def test_compact_values_reject_unknown_fields() -> None:
    """An unknown wire field is named in the error."""
    with pytest.raises(ValueError, match="'colour'"):
        compact_values([removal_candle("A{=1m}", START)], ("eventSymbol", "colour"))


def test_columns_check_their_lengths_and_slice_to_columns() -> None:
    """Mismatched columns are refused; a slice is CandleColumns of the same events."""
    with pytest.raises(ValueError, match="one entry per event"):
        CandleColumns("A", [1, 2], [0], np.zeros((2, 9), dtype=np.int64))
    bar = Bar(10, 12, 9, 11, 4, 40, 420, 10, 20)
    columns = columns_of("A{=1m}", [(START, 0, bar), (START + MINUTE_MS, 2, None), (START, 4, bar)])
    part = columns[1:]
    assert isinstance(part, CandleColumns) and len(part) == 2
    assert exact([part]) == exact([list(columns)[1:]])
    assert columns[-1] == bar_to_candle("A{=1m}", START, bar, flags=4)


# -- frames: the simulator's protocol sends what the general path sends ---------------------


def configured(fields: tuple[str, ...], data_format: DataFormat) -> SimServerProtocol:
    """A server protocol with channel 1 configured for ``fields`` in ``data_format``."""
    protocol = SimServerProtocol()
    protocol.start(0.0)
    protocol.receive_message('{"type":"SETUP","channel":0,"version":"t","keepaliveTimeout":60,'
                             '"acceptKeepaliveTimeout":60}', 0.0)  # fmt: skip
    protocol.send_setup()
    protocol.send_auth_state(True, "u")
    protocol.receive_message('{"type":"CHANNEL_REQUEST","channel":1,"service":"FEED",'
                             '"parameters":{"contract":"AUTO"}}', 0.0)  # fmt: skip
    protocol.open_channel(1)
    protocol.configure_feed(
        1, aggregation_period=0.1, data_format=data_format, event_fields={"Candle": fields}
    )
    protocol.events_received()
    protocol.messages_to_send()
    return protocol


def served_chunks(
    market: Market, symbol: str, from_ms: int, limit: int, chunk: int
) -> list[CandleColumns]:
    """The chunks FeedSession.serve gives a new subscription at NOW."""
    feed = FeedSession(market, history_limit=limit, chunk_size=chunk)
    feed.open_channel(1)
    added, _ = feed.apply(1, add=[SubscriptionItem("Candle", symbol, from_ms)])
    return list(feed.serve(added[0], NOW))


@pytest.mark.parametrize("data_format", [DataFormat.COMPACT, DataFormat.FULL])
@pytest.mark.parametrize("fields", FIELD_LISTS)
def test_snapshot_frames_equal_the_general_paths_frames(
    fields: tuple[str, ...], data_format: DataFormat
) -> None:
    """Every FEED_DATA (and the lazy FEED_CONFIG before it) is byte for byte as before."""
    market = Market(MarketConfig(quiet_fraction=0.2))
    chunks = served_chunks(market, "AAPL{=1m}", START + 30 * 1000, 10_000, 37)
    fast, slow = configured(fields, data_format), configured(fields, data_format)
    for chunk in chunks:
        fast.send_candle_events(1, chunk)
        slow.send_candles(1, list(chunk))
    sent = fast.messages_to_send()
    assert len(sent) == len(chunks) + 1  # FEED_CONFIG with eventFields, then the data
    assert sent == slow.messages_to_send()


# -- snapshots: the same events as the per-candle algorithm the fast path replaced ----------


def reference_snapshot(
    series: Series, candles: Iterator[tuple[int, Bar]], from_ms: int, limit: int, size: int
) -> Iterator[list[Candle]]:
    """The snapshot algorithm before the column path (one Candle per candle), verbatim."""
    key = series.key
    chunk: list[Candle] = []
    pending: tuple[int, Bar] | None = None
    sent = 0
    snipped = False
    for candle in candles:
        if pending is not None:
            if sent + 1 == limit:
                snipped = True
                break
            chunk.append(bar_to_candle(key, *pending, flags=SNAPSHOT_BEGIN if sent == 0 else 0))
            sent += 1
            if len(chunk) == size:
                yield chunk
                chunk = []
        pending = candle
    if pending is None:
        yield [removal_candle(key, from_ms, flags=EMPTY_SNAPSHOT)]
        return
    time_ms, bar = pending
    flags = SNAPSHOT_BEGIN if sent == 0 else 0
    if snipped:
        flags |= SNAPSHOT_SNIP
    elif time_ms == from_ms:
        flags |= SNAPSHOT_END
    chunk.append(bar_to_candle(key, time_ms, bar, flags=flags))
    if not snipped and time_ms != from_ms:
        if len(chunk) == size:
            yield chunk
            chunk = []
        chunk.append(removal_candle(key, from_ms, flags=SNAPSHOT_BOUNDARY))
    yield chunk


@pytest.mark.parametrize(
    ("period_name", "from_ms", "limit", "size"),
    [
        ("1m", START, 10_000, 500),  # a candle at fromTime: SNAPSHOT_END
        ("1m", START + 90 * 1000, 10_000, 7),  # between candles: the 0x0A boundary event
        ("1m", START, 180, 60),  # exactly the limit: not snipped, chunk boundary at the end
        ("1m", START, 179, 60),  # one short: SNAPSHOT_SNIP
        ("1m", START + 59 * 1000, 1, 1),  # limit 1
        ("5m", START + 1, 10_000, 6),  # boundary event after a full chunk
        ("1h", NOW + MINUTE_MS, 10, 5),  # nothing at or after fromTime: empty
        ("1s", NOW - 700 * 1000, 10_000, 500),
    ],
)
def test_served_snapshots_equal_the_per_candle_algorithm(
    period_name: str, from_ms: int, limit: int, size: int
) -> None:
    """serve() and snapshot_chunks() give the old algorithm's chunks, event for event."""
    market = Market(MarketConfig(quiet_fraction=0.3))
    series = Series.parse(("AAPL", period_name))
    period = series.period
    expected = list(
        reference_snapshot(
            series, market.iter_latest("AAPL", period, from_ms, NOW), from_ms, limit, size
        )
    )
    served = served_chunks(market, series.key, from_ms, limit, size)
    assert exact(served) == exact(expected)
    pairs = market.iter_latest("AAPL", period, from_ms, NOW)
    legacy = list(snapshot_chunks(series, pairs, from_ms, history_limit=limit, chunk_size=size))
    assert exact(legacy) == exact(expected)
    assert expected[0][0].flags & SNAPSHOT_BEGIN
    assert expected[-1][-1].flags & (SNAPSHOT_END | SNAPSHOT_SNIP | REMOVE_EVENT)


def exact(chunks: Sequence[Sequence[Candle]]) -> list[list[str]]:
    """Chunks of events as reprs: types, NaN and every float digit compared exactly."""
    return [[repr(candle) for candle in chunk] for chunk in chunks]


def test_market_rows_and_blocks_match_bars() -> None:
    """candle_rows is candle_bars as columns; latest_blocks is iter_latest in blocks."""
    market = Market(MarketConfig(quiet_fraction=0.2, correction_rate=0.5))
    times, rows = market.candle_rows("AAPL", M1, START, NOW + MINUTE_MS, NOW + 30 * 1000)
    assert list(zip(times, map(Bar._make, rows.tolist()), strict=True)) == market.candle_bars(
        "AAPL", M1, START, NOW + MINUTE_MS, NOW + 30 * 1000
    )
    blocks = list(market.latest_blocks("AAPL", M1, START, NOW))
    flat = [(t, Bar._make(r)) for ts, rs in blocks for t, r in zip(ts, rs.tolist(), strict=True)]
    assert flat == list(market.iter_latest("AAPL", M1, START, NOW))


def test_history_is_drawn_once_and_served_again_from_the_cache() -> None:
    """A second snapshot of the same history draws no split (a real server stores history)."""
    market = Market()
    for symbol in ("A", "B", "C"):
        served_chunks(market, f"{symbol}{{=1m}}", START - 2000 * MINUTE_MS, 10_000, 500)
    drawn = market.splits_drawn
    for symbol in ("A", "B", "C"):
        served_chunks(market, f"{symbol}{{=1m}}", START - 2000 * MINUTE_MS, 10_000, 500)
    assert drawn > 0 and market.splits_drawn == drawn
