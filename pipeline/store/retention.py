"""Retention: remove candles older than a period's configured age, keeping each resume point.

:meth:`pipeline.store.CandleStore.prune` calls :func:`prune_period` once per configured period,
each in its own transaction (a period's delete either happens whole or not at all, and one
period's collision with another writer does not undo the others).

Two rules keep retention from costing more than it saves:

* **Cut-offs are whole days** (whole hours for retentions under two days,
  :func:`retention_cutoff`). Every delete leaves a delete file on the Parquet file that
  straddles the cut-off, and compaction rewrites that file; an hourly job with a cut-off
  moving by the hour would rewrite it every hour, a day-aligned cut-off moves (and rewrites)
  once a day. A candle is therefore kept at least its retention and at most one day (hour)
  longer.
* **Each series' newest stored candle stays**, however old. It is the series' resume point
  (DESIGN.md: the store is the truth for "what do we have"): a series that went quiet for
  longer than its retention resumes after its last stored candle instead of falling back to
  the first-start lookback, and the upsert's ceiling on stored times stays true.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from pipeline.store.lake import TABLE, rollback

__all__ = ["PeriodPruned", "RetentionResult", "prune_period", "retention_cutoff"]

_DAY = timedelta(days=1)
_HOUR = timedelta(hours=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A stored period of this retention key: '1m' itself or '1m' with attributes ('1m,tho=true').
_MATCH = "(c.period = $1 OR starts_with(c.period, $2))"


@dataclass(frozen=True, slots=True)
class PeriodPruned:
    """What retention did to one period."""

    period: str
    """The retention key (a period label without attributes, e.g. ``1m``)."""
    cutoff: datetime
    """Candles that started before this were removed (but each series' newest)."""
    deleted: int


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What one :meth:`pipeline.store.CandleStore.prune` did, period by period."""

    periods: tuple[PeriodPruned, ...] = ()

    @property
    def deleted(self) -> int:
        """Candles removed over every period."""
        return sum(p.deleted for p in self.periods)


def retention_cutoff(now: datetime, keep: timedelta) -> datetime:
    """The start of the UTC day (hour, for ``keep`` under two days) holding ``now - keep``.

    Raises:
        ValueError: ``now`` is naive, or ``keep`` is not positive.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if keep <= timedelta(0):
        raise ValueError(f"a retention must be positive, got {keep}")
    granule = _DAY if keep >= 2 * _DAY else _HOUR
    edge = now.astimezone(UTC) - keep
    return edge - (edge - _EPOCH) % granule


def prune_period(con: duckdb.DuckDBPyConnection, period: str, cutoff: datetime) -> int:
    """Delete the candles of ``period`` (with any attributes) older than ``cutoff``, except each
    series' newest, in one transaction; returns how many were deleted.

    A first, cheap look (DuckLake skips every file whose time range starts at or after the
    cut-off) finds whether there is anything to delete; when there is not, nothing is written
    and no snapshot is made.

    Args:
        con: The writer's connection.
        period: A period label without attributes (``1m``).
        cutoff: The cut-off (aware).

    Raises:
        duckdb.Error: The delete failed (rolled back); a collision is retried by the caller.
    """
    params = [period, period + ",", cutoff]
    older = con.execute(
        f"SELECT count(*) FROM {TABLE} c WHERE {_MATCH} AND c.time < $3", params
    ).fetchone()
    if older is None or not older[0]:
        return 0
    con.execute("BEGIN")
    try:
        row = con.execute(
            f"DELETE FROM {TABLE} c USING ("
            f"  SELECT c.symbol, c.period, max(c.time) AS newest FROM {TABLE} c"
            f"  WHERE {_MATCH} GROUP BY ALL"
            ") n "
            "WHERE c.symbol = n.symbol AND c.period = n.period "
            "AND c.time < $3 AND c.time < n.newest",
            params,
        ).fetchone()
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise
    return int(row[0]) if row is not None and row[0] is not None else 0
