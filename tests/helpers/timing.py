"""Time units for tests over real sockets (STYLE.md §C, websockets' ``tests/utils.py``).

Every timeout in an asyncio test is written as a multiple of :data:`MS`, so a slow CI machine
can scale them all with ``CANDLES_TEST_TIMEOUT_FACTOR`` (e.g. ``=5``). These are *limits*
(how long to wait for an explicit event before failing), never sleeps used to synchronise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

__all__ = ["MS", "SHORT_BACKOFF_MAX", "TIMEOUT", "short_backoff"]

MS = 0.001 * float(os.environ.get("CANDLES_TEST_TIMEOUT_FACTOR", "1"))
"""One millisecond, scaled by ``CANDLES_TEST_TIMEOUT_FACTOR``."""

TIMEOUT = 10_000 * MS
"""The generous overall limit for waiting on an event that should happen much sooner."""

SHORT_BACKOFF_MAX = 0.02
"""The cap of :func:`short_backoff`, in seconds."""


def short_backoff() -> Iterator[float]:
    """Reconnect delays for tests: 1, 2, 4, ... ms capped at 20 ms (no jitter, no waiting)."""
    delay = 0.001
    while True:
        yield delay
        delay = min(delay * 2, SHORT_BACKOFF_MAX)
