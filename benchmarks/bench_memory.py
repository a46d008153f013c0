"""Memory (issue 6, item 5): bytes per retained candle, and the RSS of ``candles ingest``.

* **Bytes per retained candle** (tracemalloc): a :class:`CandleDataManager` takes S series x
  N completed 1m candles, hands them to a (pretend) store and keeps them as history; the
  traced memory it holds, over the candles it retains. Baseline (same run): the same candles
  kept as the decoded ``Candle`` tuples in one list per series, what a naive cache holds.
* **Peak RSS of ``candles ingest`` during a backfill**: the real command (``python -m
  pipeline ingest``) in a child process, against a simulator in this process serving S x N
  candles of history; peak RSS (``VmHWM``, sampled every 50 ms) until it has received every
  event, then SIGTERM. Baseline: its RSS once its metrics endpoint first answers (imports
  done, no data yet).
* **RSS over a live run**: the same command against an accelerated simulator, with a small
  per-series history bound so the history fills early; RSS sampled every 250 ms. "Flat": the
  median of the last quarter is within 5 % of the median of the second quarter.

Target: <= 200 bytes per retained candle; RSS flat over a long live run.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.e2e_common import (
    MINUTE_MS,
    START_MS,
    TOKEN,
    BenchResult,
    Figure,
    bench_main,
    symbols,
)
from pipeline.candles import CandleDataManager
from pipeline.dxlink import Candle, index_of
from pipeline.simulator import Simulator, SimulatorClock

__all__ = [
    "BYTES_TARGET",
    "FLAT_TOLERANCE",
    "candles_for",
    "main",
    "manager_bytes",
    "measure",
    "run",
]

BYTES_TARGET = 200.0
"""Traced bytes per retained candle (issue 6)."""
FLAT_TOLERANCE = 0.05
"""Largest relative RSS growth from the second to the last quarter of a live run."""


def candles_for(series: str, count: int) -> list[Candle]:
    """``count`` realistic, complete 1m candles of ``series`` ending at ``START_MS``."""
    first = START_MS - count * MINUTE_MS
    out = []
    for i in range(count):
        t = first + i * MINUTE_MS
        price = 100.0 + (i % 500) * 0.01
        out.append(
            Candle(
                series, t, 0, 0, index_of(t, 0), t + MINUTE_MS - 1, 40 + i % 7,
                price, price + 0.25, price - 0.25, price + 0.1, 1000.0 + i, price + 0.05,
                400.0 + i, 600.0 + i,
            )
        )  # fmt: skip
    return out


def manager_bytes(series_count: int, candles: int) -> tuple[float, float, int]:
    """Traced bytes per retained candle: (manager, list of tuples baseline, retained)."""
    keys = [f"{b}{{=1m}}" for b in symbols(series_count)]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        manager = CandleDataManager(
            max_series=series_count,
            max_historical_candles=candles,
            max_pinned_candles=series_count * candles + 1,
            grace_ms=0,
        )
        for key in keys:
            manager.update(candles_for(key, candles), START_MS + MINUTE_MS)
            manager.commit(manager.take_completed())
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        retained = sum(len(manager.history(key)) for key in keys)
        del manager
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        tuples = {key: candles_for(key, candles) for key in keys}
        gc.collect()
        naive = tracemalloc.get_traced_memory()[0] - base
        naive_count = sum(len(v) for v in tuples.values())
        del tuples
    finally:
        tracemalloc.stop()
    return held / retained, naive / naive_count, retained


# ---------------------------------------------------------------------- ingest child


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config_text(
    url: str, bases: Sequence[str], from_ms: int, store: Path, port: int, **manager: object
) -> str:
    """The TOML config of the ingest child (``manager``: extra ``[manager]`` options)."""
    from_time = datetime.fromtimestamp(from_ms / 1000, UTC).isoformat()
    sections: dict[str, dict[str, object]] = {
        "source": {"kind": '"simulator"'},
        "source.simulator": {"url": f'"{url}"', "token": f'"{TOKEN}"'},
        "subscriptions": {
            "symbols": "[" + ", ".join(f'"{b}"' for b in bases) + "]",
            "intervals": '["1m"]',
            "from_time": f'"{from_time}"',
        },
        "store": {"path": f'"{store}"'},
        "client": {"subscribe_rate": 10000, "subscribe_burst": 10000},
        "manager": {"grace_seconds": 0, **manager},
        "schedule": {"flush_interval": 1.0},
        "metrics": {"enabled": "true", "port": port},
        "logging": {"level": '"WARNING"'},
    }
    return "\n".join(
        f"[{name}]\n" + "\n".join(f"{k} = {v}" for k, v in values.items()) + "\n"
        for name, values in sections.items()
    )


def _received(port: int) -> int | None:
    """``candles_received_total`` from the child's /metrics, or None while it is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("candles_received_total"):
            return int(float(line.split()[-1]))
    return 0


class _IngestChild:
    """``python -m pipeline ingest --config FILE`` with RSS sampling from ``/proc``."""

    def __init__(self, config: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CANDLES_")}
        with config.with_suffix(".log").open("w") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "ingest", "--config", str(config)],
                env=env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        self.samples: list[tuple[float, int]] = []
        self.peak = 0

    def sample(self) -> None:
        """Record RSS now (``VmRSS``) and the kernel's peak so far (``VmHWM``)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "VmRSS" not in fields:  # a zombie has no memory lines
            return
        self.samples.append((time.perf_counter(), int(fields["VmRSS"].split()[0]) * 1024))
        self.peak = max(self.peak, int(fields["VmHWM"].split()[0]) * 1024)

    async def stop(self) -> int:
        """SIGTERM (the service's clean shutdown) and wait; returns the exit code."""
        self.sample()
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, 120)


async def _sampled_until(
    child: _IngestChild, port: int, want: int, every: float, within: float
) -> int:
    """Sample RSS every ``every`` s until the child received ``want`` events; return the
    RSS when its metrics first answered."""
    started_rss = 0
    deadline = time.perf_counter() + within
    while True:
        child.sample()
        received = await asyncio.to_thread(_received, port)
        if received is not None and not started_rss and child.samples:
            started_rss = child.samples[-1][1]
        if received is not None and received >= want:
            return started_rss
        if child.process.poll() is not None:
            raise RuntimeError(f"candles ingest exited early with {child.process.returncode}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"candles ingest received {received} of {want} within {within} s")
        await asyncio.sleep(every)


async def ingest_backfill_rss(series_count: int, candles: int, workdir: Path) -> dict[str, float]:
    """Peak and starting RSS of ``candles ingest`` over a backfill of series x candles."""
    bases = symbols(series_count)
    port = _free_port()
    clock = SimulatorClock.manual(START_MS)
    async with Simulator(token=TOKEN, clock=clock, history_limit=candles + 100) as sim:
        config = workdir / "backfill.toml"
        text = _config_text(sim.url, bases, START_MS - candles * MINUTE_MS, workdir / "s1", port)
        config.write_text(text)
        child = _IngestChild(config)
        try:
            start_rss = await _sampled_until(child, port, series_count * candles, 0.05, 600)
        finally:
            code = await child.stop()
    if code != 0:
        raise RuntimeError(f"candles ingest exited with {code}; see {config.with_suffix('.log')}")
    return {"peak": float(child.peak), "start": float(start_rss)}


async def ingest_live_rss(series_count: int, seconds: float, workdir: Path) -> dict[str, object]:
    """RSS samples of ``candles ingest`` over ``seconds`` of live updates (speed 60)."""
    bases = symbols(series_count)
    port = _free_port()
    clock = SimulatorClock.accelerated(60.0, START_MS)
    async with Simulator(token=TOKEN, clock=clock) as sim:
        config = workdir / "live.toml"
        text = _config_text(
            sim.url, bases, START_MS - 5 * MINUTE_MS, workdir / "s2", port,
            max_historical_candles=10,
        )  # fmt: skip
        config.write_text(text)
        child = _IngestChild(config)
        try:
            await _sampled_until(child, port, series_count, 0.25, 120)
            child.samples.clear()
            ends = time.perf_counter() + seconds
            while time.perf_counter() < ends:
                child.sample()
                await asyncio.sleep(0.25)
            received = await asyncio.to_thread(_received, port)
        finally:
            code = await child.stop()
    if code != 0:
        raise RuntimeError(f"candles ingest exited with {code}; see {config.with_suffix('.log')}")
    rss = [r for _, r in child.samples]
    quarter = max(1, len(rss) // 4)
    second = statistics.median(rss[quarter : 2 * quarter])
    last = statistics.median(rss[-quarter:])
    return {"second_quarter": second, "last_quarter": last, "received": received, "samples": rss}


async def _ingest_figures(
    series: int, candles: int, live_s: float, workdir: Path
) -> tuple[list[Figure], dict[str, object]]:
    backfill = await ingest_backfill_rss(series, candles, workdir)
    live = await ingest_live_rss(series, live_s, workdir)
    second, last = float(live["second_quarter"]), float(live["last_quarter"])  # type: ignore[arg-type]
    mb = 1024 * 1024
    figures = [
        Figure(
            f"candles ingest peak RSS, backfill {series}x{candles}",
            backfill["peak"] / mb, "MB", "RSS at start", backfill["start"] / mb,
        ),
        Figure(
            f"candles ingest RSS, live {live_s:.0f} s (last quarter)",
            last / mb, "MB", "second quarter", second / mb,
            f"flat (within {FLAT_TOLERANCE:.0%})", abs(last / second - 1) <= FLAT_TOLERANCE,
        ),
    ]  # fmt: skip
    return figures, {"backfill_rss": backfill, "live_rss": live}


def measure(series: int, candles: int, live_s: float, workdir: Path) -> BenchResult:
    """Measure with ``series`` x ``candles`` and a live run of ``live_s`` seconds."""
    per_candle, naive, retained = manager_bytes(series, candles)
    figures = [
        Figure(
            "bytes per retained candle (CandleDataManager)",
            per_candle, "B", "list of Candle tuples", naive,
            f"<= {BYTES_TARGET:.0f} B", per_candle <= BYTES_TARGET,
        )
    ]  # fmt: skip
    ingest, details = asyncio.run(_ingest_figures(series, candles, live_s, workdir))
    return BenchResult(
        "memory",
        f"Memory: {series} series x {candles} candles; live run {live_s:.0f} s",
        figures + ingest,
        {"series": series, "candles": candles, "live_seconds": live_s},
        {"retained": retained, **details},
    )


def run(quick: bool, workdir: Path) -> BenchResult:
    """Run the benchmark (``quick``: 20 series x 500 candles, 4 s live) in ``workdir``."""
    series, candles, live_s = (20, 500, 4.0) if quick else (200, 2000, 40.0)
    return measure(series, candles, live_s, workdir)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bench_memory [--quick]``."""
    return bench_main("memory", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
