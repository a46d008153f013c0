"""Recording (issue 18): durable backfill with recording on versus off, bytes per candle
recorded, and rebuilding the store from the recording.

The simulator runs in its own process on a manual clock (snapshots only), as in
``bench_backfill``, whose ``measure_service`` does every run. Side by side in the same run,
alternating (off, on, on, off, ...) so the box's load falls on both alike:

* **backfill durable, recording off / on**: S series x N candles from subscribe to durable,
  the service exactly as ``candles ingest`` runs it, with and without ``[record] enabled``
  (the recorder's thread compresses while the backfill goes on). Target: on >= 0.8x off,
  median of the rounds; every round's ratio is in the details, and the recorder's counters
  (frames dropped because its queue was full must be 0);
* **bytes per candle recorded**: the recording's files (zstd level 1) per candle of the
  backfill, against the frames' own bytes (what the socket carried);
* **rebuild from the recording**: ``pipeline.ingest.rebuild`` of the last recording into an
  empty store, candles made durable per second, next to the backfill's figure (it runs the
  same protocol, manager and store path, without the socket); its floor is reading the
  recording alone (decompress, decode the record lines), also per candle.

Process tuning as ``candles ingest`` (and ``candles rebuild``) apply it.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench_backfill import measure_service
from benchmarks.e2e_common import (
    MINUTE_MS,
    START_MS,
    BenchResult,
    Figure,
    SimulatorProcess,
    bench_config,
    bench_main,
    count_feed_events,
    raw_receive,
    symbols,
)
from pipeline.ingest import rebuild
from pipeline.ingest.tuning import ingest_process_tuning
from pipeline.recording import Recording, recording_files

__all__ = ["TARGET_RATIO", "main", "measure", "run"]

TARGET_RATIO = 0.8
"""Durable backfill with recording on, as a fraction of the same with it off (issue 18)."""


async def _backfills(
    url: str,
    bases: Sequence[str],
    candles: int,
    workdir: Path,
    events: int,
    pid: int | None,
    rounds: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path]:
    """Alternate runs with recording off and on; return both lists and the last recording."""
    off: list[dict[str, Any]] = []
    on: list[dict[str, Any]] = []
    recordings = workdir / "recordings"
    for number in range(rounds):
        order = (False, True) if number % 2 == 0 else (True, False)
        for recording in order:
            store = workdir / f"store-{number}-{'on' if recording else 'off'}"
            folder = recordings / str(number)
            overrides = {"record.enabled": True, "record.dir": str(folder)} if recording else {}
            result = await measure_service(url, bases, candles, store, events, pid, overrides)
            if recording:
                files = sorted(folder.iterdir())
                result["recording_files_bytes"] = sum(p.stat().st_size for p in files)
                on.append(result)
            else:
                off.append(result)
    return off, on, recordings / str(rounds - 1)


def _read_only(files: list[Path]) -> tuple[float, int]:
    """Seconds to read every record of the recording (decompress + decode lines), records."""
    started = time.perf_counter()
    count = sum(1 for _ in Recording(files).entries())
    return time.perf_counter() - started, count


async def measure(series: int, candles: int, workdir: Path, rounds: int) -> BenchResult:
    bases = symbols(series)
    keys = [f"{b}{{=1m}}" for b in bases]
    from_ms = START_MS - candles * MINUTE_MS
    expected = series * candles
    with SimulatorProcess(history_limit=candles + 100, history_days=None) as sim:
        raw = await raw_receive(sim.url, keys, from_ms, idle=1.0)
        events = count_feed_events(raw.frames)
        off, on, last = await _backfills(sim.url, bases, candles, workdir, events, sim.pid, rounds)
    for result in (*off, *on):
        if result["stored"] != expected:
            raise RuntimeError(f"stored {result['stored']} candles, expected {expected}")
    off_rates = [r["stored"] / r["durable_s"] for r in off]
    on_rates = [r["stored"] / r["durable_s"] for r in on]
    ratio_per_round = [a / b for a, b in zip(on_rates, off_rates, strict=True)]
    off_rate, on_rate = statistics.median(off_rates), statistics.median(on_rates)
    recorded = on[-1]
    files = recording_files([last])
    file_bytes = recorded["recording_files_bytes"]
    frame_bytes = raw.bytes
    rebuild_config = bench_config(workdir / "rebuilt", bases=bases, from_ms=from_ms)
    report = await asyncio.to_thread(rebuild, Recording(files), rebuild_config)
    if report.candles_stored != expected or report.problems:
        raise RuntimeError(f"rebuild stored {report.candles_stored}, problems {report.problems}")
    read_s, records = _read_only(files)
    dropped = sum(r["recording"]["dropped_frames"] for r in on)
    ratio = on_rate / off_rate
    figures = [
        Figure(
            "backfill durable, recording on (median)",
            on_rate,
            "candles/s",
            "recording off (median)",
            off_rate,
            f">= {TARGET_RATIO:g}x off",
            ratio >= TARGET_RATIO,
        ),
        Figure(
            "recorded bytes per candle (zstd files)",
            file_bytes / expected,
            "bytes",
            "frame bytes per candle",
            frame_bytes / events,
        ),
        Figure(
            "rebuild from the recording (no socket)",
            report.rate,
            "candles/s",
            "backfill durable, off (median)",
            off_rate,
        ),
        Figure(
            "read the recording alone (decompress, decode lines)", expected / read_s, "candles/s"
        ),
        Figure(
            "frames dropped by the recorder",
            float(dropped),
            "frames",
            None,
            None,
            "0",
            dropped == 0,
        ),
    ]
    details: dict[str, Any] = {
        "rounds": rounds,
        "off_rates": off_rates,
        "on_rates": on_rates,
        "on_over_off_per_round": ratio_per_round,
        "events": events,
        "frames": len(raw.frames),
        "frame_bytes": frame_bytes,
        "recording_files_bytes": file_bytes,
        "recording": recorded["recording"],
        "rebuild": {
            "seconds": report.seconds,
            "stored": report.candles_stored,
            "frames": report.frames,
            "flushes": report.flushes,
        },
        "read_only_s": read_s,
        "records": records,
        "off": off,
        "on": on,
    }
    return BenchResult(
        "recording",
        f"Recording: backfill {series} series x {candles} 1m candles, on vs off "
        f"({rounds} rounds alternated), and rebuild",
        figures,
        {"series": series, "candles_per_series": candles, "rounds": rounds},
        details,
    )


def run(quick: bool, workdir: Path) -> BenchResult:
    """Run the benchmark (``quick``: 20 series x 500 candles, one round) in ``workdir``."""
    series, candles, rounds = (20, 500, 1) if quick else (200, 2000, 5)
    with ingest_process_tuning():
        return asyncio.run(measure(series, candles, workdir, rounds))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bench_recording [--quick]``."""
    return bench_main("recording", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
