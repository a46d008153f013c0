"""The codec's test vectors and sample candles (dxlink-protocol.md §10, §3.3-§3.5, §4.1).

Shared by the codec, protocol, candle-block and fuzz tests: the §10 wire vectors T1-T10 with
the models they parse to, the FEED_DATA frames T6-T8, the field lists they are configured with,
and candles that hold every kind of double.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson
from hypothesis import strategies as st

from pipeline.dxlink import (
    CANDLE_FIELDS,
    SNAPSHOT_BEGIN,
    Candle,
    CandleEvents,
    DataFormat,
    FeedData,
    FeedDecoder,
    InvalidMessage,
    SubscriptionItem,
    index_of,
    parse,
)
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

NAN = math.nan
T4_FIELDS = CANDLE_FIELDS
T7_FIELDS = (
    "eventType",
    "eventSymbol",
    "eventFlags",
    "index",
    "time",
    "open",
    "high",
    "low",
    "close",
    "volume",
)


def same(a: object, b: object) -> bool:
    """Equality that treats NaN as equal to NaN (Candle tuples hold NaN doubles)."""
    return repr(a) == repr(b)


# §10 vectors: (wire text, the model it parses to).
VECTORS: list[tuple[str, str, Message]] = [
    (
        "T1 client SETUP",
        '{"type":"SETUP","channel":0,"version":"0.1-DXF-JS/0.3.0","keepaliveTimeout":60,'
        '"acceptKeepaliveTimeout":60}',
        Setup("0.1-DXF-JS/0.3.0", 60, 60),
    ),
    (
        "T1 server SETUP",
        '{"type":"SETUP","channel":0,"keepaliveTimeout":60,"acceptKeepaliveTimeout":60,'
        '"version":"1.0-1.2.1-20240722-153442"}',
        Setup("1.0-1.2.1-20240722-153442", 60, 60),
    ),
    (
        "T2 AUTH_STATE UNAUTHORIZED",
        '{"type":"AUTH_STATE","channel":0,"state":"UNAUTHORIZED"}',
        AuthState(AuthStateValue.UNAUTHORIZED),
    ),
    ("T2 AUTH", '{"type":"AUTH","channel":0,"token":"<redacted>"}', Auth("<redacted>")),
    (
        "T2 AUTH_STATE AUTHORIZED",
        '{"type":"AUTH_STATE","channel":0,"state":"AUTHORIZED","userId":"<redacted>"}',
        AuthState(AuthStateValue.AUTHORIZED, "<redacted>"),
    ),
    (
        "T3 CHANNEL_REQUEST",
        '{"type":"CHANNEL_REQUEST","channel":3,"service":"FEED","parameters":{"contract":"AUTO"}}',
        ChannelRequest(3, "FEED", {"contract": "AUTO"}),
    ),
    (
        "T3 CHANNEL_OPENED",
        '{"type":"CHANNEL_OPENED","channel":3,"service":"FEED","parameters":{"contract":"AUTO",'
        '"subFormat":"LIST"}}',
        ChannelOpened(3, "FEED", {"contract": "AUTO", "subFormat": "LIST"}),
    ),
    (
        "T3 FEED_CONFIG without eventFields",
        '{"type":"FEED_CONFIG","channel":3,"dataFormat":"COMPACT","aggregationPeriod":0.1}',
        FeedConfig(3, 0.1, DataFormat.COMPACT),
    ),
    (
        "T4 CHANNEL_REQUEST HISTORY",
        '{"type":"CHANNEL_REQUEST","channel":1,"service":"FEED","parameters":{"contract":"HISTORY"}}',
        ChannelRequest(1, "FEED", {"contract": "HISTORY"}),
    ),
    (
        "T4 FEED_SETUP",
        '{"type":"FEED_SETUP","channel":1,"acceptAggregationPeriod":0.1,"acceptDataFormat":'
        '"COMPACT","acceptEventFields":{"Candle":' + orjson.dumps(list(T4_FIELDS)).decode() + "}}",
        FeedSetup(1, 0.1, DataFormat.COMPACT, {"Candle": T4_FIELDS}),
    ),
    (
        "T4 FEED_CONFIG",
        '{"type":"FEED_CONFIG","channel":1,"aggregationPeriod":0.1,"dataFormat":"COMPACT",'
        '"eventFields":{"Candle":' + orjson.dumps(list(T4_FIELDS)).decode() + "}}",
        FeedConfig(1, 0.1, DataFormat.COMPACT, {"Candle": T4_FIELDS}),
    ),
    (
        "T5 subscribe",
        '{"type":"FEED_SUBSCRIPTION","channel":1,"add":[{"symbol":"AAPL{=5m,tho=true}",'
        '"type":"Candle","fromTime":1756252800000}]}',
        FeedSubscription(1, add=(SubscriptionItem("Candle", "AAPL{=5m,tho=true}", 1756252800000),)),
    ),
    (
        "T5 unsubscribe",
        '{"type":"FEED_SUBSCRIPTION","channel":1,"remove":[{"symbol":"AAPL{=5m,tho=true}",'
        '"type":"Candle","fromTime":1756252800000}]}',
        FeedSubscription(
            1, remove=(SubscriptionItem("Candle", "AAPL{=5m,tho=true}", 1756252800000),)
        ),
    ),
    (
        "T5 reset",
        '{"type":"FEED_SUBSCRIPTION","channel":1,"reset":true}',
        FeedSubscription(1, reset=True),
    ),
    ("T9 KEEPALIVE", '{"type":"KEEPALIVE","channel":0}', Keepalive()),
    ("T9 CHANNEL_CANCEL", '{"type":"CHANNEL_CANCEL","channel":1}', ChannelCancel(1)),
    ("T9 CHANNEL_CLOSED", '{"type":"CHANNEL_CLOSED","channel":1}', ChannelClosed(1)),
    (
        "T10 TIMEOUT",
        '{"type":"ERROR","channel":0,"error":"TIMEOUT","message":"The timeout has been reached. '
        'The message was last received 60 seconds ago."}',
        Error(
            "TIMEOUT",
            "The timeout has been reached. The message was last received 60 seconds ago.",
        ),
    ),
    (
        "T10 INVALID_MESSAGE",
        '{"type":"ERROR","channel":0,"error":"INVALID_MESSAGE","message":"The message is not '
        'valid JSON."}',
        Error("INVALID_MESSAGE", "The message is not valid JSON."),
    ),
    (
        "T10 UNAUTHORIZED",
        '{"type":"ERROR","channel":0,"error":"UNAUTHORIZED","message":'
        '"com.dxfeed.mdd.dxlink.auth.AuthException: Session not found: api"}',
        Error("UNAUTHORIZED", "com.dxfeed.mdd.dxlink.auth.AuthException: Session not found: api"),
    ),
]


T6 = (
    '{"type":"FEED_DATA","channel":1,"data":["Candle",["Candle","AAPL{=5m,tho=true}",0,4,'
    "7543264805860147200,1756303200000,0,57,229.84,229.95,229.8,229.93,2105,229.8811,1003,1102,"
    '"NaN","NaN","Candle","AAPL{=5m,tho=true}",0,0,7543263517369958400,1756302900000,0,412,'
    '229.61,229.9,229.5,229.84,18733,229.7123,9012,9721,"NaN","NaN"]]}'
)
T7 = [
    '{"type":"FEED_DATA","channel":1,"data":["Candle",["Candle","SPY{=d}",4,7543048339508428800,'
    "1756252800000,645.1,647.37,644.42,646.9,4.8502311E7]]}",
    '{"type":"FEED_DATA","channel":1,"data":["Candle",["Candle","SPY{=d}",0,7542677254334054400,'
    '1756166400000,642.6,646.05,641.9,645.16,51234000,"Candle","SPY{=d}",8,7542306169159680000,'
    "1756080000000,644.5,645.3,642.1,642.47,47250000]]}",
    '{"type":"FEED_DATA","channel":1,"data":["Candle",["Candle","SPY{=d}",0,7543048339508428800,'
    "1756252800000,645.1,647.6,644.42,647.41,49110250]]}",
]
T8 = (
    '{"type":"FEED_DATA","channel":1,"data":["Candle",["Candle","AAPL{=d}",14,'
    '7543048339508428800,1756252800000,"NaN","NaN","NaN","NaN","NaN"]]}'
)
FULL_EXAMPLE = (
    '{"type":"FEED_DATA","channel":1,"data":[{"eventType":"Candle","eventSymbol":"AAPL{=d}",'
    '"eventFlags":0,"time":1666600000000,"open":123.45,"close":123.46}]}'
)


def decode(frame: str, fields: tuple[str, ...]) -> tuple[list[Any], list[InvalidMessage]]:
    """Parse a FEED_DATA frame and decode it with a one-type Candle config."""
    message = parse(frame)
    assert isinstance(message, FeedData)
    return FeedDecoder({"Candle": fields}).decode(message)


def candles_of(frame: str, fields: tuple[str, ...]) -> list[Candle]:
    """The candles of a FEED_DATA frame that must decode without an error."""
    batches, errors = decode(frame, fields)
    assert errors == []
    return [c for batch in batches if isinstance(batch, CandleEvents) for c in batch.candles]


# tastyware's order (dxlink-protocol.md §4.1): no eventType, doubles after the ints, OHLC last.
TASTYWARE_FIELDS = (*CANDLE_FIELDS[1:8], *CANDLE_FIELDS[12:], *CANDLE_FIELDS[8:12])


def comparable(candles: Iterable[Candle]) -> list[tuple[object, ...]]:
    """Candles as tuples in which NaN equals NaN (and, as in Python, True equals 1)."""
    return [tuple("NaN" if value != value else value for value in candle) for candle in candles]


def sample(count: int) -> list[Candle]:
    """``count`` distinct candles with every double kind: finite, NaN, both infinities."""
    candles = []
    for number in range(count):
        time_ms = 1756303200000 - number * 300_000
        candles.append(
            Candle(
                f"S{number % 3}{{=5m}}",
                time_ms,
                number % 5,
                (SNAPSHOT_BEGIN if number == 0 else 0) | (number % 2),
                index_of(time_ms, number % 5),
                number * 7,
                57 + number,
                229.5 + number,
                230.0 + number,
                NAN if number % 4 == 0 else 229.0,
                math.inf if number == 3 else 229.75,
                2105.0 + number,
                229.6,
                -math.inf if number == 5 else 1003.0,
                1102.0,
                NAN,
                NAN if number % 2 else 0.25,
            )
        )
    return candles


def outcome(decode: Any) -> tuple[str, list[tuple[object, ...]]]:
    """("ok", comparable candles) or ("error", []) when the decoder rejects the values."""
    try:
        return "ok", comparable(decode())
    except (TypeError, ValueError, AttributeError, OverflowError):
        return "error", []


# Values of every JSON kind (and wrong numbers) to put where a Candle value belongs.
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "1.5", "", "AAPL{=d}"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
