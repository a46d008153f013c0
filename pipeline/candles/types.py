"""The values :class:`pipeline.candles.CandleDataManager` hands out, and its errors.

Imported from :mod:`pipeline.candles`, which re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl

__all__ = ["BackpressureError", "Batch", "CandleData", "CapacityError", "ManagerStats"]


class BackpressureError(RuntimeError):
    """Too many completed candles wait for the store; the update was refused, nothing applied."""

    def __init__(self, pinned: int, limit: int) -> None:
        self.pinned = pinned
        self.limit = limit
        super().__init__(
            f"refusing candle update: {pinned} completed candles are waiting to be stored "
            f"(max_pinned_candles={limit}); flush (take_completed, store, commit) and retry"
        )


class CapacityError(ValueError):
    """A new series would exceed ``max_series``."""


@dataclass(frozen=True, slots=True)
class CandleData:
    """One candle as held by the manager (a snapshot of it; later updates make new ones)."""

    symbol: str
    """Streamer symbol, e.g. ``AAPL`` (``CandleSymbol.base``)."""
    interval: str
    """Period label, e.g. ``5m`` or ``5m,tho=true`` (``CandleSymbol.period_label``)."""
    timestamp: datetime
    """Period start, UTC."""
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float
    count: int
    bid_volume: float
    ask_volume: float
    imp_volatility: float
    open_interest: float
    is_complete: bool
    revision: int
    sequence: int = 0
    """§4.2: tells apart candles of one series that start in the same millisecond (tick,
    volume and price periods); 0 for time-based periods."""


class Batch:
    """Completed candles to store, and stored candles to delete, handed out together.

    The candles' frame is built on first use from the packed records (so the service builds
    it in the thread that writes it, off the event loop); the records are immutable bytes,
    so the frame is the same whenever and wherever it is built.
    """

    __slots__ = ("_build", "_frame", "deletions", "rows", "token")

    def __init__(
        self,
        build: Callable[[], pl.DataFrame],
        rows: int,
        deletions: pl.DataFrame,
        token: int,
    ) -> None:
        self._build: Callable[[], pl.DataFrame] | None = build
        self._frame: pl.DataFrame | None = None
        self.rows = rows
        """How many candles the frame holds."""
        self.deletions = deletions
        """Keys (``symbol``, ``period``, ``time``, ``sequence``) of stored candles removed
        server-side."""
        self.token = token
        """Identifies the batch for :meth:`CandleDataManager.commit` / ``release``."""

    @property
    def frame(self) -> pl.DataFrame:
        """Exactly :data:`CANDLE_COLUMNS`; ``ingested_at`` is null (the store sets it)."""
        if self._frame is None:
            assert self._build is not None
            self._frame, self._build = self._build(), None
        return self._frame

    @property
    def empty(self) -> bool:
        """Nothing to write and nothing to delete."""
        return self.rows == 0 and self.deletions.height == 0

    def __repr__(self) -> str:
        return f"Batch(token={self.token}, rows={self.rows}, deletions={self.deletions.height})"


@dataclass(frozen=True, slots=True)
class ManagerStats:
    """Counts and the memory estimate of a :class:`CandleDataManager`."""

    series: int
    candles_held: int
    dirty: int
    """Held candles whose current version is not stored yet."""
    pinned: int
    """Candles held beyond ``max_historical_candles`` because they are not stored yet."""
    pending_deletions: int
    buffered_events: int
    """Events held back in unfinished snapshots or transactions."""
    revisions: int
    refused_series_events: int
    """Events of series beyond ``max_series`` (a manager with no subscriptions)."""
    invalid_events: int
    """Events dropped at the door, all reasons (see ``invalid_by_reason``)."""
    snapshot_overflows: int
    backpressure_refusals: int
    memory_bytes: int
    """Estimate of the memory held now."""
    memory_limit_bytes: int
    """Estimate of the most the configured bounds allow."""
    invalid_by_reason: Mapping[str, int] = field(default_factory=dict)
    """Events dropped at the door per :class:`~pipeline.candles.InvalidReason` (every reason,
    0 included)."""
    unsolicited_events: int = 0
    """Events of series nobody subscribed (once the manager has subscriptions)."""
