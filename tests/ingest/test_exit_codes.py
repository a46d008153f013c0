"""Exit codes and log lines that tell the truth (issue 17, item 4).

* A run that never reached its source exits 69, not 0.
* A stop whose final flush fails keeps trying for ``ingest.shutdown_timeout`` (as the README
  says) instead of giving up at once: a store that comes back meanwhile loses nothing.
* A failed connection attempt is one log line, not a WARNING and an INFO.
* The README's exit-status table is the one ``candles ingest --help`` prints.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.dxlink.client import DXLinkManager
from pipeline.ingest import EXIT_UNAVAILABLE, SimulatorTokenSource
from pipeline.ingest.runner import unstored_completed
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore
from tests.helpers.service import (
    START_MS,
    TOKEN,
    differences,
    eventually,
    make_service,
    series_keys,
    service_config,
    stored_frame,
    truth_frame,
)
from tests.helpers.timing import TIMEOUT, short_backoff

README = Path(__file__).resolve().parents[2] / "README.md"
MINUTE = 60_000


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_run_that_never_connected_exits_69_naming_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """--duration against a URL where nothing listens: exit 69 and one line saying so."""
    for name in [n for n in os.environ if n.startswith("CANDLES_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="pipeline")
    url = f"ws://127.0.0.1:{closed_port()}/"
    env = {
        "CANDLES_SOURCE__SIMULATOR__URL": url,
        "CANDLES_METRICS__ENABLED": "false",
        "CANDLES_CLIENT__BACKOFF_INITIAL": "0.05",
        "CANDLES_CLIENT__BACKOFF_MAX": "0.1",
    }
    result = CliRunner().invoke(cli, ["ingest", "--duration", "1s"], env=env)
    assert result.exit_code == EXIT_UNAVAILABLE == 69, result.output
    told = [r.getMessage() for r in caplog.records if "never connected" in r.getMessage()]
    assert len(told) == 1, told
    assert told[0].startswith(f"! never connected to the simulator at {url} in ")
    assert "ConnectionRefusedError" in told[0] and "candles doctor" in told[0]


async def test_a_failing_final_flush_is_retried_until_the_store_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store fails when ingest stops; the final flush retries (logged) and, once the
    store works again within ingest.shutdown_timeout, stores everything: nothing unstored."""
    store_path = tmp_path / "data"
    overrides: dict[str, Any] = {"ingest.shutdown_timeout": 600.0}
    config = service_config(store_path, **overrides)
    from_ms = START_MS - 2 * 3600_000
    caplog.set_level(logging.WARNING, logger="pipeline.ingest.service")
    async with Simulator(token=TOKEN, clock=SimulatorClock.manual(START_MS)) as sim:
        service = make_service(config, sim)
        runner = asyncio.create_task(service.run())
        await sim.wait_for_subscriptions(len(series_keys(config)))
        await sim.advance(60)
        await eventually(lambda: service.stats.stream_time_ms >= START_MS, what="the backfill")
        assert (await service.flush("test")).written > 0  # the Parquet folder exists now
        for _ in range(5):
            await sim.advance(60)
        end = START_MS + 6 * MINUTE
        await eventually(lambda: service.stats.stream_time_ms >= end - MINUTE, what="live data")
        (store_path / "data").rename(store_path / "data.unplugged")  # the volume goes away
        (store_path / "data").write_text("not a folder\n")
        service.stop()
        await eventually(
            lambda: any("final flush failed" in r.getMessage() for r in caplog.records),
            within=TIMEOUT,
            what="a failed final flush, retried",
        )
        assert not runner.done()
        (store_path / "data").unlink()  # the volume comes back
        (store_path / "data.unplugged").rename(store_path / "data")
        async with asyncio.timeout(TIMEOUT):
            await runner
    retried = [r.getMessage() for r in caplog.records if "final flush failed" in r.getMessage()]
    assert "retrying in" in retried[0] and "ingest.shutdown_timeout" in retried[0]
    assert unstored_completed(service) == (0, 0)
    with CandleStore(store_path, verify_extensions=False) as store:
        for key in series_keys(config):
            truth = truth_frame(sim, key, from_ms, end - 5 * MINUTE)
            assert truth.height > 3
            assert differences(truth, stored_frame(store, key, from_ms, end - 5 * MINUTE)) == []


async def test_each_failed_attempt_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Three refused attempts: three log lines from the client, each with the next delay
    or (the last) the reason it gave up, not a WARNING and an INFO per attempt."""
    caplog.set_level(logging.DEBUG, logger="pipeline.dxlink.client")
    source = SimulatorTokenSource(f"ws://127.0.0.1:{closed_port()}/", TOKEN)
    manager = DXLinkManager(source, max_attempts=3, reconnect_delays=short_backoff)
    with pytest.raises(ConnectionError, match="gave up after 3"):
        async with asyncio.timeout(TIMEOUT):
            await manager.start()
            async for _ in manager.candles():
                pass
    await manager.aclose()
    about_attempts = [r for r in caplog.records if "ConnectionRefusedError" in r.getMessage()]
    retries = [r for r in about_attempts if "reconnecting in" in r.getMessage()]
    assert len(retries) == 2, [r.getMessage() for r in about_attempts]
    assert all(r.levelno == logging.WARNING for r in retries)
    assert not any(
        "connection ended" in r.getMessage() and r not in retries for r in about_attempts
    )


def exit_statuses(text: str) -> dict[int, str]:
    """``code -> first words`` of an exit-status table (README rows or --help lines)."""
    statuses: dict[int, str] = {}
    for line in text.splitlines():
        found = re.match(r"^\s*\|?\s*`?(\d+)`?\s*\|?\s+(.+)$", line)
        if found and int(found[1]) in (0, 1, 69, 75):
            statuses[int(found[1])] = " ".join(found[2].strip(" |").split()[:3])
    return statuses


def test_the_readme_exit_statuses_are_the_ones_ingest_help_prints() -> None:
    """The README's exit-status table and `candles ingest --help` list the same codes with
    the same words."""
    help_text = CliRunner().invoke(cli, ["ingest", "--help"]).output
    section = help_text.split("Exit status:", 1)[1]
    readme = README.read_text(encoding="utf-8")
    table = readme.split("<!-- exit-status:start -->", 1)[1].split("<!-- exit-status:end -->")[0]
    assert exit_statuses(section) == exit_statuses(table)
    assert set(exit_statuses(table)) == {0, 1, 69, 75}
