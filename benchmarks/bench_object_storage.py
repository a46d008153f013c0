"""The lake's data in a local S3 server versus a local folder: durable candles/s, flush latency
and S3 requests per flush, for 1, 2 and 4 shards, side by side in one run.

Each configuration is :func:`benchmarks.bench_shards.run_shards`: ``N`` shard processes, each
with its own :class:`~pipeline.store.CandleStore` on one fresh PostgreSQL-catalog lake (a
throwaway server, ``tests/helpers/postgres.py``), writing its share of the series in
flush-sized batches. The data path is either a folder or ``s3://`` on a local moto server
(``tests/helpers/s3.py``, the ``moto[server]`` dev dependency). Folder and S3 runs alternate,
``--repeat`` times, so the machine's load drifts into both alike; the table shows each figure's
range over the repeats.

Requests per flush come from the S3 server's own request log (PUT, GET, HEAD, LIST, DELETE,
POST), counted over the run and divided by its flushes. A local S3 server has no network
latency: against a real bucket every request adds a round trip (tens of ms), so the request
count is the figure that carries over.

Run: ``.venv/bin/python -m benchmarks.bench_object_storage [--series 2000 --rounds 8 --repeat 2]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.bench_shards import CANDLES_PER_ROUND, run_shards
from benchmarks.common import machine_info, print_table, write_json
from tests.helpers.postgres import running_postgres
from tests.helpers.s3 import running_s3

__all__ = ["main"]

_KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE", "POST")


def _span(values: list[float], digits: int = 0) -> str:
    low, high = min(values), max(values)
    if digits == 0:
        return f"{low:,.0f}" if low == high else f"{low:,.0f}-{high:,.0f}"
    return f"{low:.{digits}f}" if low == high else f"{low:.{digits}f}-{high:.{digits}f}"


def main() -> None:
    """Measure folder vs S3 for each shard count; print a table, write ``object_storage.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    databases = itertools.count(1)
    with running_postgres() as pg, running_s3() as s3, tempfile.TemporaryDirectory() as folder:
        os.environ.update(s3.env())  # the spawned shard processes inherit the keys and endpoint
        for repeat in range(args.repeat):
            for count in args.shards:
                order = ("folder", "s3") if repeat % 2 == 0 else ("s3", "folder")
                for where in order:
                    n = next(databases)
                    catalog = pg.create_database(f"bench{n}")
                    if where == "s3":
                        data: str | Path = s3.create_bucket(f"bench-{n}") + "lake/"
                    else:
                        data = Path(folder) / str(n)
                    before = s3.requests()
                    run = run_shards(count, catalog, data, args.series, args.rounds)
                    used: Counter[str] = s3.requests() - before
                    run.update(where=where, repeat=repeat, requests=dict(used))
                    runs.append(run)
                    print(
                        f"{where:6} {count} shards: {run['candles_per_s']:,} candles/s, flush "
                        f"p50 {run['flush_p50_s']}s, requests {dict(used)}",
                        flush=True,
                    )
    rows = []
    for count in args.shards:
        for where in ("folder", "s3"):
            mine = [r for r in runs if r["shards"] == count and r["where"] == where]
            per_flush = {
                kind: [r["requests"].get(kind, 0) / r["flushes"] for r in mine] for kind in _KINDS
            }
            rows.append([
                count, where,
                _span([r["candles_per_s"] for r in mine]),
                _span([r["flush_p50_s"] for r in mine], 3),
                _span([r["flush_max_s"] for r in mine], 3),
                *(_span(per_flush[kind], 1) if where == "s3" else "-" for kind in _KINDS),
            ])  # fmt: skip
    print_table(
        f"durable candles/s and flush latency, {args.series} series x {args.rounds} rounds x "
        f"{CANDLES_PER_ROUND}, {args.repeat} repeats (range)",
        ["shards", "data", "candles/s", "flush p50 s", "flush max s",
         *(f"{kind}/flush" for kind in _KINDS)],
        rows,
    )  # fmt: skip
    path = write_json(
        "object_storage",
        {
            "machine": machine_info(["duckdb", "duckdb-extension-httpfs", "moto"]),
            "series": args.series,
            "rounds": args.rounds,
            "candles_per_round": CANDLES_PER_ROUND,
            "runs": runs,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
