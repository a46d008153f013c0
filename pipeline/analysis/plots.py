"""The analysis figures: candlesticks, volatility, coverage and ingestion lag.

Part of :mod:`pipeline.analysis`. matplotlib is imported only inside these functions: it is
an optional dependency (the ``notebooks`` extra), and importing :mod:`pipeline.analysis` must
stay cheap.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from pipeline.analysis.frames import SERIES, period_ms, require_columns

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DOWN_COLOR",
    "UP_COLOR",
    "plot_candles",
    "plot_coverage",
    "plot_ingestion_lag",
    "plot_volatility",
]

UP_COLOR = "#26a69a"
"""Body colour of a candle that closed at or above its open."""
DOWN_COLOR = "#ef5350"
"""Body colour of a candle that closed below its open."""

_BODY_WIDTH = 0.7  # share of the period a candle body spans; the rest separates candles


def plot_candles(candles: pl.DataFrame, *, title: str | None = None) -> Figure:
    """A candlestick chart of one series with its volume underneath.

    Bodies span 70 % of the period and are coloured :data:`UP_COLOR` (close >= open) or
    :data:`DOWN_COLOR`; wicks run from low to high. Missing candles stay empty space.

    Args:
        candles: One series (one symbol and period), e.g. ``load_candles(...).tail(120)``.
        title: Defaults to ``"<symbol> <period>"``.

    Raises:
        ValueError: The frame is empty or holds more than one series.
    """
    import matplotlib.pyplot as plt

    ohlc = ("open", "high", "low", "close")
    require_columns(candles, ("symbol", "period", "time", *ohlc), "candles")
    symbol, period = _single_series(candles)
    frame = candles.sort("time").filter(pl.all_horizontal(pl.col(c).is_finite() for c in ohlc))
    width = _period_days(frame, symbol, period) * _BODY_WIDTH
    x = frame["time"].to_numpy()
    up = (frame["close"] >= frame["open"]).to_numpy()
    colors = [UP_COLOR if rising else DOWN_COLOR for rising in up]
    body_low = frame.select(pl.min_horizontal("open", "close")).to_series().to_numpy()
    # A doji (open == close) still gets a hairline body, so every candle is visible.
    span = frame.select(pl.col("high").max() - pl.col("low").min()).item()
    floor = max(float(span), 1e-9) * 0.002
    body = (frame["close"] - frame["open"]).abs().clip(lower_bound=floor).to_numpy()

    fig, (price_ax, volume_ax) = plt.subplots(
        2, 1, sharex=True, figsize=(11, 6), height_ratios=(3, 1), layout="constrained"
    )
    price_ax.vlines(x, frame["low"].to_numpy(), frame["high"].to_numpy(), colors=colors, lw=0.8)
    price_ax.bar(x, body, width=width, bottom=body_low, color=colors, gid="candle-body")
    price_ax.use_sticky_edges = False  # bars pin the y-limits to a body's bottom otherwise
    price_ax.set_ylabel("price")
    price_ax.set_title(title or f"{symbol} {period}")
    price_ax.grid(alpha=0.3)
    if "volume" in frame.columns:
        volume = frame["volume"].fill_nan(0).to_numpy()
        volume_ax.bar(x, volume, width=width, color=colors, alpha=0.5)
    volume_ax.set_ylabel("volume")
    volume_ax.grid(alpha=0.3)
    _date_axis(volume_ax)
    return fig


def plot_volatility(volatility: pl.DataFrame, *, title: str = "Realised volatility") -> Figure:
    """One line per series of :func:`~pipeline.analysis.realized_volatility` over time."""
    import matplotlib.pyplot as plt

    require_columns(volatility, ("symbol", "period", "time", "realized_vol"), "volatility")
    fig, ax = plt.subplots(figsize=(11, 4), layout="constrained")
    for (symbol, period), part in volatility.sort("time").group_by(SERIES, maintain_order=True):
        label = f"{symbol} {period}"
        ax.plot(part["time"].to_numpy(), part["realized_vol"].to_numpy(), ".-", label=label)
    ax.set_title(title)
    ax.set_ylabel("realised volatility")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    _date_axis(ax)
    return fig


def plot_coverage(
    series: pl.DataFrame, holes: pl.DataFrame, *, title: str = "Stored candles and gaps"
) -> Figure:
    """A timeline per series: a bar from first to last stored candle, gaps drawn in red.

    Each period gets its own panel and time axis, so a 30-day daily series does not squeeze
    two days of minutes into a sliver. The coverage is written at the right end of each bar.

    Args:
        series: From :func:`~pipeline.analysis.coverage`.
        holes: From :func:`~pipeline.analysis.gaps`.
        title: The figure title.
    """
    import matplotlib.pyplot as plt

    require_columns(series, ("symbol", "period", "first", "last", "coverage"), "series")
    require_columns(holes, ("symbol", "period", "gap_start", "gap_end"), "holes")
    periods = series["period"].unique(maintain_order=True).sort().to_list() or [""]
    height = 0.9 * len(periods) + 0.45 * max(series.height, 1)
    fig, axes = plt.subplots(
        len(periods), squeeze=False, figsize=(11, height), layout="constrained"
    )
    for ax, period in zip(axes[:, 0], periods, strict=True):
        rows = series.filter(pl.col("period") == period).sort("symbol", descending=True)
        mine = holes.filter(pl.col("period") == period)
        for y, row in enumerate(rows.iter_rows(named=True)):
            _draw_timeline(ax, y, row, mine.filter(pl.col("symbol") == row["symbol"]))
        ax.set_yticks(range(rows.height), rows["symbol"].to_list())
        ax.set_ylabel(period)
        ax.grid(alpha=0.3, axis="x")
        _date_axis(ax)
    fig.suptitle(title)
    return fig


def plot_ingestion_lag(lag: pl.DataFrame, *, title: str = "Ingestion lag") -> Figure:
    """Lag of every candle against its time, per period; revised candles marked with x.

    The y axis is symmetric-logarithmic, so seconds, minutes and days fit on one axis and a
    negative lag (a candle stored before it ended) would still show, below zero.
    """
    import matplotlib.pyplot as plt

    require_columns(lag, ("period", "time", "revision", "lag"), "lag")
    fig, ax = plt.subplots(figsize=(11, 4), layout="constrained")
    known = lag.filter(pl.col("lag").is_not_null()).with_columns(
        (pl.col("lag").dt.total_milliseconds() / 1000).alias("lag_s")
    )
    for (period,), part in known.sort("period").group_by("period", maintain_order=True):
        for revised, marker in ((False, "."), (True, "x")):
            points = part.filter((pl.col("revision") > 0) == revised)
            if points.height:
                label = f"{period} revised" if revised else f"{period}"
                x, y = points["time"].to_numpy(), points["lag_s"].to_numpy()
                ax.scatter(x, y, s=8, marker=marker, label=label)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel("seconds after the candle ended")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if known.height:
        ax.legend(loc="upper right", fontsize="small")
    _date_axis(ax)
    return fig


def _single_series(candles: pl.DataFrame) -> tuple[str, str]:
    series = candles.select(SERIES).unique(maintain_order=True)
    if series.height != 1:
        found = ", ".join(f"{s} {p}" for s, p in series.iter_rows()) or "none (empty frame)"
        raise ValueError(
            f"plot_candles draws one series; the frame holds {found}: filter it first, "
            "e.g. candles.filter(pl.col('symbol') == 'AAPL')"
        )
    symbol, period = series.row(0)
    return str(symbol), str(period)


def _period_days(frame: pl.DataFrame, symbol: str, period: str) -> float:
    """The period in days (matplotlib's date unit); from the label, else the median spacing."""
    length = period_ms(symbol, period)
    if length is None and frame.height > 1:
        spacing = frame["time"].diff().drop_nulls().median()
        length = int(spacing.total_seconds() * 1000) if isinstance(spacing, timedelta) else None
    return (length or 60_000) / 86_400_000


def _draw_timeline(ax: Axes, y: int, row: dict[str, Any], holes: pl.DataFrame) -> None:
    """One series of :func:`plot_coverage`: stored span, gaps over it, coverage label."""
    date_num = _dates().date2num
    start, end = date_num(row["first"]), date_num(row["last"])
    ax.broken_barh([(start, max(end - start, 1e-6))], (y - 0.3, 0.6), color="#90caf9")
    spans = [
        (date_num(a), date_num(b) - date_num(a))
        for a, b in holes.select("gap_start", "gap_end").iter_rows()
    ]
    ax.broken_barh(spans, (y - 0.3, 0.6), color=DOWN_COLOR)
    share = "n/a" if row["coverage"] is None else f"{row['coverage']:.1%}"
    ax.annotate(share, (end, y), xytext=(4, 0), textcoords="offset points", va="center")


def _dates() -> Any:
    """``matplotlib.dates``, whose functions carry no type hints (so mypy sees ``Any``)."""
    import matplotlib.dates

    return matplotlib.dates


def _date_axis(ax: Axes) -> None:
    dates = _dates()
    locator = dates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
