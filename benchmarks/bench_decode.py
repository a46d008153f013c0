"""Decode benchmark: COMPACT Candle FEED_DATA through our client vs the tastytrade SDK.

Run with ``./run python -m benchmarks.bench_decode`` (about 10 s); see README.md here.

For 1, 10 and 100 Candle events per message it times, side by side in the same rounds:

* the JSON floor: ``orjson.loads`` of the frame, the parse our client does first anyway;
* lower bounds: ``orjson.loads`` plus the least that any client with our API must add
  (the Candle tuples built with no checks, the one CandlesReceived; for 20+ events also
  the same with the ``float()`` of the double fields), to tell a missed target from an
  impossible one;
* our client's whole per-frame path, ``ClientProtocol.receive_message(text, now)`` plus
  ``events_received()``, on a channel configured by FEED_CONFIG like a real one, for a
  text frame and for the same frame as bytes;
* our codec alone on the parsed frame: ``FeedDecoder.compact_candles`` (what the client's
  fast path calls) and ``FeedDecoder.decode`` (the general call);
* the tastytrade SDK (tastyware, PyPI ``tastytrade``): its streamer's path for a COMPACT
  frame, ``json.loads`` then ``Candle.from_stream(data[1])``, and ``from_stream`` alone.

The SDK's positional parser needs its own 17-field order (dxlink-protocol.md §4.1), so its
frames use that list; ours use our ``CANDLE_FIELDS`` (18, ``eventType`` first). Our client
also decodes the SDK's exact frames, so one comparison is on identical bytes. The events are
realistic 5-minute candles: doubles as the server writes them (``229.84``, ``18733.0``),
``impVolatility`` and ``openInterest`` as the string ``"NaN"``.

Target (issue 6): at every size our client reaches at least half the events/s of the JSON
floor of the same bytes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import operator
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from tastytrade.dxfeed import Candle as SdkCandle

from benchmarks.common import Timing, compare, machine_info, print_table, write_json
from pipeline.dxlink import (
    CANDLE_FIELDS,
    SNAPSHOT_BEGIN,
    WIRE_TO_FIELD,
    Candle,
    CandleEvents,
    CandlesReceived,
    ClientProtocol,
    DataFormat,
    FeedData,
    FeedDecoder,
    encode,
    encode_candles,
    index_of,
    parse,
)

__all__ = [
    "SIZES",
    "TARGET",
    "TASTYWARE_FIELDS",
    "configured_client",
    "feed_data_frame",
    "main",
    "sample_candles",
]

SIZES = (1, 10, 100)
"""Candle events per FEED_DATA message."""

TARGET = 0.5
"""Our events/s must be at least this fraction of the JSON floor's (issue 6)."""

TASTYWARE_FIELDS: tuple[str, ...] = (
    "eventSymbol",
    "eventTime",
    "eventFlags",
    "index",
    "time",
    "sequence",
    "count",
    "volume",
    "vwap",
    "bidVolume",
    "askVolume",
    "impVolatility",
    "openInterest",
    "open",
    "high",
    "low",
    "close",
)
"""tastyware 13.2.3's Candle field list, in the order its positional parser needs (§4.1)."""

_CHANNEL = 1
# The float() bound is built field by field, which only pays off for many events (below
# this its per-field setup would make it slower than our decoder, so no bound at all).
_FIELD_BOUND_MIN_EVENTS = 20
_FIVE_MINUTES = 300_000
_START = 1756303200000  # 2025-08-27T14:00Z, a T6 time (§10)


def sample_candles(count: int) -> list[Candle]:
    """``count`` consecutive 5-minute AAPL candles, the first one opening a snapshot."""
    candles = []
    for number in range(count):
        time_ms = _START - number * _FIVE_MINUTES
        base = 229.84 - 0.07 * number
        candles.append(
            Candle(
                symbol="AAPL{=5m}",
                time=time_ms,
                flags=SNAPSHOT_BEGIN if number == 0 else 0,
                index=index_of(time_ms),
                count=57 + 13 * number,
                open=round(base, 2),
                high=round(base + 0.11, 2),
                low=round(base - 0.04, 2),
                close=round(base + 0.09, 2),
                volume=2105.0 + 311 * number,
                vwap=round(base + 0.0411, 4),
                bid_volume=1003.0 + 97 * number,
                ask_volume=1102.0 + 101 * number,
                imp_volatility=math.nan,
                open_interest=math.nan,
            )
        )
    return candles


def feed_data_frame(candles: Sequence[Candle], fields: Sequence[str]) -> str:
    """The COMPACT FEED_DATA text frame carrying ``candles`` laid out as ``fields``."""
    data = encode_candles(candles, fields=fields, data_format=DataFormat.COMPACT)
    return encode(FeedData(_CHANNEL, data))


def configured_client(fields: Sequence[str]) -> ClientProtocol:
    """A client driven by raw server frames to an AUTHORIZED, CONFIGURED channel 1 (§2.2, §3.2)."""
    client = ClientProtocol(token="benchmark-token")
    client.start(0.0)
    server_frames = [
        '{"type":"SETUP","channel":0,"keepaliveTimeout":60,"acceptKeepaliveTimeout":60,'
        '"version":"1.0-bench"}',
        '{"type":"AUTH_STATE","channel":0,"state":"UNAUTHORIZED"}',
        '{"type":"AUTH_STATE","channel":0,"state":"AUTHORIZED","userId":"bench"}',
    ]
    for frame in server_frames:
        client.receive_message(frame, 0.0)
    channel = client.open_channel("HISTORY")
    client.receive_message(
        f'{{"type":"CHANNEL_OPENED","channel":{channel},"service":"FEED","parameters":'
        '{"contract":"HISTORY","subFormat":"LIST"}}',
        0.0,
    )
    config = {
        "type": "FEED_CONFIG",
        "channel": channel,
        "aggregationPeriod": 0.1,
        "dataFormat": "COMPACT",
        "eventFields": {"Candle": list(fields)},
    }
    client.receive_message(orjson.dumps(config).decode(), 0.0)
    client.messages_to_send()
    client.events_received()
    return client


def _client_path(client: ClientProtocol, frame: str | bytes) -> Callable[[], object]:
    """One frame through the client exactly as the driver does it."""
    receive, drain = client.receive_message, client.events_received

    def run() -> object:
        receive(frame, 1.0)
        return drain()

    return run


def _client_path_tuples(client: ClientProtocol, frame: str | bytes) -> Callable[[], object]:
    """:func:`_client_path`, then every event as a ``Candle`` tuple (a large frame arrives as
    a column block; a consumer that iterates it pays for the tuples here)."""
    receive, drain = client.receive_message, client.events_received

    def run() -> object:
        receive(frame, 1.0)
        return [list(event.candles) for event in drain() if isinstance(event, CandlesReceived)]

    return run


def _codec_paths(fields: Sequence[str], frame: str) -> dict[str, Callable[[], object]]:
    """Our codec alone, on the parsed frame: the client's fast call and the general one."""
    decoder = FeedDecoder({"Candle": fields})
    message = parse(frame)
    assert isinstance(message, FeedData)
    values = message.data[1]
    compact_candles, decode = decoder.compact_candles, decoder.decode
    return {"codec fast 18": lambda: compact_candles(values), "codec 18": lambda: decode(message)}


def _lower_bounds(frame: str) -> dict[str, Callable[[], object]]:
    """The least any client with our API does per frame, timed two ways (the table shows the
    faster): ``orjson.loads``, the Candle tuples built straight from the values (no checks, no
    conversions, no protocol state), and the one CandlesReceived event handed out."""
    width = len(CANDLE_FIELDS)
    wire = {attribute: name for name, attribute in WIRE_TO_FIELD.items() if name != "VWAP"}
    offsets = [CANDLE_FIELDS.index(wire[attribute]) for attribute in Candle._fields]
    pick, new, loads, repeat = (
        operator.itemgetter(*offsets),
        tuple.__new__,
        orjson.loads,
        itertools.repeat,
    )
    # The event as protocol.py builds it: its two slots set directly, no frozen __init__.
    new_event = object.__new__
    set_channel = getattr(CandlesReceived, "channel").__set__  # noqa: B009
    set_candles = getattr(CandlesReceived, "candles").__set__  # noqa: B009

    def event(candles: list[Candle]) -> list[CandlesReceived]:
        received = new_event(CandlesReceived)
        set_channel(received, _CHANNEL)
        set_candles(received, candles)
        return [received]

    def by_event() -> object:
        values = loads(frame)["data"][1]
        if len(values) == width:
            return event([new(Candle, pick(values))])
        rows = zip(*[iter(values)] * width, strict=True)
        return event(list(map(new, repeat(Candle, len(values) // width), map(pick, rows))))

    def by_field() -> object:
        values = loads(frame)["data"][1]
        columns = [values[offset::width] for offset in offsets]
        return event(list(map(new, repeat(Candle, len(columns[0])), zip(*columns, strict=True))))

    doubles = len(Candle._fields) - 10  # the first of the ten double fields (§4.1)

    def by_field_with_floats() -> object:
        # As by_field, plus the one conversion the Candle contract forces: JSON integers and
        # "NaN" strings arrive in double fields, so every double is float()ed (an all-"NaN"
        # column, found by count(), becomes a repeat of one NaN).
        values = loads(frame)["data"][1]
        columns: list[Any] = [values[offset::width] for offset in offsets]
        count = len(columns[0])
        for number in range(doubles, len(columns)):
            column = columns[number]
            nan = column[0].__class__ is str and column.count("NaN") == count
            columns[number] = repeat(math.nan, count) if nan else map(float, column)
        return event(list(map(new, repeat(Candle, count), zip(*columns, strict=True))))

    bounds = {"bound by event 18": by_event, "bound by field 18": by_field}
    if len(loads(frame)["data"][1]) >= _FIELD_BOUND_MIN_EVENTS * width:
        bounds["bound floats 18"] = by_field_with_floats
    return bounds


def _sdk_path(frame: str) -> Callable[[], object]:
    """tastyware's streamer: ``receive_json`` (stdlib json) then ``_map_message`` (COMPACT)."""
    loads, from_stream = json.loads, SdkCandle.from_stream

    def run() -> object:
        return from_stream(loads(frame)["data"][1])

    return run


def _check(size: int, frames: dict[str, str]) -> None:
    """Refuse to time paths that do not decode the sample correctly."""
    expected = repr(sample_candles(size))
    for fields, frame in ((CANDLE_FIELDS, frames["ours"]), (TASTYWARE_FIELDS, frames["sdk"])):
        events = _client_path(configured_client(fields), frame)()
        assert isinstance(events, list) and len(events) == 1, events
        (event,) = events
        assert isinstance(event, CandlesReceived) and repr(list(event.candles)) == expected, event
    batches, errors = FeedDecoder({"Candle": CANDLE_FIELDS}).decode(
        FeedData(_CHANNEL, orjson.loads(frames["ours"])["data"])
    )
    assert not errors and isinstance(batches[0], CandleEvents)
    assert repr(batches[0].candles) == expected
    sdk = SdkCandle.from_stream(orjson.loads(frames["sdk"])["data"][1])
    assert [c.time for c in sdk] == [c.time for c in sample_candles(size)]


def _cases(size: int) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    candles = sample_candles(size)
    ours, sdk = feed_data_frame(candles, CANDLE_FIELDS), feed_data_frame(candles, TASTYWARE_FIELDS)
    frames = {"ours": ours, "sdk": sdk}
    _check(size, frames)
    sdk_values = orjson.loads(sdk)["data"][1]
    return {
        "floor 18": lambda: orjson.loads(ours),
        **_lower_bounds(ours),
        "ours 18": _client_path(configured_client(CANDLE_FIELDS), ours),
        "ours 18 bytes": _client_path(configured_client(CANDLE_FIELDS), ours.encode()),
        "ours 18 tuples": _client_path_tuples(configured_client(CANDLE_FIELDS), ours),
        **_codec_paths(CANDLE_FIELDS, ours),
        "floor 17": lambda: orjson.loads(sdk),
        "ours 17": _client_path(configured_client(TASTYWARE_FIELDS), sdk),
        "sdk 17": _sdk_path(sdk),
        "sdk from_stream 17": lambda: SdkCandle.from_stream(sdk_values),
    }, frames


# (case, what is timed, field list, JSON floor it is held against, SDK path it is held against)
_ROWS = (
    ("floor 18", "JSON floor: orjson.loads", "ours (18)", "floor 18", None),
    ("bound 18", "lower bound: loads + bare tuples + event", "ours (18)", "floor 18", None),
    ("bound floats 18", "  same + float() of the doubles", "ours (18)", "floor 18", None),
    ("ours 18", "ours: receive_message + events_received", "ours (18)", "floor 18", "sdk 17"),
    ("ours 18 bytes", "  same, frame as bytes", "ours (18)", "floor 18", "sdk 17"),
    ("ours 18 tuples", "  same, then Candle tuples of all", "ours (18)", "floor 18", "sdk 17"),
    ("codec fast 18", "ours: codec, compact_candles (parsed)", "ours (18)", "floor 18", None),
    ("codec 18", "ours: codec, FeedDecoder.decode (parsed)", "ours (18)", "floor 18", None),
    ("floor 17", "JSON floor: orjson.loads", "tastyware (17)", "floor 17", None),
    ("ours 17", "ours: receive_message + events_received", "tastyware (17)", "floor 17", "sdk 17"),
    ("sdk 17", "SDK: json.loads + Candle.from_stream", "tastyware (17)", "floor 17", "sdk 17"),
    ("sdk from_stream 17", "SDK: Candle.from_stream (parsed)", "tastyware (17)", "floor 17", None),
)
_TARGET_ROWS = frozenset({"ours 18", "ours 17"})


def _seconds(timing: Timing) -> float:
    return timing.seconds


def _measure(size: int, rounds: int) -> tuple[list[list[object]], dict[str, Any]]:
    cases, frames = _cases(size)
    timings: dict[str, Timing] = compare(cases, rounds=rounds)
    timings["bound 18"] = min(
        timings.pop("bound by event 18"), timings.pop("bound by field 18"), key=_seconds
    )
    rows: list[list[object]] = []
    figures: dict[str, Any] = {
        "frame_bytes": {name: len(frame.encode()) for name, frame in frames.items()},
        "cases": {},
    }
    for case, what, fields, floor, sdk in _ROWS:
        if case not in timings:
            continue
        seconds = timings[case].seconds
        vs_floor = timings[floor].seconds / seconds
        vs_sdk = timings[sdk].seconds / seconds if sdk else None
        verdict = ("met" if vs_floor >= TARGET else "MISSED") if case in _TARGET_ROWS else ""
        rows.append(
            [
                size,
                what,
                fields,
                f"{seconds * 1e6:.2f}",
                f"{seconds * 1e6 / size:.3f}",
                f"{size / seconds / 1e3:,.0f}",
                f"{vs_floor:.2f}",
                f"{vs_sdk:.1f}" if vs_sdk is not None else "",
                verdict,
            ]
        )
        figures["cases"][case] = {
            "what": what.strip(),
            "fields": fields,
            "us_per_message": seconds * 1e6,
            "us_per_event": seconds * 1e6 / size,
            "events_per_second": size / seconds,
            "events_per_second_vs_json_floor": vs_floor,
            "events_per_second_vs_sdk": vs_sdk,
            "target_met": (vs_floor >= TARGET) if case in _TARGET_ROWS else None,
            "calls_per_round": timings[case].calls,
        }
    return rows, figures


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write ``benchmarks/results/decode.json``.

    Returns:
        0: a benchmark reports; the table and the JSON say which targets were met.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_decode", description=__doc__)
    parser.add_argument("--rounds", type=int, default=200, help="timing rounds (default 200)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="events per message"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or any(size < 1 for size in args.sizes):
        parser.error("--rounds and every --sizes value must be at least 1")
    machine = machine_info(["orjson", "tastytrade", "pydantic", "websockets"])
    table: list[list[object]] = []
    results: dict[str, Any] = {}
    # A short discarded run first: the first figures of a process come out slow (CPU clock
    # ramp-up, caches), which moves every absolute figure of the first size (not its ratios).
    _measure(args.sizes[0], max(1, args.rounds // 4))
    for size in args.sizes:
        rows, figures = _measure(size, args.rounds)
        table += rows
        results[str(size)] = figures
    print_table(
        f"Decode: COMPACT Candle FEED_DATA, best of {args.rounds} side-by-side rounds; "
        f"Python {machine['python']}, {machine['cpu']} x{machine['cpu_count']}, "
        f"load {machine['load_average']} at start",
        [
            "ev/msg",
            "path",
            "field list",
            "us/msg",
            "us/event",
            "k events/s",
            "x JSON floor",
            "x SDK",
            f"target >={TARGET}",
        ],
        table,
    )
    print(
        "\nfield lists: ours (18) = "
        + ",".join(CANDLE_FIELDS)
        + "\n             tastyware (17) = "
        + ",".join(TASTYWARE_FIELDS)
        + "\nx JSON floor: events/s over orjson.loads of the same frame; "
        "x SDK: events/s over the SDK's path on the 17-field frame of the same candles."
        + "\nlower bound: orjson.loads, tuple.__new__(Candle, ...) straight from the values (no"
        " checks, no conversions, no protocol state) and one CandlesReceived;\n  + float() (20+"
        " events): the same with every double field converted, as the Candle contract needs."
    )
    met = all(
        figures["cases"][case]["target_met"]
        for figures in results.values()
        for case in _TARGET_ROWS
    )
    path = write_json(
        "decode",
        {
            "benchmark": "decode",
            "machine": machine,
            "rounds": args.rounds,
            "target_fraction_of_json_floor": TARGET,
            "field_lists": {"ours": list(CANDLE_FIELDS), "tastyware": list(TASTYWARE_FIELDS)},
            "sizes": results,
            "all_targets_met": met,
        },
    )
    missed = sorted(
        {
            int(size)
            for size, figures in results.items()
            for case in _TARGET_ROWS
            if not figures["cases"][case]["target_met"]
        }
    )
    print(f"\ntargets: {'all met' if met else f'missed at {missed} events per message'}")
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
