"""The candle store: a DuckLake lake (SQLite or PostgreSQL catalog, Parquet files).

``CandleStore`` (``writer``) is the ingest writer: idempotent upserts (``upsert``), resume
points, history reads and maintenance. ``lake`` opens and attaches the lake and is the
reader's door (:func:`connect`); ``query`` is the read-only SQL of ``candles query`` and
``candles export``; ``writer_lock`` keeps one writer per store or shard; ``folder``
readies the store's folder or says in one line why it cannot work.
"""

from __future__ import annotations

from pipeline.store.folder import prepare_folder
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
    TABLE_MAX_ROWS,
    TABLE_SHOWN_ROWS,
    QueryError,
    QueryRefused,
    export_store,
    format_frame,
    run_query,
)
from pipeline.store.upsert import UpsertResult
from pipeline.store.writer import CandleStore, CompactionResult, StoreBusyError, StoreStats
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
    "CatalogSpec",
    "CompactionResult",
    "QueryError",
    "QueryRefused",
    "StoreBusy",
    "StoreBusyError",
    "StoreError",
    "StoreStats",
    "UpsertResult",
    "WriterLock",
    "connect",
    "export_store",
    "format_frame",
    "parse_catalog",
    "prepare_folder",
    "run_query",
]
