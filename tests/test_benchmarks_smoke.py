"""Smoke tests of the end-to-end benchmarks: tiny sizes, well-formed results, no timings judged.

That a benchmark still runs and reports sane fields (finite figures, JSON, the table, the
candles it stored, the gap one flush closed) is behaviour of the benchmark scripts, so these
stay in the default suite (about 20 s together). What a figure *is* (a rate, a ratio, a target
met or missed) is never asserted here: that is what ``benchmarks/`` reports.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks import (
    bench_backfill,
    bench_live,
    bench_memory,
    bench_pipeline,
    bench_recording,
    bench_recovery,
    bench_store,
    soak_realtime,
)
from benchmarks.e2e_common import BenchResult, Figure, markdown_table
from benchmarks.run_all import BENCHMARKS, decode_figures

pytestmark = pytest.mark.timeout(120)


def _check(result: BenchResult, name: str, figures: int) -> None:
    assert result.name == name
    assert len(result.figures) >= figures
    for figure in result.figures:
        assert math.isfinite(figure.value) and figure.value >= 0, figure
        assert figure.baseline is None or math.isfinite(figure.baseline), figure
        assert figure.met in (None, True, False)
    json.dumps(result.as_json())  # JSON-ready, ratio included
    table = markdown_table(result.figures)
    assert table.count("\n") == len(result.figures) + 1


def test_backfill_stores_every_candle(tmp_path: Path) -> None:
    """The backfill benchmark stores series x candles and reports durable candles/s."""
    result = asyncio.run(bench_backfill.measure(3, 40, tmp_path))
    _check(result, "backfill", 3)
    assert result.details["stored"] == 3 * 40
    assert result.figures[0].target is not None and result.figures[0].baseline


def test_pipeline_stores_every_candle_without_a_socket(tmp_path: Path) -> None:
    """The in-process pipeline benchmark decodes, assembles and stores series x candles."""
    result = bench_pipeline.measure(3, 40, tmp_path, 50)
    _check(result, "pipeline", 2)
    assert result.details["stored"] == 3 * 40


def test_recovery_reports_first_data_and_gap(tmp_path: Path) -> None:
    """The recovery benchmark reconnects after each drop and closes the gap in one flush."""
    result = asyncio.run(bench_recovery.measure(2, 1, tmp_path))
    _check(result, "recovery", 2)
    assert result.details["gap_closed_by_one_flush"] == [True]
    assert len(result.details["first_data_s"]) == 1


def test_live_measures_cpu_and_steps(tmp_path: Path) -> None:
    """The live benchmark reports CPU per 100k updates and one entry per step run."""
    result = asyncio.run(bench_live.measure(10, (0.1,), 0.5, tmp_path))
    _check(result, "live", 2)
    assert len(result.details["steps"]) == 1
    assert result.details["steps"][0]["publish_interval"] == 0.1


def test_memory_traces_manager_and_ingest_child(tmp_path: Path) -> None:
    """The memory benchmark traces bytes per candle and samples the ingest child's RSS."""
    result = bench_memory.measure(3, 40, 0.5, tmp_path)
    _check(result, "memory", 3)
    assert result.details["retained"] == 3 * 40
    assert result.details["backfill_rss"]["peak"] > 0


def test_store_upserts_and_queries(tmp_path: Path) -> None:
    """The store benchmark builds (and caches) its big store and times upsert and reads."""
    result = bench_store.measure(1, 1, tmp_path / "work", upsert_rows=1000, cache=tmp_path)
    _check(result, "store", 4)
    assert result.parameters["rows"] == bench_store.MINUTES_PER_YEAR + 2 * 1000
    assert result.details["resample_buckets"] == bench_store.MINUTES_PER_YEAR // 60
    folder = f"store-{bench_store.MINUTES_PER_YEAR}-v{bench_store.CACHE_VERSION}"
    assert (tmp_path / folder / "READY").exists()


def test_recording_compares_on_with_off_and_rebuilds(tmp_path: Path) -> None:
    """The recording benchmark backfills with recording off and on and rebuilds the store."""
    result = asyncio.run(bench_recording.measure(2, 40, tmp_path, 1))
    _check(result, "recording", 4)
    assert result.details["rebuild"]["stored"] == 2 * 40
    assert result.details["recording_files_bytes"] > 0
    assert result.figures[0].target is not None and result.figures[0].baseline


def test_run_all_knows_every_benchmark_and_reads_decode() -> None:
    """run_all runs items 2-6 and turns bench_decode's JSON into figures against the floor."""
    assert list(BENCHMARKS) == [
        "pipeline",
        "backfill",
        "live",
        "recovery",
        "memory",
        "store",
        "recording",
    ]
    case = {"events_per_second": 2.0, "target_met": False}
    decoded = {
        "target_fraction_of_json_floor": 0.5,
        "sizes": {"1": {"cases": {"ours 18": case, "floor 18": {"events_per_second": 8.0}}}},
    }
    (figure,) = decode_figures(decoded)
    assert figure == Figure(
        "decode 1 ev/msg: receive_message + events",
        2.0, "events/s", "JSON floor", 8.0, ">= 0.5x JSON floor", False,
    )  # fmt: skip
    assert figure.ratio == 0.25


def test_the_real_time_soak_samples_and_reports(tmp_path: Path) -> None:
    """A few seconds of soak_realtime: JSON lines with every figure, and a report of them."""
    out = tmp_path / "soak.jsonl"
    soak_realtime.main(
        [
            "--samples", "3", "--sample-every", "1", "--symbols", "2", "--intervals", "1m",
            "--lookback-min", "5", "--warmup-min", "0", "--window-min", "0.05",
            "--workdir", str(tmp_path), "--out", str(out),
        ]
    )  # fmt: skip
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["header"] and lines[0]["series"] == 2
    samples = lines[1:]
    assert len(samples) == 3
    for sample in samples:
        assert sample["rss"] > 0 and sample["snapshots"] >= 1 and sample["reader_errors"] == 0
    report = soak_realtime.report(out, warmup_min=0, window_min=0.05, tolerance=0.02)
    assert all(label in report for label in soak_realtime.FIGURES.values())
    assert "| RSS (MiB) |" in soak_realtime.compare(
        out, out, warmup_min=0, window_min=0.05, tolerance=0.02
    )


def test_the_soak_slope_finds_a_known_trend() -> None:
    """The least-squares slope and its interval: a clean line, and a flat noisy series."""
    hours = [i / 60 for i in range(120)]
    line = soak_realtime.slope(hours, [100 + 6 * h for h in hours], window=10)
    assert math.isclose(line.per_hour, 6.0) and line.half_width < 1e-6
    assert not line.includes_zero
    noise = soak_realtime.slope(hours, [100 + (i % 2) for i in range(120)], window=10)
    assert noise.includes_zero


def test_the_soak_report_lines_up_each_compaction() -> None:
    """Figures that pile up between compactions are compared at the same point of each
    cycle: the last sample before a compaction and the first after it."""
    zeros: dict[str, Any] = {name: 0 for name in soak_realtime.Sample.__dataclass_fields__}

    def sample(minute: int, compactions: int, files: int) -> soak_realtime.Sample:
        values: dict[str, Any] = {
            **zeros, "t": minute * 60.0, "compactions": compactions, "data_files": files,
            "duckdb_tags": {},
        }  # fmt: skip
        return soak_realtime.Sample(**values)

    run = [sample(m, m // 60, 1 + m % 60) for m in range(0, 150, 10)]
    found = soak_realtime.cycles(run)
    assert [(n, b.t / 60, a.t / 60) for n, b, a in found] == [(1, 50, 60), (2, 110, 120)]
    assert [(b.data_files, a.data_files) for _, b, a in found] == [(51, 1), (51, 1)]
