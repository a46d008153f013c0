"""The decoded Candle event, its eventFlags and the index arithmetic.

This is the record that flows from the protocol decoder (``protocol.py``) through the client
to the ``CandleDataManager``. It is a ``NamedTuple`` on purpose: the decoder builds one per
event on the hot path, and a tuple is the cheapest Python object that still has names
(storage-and-libs.md §13 measured a pydantic model per event against tuples).

No I/O, no clock. References are to ``dxlink-protocol.md``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "CANDLE_FIELDS",
    "DOUBLE_FIELDS",
    "INT_FIELDS",
    "REMOVE_EVENT",
    "SEQUENCE_MASK",
    "SNAPSHOT_BEGIN",
    "SNAPSHOT_END",
    "SNAPSHOT_MODE",
    "SNAPSHOT_SNIP",
    "SPECIAL_DOUBLES",
    "TX_PENDING",
    "WIRE_TO_FIELD",
    "Candle",
    "index_of",
    "sequence_of",
    "time_of",
]

# §6.1 eventFlags bits.
TX_PENDING = 0x01
REMOVE_EVENT = 0x02
SNAPSHOT_BEGIN = 0x04
SNAPSHOT_END = 0x08
SNAPSHOT_SNIP = 0x10
SNAPSHOT_MODE = 0x40

NAN = math.nan

# The Candle fields we ask the server for (FEED_SETUP acceptEventFields), in wire names.
# §4.1; `vwap` in lower case is what tastytrade actually serves.
CANDLE_FIELDS: tuple[str, ...] = (
    "eventType",
    "eventSymbol",
    "eventTime",
    "eventFlags",
    "index",
    "time",
    "sequence",
    "count",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "bidVolume",
    "askVolume",
    "impVolatility",
    "openInterest",
)


class Candle(NamedTuple):
    """One Candle event as received (§4.1).

    ``symbol`` is the server's normalised candle symbol (``AAPL{=5m}``), ``time`` the period
    start in ms since the epoch (UTC), ``index`` the exact int64 event index (§4.2).
    Doubles that the server sent as ``"NaN"``/``"Infinity"`` are real floats here.
    """

    symbol: str
    time: int
    sequence: int = 0
    flags: int = 0
    # `index` and `count` shadow tuple methods on purpose: they are the §4.1 wire names.
    index: int = 0  # type: ignore[assignment]
    event_time: int = 0
    count: int = 0  # type: ignore[assignment]
    open: float = NAN
    high: float = NAN
    low: float = NAN
    close: float = NAN
    volume: float = NAN
    vwap: float = NAN
    bid_volume: float = NAN
    ask_volume: float = NAN
    imp_volatility: float = NAN
    open_interest: float = NAN


# Wire name -> Candle field name, for decoders that map FEED_CONFIG field lists.
WIRE_TO_FIELD: dict[str, str] = {
    "eventSymbol": "symbol",
    "time": "time",
    "sequence": "sequence",
    "eventFlags": "flags",
    "index": "index",
    "eventTime": "event_time",
    "count": "count",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "volume",
    "vwap": "vwap",
    "VWAP": "vwap",
    "bidVolume": "bid_volume",
    "askVolume": "ask_volume",
    "impVolatility": "imp_volatility",
    "openInterest": "open_interest",
}


# The integer and the double Candle fields, in tuple order (the double ones from `open` on).
INT_FIELDS: tuple[str, ...] = Candle._fields[1:7]
DOUBLE_FIELDS: tuple[str, ...] = Candle._fields[7:]
# §3.5 JSONDouble: the strings that stand for non-finite doubles on the wire.
SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
SEQUENCE_MASK = 0x3FFFFF
"""§4.2: the sequence is an index's low 22 bits."""

# The index arithmetic works on one int and, element-wise, on int64 numpy columns alike.
_Index = TypeVar("_Index", int, npt.NDArray[np.int64])


def index_of(time_ms: _Index, sequence: _Index | int = 0) -> _Index:
    """§4.2: ``index = ((time // 1000) << 32) | ((time % 1000) << 22) | sequence``."""
    return ((time_ms // 1000) << 32) | ((time_ms % 1000) << 22) | sequence


def time_of(index: _Index) -> _Index:
    """§4.2: the candle time (ms) encoded in an event index."""
    return (index >> 32) * 1000 + ((index >> 22) & 0x3FF)


def sequence_of(index: _Index) -> _Index:
    """§4.2: the sequence number (0..2^22-1) encoded in an event index."""
    return index & SEQUENCE_MASK
