"""What the analysis modules share about their inputs (see :mod:`pipeline.analysis`).

The series key, the checks that turn a wrong frame or a naive datetime into a clear
``ValueError``, and the length of a stored period.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from pipeline.dxlink import CandleSymbol

__all__ = ["SERIES", "period_ms", "require_aware", "require_columns"]

SERIES = ("symbol", "period")
"""The columns that name one stored series."""


def require_aware(value: datetime) -> None:
    """Reject a naive datetime: the store's times are UTC instants.

    Raises:
        ValueError: ``value`` has no time zone; the message shows an aware one.
    """
    if value.tzinfo is None:
        raise ValueError(
            f"{value.isoformat()} has no time zone; pass an aware datetime, e.g. "
            "datetime(2025, 8, 27, tzinfo=UTC)"
        )


def require_columns(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    """Reject a frame that lacks any of ``columns``.

    Args:
        frame: The frame handed in.
        columns: The columns the caller needs.
        what: The argument's name, for the message.

    Raises:
        ValueError: Names the missing columns and all the needed ones.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it needs {list(columns)}")


def period_ms(symbol: str, period: str) -> int | None:
    """The length of a stored period label in milliseconds.

    Returns:
        ``None`` for periods without a fixed length (ticks, volume, months) and for labels
        the store does not write.
    """
    try:
        return CandleSymbol.parse(f"{symbol}{{={period}}}").period_ms
    except ValueError:
        return None  # not a label the store writes; treat like a period without fixed length
