"""Helpers for the analysis notebooks: open the store, load candles, returns, volatility, plots.

The notebooks in ``notebooks/`` stay short by calling these; everything here is plain typed
Python, tested without a kernel (``tests/test_analysis.py``).

Where the store is comes from one place: the ``CANDLES_STORE`` environment variable, default
``data`` (the ingest default, ``[store] path`` in config.toml). Figures are shown inline and,
when ``CANDLES_FIGURES`` names a folder, also written there as PNG files (:func:`save_figure`),
so a CI run or a cron job leaves static pictures behind.

Reading is safe while ingest writes: :func:`connect` attaches the DuckLake read-only, which
takes no lock the writer waits on (DESIGN.md "Store"), and every query sees the newest
committed snapshot.

matplotlib is imported only by the plotting functions: it is an optional dependency (the
``notebooks`` extra), and :func:`connect` must stay cheap to import.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl

from pipeline.candles import CANDLE_SCHEMA
from pipeline.dxlink.symbols import CandleSymbol
from pipeline.store import StoreError
from pipeline.store import connect as connect_store

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_STORE",
    "DOWN_COLOR",
    "FIGURES_ENV",
    "STORE_ENV",
    "UP_COLOR",
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
    "store_path",
    "volatility_summary",
]

STORE_ENV = "CANDLES_STORE"
"""Environment variable naming the store folder."""
DEFAULT_STORE = "data"
"""The store folder when ``CANDLES_STORE`` is unset (the ingest default)."""
FIGURES_ENV = "CANDLES_FIGURES"
"""Environment variable naming a folder to save figures to as PNG; unset: not saved."""
UP_COLOR = "#26a69a"
"""Body colour of a candle that closed at or above its open."""
DOWN_COLOR = "#ef5350"
"""Body colour of a candle that closed below its open."""

_SERIES = ("symbol", "period")
_FILE_NAME = re.compile(r"[^A-Za-z0-9.-]+")  # runs of anything else (and "_") become one "_"
_BODY_WIDTH = 0.7  # share of the period a candle body spans; the rest separates candles
_DPI = 100


# ------------------------------------------------------------------------- the store


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
) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection with the lake attached and the views created.

    ``SELECT * FROM candles`` works on it, as do the views ``latest_candles`` and
    ``candle_gaps`` and the table macro ``resample`` (see ``sql/``). Close it when done.

    Args:
        path: The store folder; ``None`` reads :func:`store_path`.
        catalog: A non-default catalog (see :func:`pipeline.store.parse_catalog`).
        data_path: A non-default Parquet folder (see :class:`pipeline.store.CandleStore`).
        verify_extensions: Check the DuckDB extension signatures (see
            :class:`pipeline.store.CandleStore`).

    Raises:
        StoreError: There is no store at the path; the message says how to point at one.
    """
    folder = store_path() if path is None else Path(path)
    try:
        return connect_store(
            folder,
            catalog=catalog,
            data_path=data_path,
            read_only=True,
            verify_extensions=verify_extensions,
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
            _require_aware(bound)
            query += f" AND {clause}"
            params.append(bound)
    frame = con.execute(query + " ORDER BY symbol, time, sequence", params).pl()
    if frame.height == 0:
        _require_stored(con, wanted, period)
    return frame.cast({c: CANDLE_SCHEMA[c] for c in frame.columns if c in CANDLE_SCHEMA})


# ------------------------------------------------------------------ returns and volatility


def log_returns(candles: pl.DataFrame) -> pl.DataFrame:
    """Close-to-close log returns per series.

    A return spans from one stored candle to the next, so across a gap (see
    :func:`gaps`) it covers several periods.

    Args:
        candles: Frame with ``symbol``, ``period``, ``time`` and ``close`` (e.g. from
            :func:`load_candles`).

    Returns:
        ``symbol``, ``period``, ``time``, ``close``, ``log_return``: one row per candle but
        the first of each series.
    """
    _require_columns(candles, ("symbol", "period", "time", "close"), "candles")
    return (
        candles.select(*_SERIES, "time", "close")
        .sort(*_SERIES, "time")
        .with_columns(
            (pl.col("close") / pl.col("close").shift(1)).log().over(_SERIES).alias("log_return")
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
    _require_columns(returns, ("symbol", "period", "time", "log_return"), "returns")
    if every <= timedelta(0):
        raise ValueError(f"every must be a positive duration, got {every}")
    scale = 1.0 if windows_per_year is None else math.sqrt(_positive(windows_per_year))
    return (
        returns.sort(*_SERIES, "time")
        .group_by_dynamic("time", every=every, group_by=list(_SERIES))
        .agg(
            pl.len().alias("returns"),
            (pl.col("log_return").pow(2).sum().sqrt() * scale).alias("realized_vol"),
        )
        .sort(*_SERIES, "time")
        .upsample("time", every=every, group_by=list(_SERIES), maintain_order=True)
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
    _require_columns(returns, ("symbol", "period", "log_return"), "returns")
    scale = math.sqrt(_positive(periods_per_year))
    return (
        returns.group_by(_SERIES)
        .agg(
            pl.len().alias("returns"),
            pl.col("log_return").sum().alias("total_log_return"),
            (pl.col("log_return").std() * scale).alias("annualized_vol"),
        )
        .sort(*_SERIES)
    )


# ------------------------------------------------------------------------ data quality


def coverage(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """How complete each stored series is between its first and last candle.

    Expected candles are the period starts from the first to the last stored candle; the
    ones missing are those the ``candle_gaps`` view counts. A market that closes at night
    therefore shows its closures as missing (see ``sql/gaps.sql``), and candles missing
    before the first or after the last stored one are not counted.

    Returns:
        ``symbol``, ``period``, ``candles``, ``first``, ``last``, ``revised`` (candles with
        ``revision > 0``), ``gaps``, ``missing`` and ``coverage`` (stored / expected; null
        for periods without a fixed length: ticks, volume, months).
    """
    frame = con.execute(
        """
        WITH stored AS (
            SELECT symbol, period, count(*) AS candles, min(time) AS first,
                   max(time) AS last, count(*) FILTER (WHERE revision > 0) AS revised
            FROM candles GROUP BY symbol, period
        ), holes AS (
            SELECT symbol, period, count(*) AS gaps, sum(missing_periods) AS missing
            FROM candle_gaps GROUP BY symbol, period
        )
        SELECT s.*, coalesce(h.gaps, 0) AS gaps, coalesce(h.missing, 0) AS missing
        FROM stored s LEFT JOIN holes h USING (symbol, period)
        ORDER BY symbol, period
        """
    ).pl()
    fixed = _with_period_ms(frame)["period_ms"].is_not_null()
    return frame.cast(
        {"first": CANDLE_SCHEMA["time"], "last": CANDLE_SCHEMA["time"], "missing": pl.Int64}
    ).with_columns(
        pl.when(fixed)
        .then(pl.col("candles") / (pl.col("candles") + pl.col("missing")))
        .alias("coverage")
    )


def gaps(con: duckdb.DuckDBPyConnection, *, min_missing: int = 1) -> pl.DataFrame:
    """The ``candle_gaps`` view, largest gaps first.

    Args:
        con: A connection from :func:`connect`.
        min_missing: Leave out gaps of fewer missing periods (e.g. 60 to see only the
            outages of an hour or more in 1-minute candles).

    Returns:
        ``symbol``, ``period``, ``gap_start``, ``gap_end`` (the next stored candle) and
        ``missing_periods``.
    """
    if min_missing < 1:
        raise ValueError(f"min_missing must be at least 1 period, got {min_missing}")
    frame = con.execute(
        "SELECT * FROM candle_gaps WHERE missing_periods >= ? "
        "ORDER BY missing_periods DESC, symbol, period, gap_start",
        [min_missing],
    ).pl()
    return frame.cast({"gap_start": CANDLE_SCHEMA["time"], "gap_end": CANDLE_SCHEMA["time"]})


def revisions(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Candles that changed after they were first stored (``revision > 0``), newest first.

    A revision is a late correction, a replayed snapshot or a removal of trades; the stored
    row is the latest version. ``revised_after`` is how long after the candle's end the
    latest version was written.

    Returns:
        ``symbol``, ``period``, ``time``, ``sequence``, ``revision``, ``ingested_at``,
        ``revised_after``.
    """
    frame = con.execute(
        "SELECT symbol, period, time, sequence, revision, ingested_at FROM candles "
        "WHERE revision > 0 ORDER BY ingested_at DESC, symbol, period, time, sequence"
    ).pl()
    return _lag(frame).rename({"lag": "revised_after"})


def ingestion_lag(con: duckdb.DuckDBPyConnection, *, since: datetime | None = None) -> pl.DataFrame:
    """Per stored candle, how long after the candle's end it was written.

    Steady ingest shows the completion grace plus the flush interval; a candle backfilled
    after an outage or on the first start shows how late it came; a revised candle shows
    when its latest version came. A negative lag would mean a candle stored before it ended.

    Args:
        con: A connection from :func:`connect`.
        since: Only candles with ``time >= since`` (timezone-aware).

    Returns:
        ``symbol``, ``period``, ``time``, ``sequence``, ``revision``, ``ingested_at`` and
        ``lag`` (a duration; null for periods without a fixed length).
    """
    query = "SELECT symbol, period, time, sequence, revision, ingested_at FROM candles"
    params: list[object] = []
    if since is not None:
        _require_aware(since)
        query += " WHERE time >= ?"
        params.append(since)
    return _lag(con.execute(query + " ORDER BY symbol, period, time, sequence", params).pl())


def lag_summary(lag: pl.DataFrame) -> pl.DataFrame:
    """Per series: median, 95th percentile and maximum ingestion lag, in seconds.

    Args:
        lag: From :func:`ingestion_lag`.
    """
    _require_columns(lag, ("symbol", "period", "lag"), "lag")
    seconds = pl.col("lag").dt.total_milliseconds() / 1000
    return (
        lag.group_by(_SERIES)
        .agg(
            pl.len().alias("candles"),
            seconds.median().alias("median_s"),
            seconds.quantile(0.95, interpolation="linear").alias("p95_s"),
            seconds.max().alias("max_s"),
        )
        .sort(*_SERIES)
    )


# ------------------------------------------------------------------------------ figures


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
    _require_columns(candles, ("symbol", "period", "time", *ohlc), "candles")
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
    """One line per series of :func:`realized_volatility` over time."""
    import matplotlib.pyplot as plt

    _require_columns(volatility, ("symbol", "period", "time", "realized_vol"), "volatility")
    fig, ax = plt.subplots(figsize=(11, 4), layout="constrained")
    for (symbol, period), part in volatility.sort("time").group_by(_SERIES, maintain_order=True):
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
        series: From :func:`coverage`.
        holes: From :func:`gaps`.
        title: The figure title.
    """
    import matplotlib.pyplot as plt

    _require_columns(series, ("symbol", "period", "first", "last", "coverage"), "series")
    _require_columns(holes, ("symbol", "period", "gap_start", "gap_end"), "holes")
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

    _require_columns(lag, ("period", "time", "revision", "lag"), "lag")
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


def figures_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder named by ``$CANDLES_FIGURES``, or ``None`` when unset or empty."""
    env = os.environ if environ is None else environ
    folder = env.get(FIGURES_ENV, "").strip()
    return Path(folder) if folder else None


def save_figure(fig: Figure, name: str, *, folder: str | Path | None = None) -> Path | None:
    """Write ``fig`` as ``<folder>/<name>.png`` when a folder is set.

    Args:
        fig: The figure.
        name: File name without extension; characters other than letters, digits, ``_``,
            ``.`` and ``-`` become ``_`` (``candles_/ESZ25:XCME`` -> ``candles_ESZ25_XCME``).
        folder: The folder; ``None`` reads :func:`figures_dir`, and with that unset
            nothing is written.

    Returns:
        The file written, or ``None``.
    """
    target = figures_dir() if folder is None else Path(folder)
    if target is None:
        return None
    stem = _FILE_NAME.sub("_", name).strip("_.") or "figure"
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{stem}.png"
    fig.savefig(path, dpi=_DPI)
    return path


# ------------------------------------------------------------------------------ helpers


def _require_aware(value: datetime) -> None:
    if value.tzinfo is None:
        raise ValueError(
            f"{value.isoformat()} has no time zone; pass an aware datetime, e.g. "
            "datetime(2025, 8, 27, tzinfo=UTC)"
        )


def _require_columns(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it needs {list(columns)}")


def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError(f"a count of periods per year must be positive, got {value}")
    return value


def _require_stored(con: duckdb.DuckDBPyConnection, symbols: list[str] | None, period: str) -> None:
    """Raise when no asked series is stored at all (an empty time window is fine)."""
    stored = con.execute("SELECT DISTINCT symbol, period FROM candles ORDER BY ALL").fetchall()
    if any(p == period and (symbols is None or s in symbols) for s, p in stored):
        return
    asked = f"{', '.join(symbols)} {period}" if symbols else f"period {period}"
    listing = ", ".join(f"{s} {p}" for s, p in stored) or "none (the store is empty)"
    raise ValueError(f"no candles for {asked} in the store; stored series: {listing}")


def _with_period_ms(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with ``period_ms`` (null for periods without a fixed length) joined on."""
    series = frame.select(_SERIES).unique()
    lengths = [_period_ms(symbol, period) for symbol, period in series.iter_rows()]
    table = series.with_columns(pl.Series("period_ms", lengths, dtype=pl.Int64))
    return frame.join(table, on=list(_SERIES), how="left", maintain_order="left")


def _period_ms(symbol: str, period: str) -> int | None:
    try:
        return CandleSymbol.parse(f"{symbol}{{={period}}}").period_ms
    except ValueError:
        return None  # not a label the store writes; treat like a period without fixed length


def _lag(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``lag`` = ``ingested_at`` - (``time`` + period) to a key + ingested_at frame."""
    timed = frame.cast({"time": CANDLE_SCHEMA["time"], "ingested_at": CANDLE_SCHEMA["time"]})
    return (
        _with_period_ms(timed)
        .with_columns(
            (
                pl.col("ingested_at")
                - pl.col("time")
                - pl.duration(milliseconds=pl.col("period_ms"))
            ).alias("lag")
        )
        .drop("period_ms")
    )


def _single_series(candles: pl.DataFrame) -> tuple[str, str]:
    series = candles.select(_SERIES).unique(maintain_order=True)
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
    length = _period_ms(symbol, period)
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
