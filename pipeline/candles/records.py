"""Packed candle records: how :mod:`pipeline.candles` holds one candle, and frames built from them.

Records are also built back from a stored frame (:func:`stored_records`, a warm start).

A record is 104 bytes: ``index`` (int64, §4.2), ``revision`` (int64), then the values:
``count`` (int64) and ten doubles in the order of :data:`FLOAT_FIELDS`, which is also the
order of the ``Candle`` tuple from ``count`` on, so ``event[VALUES_SLICE]`` packs straight
into a record. Values are compared as bytes, which also treats NaN as equal to NaN. A record
never changes in place: handing a candle out does not touch it (the manager keeps which
candles were never handed out in a set), so records made in bulk stay as they were made.

The bulk helpers work on many records at once at C speed: a series' records joined into one
blob are a numpy structured array (:data:`RECORD_DTYPE`), so columns and index sets never
loop in Python per candle.
"""

from __future__ import annotations

import bisect
import functools
import struct
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from pipeline.dxlink import DOUBLE_FIELDS, CandleBlock, CandleSymbol, index_of, sequence_of, time_of
from pipeline.schema import CANDLE_COLUMNS, CANDLE_SCHEMA, KEY_SCHEMA, TIME_TYPE

__all__ = [
    "FLOAT_FIELDS",
    "HEAD",
    "RECORD",
    "RECORD_DTYPE",
    "VALUES",
    "VALUES_AT",
    "VALUES_SLICE",
    "as_array",
    "candle_frame",
    "find",
    "key_frame",
    "pack_block",
    "record_index",
    "split",
    "stored_records",
]

FLOAT_FIELDS = DOUBLE_FIELDS
"""The ten doubles, named as the ``Candle`` fields and the store's columns."""

RECORD = struct.Struct("<qqq10d")
VALUES = struct.Struct("<q10d")
HEAD = struct.Struct("<qq")
_INDEX = struct.Struct("<q")
_WHOLE_RECORD = struct.Struct(f"{RECORD.size}s")
VALUES_AT = HEAD.size
VALUES_SLICE = slice(6, 17)
"""``Candle`` fields ``count`` .. ``open_interest``: a record's values, in record order."""
RECORD_DTYPE = np.dtype(
    [("index", "<i8"), ("revision", "<i8"), ("count", "<i8")]
    + [(name, "<f8") for name in FLOAT_FIELDS]
)
"""The record as a packed numpy structured type (same bytes as :data:`RECORD`)."""
assert RECORD_DTYPE.itemsize == RECORD.size

IntArray = npt.NDArray[np.int64]


def record_index(record: bytes) -> int:
    """The event index (§4.2) of a record."""
    value: int = _INDEX.unpack_from(record)[0]
    return value


def as_array(blob: bytes | bytearray) -> npt.NDArray[Any]:
    """Joined records as a structured array over the same memory (no copy)."""
    return np.frombuffer(blob, dtype=RECORD_DTYPE)


def pack_block(block: CandleBlock, positions: IntArray, indexes: IntArray) -> npt.NDArray[Any]:
    """New records (revision 0) of the events at ``positions`` of ``block``, with
    the event ``indexes`` given (§4.2: derived where the wire's was 0): a column at a time."""
    packed = np.zeros(len(positions), dtype=RECORD_DTYPE)
    packed["index"] = indexes
    packed["count"] = block.counts[positions]
    doubles = block.doubles
    for row, name in enumerate(FLOAT_FIELDS):
        packed[name] = doubles[row][positions]
    return packed


def split(blob: bytes) -> list[bytes]:
    """Joined records back into one ``bytes`` per record (``iter_unpack`` cuts them in C,
    ~2x a slicing loop)."""
    return [record for (record,) in _WHOLE_RECORD.iter_unpack(blob)]


def find(records: deque[bytes], index: int) -> int:
    """Position of the record with ``index``, or -1.

    The two newest are checked first: live updates land on the live candle and, around a
    period's end, on the one it just completed; anything else is a bisect.
    """
    size = len(records)
    if size and record_index(records[-1]) == index:
        return size - 1
    if size > 1 and record_index(records[-2]) == index:
        return size - 2
    position = bisect.bisect_left(records, index, key=record_index)
    if position < len(records) and record_index(records[position]) == index:
        return position
    return -1


def candle_frame(parts: Sequence[tuple[str, str, bytes]]) -> pl.DataFrame:
    """A frame in :data:`CANDLE_SCHEMA` of joined records: (symbol, period, blob) per series.

    Columns come straight from the packed bytes (numpy over the joined blob), and the
    symbol and period columns are gathered from one label per series: no Python loop per
    candle (it cost ~10 us per candle; benchmarks/bench_pipeline.py).
    """
    size = RECORD.size
    array = as_array(b"".join(blob for _, _, blob in parts))
    counts = [len(blob) // size for _, _, blob in parts]
    owner = np.repeat(np.arange(len(parts)), counts)
    index = array["index"]
    columns: dict[str, pl.Series] = {
        "symbol": pl.Series([symbol for symbol, _, _ in parts], dtype=pl.String).gather(owner),
        "period": pl.Series([period for _, period, _ in parts], dtype=pl.String).gather(owner),
        "time": pl.Series(time_of(index), dtype=pl.Int64),  # §4.2, on the whole column
        "sequence": pl.Series(sequence_of(index), dtype=pl.Int32),
        "count": pl.Series(np.ascontiguousarray(array["count"]), dtype=pl.Int64),
        "revision": pl.Series(np.ascontiguousarray(array["revision"]), dtype=pl.Int64),
        **{
            name: pl.Series(np.ascontiguousarray(array[name]), dtype=pl.Float64)
            for name in FLOAT_FIELDS
        },
        "ingested_at": pl.Series(dtype=pl.Int64).extend_constant(None, len(array)),
    }
    return _with_times({name: columns[name] for name in CANDLE_COLUMNS}, CANDLE_SCHEMA)


def key_frame(keys: Sequence[tuple[CandleSymbol, int]]) -> pl.DataFrame:
    """A frame in :data:`KEY_SCHEMA` of (series, event index) pairs (§4.2)."""
    if not keys:  # nearly every flush: one shared empty frame (frames are immutable)
        return _no_keys()
    indexes = np.fromiter((index for _, index in keys), np.int64, len(keys))
    columns = {
        "symbol": [symbol.base for symbol, _ in keys],
        "period": [symbol.period_label for symbol, _ in keys],
        "time": time_of(indexes),
        "sequence": sequence_of(indexes).astype(np.int32),
    }
    return _with_times(columns, KEY_SCHEMA)


@functools.cache
def _no_keys() -> pl.DataFrame:
    return _with_times({name: [] for name in KEY_SCHEMA}, KEY_SCHEMA)


def stored_records(frame: pl.DataFrame, symbol: CandleSymbol) -> Iterator[tuple[int, bytes]]:
    """The rows of a stored frame (in :data:`CANDLE_SCHEMA`) of one series as records.

    Yields:
        Each row's event index (§4.2) and record, in frame order.

    Raises:
        ValueError: A row belongs to another series (raised before that row is yielded).
    """
    # A frame without `sequence` (read from a store not migrated yet) holds time-based
    # candles only: sequence 0.
    sequence = pl.col("sequence") if "sequence" in frame.columns else pl.lit(0)
    rows = frame.select(
        "symbol", "period", pl.col("time").dt.epoch("ms"), sequence.fill_null(0),
        "revision", "count", *FLOAT_FIELDS,
    ).rows()  # fmt: skip
    for row in rows:
        if row[0] != symbol.base or row[1] != symbol.period_label:
            raise ValueError(
                f"load_history({symbol.normalized!r}) got a row of {row[0]!r} period "
                f"{row[1]!r}; expected symbol {symbol.base!r} period {symbol.period_label!r}"
            )
        index = index_of(row[2], row[3])  # §4.2: tick candles of one ms differ by sequence
        yield index, HEAD.pack(index, row[4]) + VALUES.pack(row[5], *row[6:])


def _with_times(columns: dict[str, Any], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Build a frame whose Datetime columns were given as ms since the epoch."""
    raw = {name: (pl.Int64() if dtype == TIME_TYPE else dtype) for name, dtype in schema.items()}
    frame = pl.DataFrame(columns, schema=raw)
    return frame.with_columns(
        pl.col(name).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")
        for name, dtype in schema.items()
        if dtype == TIME_TYPE
    )
