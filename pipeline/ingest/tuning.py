"""Process-wide settings of a ``candles ingest`` process: applied at its entry point only.

Four settings change the whole process, so no library import applies them (a notebook that
imports :mod:`pipeline.store` keeps its collector, its malloc and its pandas as they were);
the ``candles ingest`` entry point (:func:`pipeline.ingest.runner.run_ingest`) applies all four
through :func:`ingest_process_tuning`, and so do ``candles rebuild`` (the same hot path, fed
from a recording) and the benchmarks that measure them. Why each
exists, and the benchmark that justifies it (figures in ``benchmarks/README.md``, "Process
tuning"):

* **The collector's young threshold** (:func:`young_gc_threshold`): every decoded event is a
  tuple the collector tracks until a collection finds it holds only atomic values, so at
  CPython's default (700) a backfill runs hundreds of young collections in the receiving
  thread. Raised to :data:`INGEST_GC_THRESHOLD` for as long as ingest runs; garbage cycles
  then wait for at most that many allocations more (a few MB). ``bench_backfill``.
* **glibc's mmap threshold** (:func:`pin_mmap_threshold`): glibc serves large allocations
  with their own ``mmap`` and returns them with ``munmap``, but every such free *raises* the
  threshold (up to 32 MiB), after which large buffers come from the heap arenas, where freed
  memory stays in the process. DuckDB's reads and compactions allocate such buffers, and the
  writer's RSS crept up by them (issue 7). Pinned at :data:`MMAP_THRESHOLD_BYTES`: above the
  ingest path's own large buffers (asyncio's socket reads, backfill frames, a snapshot's
  columns), which mapped one by one cost the event loop dearly. ``bench_memory`` (RSS) and
  ``bench_backfill`` (loop CPU).
* **DuckDB's lazy imports** (:func:`load_store_lazy_imports`): the first time DuckDB scans a
  Python object (the upsert registers frames), it imports what it checks objects against
  while holding the GIL; in the first flush of a backfill that stalled the receiving thread.
  Done once at start-up, it costs the same but stalls nothing. ``bench_backfill`` (first flush).
* **Libraries ingest never uses** (:func:`kept_out_unused_libraries`): DuckDB's first scan
  of a Python object imports pandas (not a dependency, but a notebook or SDK in the same
  environment brings it: ~470 modules, ~30 MB of RSS) and pyarrow (a dependency of the
  readers and notebooks: its shared libraries and modules, ~50 MB of RSS) when they are
  installed, only to learn that the object is neither's. The store hands DuckDB its frames
  through the Arrow C stream interface (:class:`pipeline.store.FrameScan`) and writes
  Parquet with polars or DuckDB, so the ingest process needs neither and makes them
  unimportable, as in an environment without them. ``benchmarks/README.md``, "Memory at
  start".
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import importlib.abc
import importlib.machinery
import logging
import sys
import threading
import types
from collections.abc import Iterator, Sequence

__all__ = [
    "INGEST_GC_THRESHOLD",
    "MMAP_THRESHOLD_BYTES",
    "UNUSED_IN_INGEST",
    "ingest_process_tuning",
    "kept_out_unused_libraries",
    "load_store_lazy_imports",
    "pin_mmap_threshold",
    "young_gc_threshold",
]

logger = logging.getLogger(__name__)

INGEST_GC_THRESHOLD = 20_000
"""The collector's young-generation threshold while ingest runs (CPython's default is 700)."""
MMAP_THRESHOLD_BYTES = 512 * 1024
"""Allocations this large or larger are mapped on their own and unmapped when freed."""
_M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>
UNUSED_IN_INGEST = ("pandas", "pyarrow")
"""Packages an ingest process never imports, although DuckDB would (see the module doc)."""
_lock = threading.Lock()
_pinned: bool | None = None


@contextlib.contextmanager
def ingest_process_tuning(*, gc_threshold: int | None = INGEST_GC_THRESHOLD) -> Iterator[None]:
    """Apply the settings of an ingest process (see the module docstring) for a while.

    The collector's thresholds come back on exit and the kept-out libraries become
    importable again; the mmap threshold stays pinned and the imports stay loaded (both are
    harmless to keep, and glibc cannot restore its dynamic threshold).

    Args:
        gc_threshold: The young-generation threshold meanwhile; ``None`` leaves the collector.
    """
    _check_threshold(gc_threshold)  # before anything changes
    pin_mmap_threshold()
    with kept_out_unused_libraries():
        load_store_lazy_imports()
        with young_gc_threshold(gc_threshold):
            yield


@contextlib.contextmanager
def young_gc_threshold(threshold: int | None) -> Iterator[None]:
    """Raise the garbage collector's young-generation threshold to ``threshold`` for a while.

    A higher threshold already set (or 0: automatic collection off) is left as it is, and the
    previous thresholds come back on exit. ``None`` changes nothing.

    Raises:
        ValueError: ``threshold`` is not a positive number of allocations.
    """
    _check_threshold(threshold)
    if threshold is None:
        yield
        return
    previous = gc.get_threshold()
    if previous[0]:  # 0 means automatic collection is off: leave it off
        gc.set_threshold(max(threshold, previous[0]), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def _check_threshold(threshold: int | None) -> None:
    if threshold is not None and threshold <= 0:
        raise ValueError(
            f"the young GC threshold must be > 0 allocations (or None to leave the collector "
            f"alone), got {threshold}"
        )


class _KeptOut(importlib.abc.MetaPathFinder):
    """Makes the packages named in :data:`UNUSED_IN_INGEST` unimportable."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in UNUSED_IN_INGEST:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: the candles ingest process keeps it out "
                "(pipeline.ingest.tuning.UNUSED_IN_INGEST)",
                name=fullname,
            )
        return None


@contextlib.contextmanager
def kept_out_unused_libraries() -> Iterator[bool]:
    """Make :data:`UNUSED_IN_INGEST` unimportable for a while (the whole ingest run).

    Yields:
        Whether they are kept out: ``False`` when one was imported already (it stays usable),
        or when an enclosing call keeps them out already.
    """
    finder = _KeptOut()
    with _lock:
        loaded = any(name in sys.modules for name in UNUSED_IN_INGEST)
        nested = any(isinstance(f, _KeptOut) for f in sys.meta_path)
        installed = not loaded and not nested
        if installed:
            sys.meta_path.insert(0, finder)
    try:
        yield installed
    finally:
        if installed:
            with _lock, contextlib.suppress(ValueError):
                sys.meta_path.remove(finder)


def load_store_lazy_imports() -> None:
    """Make DuckDB import now what it otherwise imports on the store's first upsert."""
    import duckdb
    import polars as pl

    from pipeline.store import FrameScan

    con = duckdb.connect()
    try:
        con.register("lazy_import_probe", FrameScan(pl.DataFrame({"probe": [0]})))
        con.execute("SELECT count(*) FROM lazy_import_probe").fetchall()
    finally:
        con.close()


def pin_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` for this process, once.

    Returns:
        Whether the threshold is pinned: ``False`` where the C library has no ``mallopt``
        (macOS) or refuses it (musl accepts and ignores it, reported as pinned).
    """
    global _pinned
    with _lock:
        if _pinned is None:
            _pinned = _call_mallopt()
        return _pinned


def _call_mallopt() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    pinned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not pinned:
        logger.warning("! mallopt(M_MMAP_THRESHOLD) refused: freed DuckDB buffers may stay")
    return pinned
