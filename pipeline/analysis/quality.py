"""Data quality of the store: coverage, gaps, revisions and ingestion lag.

Part of :mod:`pipeline.analysis`. Each function reads a connection from
:func:`~pipeline.analysis.connect` (:func:`lag_summary` takes the frame of
:func:`ingestion_lag`) and answers with a polars frame.
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import polars as pl

from pipeline.analysis.frames import SERIES, period_ms, require_aware, require_columns
from pipeline.schema import CANDLE_SCHEMA

__all__ = ["coverage", "gaps", "ingestion_lag", "lag_summary", "revisions"]


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
        con: A connection from :func:`~pipeline.analysis.connect`.
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
        con: A connection from :func:`~pipeline.analysis.connect`.
        since: Only candles with ``time >= since`` (timezone-aware).

    Returns:
        ``symbol``, ``period``, ``time``, ``sequence``, ``revision``, ``ingested_at`` and
        ``lag`` (a duration; null for periods without a fixed length).
    """
    query = "SELECT symbol, period, time, sequence, revision, ingested_at FROM candles"
    params: list[object] = []
    if since is not None:
        require_aware(since)
        query += " WHERE time >= ?"
        params.append(since)
    return _lag(con.execute(query + " ORDER BY symbol, period, time, sequence", params).pl())


def lag_summary(lag: pl.DataFrame) -> pl.DataFrame:
    """Per series: median, 95th percentile and maximum ingestion lag, in seconds.

    Args:
        lag: From :func:`ingestion_lag`.
    """
    require_columns(lag, ("symbol", "period", "lag"), "lag")
    seconds = pl.col("lag").dt.total_milliseconds() / 1000
    return (
        lag.group_by(SERIES)
        .agg(
            pl.len().alias("candles"),
            seconds.median().alias("median_s"),
            seconds.quantile(0.95, interpolation="linear").alias("p95_s"),
            seconds.max().alias("max_s"),
        )
        .sort(*SERIES)
    )


def _with_period_ms(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with ``period_ms`` (null for periods without a fixed length) joined on."""
    series = frame.select(SERIES).unique()
    lengths = [period_ms(symbol, period) for symbol, period in series.iter_rows()]
    table = series.with_columns(pl.Series("period_ms", lengths, dtype=pl.Int64))
    return frame.join(table, on=list(SERIES), how="left", maintain_order="left")


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
