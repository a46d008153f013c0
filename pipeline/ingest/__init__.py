"""Ingest: the parts wired together, run as a process.

``IngestService`` (``service``) wires the DXLink client, the candle manager and the store,
with the scheduled flush and maintenance jobs; ``runner`` runs it as the ``candles ingest``
process (source, signals, bounded shutdown, status line); ``sources`` and ``tastytrade`` hand
out DXLink tokens; ``tuning`` holds the process-wide settings only that process applies;
``doctor`` checks a source step by step (``candles doctor``); ``from_recording``
(``rebuild``) feeds a recording's server frames through the same protocol, manager and store.
"""

from __future__ import annotations

from pipeline.ingest.doctor import DoctorReport, Outcome, Step, StepResult, run_doctor
from pipeline.ingest.from_recording import RebuildReport, rebuild
from pipeline.ingest.runner import (
    ABANDON_GRACE_S,
    EXIT_UNAVAILABLE,
    EXIT_UNSTORED,
    IngestError,
    NeverConnected,
    ShutdownGuard,
    ShutdownIncomplete,
    run_ingest,
    token_source_for,
)
from pipeline.ingest.service import FLUSH_BATCH_EVENTS, FlushReport, IngestService, ServiceStats
from pipeline.ingest.sources import (
    DXLinkTokenSource,
    QuoteToken,
    SimulatorTokenSource,
    validate_dxlink_url,
)
from pipeline.ingest.tastytrade import (
    TastytradeAPIError,
    TastytradeAuthError,
    TastytradeError,
    TastytradeTokenSource,
)
from pipeline.ingest.tuning import ingest_process_tuning

__all__ = [
    "ABANDON_GRACE_S",
    "EXIT_UNAVAILABLE",
    "EXIT_UNSTORED",
    "FLUSH_BATCH_EVENTS",
    "DXLinkTokenSource",
    "DoctorReport",
    "FlushReport",
    "IngestError",
    "IngestService",
    "NeverConnected",
    "Outcome",
    "QuoteToken",
    "RebuildReport",
    "ServiceStats",
    "ShutdownGuard",
    "ShutdownIncomplete",
    "SimulatorTokenSource",
    "Step",
    "StepResult",
    "TastytradeAPIError",
    "TastytradeAuthError",
    "TastytradeError",
    "TastytradeTokenSource",
    "ingest_process_tuning",
    "rebuild",
    "run_doctor",
    "run_ingest",
    "token_source_for",
    "validate_dxlink_url",
]
