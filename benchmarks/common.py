"""Shared benchmark helpers: side-by-side timing, table printing, JSON results, machine info.

The machines these run on are shared and noisy, so a benchmark never compares two figures
taken at different moments. :func:`compare` times all cases of one comparison in the same
rounds, in a shuffled order each round, and keeps each case's best round (noise only ever
adds time). Ratios are then taken between figures of the same run.

The garbage collector stays on while timing: the client runs with it on, and allocation-heavy
code (one tuple or model per event) pays for its collections.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_DIR",
    "Timing",
    "compare",
    "machine_info",
    "print_table",
    "write_json",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where benchmarks write their JSON (git-ignored)."""


@dataclass(frozen=True, slots=True)
class Timing:
    """The best time of one case, per call, over all rounds of a :func:`compare`."""

    seconds: float
    """Best seconds per call."""
    calls: int
    """Calls per round (the round's time is divided by this)."""
    rounds: int


def _calls_for(case: Callable[[], object], budget: float) -> int:
    """How many calls fill about ``budget`` seconds (at least 1)."""
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            case()
        elapsed = time.perf_counter() - start
        if elapsed >= budget / 4 or calls >= 1 << 20:
            return max(1, round(calls * budget / max(elapsed, 1e-9)))
        calls *= 4


def compare(
    cases: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 200,
    round_seconds: float = 0.0005,
    seed: int = 0,
) -> dict[str, Timing]:
    """Time every case side by side and return each one's best time per call.

    Args:
        cases: name -> a function of no arguments doing one unit of work (one message).
        rounds: how many rounds; each round runs every case once, in a shuffled order.
        round_seconds: about how long one case runs per round (its call count is fixed
            once, up front, from a calibration run; at least one call). Short rounds are
            more likely to fit between two preemptions on a busy machine.
        seed: seed of the shuffle, so a run is repeatable in its order.

    Returns:
        name -> Timing, in the order of ``cases``.
    """
    if rounds < 1 or round_seconds <= 0:
        raise ValueError(f"need rounds >= 1 and round_seconds > 0, not {rounds}, {round_seconds}")
    calls = {name: _calls_for(case, round_seconds) for name, case in cases.items()}
    best = dict.fromkeys(cases, float("inf"))
    order = list(cases)
    shuffle = random.Random(seed).shuffle
    clock = time.perf_counter
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            case, count = cases[name], calls[name]
            start = clock()
            for _ in range(count):
                case()
            best[name] = min(best[name], (clock() - start) / count)
    return {name: Timing(best[name], calls[name], rounds) for name in cases}


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print an aligned plain-text table: text left-aligned, numbers right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [
        max(len(header), *(len(row[i]) for row in cells)) if cells else len(header)
        for i, header in enumerate(headers)
    ]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) if rows else False
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    print(f"\n{title}")
    print(line(list(headers)))
    print(line(["-" * width for width in widths]))
    for row in cells:
        print(line(row))


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """What the figures were measured on: Python, CPU, load, package versions, commit."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in load] if load else None,
        "packages": {name: _version(name) for name in packages},
        "commit": _git_commit(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_json(name: str, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``benchmarks/results/<name>.json`` (replacing the last run's)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path
