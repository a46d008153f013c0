"""Tests for the DXLink codec: messages.py (envelope) and feed_codec.py (FEED_DATA events).

Sections: dxlink-protocol.md §2.1 (envelope), §2.3 (messages), §3.3/§3.4 (FULL and COMPACT),
§3.5 (numbers), §4.2 (index arithmetic), §10 (test vectors T1-T10). The vectors and sample
candles live in ``tests/dxlink/vectors.py``, shared with the protocol and fuzz tests.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dxlink import (
    SNAPSHOT_BEGIN,
    SNAPSHOT_END,
    Candle,
    CandleEvents,
    DataFormat,
    FeedData,
    FeedDecoder,
    InvalidMessage,
    SubscriptionItem,
    UsageError,
    encode,
    encode_candles,
    index_of,
    parse,
    sequence_of,
    time_of,
)
from pipeline.dxlink.feed_codec import OtherEvents, candle_decoder
from pipeline.dxlink.message_models import (
    Auth,
    AuthState,
    AuthStateValue,
    ChannelCancel,
    ChannelClosed,
    ChannelOpened,
    ChannelRequest,
    Error,
    FeedConfig,
    FeedSetup,
    FeedSubscription,
    Keepalive,
    Message,
    Setup,
)
from pipeline.dxlink.messages import parse_object
from tests.dxlink.vectors import (
    FULL_EXAMPLE,
    JUNK,
    NAN,
    T4_FIELDS,
    T6,
    T7,
    T7_FIELDS,
    T8,
    TASTYWARE_FIELDS,
    VECTORS,
    candles_of,
    comparable,
    decode,
    outcome,
    same,
    sample,
)


@pytest.mark.parametrize(("wire", "model"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_vector_parses_to_model_and_encodes_back(wire: str, model: Message) -> None:
    """Each §10 vector parses to its model; encoding it gives the same JSON object."""
    assert parse(wire) == model
    assert parse(wire.encode()) == model
    assert orjson.loads(encode(model)) == orjson.loads(wire)


def test_encode_is_compact_with_exact_wire_keys() -> None:
    """encode() writes compact JSON, type and channel first, camelCase keys."""
    assert encode(Setup("0.1-DXF-JS/0.3.0", 60, 60)) == (
        '{"type":"SETUP","channel":0,"version":"0.1-DXF-JS/0.3.0","keepaliveTimeout":60,'
        '"acceptKeepaliveTimeout":60}'
    )
    assert encode(FeedSubscription(1, remove=(SubscriptionItem("Candle", "A{=d}", 5),))) == (
        '{"type":"FEED_SUBSCRIPTION","channel":1,"remove":[{"type":"Candle","symbol":"A{=d}",'
        '"fromTime":5}]}'
    )


def test_encode_rejects_non_messages_and_unencodable_values() -> None:
    """encode() of a non-message, or of a value JSON cannot carry, is a UsageError."""
    with pytest.raises(UsageError, match="cannot encode dict"):
        encode({"type": "KEEPALIVE"})  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="cannot encode FEED_DATA"):
        encode(FeedData(1, ["Candle", [2**64]]))


def test_unknown_extra_keys_are_tolerated() -> None:
    """Extra keys (userId on SETUP, anything on KEEPALIVE) do not fail parsing (§2.1)."""
    assert parse('{"type":"KEEPALIVE","channel":0,"x":[1,{"y":2}]}') == Keepalive()
    assert parse('{"type":"SETUP","channel":0,"version":"v","extra":1}') == Setup("v")


def test_auth_hides_token_everywhere() -> None:
    """The AUTH token never shows in repr, str or an InvalidMessage text (§2.3)."""
    token = "s3cr3t-token"
    auth = Auth(token)
    assert token not in repr(auth) and token not in str(auth)
    assert "hidden" in repr(auth)
    for bad in (
        f'{{"type":"AUTH","channel":2,"token":"{token}"}}',
        f'{{"type":"AUTH","channel":0,"token":"{token}","x":',
        f'{{"type":"AUTH","channel":0,"token":"{token}',
    ):
        with pytest.raises(InvalidMessage) as info:
            parse(bad)
        assert token not in str(info.value) and token not in info.value.excerpt


def test_feed_data_str_is_short_and_log_safe() -> None:
    """FEED_DATA's str shows type, count and first symbol, shortened."""
    message = parse(T6)
    assert str(message) == "FEED_DATA channel 1: Candle x36 values, first AAPL{=5m,tho=true}"
    big = FeedData(1, ["Candle", ["Candle", "X" * 500, 1] * 100])
    assert len(str(big)) <= 120
    full = FeedData(1, [{"eventType": "Candle", "eventSymbol": "AAPL{=d}"}] * 3)
    assert str(full) == "FEED_DATA channel 1: Candle x3 events, first AAPL{=d}"


INVALID_FRAMES = [
    ("not JSON", "{type", "not valid JSON"),
    ("non-UTF-8", b'{"type":"KEEPALIVE","channel":0,"x":"\xff"}', "not valid JSON"),
    ("array", "[1,2]", "must be a JSON object, not an array"),
    ("string", '"SETUP"', "must be a JSON object, not a string"),
    ("no type", '{"channel":0}', "type must be a string, not null"),
    ("numeric type", '{"type":5,"channel":0}', "type must be a string, not a number"),
    ("unknown type", '{"type":"HELLO","channel":0}', "unknown message type 'HELLO'"),
    ("no channel", '{"type":"KEEPALIVE"}', "KEEPALIVE has no channel"),
    ("string channel", '{"type":"KEEPALIVE","channel":"0"}', "channel must be an integer"),
    ("fractional channel", '{"type":"KEEPALIVE","channel":0.5}', "channel must be an integer"),
    ("SETUP off channel 0", '{"type":"SETUP","channel":1,"version":"v"}', "must be on channel 0"),
    ("channel message on 0", '{"type":"CHANNEL_CANCEL","channel":0}', "service channel > 0"),
    ("negative ERROR channel", '{"type":"ERROR","channel":-1,"error":"X"}', "not be negative"),
    ("SETUP without version", '{"type":"SETUP","channel":0}', "SETUP needs version"),
    (
        "string timeout",
        '{"type":"SETUP","channel":0,"version":"v","keepaliveTimeout":"60"}',
        "keepaliveTimeout must be a finite number, not a string",
    ),
    (
        "bool timeout",
        '{"type":"SETUP","channel":0,"version":"v","keepaliveTimeout":true}',
        "keepaliveTimeout must be a finite number, not a boolean",
    ),
    ("bad state", '{"type":"AUTH_STATE","channel":0,"state":"MAYBE"}', "state must be one of"),
    ("token number", '{"type":"AUTH","channel":0,"token":7}', "token must be a string"),
    (
        "parameters array",
        '{"type":"CHANNEL_REQUEST","channel":1,"service":"FEED","parameters":[]}',
        "parameters must be an object",
    ),
    (
        "bad data format",
        '{"type":"FEED_CONFIG","channel":1,"aggregationPeriod":1,"dataFormat":"XML"}',
        "dataFormat must be one of FULL, COMPACT",
    ),
    (
        "event fields not names",
        '{"type":"FEED_SETUP","channel":1,"acceptEventFields":{"Candle":[1]}}',
        "acceptEventFields.Candle must be an array of field names",
    ),
    (
        "empty add",
        '{"type":"FEED_SUBSCRIPTION","channel":1,"add":[]}',
        "add must be a non-empty array",
    ),
    (
        "item without symbol",
        '{"type":"FEED_SUBSCRIPTION","channel":1,"add":[{"type":"Candle"}]}',
        "add[0].symbol must be a string",
    ),
    (
        "fractional fromTime",
        '{"type":"FEED_SUBSCRIPTION","channel":1,"add":[{"type":"C","symbol":"A","fromTime":1.5}]}',
        "add[0].fromTime must be an integer",
    ),
    ("reset string", '{"type":"FEED_SUBSCRIPTION","channel":1,"reset":"yes"}', "reset must be"),
    ("no data", '{"type":"FEED_DATA","channel":1}', "FEED_DATA needs data"),
    ("empty data", '{"type":"FEED_DATA","channel":1,"data":[]}', "data must be a non-empty"),
    ("odd COMPACT", '{"type":"FEED_DATA","channel":1,"data":["Candle"]}', "type/values pairs"),
    (
        "COMPACT values not array",
        '{"type":"FEED_DATA","channel":1,"data":["Candle",5]}',
        "data[1] (event values) must be an array",
    ),
    (
        "FULL without eventType",
        '{"type":"FEED_DATA","channel":1,"data":[{"eventSymbol":"A"}]}',
        "data[0].eventType must be a string",
    ),
    ("too deep", "[" * 5000 + "]" * 5000, "not valid JSON"),
]


@pytest.mark.parametrize(
    ("frame", "reason"), [v[1:] for v in INVALID_FRAMES], ids=[v[0] for v in INVALID_FRAMES]
)
def test_malformed_frames_raise_invalid_message_with_reason(
    frame: str | bytes, reason: str
) -> None:
    """Every malformed frame raises InvalidMessage whose reason names the problem."""
    with pytest.raises(InvalidMessage) as info:
        parse(frame)
    assert reason in info.value.reason
    assert len(info.value.excerpt) <= 120


def test_parse_rejects_non_text_input() -> None:
    """parse() of a non-str/bytes object raises InvalidMessage, not TypeError."""
    with pytest.raises(InvalidMessage, match="must be str or bytes"):
        parse(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# FEED_DATA decoding (§3.3, §3.4, §10 T6-T8)


def test_t6_compact_two_candles_under_t4_config() -> None:
    """T6: 36 values / 18 fields = 2 candles; flags, exact index and NaN decode right."""
    first, second = candles_of(T6, T4_FIELDS)
    assert same(
        first,
        Candle(
            "AAPL{=5m,tho=true}",
            1756303200000,
            0,
            SNAPSHOT_BEGIN,
            7543264805860147200,
            0,
            57,
            229.84,
            229.95,
            229.8,
            229.93,
            2105.0,
            229.8811,
            1003.0,
            1102.0,
            NAN,
            NAN,
        ),
    )
    assert first.index == index_of(first.time) and type(first.index) is int
    assert second.time == 1756302900000 and second.flags == 0 and second.volume == 18733.0
    assert math.isnan(second.imp_volatility) and type(second.volume) is float


def test_t7_daily_snapshot_sequence() -> None:
    """T7: SB, then flags 0 and SE, then a live update; exponent doubles decode."""
    decoded = [candles_of(frame, T7_FIELDS) for frame in T7]
    assert [[c.flags for c in batch] for batch in decoded] == [[4], [0, 8], [0]]
    assert decoded[0][0].volume == 48502311.0
    assert [c.time for c in decoded[1]] == [1756166400000, 1756080000000]
    assert decoded[2][0].close == 647.41
    # Fields outside the 10-field config take defaults; sequence comes from the index.
    assert decoded[0][0].count == 0 and math.isnan(decoded[0][0].vwap)
    assert decoded[0][0].sequence == 0 and decoded[0][0].symbol == "SPY{=d}"


def test_t8_empty_snapshot_decodes_nan_values() -> None:
    """T8: flags 14 with NaN OHLCV decodes (the candle store decides what it means)."""
    (candle,) = candles_of(T8, T7_FIELDS)
    assert candle.flags == 14 and candle.flags & SNAPSHOT_END
    assert all(math.isnan(x) for x in (candle.open, candle.high, candle.low, candle.close))
    assert candle.index == 7543048339508428800 == index_of(1756252800000)


def test_full_example_fills_defaults_and_derives_index() -> None:
    """FULL objects: omitted fields take defaults, index is derived from time (§3.3, §4.2)."""
    (candle,) = candles_of(FULL_EXAMPLE, T4_FIELDS)
    assert candle.symbol == "AAPL{=d}" and candle.time == 1666600000000
    assert candle.open == 123.45 and candle.close == 123.46 and math.isnan(candle.high)
    assert candle.index == index_of(1666600000000) and candle.sequence == 0


def test_compact_value_count_not_a_multiple_is_rejected() -> None:
    """A COMPACT array whose length is not a multiple of the field count is InvalidMessage."""
    frame = T6.replace(',"NaN","NaN"]]}', ',"NaN"]]}')
    batches, errors = decode(frame, T4_FIELDS)
    assert batches == []
    assert [e.reason for e in errors] == ["Candle has 35 values, not a multiple of its 18 fields"]


def test_bad_pair_does_not_spoil_good_pairs() -> None:
    """Several pairs in one message: each decodes on its own; bad ones become errors."""
    message = FeedData(
        1,
        ["Candle", ["Candle", "A{=d}", 0, 0, 1000], "Quote", [1, 2], "Candle", ["x"] * 5],
    )
    decoder = FeedDecoder(
        {"Candle": ("eventType", "eventSymbol", "eventFlags", "sequence", "time")}
    )
    decoder.update({"Quote": ("bidPrice", "askPrice")})
    batches, errors = decoder.decode(message)
    assert isinstance(batches[0], CandleEvents) and batches[0].candles[0].time == 1000
    assert batches[0].candles[0].index == index_of(1000)
    assert batches[1] == OtherEvents(
        "Quote", [{"eventType": "Quote", "bidPrice": 1, "askPrice": 2}]
    )
    assert len(errors) == 1
    assert errors[0].reason == "Candle event 0 field eventFlags must be an integer, not 'x'"


@pytest.mark.parametrize(
    ("position", "value", "reason"),
    [
        (5, "1756303200000", "event 0 field time must be an integer, not '1756303200000'"),
        (4, 7.543264805860147e18, "event 0 field index must be an integer"),
        (8, "abc", 'event 0 field open must be a number or "NaN"'),
        (8, None, "event 0 field open must be a number"),
        (21, [1], "event 1 field eventFlags must be an integer, not [1]"),
    ],
)
def test_wrongly_typed_candle_values_are_named(position: int, value: object, reason: str) -> None:
    """A wrongly typed value makes the pair InvalidMessage naming event and field."""
    data = orjson.loads(T6)["data"]
    data[1][position] = value
    batches, errors = FeedDecoder({"Candle": T4_FIELDS}).decode(FeedData(1, data))
    assert batches == [] and len(errors) == 1 and reason in errors[0].reason


def test_special_double_strings_become_floats() -> None:
    """ "NaN", "Infinity", "-Infinity" decode to floats in Candles and plain events (§3.5)."""
    fields = ("eventSymbol", "time", "open", "high", "low")
    decoder = FeedDecoder({"Candle": fields, "Trade": ("price", "size")})
    batches, _ = decoder.decode(
        FeedData(
            1,
            ["Candle", ["A{=d}", 0, "NaN", "Infinity", "-Infinity"], "Trade", ["Infinity", "NaN"]],
        )
    )
    candle = batches[0].candles[0]  # type: ignore[union-attr]
    assert math.isnan(candle.open) and candle.high == math.inf and candle.low == -math.inf
    event = batches[1].events[0]  # type: ignore[union-attr]
    assert event["price"] == math.inf and math.isnan(event["size"])


def test_event_fields_merge_per_type() -> None:
    """A new eventFields[T] replaces only T's list (§3.2)."""
    decoder = FeedDecoder({"Candle": T4_FIELDS, "Quote": ("bidPrice",)})
    decoder.update({"Candle": T7_FIELDS})
    assert decoder.event_fields == {"Candle": T7_FIELDS, "Quote": ("bidPrice",)}
    assert candles_of(T7[0], decoder.event_fields["Candle"])[0].close == 646.9


def test_unknown_event_type_and_unusable_field_lists_are_rejected() -> None:
    """Data for a type FEED_CONFIG never listed, or a Candle list without symbol/time, fails."""
    decoder = FeedDecoder()
    _, errors = decoder.decode(FeedData(1, ["Candle", [1]]))
    assert "no eventFields for 'Candle'" in errors[0].reason
    decoder.update({"Candle": ("time", "open")})
    _, errors = decoder.decode(FeedData(1, ["Candle", [1, 2]]))
    assert "lack eventSymbol" in errors[0].reason
    decoder.update({"Candle": ("eventSymbol", "open")})
    _, errors = decoder.decode(FeedData(1, ["Candle", ["A", 2]]))
    assert "neither time nor index" in errors[0].reason


def test_time_is_derived_from_index_when_absent() -> None:
    """With index but no time in the field list, time and sequence come from the index."""
    index = index_of(1756302900123, 7)
    decoder = FeedDecoder({"Candle": ("eventSymbol", "index", "close")})
    batches, _ = decoder.decode(FeedData(1, ["Candle", ["A{=1t}", index, 1.5]]))
    candle = batches[0].candles[0]  # type: ignore[union-attr]
    assert (candle.time, candle.sequence, candle.index) == (1756302900123, 7, index)


@pytest.mark.parametrize("data_format", [DataFormat.COMPACT, DataFormat.FULL])
@pytest.mark.parametrize("fields", [T4_FIELDS, T7_FIELDS], ids=["T4 fields", "T7 fields"])
def test_encode_candles_round_trips(data_format: DataFormat, fields: tuple[str, ...]) -> None:
    """encode_candles then decode gives the candles back, NaN/Infinity included."""
    candles = [
        Candle(
            "A{=5m}",
            1756302900000,
            0,
            4,
            index_of(1756302900000),
            0,
            3,
            1.0,
            2.0,
            0.5,
            1.5,
            10.0,
            1.2,
            4.0,
            6.0,
            NAN,
            math.inf,
        ),
        Candle(
            "A{=5m}",
            1756303200000,
            0,
            0,
            index_of(1756303200000),
            0,
            1,
            NAN,
            NAN,
            NAN,
            NAN,
            NAN,
            NAN,
            NAN,
            NAN,
            NAN,
            -math.inf,
        ),
    ]
    data = encode_candles(candles, fields=fields, data_format=data_format)
    message = parse(encode(FeedData(1, data)))
    assert isinstance(message, FeedData) and message.data_format is data_format
    batches, errors = FeedDecoder({"Candle": fields}).decode(message)
    assert errors == []
    decoded = batches[0].candles  # type: ignore[union-attr]
    kept = {"symbol", "time", "flags", "index", "open", "high", "low", "close", "volume"}
    if fields == T4_FIELDS:
        assert same(decoded, candles)
    else:
        for got, want in zip(decoded, candles, strict=True):
            assert same([getattr(got, f) for f in kept], [getattr(want, f) for f in kept])


def test_full_encoding_writes_nan_strings() -> None:
    """FULL encoding writes every listed field, NaN as the string "NaN" (documented)."""
    candle = Candle("A{=d}", 0)
    (event,) = encode_candles(
        [candle], fields=("eventSymbol", "time", "open"), data_format=DataFormat.FULL
    )
    assert event == {"eventType": "Candle", "eventSymbol": "A{=d}", "time": 0, "open": "NaN"}


def test_encode_candles_rejects_unknown_fields_and_empty_input() -> None:
    """Encoding an unknown field name or no candles is a UsageError."""
    with pytest.raises(UsageError, match="cannot encode Candle field 'bogus'"):
        encode_candles([Candle("A{=d}", 0)], fields=("bogus",), data_format=DataFormat.COMPACT)
    with pytest.raises(UsageError, match="at least one candle"):
        encode_candles([], fields=T4_FIELDS, data_format=DataFormat.COMPACT)


# --------------------------------------------------------------------------------------------
# Property tests: index arithmetic (§4.2) and encode -> parse for every message type.


@given(
    st.integers(min_value=0, max_value=2**31 * 1000 - 1),
    st.integers(min_value=0, max_value=2**22 - 1),
)
def test_index_time_sequence_round_trip(time_ms: int, sequence: int) -> None:
    """index_of / time_of / sequence_of are inverse; index order is time order."""
    index = index_of(time_ms, sequence)
    assert (time_of(index), sequence_of(index)) == (time_ms, sequence)
    assert 0 <= index < 2**63
    assert index_of(time_ms + 1) > index


_text = st.text(max_size=20)
_names = st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=5).map(tuple)
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=10),
    st.floats(allow_nan=False, allow_infinity=False),
)
_params = st.dictionaries(st.text(max_size=8), _json_scalars, max_size=4)
_channel = st.integers(min_value=1, max_value=2**31)
_number = st.one_of(st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False))
_items = st.lists(
    st.builds(
        SubscriptionItem,
        _text,
        _text,
        st.none() | st.integers(0, 2**53),
        st.none() | _text,
    ),
    max_size=3,
).map(tuple)
_fields_map = st.dictionaries(st.text(min_size=1, max_size=8), _names, max_size=3)

MESSAGES = st.one_of(
    st.builds(Setup, _text, st.none() | _number, st.none() | _number),
    st.builds(Auth, _text),
    st.builds(AuthState, st.sampled_from(AuthStateValue), st.none() | _text),
    st.just(Keepalive()),
    st.builds(ChannelRequest, _channel, _text, _params),
    st.builds(ChannelOpened, _channel, _text, _params),
    st.builds(ChannelCancel, _channel),
    st.builds(ChannelClosed, _channel),
    st.builds(
        FeedSetup,
        _channel,
        st.none() | _number,
        st.none() | st.sampled_from(DataFormat),
        st.none() | _fields_map,
    ),
    st.builds(FeedConfig, _channel, _number, st.sampled_from(DataFormat), st.none() | _fields_map),
    st.builds(FeedSubscription, _channel, _items, _items, st.booleans()),
    st.builds(
        FeedData,
        _channel,
        st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), _text), min_size=1, max_size=6).map(
            lambda values: ["Candle", values]
        ),
    ),
    st.builds(Error, _text, _text, st.integers(0, 2**31)),
)


@given(MESSAGES)
def test_encode_then_parse_round_trips(message: Message) -> None:
    """Every message type survives encode -> parse unchanged."""
    assert parse(encode(message)) == message


# --------------------------------------------------------------------------------------------
# The decoder's two paths (row and column), the client's compact_candles call, parse_object.

COLUMN_EVENTS = 24  # at least feed_codec._COLUMN_MIN_EVENTS: the whole array takes the column path


def by_one(decoder: Any, values: list[Any], width: int) -> list[Candle]:
    """Decode one event at a time (the row path's one-event branch)."""
    return [c for o in range(0, len(values), width) for c in decoder(values[o : o + width])]


@pytest.mark.parametrize(
    "fields", [T4_FIELDS, T7_FIELDS, TASTYWARE_FIELDS], ids=["T4", "T7", "tastyware"]
)
def test_column_path_decodes_exactly_like_the_row_path(fields: tuple[str, ...]) -> None:
    """Many events (column path), pairs (row loop) and single events agree, NaN/±Inf included."""
    candles = sample(COLUMN_EVENTS)
    (_, values) = encode_candles(candles, fields=fields, data_format=DataFormat.COMPACT)
    values = orjson.loads(orjson.dumps(values))  # ints stay ints, as the wire has them
    decoder = candle_decoder(fields)
    whole = decoder(values)
    pairs = [
        c
        for o in range(0, len(values), 2 * len(fields))
        for c in decoder(values[o : o + 2 * len(fields)])
    ]
    assert (
        comparable(whole) == comparable(pairs) == comparable(by_one(decoder, values, len(fields)))
    )
    if fields != T7_FIELDS:  # T7's list lacks count, vwap, ...: compare the shared fields
        assert comparable(whole) == comparable(candles)
    assert all(type(c.volume) is float and type(c.index) is int for c in whole)


def test_column_path_converts_integer_doubles_and_special_strings() -> None:
    """Integers in double fields become floats; "NaN"/"Infinity" columns, mixed or not, too."""
    fields = ("eventSymbol", "time", "index", "open", "volume", "impVolatility", "openInterest")
    values: list[Any] = []
    for number in range(COLUMN_EVENTS):
        special = ["NaN", "Infinity", "-Infinity", 1][number % 4]
        values += ["A{=d}", number * 1000, index_of(number * 1000), 5, "NaN", special, 2.5]
    candles = candle_decoder(fields)(values)
    assert all(type(c.open) is float and c.open == 5.0 for c in candles)
    assert all(math.isnan(c.volume) for c in candles)
    assert [c.imp_volatility for c in candles[:4]][1:] == [math.inf, -math.inf, 1.0]
    assert math.isnan(candles[0].imp_volatility)
    assert comparable(candles) == comparable(by_one(candle_decoder(fields), values, 7))


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from([T4_FIELDS, T7_FIELDS, TASTYWARE_FIELDS]),
    st.lists(st.tuples(st.integers(0, 10**6), JUNK), max_size=3),
)
def test_both_paths_accept_and_reject_the_same_values(
    fields: tuple[str, ...], edits: list[tuple[int, Any]]
) -> None:
    """With junk anywhere, the column path fails exactly when some single event fails."""
    (_, values) = encode_candles(
        sample(COLUMN_EVENTS), fields=fields, data_format=DataFormat.COMPACT
    )
    values = orjson.loads(orjson.dumps(values))
    for position, value in edits:
        values[position % len(values)] = value
    decoder = candle_decoder(fields)
    whole = outcome(lambda: decoder(values))
    assert whole == outcome(lambda: by_one(decoder, values, len(fields)))
    batches, errors = FeedDecoder({"Candle": fields}).decode(FeedData(1, ["Candle", values]))
    assert (whole[0] == "error") == bool(errors) and len(batches) + len(errors) == 1
    if errors:
        assert errors[0].reason.startswith("Candle event")  # names the event and the field


def test_compact_candles_decodes_clean_arrays_and_declines_the_rest() -> None:
    """compact_candles: the Candles of a clean array, else None (decode() words the error)."""
    decoder = FeedDecoder({"Candle": T4_FIELDS})
    values = orjson.loads(T6)["data"][1]
    assert comparable(decoder.compact_candles(values) or []) == comparable(
        candles_of(T6, T4_FIELDS)
    )
    assert decoder.compact_candles([]) == []
    assert decoder.compact_candles(values[:-1]) is None  # not a multiple of 18
    assert decoder.compact_candles({"Candle": 1}) is None
    assert decoder.compact_candles([*values[:5], "x", *values[6:]]) is None  # time not an int
    assert FeedDecoder().compact_candles(values) is None  # no Candle list yet
    assert FeedDecoder({"Candle": ("time", "open")}).compact_candles([1, 2.0]) is None
    decoder.update({"Quote": ("bidPrice",)})  # another type's list keeps the Candle layout
    assert decoder.compact_candles(values) is not None
    decoder.update({"Candle": T7_FIELDS})  # a new Candle list replaces the layout (§3.2)
    assert decoder.compact_candles(values) is None
    assert decoder.compact_candles(orjson.loads(T7[0])["data"][1]) is not None


def test_json_booleans_in_integer_fields_count_as_one_and_zero() -> None:
    """true/false in an integer field decode as 1/0 on every path (a bool is an int)."""
    fields = ("eventSymbol", "time", "eventFlags")
    values = [v for n in range(COLUMN_EVENTS) for v in ("A{=d}", n, n % 2 == 1)]
    decoder = candle_decoder(fields)
    assert [c.flags for c in decoder(values)] == [n % 2 for n in range(COLUMN_EVENTS)]
    assert [c.flags for c in by_one(decoder, values, 3)] == [n % 2 for n in range(COLUMN_EVENTS)]


@pytest.mark.parametrize(("wire", "model"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_parse_object_continues_from_decoded_json(wire: str, model: Message) -> None:
    """parse_object(orjson.loads(frame), frame) is parse(frame)."""
    assert parse_object(orjson.loads(wire), wire) == model


def test_parse_object_errors_carry_the_frame_excerpt() -> None:
    """parse_object's InvalidMessage names the problem and quotes the (token-free) frame."""
    frame = '{"type":"AUTH","channel":0,"token":7}'
    with pytest.raises(InvalidMessage) as info:
        parse_object(orjson.loads(frame), frame)
    assert info.value.reason == "token must be a string, not a number"
    assert info.value.excerpt == '{"type":"AUTH","channel":0,"token":"<hidden>"}'
