"""ServerProtocol.feed_layout and send_feed_data: FEED_DATA a caller encoded itself (§3.2-§3.4).

The simulator encodes COMPACT FEED_DATA column by column; these two public actions let it do
so without reaching into the protocol's channel records, and refuse data the client could not
decode (wrong format, fields not announced yet, partial events).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.dxlink import Candle, DataFormat, ServerProtocol, UsageError, encode_candles
from tests.dxlink.drivers import authorized_server, sent
from tests.dxlink.vectors import T4_FIELDS, T6, VECTORS, candles_of


def configured_server(data_format: DataFormat = DataFormat.COMPACT) -> ServerProtocol:
    """An authorized server with channel 1 open and configured, queue drained."""
    server = authorized_server()
    server.receive_message(VECTORS[8][1], 1)  # CHANNEL_REQUEST channel 1
    server.open_channel(1)
    server.configure_feed(
        1, aggregation_period=0.1, data_format=data_format, event_fields={"Candle": T4_FIELDS}
    )
    server.messages_to_send()
    return server


def announced_server(data_format: DataFormat = DataFormat.COMPACT) -> ServerProtocol:
    """A configured server whose Candle eventFields went out with a first send_candles."""
    server = configured_server(data_format)
    server.send_candles(1, candles_of(T6, T4_FIELDS)[:1])
    server.messages_to_send()
    return server


def compact_data(candles: list[Candle]) -> list[Any]:
    """The COMPACT data array of ``candles`` in T4's layout (the general encoder)."""
    return encode_candles(candles, fields=T4_FIELDS, data_format=DataFormat.COMPACT)


def test_feed_layout_is_none_until_the_fields_are_announced() -> None:
    """Before the lazy FEED_CONFIG there is no layout; after it, the format and field list."""
    server = configured_server()
    assert server.feed_layout(1) is None
    server.send_candles(1, candles_of(T6, T4_FIELDS)[:1])
    assert server.feed_layout(1) == (DataFormat.COMPACT, T4_FIELDS)
    assert server.feed_layout(1, "Quote") is None


def test_feed_layout_of_a_channel_not_configured_is_a_usage_error() -> None:
    """Asking for the layout of an OPENED or unknown channel names the channel's state."""
    server = authorized_server()
    server.receive_message(VECTORS[8][1], 1)
    server.open_channel(1)
    with pytest.raises(UsageError, match="channel 1 is OPENED"):
        server.feed_layout(1)
    with pytest.raises(UsageError, match="channel 7 is not open"):
        server.feed_layout(7)


def test_send_feed_data_queues_the_frame_send_candles_would() -> None:
    """Caller-encoded COMPACT data goes out as the same FEED_DATA frame as send_candles'."""
    candles = candles_of(T6, T4_FIELDS)
    general = announced_server()
    general.send_candles(1, candles)
    own = announced_server()
    own.send_feed_data(1, compact_data(candles), now=5.0)
    (frame,) = sent(own)
    assert frame == sent(general)[0] == orjson.loads(T6)


def test_send_feed_data_in_full_format() -> None:
    """A FULL channel takes a list of event objects once their type is announced."""
    server = announced_server(DataFormat.FULL)
    candles = [Candle("A{=d}", 0, index=0)]
    data = encode_candles(candles, fields=T4_FIELDS, data_format=DataFormat.FULL)
    server.send_feed_data(1, data)
    assert sent(server) == [{"type": "FEED_DATA", "channel": 1, "data": data}]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "non-empty list"),
        (["Candle"], "type / values pairs"),
        (["Candle", "not a list"], "whole events"),
        (["Candle", [0] * (len(T4_FIELDS) + 1)], r"whole events \(\d+ values each"),
        (["Quote", [1.0]], "'Quote' events on channel 1.*not announced"),
        ([{"eventType": "Candle"}], "configured for COMPACT FEED_DATA, not FULL"),
    ],
)
def test_send_feed_data_refuses_data_the_client_could_not_decode(
    data: list[Any], match: str
) -> None:
    """Empty, odd, partial, unannounced or wrong-format data is refused and nothing queued."""
    server = announced_server()
    with pytest.raises(UsageError, match=match):
        server.send_feed_data(1, data)
    assert server.messages_to_send() == []


def test_send_feed_data_before_the_fields_are_announced_is_refused() -> None:
    """§3.2: FEED_DATA of a type may only follow the FEED_CONFIG carrying its fields."""
    server = configured_server()
    with pytest.raises(UsageError, match="not announced; send the first ones with send_candles"):
        server.send_feed_data(1, compact_data(candles_of(T6, T4_FIELDS)))
    assert server.messages_to_send() == []


def test_full_send_feed_data_needs_event_objects() -> None:
    """A FULL channel refuses anything but event objects, naming the expected shape."""
    server = announced_server(DataFormat.FULL)
    with pytest.raises(UsageError, match="list of event objects"):
        server.send_feed_data(1, [{"eventType": "Candle"}, 3])
    with pytest.raises(UsageError, match="'Quote' events"):
        server.send_feed_data(1, [{"eventType": "Quote"}])
