"""Open the store for analysis and load candles from it (see :mod:`pipeline.analysis`).

Where the store is follows the command line's rule, so a notebook finds the store that
``candles ingest`` filled wherever its kernel runs (``jupyter lab`` starts kernels in the
notebook's folder, ``notebooks/``):

1. ``$CANDLES_STORE``, when set (a relative path is relative to the working directory);
2. else ``[store]`` of the config file ``candles`` would use: ``$CANDLES_CONFIG``, else the
   nearest ``config.toml`` in the working directory or a folder above it
   (:func:`pipeline.config.find_config_file`); its relative paths are relative to its folder,
   and ``$CANDLES_PROFILE`` and ``CANDLES_STORE__*`` apply as they do for ``candles``;
3. else ``data`` in the working directory (the built-in default).

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
from pipeline.store import StoreError
from pipeline.store import connect as connect_store

__all__ = [
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
DEFAULT_STORE = "data"
"""The store folder when neither ``CANDLES_STORE`` nor a config file names one."""


@dataclass(frozen=True)
class StoreLocation:
    """Where the store is, and what said so."""

    path: Path
    catalog: str | None
    data_path: str | None
    found_by: str
    """``$CANDLES_STORE``, ``store.path in <config file>`` or ``the default``."""


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
    named = env.get(STORE_ENV, "").strip()
    if named:
        return StoreLocation(Path(named), None, None, f"${STORE_ENV}")
    file = find_config_file(cwd, env)
    if file is None:
        return StoreLocation(Path(DEFAULT_STORE), None, None, "the default (no config file)")
    store = load_config(file, environ=env).store
    return StoreLocation(Path(store.path), store.catalog, store.data_path, f"store.path in {file}")


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
) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection with the lake attached and the views created.

    ``SELECT * FROM candles`` works on it, as do the views ``latest_candles`` and
    ``candle_gaps`` and the table macro ``resample`` (see ``sql/``). Close it when done.

    Args:
        path: The store folder (relative: to the working directory); ``None`` finds it by
            :func:`store_location`'s rule, with the catalog and data path of the config file.
        catalog: A non-default catalog (see :func:`pipeline.store.parse_catalog`).
        data_path: A non-default Parquet folder (see :class:`pipeline.store.CandleStore`).
        verify_extensions: Check the DuckDB extension signatures (see
            :class:`pipeline.store.CandleStore`).

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
    else:
        folder = Path(path)
    try:
        return connect_store(
            folder,
            catalog=catalog,
            data_path=data_path,
            read_only=True,
            verify_extensions=verify_extensions,
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
