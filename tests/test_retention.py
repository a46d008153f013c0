"""Retention (issue 16): ``store.retention`` per period, applied by the maintenance job.

The store removes candles older than their period's retention in one transaction per period
and keeps each series' newest candle (its resume point); the service runs it by the stream's
clock before compacting, never asks a first start for history the retention would remove,
and a series it pruned resumes after its newest stored candle, so nothing deleted is fetched
again.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.config import ConfigError, loads_config
from pipeline.metrics import StoreCheck, parse_status, render_status
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore, connect, retention_cutoff
from tests.helpers.service import (
    START_MS,
    TOKEN,
    differences,
    eventually,
    make_service,
    service_config,
    stored_frame,
    truth_frame,
)
from tests.helpers.store import MINUTE, T0, candle_frame, open_store

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def _times(store: CandleStore, series: str) -> list[datetime]:
    return list(store.history(series)["time"])


# ----------------------------------------------------------------------------- config


def test_retention_is_read_per_period_and_normalised() -> None:
    """Keys are candle periods in any spelling, values durations or "forever"."""
    config = loads_config(
        '[store.retention]\n1min = "30d"\n5m = "52w"\n1d = "forever"\n', environ={}
    )
    assert config.store.retention == {"1m": "30d", "5m": "52w", "1d": "forever"}
    assert config.store.retention_policy() == {"1m": timedelta(days=30), "5m": timedelta(weeks=52)}
    assert config.store.retention_for("1m,tho=true") == timedelta(days=30)
    assert config.store.retention_for("1d") is None
    assert config.store.retention_for("1h") is None
    assert loads_config("", environ={}).store.retention_policy() == {}  # default: keep all


def test_retention_from_the_environment() -> None:
    """CANDLES_STORE__RETENTION__<PERIOD> sets one period's retention."""
    config = loads_config("", environ={"CANDLES_STORE__RETENTION__1M": "2d"})
    assert config.store.retention_policy() == {"1m": timedelta(days=2)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1m = 30", "store.retention.1m: must be a valid string"),
        ('7x = "30d"', '"7x" is not a candle period'),
        ('1m = "3 days"', "1m: '3 days' is not a duration"),
        ('1d = "1d"', "keep candles at least 2d"),
        ('1m = "30m"', "keep candles at least 1h"),
        ('1m = "2d"\n1min = "3d"', "'1min' is listed twice (same period as '1m')"),
    ],
)
def test_a_bad_retention_names_the_period_and_the_rule(text: str, message: str) -> None:
    """Each mistake fails with one line naming the key, what is wrong and what is allowed."""
    with pytest.raises(ConfigError) as caught:
        loads_config(f"[store.retention]\n{text}\n", environ={})
    assert message in str(caught.value)
    assert "forever" in str(caught.value)  # the allowed form is spelled out


# ------------------------------------------------------------------------------ store


def test_cutoffs_are_whole_days_or_whole_hours() -> None:
    """A cut-off moves once a day (once an hour below two days), and always keeps `keep`."""
    now = datetime(2026, 11, 3, 15, 42, 7, tzinfo=UTC)
    assert retention_cutoff(now, timedelta(days=30)) == datetime(2026, 10, 4, tzinfo=UTC)
    assert retention_cutoff(now, timedelta(hours=36)) == datetime(2026, 11, 2, 3, tzinfo=UTC)
    for keep in (timedelta(hours=1), timedelta(days=2), timedelta(days=400)):
        assert now - keep - timedelta(days=1) < retention_cutoff(now, keep) <= now - keep
    with pytest.raises(ValueError, match="timezone-aware"):
        retention_cutoff(datetime(2026, 1, 1), timedelta(days=1))


def test_prune_removes_old_candles_per_period_and_keeps_each_series_newest(
    tmp_path: Path,
) -> None:
    """1m (with attributes too) loses what is past its cut-off; 5m is untouched; a series
    that went quiet keeps its newest candle."""
    now = T0 + timedelta(hours=50)
    with open_store(tmp_path / "data") as store:
        store.upsert(candle_frame("AAPL", "1m", 3000, start=T0))  # 50 hours, up to now
        store.upsert(candle_frame("SPY", "1m", 10, start=T0))  # quiet after 10 minutes
        store.upsert(candle_frame("AAPL", "1m,tho=true", 100, start=T0))
        store.upsert(candle_frame("AAPL", "5m", 100, start=T0, step=5 * MINUTE))
        result = store.prune({"1m": timedelta(hours=24)}, now=now)
        cutoff = datetime(2025, 8, 28, 15, tzinfo=UTC)  # now - 24h, on the hour
        assert [(p.period, p.cutoff) for p in result.periods] == [("1m", cutoff)]
        aapl = _times(store, "AAPL{=1m}")
        assert min(aapl) == cutoff and len(aapl) == 3000 - 1530
        assert _times(store, "SPY{=1m}") == [T0 + 9 * MINUTE]
        assert _times(store, "AAPL{=1m,tho=true}") == [T0 + 99 * MINUTE]
        assert len(_times(store, "AAPL{=5m}")) == 100
        assert result.deleted == 1530 + 9 + 99 == store.stats.rows_pruned
        assert store.resume_points()["SPY{=m}"] == int((T0 + 9 * MINUTE).timestamp() * 1000)


def test_prune_with_nothing_old_commits_nothing(tmp_path: Path) -> None:
    """Nothing past the cut-off: no delete, no snapshot (the hourly job is free then)."""
    with open_store(tmp_path / "data") as store:
        store.upsert(candle_frame("AAPL", "1m", 60, start=T0))
        snapshots = store.catalog_stats().snapshots
        result = store.prune({"1m": timedelta(days=2), "5m": timedelta(days=2)}, now=T0)
        assert result.deleted == 0 and len(result.periods) == 2
        assert store.catalog_stats().snapshots == snapshots


def test_prune_then_compact_leaves_no_delete_files(tmp_path: Path) -> None:
    """Compaction folds the retention's deletes into rewritten files."""
    with open_store(tmp_path / "data", clock=lambda: datetime.now(UTC)) as store:
        for day in range(4):  # one file per day, 1,440 candles each
            store.upsert(candle_frame("AAPL", "1m", 1440, start=T0 + timedelta(days=day)))
        store.prune({"1m": timedelta(days=2)}, now=T0 + timedelta(days=4))
        assert store.catalog_stats().delete_files >= 1
        store.compact(retain=timedelta(0))
        stats = store.catalog_stats()
        assert stats.delete_files == 0
        assert store.count() == len(_times(store, "AAPL{=1m}")) < 4 * 1440


def test_prune_refuses_a_key_with_attributes(tmp_path: Path) -> None:
    """Retention keys are period labels without attributes; the error names the fix."""
    with open_store(tmp_path / "data") as store, pytest.raises(ValueError, match="'1m'"):
        store.prune({"1m,tho=true": timedelta(days=2)}, now=T0)


def test_store_check_reports_the_oldest_candle_per_period(tmp_path: Path) -> None:
    """The periodic store check finds the oldest stored candle of every period."""
    path = tmp_path / "data"
    with open_store(path) as store:
        store.upsert(candle_frame("AAPL", "1m", 5, start=T0 + MINUTE))
        store.upsert(candle_frame("SPY", "1m", 5, start=T0))
        store.upsert(candle_frame("AAPL", "5m", 5, start=T0 + 5 * MINUTE, step=5 * MINUTE))
    check = StoreCheck(lambda: connect(path, verify_extensions=False))
    try:
        result = check.run((), START_MS, 0)
    finally:
        check.close()
    assert result.oldest_by_period == {
        "1m": T0.timestamp(),
        "5m": (T0 + 5 * MINUTE).timestamp(),
    }


def test_status_shows_the_oldest_kept_candle_and_the_retention() -> None:
    """`candles status` prints the oldest kept candle per period beside its retention."""
    metrics = "\n".join(
        [
            "candles_uptime_seconds 60",
            "candles_pruned_total 1234",
            'candles_retention_seconds{period="1m"} 2592000',
            'candles_oldest_candle_timestamp_seconds{period="1m"} 1756301400',
            'candles_oldest_candle_timestamp_seconds{period="1d"} 1704153600',
            "",
        ]
    )
    summary = parse_status("http://127.0.0.1:9464", metrics, {"status": "ok"})
    assert summary.oldest_by_period == {"1d": 1704153600.0, "1m": 1756301400.0}
    assert summary.retention_seconds == {"1m": 2592000.0}
    line = next(x for x in render_status(summary).splitlines() if "oldest kept" in x)
    assert line.split("oldest kept", 1)[1].strip() == (
        "1d 2024-01-02 00:00 (keep forever), 1m 2025-08-27 13:30 (keep 30d); "
        "1,234 removed by retention"
    )


# ---------------------------------------------------------------------------- service


def _simulator() -> Simulator:
    return Simulator(token=TOKEN, seed=3, clock=SimulatorClock.manual(START_MS))


async def test_first_start_asks_for_no_history_past_the_retention(tmp_path: Path) -> None:
    """from_time three days back, 1m kept one day: 1m asks from a day back, 5m from three."""
    from_ms = START_MS - 3 * DAY_MS
    retention: dict[str, Any] = {"store.retention": {"1m": "1d"}}
    config = service_config(tmp_path / "data", symbols=("AAPL",), from_ms=from_ms, **retention)
    async with _simulator() as sim:
        service = make_service(config, sim)
        runner = asyncio.create_task(service.run())
        try:
            await sim.wait_for_subscriptions(2)
            (asked,) = sim.subscriptions().values()
        finally:
            service.stop()
            await runner
    assert asked == {"AAPL{=m}": START_MS - DAY_MS, "AAPL{=5m}": from_ms}


async def test_a_pruned_series_resumes_after_its_newest_candle_and_fetches_nothing_again(
    tmp_path: Path,
) -> None:
    """After retention removed a day of candles, a reconnect and a restart each resume one
    period before the newest stored candle, and the removed candles never come back."""
    path = tmp_path / "data"
    from_ms = START_MS - 2 * DAY_MS
    kept = service_config(path, symbols=("AAPL",), intervals=("1m",), from_ms=from_ms)
    retention: dict[str, Any] = {"store.retention": {"1m": "1d"}}
    pruned = service_config(
        path, symbols=("AAPL",), intervals=("1m",), from_ms=from_ms, **retention
    )
    cutoff_ms = int(retention_cutoff(_at(START_MS), timedelta(days=1)).timestamp() * 1000)
    async with _simulator() as sim:
        # Two days of history stored before any retention was configured.
        first = make_service(kept, sim)
        runner = asyncio.create_task(first.run())
        await sim.wait_for_subscriptions(1)
        await eventually(
            lambda: first.stats.stream_time_ms >= START_MS - MINUTE_MS, what="caught up"
        )
        await first.flush("test")
        first.stop()
        await runner
        newest_ms = _newest(path)
        assert _oldest(path) < cutoff_ms

        # Retention configured: the maintenance job prunes, then a reconnect resumes.
        second = make_service(pruned, sim)
        runner = asyncio.create_task(second.run())
        await sim.wait_for_subscriptions(1)
        await second.maintain()
        assert second.stats.candles_pruned > 0 and second.stats.retention_runs == 1
        assert _oldest(path) == cutoff_ms
        connects = sim.connect_count
        await sim.drop_connections()
        await sim.wait_for(lambda: sim.connect_count > connects)
        await sim.wait_for_subscriptions(1)
        (after_reconnect,) = sim.subscriptions().values()
        second.stop()
        await runner

        # A restart after time passed resumes from the store too.
        await sim.advance(600)
        third = make_service(pruned, sim)
        runner = asyncio.create_task(third.run())
        await sim.wait_for_subscriptions(1)
        (after_restart,) = sim.subscriptions().values()
        end = sim.now_ms
        await eventually(lambda: third.stats.stream_time_ms >= end - MINUTE_MS, what="caught up")
        await third.flush("test")
        third.stop()
        await runner
        truth = truth_frame(sim, "AAPL{=m}", cutoff_ms, end - MINUTE_MS)
    assert (after_reconnect["AAPL{=m}"] or 0) >= newest_ms - MINUTE_MS
    assert (after_restart["AAPL{=m}"] or 0) >= newest_ms - MINUTE_MS
    assert _oldest(path) == cutoff_ms  # nothing before the cut-off was fetched again
    with CandleStore(path, verify_extensions=False) as store:
        stored = stored_frame(store, "AAPL{=m}", cutoff_ms, end - MINUTE_MS)
    assert truth.height > 1000
    assert differences(truth, stored) == []


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _bound(path: Path, fn: str) -> int:
    with CandleStore(path, verify_extensions=False) as store:
        frame = store.history("AAPL{=1m}")
    value = frame.select(getattr(pl.col("time"), fn)().dt.epoch("ms")).item()
    assert isinstance(value, int)
    return value


def _oldest(path: Path) -> int:
    return _bound(path, "min")


def _newest(path: Path) -> int:
    return _bound(path, "max")
