"""The candle store: a DuckLake lake (SQLite or PostgreSQL catalog, Parquet files).

``CandleStore`` (``writer``) is the ingest writer: idempotent upserts (``upsert``), resume
points, history reads and maintenance. ``lake`` opens and attaches the lake and is the
reader's door (:func:`connect`); ``query`` is the read-only SQL of ``candles query`` and
``candles export``; ``writer_lock`` keeps one writer per store or shard; ``retention`` removes
candles past their period's retention.
"""

from __future__ import annotations

from pipeline.store.lake import (
    CATALOG_FILE,
    DATA_DIR,
    LAKE,
    TABLE,
    CatalogSpec,
    StoreError,
    connect,
    parse_catalog,
)
from pipeline.store.query import (
    OUTPUT_FORMATS,
    QueryError,
    QueryRefused,
    export_store,
    format_frame,
    run_query,
)
from pipeline.store.retention import PeriodPruned, RetentionResult, retention_cutoff
from pipeline.store.upsert import UpsertResult
from pipeline.store.writer import (
    CandleStore,
    CatalogStats,
    CompactionResult,
    StoreBusyError,
    StoreMemory,
    StoreStats,
)
from pipeline.store.writer_lock import StoreBusy, WriterLock

__all__ = [
    "CATALOG_FILE",
    "DATA_DIR",
    "LAKE",
    "OUTPUT_FORMATS",
    "TABLE",
    "CandleStore",
    "CatalogSpec",
    "CatalogStats",
    "CompactionResult",
    "PeriodPruned",
    "QueryError",
    "QueryRefused",
    "RetentionResult",
    "StoreBusy",
    "StoreBusyError",
    "StoreError",
    "StoreMemory",
    "StoreStats",
    "UpsertResult",
    "WriterLock",
    "connect",
    "export_store",
    "format_frame",
    "parse_catalog",
    "retention_cutoff",
    "run_query",
]
