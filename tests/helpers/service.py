"""Helpers for running the ingest service against the simulator in tests.

A simulator on a manual clock, an :class:`IngestService` in the same event loop, and
``eventually`` for waiting on an observable condition (never a bare sleep).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import Config, load_config
from pipeline.dxlink import Candle, CandleSymbol
from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.simulator import Simulator
from pipeline.store import CandleStore

START = datetime(2026, 11, 3, 15, 0, tzinfo=UTC)
START_MS = int(START.timestamp() * 1000)
TOKEN = "sim-token"
COMPARED = ("open", "high", "low", "close", "volume", "vwap", "count")


def service_config(
    store: Path,
    *,
    symbols: tuple[str, ...] = ("AAPL", "SPY"),
    intervals: tuple[str, ...] = ("1m", "5m"),
    from_ms: int = START_MS - 2 * 3600_000,
    **overrides: Any,
) -> Config:
    """A config for tests: simulator source, fast timeouts, metrics off, no env influence."""
    settings: dict[str, Any] = {
        "subscriptions.symbols": list(symbols),
        "subscriptions.intervals": list(intervals),
        "subscriptions.from_time": datetime.fromtimestamp(from_ms / 1000, UTC).isoformat(),
        "store.path": str(store),
        "client.backoff_initial": 0.05,
        "client.backoff_max": 0.2,
        "client.healthy_after": 0.5,
        "client.handshake_timeout": 5.0,
        "schedule.flush_interval": 3600.0,  # tests flush explicitly
        "manager.grace_seconds": 0.0,
        "metrics.enabled": False,
    }
    settings.update(overrides)
    return load_config(None, None, settings, environ={}, now=datetime(2030, 1, 1, tzinfo=UTC))


def write_ingest_config(
    path: Path,
    store: Path,
    url: str,
    *,
    from_ms: int = START_MS - 3600_000,
    **overrides: Any,
) -> Path:
    """Write a config.toml for ``candles ingest`` as a child process: the simulator at
    ``url``, fast retries and flushes, metrics off. ``overrides`` are dotted keys as in
    :func:`service_config` (``"manager.max_unstored": 5``); a new section is appended."""
    settings: dict[str, Any] = {
        "source.kind": "simulator",
        "source.simulator.url": url,
        "source.simulator.token": TOKEN,
        "subscriptions.symbols": ["AAPL", "SPY"],
        "subscriptions.intervals": ["1m", "5m"],
        "subscriptions.from_time": datetime.fromtimestamp(from_ms / 1000, UTC).isoformat(),
        "client.backoff_initial": 0.05,
        "client.backoff_max": 0.5,
        "manager.grace_seconds": 0.0,
        "store.path": str(store),
        "schedule.flush_interval": 0.2,
        "metrics.enabled": False,
    }
    settings.update(overrides)
    sections: dict[str, list[str]] = {}
    for dotted, value in settings.items():
        section, _, key = dotted.rpartition(".")
        # JSON strings, numbers, booleans and lists of them are valid TOML values.
        sections.setdefault(section, []).append(f"{key} = {json.dumps(value)}")
    path.write_text(
        "".join(f"[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections.items())
    )
    return path


async def eventually(
    condition: Callable[[], Awaitable[bool] | bool], *, within: float = 30.0, what: str = ""
) -> None:
    """Wait until ``condition()`` holds, re-checking as the loop runs; fail after ``within`` s."""

    async def poll() -> None:
        while True:
            result = condition()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), within)
    except TimeoutError:
        raise AssertionError(f"condition not met within {within}s: {what}") from None


def truth_frame(sim: Simulator, series: str, from_ms: int, to_ms: int) -> pl.DataFrame:
    """The simulator's final candles of ``series`` in ``[from_ms, to_ms)`` as a frame."""
    candles: list[Candle] = sim.truth(series, from_ms, to_ms)
    return pl.DataFrame(
        {
            "time": [c.time for c in candles],
            **{name: [getattr(c, name) for c in candles] for name in COMPARED},
        },
        schema={
            "time": pl.Int64,
            **{n: pl.Int64 if n == "count" else pl.Float64 for n in COMPARED},
        },
    )


def stored_frame(store: CandleStore, series: str, from_ms: int, to_ms: int) -> pl.DataFrame:
    """What the store holds for ``series`` in ``[from_ms, to_ms)``, shaped like truth_frame."""
    frame = store.history(series, from_ms, to_ms)
    return frame.select(
        pl.col("time").dt.epoch("ms").alias("time"), *[pl.col(n) for n in COMPARED]
    ).sort("time")


def differences(expected: pl.DataFrame, actual: pl.DataFrame) -> list[str]:
    """Human-readable differences between two candle frames (empty when equal)."""
    problems: list[str] = []
    want = {row[0]: row[1:] for row in expected.rows()}
    have = {row[0]: row[1:] for row in actual.rows()}
    if actual.height != len(have):
        problems.append(f"{actual.height - len(have)} duplicate times")
    for t in sorted(want.keys() - have.keys()):
        problems.append(f"missing {datetime.fromtimestamp(t / 1000, UTC):%Y-%m-%d %H:%M}")
    for t in sorted(have.keys() - want.keys()):
        problems.append(f"extra {datetime.fromtimestamp(t / 1000, UTC):%Y-%m-%d %H:%M}")
    for t in sorted(want.keys() & have.keys()):
        if not all(_same(a, b) for a, b in zip(want[t], have[t], strict=True)):
            problems.append(f"values differ at {t}: want {want[t]}, have {have[t]}")
    return problems


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12)
    return bool(a == b)


def series_keys(config: Config) -> list[str]:
    return [s.normalized for s in config.subscriptions.candle_symbols()]


def period_ms(series: str) -> int:
    length = CandleSymbol.parse(series).period_ms
    assert length is not None
    return length


def make_service(config: Config, sim: Simulator, *, in_process_clock: bool = True) -> IngestService:
    return IngestService(
        config,
        token_source=SimulatorTokenSource(sim.url, TOKEN),
        source_clock_ms=(lambda: sim.now_ms) if in_process_clock else None,
    )


def start_ingest(config: Path) -> subprocess.Popen[bytes]:
    """``candles ingest --config CONFIG`` as a child process (stderr piped, no profile)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "ingest", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "CANDLES_PROFILE": ""},
    )
