"""Real-time soak (issue 16): does anything grow while ingest runs for hours on the real clock?

The ingest service runs in this process exactly as ``candles ingest`` runs it (the same
process tuning, its metrics server and store check on, the product's flush and compaction
schedules), against a simulator in a child process on the *real* clock (speed 1), with a
reader in another child process that queries the store the whole time. Every
``--sample-every`` seconds (default one minute) it records:

* this process: RSS, split into its own memory (``RssAnon``) and the pages of libraries and
  other files (``RssFile``: code is mapped as it first runs, so the first compaction adds a
  step of it), the Python heap (``tracemalloc``'s traced bytes and the allocator's block
  count; garbage the collector has not reached yet included, as ingest raises its young
  threshold: the heap diff below collects first), open file descriptors, threads;
* DuckDB's own memory on the writer's connection (:attr:`pipeline.store.CandleStore.memory`,
  a snapshot the store takes after each write, so reading it disturbs nothing);
* the lake: catalog bytes (SQLite file + WAL), snapshots, data files and bytes, inlined-data
  tables (:meth:`pipeline.store.CandleStore.catalog_stats`);
* the reader: its RSS, queries run and errors.

With tracemalloc on (the default), the sites where the Python heap grew from the end of the
warm-up to the end of the run, by traceback, go to ``<out>.heap.txt`` at the end.

Each sample is one JSON line in ``--out`` (written as it goes, so a run cut short still
reports). At the end, and with ``--report FILE``, it prints per figure the least-squares
slope per hour with its 95 % interval, the same per flush, and the median of the first and
last ``--window`` minutes after the warm-up; ``--compare BEFORE AFTER`` puts two runs side by
side. A slope counts as flat when its interval includes zero or the whole run's trend is
below ``--flat-tolerance`` of the figure or below one unit of it (1 MiB, 1,000 blocks, one
file).

The run takes hours of wall time and little CPU (200 live series at speed 1)::

    ./run python -m benchmarks.soak_realtime --hours 2.5 --out /tmp/soak.jsonl
    ./run python -m benchmarks.soak_realtime --report /tmp/soak.jsonl
    ./run python -m benchmarks.soak_realtime --compare /tmp/before.jsonl /tmp/after.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import machine_info
from benchmarks.e2e_common import TOKEN, SimulatorProcess, bench_config, symbols
from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.ingest.tuning import ingest_process_tuning

__all__ = ["Sample", "compare", "cycles", "main", "report", "run", "slope"]

MINUTE_MS = 60_000
MIB = 1 << 20
SCRAPE_EVERY_S = 15.0
"""How often the soak scrapes ``/metrics``, as a Prometheus server would."""
TRACE_FRAMES = 12
"""Frames kept per traced allocation: enough for the heap diff to name the caller."""
HEAP_DIFF_TOP = 15
"""Growth sites the heap diff lists (``<out>.heap.txt``)."""
PACKAGES = ("duckdb", "polars", "pyarrow", "websockets", "prometheus-client")

READER = """
import json, random, sys, time
from pipeline.store import connect
path, mode, every, series = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
con = connect(path, verify_extensions=False)
queries, errors, last_report = 0, [], 0.0
rng = random.Random(1)
while True:
    try:
        if mode == "reopen":  # like `candles query`: a fresh connection per round
            con.close()
            con = connect(path, verify_extensions=False)
        symbol, period = rng.choice(series)
        con.execute(
            "SELECT * FROM candles WHERE symbol = ? AND period = ? ORDER BY time DESC LIMIT 100",
            [symbol, period],
        ).fetchall()
        con.execute("SELECT count(*), max(time) FROM latest_candles").fetchone()
        if queries % 30 == 0:  # a notebook's heavier cell now and then
            con.execute("SELECT count(*), sum(missing_periods) FROM candle_gaps").fetchone()
        queries += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:300])
    now = time.monotonic()
    if now - last_report >= 10:
        last_report = now
        print(json.dumps({"queries": queries, "errors": len(errors), "last_error": errors[-1:]}),
              flush=True)
    time.sleep(every)
"""


@dataclass(slots=True)
class Sample:
    """Everything measured at one instant (sizes in bytes, times in seconds)."""

    t: float
    """Seconds since the service started."""
    flushes: int
    stored: int
    compactions: int
    recycles: int
    rss: int
    heap: int
    """Bytes traced by ``tracemalloc`` (0 with ``--no-tracemalloc``)."""
    blocks: int
    """``sys.getallocatedblocks()``: Python objects' memory blocks in use."""
    duckdb: int
    duckdb_tags: dict[str, int]
    fds: int
    threads: int
    catalog_bytes: int
    snapshots: int
    data_files: int
    data_bytes: int
    inlined_tables: int
    reader_rss: int
    reader_queries: int
    reader_errors: int
    scrapes: int
    flush_failures: int
    compaction_failures: int
    rss_anon: int = 0
    """The process's own memory in RSS (``RssAnon``: heap, arenas, stacks)."""
    rss_file: int = 0
    """Library and other file pages in RSS (``RssFile``): code mapped as it first runs."""


FIGURES: dict[str, str] = {
    "rss": "RSS (MiB)",
    "rss_anon": "RSS, anonymous (MiB)",
    "rss_file": "RSS, file pages (MiB)",
    "heap": "Python heap, tracemalloc (MiB)",
    "blocks": "Python allocated blocks (k)",
    "duckdb": "DuckDB memory, writer (MiB)",
    "fds": "open files",
    "threads": "threads",
    "catalog_bytes": "catalog, SQLite + WAL (MiB)",
    "snapshots": "snapshots",
    "data_files": "Parquet files",
    "data_bytes": "Parquet bytes (MiB)",
    "inlined_tables": "inlined-data tables",
    "reader_rss": "reader RSS (MiB)",
}
_SCALE = {
    "rss": MIB, "rss_anon": MIB, "rss_file": MIB, "heap": MIB, "duckdb": MIB,
    "catalog_bytes": MIB, "data_bytes": MIB, "reader_rss": MIB, "blocks": 1000,
}  # fmt: skip
_GROWS_WITH_DATA = ("data_bytes",)
"""Figures that must grow while candles are stored (shown, never judged flat)."""
_ADDED_LATER = ("rss_anon", "rss_file")
"""Figures that runs recorded before they existed lack (left out of their reports)."""


def _recorded(samples: Sequence[Sample]) -> list[str]:
    """The figures of :data:`FIGURES` the samples hold."""
    return [
        name
        for name in FIGURES
        if name not in _ADDED_LATER or any(getattr(s, name) for s in samples)
    ]


# ------------------------------------------------------------------------ measuring


def _resident(pid: int | str = "self") -> dict[str, int]:
    """The resident-memory figures of ``/proc/<pid>/status`` (``VmRSS``, ``RssAnon``,
    ``RssFile``, ...) in bytes, read once; ``{}`` where there is no such process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {
        name: int(value.split()[0]) * 1024
        for name, _, value in (line.partition(":") for line in status.splitlines())
        if name.startswith(("VmRSS", "Rss")) and value.strip().endswith("kB")
    }


class _Reader:
    """The reader child process and the latest counts it reported."""

    def __init__(self, store: Path, mode: str, every: float, series: list[tuple[str, str]]):
        self.process = subprocess.Popen(
            [sys.executable, "-c", READER, str(store), mode, str(every), json.dumps(series)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("CANDLES_")},
        )  # fmt: skip
        self.queries = 0
        self.errors = 0
        self.last_error: list[str] = []
        threading.Thread(target=self._follow, daemon=True, name="soak-reader").start()

    def _follow(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            report = json.loads(line)
            self.queries, self.errors = int(report["queries"]), int(report["errors"])
            self.last_error = list(report["last_error"]) or self.last_error

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


class _HeapDiff:
    """What the Python heap gained from the end of the warm-up to the end of the run.

    A tracemalloc snapshot is taken at the first sample after ``warm_until`` and another
    after the last sample; the sites that gained most (by traceback, so a library's
    allocation names our caller) go to ``path``, with the flushes in between so a gain reads
    per flush. The measurement must not disturb what it measures: the first snapshot waits
    on disk (``<path>.first``), not in the heap, and frames are written as file and line
    without their source (reading it would fill ``linecache``, several MiB of heap).
    """

    def __init__(self, warm_until: float, path: Path) -> None:
        self.warm_until = warm_until
        self.path = path
        self.first_path = path.with_name(path.name + ".first")
        self.first_sample: Sample | None = None
        self.last_sample: Sample | None = None

    def sampled(self, sample: Sample) -> None:
        self.last_sample = sample
        warm = time.monotonic() >= self.warm_until
        if self.first_sample is None and tracemalloc.is_tracing() and warm:
            self._snapshot().dump(str(self.first_path))
            self.first_sample = sample

    def finish(self) -> None:
        if self.first_sample is None or self.last_sample is None:
            return
        second = self._snapshot()
        first = tracemalloc.Snapshot.load(str(self.first_path))
        self.first_path.unlink()
        flushes = max(1, self.last_sample.flushes - self.first_sample.flushes)
        hours = max(1e-9, (self.last_sample.t - self.first_sample.t) / 3600)
        stats = second.compare_to(first, "traceback")
        total = sum(stat.size_diff for stat in stats)
        lines = [
            f"Python heap from {self.first_sample.t / 60:.0f} to {self.last_sample.t / 60:.0f} "
            f"min: {total / 1024:+.1f} KiB in {flushes} flushes "
            f"({total / flushes:+.0f} B per flush, {total / hours / MIB:+.3f} MiB/h)",
            "",
        ]
        for stat in stats[:HEAP_DIFF_TOP]:
            lines.append(
                f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks "
                f"({stat.size_diff / flushes:+.0f} B per flush)"
            )
            newest_first = reversed(stat.traceback)
            lines += [f"    {frame.filename}:{frame.lineno}" for frame in newest_first]
        self.path.write_text("\n".join(lines) + "\n")
        print(f"heap diff: {self.path}", flush=True)

    @staticmethod
    def _snapshot() -> tracemalloc.Snapshot:
        gc.collect()  # what is still reachable, not what waits for the collector
        ignored = [tracemalloc.Filter(False, tracemalloc.__file__)]
        return tracemalloc.take_snapshot().filter_traces(ignored)


def _scrape(url: str) -> None:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as reply:
        reply.read()


async def _scrape_periodically(service: IngestService, counter: list[int]) -> None:
    while True:
        await asyncio.sleep(SCRAPE_EVERY_S)  # a schedule, as Prometheus scrapes
        url = service.metrics.url
        if url is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(_scrape, url)
                counter[0] += 1


async def _sample(service: IngestService, reader: _Reader, started: float, scrapes: int) -> Sample:
    store = service.store
    resident = _resident()
    catalog = await asyncio.to_thread(store.catalog_stats)
    memory = store.memory
    return Sample(
        t=time.monotonic() - started,
        flushes=service.stats.flushes,
        stored=service.stats.candles_stored,
        compactions=service.stats.compactions,
        recycles=store.stats.connections_recycled,
        rss=resident.get("VmRSS", 0),
        heap=tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0,
        blocks=sys.getallocatedblocks(),
        duckdb=memory.total,
        duckdb_tags=dict(memory.by_tag),
        fds=len(os.listdir("/proc/self/fd")),
        threads=threading.active_count(),
        catalog_bytes=catalog.catalog_bytes or 0,
        snapshots=catalog.snapshots,
        data_files=catalog.data_files,
        data_bytes=catalog.data_bytes,
        inlined_tables=catalog.inlined_tables,
        reader_rss=_resident(reader.process.pid).get("VmRSS", 0),
        reader_queries=reader.queries,
        reader_errors=reader.errors,
        scrapes=scrapes,
        flush_failures=service.stats.flush_failures,
        compaction_failures=service.stats.compaction_failures,
        rss_anon=resident.get("RssAnon", 0),
        rss_file=resident.get("RssFile", 0),
    )


async def _soak(args: argparse.Namespace, workdir: Path, out: Path) -> None:
    bases = symbols(args.symbols, prefix="RT")
    intervals = tuple(args.intervals.split(","))
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - now_ms % MINUTE_MS
    store_path = workdir / "store"
    overrides: dict[str, Any] = {
        "schedule.flush_interval": args.flush_interval,
        "schedule.compaction_interval": args.compaction_interval,
        "manager.grace_seconds": 5.0,
        "metrics.enabled": True,
        "metrics.port": 0,
    }
    for option in args.set:
        key, _, value = option.partition("=")
        overrides[key] = json.loads(value)
    with SimulatorProcess(speed=1.0, start_ms=start_ms) as sim:
        config = bench_config(
            store_path, bases=bases, intervals=intervals,
            from_ms=start_ms - args.lookback_min * MINUTE_MS,
            overrides={"source.simulator.url": sim.url, **overrides},
        )  # fmt: skip
        service = IngestService(
            config,
            token_source=SimulatorTokenSource(sim.url, TOKEN),
            source_clock_ms=sim.sim_now_ms,
        )
        started = time.monotonic()
        run = asyncio.create_task(service.run())
        while service.stats.flushes == 0:  # the first data stored
            if run.done():
                run.result()
            await asyncio.sleep(0.5)
        series = [(s.base, s.period_label) for s in service.series]
        reader = _Reader(store_path, args.reader_mode, args.reader_every, series)
        scrapes = [0]
        scraper = asyncio.create_task(_scrape_periodically(service, scrapes))
        header = {
            "header": True, "args": {k: v for k, v in vars(args).items() if k != "func"},
            "series": len(series), "machine": machine_info(PACKAGES),
        }  # fmt: skip
        deadline = started + args.hours * 3600
        taken = 0
        heap = _HeapDiff(started + args.warmup_min * 60, out.with_suffix(".heap.txt"))
        try:
            with out.open("w") as sink:
                sink.write(json.dumps(header) + "\n")
                while taken < args.samples if args.samples else time.monotonic() < deadline:
                    if run.done():
                        run.result()
                        raise RuntimeError("the service stopped by itself")
                    sample = await _sample(service, reader, started, scrapes[0])
                    sink.write(json.dumps(asdict(sample)) + "\n")
                    sink.flush()
                    print(_line(sample), flush=True)
                    heap.sampled(sample)
                    taken += 1
                    await asyncio.sleep(args.sample_every)  # the sampling schedule
            heap.finish()
        finally:
            scraper.cancel()
            service.stop()
            await run
            reader.stop()
        if reader.last_error:
            print(f"reader's last error: {reader.last_error[-1]}")


def _line(s: Sample) -> str:
    return (
        f"{s.t / 60:6.1f} min  flushes {s.flushes:5d}  rss {s.rss / MIB:6.1f}  "
        f"heap {s.heap / MIB:5.1f}  duckdb {s.duckdb / MIB:5.1f}  fds {s.fds:3d}  "
        f"catalog {s.catalog_bytes / MIB:5.2f} MiB  snapshots {s.snapshots:5d}  "
        f"files {s.data_files:4d}  inlined {s.inlined_tables}  "
        f"reader {s.reader_rss / MIB:6.1f} MiB {s.reader_queries} q {s.reader_errors} err"
    )


# ------------------------------------------------------------------------ analysis


@dataclass(frozen=True, slots=True)
class Slope:
    """A least-squares line through (hours, value)."""

    per_hour: float
    half_width: float
    """Half the 95 % interval of ``per_hour`` (normal approximation)."""
    first: float
    """Median over the first window after the warm-up."""
    last: float
    """Median over the last window."""

    @property
    def includes_zero(self) -> bool:
        """Whether the 95 % interval includes zero."""
        return abs(self.per_hour) <= self.half_width


def slope(hours: Sequence[float], values: Sequence[float], window: int) -> Slope:
    """Fit ``values`` against ``hours`` (at least 3 points); medians of the first and last
    ``window`` points."""
    n = len(hours)
    if n < 3:
        raise ValueError(f"a slope needs at least 3 samples, got {n}")
    mean_h, mean_v = statistics.fmean(hours), statistics.fmean(values)
    sxx = sum((h - mean_h) ** 2 for h in hours)
    b = sum((h - mean_h) * (v - mean_v) for h, v in zip(hours, values, strict=True)) / sxx
    a = mean_v - b * mean_h
    residual = sum((v - a - b * h) ** 2 for h, v in zip(hours, values, strict=True))
    se = math.sqrt(residual / (n - 2) / sxx) if sxx > 0 else 0.0
    w = max(1, min(window, n // 2))
    return Slope(b, 1.96 * se, statistics.median(values[:w]), statistics.median(values[-w:]))


def _load(path: Path) -> tuple[dict[str, Any], list[Sample]]:
    header: dict[str, Any] = {}
    samples: list[Sample] = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("header"):
            header = record
        else:
            samples.append(Sample(**record))
    return header, samples


@dataclass(slots=True)
class Analysis:
    """The figures of one run after its warm-up."""

    hours: float
    flushes_per_hour: float
    slopes: dict[str, Slope] = field(default_factory=dict)
    reader_errors: int = 0
    flush_failures: int = 0
    compaction_failures: int = 0
    compactions: int = 0
    samples: int = 0

    def per_flush(self, name: str) -> float:
        rate = self.flushes_per_hour
        return self.slopes[name].per_hour / rate if rate else math.nan

    def flat(self, name: str, tolerance: float) -> bool:
        """The interval includes zero, or the run's whole trend is below ``tolerance`` of the
        figure, or below one unit of it (1 MiB, 1,000 blocks, one file): noise at any level."""
        s = self.slopes[name]
        level = max(abs(s.first), abs(s.last), 1e-9)
        trend = abs(s.per_hour * self.hours)
        return s.includes_zero or trend <= max(tolerance * level, 1.0)


def analyse(samples: Sequence[Sample], warmup_min: float, window_min: float) -> Analysis:
    """Slopes of every figure over the samples after ``warmup_min`` minutes."""
    steady = [s for s in samples if s.t >= warmup_min * 60]
    if len(steady) < 3:
        raise ValueError(f"only {len(steady)} samples after a {warmup_min:g} min warm-up")
    hours = [s.t / 3600 for s in steady]
    span = hours[-1] - hours[0]
    per_sample = span * 60 / max(1, len(steady) - 1)
    window = max(1, round(window_min / per_sample)) if per_sample else 1
    analysis = Analysis(
        hours=span,
        flushes_per_hour=(steady[-1].flushes - steady[0].flushes) / span if span else 0.0,
        reader_errors=steady[-1].reader_errors,
        flush_failures=steady[-1].flush_failures,
        compaction_failures=steady[-1].compaction_failures,
        compactions=steady[-1].compactions,
        samples=len(steady),
    )
    for name in FIGURES:
        scale = _SCALE.get(name, 1)
        values = [getattr(s, name) / scale for s in steady]
        analysis.slopes[name] = slope(hours, values, window)
    return analysis


CYCLE_FIGURES = (
    "rss", "rss_anon", "rss_file", "heap", "duckdb", "catalog_bytes", "snapshots", "data_files",
)  # fmt: skip
"""What :func:`cycles` lines up: figures that rise between compactions and fall at each."""


def cycles(samples: Sequence[Sample]) -> list[tuple[int, Sample, Sample]]:
    """Per compaction: its number, the last sample before it and the first after it.

    Snapshots and files pile up between the hourly compactions and fall at each, so over a
    couple of hours their slope says little; bounded means the same figure at the same point
    of each cycle does not grow.
    """
    found: list[tuple[int, Sample, Sample]] = []
    for before, after in itertools.pairwise(samples):
        if after.compactions > before.compactions:
            found.append((after.compactions, before, after))
    return found


def _cycle_table(samples: Sequence[Sample]) -> list[str]:
    rows = cycles(samples)
    if not rows:
        return []
    recorded = _recorded(samples)
    names = [name for name in CYCLE_FIGURES if name in recorded]
    labels = " | ".join(f"{FIGURES[name]}: before -> after" for name in names)
    lines = [
        "",
        "At each compaction (the last sample before it -> the first after it):",
        "",
        f"| compaction | minute | {labels} |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for number, before, after in rows:
        cells = " | ".join(
            f"{getattr(before, name) / _SCALE.get(name, 1):.2f} -> "
            f"{getattr(after, name) / _SCALE.get(name, 1):.2f}"
            for name in names
        )
        lines.append(f"| {number} | {after.t / 60:.0f} | {cells} |")
    return lines


def report(path: Path, *, warmup_min: float, window_min: float, tolerance: float) -> str:
    """A Markdown report of one run."""
    header, samples = _load(path)
    a = analyse(samples, warmup_min, window_min)
    args = header.get("args", {})
    lines = [
        f"Real-time soak {path.name}: {header.get('series', '?')} series "
        f"({args.get('symbols', '?')} symbols x {args.get('intervals', '?')}), reader "
        f"{args.get('reader_mode', '?')}; {a.hours:.2f} h after a {warmup_min:g} min warm-up, "
        f"{a.samples} samples, {a.flushes_per_hour:.0f} flushes/h, {a.compactions} compactions; "
        f"reader errors {a.reader_errors}, flush failures {a.flush_failures}, "
        f"compaction failures {a.compaction_failures}",
        "",
        "| figure | first | last | slope per hour (95 %) | per flush | flat |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in _recorded(samples):
        label, s = FIGURES[name], a.slopes[name]
        verdict = "(grows with data)" if name in _GROWS_WITH_DATA else _yes(a.flat(name, tolerance))
        lines.append(
            f"| {label} | {s.first:.2f} | {s.last:.2f} | {s.per_hour:+.3f} ± {s.half_width:.3f} "
            f"| {a.per_flush(name):+.5f} | {verdict} |"
        )
    lines += _cycle_table(samples)
    return "\n".join(lines)


def compare(
    before: Path, after: Path, *, warmup_min: float, window_min: float, tolerance: float
) -> str:
    """Two runs side by side, as a Markdown table."""
    loaded = [_load(p)[1] for p in (before, after)]
    runs = [analyse(samples, warmup_min, window_min) for samples in loaded]
    in_after = _recorded(loaded[1])
    names = [name for name in _recorded(loaded[0]) if name in in_after]
    lines = [
        f"before: {before.name} ({runs[0].hours:.2f} h, {runs[0].flushes_per_hour:.0f} flushes/h); "
        f"after: {after.name} ({runs[1].hours:.2f} h, {runs[1].flushes_per_hour:.0f} flushes/h)",
        "",
        "| figure | before: first -> last | before: slope/h | after: first -> last "
        "| after: slope/h | after flat |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in names:
        label, b, a = FIGURES[name], runs[0].slopes[name], runs[1].slopes[name]
        verdict = (
            "(grows with data)" if name in _GROWS_WITH_DATA else _yes(runs[1].flat(name, tolerance))
        )
        lines.append(
            f"| {label} | {b.first:.2f} -> {b.last:.2f} | {b.per_hour:+.3f} ± {b.half_width:.3f} "
            f"| {a.first:.2f} -> {a.last:.2f} | {a.per_hour:+.3f} ± {a.half_width:.3f} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


# ------------------------------------------------------------------------ entry point


@contextlib.contextmanager
def _traced(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    tracemalloc.start(TRACE_FRAMES)
    try:
        yield
    finally:
        tracemalloc.stop()


def run(args: argparse.Namespace) -> Path:
    """Run the soak with parsed ``args``; returns the JSONL file."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="soak-realtime-", dir=args.workdir) as folder,
        _traced(args.tracemalloc),
        ingest_process_tuning(),  # as `candles ingest` runs the service
    ):
        asyncio.run(_soak(args, Path(folder), out))
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak_realtime",
        description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--hours", type=float, default=2.5, help="wall-clock hours to run")
    parser.add_argument(
        "--samples", type=int, default=None, help="stop after this many samples instead"
    )
    parser.add_argument("--symbols", type=int, default=100, help="symbols (x intervals = series)")
    parser.add_argument("--intervals", default="1m,5m", help="comma-separated periods")
    parser.add_argument("--lookback-min", type=int, default=30, help="history asked at start")
    parser.add_argument("--flush-interval", type=float, default=5.0, help="schedule.flush_interval")
    parser.add_argument(
        "--compaction-interval", type=float, default=3600.0, help="schedule.compaction_interval"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=JSON",
        help="any other config option, e.g. --set 'store.recycle_after=100'",
    )  # fmt: skip
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--reader-mode", choices=("hold", "reopen"), default="hold")
    parser.add_argument("--reader-every", type=float, default=2.0, help="seconds between reads")
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false")
    parser.add_argument("--workdir", default=None, help="where the store goes (a temp folder)")
    parser.add_argument("--out", default="benchmarks/results/soak_realtime.jsonl")
    parser.add_argument("--report", metavar="JSONL", help="only report on a finished run")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="two runs")
    parser.add_argument("--warmup-min", type=float, default=15.0, help="left out of the slopes")
    parser.add_argument("--window-min", type=float, default=15.0, help="first/last medians over")
    parser.add_argument(
        "--flat-tolerance", type=float, default=0.02,
        help="flat if the run's whole trend is below this fraction of the figure",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.soak_realtime``: run, report or compare (see the module doc)."""
    args = _parser().parse_args(argv)
    options: Mapping[str, float] = {
        "warmup_min": args.warmup_min,
        "window_min": args.window_min,
        "tolerance": args.flat_tolerance,
    }
    if args.compare:
        print(compare(Path(args.compare[0]), Path(args.compare[1]), **options))
        return 0
    path = Path(args.report) if args.report else run(args)
    print(report(path, **options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
