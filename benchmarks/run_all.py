"""Run every benchmark of issue 6 and print one combined table.

``./run python -m benchmarks.run_all`` (about 5 minutes; ``--quick``: about 1.5 minutes,
small sizes, for a smoke run). Runs decode (``bench_decode``, item 1), the in-process
pipeline (``bench_pipeline``: frames to durable candles with no socket, the service's own
ceiling for item 2), backfill, live, recovery, memory and store (items 2-6) and recording
(issue 18: backfill with recording on vs off, bytes per candle, rebuild), each in its
own temporary folder, one after another (never side by side: they would take each other's
CPU). Prints each benchmark's own table, then one
combined table of every figure against its baseline and target, and the same as Markdown
to paste into the README; writes ``benchmarks/results/<name>.json`` per benchmark and
``benchmarks/results/all.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import (
    bench_backfill,
    bench_decode,
    bench_live,
    bench_memory,
    bench_pipeline,
    bench_recording,
    bench_recovery,
    bench_store,
)
from benchmarks.common import RESULTS_DIR, machine_info, write_json
from benchmarks.e2e_common import PACKAGES, BenchResult, Figure, markdown_table, print_figures

__all__ = ["BENCHMARKS", "decode_figures", "main", "run_benchmarks"]

BENCHMARKS: dict[str, Callable[[bool, Path], BenchResult]] = {
    "pipeline": bench_pipeline.run,
    "backfill": bench_backfill.run,
    "live": bench_live.run,
    "recovery": bench_recovery.run,
    "memory": bench_memory.run,
    "store": bench_store.run,
    "recording": bench_recording.run,
}
"""The end-to-end benchmarks, by name, in the order they run."""


def decode_figures(result: dict[str, Any]) -> list[Figure]:
    """The decode benchmark's headline figures (our client's whole per-frame path, our field
    list, against the JSON floor of the same bytes), from its JSON."""
    figures = []
    target = float(result["target_fraction_of_json_floor"])
    for size, entry in result["sizes"].items():
        cases = entry["cases"]
        ours, floor = cases["ours 18"], cases["floor 18"]
        figures.append(
            Figure(
                f"decode {size} ev/msg: receive_message + events",
                ours["events_per_second"], "events/s", "JSON floor", floor["events_per_second"],
                f">= {target:g}x JSON floor", bool(ours["target_met"]),
            )
        )  # fmt: skip
    return figures


def _run_decode(quick: bool) -> BenchResult:
    rounds = "40" if quick else "200"
    bench_decode.main(["--rounds", rounds])
    result = json.loads((RESULTS_DIR / "decode.json").read_text())
    return BenchResult("decode", "Decode", decode_figures(result), {"rounds": int(rounds)}, {})


def run_benchmarks(
    quick: bool, only: Sequence[str] | None = None, *, decode: bool = True
) -> list[BenchResult]:
    """Run the benchmarks (all, or ``only`` these names), printing each one's table and
    writing its JSON; return their results in order."""
    names = list(BENCHMARKS) if only is None else list(only)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    results = [_run_decode(quick)] if decode else []
    for name in names:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as folder:
            result = BENCHMARKS[name](quick, Path(folder))
        print_figures(f"{result.title} ({time.perf_counter() - started:.0f} s)", result.figures)
        write_json(name, {**result.as_json(), "quick": quick, "machine": machine_info(PACKAGES)})
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.run_all [--quick] [--only NAME ...] [--no-decode]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a ~1 minute smoke run")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--no-decode", action="store_true", help="skip bench_decode")
    args = parser.parse_args(argv)
    machine = machine_info(PACKAGES)
    started = time.perf_counter()
    results = run_benchmarks(args.quick, args.only, decode=not args.no_decode)
    figures = [figure for result in results for figure in result.figures]
    seconds = time.perf_counter() - started
    print_figures(
        f"All benchmarks ({'quick, ' if args.quick else ''}{seconds:.0f} s; Python "
        f"{machine['python']}, {machine['cpu']} x{machine['cpu_count']}, "
        f"load {machine['load_average']} at start)",
        figures,
    )
    print("\nMarkdown (README):\n")
    print(markdown_table(figures))
    path = write_json(
        "all",
        {
            "quick": args.quick,
            "seconds": seconds,
            "machine": machine,
            "benchmarks": [r.as_json() for r in results],
        },
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
