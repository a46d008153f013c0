"""Stores written by older versions of this repository, for the upgrade tests (issue 16).

Each fixture is a store folder written by the code at a git tag of this repository, packed as
``tests/fixtures/<tag>.tar.gz`` with a ``FIXTURE.json`` naming the tag and its commit. The
tags:

* ``store-v1``: the last commit before the ``sequence`` key column (issue 7), whose stores
  the code migrates on open;
* ``store-v2``: ``main`` when issue 16 began (the package layout of "the house"), whose
  stores open unchanged.

The store holds :data:`BATCHES` written as ingest writes them: a few candles small enough for
DuckLake to inline them in the catalog, a batch written to a Parquet file, and a revision of
one candle of that file (DuckLake records the deletion in the catalog). Regenerate a fixture
from its tag (the tag must exist: ``git fetch --tags``; the old code runs in this virtualenv,
so the pinned DuckDB must match)::

    ./run python -m tests.helpers.store_fixture store-v1
    ./run python -m tests.helpers.store_fixture store-v2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
TAGS = {
    "store-v1": "the last commit before the sequence key column (issue 7)",
    "store-v2": "main when issue 16 began",
}
T0 = datetime(2026, 11, 2, 14, 30, tzinfo=UTC)
INGESTED = datetime(2026, 11, 2, 16, 0, tzinfo=UTC)


def _rows(symbol: str, period: str, count: int, step: timedelta, revision: int = 0) -> list[Any]:
    return [
        [symbol, period, (T0 + i * step).isoformat(), 100.0 + i + revision / 2, revision]
        for i in range(count)
    ]


BATCHES: list[list[Any]] = [
    _rows("AAPL", "1m", 6, timedelta(minutes=1)),  # inlined in the catalog
    _rows("SPY", "5m", 30, timedelta(minutes=5)),  # a Parquet file
    _rows("SPY", "5m", 1, timedelta(minutes=5), revision=1),  # a revision of the file's first
]
"""The upserts, in order: rows of (symbol, period, time, close, revision)."""

WRITER = """
import json, sys
# This venv's editable install maps every pipeline module to the current tree; the old code
# on PYTHONPATH must not borrow modules it lacks from there.
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
from datetime import datetime
import polars as pl
try:
    from pipeline.schema import CANDLE_SCHEMA
except ImportError:  # before the house: the schema lived with the candle manager
    from pipeline.candles import CANDLE_SCHEMA
from pipeline.store import CandleStore

path, batches, ingested = sys.argv[1], json.loads(sys.argv[2]), datetime.fromisoformat(sys.argv[3])
with CandleStore(path, clock=lambda: ingested, verify_extensions=False) as store:
    for batch in batches:
        rows = [
            {
                "symbol": symbol, "period": period, "time": datetime.fromisoformat(time),
                "open": close - 0.5, "high": close + 1, "low": close - 1, "close": close,
                "volume": 1000.0, "vwap": close, "count": 10, "bid_volume": 400.0,
                "ask_volume": 600.0, "imp_volatility": float("nan"),
                "open_interest": float("nan"), "revision": revision, "ingested_at": None,
                **({"sequence": 0} if "sequence" in CANDLE_SCHEMA else {}),
            }
            for symbol, period, time, close, revision in batch
        ]
        store.upsert(pl.DataFrame(rows, schema=CANDLE_SCHEMA))
    print(store.count())
"""


def expected() -> pl.DataFrame:
    """The candles a fixture store holds: (symbol, period, time, close, revision), sorted."""
    latest: dict[tuple[str, str, str], tuple[float, int]] = {}
    for batch in BATCHES:
        for symbol, period, time, close, revision in batch:
            latest[(symbol, period, time)] = (close, revision)
    return pl.DataFrame(
        [(s, p, datetime.fromisoformat(t), c, r) for (s, p, t), (c, r) in sorted(latest.items())],
        schema={
            "symbol": pl.String,
            "period": pl.String,
            "time": pl.Datetime("us", "UTC"),
            "close": pl.Float64,
            "revision": pl.Int64,
        },
        orient="row",
    )


def fixture_path(tag: str) -> Path:
    """Where a tag's fixture is committed."""
    return FIXTURES / f"{tag}.tar.gz"


def extract(tag: str, destination: Path) -> dict[str, Any]:
    """Unpack a tag's fixture into ``destination`` (the store folder); its FIXTURE.json."""
    destination.mkdir(parents=True)
    with tarfile.open(fixture_path(tag)) as archive:
        archive.extractall(destination, filter="data")
    meta: dict[str, Any] = json.loads((destination / "FIXTURE.json").read_text())
    return meta


def commit_of(tag: str) -> str | None:
    """The commit a tag names in this repository, or ``None`` (no such tag, or no git)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}^{{commit}}"],
            cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except OSError:
        return None
    return done.stdout.strip() or None


def make(tag: str) -> Path:
    """Write a tag's fixture with the code at that tag; returns the archive's path.

    Raises:
        RuntimeError: The tag does not exist, or the old code failed (its output attached).
    """
    commit = commit_of(tag)
    if commit is None:
        raise RuntimeError(f"no tag {tag!r} in {REPO}; fetch the tags (git fetch --tags)")
    with tempfile.TemporaryDirectory(prefix=f"{tag}-") as folder:
        source, store = Path(folder) / "source", Path(folder) / "store"
        source.mkdir()
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit], cwd=REPO, capture_output=True, check=True
        )
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(source, filter="tar")  # keeps the pipeline/sql symlink
        env = {k: v for k, v in os.environ.items() if not k.startswith("CANDLES_")}
        env["PYTHONPATH"] = str(source)
        done = subprocess.run(
            [sys.executable, "-c", WRITER, str(store), json.dumps(BATCHES), INGESTED.isoformat()],
            cwd=source, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"the code at {tag} failed to write the store:\n{done.stderr}")
        meta = {
            "tag": tag,
            "commit": commit,
            "what": TAGS.get(tag, ""),
            "candles": expected().height,
        }
        (store / "FIXTURE.json").write_text(json.dumps(meta, indent=2) + "\n")
        FIXTURES.mkdir(parents=True, exist_ok=True)
        out = fixture_path(tag)
        with tarfile.open(out, "w:gz") as packed:
            for path in sorted(store.rglob("*")):
                if path.is_file() and not path.name.endswith(("-shm", ".lock")):
                    packed.add(path, arcname=str(path.relative_to(store)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.helpers.store_fixture TAG...``: regenerate fixtures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("tags", nargs="+", choices=sorted(TAGS))
    for tag in parser.parse_args(argv).tags:
        out = make(tag)
        print(f"{tag}: {out.relative_to(REPO)} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
