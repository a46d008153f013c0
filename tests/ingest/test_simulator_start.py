"""The built-in simulator's market clock never runs ahead of the wall clock (issue 17, item 3).

It used to restart from the newest stored candle and run 60x, so a few restarts put the
newest candle hours in the future. Now it starts ``source.simulator.start_behind`` behind
the wall clock (or just after the newest stored candle, never after now), catches up at
``speed`` and then runs in real time; the first log line says so.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.ingest.runner import simulator_start_ms
from pipeline.store import run_query

NOW = 1_800_000_000_000
HOUR = 3_600_000


@pytest.mark.parametrize(
    ("newest", "start", "why"),
    [
        (None, NOW - HOUR, "1h behind the wall clock"),
        (NOW - 3 * HOUR, NOW - HOUR, "1h behind the wall clock"),
        (NOW - HOUR / 2, NOW - HOUR / 2 + 60_000, "just after the newest stored candle"),
        (NOW - 30_000, NOW, "at the wall clock"),
    ],
)
def test_the_start_is_behind_the_wall_clock_or_after_the_store(
    newest: float | None, start: float, why: str
) -> None:
    """start_behind before now, later if the store holds newer candles, never after now."""
    stored = None if newest is None else int(newest)
    assert simulator_start_ms("1h", stored, NOW) == (int(start), why)


def test_a_store_written_ahead_by_an_older_version_is_continued_not_rewritten() -> None:
    """Candles already in the future (an older simulator ran ahead): start after them."""
    assert simulator_start_ms("1h", NOW + HOUR, NOW) == (
        NOW + HOUR + 60_000,
        "just after the newest stored candle",
    )


def test_restarted_ingest_never_stores_a_candle_from_the_future(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Three 1 s runs in a row at 3600x (the default hour behind takes about a second to
    catch up, so the later runs restart at the wall clock and must then keep to it): every
    stored candle ended before the wall clock, and each run's first simulator log line says
    the clock never runs ahead."""
    for name in [n for n in os.environ if n.startswith("CANDLES_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text(
        "[source.simulator]\nspeed = 3600.0\n"
        '[subscriptions]\nsymbols = ["AAPL"]\nintervals = ["1m"]\nlookback = "2h"\n'
        "[metrics]\nenabled = false\n[schedule]\nflush_interval = 0.2\n"
    )
    caplog.set_level(logging.INFO, logger="pipeline")
    for _ in range(3):
        result = CliRunner().invoke(cli, ["ingest", "--duration", "1s"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    wall_ms = int(time.time() * 1000)
    newest = run_query("SELECT epoch_ms(max(time)) AS t FROM candles", path=tmp_path / "data")
    assert newest["t"][0] + 60_000 <= wall_ms, "a stored 1m candle ends after the wall clock"
    said = [r.getMessage() for r in caplog.records if "built-in DXLink simulator" in r.getMessage()]
    assert len(said) == 3
    assert "market clock starts 1h behind the wall clock" in said[0]
    assert all("never ahead of the wall clock" in line for line in said)
