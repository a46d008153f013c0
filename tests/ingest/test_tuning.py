"""Process-wide settings belong to the ``candles ingest`` process alone (pipeline.ingest.tuning)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.ingest.tuning import (
    INGEST_GC_THRESHOLD,
    ingest_process_tuning,
    pin_mmap_threshold,
    young_gc_threshold,
)

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_library_use_changes_no_process_setting(tmp_path: object) -> None:
    """Opening a store, writing to it and reading it as a notebook does leaves the collector,
    malloc and DuckDB's lazy imports alone."""
    out = _run(
        f"""
        import gc, sys
        before = gc.get_threshold()
        from pipeline.store import CandleStore
        import pipeline.analysis as analysis
        import pipeline.ingest.tuning as tuning
        with CandleStore({str(tmp_path)!r} + "/data"):
            pass
        con = analysis.connect({str(tmp_path)!r} + "/data")
        con.close()
        print(gc.get_threshold() == before, tuning._pinned, "pandas" in sys.modules)
        """
    )
    assert out == "True None False"


def test_ingest_process_tuning_applies_all_four_and_restores_the_collector() -> None:
    """Inside, the collector's young threshold is raised, malloc pinned, DuckDB's lazy imports
    loaded and pandas kept out; on exit the collector's thresholds come back and pandas is
    importable again."""
    out = _run(
        """
        import gc, sys
        from pipeline.ingest.tuning import ingest_process_tuning, INGEST_GC_THRESHOLD
        import pipeline.ingest.tuning as tuning
        gc.set_threshold(700, 10, 10)
        with ingest_process_tuning():
            inside = gc.get_threshold()
            print(inside == (INGEST_GC_THRESHOLD, 10, 10), tuning._pinned, "pandas" in sys.modules)
            try:
                import pandas
            except ModuleNotFoundError as exc:
                print("kept out" if "keeps it out" in str(exc) else exc)
        print(gc.get_threshold() == (700, 10, 10))
        import pandas
        print("pandas" in sys.modules)
        """
    )
    assert out.splitlines() == ["True True False", "kept out", "True", "True"]


def test_a_library_imported_before_the_ingest_run_stays_usable() -> None:
    """pandas already imported (a notebook running ingest): it is not taken away."""
    out = _run(
        """
        import sys
        import pandas
        from pipeline.ingest.tuning import kept_out_unused_libraries
        with kept_out_unused_libraries() as kept:
            import pandas.api
            print(kept, "pandas.api" in sys.modules)
        """
    )
    assert out == "False True"


def test_candles_ingest_applies_the_tuning() -> None:
    """The ``candles ingest`` entry point runs inside ingest_process_tuning."""
    out = _run(
        """
        import gc
        import pipeline.ingest.runner as runner
        seen = []
        def fake_run(coro):
            coro.close()
            seen.append(gc.get_threshold()[0])
        runner.asyncio.run = fake_run
        from pipeline.config import load_config
        runner.run_ingest(load_config(None, None, {}), duration=1.0)
        import pipeline.ingest.tuning as tuning
        print(seen[0] >= tuning.INGEST_GC_THRESHOLD, tuning._pinned)
        """
    )
    assert out == "True True"


@pytest.mark.parametrize(
    ("previous", "during"),
    [
        ((700, 10, 10), (20_000, 10, 10)),
        ((50_000, 5, 5), (50_000, 5, 5)),
        ((0, 10, 10), (0, 10, 10)),
    ],
)
def test_young_gc_threshold_raises_only_and_restores(
    previous: tuple[int, int, int], during: tuple[int, int, int]
) -> None:
    """The young threshold is raised, never lowered or re-enabled, and restored on exit."""
    saved = gc.get_threshold()
    try:
        gc.set_threshold(*previous)
        with young_gc_threshold(20_000):
            assert gc.get_threshold() == during
        assert gc.get_threshold() == previous
        with young_gc_threshold(None):
            assert gc.get_threshold() == previous
    finally:
        gc.set_threshold(*saved)


def test_a_gc_threshold_that_is_not_positive_is_refused() -> None:
    """A young threshold <= 0 is a clear ValueError saying what is allowed."""
    refused = pytest.raises(ValueError, match=r"young GC threshold must be > 0 .*got -5")
    with refused, young_gc_threshold(-5):
        pass
    with pytest.raises(ValueError, match=r"got 0"), ingest_process_tuning(gc_threshold=0):
        pass
    assert INGEST_GC_THRESHOLD > 700


def test_the_mmap_threshold_is_pinned_once() -> None:
    """On glibc the pin succeeds, and pinning again is a no-op that reports the same."""
    assert pin_mmap_threshold() is True  # this suite runs on glibc (Linux)
    assert pin_mmap_threshold() is True


def test_the_store_lazy_imports_are_loaded_before_the_first_upsert() -> None:
    """After load_store_lazy_imports, DuckDB's first scan of a store frame imports nothing."""
    out = _run(
        """
        import sys
        import duckdb, polars as pl
        from pipeline.ingest.tuning import load_store_lazy_imports
        from pipeline.store import FrameScan
        load_store_lazy_imports()
        before = set(sys.modules)
        con = duckdb.connect()
        frame = pl.DataFrame({"a": [1, 2]})
        con.register("batch", FrameScan(frame))
        con.register("rows", FrameScan(frame))
        con.execute("SELECT count(*) FROM batch JOIN rows USING (a)").fetchall()
        print(sorted(set(sys.modules) - before))
        """
    )
    assert out == "[]"


def test_inside_the_ingest_tuning_the_first_scan_imports_nothing_and_no_pandas() -> None:
    """With pandas and pyarrow kept out, the preloaded lazy imports still leave DuckDB's first
    scan of a frame nothing to import, and neither is among what was loaded."""
    out = _run(
        """
        import sys
        import duckdb, polars as pl
        from pipeline.ingest.tuning import ingest_process_tuning
        from pipeline.store import FrameScan
        with ingest_process_tuning():
            before = set(sys.modules)
            con = duckdb.connect()
            frame = pl.DataFrame({"a": [1, 2]})
            con.register("batch", FrameScan(frame))
            con.execute("SELECT count(*) FROM batch").fetchall()
            print(sorted(set(sys.modules) - before), "pandas" in sys.modules,
                  "pyarrow" in sys.modules)
        """
    )
    assert out == "[] False False"


def test_the_store_does_all_ingest_asks_of_it_without_pandas_pyarrow_or_psycopg(
    tmp_path: Path,
) -> None:
    """Everything the ingest process asks of a local store works with pandas and pyarrow
    kept out, and psycopg (a PostgreSQL catalog's) is never imported: an upsert through a
    data file with a column mixing NaN and numbers (DuckDB writes that file), small upserts
    through INSERT, a revision (the stored-version lookup), deletions, pruning, compaction,
    resume points and the latest candles. They cost the process ~70 MB of RSS
    (benchmarks/README.md, "Memory at start")."""
    out = _run(
        f"""
        import math, sys
        from datetime import UTC, datetime, timedelta
        import polars as pl
        from pipeline.ingest.tuning import ingest_process_tuning
        from pipeline.store import CandleStore
        from tests.helpers.store import T0, MINUTE, candle_frame
        with ingest_process_tuning():
            with CandleStore({str(tmp_path / "data")!r}, verify_extensions=False) as store:
                big = candle_frame(n=2_000).with_columns(
                    pl.when(pl.int_range(pl.len()) % 2 == 0).then(float("nan"))
                    .otherwise(pl.col("vwap")).alias("vwap"))
                store.upsert(big)
                store.upsert(candle_frame("SPY", "5m", n=5))
                revised = store.upsert(candle_frame(n=3, close=7.0, revision=1))
                gone = store.upsert(candle_frame(n=0), deletions=candle_frame(n=1).select(
                    "symbol", "period", "time", "sequence"))
                store.prune({{"1m": timedelta(days=1)}}, now=T0 + 2 * timedelta(days=1))
                store.compact(retain=timedelta(0))
                resume = store.resume_points(["AAPL{{=m}}", "SPY{{=5m}}"])
                last = store.recent("AAPL{{=m}}", 1)
                stored = store.count()
            print(revised.updated, gone.deleted, sorted(resume), last.height, stored > 0,
                  [name for name in ("pandas", "pyarrow", "psycopg") if name in sys.modules])
        """,
        cwd=REPO,
    )
    assert out == "3 1 ['AAPL{=m}', 'SPY{=5m}'] 1 True []"
