"""Aggregate durable candles/s of 1, 2 and 4 ingest shards on one PostgreSQL-catalog lake.

What is measured: the durable half of ingest, i.e. the part shards contend on. Each shard is
a separate process with its own :class:`~pipeline.store.CandleStore` on one shared lake
(throwaway PostgreSQL catalog from ``tests/helpers/postgres.py``, one shared data folder), and
writes only its own series (``ShardSpec.select``) in flush-sized batches: every round, the next
``CANDLES_PER_ROUND`` candles of each of its series, as the service's flush does after a
minute of live data. A candle counts once its transaction committed (durable).

Aggregate candles/s = all candles committed / wall time from the common start to the last
shard's finish. Per-shard cost = CPU seconds and peak RSS of each shard process, and the
commit retries DuckLake conflicts caused. The decode and socket side of a shard is measured
separately (``bench_decode.py``); on these 2 cores more shards add processes, not cores.

Run: ``.venv/bin/python -m benchmarks.bench_shards [--series 2000 --rounds 8]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks.common import machine_info, print_table, write_json
from pipeline.dxlink import CandleSymbol
from pipeline.schema import CANDLE_SCHEMA
from pipeline.sharding import ShardSpec
from pipeline.store import CandleStore
from tests.helpers.postgres import running_postgres

__all__ = ["main", "run_shards"]

CANDLES_PER_ROUND = 5
T0 = datetime(2026, 11, 3, 14, 30, tzinfo=UTC)


def _frame(series: list[CandleSymbol], round_index: int) -> pl.DataFrame:
    """The next ``CANDLES_PER_ROUND`` one-minute candles of every series."""
    first = round_index * CANDLES_PER_ROUND
    n = len(series) * CANDLES_PER_ROUND
    minutes = [first + i % CANDLES_PER_ROUND for i in range(n)]
    prices = [100.0 + (i % 97) * 0.01 for i in range(n)]
    return pl.DataFrame(
        {
            "symbol": [s.base for s in series for _ in range(CANDLES_PER_ROUND)],
            "period": [s.period_label for s in series for _ in range(CANDLES_PER_ROUND)],
            "time": [T0 + timedelta(minutes=m) for m in minutes],
            "open": prices,
            "high": [p + 0.5 for p in prices],
            "low": [p - 0.5 for p in prices],
            "close": prices,
            "volume": [1000.0] * n,
            "vwap": prices,
            "count": [10] * n,
            "bid_volume": [400.0] * n,
            "ask_volume": [600.0] * n,
            "imp_volatility": [float("nan")] * n,
            "open_interest": [float("nan")] * n,
            "revision": [0] * n,
            "ingested_at": [None] * n,
            "sequence": [0] * n,
        },
        schema=CANDLE_SCHEMA,
    )


def _shard(
    spec: str, catalog: str, shared: str, root: str, names: list[str], rounds: int,
    start: Barrier, results: Any,
) -> None:  # fmt: skip
    """One shard process: open the lake, wait for the others, write its series' rounds."""
    mine = list(ShardSpec.parse(spec).select(CandleSymbol.parse(n) for n in names))
    frames = [_frame(mine, r) for r in range(rounds)]
    with CandleStore(root, catalog=catalog, data_path=shared, verify_extensions=False) as store:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before = usage.ru_utime + usage.ru_stime
        start.wait()
        began = time.perf_counter()
        written = 0
        latencies = []
        for frame in frames:
            flush_began = time.perf_counter()
            written += store.upsert(frame).written
            latencies.append(time.perf_counter() - flush_began)
        finished = time.perf_counter()
        retries = store.stats.retries
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.put(
        {
            "shard": spec,
            "series": len(mine),
            "written": written,
            "began": began,
            "finished": finished,
            "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "retries": retries,
            "flush_s": latencies,
        }
    )


def run_shards(
    count: int, catalog: str, shared: Path | str, series: int, rounds: int
) -> dict[str, Any]:
    """Run ``count`` shard processes on one fresh lake; their figures and the aggregate.

    ``shared`` is a folder or an ``s3://`` URL (the processes inherit the ``AWS_*``
    environment that reaches it).
    """
    names = [CandleSymbol.of(f"S{i:05d}", "1m").normalized for i in range(series)]
    context = mp.get_context("spawn")
    start = context.Barrier(count)
    results = context.Queue()
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as root:
        processes = [
            context.Process(
                target=_shard,
                args=(f"{k}/{count}", catalog, str(shared), root, names, rounds, start, results),
            )
            for k in range(1, count + 1)
        ]
        for process in processes:
            process.start()
        shards = [results.get(timeout=600) for _ in processes]
        for process in processes:
            process.join()
    written = sum(s["written"] for s in shards)
    wall = max(s["finished"] for s in shards) - min(s["began"] for s in shards)
    flushes = sorted(f for s in shards for f in s["flush_s"])
    return {
        "shards": count,
        "candles": written,
        "wall_s": round(wall, 3),
        "candles_per_s": round(written / wall),
        "flushes": len(flushes),
        "flush_p50_s": round(flushes[len(flushes) // 2], 3),
        "flush_max_s": round(flushes[-1], 3),
        "per_shard": sorted(shards, key=lambda s: str(s["shard"])),
    }


def main() -> None:
    """Measure 1, 2 and 4 shards; print a table and write ``results/shards.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    runs = []
    with running_postgres() as server, tempfile.TemporaryDirectory() as data:
        for count in args.shards:
            catalog = server.create_database(f"bench{count}")
            runs.append(
                run_shards(count, catalog, Path(data) / str(count), args.series, args.rounds)
            )
    rows = []
    for run in runs:
        shards = run["per_shard"]
        rows.append([
            run["shards"], run["candles"], run["wall_s"], run["candles_per_s"],
            round(sum(s["cpu_s"] for s in shards) / len(shards), 2),
            round(max(s["peak_rss_mb"] for s in shards)),
            sum(s["retries"] for s in shards),
        ])  # fmt: skip
    print_table(
        f"durable candles/s, {args.series} series x {args.rounds} rounds x {CANDLES_PER_ROUND}",
        ["shards", "candles", "wall s", "candles/s", "cpu s/shard", "peak RSS MB/shard",
         "retries"],
        rows,
    )  # fmt: skip
    path = write_json(
        "shards",
        {
            "machine": machine_info(["duckdb", "polars", "duckdb-extension-ducklake"]),
            "series": args.series,
            "rounds": args.rounds,
            "candles_per_round": CANDLES_PER_ROUND,
            "runs": runs,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
