"""Open the store for analysis and load candles from it (see :mod:`pipeline.analysis`).

Where the store is comes from one place: the ``CANDLES_STORE`` environment variable, default
``data`` (the ingest default, ``[store] path`` in config.toml). A lake elsewhere (a PostgreSQL
catalog, data on ``s3://``, docs/scaling.md) is named by the variables that override the
config's ``[store]`` section, ``CANDLES_STORE__CATALOG`` and ``CANDLES_STORE__DATA_PATH``; the
S3 keys, endpoint and region come from the standard ``AWS_*`` variables.

Reading is safe while ingest writes: :func:`connect` attaches the DuckLake read-only, which
takes no lock the writer waits on (DESIGN.md "Store"), and every query sees the newest
committed snapshot.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from pipeline.analysis.frames import require_aware
from pipeline.schema import CANDLE_SCHEMA
from pipeline.store import S3Options, StoreError
from pipeline.store import connect as connect_store

__all__ = [
    "CATALOG_ENV",
    "DATA_PATH_ENV",
    "DEFAULT_STORE",
    "STORE_ENV",
    "connect",
    "load_candles",
    "store_path",
]

STORE_ENV = "CANDLES_STORE"
"""Environment variable naming the store folder."""
CATALOG_ENV = "CANDLES_STORE__CATALOG"
"""Environment variable naming the catalog (``store.catalog``), when not passed."""
DATA_PATH_ENV = "CANDLES_STORE__DATA_PATH"
"""Environment variable naming the data path (``store.data_path``), when not passed."""
DEFAULT_STORE = "data"
"""The store folder when ``CANDLES_STORE`` is unset (the ingest default)."""


def store_path(environ: Mapping[str, str] | None = None) -> Path:
    """The store folder: ``$CANDLES_STORE``, else ``data``.

    Args:
        environ: The environment to read (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    return Path(env.get(STORE_ENV, "").strip() or DEFAULT_STORE)


def connect(
    path: str | Path | None = None,
    *,
    catalog: str | None = None,
    data_path: str | Path | None = None,
    verify_extensions: bool = True,
    s3: S3Options | None = None,
) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection with the lake attached and the views created.

    ``SELECT * FROM candles`` works on it, as do the views ``latest_candles`` and
    ``candle_gaps`` and the table macro ``resample`` (see ``sql/``). Close it when done.

    Args:
        path: The store folder; ``None`` reads :func:`store_path`.
        catalog: A non-default catalog (see :func:`pipeline.store.parse_catalog`); ``None``
            reads ``CANDLES_STORE__CATALOG`` if set.
        data_path: A non-default Parquet folder or ``s3://`` URL (see
            :class:`pipeline.store.CandleStore`); ``None`` reads ``CANDLES_STORE__DATA_PATH``
            if set.
        verify_extensions: Check the DuckDB extension signatures (see
            :class:`pipeline.store.CandleStore`).
        s3: How to reach an ``s3://`` data path (:class:`pipeline.store.S3Options`);
            ``None`` takes it from the standard ``AWS_*`` environment variables.

    Raises:
        StoreError: There is no store at the path; the message says how to point at one.
    """
    folder = store_path() if path is None else Path(path)
    catalog = catalog or os.environ.get(CATALOG_ENV, "").strip() or None
    data_path = data_path or os.environ.get(DATA_PATH_ENV, "").strip() or None
    try:
        return connect_store(
            folder,
            catalog=catalog,
            data_path=data_path,
            read_only=True,
            verify_extensions=verify_extensions,
            s3=s3,
        )
    except StoreError as exc:
        hint = f"; set {STORE_ENV} to the store folder" if path is None else ""
        raise StoreError(f"{exc}{hint}") from exc


def load_candles(
    con: duckdb.DuckDBPyConnection,
    symbols: str | Sequence[str] | None = None,
    period: str = "1m",
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pl.DataFrame:
    """Stored candles of one period into polars, sorted by symbol and time.

    Args:
        con: A connection from :func:`connect`.
        symbols: One symbol, several, or ``None`` for every symbol with this period.
        period: The store's period label, e.g. ``1m``, ``5m``, ``1d``, ``5m,tho=true``.
        start: Only candles with ``time >= start`` (timezone-aware).
        end: Only candles with ``time < end`` (timezone-aware).

    Returns:
        The store's columns; ``time`` and ``ingested_at`` as ``Datetime("ms", "UTC")``.

    Raises:
        ValueError: None of the asked series is stored (the message lists what is), or a
            bound is a naive datetime.
    """
    wanted = [symbols] if isinstance(symbols, str) else None if symbols is None else list(symbols)
    query = "SELECT * FROM candles WHERE period = ?"
    params: list[object] = [period]
    if wanted is not None:
        query += " AND list_contains(?::VARCHAR[], symbol)"
        params.append(wanted)
    for bound, clause in ((start, "time >= ?"), (end, "time < ?")):
        if bound is not None:
            require_aware(bound)
            query += f" AND {clause}"
            params.append(bound)
    frame = con.execute(query + " ORDER BY symbol, time, sequence", params).pl()
    if frame.height == 0:
        _require_stored(con, wanted, period)
    return frame.cast({c: CANDLE_SCHEMA[c] for c in frame.columns if c in CANDLE_SCHEMA})


def _require_stored(con: duckdb.DuckDBPyConnection, symbols: list[str] | None, period: str) -> None:
    """Raise when no asked series is stored at all (an empty time window is fine)."""
    stored = con.execute("SELECT DISTINCT symbol, period FROM candles ORDER BY ALL").fetchall()
    if any(p == period and (symbols is None or s in symbols) for s, p in stored):
        return
    asked = f"{', '.join(symbols)} {period}" if symbols else f"period {period}"
    listing = ", ".join(f"{s} {p}" for s, p in stored) or "none (the store is empty)"
    raise ValueError(f"no candles for {asked} in the store; stored series: {listing}")
