"""Open the store for analysis and load candles from it (see :mod:`pipeline.analysis`).

Where the store is follows the command line's rule, so a notebook finds the store that
``candles ingest`` filled wherever its kernel runs (``jupyter lab`` starts kernels in the
notebook's folder, ``notebooks/``):

1. ``$CANDLES_STORE``, when set (a relative path is relative to the working directory), with
   the catalog and data path of ``CANDLES_STORE__CATALOG`` and ``CANDLES_STORE__DATA_PATH``;
2. else ``[store]`` of the config file ``candles`` would use: ``$CANDLES_CONFIG``, else the
   nearest ``config.toml`` in the working directory or a folder above it
   (:func:`pipeline.config.find_config_file`); its relative paths are relative to its folder,
   and ``$CANDLES_PROFILE`` and ``CANDLES_STORE__*`` apply as they do for ``candles``, so a
   lake elsewhere (a PostgreSQL catalog, data on ``s3://`` with its ``[store.s3]`` settings,
   docs/scaling.md) is found the same way;
3. else ``data`` in the working directory (the built-in default), with the catalog and data
   path of ``CANDLES_STORE__CATALOG`` and ``CANDLES_STORE__DATA_PATH``.

Without a ``[store.s3]`` section, the S3 keys, endpoint and region come from the standard
``AWS_*`` variables.

Reading is safe while ingest writes: :func:`connect` attaches the DuckLake read-only, which
takes no lock the writer waits on (DESIGN.md "Store"), and every query sees the newest
committed snapshot.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from pipeline.analysis.frames import require_aware
from pipeline.config import find_config_file, load_config
from pipeline.schema import CANDLE_SCHEMA
from pipeline.store import S3Options, StoreError
from pipeline.store import connect as connect_store

__all__ = [
    "CATALOG_ENV",
    "DATA_PATH_ENV",
    "DEFAULT_STORE",
    "STORE_ENV",
    "StoreLocation",
    "connect",
    "load_candles",
    "store_location",
    "store_path",
]

STORE_ENV = "CANDLES_STORE"
"""Environment variable naming the store folder (it wins over the config file)."""
CATALOG_ENV = "CANDLES_STORE__CATALOG"
"""Environment variable naming the catalog (``store.catalog``), when not passed."""
DATA_PATH_ENV = "CANDLES_STORE__DATA_PATH"
"""Environment variable naming the data path (``store.data_path``), when not passed."""
DEFAULT_STORE = "data"
"""The store folder when neither ``CANDLES_STORE`` nor a config file names one."""


@dataclass(frozen=True)
class StoreLocation:
    """Where the store is, and what said so."""

    path: Path
    catalog: str | None
    data_path: str | None
    found_by: str
    """``$CANDLES_STORE``, ``store.path in <config file>`` or ``the default (...)``."""
    s3: S3Options | None = None
    """How to reach an ``s3://`` data path, from the config file's ``[store.s3]``; ``None``:
    the standard ``AWS_*`` variables."""


def store_location(
    environ: Mapping[str, str] | None = None, cwd: Path | str | None = None
) -> StoreLocation:
    """The store the notebooks read (see the module docstring for the rule).

    Args:
        environ: The environment to read (default ``os.environ``).
        cwd: The folder to search for ``config.toml`` from (default: the working directory).

    Raises:
        pipeline.config.ConfigError: The config file found is invalid.
    """
    env = os.environ if environ is None else environ
    catalog = env.get(CATALOG_ENV, "").strip() or None
    data_path = env.get(DATA_PATH_ENV, "").strip() or None
    named = env.get(STORE_ENV, "").strip()
    if named:
        return StoreLocation(Path(named), catalog, data_path, f"${STORE_ENV}")
    file = find_config_file(cwd, env)
    if file is None:
        return StoreLocation(Path(DEFAULT_STORE), catalog, data_path, "the default (no config)")
    store = load_config(file, environ=env).store
    return StoreLocation(
        Path(store.path),
        store.catalog,
        store.data_path,
        f"store.path in {file}",
        S3Options(**store.s3.model_dump()),
    )


def store_path(environ: Mapping[str, str] | None = None) -> Path:
    """The store folder: ``$CANDLES_STORE``, else the config file's ``store.path``, else ``data``.

    Args:
        environ: The environment to read (default ``os.environ``).
    """
    return store_location(environ).path


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
        path: The store folder (relative: to the working directory); ``None`` finds it by
            :func:`store_location`'s rule, with the catalog, data path and S3 settings that
            come with it.
        catalog: A non-default catalog (see :func:`pipeline.store.parse_catalog`); ``None``
            with a ``path``: ``CANDLES_STORE__CATALOG`` if set.
        data_path: A non-default Parquet folder or ``s3://`` URL (see
            :class:`pipeline.store.CandleStore`); ``None`` with a ``path``:
            ``CANDLES_STORE__DATA_PATH`` if set.
        verify_extensions: Check the DuckDB extension signatures (see
            :class:`pipeline.store.CandleStore`).
        s3: How to reach an ``s3://`` data path (:class:`pipeline.store.S3Options`);
            ``None`` takes the config file's ``[store.s3]`` (no ``path``), else the standard
            ``AWS_*`` environment variables.

    Raises:
        StoreError: There is no store at the path; the message says how it was found and how
            to point at another one.
    """
    found = None
    if path is None:
        found = store_location()
        folder = found.path
        catalog = catalog if catalog is not None else found.catalog
        data_path = data_path if data_path is not None else found.data_path
        s3 = s3 if s3 is not None else found.s3
    else:
        folder = Path(path)
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
        hint = (
            f" (found by {found.found_by}; set {STORE_ENV} or store.path to point elsewhere)"
            if found is not None
            else ""
        )
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
