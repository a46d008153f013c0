"""FEED_DATA event codec: COMPACT and FULL, Candle fast path (dxlink-protocol.md §3.3 to §4.2).

Decoding needs the channel's field lists from FEED_CONFIG, so it lives apart from the
envelope codec in ``messages.py``. A :class:`FeedDecoder` holds one channel's merged
``eventFields`` (§3.2: a new list for type T replaces only T's list) and turns a
:class:`~pipeline.dxlink.messages.FeedData` into batches of events:

* ``Candle`` events become :class:`~pipeline.dxlink.events.Candle` tuples. This is the hot
  path, so for each field list a specialised decoder function is generated once (the same
  technique ``collections.namedtuple`` and ``dataclasses`` use): it reads each value by its
  fixed offset and builds the tuple with no per-event dicts or loops over fields; from
  ``_COLUMN_MIN_EVENTS`` events on it works field by field with no bytecode per event.
  Generated source contains only integer offsets and names defined here, never wire text.
  :meth:`FeedDecoder.compact_candles` is the client's per-frame call (benchmarks/README.md);
  for a large frame of one series (a snapshot chunk) it returns a
  :class:`~pipeline.dxlink.candle_block.CandleBlock` (the frame as numpy columns) instead.
* Other event types become plain dicts ``{"eventType": T, field: value, ...}``.

Value rules (§3.5, §4.2): doubles pass through ``float()``, so ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` become floats (numeric strings are accepted too, harmlessly); integer fields
must be JSON integers (a float is rejected, so an ``index`` that lost precision as a double
can never slip in; JSON ``true``/``false`` count as 1/0, as Python's bool is an int, and the
column path keeps the bool object rather than pay a conversion per value); ``index`` stays
an exact int. If ``index`` is absent it is derived from ``time`` and
``sequence``; if ``time`` is absent, from ``index``.

Encoding (for the simulator) writes Candle tuples in either format for a given field list.
FULL writes every listed field, NaN/±Infinity as the strings ``"NaN"``/``"Infinity"``/
``"-Infinity"`` exactly as the server writes them in COMPACT; it does not omit NaN fields.

Errors are :class:`~pipeline.dxlink.errors.InvalidMessage`, per COMPACT type/values pair (or
per FULL event group), naming the event and field. No I/O, no clock.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

from pipeline.dxlink.candle_block import BlockLayout
from pipeline.dxlink.errors import InvalidMessage, UsageError
from pipeline.dxlink.events import DOUBLE_FIELDS, INT_FIELDS, SPECIAL_DOUBLES, WIRE_TO_FIELD, Candle
from pipeline.dxlink.message_models import DataFormat, FeedData, JsonObject

__all__ = [
    "CANDLE",
    "CANDLE_WIRE_FIELDS",
    "CandleEvents",
    "DecodedBatch",
    "FeedDecoder",
    "OtherEvents",
    "candle_decoder",
    "encode_candles",
]

CANDLE = "Candle"
"""The Candle event type name (§4)."""

CANDLE_WIRE_FIELDS: frozenset[str] = frozenset({"eventType", *WIRE_TO_FIELD})
"""Every Candle wire field name this codec understands (§4.1)."""

# From this many events per array the column path beats the row path (bench_decode).
_COLUMN_MIN_EVENTS = 20
# What a generated decoder raises on a wrongly typed value (then _diagnose names it).
_DECODE_ERRORS = (TypeError, ValueError, AttributeError, OverflowError)
# Bound on distinct FULL key sets cached per channel; a hostile server cannot grow memory.
_MAX_CACHED_DECODERS = 64

CandleDecoder: TypeAlias = Callable[[list[Any]], list[Candle]]


@dataclass(frozen=True, slots=True)
class CandleEvents:
    """Decoded Candle events of one COMPACT pair or FULL group, in arrival order."""

    candles: list[Candle]


@dataclass(frozen=True, slots=True)
class OtherEvents:
    """Decoded events of a non-Candle type, as dicts (``eventType`` included)."""

    event_type: str
    events: list[JsonObject]


DecodedBatch: TypeAlias = CandleEvents | OtherEvents


def _positions(fields: Sequence[str]) -> dict[str, int]:
    """Candle attribute -> offset of its first occurrence in a wire field list."""
    positions: dict[str, int] = {}
    for offset, wire in enumerate(fields):
        attribute = WIRE_TO_FIELD.get(wire)
        if attribute is not None:
            positions.setdefault(attribute, offset)
    return positions


def candle_decoder(fields: Sequence[str]) -> CandleDecoder:
    """Build the decoder for back-to-back Candle values laid out as ``fields`` (§3.4).

    The returned function takes the flat values array (its length a multiple of
    ``len(fields)``) and returns the Candle tuples. It raises ``TypeError``/``ValueError``/
    ``OverflowError`` on a wrongly typed value; :class:`FeedDecoder` turns that into a precise
    InvalidMessage. Both of its paths (see ``_decoder_source``) accept and reject the same
    values and build the same tuples.

    Raises:
        InvalidMessage: ``fields`` lacks ``eventSymbol``, or has neither ``time`` nor ``index``.
    """
    at = _positions(fields)
    if "symbol" not in at:
        raise InvalidMessage(f"Candle eventFields lack eventSymbol: {list(fields)!r:.200}")
    if "time" not in at and "index" not in at:
        raise InvalidMessage(
            f"Candle eventFields have neither time nor index: {list(fields)!r:.200}"
        )
    source = _decoder_source(at, len(fields))
    namespace: dict[str, Any] = {
        "new": tuple.__new__,
        "Candle": Candle,
        "as_int": operator.index,
        "flt": float,
        "special": SPECIAL_DOUBLES.get,
        "nan": math.nan,
        "join": "".join,
        "repeat": itertools.repeat,
        "special_column": _special_column,
        "total": sum,
        "bit_and": operator.and_,
    }
    exec(compile(source, f"<candle decoder {len(fields)} fields>", "exec"), namespace)
    decoder: CandleDecoder = namespace["decode"]
    return decoder


def _special_column(column: list[Any], count: int) -> Iterable[float]:
    """A double field's column that holds strings, as floats (§3.5), for the column path.

    ``float("NaN")`` parses text, far more work than a plain ``float(x)``, so a column of
    nothing but ``"NaN"`` (impVolatility and openInterest, usually) becomes a repeat of one
    NaN, and any other maps the three special strings through a dict before ``float``.
    """
    if column.count("NaN") == count:
        return itertools.repeat(math.nan, count)
    return map(float, map(cast(Any, SPECIAL_DOUBLES.get), column, column))


def _decoder_source(at: dict[str, int], width: int) -> str:
    """Python source of ``decode(v)`` for one field layout (offsets in ``at``).

    Two paths, chosen per call by the number of events:

    * column path (``_COLUMN_MIN_EVENTS`` or more, and ``index`` and ``time`` listed): each
      field is one strided slice ``v[offset::width]`` converted by a C-level ``map``, and
      ``zip`` feeds ``tuple.__new__``: no Python bytecode runs per event.
    * row path: one loop iteration per event, unpacking the ``width`` values at once and
      calling a converter only for a value that is not already the right type.
    """
    names = {attribute: f"a_{attribute}" for attribute in at}
    lines = ["def decode(v):", f"    n = len(v) // {width}"]
    if "index" in at and "time" in at:
        lines += _column_lines(at, width)
    # Row path: unpack one event; positions we do not use (and duplicates) go to `_`.
    unpacked = ["_"] * width
    for attribute, offset in at.items():
        unpacked[offset] = names[attribute]
    targets = ", ".join(unpacked) + ","
    checks = [f"if {names['symbol']}.__class__ is not str: raise TypeError"]
    for name in INT_FIELDS:
        if name in at:
            var = names[name]
            checks.append(f"if {var}.__class__ is not int: {var} = as_int({var})")
    for name in DOUBLE_FIELDS:
        if name in at:
            var = names[name]
            checks.append(
                f"if {var}.__class__ is not float: "
                f'{var} = nan if {var} == "NaN" else flt(special({var}, {var}))'
            )
    # §4.2: index = ((time // 1000) << 32) | ((time % 1000) << 22) | sequence, and back.
    if "index" not in at:
        checks.append(
            "a_index = ((a_time // 1000) << 32) | ((a_time % 1000) << 22)"
            + (" | (a_sequence & 0x3FFFFF)" if "sequence" in at else "")
        )
    elif "sequence" not in at:
        checks.append("a_sequence = a_index & 0x3FFFFF")
    if "time" not in at:
        checks.append("a_time = (a_index >> 32) * 1000 + ((a_index >> 22) & 0x3FF)")
    known = {*at, "time", "index"} | ({"sequence"} if "index" in at else set())
    ints = [f"a_{name}" if name in known else "0" for name in INT_FIELDS]
    doubles = [names[name] if name in at else "nan" for name in DOUBLE_FIELDS]
    candle = f"new(Candle, ({names['symbol']}, {', '.join(ints + doubles)}))"
    lines += [
        "    if n == 1:",  # one event (a live update): unpack the list itself, no loop
        f"        {targets} = v",
        *(f"        {line}" for line in checks),
        f"        return [{candle}]",
        "    out = []",
        "    append = out.append",
        "    it = iter(v)",
        f"    for {targets} in zip({', '.join(['it'] * width)}):",
        *(f"        {line}" for line in checks),
        f"        append({candle})",
        "    return out",
    ]
    return "\n".join(lines)


def _column_lines(at: dict[str, int], width: int) -> list[str]:
    """The column path of ``decode(v)``: runs when there are enough events to pay off.

    Checks run in C here, with no bytecode per value: ``join`` raises unless every symbol is
    a str, and ``sum`` of an integer field's column is an int only if every value is an int
    (a float makes it a float; a string, null, array or object raises TypeError).
    """
    lines = [
        f"    if n >= {_COLUMN_MIN_EVENTS}:",
        f"        symbols = v[{at['symbol']}::{width}]",
        "        join(symbols)",
    ]
    columns = ["symbols"]
    for name in INT_FIELDS:
        if name == "index" or (name == "sequence" and "sequence" not in at):
            continue
        if name in at:
            lines.append(f"        c_{name} = v[{at[name]}::{width}]")
            lines.append(f"        if total(c_{name}).__class__ is not int: raise TypeError")
    # The index column is near 2**63: its sum would leave the C fast path, so map instead.
    if "sequence" in at:
        index = f"map(as_int, v[{at['index']}::{width}])"
    else:  # §4.2: sequence = index & 0x3FFFFF; the index column is needed twice.
        lines.append(f"        c_index = list(map(as_int, v[{at['index']}::{width}]))")
        index = "c_index"
    for name in INT_FIELDS:
        if name == "index":
            columns.append(index)
        elif name == "sequence" and "sequence" not in at:
            columns.append("map(bit_and, c_index, repeat(0x3FFFFF, n))")
        else:
            columns.append(f"c_{name}" if name in at else "repeat(0, n)")
    for name in DOUBLE_FIELDS:
        if name not in at:
            columns.append("repeat(nan, n)")
            continue
        lines.append(f"        d_{name} = v[{at[name]}::{width}]")
        lines.append(
            f"        d_{name} = special_column(d_{name}, n) "
            f"if d_{name}[0].__class__ is str else map(flt, d_{name})"
        )
        columns.append(f"d_{name}")
    lines.append("        return list(map(new, repeat(Candle, n), zip(")
    lines += [f"            {column}," for column in columns]
    lines.append("        )))")
    return lines


def _diagnose(values: list[Any], fields: Sequence[str], event_type: str) -> InvalidMessage:
    """Slow path after a fast decode failed: name the first bad event and field."""
    width = len(fields)
    for event_number, offset in enumerate(range(0, len(values), width)):
        for position, wire in enumerate(fields):
            value = values[offset + position]
            attribute = WIRE_TO_FIELD.get(wire)
            try:
                if attribute == "symbol" and not isinstance(value, str):
                    raise TypeError
                if attribute in INT_FIELDS:
                    operator.index(value)
                elif attribute in DOUBLE_FIELDS:
                    float(value)
            except (TypeError, ValueError, OverflowError):
                expected = (
                    "a string"
                    if attribute == "symbol"
                    else "an integer"
                    if attribute in INT_FIELDS
                    else 'a number or "NaN"/"Infinity"/"-Infinity"'
                )
                return InvalidMessage(
                    f"{event_type} event {event_number} field {wire} must be {expected}, "
                    f"not {value!r:.40}"
                )
    return InvalidMessage(f"{event_type} values could not be decoded")


def _plain_event(event_type: str, fields: Iterable[str], values: Iterable[Any]) -> JsonObject:
    event: JsonObject = {"eventType": event_type}
    for name, value in zip(fields, values, strict=False):
        event[name] = SPECIAL_DOUBLES.get(value, value) if isinstance(value, str) else value
    return event


class FeedDecoder:
    """Decodes one channel's FEED_DATA with that channel's merged FEED_CONFIG field lists."""

    def __init__(self, event_fields: Mapping[str, Sequence[str]] | None = None) -> None:
        self._fields: dict[str, tuple[str, ...]] = {}
        self._decoders: dict[tuple[str, ...], CandleDecoder | InvalidMessage] = {}
        # The current COMPACT Candle layout: (field count, decoder, block layout or None),
        # None if unusable.
        self._compact_candle: tuple[int, CandleDecoder, BlockLayout | None] | None = None
        if event_fields:
            self.update(event_fields)

    @property
    def event_fields(self) -> dict[str, tuple[str, ...]]:
        """A copy of the merged field lists, per event type."""
        return dict(self._fields)

    def update(self, event_fields: Mapping[str, Sequence[str]]) -> None:
        """Merge a FEED_CONFIG ``eventFields``: each listed type's list is replaced (§3.2)."""
        for event_type, names in event_fields.items():
            self._fields[event_type] = tuple(names)
        fields = self._fields.get(CANDLE)
        self._compact_candle = None
        if fields:
            # An unusable list stays None here; decode() reports it with every Candle pair.
            with suppress(InvalidMessage):
                decoder = self._candle_decoder(fields)
                block = BlockLayout.of(len(fields), _positions(fields))
                self._compact_candle = (len(fields), decoder, block)

    def compact_candles(self, values: object) -> Sequence[Candle] | None:
        """Decode one COMPACT ``Candle`` values array, or return None if it is not clean.

        The per-frame fast path (``ClientProtocol``): no batches, no error objects. None
        means "not decodable as is" (no usable Candle field list, a count that is not a
        multiple of it, a wrongly typed value); :meth:`decode` then says exactly why.
        For a large frame of one series (``BlockLayout.suits``) the result is a
        :class:`~pipeline.dxlink.candle_block.CandleBlock` (columns), else a list.
        """
        layout = self._compact_candle
        if layout is None or values.__class__ is not list:
            return None
        width, decoder, block = layout
        if len(values) % width:
            return None
        if block is not None and block.suits(values):
            try:
                return block.decode(values)
            except _DECODE_ERRORS:
                pass  # not block-clean (an index beyond int64, say): the tuple decoder decides
        try:
            return decoder(values)
        except _DECODE_ERRORS:
            return None

    def _candle_decoder(self, fields: tuple[str, ...]) -> CandleDecoder:
        decoder = self._decoders.get(fields)
        if decoder is None:
            if len(self._decoders) >= _MAX_CACHED_DECODERS:
                self._decoders.clear()
            try:
                decoder = candle_decoder(fields)
            except InvalidMessage as exc:
                decoder = exc
            self._decoders[fields] = decoder
        if isinstance(decoder, InvalidMessage):
            raise InvalidMessage(decoder.reason)
        return decoder

    def decode(self, message: FeedData) -> tuple[list[DecodedBatch], list[InvalidMessage]]:
        """Decode every COMPACT pair or FULL event group of a FEED_DATA (§3.3, §3.4).

        Returns:
            The decoded batches in order, and one InvalidMessage per pair/group that could
            not be decoded (unknown type, value count not a multiple of the field count,
            wrongly typed values). Good pairs are kept even when others fail.
        """
        data = message.data
        if not data:
            return [], [InvalidMessage("FEED_DATA data is empty")]
        if isinstance(data[0], str):
            pairs = [(data[i], data[i + 1]) for i in range(0, len(data) - 1, 2)]
            return self._decode_pairs(pairs)
        return self._decode_full(data)

    def _decode_pairs(
        self, pairs: list[tuple[Any, Any]]
    ) -> tuple[list[DecodedBatch], list[InvalidMessage]]:
        batches: list[DecodedBatch] = []
        errors: list[InvalidMessage] = []
        for event_type, values in pairs:
            try:
                batches.append(self._decode_compact(event_type, values))
            except InvalidMessage as exc:
                errors.append(exc)
        return batches, errors

    def _decode_compact(self, event_type: object, values: object) -> DecodedBatch:
        if not isinstance(event_type, str) or not isinstance(values, list):
            raise InvalidMessage("COMPACT data must alternate event type strings and value arrays")
        fields = self._fields.get(event_type)
        if not fields:
            known = ", ".join(self._fields) or "none yet"
            raise InvalidMessage(
                f"no eventFields for {event_type!r:.40} on this channel "
                f"(FEED_CONFIG listed: {known})"
            )
        if len(values) % len(fields):
            raise InvalidMessage(
                f"{event_type} has {len(values)} values, not a multiple of its {len(fields)} fields"
            )
        if event_type != CANDLE:
            width = len(fields)
            return OtherEvents(
                event_type,
                [
                    _plain_event(event_type, fields, values[o : o + width])
                    for o in range(0, len(values), width)
                ],
            )
        decoder = self._candle_decoder(fields)
        try:
            return CandleEvents(decoder(values))
        except _DECODE_ERRORS:
            raise _diagnose(values, fields, event_type) from None

    def _decode_full(self, events: list[Any]) -> tuple[list[DecodedBatch], list[InvalidMessage]]:
        # §3.3: consecutive events of one type form one batch; omitted fields take defaults.
        batches: list[DecodedBatch] = []
        errors: list[InvalidMessage] = []
        start = 0
        while start < len(events):
            first = events[start]
            if not isinstance(first, dict) or not isinstance(first.get("eventType"), str):
                errors.append(
                    InvalidMessage(f"FULL event {start} must be an object with eventType")
                )
                start += 1
                continue
            event_type = first["eventType"]
            end = start + 1
            while (
                end < len(events)
                and isinstance(events[end], dict)
                and events[end].get("eventType") == event_type
            ):
                end += 1
            group = events[start:end]
            try:
                batches.append(self._decode_full_group(event_type, group))
            except InvalidMessage as exc:
                errors.append(exc)
            start = end
        return batches, errors

    def _decode_full_group(self, event_type: str, group: list[JsonObject]) -> DecodedBatch:
        if event_type != CANDLE:
            return OtherEvents(
                event_type, [_plain_event(event_type, event, event.values()) for event in group]
            )
        candles: list[Candle] = []
        for event in group:
            fields = tuple(event)
            values = list(event.values())
            decoder = self._candle_decoder(fields)
            try:
                candles.extend(decoder(values))
            except _DECODE_ERRORS:
                raise _diagnose(values, fields, event_type) from None
        return CandleEvents(candles)


def _wire_double(value: object) -> object:
    # §3.5 JSONDouble: NaN and ±Infinity travel as strings (orjson would write null).
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
    return value


def _layout(fields: Sequence[str]) -> list[tuple[int, bool]]:
    """Per wire field: (position in the Candle tuple or -1 for eventType, is a double)."""
    layout: list[tuple[int, bool]] = []
    for wire in fields:
        if wire == "eventType":
            layout.append((-1, False))
            continue
        attribute = WIRE_TO_FIELD.get(wire)
        if attribute is None:
            raise UsageError(
                f"cannot encode Candle field {wire!r}; known fields: {sorted(CANDLE_WIRE_FIELDS)}"
            )
        layout.append((Candle._fields.index(attribute), attribute in DOUBLE_FIELDS))
    return layout


def _candle_values(candle: Candle, layout: list[tuple[int, bool]]) -> list[Any]:
    return [
        CANDLE if at < 0 else _wire_double(candle[at]) if double else candle[at]
        for at, double in layout
    ]


def encode_candles(
    candles: Sequence[Candle], *, fields: Sequence[str], data_format: DataFormat
) -> list[Any]:
    """Build a FEED_DATA ``data`` array for ``candles`` laid out as ``fields`` (§3.3, §3.4).

    COMPACT: ``["Candle", [v1..vK, v1..vK, ...]]``. FULL: one object per candle with
    ``eventType`` first and every listed field; NaN/±Infinity are written as strings.

    Raises:
        UsageError: a field name is not a Candle wire field, or ``candles`` is empty.
    """
    if not candles:
        raise UsageError("encode_candles needs at least one candle (FEED_DATA data is non-empty)")
    layout = _layout(fields)
    if data_format is DataFormat.COMPACT:
        return [CANDLE, [value for candle in candles for value in _candle_values(candle, layout)]]
    names = list(fields)
    return [
        {"eventType": CANDLE, **dict(zip(names, _candle_values(candle, layout), strict=True))}
        for candle in candles
    ]
