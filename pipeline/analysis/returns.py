"""Log returns and realised volatility per series (see :mod:`pipeline.analysis`)."""

from __future__ import annotations

import math
from datetime import timedelta

import polars as pl

from pipeline.analysis.frames import SERIES, require_columns

__all__ = ["log_returns", "realized_volatility", "volatility_summary"]


def log_returns(candles: pl.DataFrame) -> pl.DataFrame:
    """Close-to-close log returns per series.

    A return spans from one stored candle to the next, so across a gap (see
    :func:`~pipeline.analysis.gaps`) it covers several periods.

    Args:
        candles: Frame with ``symbol``, ``period``, ``time`` and ``close`` (e.g. from
            :func:`~pipeline.analysis.load_candles`).

    Returns:
        ``symbol``, ``period``, ``time``, ``close``, ``log_return``: one row per candle but
        the first of each series.
    """
    require_columns(candles, ("symbol", "period", "time", "close"), "candles")
    return (
        candles.select(*SERIES, "time", "close")
        .sort(*SERIES, "time")
        .with_columns(
            (pl.col("close") / pl.col("close").shift(1)).log().over(SERIES).alias("log_return")
        )
        .filter(pl.col("log_return").is_not_null() & pl.col("log_return").is_finite())
    )


def realized_volatility(
    returns: pl.DataFrame,
    *,
    every: timedelta = timedelta(hours=1),
    windows_per_year: float | None = None,
) -> pl.DataFrame:
    """Realised volatility per series and time window: the root of the summed squared returns.

    Args:
        returns: From :func:`log_returns`.
        every: The window length; windows start at UTC multiples of it.
        windows_per_year: How many such windows a year holds, to annualise (e.g.
            ``24 * 365`` for hourly windows of a market that trades around the clock,
            ``252`` for daily windows of a stock). ``None`` leaves it per window.

    Returns:
        ``symbol``, ``period``, ``time`` (window start), ``returns`` (how many went in),
        ``realized_vol`` (annualised when asked). A window without returns between a
        series' first and last one is kept with ``returns`` 0 and a null ``realized_vol``,
        so a chart shows the hole rather than a line across it.
    """
    require_columns(returns, ("symbol", "period", "time", "log_return"), "returns")
    if every <= timedelta(0):
        raise ValueError(f"every must be a positive duration, got {every}")
    scale = 1.0 if windows_per_year is None else math.sqrt(_positive(windows_per_year))
    return (
        returns.sort(*SERIES, "time")
        .group_by_dynamic("time", every=every, group_by=list(SERIES))
        .agg(
            pl.len().alias("returns"),
            (pl.col("log_return").pow(2).sum().sqrt() * scale).alias("realized_vol"),
        )
        .sort(*SERIES, "time")
        .upsample("time", every=every, group_by=list(SERIES), maintain_order=True)
        .with_columns(pl.col("returns").fill_null(0))
    )


def volatility_summary(returns: pl.DataFrame, *, periods_per_year: float) -> pl.DataFrame:
    """Per series: how many returns, total log return and annualised volatility.

    Args:
        returns: From :func:`log_returns`.
        periods_per_year: How many candle periods a year holds (e.g. ``365 * 24 * 60`` for
            1-minute candles of a market that trades around the clock).

    Returns:
        ``symbol``, ``period``, ``returns``, ``total_log_return``, ``annualized_vol``
        (standard deviation of the returns times the root of ``periods_per_year``).
    """
    require_columns(returns, ("symbol", "period", "log_return"), "returns")
    scale = math.sqrt(_positive(periods_per_year))
    return (
        returns.group_by(SERIES)
        .agg(
            pl.len().alias("returns"),
            pl.col("log_return").sum().alias("total_log_return"),
            (pl.col("log_return").std() * scale).alias("annualized_vol"),
        )
        .sort(*SERIES)
    )


def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError(f"a count of periods per year must be positive, got {value}")
    return value
