"""CandleBlock: large COMPACT frames decoded as columns equal the tuple decoder (issue 6).

``FeedDecoder.compact_candles`` returns a block from ``BLOCK_MIN_EVENTS`` events on. The block
must accept and reject exactly the values the tuple decoder does (where it cannot, e.g. an
index beyond int64, the tuple decoder decides), and its events, read as ``Candle`` tuples,
must be the tuple decoder's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dxlink import (
    REMOVE_EVENT,
    SNAPSHOT_BEGIN,
    TX_PENDING,
    Candle,
    CandleBlock,
    CandlesReceived,
    DataFormat,
    FeedDecoder,
    encode_candles,
    index_of,
)
from pipeline.dxlink.candle_block import BLOCK_MIN_EVENTS, BlockLayout
from pipeline.dxlink.feed_codec import _positions, candle_decoder
from tests.dxlink.drivers import configured_client
from tests.dxlink.vectors import (
    JUNK,
    T4_FIELDS,
    T7_FIELDS,
    TASTYWARE_FIELDS,
    comparable,
    outcome,
    sample,
)

EVENTS = BLOCK_MIN_EVENTS + 6
NO_SEQUENCE = tuple(name for name in T4_FIELDS if name != "sequence")
LAYOUTS = [T4_FIELDS, TASTYWARE_FIELDS, T7_FIELDS, NO_SEQUENCE]


def wire_values(fields: tuple[str, ...], count: int = EVENTS) -> list[Any]:
    """A COMPACT values array of ``count`` sample candles, as orjson parses it off the wire."""
    (_, values) = encode_candles(sample(count), fields=fields, data_format=DataFormat.COMPACT)
    parsed: list[Any] = orjson.loads(orjson.dumps(values))
    return parsed


@pytest.mark.parametrize("fields", LAYOUTS, ids=["T4", "tastyware", "T7", "no-sequence"])
def test_a_large_frame_decodes_to_a_block_equal_to_the_tuples(fields: tuple[str, ...]) -> None:
    """From BLOCK_MIN_EVENTS on: a CandleBlock whose Candles are the tuple decoder's."""
    values = wire_values(fields)
    block = FeedDecoder({"Candle": fields}).compact_candles(values)
    assert isinstance(block, CandleBlock) and len(block) == EVENTS
    tuples = candle_decoder(fields)(values)
    assert comparable(list(block)) == comparable(tuples)
    assert comparable([block[i] for i in range(EVENTS)]) == comparable(tuples)
    assert comparable([block[5:9].candle(i) for i in range(4)]) == comparable(tuples[5:9])
    assert all(type(c.open) is float and type(c.index) is int for c in block)


def test_smaller_frames_and_layouts_without_index_stay_tuples() -> None:
    """Below BLOCK_MIN_EVENTS, or with no index field, the result is a list."""
    small = FeedDecoder({"Candle": T4_FIELDS}).compact_candles(
        wire_values(T4_FIELDS, BLOCK_MIN_EVENTS - 1)
    )
    assert isinstance(small, list)
    fields = tuple(name for name in T4_FIELDS if name != "index")
    no_index = FeedDecoder({"Candle": fields}).compact_candles(wire_values(fields))
    assert isinstance(no_index, list) and len(no_index) == EVENTS
    assert BlockLayout.of(len(fields), _positions(fields)) is None


def test_frames_mixing_series_stay_tuples() -> None:
    """A large frame whose first and last events are of different series (a live round)."""
    values = wire_values(T4_FIELDS)
    at = T4_FIELDS.index("eventSymbol")
    values[at] = "OTHER{=5m}"
    result = FeedDecoder({"Candle": T4_FIELDS}).compact_candles(values)
    assert isinstance(result, list) and result[0].symbol == "OTHER{=5m}"


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(LAYOUTS),
    st.lists(st.tuples(st.integers(0, 10**6), JUNK), max_size=3),
)
def test_blocks_accept_and_reject_what_the_tuple_decoder_does(
    fields: tuple[str, ...], edits: list[tuple[int, Any]]
) -> None:
    """With junk anywhere: a block only where tuples decode too, and the same candles."""
    values = wire_values(fields)
    for position, value in edits:
        values[position % len(values)] = value
    tuples = outcome(lambda: candle_decoder(fields)(values))
    layout = BlockLayout.of(len(fields), _positions(fields))
    assert layout is not None
    as_block = outcome(lambda: layout.decode(values).candles())
    if as_block[0] == "ok":
        assert as_block == tuples
    result = FeedDecoder({"Candle": fields}).compact_candles(values)
    if tuples[0] == "error":
        assert result is None
    else:
        assert result is not None and comparable(list(result)) == tuples[1]


def test_an_index_beyond_int64_falls_back_to_tuples() -> None:
    """A value only Python ints hold: the tuple decoder takes the frame, exactly."""
    values = wire_values(T4_FIELDS)
    values[T4_FIELDS.index("index")] = 2**64 + 5
    result = FeedDecoder({"Candle": T4_FIELDS}).compact_candles(values)
    assert isinstance(result, list) and result[0].index == 2**64 + 5


def test_special_double_strings_in_any_mix() -> None:
    """Columns of only "NaN", of mixed specials and numbers, and of integers become floats."""
    fields = ("eventSymbol", "time", "index", "open", "volume", "impVolatility", "openInterest")
    values: list[Any] = []
    for number in range(EVENTS):
        special = ["NaN", "Infinity", "-Infinity", 1, True][number % 5]
        values += ["A{=d}", number * 1000, index_of(number * 1000), 5, "NaN", special, 2.5]
    block = FeedDecoder({"Candle": fields}).compact_candles(values)
    assert isinstance(block, CandleBlock)
    assert comparable(list(block)) == comparable(candle_decoder(fields)(values))
    assert [c.imp_volatility for c in block[1:5]] == [math.inf, -math.inf, 1.0, 1.0]
    assert all(math.isnan(c.volume) and c.open == 5.0 for c in block)


def test_runs_indexes_and_newest_time() -> None:
    """runs() finds each symbol's stretch; a zero index is derived (§4.2); newest_time."""
    candles = [
        Candle("A{=m}", 60_000, index=index_of(60_000)),
        Candle("A{=m}", 120_000, sequence=3, event_time=999_999),
        Candle("B{=m}", 180_000, index=index_of(180_000)),
        Candle("A{=m}", 240_000, index=index_of(240_000)),
    ]
    block = CandleBlock.from_candles(candles)
    assert block.runs() == [("A{=m}", 0, 2), ("B{=m}", 2, 3), ("A{=m}", 3, 4)]
    assert block[:2].runs() == [("A{=m}", 0, 2)]
    assert block.record_indexes().tolist() == [
        index_of(60_000), index_of(120_000, 3), index_of(180_000), index_of(240_000)
    ]  # fmt: skip
    assert block.newest_time() == 999_999
    assert CandleBlock.from_candles([]).newest_time() == 0
    assert CandleBlock.from_candles([]).runs() == []


def test_concat_slices_and_equality() -> None:
    """Slices share columns, concat restores the order, a block equals its tuples."""
    candles = sample(10)
    block = CandleBlock.from_candles(candles)
    joined = CandleBlock.concat([block[:3], block[3:7], block[7:]])
    assert comparable(joined.candles()) == comparable(candles)
    assert block == block.candles() and block != candles[:3]
    assert block.flags.tolist() == [c.flags for c in candles]
    with pytest.raises(TypeError):
        hash(block)
    with pytest.raises(ValueError, match="needs ints of shape"):
        CandleBlock(["A"], np.zeros((6, 2), np.int64), np.zeros((10, 1)))


def test_the_client_protocol_delivers_a_large_frame_as_a_block() -> None:
    """A configured channel's large FEED_DATA arrives as one CandlesReceived holding a block."""
    client = configured_client()
    values = wire_values(T4_FIELDS)
    frame = orjson.dumps({"type": "FEED_DATA", "channel": 1, "data": ["Candle", values]})
    client.receive_message(frame, 1)
    (event,) = client.events_received()
    assert isinstance(event, CandlesReceived) and isinstance(event.candles, CandleBlock)
    assert comparable(list(event.candles)) == comparable(candle_decoder(T4_FIELDS)(values))
    flagged = [c.flags for c in event.candles if c.flags & (SNAPSHOT_BEGIN | TX_PENDING)]
    assert flagged and not any(c.flags & REMOVE_EVENT for c in event.candles)
