"""Which series a recorded FEED_DATA frame carries, and the frame for fewer of them (pure).

The replay server sends a recorded frame as it was when the client subscribed every series
in it on the channel the recording used. Otherwise it sends the same message with the
client's channel number and only the events of the series the client subscribed:
:func:`feed_series` names them, :func:`restrict` keeps them.

FEED_DATA comes in two shapes (dxlink-protocol.md §3.3, §3.4): COMPACT, ``[type, [values of
every event, flat], type, [...], ...]`` laid out by the channel's FEED_CONFIG ``eventFields``;
FULL, ``[{"eventType": ..., "eventSymbol": ..., ...}, ...]``. A symbol is matched by its
series key: candle symbols are normalised (``AAPL{=5m}`` whichever way it is spelled, §5.3),
other symbols as they are.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.dxlink import CandleSymbol

__all__ = ["Fields", "feed_series", "restrict", "series_key"]

Fields = Mapping[str, Sequence[str]]
"""A channel's field list per event type, from its FEED_CONFIG ``eventFields``."""

_SYMBOL = "eventSymbol"


@functools.lru_cache(maxsize=65_536)
def series_key(symbol: str) -> str:
    """The key a subscription and an event of the same series share."""
    if "{" in symbol:
        try:
            return CandleSymbol.parse(symbol).normalized
        except ValueError:
            return symbol
    return symbol


def feed_series(data: object, fields: Fields) -> set[str] | None:
    """The series keys of the events in a FEED_DATA ``data``, or None when they cannot be
    told (an event type whose fields were not announced, a shape that is not FEED_DATA)."""
    if not isinstance(data, list) or not data:
        return None
    if isinstance(data[0], str):
        found: set[str] = set()
        for event_type, values in zip(data[0::2], data[1::2], strict=False):
            layout = _layout(fields, event_type, values)
            if layout is None:
                return None
            at, width = layout
            found.update(series_key(s) for s in values[at::width] if isinstance(s, str))
        return found
    if all(isinstance(e, dict) and isinstance(e.get(_SYMBOL), str) for e in data):
        return {series_key(e[_SYMBOL]) for e in data}
    return None


def restrict(data: list[Any], fields: Fields, keep: Callable[[str], bool]) -> list[Any]:
    """``data`` with only the events whose series ``keep`` accepts (may be empty).

    Only call it for ``data`` that :func:`feed_series` could read.
    """
    if isinstance(data[0], str):
        kept: list[Any] = []
        for event_type, values in zip(data[0::2], data[1::2], strict=False):
            layout = _layout(fields, event_type, values)
            assert layout is not None, "restrict() needs data feed_series() could read"
            at, width = layout
            chosen = [
                value
                for start in range(0, len(values), width)
                if keep(series_key(values[start + at]))
                for value in values[start : start + width]
            ]
            if chosen:
                kept += [event_type, chosen]
        return kept
    return [event for event in data if keep(series_key(event[_SYMBOL]))]


def _layout(fields: Fields, event_type: object, values: object) -> tuple[int, int] | None:
    """(position of eventSymbol, values per event) for a COMPACT pair, or None."""
    if not isinstance(event_type, str) or not isinstance(values, list):
        return None
    names = fields.get(event_type)
    if not names or _SYMBOL not in names or len(values) % len(names):
        return None
    return list(names).index(_SYMBOL), len(names)
