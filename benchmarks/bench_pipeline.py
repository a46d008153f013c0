"""Ingest hot path without a socket (issue 6, item 2): decoded events to durable candles.

The service's own ceiling for a backfill, independent of any server. In one process, the
COMPACT FEED_DATA snapshot frames of S series x N 1m candles (chunks of 500 events, newest
first, one series after another, as the simulator's ``snapshot_chunks`` sends them;
dxlink-protocol.md §6.2) are built up front, then fed through the product's path:

1. ``ClientProtocol.receive_message`` + ``events_received`` (decode),
2. ``CandleDataManager.update`` per decoded batch (snapshot assembly, §6.3),
3. every ``FLUSH_EVERY`` events (the service's batch size) and at the end: the flush,
   ``take_completed`` (hands out the packed records), ``CandleStore.upsert`` (building the
   batch's polars frame, which the service does in its writing thread, and the DuckLake
   transaction) and ``commit``.

Every stage is timed on its own and the whole run end to end (durable candles/s: every
candle is in the store when the clock stops). The decode-only pass (the same frames through
a fresh client, nothing else) is the baseline, measured in the same run. The manager and
store use the product's defaults (``manager.*`` of the config) with ``grace_seconds`` 0, the
clock standing at the end of the history, so every candle is complete. As in ``candles
ingest``, the process-wide tuning (``pipeline.ingest.tuning``) is applied while the pipeline
runs: the collector's young threshold, glibc's mmap threshold and DuckDB's lazy imports.

Flushes here run in line (no flush thread), so the end-to-end figure is the sum of the
stages: the service overlaps the store's DuckDB work (which releases the GIL) with receiving.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.bench_decode import configured_client, feed_data_frame
from benchmarks.e2e_common import (
    MINUTE_MS,
    START_MS,
    BenchResult,
    Figure,
    bench_config,
    bench_main,
    symbols,
)
from pipeline.candles import CandleDataManager
from pipeline.dxlink import CANDLE_FIELDS, CandlesReceived
from pipeline.ingest import FLUSH_BATCH_EVENTS
from pipeline.ingest.tuning import INGEST_GC_THRESHOLD, ingest_process_tuning
from pipeline.simulator import Series
from pipeline.simulator.bars import Bar
from pipeline.simulator.session import snapshot_chunks
from pipeline.store import CandleStore

__all__ = ["FLUSH_EVERY", "TARGET", "StageTimes", "build_frames", "main", "measure", "run"]

TARGET = 200_000.0
"""Candles per second made durable (issue 6)."""
FLUSH_EVERY = FLUSH_BATCH_EVENTS
"""Events between two flushes: the service's own batch size (``pipeline.ingest.service``)."""
CHUNK = 500
"""Events per FEED_DATA frame (the simulator's default chunk size)."""


def _bar(number: int) -> Bar:
    """A plausible 1m bar (prices in ticks of 0.01), deterministic in ``number``."""
    base = 10_000 + (number * 37) % 500
    trades = 5 + number % 40
    volume = trades * 10
    return Bar(
        open=base,
        high=base + 20,
        low=base - 15,
        close=base + 5,
        trades=trades,
        volume=volume,
        turnover=volume * (base + 2),
        bid_volume=volume // 3,
        ask_volume=volume // 2,
    )


def build_frames(series: int, candles: int) -> tuple[list[str], int]:
    """The snapshot frames of ``series`` x ``candles`` 1m candles ending at ``START_MS``.

    Returns:
        The frames (one series after another) and the number of Candle events they carry.
    """
    from_ms = START_MS - candles * MINUTE_MS
    frames: list[str] = []
    events = 0
    for base in symbols(series):
        served = Series.parse(f"{base}{{=1m}}")
        newest_first = (
            (from_ms + number * MINUTE_MS, _bar(number)) for number in reversed(range(candles))
        )
        for chunk in snapshot_chunks(
            served, newest_first, from_ms, history_limit=candles + 1, chunk_size=CHUNK
        ):
            frames.append(feed_data_frame(chunk, CANDLE_FIELDS))
            events += len(chunk)
    return frames, events


@dataclass(slots=True)
class StageTimes:
    """Seconds spent per stage over one pipeline run."""

    decode: float = 0.0
    update: float = 0.0
    take: float = 0.0
    store: float = 0.0
    commit: float = 0.0
    total: float = 0.0
    flushes: int = 0
    stored: int = 0
    flush_seconds: list[float] = field(default_factory=list)


def decode_only(frames: Sequence[str]) -> float:
    """Seconds to decode every frame with a fresh client and nothing else (the baseline)."""
    client = configured_client(CANDLE_FIELDS)
    receive, drain = client.receive_message, client.events_received
    started = time.perf_counter()
    for frame in frames:
        receive(frame, 1.0)
        drain()
    return time.perf_counter() - started


def pipeline_run(
    frames: Sequence[str],
    series: int,
    store_path: Path,
    flush_every: int,
    gc_threshold: int | None = INGEST_GC_THRESHOLD,
) -> StageTimes:
    """Feed ``frames`` through client, manager and store; time each stage and the whole.

    ``gc_threshold``: the young GC threshold meanwhile, as ``candles ingest`` sets it
    (``None``: the interpreter's own, for comparisons).
    """
    with ingest_process_tuning(gc_threshold=gc_threshold):
        return _timed_run(frames, series, store_path, flush_every)


def _timed_run(
    frames: Sequence[str], series: int, store_path: Path, flush_every: int
) -> StageTimes:
    config = bench_config(
        store_path, bases=symbols(series), from_ms=START_MS, overrides={"manager.grace_seconds": 0}
    )
    settings = config.manager
    manager = CandleDataManager(
        max_series=max(1, series),
        max_historical_candles=settings.max_historical_candles,
        max_pinned_candles=settings.max_unstored,
        grace_ms=0,
    )
    store = CandleStore(store_path)
    client = configured_client(CANDLE_FIELDS)
    receive, drain, update = client.receive_message, client.events_received, manager.update
    times = StageTimes()
    clock = time.perf_counter

    def flush() -> None:
        began = clock()
        batch = manager.take_completed()
        taken = clock()
        store.upsert(batch.frame, batch.deletions)
        stored = clock()
        manager.commit(batch)
        done = clock()
        times.take += taken - began
        times.store += stored - taken
        times.commit += done - stored
        times.flushes += 1
        times.stored += batch.frame.height
        times.flush_seconds.append(done - began)

    try:
        since_flush = 0
        started = clock()
        for frame in frames:
            began = clock()
            receive(frame, 1.0)
            received = drain()
            decoded = clock()
            for event in received:
                if isinstance(event, CandlesReceived):
                    update(event.candles, START_MS)
                    since_flush += len(event.candles)
            times.decode += decoded - began
            times.update += clock() - decoded
            if since_flush >= flush_every:
                flush()
                since_flush = 0
        flush()
        times.total = clock() - started
    finally:
        store.close()
    return times


def measure(series: int, candles: int, workdir: Path, flush_every: int) -> BenchResult:
    """Build the frames, time decode alone, then the whole pipeline; return the figures."""
    frames, events = build_frames(series, candles)
    decode_s = min(decode_only(frames) for _ in range(2))
    times = pipeline_run(frames, series, workdir / "store", flush_every)
    expected = series * candles
    if times.stored != expected:
        raise RuntimeError(f"stored {times.stored} candles, expected {expected}")
    decode_rate = events / decode_s
    durable = expected / times.total

    def rate(seconds: float) -> float:
        return events / seconds if seconds else float("inf")

    figures = [
        Figure(
            "pipeline durable (decode -> stored), one thread",
            durable,
            "candles/s",
            "decode only",
            decode_rate,
            f">= {TARGET:,.0f} candles/s",
            durable >= TARGET,
        ),
        Figure(
            "client side without the store (decode+update+take+commit)",
            rate(times.decode + times.update + times.take + times.commit),
            "events/s",
            "decode only",
            decode_rate,
        ),
        Figure("stage: decode (in the pipeline)", rate(times.decode), "events/s"),
        Figure("stage: manager.update", rate(times.update), "events/s"),
        Figure("stage: take_completed", rate(times.take), "candles/s"),
        Figure("stage: store.upsert", rate(times.store), "candles/s"),
        Figure("stage: commit", rate(times.commit), "candles/s"),
    ]
    details: dict[str, Any] = {
        "events": events,
        "frames": len(frames),
        "decode_only_s": decode_s,
        "stages_s": {
            "decode": times.decode,
            "update": times.update,
            "take_completed": times.take,
            "store_upsert": times.store,
            "commit": times.commit,
        },
        "total_s": times.total,
        "flushes": times.flushes,
        "flush_s": times.flush_seconds,
        "stored": times.stored,
    }
    return BenchResult(
        "pipeline",
        f"Ingest hot path, no socket: {series} series x {candles} 1m candles, "
        f"flush every {flush_every:,} events",
        figures,
        {"series": series, "candles_per_series": candles, "flush_every": flush_every},
        details,
    )


def run(quick: bool, workdir: Path) -> BenchResult:
    """Run the benchmark (``quick``: 20 series x 500 candles) in ``workdir``."""
    series, candles = (20, 500) if quick else (200, 2000)
    return measure(series, candles, workdir, FLUSH_EVERY)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bench_pipeline [--quick]``."""
    return bench_main("pipeline", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
