"""Ingest: the parts wired together, run as a process.

``IngestService`` (``service``) wires the DXLink client, the candle manager and the store,
with the scheduled flush and maintenance jobs; ``runner`` runs it as the ``candles ingest``
process (source, signals, bounded shutdown, status line); ``sources`` and ``tastytrade`` hand
out DXLink tokens; ``tuning`` holds the process-wide settings only that process applies.
"""

from __future__ import annotations

from pipeline.ingest.runner import (
    ABANDON_GRACE_S,
    EXIT_UNSTORED,
    IngestError,
    ShutdownGuard,
    ShutdownIncomplete,
    run_ingest,
    token_source_for,
)
from pipeline.ingest.service import FLUSH_BATCH_EVENTS, FlushReport, IngestService, ServiceStats
from pipeline.ingest.sources import QuoteToken, SimulatorTokenSource, validate_dxlink_url
from pipeline.ingest.tastytrade import (
    TastytradeAPIError,
    TastytradeAuthError,
    TastytradeError,
    TastytradeTokenSource,
)
from pipeline.ingest.tuning import ingest_process_tuning

__all__ = [
    "ABANDON_GRACE_S",
    "EXIT_UNSTORED",
    "FLUSH_BATCH_EVENTS",
    "FlushReport",
    "IngestError",
    "IngestService",
    "QuoteToken",
    "ServiceStats",
    "ShutdownGuard",
    "ShutdownIncomplete",
    "SimulatorTokenSource",
    "TastytradeAPIError",
    "TastytradeAuthError",
    "TastytradeError",
    "TastytradeTokenSource",
    "ingest_process_tuning",
    "run_ingest",
    "token_source_for",
    "validate_dxlink_url",
]
