"""The candle store: a DuckLake lake (SQLite or PostgreSQL catalog, Parquet files).

``CandleStore`` (``writer``) is the ingest writer: idempotent upserts (``upsert``), resume
points, history reads and maintenance. ``lake`` opens and attaches the lake and is the
reader's door (:func:`connect`); ``object_store`` says how to reach an ``s3://`` data path
(keys from the environment only); ``query`` is the read-only SQL of ``candles query`` and
``candles export``; ``writer_lock`` keeps one writer per store or shard on one machine (a SQLite
catalog), ``lease`` across machines (a PostgreSQL catalog, docs/scaling.md); ``folder``
readies the store's folder or says in one line why it cannot work; ``retention`` removes
candles past their period's retention.
"""

from __future__ import annotations

from pipeline.store.folder import prepare_folder
from pipeline.store.lake import (
    CATALOG_FILE,
    DATA_DIR,
    LAKE,
    TABLE,
    CatalogSpec,
    FrameScan,
    StoreError,
    connect,
    parse_catalog,
    redact,
    with_application_name,
)
from pipeline.store.lease import CatalogLease, LeaseHolder, LeaseLost
from pipeline.store.object_store import S3Access, S3Options, is_object_store, parse_s3_url
from pipeline.store.query import (
    OUTPUT_FORMATS,
    TABLE_MAX_ROWS,
    TABLE_SHOWN_ROWS,
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
    "TABLE_MAX_ROWS",
    "TABLE_SHOWN_ROWS",
    "CandleStore",
    "CatalogLease",
    "CatalogSpec",
    "CatalogStats",
    "CompactionResult",
    "FrameScan",
    "LeaseHolder",
    "LeaseLost",
    "PeriodPruned",
    "QueryError",
    "QueryRefused",
    "RetentionResult",
    "S3Access",
    "S3Options",
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
    "is_object_store",
    "parse_catalog",
    "parse_s3_url",
    "prepare_folder",
    "redact",
    "retention_cutoff",
    "run_query",
    "with_application_name",
]
