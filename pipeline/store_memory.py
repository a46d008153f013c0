"""Process memory setting for the store's writer: give freed large buffers back to the OS.

glibc serves allocations of at least ``M_MMAP_THRESHOLD`` bytes with their own ``mmap`` and
returns them with ``munmap``; but each time such a block is freed it *raises* the threshold
(up to 32 MiB), so later large buffers come from the heap arenas, where freed memory stays
in the process. DuckDB reads and compaction allocate buffers of a few hundred KiB that grow
with the files they read, and the ingest process's RSS crept up by them (issue 7): with
upserts of 600 rows and a compaction every 50, RSS rose 250 -> 276 MiB over 1,000 upserts
(``malloc_trim`` gave back < 1 MiB), and stayed at 247-249 MiB with the threshold pinned.

The pin is at 512 KiB, not glibc's initial 128 KiB: the ingest path's own large buffers live
below it (asyncio reads the socket 256 KiB at a time, a backfill frame is ~72 KiB, a
snapshot's columns ~160 KiB), and mapping each of them on its own, with its page faults and
``munmap``, cost the backfill ~25 % of the event loop's CPU (bench_backfill, loop thread
1.6-2.0 s at 128 KiB against 1.2-1.4 s at 512 KiB, alternating runs) and the store ~10 % of its
own (600 upserts with a compaction every 50: 51 s against 47 s CPU). Over those 600 upserts
RSS stayed flat at both: 254-258 MiB (128 KiB) and 255-257 MiB (512 KiB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

__all__ = ["MMAP_THRESHOLD_BYTES", "pin_mmap_threshold"]

logger = logging.getLogger(__name__)

MMAP_THRESHOLD_BYTES = 512 * 1024
"""Allocations this large or larger are mapped on their own and unmapped when freed."""
_M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>
_lock = threading.Lock()
_pinned: bool | None = None


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
