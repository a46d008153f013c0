"""candle-pipeline: capture tastytrade DXLink candles into a DuckLake store."""

from __future__ import annotations

__version__ = "0.1.0"
