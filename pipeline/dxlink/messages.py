"""The DXLink envelope codec (dxlink-protocol.md §2.1, §2.3), and the message models.

The models (one small frozen dataclass per message type, and the enums) live in
``message_models.py``; attribute names are snake_case, the wire keys
camelCase (``keepaliveTimeout``, ``acceptEventFields``, ``fromTime``). A single table,
``_SPECS``, lists every message's wire keys, their types and whether they are required;
:func:`parse` and :func:`encode` both walk it, so the two directions cannot drift apart.

:func:`parse` is strict about what it needs and tolerant of what it does not: unknown extra
keys (``userId`` is modelled, ``subFormat`` rides inside ``parameters``, anything else is
ignored) pass, but a frame that is not JSON, not an object, has no string ``type`` or integer
``channel``, carries a payload of the wrong type, or names an unknown type raises
:class:`~pipeline.dxlink.errors.InvalidMessage` and nothing else. FEED_DATA is only checked
for shape here; decoding its events needs the channel's FEED_CONFIG (``feed_codec.py``).

Connection-level messages (SETUP, AUTH, AUTH_STATE, KEEPALIVE) live on channel 0 and have no
``channel`` attribute; channel messages require a channel > 0; ERROR may be on either (§2.1).

No I/O, no clock. Tokens never appear in a repr, str or error excerpt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import orjson

from pipeline.dxlink.errors import InvalidMessage, UsageError
from pipeline.dxlink.message_models import (
    MAX_LOG_SIZE,
    Auth,
    AuthState,
    AuthStateValue,
    ChannelCancel,
    ChannelClosed,
    ChannelOpened,
    ChannelRequest,
    DataFormat,
    Error,
    FeedConfig,
    FeedData,
    FeedSetup,
    FeedSubscription,
    JsonObject,
    Keepalive,
    Message,
    MessageType,
    Setup,
    SubscriptionItem,
)

__all__ = [
    "encode",
    "excerpt",
    "message_type",
    "parse",
    "parse_object",
]

# --------------------------------------------------------------------------------------------
# Value checkers: each takes the wire value and the key, returns the model value or raises
# InvalidMessage naming the key and the expected type.


def _bad(key: str, expected: str, value: object) -> InvalidMessage:
    return InvalidMessage(f"{key} must be {expected}, not {_describe(value)}")


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _str(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise _bad(key, "a string", value)
    return value


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(key, "a finite number", value)
    return value


def _int(value: object, key: str) -> int:
    # JSON has one number type; accept 3.0 for 3 but never 3.5.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, "an integer", value)
    return value


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, "a boolean", value)
    return value


def _object(value: object, key: str) -> JsonObject:
    if not isinstance(value, dict):
        raise _bad(key, "an object", value)
    return value


def _enum(enum: type[StrEnum]) -> Callable[[object, str], Any]:
    allowed = ", ".join(member.value for member in enum)

    def check(value: object, key: str) -> StrEnum:
        if isinstance(value, str) and value in enum.__members__:
            return enum(value)
        raise InvalidMessage(f"{key} must be one of {allowed}, not {value!r:.40}")

    return check


def _event_fields(value: object, key: str) -> dict[str, tuple[str, ...]]:
    fields = _object(value, key)
    result: dict[str, tuple[str, ...]] = {}
    for event_type, names in fields.items():
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise _bad(f"{key}.{event_type}", "an array of field names", names)
        result[event_type] = tuple(names)
    return result


def _items(value: object, key: str) -> tuple[SubscriptionItem, ...]:
    if not isinstance(value, list) or not value:
        raise _bad(key, "a non-empty array of subscription items", value)
    items = []
    for position, item in enumerate(value):
        where = f"{key}[{position}]"
        obj = _object(item, where)
        from_time = obj.get("fromTime")
        source = obj.get("source")
        items.append(
            SubscriptionItem(
                type=_str(obj.get("type"), f"{where}.type"),
                symbol=_str(obj.get("symbol"), f"{where}.symbol"),
                from_time=None if from_time is None else _int(from_time, f"{where}.fromTime"),
                source=None if source is None else _str(source, f"{where}.source"),
            )
        )
    return tuple(items)


def _feed_data(value: object, key: str) -> list[Any]:
    """Check the §3.3/§3.4 shape; the events themselves are decoded in feed_codec.py."""
    if not isinstance(value, list) or not value:
        raise _bad(key, "a non-empty array", value)
    if isinstance(value[0], str):
        if len(value) % 2:
            raise InvalidMessage(f"COMPACT {key} must hold type/values pairs, got {len(value)}")
        for position in range(0, len(value), 2):
            _str(value[position], f"{key}[{position}] (event type)")
            if not isinstance(value[position + 1], list):
                raise _bad(f"{key}[{position + 1}] (event values)", "an array", value[position + 1])
        return value
    for position, event in enumerate(value):
        _str(_object(event, f"{key}[{position}]").get("eventType"), f"{key}[{position}].eventType")
    return value


def _items_to_wire(items: tuple[SubscriptionItem, ...]) -> list[JsonObject]:
    out = []
    for item in items:
        wire: JsonObject = {"type": item.type, "symbol": item.symbol}
        if item.from_time is not None:
            wire["fromTime"] = item.from_time
        if item.source is not None:
            wire["source"] = item.source
        out.append(wire)
    return out


def _fields_to_wire(fields: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    return {event_type: list(names) for event_type, names in fields.items()}


# --------------------------------------------------------------------------------------------
# The table: message type -> (class, channel rule, ((wire key, attribute, checker, required,
# to-wire converter or None), ...)). Channel rule: 0 = always channel 0 (no attribute),
# 1 = service channel > 0, -1 = any channel >= 0.

_Checker = Callable[[object, str], Any]
_ToWire = Callable[[Any], Any] | None
_FieldSpec = tuple[str, str, _Checker, bool, _ToWire]

_CONNECTION, _SERVICE, _ANY = 0, 1, -1

_SPECS: dict[MessageType, tuple[type[Any], int, tuple[_FieldSpec, ...]]] = {
    MessageType.SETUP: (
        Setup,
        _CONNECTION,
        (
            ("version", "version", _str, True, None),
            ("keepaliveTimeout", "keepalive_timeout", _number, False, None),
            ("acceptKeepaliveTimeout", "accept_keepalive_timeout", _number, False, None),
        ),
    ),
    MessageType.AUTH: (Auth, _CONNECTION, (("token", "token", _str, True, None),)),
    MessageType.AUTH_STATE: (
        AuthState,
        _CONNECTION,
        (
            ("state", "state", _enum(AuthStateValue), True, None),
            ("userId", "user_id", _str, False, None),
        ),
    ),
    MessageType.KEEPALIVE: (Keepalive, _CONNECTION, ()),
    MessageType.CHANNEL_REQUEST: (
        ChannelRequest,
        _SERVICE,
        (
            ("service", "service", _str, True, None),
            ("parameters", "parameters", _object, False, None),
        ),
    ),
    MessageType.CHANNEL_OPENED: (
        ChannelOpened,
        _SERVICE,
        (
            ("service", "service", _str, True, None),
            ("parameters", "parameters", _object, False, None),
        ),
    ),
    MessageType.CHANNEL_CANCEL: (ChannelCancel, _SERVICE, ()),
    MessageType.CHANNEL_CLOSED: (ChannelClosed, _SERVICE, ()),
    MessageType.FEED_SETUP: (
        FeedSetup,
        _SERVICE,
        (
            ("acceptAggregationPeriod", "accept_aggregation_period", _number, False, None),
            ("acceptDataFormat", "accept_data_format", _enum(DataFormat), False, None),
            ("acceptEventFields", "accept_event_fields", _event_fields, False, _fields_to_wire),
        ),
    ),
    MessageType.FEED_CONFIG: (
        FeedConfig,
        _SERVICE,
        (
            ("aggregationPeriod", "aggregation_period", _number, True, None),
            ("dataFormat", "data_format", _enum(DataFormat), True, None),
            ("eventFields", "event_fields", _event_fields, False, _fields_to_wire),
        ),
    ),
    MessageType.FEED_SUBSCRIPTION: (
        FeedSubscription,
        _SERVICE,
        (
            ("add", "add", _items, False, _items_to_wire),
            ("remove", "remove", _items, False, _items_to_wire),
            ("reset", "reset", _bool, False, None),
        ),
    ),
    MessageType.FEED_DATA: (FeedData, _SERVICE, (("data", "data", _feed_data, True, None),)),
    MessageType.ERROR: (
        Error,
        _ANY,
        (
            ("error", "error", _str, True, None),
            ("message", "message", _str, False, None),
        ),
    ),
}

_TYPE_OF_CLASS: dict[type[Any], MessageType] = {spec[0]: kind for kind, spec in _SPECS.items()}
_TYPES = ", ".join(kind.value for kind in MessageType)
# A token must never reach a log line or exception text, even from a garbled AUTH frame.
_TOKEN = re.compile(r'("token"\s*:\s*)("(?:[^"\\]|\\.)*"?|[^,}\s]*)')


def excerpt(frame: str | bytes, limit: int = MAX_LOG_SIZE) -> str:
    """A log-safe, shortened copy of a frame: tokens redacted, at most ``limit`` chars."""
    text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
    text = _TOKEN.sub(r'\1"<hidden>"', text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode_json(frame: str | bytes) -> object:
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        # Keep only orjson's reason (e.g. "unexpected character", "depth limit exceeded").
        reason = str(exc).split(":", 1)[0]
        raise InvalidMessage(f"frame is not valid JSON ({reason})", excerpt(frame)) from None


def parse(frame: str | bytes) -> Message:
    """Parse one DXLink frame (§2.1, §2.3).

    Args:
        frame: the WebSocket text frame (``str``) or its UTF-8 bytes.

    Returns:
        The message model.

    Raises:
        InvalidMessage: the only exception this function raises; ``reason`` says exactly
            what is wrong, ``excerpt`` is a shortened, token-free copy of the frame.
    """
    if not isinstance(frame, (str, bytes)):
        raise InvalidMessage(f"frame must be str or bytes, not {type(frame).__name__}")
    return parse_object(_decode_json(frame), frame)


def parse_object(obj: object, frame: str | bytes) -> Message:
    """Build the message model of a frame whose JSON is already decoded (§2.3).

    :func:`parse` is ``orjson.loads`` followed by this; a caller that has looked at the
    decoded object itself (the protocol's FEED_DATA fast path) continues here without
    parsing the text twice.

    Args:
        obj: ``orjson.loads(frame)``.
        frame: the frame it came from, for the excerpt in errors.

    Raises:
        InvalidMessage: the only exception this function raises, as for :func:`parse`.
    """
    try:
        return _from_object(obj)
    except InvalidMessage as exc:
        raise InvalidMessage(exc.reason, excerpt(frame)) from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        # Backstop for a checker gap: still only InvalidMessage escapes (§2.1).
        raise InvalidMessage(f"malformed message ({type(exc).__name__})", excerpt(frame)) from exc


def _from_object(obj: object) -> Message:
    if not isinstance(obj, dict):
        raise InvalidMessage(f"frame must be a JSON object, not {_describe(obj)}")
    raw_type = obj.get("type")
    if not isinstance(raw_type, str):
        raise InvalidMessage(f"type must be a string, not {_describe(raw_type)}")
    try:
        kind = MessageType(raw_type)
    except ValueError:
        raise InvalidMessage(f"unknown message type {raw_type!r:.40}; known: {_TYPES}") from None
    if "channel" not in obj:
        raise InvalidMessage(f"{kind} has no channel")
    channel = _int(obj["channel"], "channel")
    cls, rule, fields = _SPECS[kind]
    kwargs: dict[str, Any] = {}
    if rule == _CONNECTION and channel != 0:
        raise InvalidMessage(f"{kind} must be on channel 0, not {channel}")
    if rule == _SERVICE and channel <= 0:
        raise InvalidMessage(f"{kind} needs a service channel > 0, not {channel}")
    if rule == _ANY and channel < 0:
        raise InvalidMessage(f"channel must not be negative, not {channel}")
    if rule != _CONNECTION:
        kwargs["channel"] = channel
    for wire, attribute, check, required, _ in fields:
        value = obj.get(wire)
        if value is None:
            if required:
                raise InvalidMessage(f"{kind} needs {wire}")
            continue
        kwargs[attribute] = check(value, wire)
    message: Message = cls(**kwargs)
    return message


def message_type(message: Message) -> MessageType:
    """The wire ``type`` of a message model.

    Raises:
        UsageError: ``message`` is not a DXLink message model.
    """
    kind = _TYPE_OF_CLASS.get(type(message))
    if kind is None:
        raise UsageError(f"cannot encode {type(message).__name__}; pass a DXLink message model")
    return kind


def encode(message: Message) -> str:
    """Serialise a message to compact JSON with the exact wire keys (§2.3).

    Optional fields that are ``None`` (and empty add/remove, a false reset) are left out.

    Raises:
        UsageError: ``message`` is not a DXLink message model.
    """
    kind = message_type(message)
    fields = _SPECS[kind][2]
    wire: JsonObject = {"type": kind.value, "channel": getattr(message, "channel", 0)}
    for key, attribute, _, _, to_wire in fields:
        value = getattr(message, attribute)
        if value is None or value == () or value is False:
            continue
        wire[key] = value if to_wire is None else to_wire(value)
    try:
        return orjson.dumps(wire).decode()
    except TypeError as exc:  # orjson.JSONEncodeError: e.g. an int beyond 64 bits
        raise UsageError(f"cannot encode {kind}: {exc}") from exc
