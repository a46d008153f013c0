"""The candle manager: decoded Candle events in, completed candles to store out.

``CandleDataManager`` (``manager``) routes each series' events through the door
(``validation``: what a valid Candle is), keeps the clock and hands out batches; each
series' dxFeed snapshot and transaction state (§6.3) is an ``Assembler`` (``assembly``), its
candles and their changes a ``SeriesBook`` (``series``); how a candle is held and how a batch
becomes a frame in the table's schema is ``records``; what it hands out is ``types``.
Pure: no I/O, no clock (the caller passes ``now_ms``).
"""

from __future__ import annotations

from pipeline.candles.manager import BYTES_PER_CANDLE, CandleDataManager
from pipeline.candles.types import BackpressureError, Batch, CandleData, CapacityError, ManagerStats
from pipeline.candles.validation import InvalidReason, time_text

__all__ = [
    "BYTES_PER_CANDLE",
    "BackpressureError",
    "Batch",
    "CandleData",
    "CandleDataManager",
    "CapacityError",
    "InvalidReason",
    "ManagerStats",
    "time_text",
]
