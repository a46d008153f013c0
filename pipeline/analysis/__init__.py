"""Helpers for the analysis notebooks: open the store, load candles, returns, volatility, plots.

The notebooks in ``notebooks/`` stay short by calling these; everything here is plain typed
Python, tested without a kernel (``tests/test_analysis.py``).

Where the store is comes from one place, :func:`store_location`: ``$CANDLES_STORE``, else
``[store]`` of the config file ``candles`` would use (found from the working directory
upward, its paths relative to it), else ``data``: the notebooks find the store
``candles ingest`` filled when run from ``notebooks/``. Figures are shown inline and,
when ``CANDLES_FIGURES`` names a folder, also written there as PNG files (:func:`save_figure`),
so a CI run or a cron job leaves static pictures behind.

Reading is safe while ingest writes: :func:`connect` attaches the DuckLake read-only, which
takes no lock the writer waits on (DESIGN.md "Store"), and every query sees the newest
committed snapshot.

matplotlib is imported only by the plotting functions: it is an optional dependency (the
``notebooks`` extra), and :func:`connect` must stay cheap to import.

The parts, each importable from here: opening the store and loading candles
(:mod:`pipeline.analysis.store`), returns and volatility (:mod:`pipeline.analysis.returns`),
data quality (:mod:`pipeline.analysis.quality`), the figures (:mod:`pipeline.analysis.plots`)
and where they are saved (:mod:`pipeline.analysis.figures`); the checks they share are in
:mod:`pipeline.analysis.frames`.
"""

from __future__ import annotations

from pipeline.analysis.figures import FIGURES_ENV, figures_dir, save_figure
from pipeline.analysis.plots import (
    DOWN_COLOR,
    UP_COLOR,
    plot_candles,
    plot_coverage,
    plot_ingestion_lag,
    plot_volatility,
)
from pipeline.analysis.quality import coverage, gaps, ingestion_lag, lag_summary, revisions
from pipeline.analysis.returns import log_returns, realized_volatility, volatility_summary
from pipeline.analysis.store import (
    DEFAULT_STORE,
    STORE_ENV,
    StoreLocation,
    connect,
    load_candles,
    store_location,
    store_path,
)

__all__ = [
    "DEFAULT_STORE",
    "DOWN_COLOR",
    "FIGURES_ENV",
    "STORE_ENV",
    "UP_COLOR",
    "StoreLocation",
    "connect",
    "coverage",
    "figures_dir",
    "gaps",
    "ingestion_lag",
    "lag_summary",
    "load_candles",
    "log_returns",
    "plot_candles",
    "plot_coverage",
    "plot_ingestion_lag",
    "plot_volatility",
    "realized_volatility",
    "revisions",
    "save_figure",
    "store_location",
    "store_path",
    "volatility_summary",
]
