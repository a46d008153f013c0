"""The candle manager: decoded Candle events in, completed candles to store out.

``CandleDataManager`` (``manager``) routes each series' events, keeps the clock and hands
out batches; each series' candles and their changes are a ``SeriesBook`` (``series``); the
dxFeed snapshot and transaction rules (§6.3) are ``assembly``; how a candle is held and how
a batch becomes a frame in the table's schema is ``records``; what it hands out is ``types``.
Pure: no I/O, no clock (the caller passes ``now_ms``).
"""

from __future__ import annotations

from pipeline.candles.manager import BYTES_PER_CANDLE, CandleDataManager
from pipeline.candles.types import BackpressureError, Batch, CandleData, CapacityError, ManagerStats

__all__ = [
    "BYTES_PER_CANDLE",
    "BackpressureError",
    "Batch",
    "CandleData",
    "CandleDataManager",
    "CapacityError",
    "ManagerStats",
]
