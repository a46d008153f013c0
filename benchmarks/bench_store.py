"""Store (issue 6, item 6): upsert into a large store, and two read queries.

The large store holds whole symbol-years of 1m candles (20 symbols x 525,600 = 10,512,000
rows; ``--quick``: 2 symbols). It is generated once by DuckDB from ``range()`` (no Python
loop) and cached under ``benchmarks/results/``; each run works on a copy.

Side by side in the same run, best of several rounds:

* **upsert** of 100,000 new candles (one new series) through ``CandleStore.upsert``, against
  a **plain append** of the same frame (``INSERT INTO candles SELECT * FROM frame`` on a
  writer connection: no dedupe, no stored-version lookup, no classification); also the upsert
  of 100,000 *revised* candles (every key already stored, values changed), and in the details
  the next 100,000 candles of the same series (a backfill's or live ingest's steady state)
  and the same revised batch once more (every row unchanged);
* the **write floor** of the same frame, outside the lake (details only): DuckDB ``COPY`` to
  one Parquet file per codec (snappy, DuckLake's default; zstd; lz4; uncompressed),
  pyarrow's ``write_table`` and polars' ``write_parquet`` (how the upsert writes its data
  files); what a lake append adds on top is the catalog commit and its per-transaction
  metadata reads;
* **last 1,000 candles of one series** through ``CandleStore.recent`` against the same SQL on
  a reader connection (``connect()``);
* **1m -> 1h resample over one symbol-year** through the store's ``resample`` macro, against
  the scan floor: one pass over the same rows summing a column.

Targets: upsert >= 1,000,000 rows/s; last-1,000 query <= 50 ms.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq  # type: ignore[import-untyped]  # pyarrow ships no stubs

from benchmarks.common import RESULTS_DIR
from benchmarks.e2e_common import BenchResult, Figure, bench_main
from pipeline.schema import CANDLE_SCHEMA, KEY_COLUMNS
from pipeline.store import CandleStore, connect

__all__ = [
    "MINUTES_PER_YEAR",
    "UPSERT_TARGET",
    "last_thousand_target",
    "main",
    "measure",
    "prepare_store",
    "run",
    "synthetic_frame",
]

MINUTES_PER_YEAR = 525_600
UPSERT_ROWS = 100_000
UPSERT_TARGET = 1_000_000.0
"""Rows per second upserted (issue 6)."""
last_thousand_target = 0.050
"""Seconds for "last 1,000 candles of one series" (issue 6)."""
YEAR_START = datetime(2025, 1, 1, tzinfo=UTC)
# Bump when the generated rows change, so a stale cache is rebuilt.
CACHE_VERSION = 2

_GENERATE = f"""
INSERT INTO candles
SELECT
    'ST' || lpad(CAST(i // {MINUTES_PER_YEAR} AS VARCHAR), 4, '0') AS symbol,
    '1m' AS period,
    TIMESTAMPTZ '{YEAR_START.isoformat()}' + to_minutes(i % {MINUTES_PER_YEAR}) AS time,
    100 + 10 * sin(i / 5000.0) AS open,
    100 + 10 * sin(i / 5000.0) + 0.5 AS high,
    100 + 10 * sin(i / 5000.0) - 0.5 AS low,
    100 + 10 * sin((i + 1) / 5000.0) AS close,
    CAST(1000 + i % 997 AS DOUBLE) AS volume,
    100 + 10 * sin(i / 5000.0) AS vwap,
    CAST(10 + i % 13 AS BIGINT) AS count,
    CAST(500 + i % 499 AS DOUBLE) AS bid_volume,
    CAST(500 + i % 498 AS DOUBLE) AS ask_volume,
    'NaN'::DOUBLE AS imp_volatility,
    'NaN'::DOUBLE AS open_interest,
    0 AS revision,
    TIMESTAMPTZ '2026-01-01 00:00:00+00' AS ingested_at,
    CAST(0 AS INTEGER) AS sequence
FROM range(?) t(i)
ORDER BY symbol, time
"""


def prepare_store(symbols: int, cache: Path = RESULTS_DIR) -> Path:
    """The store with ``symbols`` symbol-years of 1m candles cached under ``cache``,
    generated if missing."""
    rows = symbols * MINUTES_PER_YEAR
    folder = cache / f"store-{rows}-v{CACHE_VERSION}"
    marker = folder / "READY"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    CandleStore(folder).close()
    con = connect(folder, read_only=False)
    try:
        con.execute(_GENERATE, [rows])
    finally:
        con.close()
    marker.write_text(f"{rows} rows\n")
    return folder


def synthetic_frame(
    symbol: str, rows: int, start_minute: int, *, price: float = 100.0
) -> pl.DataFrame:
    """``rows`` 1m candles of ``symbol`` from ``YEAR_START + start_minute``, in the store's
    frame schema (what ``CandleDataManager.take_completed`` hands to the store)."""
    start_ms = int(YEAR_START.timestamp() * 1000) + start_minute * 60_000
    steps = pl.int_range(0, rows, eager=True)
    return pl.DataFrame(
        {
            "symbol": [symbol] * rows,
            "period": ["1m"] * rows,
            "time": (steps * 60_000 + start_ms).cast(pl.Datetime("ms", "UTC")),
            "open": steps.cast(pl.Float64) * 0.01 + price,
            "high": steps.cast(pl.Float64) * 0.01 + price + 0.5,
            "low": steps.cast(pl.Float64) * 0.01 + price - 0.5,
            "close": steps.cast(pl.Float64) * 0.01 + price + 0.1,
            "volume": (steps % 997 + 1000).cast(pl.Float64),
            "vwap": steps.cast(pl.Float64) * 0.01 + price,
            "count": (steps % 13 + 10).cast(pl.Int64),
            "bid_volume": (steps % 499 + 500).cast(pl.Float64),
            "ask_volume": (steps % 498 + 500).cast(pl.Float64),
            "imp_volatility": [float("nan")] * rows,
            "open_interest": [float("nan")] * rows,
            "revision": [0] * rows,
            "ingested_at": [datetime(2026, 1, 1, tzinfo=UTC)] * rows,
            "sequence": [0] * rows,
        },
        schema=CANDLE_SCHEMA,
    )


def _best(seconds: list[float]) -> float:
    return min(seconds)


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _append(folder: Path, frame: pl.DataFrame) -> float:
    """Seconds for a plain INSERT of ``frame`` into the lake (connection opened outside)."""
    con = connect(folder, read_only=False)
    try:
        con.register("frame", frame.to_arrow())
        return _timed(lambda: con.execute("INSERT INTO candles SELECT * FROM frame"))
    finally:
        con.close()


_CODECS = ("snappy", "zstd", "lz4", "uncompressed")


def _write_floor(folder: Path, frame: pl.DataFrame) -> dict[str, float]:
    """Seconds to write ``frame`` straight to one Parquet file: DuckDB COPY per codec,
    pyarrow and polars (snappy), each on its own; no catalog, no lake."""
    table = frame.to_arrow()
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.register("frame", table)
        seconds: dict[str, float] = {}
        for codec in _CODECS:
            copy = f"COPY frame TO '{folder / codec}.parquet' (FORMAT parquet, COMPRESSION {codec})"
            seconds[f"copy_{codec}"] = _timed(lambda: con.execute(copy))  # noqa: B023 (at once)
    finally:
        con.close()
    seconds["pyarrow_snappy"] = _timed(lambda: pq.write_table(table, folder / "pa.parquet"))
    # What the upsert's own data files cost (pipeline.store.lake.write_data_file).
    seconds["polars_snappy"] = _timed(
        lambda: frame.write_parquet(folder / "pl.parquet", compression="snappy")
    )
    return seconds


def measure(
    symbols: int,
    rounds: int,
    workdir: Path,
    *,
    upsert_rows: int = UPSERT_ROWS,
    cache: Path = RESULTS_DIR,
) -> BenchResult:
    """Measure on ``symbols`` symbol-years (cached under ``cache``), best of ``rounds``."""
    cached = prepare_store(symbols, cache)
    folder = workdir / "store"
    copied = _timed(lambda: shutil.copytree(cached, folder))
    append_s: list[float] = []
    upsert_s: list[float] = []
    revise_s: list[float] = []
    next_s: list[float] = []
    unchanged_s: list[float] = []
    floors: list[dict[str, float]] = []
    for round_ in range(rounds):
        floors.append(_write_floor(workdir / "floor", synthetic_frame("FL00", upsert_rows, 0)))
        append_s.append(_append(folder, synthetic_frame(f"AP{round_:02d}", upsert_rows, 0)))
        with CandleStore(folder) as store:
            fresh = synthetic_frame(f"UP{round_:02d}", upsert_rows, 0)
            upsert_s.append(_timed(lambda: store.upsert(fresh)))  # noqa: B023 (called at once)
            revised = synthetic_frame(f"UP{round_:02d}", upsert_rows, 0, price=200.0)
            revise_s.append(_timed(lambda: store.upsert(revised)))  # noqa: B023
            unchanged_s.append(_timed(lambda: store.upsert(revised)))  # noqa: B023
            following = synthetic_frame(f"UP{round_:02d}", upsert_rows, upsert_rows)
            next_s.append(_timed(lambda: store.upsert(following)))  # noqa: B023
            # Untimed: the store keeps one new and one revised batch per round, as before.
            store.upsert(following.clear(), deletions=following.select(KEY_COLUMNS))
    series = "ST0000{=1m}"
    with CandleStore(folder) as store:
        # Cold: the first read of the series on a fresh connection (footers, newest time).
        recent_cold_s = _timed(lambda: store.recent(series, 1000))
        total_rows = store.count()
        recent_s = [_timed(lambda: store.recent(series, 1000)) for _ in range(rounds * 4)]
    reader = connect(folder)
    try:
        sql_recent = (
            "SELECT * FROM (SELECT * FROM candles WHERE symbol = 'ST0000' AND period = '1m' "
            "ORDER BY time DESC LIMIT 1000) ORDER BY time"
        )
        raw_recent_s = [_timed(lambda: reader.execute(sql_recent).pl()) for _ in range(rounds * 4)]
        resample = "SELECT * FROM resample('ST0000', '1m', INTERVAL 1 HOUR)"
        buckets = reader.execute(resample).pl().height
        resample_s = [_timed(lambda: reader.execute(resample).pl()) for _ in range(rounds)]
        scan = "SELECT count(*), sum(close) FROM candles WHERE symbol = 'ST0000' AND period = '1m'"
        scan_s = [_timed(lambda: reader.execute(scan).fetchall()) for _ in range(rounds)]
    finally:
        reader.close()
    upsert_rate = upsert_rows / _best(upsert_s)
    recent = _best(recent_s)
    figures = [
        Figure(
            f"store upsert {upsert_rows:,} new candles",
            upsert_rate, "rows/s", "plain append", upsert_rows / _best(append_s),
            f">= {UPSERT_TARGET:,.0f} rows/s", upsert_rate >= UPSERT_TARGET,
        ),
        Figure(
            f"store upsert {upsert_rows:,} revised candles",
            upsert_rows / _best(revise_s), "rows/s", "plain append", upsert_rows / _best(append_s),
        ),
        Figure(
            "store last 1,000 candles of one series",
            recent * 1000, "ms", "same SQL, reader", _best(raw_recent_s) * 1000,
            f"<= {last_thousand_target * 1000:.0f} ms", recent <= last_thousand_target,
        ),
        Figure(
            "store 1m->1h resample, one symbol-year",
            _best(resample_s) * 1000, "ms", "scan floor", _best(scan_s) * 1000,
        ),
    ]  # fmt: skip
    return BenchResult(
        "store",
        f"Store: {symbols * MINUTES_PER_YEAR:,} rows ({symbols} symbol-years of 1m), "
        f"upserts of {upsert_rows:,}",
        figures,
        {"symbols": symbols, "rows": total_rows, "rounds": rounds, "upsert_rows": upsert_rows},
        {
            "copy_s": copied,
            "append_s": append_s,
            "write_floor_best_s": {key: min(f[key] for f in floors) for key in floors[0]},
            "upsert_new_s": upsert_s,
            "upsert_revised_s": revise_s,
            "upsert_next_s": next_s,
            "upsert_unchanged_s": unchanged_s,
            "recent_ms_median": statistics.median(recent_s) * 1000,
            "recent_cold_ms": recent_cold_s * 1000,
            "resample_buckets": buckets,
            "resample_s": resample_s,
            "scan_s": scan_s,
        },
    )


def run(quick: bool, workdir: Path) -> BenchResult:
    """Run the benchmark (``quick``: 2 symbol-years, 2 rounds) in ``workdir``."""
    symbols, rounds = (2, 2) if quick else (20, 3)
    return measure(symbols, rounds, workdir)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bench_store [--quick]``."""
    return bench_main("store", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
