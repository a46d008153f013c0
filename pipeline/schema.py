"""The candles table: its columns, their types and the key, in one place.

Both sides of the store agree on this module and on nothing else: the candle manager
(:mod:`pipeline.candles`) builds its batch frames in :data:`CANDLE_SCHEMA`, the store
(:mod:`pipeline.store`) checks, writes and reads frames in it, and the analysis helpers read
it back. ``sql/schema.sql`` is the same table in SQL (DuckLake's DDL);
``tests/test_schema.py`` keeps the two in step.
"""

from __future__ import annotations

import polars as pl

__all__ = [
    "CANDLE_COLUMNS",
    "CANDLE_SCHEMA",
    "KEY_COLUMNS",
    "KEY_SCHEMA",
    "TIME_TYPE",
    "VALUE_COLUMNS",
]

TIME_TYPE = pl.Datetime("ms", "UTC")
"""``time`` and ``ingested_at``: milliseconds, UTC (DXLink times are ms since the epoch)."""

CANDLE_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "period": pl.String(),
    "time": TIME_TYPE,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "vwap": pl.Float64(),
    "count": pl.Int64(),
    "bid_volume": pl.Float64(),
    "ask_volume": pl.Float64(),
    "imp_volatility": pl.Float64(),
    "open_interest": pl.Float64(),
    "revision": pl.Int64(),
    "ingested_at": TIME_TYPE,
    # Last, as in a store migrated by ALTER TABLE ADD COLUMN: `SELECT *` has one column order.
    "sequence": pl.Int32(),
}
"""The store's columns (docs/CONTRACTS.md) as polars types; frames between manager and store."""
CANDLE_COLUMNS: tuple[str, ...] = tuple(CANDLE_SCHEMA)
KEY_COLUMNS: tuple[str, ...] = ("symbol", "period", "time", "sequence")
"""A candle's identity: its series and event index (§4.2: ``time`` and ``sequence``). Tick,
volume and price candles can share a millisecond and differ only by ``sequence``; it is 0
for time-based periods."""
KEY_SCHEMA = {name: CANDLE_SCHEMA[name] for name in KEY_COLUMNS}
VALUE_COLUMNS: tuple[str, ...] = tuple(
    name for name in CANDLE_COLUMNS if name not in (*KEY_COLUMNS, "revision", "ingested_at")
)
"""The candle's market values (OHLC, volumes, count...): what a revision can change."""
