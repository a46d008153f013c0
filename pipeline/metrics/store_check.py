"""The periodic store check: recent gaps, the backfill lag and the oldest candle per period
(see :mod:`pipeline.metrics`).

Blocking DuckDB queries on a read-only connection, run in a worker thread every
``check_interval`` seconds by the metrics server, never on a scrape.

The connection lives in the ingest process for as long as it runs, so it must not grow: a
DuckDB connection keeps, for every Parquet file it ever read, the file's footer
(``parquet_metadata_cache``) and its blocks (the external file cache), also after compaction
deleted the file: ~60 KB per flush file, measured with ``duckdb_memory()`` (benchmarks/README.md,
"Real-time soak"). The check reads every file once a minute, so both caches are off on its
connection, and it is reopened every ``reopen_every`` checks to return what remains.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import duckdb

from pipeline.dxlink import CandleSymbol
from pipeline.store import LAKE

__all__ = ["StoreCheck", "StoreCheckResult"]


@dataclass(frozen=True, slots=True)
class StoreCheckResult:
    """What one store check found (definitions: :mod:`pipeline.metrics`)."""

    checked_at: float
    """Wall-clock time of the check (Unix seconds)."""
    seconds: float
    """How long the check took."""
    gaps: int
    missing_periods: int
    backfill_lag_seconds: float | None
    """``None`` when no configured fixed-length series has a stored candle yet."""
    series_without_candles: int
    """Configured series with no stored candle at all."""
    snapshots: int | None = None
    """Snapshots the lake's catalog keeps (``None``: could not be read)."""
    data_files: int | None = None
    """Parquet files of the candles table in the newest snapshot."""
    data_bytes: int | None = None
    """Their total size."""
    awaiting_deletion: int | None = None
    """Files merged away or expired that compaction has yet to delete."""
    oldest_by_period: Mapping[str, float] = field(default_factory=dict)
    """Start of the oldest stored candle per period label (Unix seconds), over every series
    in the store: what retention (``store.retention``) has kept."""


_UNCACHED = (
    "SET enable_external_file_cache = false",
    "SET parquet_metadata_cache = false",
    # A background check: one thread, and a small share of memory (DuckDB's default is 80%
    # of the machine's, per connection).
    "SET threads = 1",
    "SET memory_limit = '256MB'",
)


class StoreCheck:
    """The periodic, blocking store queries behind gaps and backfill lag (run in a thread).

    Args:
        connect: Opens a read-only connection to the lake (``pipeline.store.connect``); called
            lazily, and again after a failure (the store may not exist yet at start).
        gap_window: Seconds of source time back from now in which gaps are counted.
        clock: Wall clock for ``checked_at``.
        reopen_every: Checks after which the connection is reopened (see the module doc).
    """

    def __init__(
        self,
        connect: Callable[[], duckdb.DuckDBPyConnection],
        *,
        gap_window: float = 86_400.0,
        clock: Callable[[], float] = time.time,
        reopen_every: int = 60,
    ) -> None:
        if gap_window <= 0:
            raise ValueError(f"gap_window must be > 0 seconds, got {gap_window}")
        if reopen_every < 1:
            raise ValueError(f"reopen_every must be >= 1 check, got {reopen_every}")
        self._connect = connect
        self._gap_window_ms = int(gap_window * 1000)
        self._clock = clock
        self._reopen_every = reopen_every
        self._checks_on_connection = 0
        self._con: duckdb.DuckDBPyConnection | None = None

    def run(self, series: Sequence[CandleSymbol], now_ms: int, grace_ms: int) -> StoreCheckResult:
        """Count recent gaps and compute the backfill lag of ``series`` at source time ``now_ms``.

        Raises:
            pipeline.store.StoreError: The lake cannot be opened (not created yet).
            duckdb.Error: A query failed; the connection is reopened next time.
        """
        started = time.perf_counter()
        if self._con is not None and self._checks_on_connection >= self._reopen_every:
            self.close()
        if self._con is None:
            self._con = self._connect()
            self._checks_on_connection = 0
            for setting in _UNCACHED:
                self._con.execute(setting)
        self._checks_on_connection += 1
        try:
            gap_row = self._con.execute(
                "SELECT count(*), coalesce(sum(missing_periods), 0) FROM candle_gaps "
                "WHERE epoch_ms(gap_end) >= ?",
                [now_ms - self._gap_window_ms],
            ).fetchone()
            spans = self._con.execute(
                "SELECT symbol, period, epoch_ms(min(time)), epoch_ms(max(time)) "
                "FROM candles GROUP BY ALL"
            ).fetchall()
            lake = _lake_size(self._con)
        except duckdb.Error:
            self.close()
            raise
        newest = {(str(symbol), str(period)): int(last) for symbol, period, _, last in spans}
        oldest: dict[str, int] = {}
        for _, period, first, _ in spans:
            oldest[str(period)] = min(int(first), oldest.get(str(period), int(first)))
        lags: list[int] = []
        unstored = 0
        for symbol in series:
            start = newest.get((symbol.base, symbol.period_label))
            if start is None:
                unstored += 1
            elif (period := symbol.period_ms) is not None:
                lags.append(max(0, now_ms - grace_ms - (start + 2 * period)))
        gaps, missing = gap_row if gap_row is not None else (0, 0)
        return StoreCheckResult(
            checked_at=self._clock(),
            seconds=time.perf_counter() - started,
            gaps=int(gaps),
            missing_periods=int(missing),
            backfill_lag_seconds=max(lags) / 1000 if lags else None,
            series_without_candles=unstored,
            oldest_by_period={period: ms / 1000 for period, ms in sorted(oldest.items())},
            snapshots=lake[0],
            data_files=lake[1],
            data_bytes=lake[2],
            awaiting_deletion=lake[3],
        )

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._con is not None:
            self._con.close()
            self._con = None


def _lake_size(con: duckdb.DuckDBPyConnection) -> tuple[int, int, int, int]:
    """(snapshots, data files, data bytes, files awaiting deletion) of the attached lake."""
    snapshots = con.execute(f"SELECT count(*) FROM ducklake_snapshots('{LAKE}')").fetchone()
    files = con.execute(
        f"SELECT count(*), coalesce(sum(data_file_size_bytes), 0) "
        f"FROM ducklake_list_files('{LAKE}', 'candles')"
    ).fetchone()
    waiting = con.execute(
        f"SELECT count(*) FROM __ducklake_metadata_{LAKE}.ducklake_files_scheduled_for_deletion"
    ).fetchone()
    assert snapshots is not None and files is not None and waiting is not None
    return int(snapshots[0]), int(files[0]), int(files[1]), int(waiting[0])
