"""Fill a candle store from the simulator's market, as an ingest run would have left it.

The notebooks (and ``tests/test_analysis.py``) need a store with something to show: several
symbols, 1m/5m/1d candles, a quiet period (a gap), revisions, a removed candle and realistic
``ingested_at`` times. :func:`fill_store` writes exactly that with :meth:`CandleStore.upsert`,
modelling what the ingest service does (DESIGN.md "Candles"):

* Ingest runs from ``start`` to ``end``. A candle is first stored at the first flush (every
  ``FLUSH`` seconds) after it completed (its end plus ``GRACE``); candles that completed
  before ``start`` (the daily history) are backfilled at ``start``. Each flush takes a seeded
  50-800 ms to commit.
* The value first stored is the market's candle as visible at that moment. A late
  correction published afterwards (the market's ``correction_rate``) revises it: the latest
  value is stored with ``revision`` = the number of such corrections, at the flush after
  the last one; a busted candle is deleted then.
* A trading halt (``quiet``) has no trades: no 1m/5m candle starts in it, and a daily
  candle holds only the trades outside it. The ``candle_gaps`` view shows it.

Everything is a pure function of the arguments, so the same call gives the same store.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from pipeline.dxlink import CandleSymbol
from pipeline.schema import CANDLE_COLUMNS, CANDLE_SCHEMA
from pipeline.simulator import Market, MarketConfig, Period
from pipeline.simulator.bars import Bar, bar_to_candle, combine
from pipeline.simulator.market import Correction
from pipeline.store import CandleStore

__all__ = [
    "DAILY_DAYS",
    "END",
    "FLUSH",
    "GRACE",
    "INTRADAY_DAYS",
    "PERIODS",
    "QUIET",
    "SYMBOLS",
    "FilledStore",
    "fill_store",
]

SYMBOLS = ("AAPL", "SPY", "/ESZ25:XCME")
"""A stock, an ETF and a future (whose symbol has '/' and ':')."""
PERIODS = ("1m", "5m", "1d")
END = datetime(2025, 8, 27, tzinfo=UTC)
"""Ingest stopped here; every candle before it is complete and stored."""
INTRADAY_DAYS = 2
"""1m and 5m candles cover the last two days (the ingest run)."""
DAILY_DAYS = 30
"""1d candles cover the last 30 days (28 of them backfilled on the first start)."""
QUIET = (datetime(2025, 8, 25, 20, 0, tzinfo=UTC), datetime(2025, 8, 25, 21, 30, tzinfo=UTC))
"""A 90-minute trading halt: no trades, so no candles."""
GRACE = timedelta(seconds=5)
"""A candle counts as complete this long after its end (config ``grace_seconds``)."""
FLUSH = timedelta(seconds=5)
"""Flush interval of the modelled ingest (config ``flush_interval``)."""
SEED = 1  # the simulator seed config.toml ships with
CORRECTION_RATE = 0.05

_VALUE_COLUMNS = tuple(
    name
    for name in CANDLE_COLUMNS
    if name not in ("symbol", "period", "time", "revision", "ingested_at")
)
_MS = timedelta(milliseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class FilledStore:
    """What :func:`fill_store` wrote; tests compare the store and the notebooks against it."""

    path: Path
    symbols: tuple[str, ...]
    periods: tuple[str, ...]
    start: datetime
    """Ingest start: the first 1m/5m candle and the backfill time of the daily history."""
    end: datetime
    """Ingest end: no candle starts at or after it."""
    daily_start: datetime
    """The first 1d candle."""
    quiet: tuple[datetime, datetime]
    """The trading halt ``[start, end)``."""
    candles: int
    """Rows in the store."""
    per_series: dict[str, int]
    """Rows per series key (``AAPL{=5m}``)."""
    revised: int
    """Stored candles with ``revision > 0``."""
    removed: int
    """Candles stored first and deleted later (busted trades)."""


@dataclass(frozen=True)
class _Version:
    bar: Bar | None
    revision: int
    ingested_ms: int


def fill_store(
    path: Path,
    *,
    symbols: Iterable[str] = SYMBOLS,
    end: datetime = END,
    quiet: tuple[datetime, datetime] = QUIET,
    seed: int = SEED,
    verify_extensions: bool = False,
) -> FilledStore:
    """Write the simulator market's candles into a new :class:`CandleStore` at ``path``.

    Args:
        path: The store folder; must not hold a store yet.
        symbols: Streamer symbols to write.
        end: Ingest end, on a whole day (UTC).
        quiet: The trading halt, on 5-minute boundaries inside the intraday window.
        seed: The market seed.
        verify_extensions: See :class:`CandleStore` (tests skip the ~1.2 s check).

    Returns:
        What was written.

    Raises:
        ValueError: ``path`` already holds a store.
    """
    if (path / "catalog.sqlite").exists():
        raise ValueError(f"{path} already holds a store; fill_store needs a fresh folder")
    names = tuple(symbols)
    market = Market(MarketConfig(seed=seed, correction_rate=CORRECTION_RATE))
    start = end - timedelta(days=INTRADAY_DAYS)
    daily_start = end - timedelta(days=DAILY_DAYS)
    model = _Ingest(market, _ms(start), _ms(end), (_ms(quiet[0]), _ms(quiet[1])), seed)
    first: list[dict[str, object]] = []
    latest: list[dict[str, object]] = []
    deleted: list[dict[str, object]] = []
    for symbol in names:
        for label in PERIODS:
            since = daily_start if label.endswith("d") else start
            for time_ms, versions in model.series(symbol, label, _ms(since)):
                key = {"symbol": symbol, "period": label, "time": _at(time_ms)}
                first.append(_row(key, versions[0]))
                final = versions[-1]
                if final.bar is None:
                    deleted.append(key)
                elif final.revision:
                    latest.append(_row(key, final))
    with CandleStore(path, verify_extensions=verify_extensions) as store:
        store.upsert(pl.DataFrame(first, schema=CANDLE_SCHEMA))
        keys = {name: CANDLE_SCHEMA[name] for name in ("symbol", "period", "time")}
        store.upsert(pl.DataFrame(latest, schema=CANDLE_SCHEMA), pl.DataFrame(deleted, schema=keys))
        per_series = {
            CandleSymbol.of(symbol, label).normalized: store.history(
                CandleSymbol.of(symbol, label).normalized
            ).height
            for symbol in names
            for label in PERIODS
        }
        total = store.count()
    return FilledStore(
        path=path,
        symbols=names,
        periods=PERIODS,
        start=start,
        end=end,
        daily_start=daily_start,
        quiet=quiet,
        candles=total,
        per_series=per_series,
        revised=len(latest),
        removed=len(deleted),
    )


class _Ingest:
    """The ingest service's view of the market: first-stored and revised candle versions."""

    def __init__(
        self, market: Market, start_ms: int, end_ms: int, quiet: tuple[int, int], seed: int
    ) -> None:
        self._market = market
        self._start_ms = start_ms
        self._end_ms = end_ms
        self._quiet = quiet
        self._seed = seed
        self._now_ms = end_ms + 60_000  # every candle before end_ms is complete and flushed

    def series(
        self, symbol: str, label: str, since_ms: int
    ) -> Iterable[tuple[int, list[_Version]]]:
        """``(time, versions)`` per candle of one series, oldest first; never an empty list."""
        parsed = CandleSymbol.of(symbol, label)
        period = Period.of(parsed.period_value, parsed.period_unit)
        fixes = self._market.corrections_published(symbol, since_ms, self._now_ms)
        for time_ms in range(since_ms, self._end_ms, period.length_ms):
            end_ms = time_ms + period.length_ms
            first_ms = max(self._start_ms, end_ms + _ms_of(GRACE))
            first_flush = self._flush_after(first_ms)
            bar = self._bar(symbol, time_ms, end_ms, first_flush)
            if bar is None:
                continue  # quiet: no trades, no candle
            versions = [_Version(bar, 0, first_flush)]
            later = sorted(
                fix.published_ms
                for fix in fixes
                if _corrects(fix, time_ms, end_ms, first_flush) and not self._halted(fix.minute_ms)
            )
            if later:
                flush = self._flush_after(later[-1])
                final = self._bar(symbol, time_ms, end_ms, flush)
                versions.append(_Version(final, len(later), flush))
            yield time_ms, versions

    def _bar(self, symbol: str, start_ms: int, end_ms: int, now_ms: int) -> Bar | None:
        """The candle's trades visible at ``now_ms``, leaving out the halt."""
        halt_start, halt_end = self._quiet
        parts = [(start_ms, min(end_ms, halt_start)), (max(start_ms, halt_end), end_ms)]
        return combine(
            self._market.bar(symbol, low, high, now_ms) for low, high in parts if low < high
        )

    def _halted(self, time_ms: int) -> bool:
        return self._quiet[0] <= time_ms < self._quiet[1]

    def _flush_after(self, time_ms: int) -> int:
        """When the flush that first sees ``time_ms`` has committed."""
        step = _ms_of(FLUSH)
        flush_ms = -(-time_ms // step) * step
        commit = random.Random(f"{self._seed}|{flush_ms}").randint(50, 800)
        return flush_ms + commit


def _corrects(fix: Correction, start_ms: int, end_ms: int, stored_ms: int) -> bool:
    """True when ``fix`` changes a candle ``[start_ms, end_ms)`` after it was stored."""
    return start_ms <= fix.minute_ms < end_ms and fix.published_ms > stored_ms


def _row(key: dict[str, object], version: _Version) -> dict[str, object]:
    """A store row: the key, the candle's values as the feed sends them, revision, time."""
    assert version.bar is not None
    candle = bar_to_candle(str(key["symbol"]), 0, version.bar)
    values = {name: getattr(candle, name) for name in _VALUE_COLUMNS}
    return {**key, **values, "revision": version.revision, "ingested_at": _at(version.ingested_ms)}


def _ms(value: datetime) -> int:
    return (value - _EPOCH) // _MS


def _ms_of(value: timedelta) -> int:
    return value // _MS


def _at(ms: int) -> datetime:
    return _EPOCH + ms * _MS
