"""candle-pipeline: capture tastytrade DXLink candles into a DuckLake store.

``pipeline.connect()`` opens the store read-only for analysis: with no argument the one
``candles`` would use (``$CANDLES_STORE``, else the store of the nearest ``config.toml``), see
:func:`pipeline.analysis.connect`; it is loaded lazily so that ``import pipeline`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "connect"]


def __getattr__(name: str) -> Any:
    if name == "connect":
        from pipeline.analysis import connect

        return connect
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
