"""Fuzz tests: garbage in, only InvalidMessage out (dxlink-protocol.md §2.1, §3.4).

``parse`` may return a message or raise InvalidMessage, nothing else; ``FeedDecoder.decode``
never raises (bad pairs come back as InvalidMessage values); ``receive_message`` of either
protocol role never raises at all. The budgets are small on
purpose; each test states the class of input it covers.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.dxlink import (
    CANDLE_FIELDS,
    Candle,
    CandleEvents,
    ClientProtocol,
    FeedData,
    FeedDecoder,
    InvalidMessage,
    MessageType,
    ServerProtocol,
    ViolationReceived,
    parse,
)
from pipeline.dxlink.feed_codec import OtherEvents
from tests.dxlink.pair import ProtocolPair
from tests.dxlink.vectors import FULL_EXAMPLE, T6, T7, T8, VECTORS

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = [wire for _, wire, _ in VECTORS] + [T6, *T7, T8, FULL_EXAMPLE]


def parse_or_invalid(frame: str | bytes) -> None:
    """Parse a frame; anything but a message or InvalidMessage fails the test."""
    try:
        parse(frame)
    except InvalidMessage as exc:
        assert exc.reason
        assert len(exc.excerpt) <= 120


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A §10 vector with random byte edits: flips, inserts, deletes, truncation."""
    frame = bytearray(draw(st.sampled_from(SEEDS)).encode())
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, max(len(frame) - 1, 0)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and frame:
            frame[position] = draw(st.integers(0, 255))
        elif action == "insert":
            frame[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del frame[position : position + draw(st.integers(1, 8))]
        else:
            del frame[position:]
    return bytes(frame)


@FUZZ
@given(mutated())
def test_mutated_vectors_only_raise_invalid_message(frame: bytes) -> None:
    """Byte-mutated and truncated real frames never raise anything but InvalidMessage."""
    parse_or_invalid(frame)
    parse_or_invalid(frame.decode("utf-8", "replace"))


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_invalid_message(frame: bytes) -> None:
    """Arbitrary bytes (mostly non-UTF-8, non-JSON) raise only InvalidMessage."""
    parse_or_invalid(frame)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=10,
)
_keys = st.sampled_from(
    [
        "version",
        "keepaliveTimeout",
        "acceptKeepaliveTimeout",
        "token",
        "state",
        "userId",
        "service",
        "parameters",
        "acceptAggregationPeriod",
        "acceptDataFormat",
        "acceptEventFields",
        "aggregationPeriod",
        "dataFormat",
        "eventFields",
        "add",
        "remove",
        "reset",
        "data",
        "error",
        "message",
    ]
)


@FUZZ
@given(
    st.sampled_from([*MessageType, "NOPE", 3, None]),
    st.one_of(st.integers(-3, 5), st.floats(allow_nan=False), st.text(max_size=3), st.none()),
    st.dictionaries(_keys, _json, max_size=6),
)
def test_structured_junk_only_raises_invalid_message(
    kind: object, channel: object, payload: dict[str, Any]
) -> None:
    """Objects with real type names but random channels and payload values fail cleanly."""
    # stdlib json: it can write integers beyond 64 bits, which orjson.dumps refuses.
    frame = json.dumps({"type": kind, "channel": channel, **payload})
    parse_or_invalid(frame)


def test_huge_and_deep_frames_only_raise_invalid_message() -> None:
    """Huge strings/arrays parse or fail cleanly; very deep nesting is InvalidMessage."""
    parse_or_invalid('{"type":"ERROR","channel":0,"error":"X","message":"' + "x" * 2_000_000 + '"}')
    parse_or_invalid('{"type":"FEED_DATA","channel":1,"data":["Candle",[' + "1," * 200_000 + "1]]}")
    for depth in (100, 2_000, 100_000):
        parse_or_invalid('{"type":"KEEPALIVE","channel":0,"x":' + "[" * depth + "]" * depth + "}")
        parse_or_invalid("[" * depth)
    parse_or_invalid(b"\xff\xfe" * 50_000)


_values = st.one_of(
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "AAPL{=d}", "", "1.5"]),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@FUZZ
@given(
    st.lists(st.sampled_from([*CANDLE_FIELDS, "bogus", "VWAP"]), min_size=1, max_size=20),
    st.lists(
        st.tuples(st.sampled_from(["Candle", "Quote", "Unknown"]), st.lists(_values, max_size=40)),
        min_size=1,
        max_size=3,
    ),
)
def test_compact_feed_data_with_wrong_counts_and_types_never_raises(
    fields: list[str], pairs: list[tuple[str, list[Any]]]
) -> None:
    """COMPACT data of random length and value types decodes or yields InvalidMessage values."""
    decoder = FeedDecoder({"Candle": fields, "Quote": ("bidPrice", "askPrice")})
    data: list[Any] = [item for pair in pairs for item in pair]
    batches, errors = decoder.decode(FeedData(1, data))
    assert len(batches) + len(errors) == len(pairs)
    assert all(isinstance(error, InvalidMessage) for error in errors)
    for batch in batches:
        if isinstance(batch, CandleEvents):
            assert all(isinstance(c, Candle) and isinstance(c.index, int) for c in batch.candles)
            assert all(isinstance(c.symbol, str) for c in batch.candles)
            assert all(type(c.open) is float for c in batch.candles)
        else:
            assert isinstance(batch, OtherEvents)


@FUZZ
@given(
    st.lists(
        st.dictionaries(st.sampled_from([*CANDLE_FIELDS, "x"]), _values, max_size=10).map(
            lambda event: {**event, "eventType": "Candle"}
        ),
        min_size=1,
        max_size=5,
    )
)
def test_full_feed_data_with_junk_values_never_raises(events: list[dict[str, Any]]) -> None:
    """FULL events with missing fields and junk values decode or yield InvalidMessage values."""
    batches, errors = FeedDecoder().decode(FeedData(1, list(events)))
    assert len(batches) + len(errors) == 1
    assert all(isinstance(error, InvalidMessage) for error in errors)


# --------------------------------------------------------------------------------------------
# Nothing at all escapes ClientProtocol/ServerProtocol.receive_message (they make events).


def client_in_state(stage: int) -> ClientProtocol:
    """A client at 0: just started, 1: authorized, 2: with configured channel 1."""
    pair = ProtocolPair()
    if stage >= 1:
        pair.handshake()
    if stage >= 2:
        pair.open_feed()
    pair.client.messages_to_send()
    pair.client.events_received()
    return pair.client


def server_in_state(stage: int) -> ServerProtocol:
    """A server at 0: just started, 1: authorized, 2: with configured channel 1."""
    pair = ProtocolPair()
    if stage >= 1:
        pair.handshake()
    if stage >= 2:
        pair.open_feed()
    pair.server.messages_to_send()
    pair.server.events_received()
    return pair.server


_frames = st.one_of(
    mutated(),
    st.binary(max_size=200),
    st.sampled_from(SEEDS),
    st.builds(
        lambda kind, channel, payload: json.dumps({"type": kind, "channel": channel, **payload}),
        st.sampled_from(list(MessageType)),
        st.integers(-1, 5),
        st.dictionaries(_keys, _json, max_size=4),
    ),
)


@settings(FUZZ, max_examples=200)
@given(st.integers(0, 2), st.lists(_frames, min_size=1, max_size=8), st.booleans())
def test_receive_message_never_raises(stage: int, frames: list[str | bytes], server: bool) -> None:
    """Any sequence of frames, in any state, only produces events and queued replies."""
    proto: ClientProtocol | ServerProtocol = (
        server_in_state(stage) if server else client_in_state(stage)
    )
    for step, frame in enumerate(frames):
        proto.receive_message(frame, 1000.0 + step)
        proto.handle_timer(1000.0 + step)
    for event in proto.events_received():
        assert type(event).__module__ == "pipeline.dxlink.protocol_events"
        # A handler bug is also turned into an event; the fuzz must not find any.
        assert not (isinstance(event, ViolationReceived) and "internal" in str(event.error))
    assert all(isinstance(text, str) for text in proto.messages_to_send())
