"""deploy/: the systemd unit and the Prometheus alert rules hold against the code (issue 16).

``systemd-analyze verify`` checks the unit (Debian's ``systemd``), ``promtool check rules`` and
``promtool test rules`` the alerts (Debian's ``prometheus``); without a tool those tests are
skipped, except under ``CI=true`` where they fail (``.ci/install-system-packages`` installs
both). The rest holds the unit's promises against the code: the stop timeout covers the
shutdown timeout, exit 75 is retried, only the store is writable, every metric an alert names
is one ``/metrics`` exports, and a real ``candles ingest`` stopped with SIGTERM exits 0 inside
the unit's stop timeout, logging plain lines a journal can hold.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from pipeline.config import load_config
from pipeline.ingest import ABANDON_GRACE_S, EXIT_UNSTORED
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import connect
from tests.helpers.service import (
    START_MS,
    TOKEN,
    eventually,
    make_service,
    service_config,
    start_ingest,
    write_ingest_config,
)
from tests.helpers.timing import TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "candle-pipeline.service"
ALERTS = ROOT / "deploy" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "alerts.test.yml"
INSTALLED_CANDLES = "/opt/candle-pipeline/bin/candles"
LOG_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S+: "
)


def _tool(name: str) -> str:
    """The path of a system tool; skip without it (fail under CI=true)."""
    found = shutil.which(name)
    if found is None:
        reason = f"{name} is not installed (.ci/install-system-packages installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires this test to run: {reason}")
        pytest.skip(reason)
    return found


def unit_settings() -> dict[str, dict[str, list[str]]]:
    """The unit file as section -> key -> values (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def _seconds(text: str) -> float:
    """A systemd time span such as ``90s``, ``2min``, ``1min 30s``."""
    units = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        total += float(number) * units[unit or "s"]
    return total


# ---------------------------------------------------------------------------- the unit


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (with ExecStart pointed at this install)."""
    verify = _tool("systemd-analyze")
    candles = Path(sys.executable).with_name("candles")
    assert candles.exists(), f"{candles} missing: the project is not installed in this venv"
    text = UNIT.read_text()
    assert INSTALLED_CANDLES in text
    checked = tmp_path / UNIT.name
    checked.write_text(text.replace(INSTALLED_CANDLES, str(candles)))
    done = subprocess.run(
        [verify, "verify", str(checked)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_a_broken_unit_fails_the_verification(tmp_path: Path) -> None:
    """The check has teeth: a misspelt directive makes `systemd-analyze verify` complain."""
    verify = _tool("systemd-analyze")
    candles = Path(sys.executable).with_name("candles")
    broken = tmp_path / UNIT.name
    text = UNIT.read_text().replace(INSTALLED_CANDLES, str(candles))
    broken.write_text(text.replace("Restart=on-failure", "Restart=on-faliure"))
    done = subprocess.run(
        [verify, "verify", str(broken)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "on-faliure" in done.stderr


def test_the_unit_restarts_after_failures_and_retries_exit_75() -> None:
    """Restart=on-failure, and 75 (candles not stored: the next start fetches them) is
    neither a success nor exempt from the restart."""
    service = unit_settings()["Service"]
    assert service["Restart"] == ["on-failure"]
    assert _seconds(service["RestartSec"][0]) > 0
    assert str(EXIT_UNSTORED) not in " ".join(service.get("SuccessExitStatus", []))
    assert str(EXIT_UNSTORED) not in " ".join(service.get("RestartPreventExitStatus", []))
    assert unit_settings()["Unit"]["StartLimitIntervalSec"] == ["0"]  # never gives up


def test_the_stop_timeout_covers_every_shipped_shutdown_timeout() -> None:
    """SIGTERM stops ingest within ingest.shutdown_timeout plus the unwind grace: inside
    TimeoutStopSec for the default and every profile of the shipped config.toml."""
    service = unit_settings()["Service"]
    assert service["KillSignal"] == ["SIGTERM"]
    stop = _seconds(service["TimeoutStopSec"][0])
    shipped = tomllib.loads((ROOT / "config.toml").read_text())
    profiles = [None, *shipped.get("profiles", {})]
    for profile in profiles:
        config = load_config(ROOT / "config.toml", profile, environ={})
        needed = config.ingest.shutdown_timeout + ABANDON_GRACE_S
        assert config.ingest.shutdown_timeout > 0, f"profile {profile}: a stop must be bounded"
        assert needed + 10 <= stop, f"profile {profile}: {needed:g}s + margin > {stop:g}s"


def test_the_unit_is_hardened_and_can_write_only_the_store() -> None:
    """Read-only system, private /tmp, no new privileges, secrets from an environment file;
    the shipped production profile's store lies inside the only writable path."""
    service = unit_settings()["Service"]
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == [value], key
    assert service["User"] == ["candles"]
    assert service["EnvironmentFile"] == ["/etc/candle-pipeline/secrets.env"]
    assert not any(
        "SECRET" in value or "TOKEN" in value or "PASSWORD" in value
        for value in service.get("Environment", [])
    )
    assert service["ExecStart"][0].split() == [INSTALLED_CANDLES, "ingest"]
    environment = dict(v.split("=", 1) for v in service["Environment"])
    config = load_config(ROOT / "config.toml", environment["CANDLES_PROFILE"], environ=environment)
    writable = [PurePosixPath(p) for v in service["ReadWritePaths"] for p in v.split()]
    for folder in (config.store.path, config.record.dir):
        where = PurePosixPath(folder)
        assert any(where == path or path in where.parents for path in writable), (where, writable)


# ---------------------------------------------------------------------------- the alerts


def test_the_alert_rules_pass_promtool_check() -> None:
    """`promtool check rules deploy/alerts.yml` accepts every rule."""
    promtool = _tool("promtool")
    done = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def split_alert_tests(text: str, parts: int) -> list[str]:
    """The promtool test file as ``parts`` files of the same header, its test groups dealt
    out by cost (a group's last ``eval_time``: promtool evaluates every rule each minute up
    to it), heaviest first to the lightest part."""
    head, _, body = text.partition("\ntests:\n")
    groups = ["- name:" + g for g in re.split(r"^- name:", body, flags=re.M)[1:]]
    assert groups and body.startswith("- name:"), "no test groups found under `tests:`"

    def cost(group: str) -> int:
        return max((int(m) for m in re.findall(r"eval_time: (\d+)m", group)), default=0)

    buckets: list[list[str]] = [[] for _ in range(parts)]
    for group in sorted(groups, key=cost, reverse=True):
        min(buckets, key=lambda b: sum(map(cost, b))).append(group)
    return [f"{head}\ntests:\n{''.join(b)}" for b in buckets if b]


def test_each_alert_fires_on_the_series_it_should(tmp_path: Path) -> None:
    """`promtool test rules deploy/alerts.test.yml`: each alert fires on its series, not before.
    Its test groups run as two promtool processes at once (one per core), in halves of
    about equal cost, against a copy of alerts.yml."""
    promtool = _tool("promtool")
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    text = ALERT_TESTS.read_text()
    parts = split_alert_tests(text, 2)
    assert sorted(re.findall(r"^- name: .*", "".join(parts), re.M)) == sorted(
        re.findall(r"^- name: .*", text, re.M)
    ), "every test group runs exactly once"
    running = []
    for n, part in enumerate(parts):
        (tmp_path / f"part{n}.test.yml").write_text(part)
        command = [promtool, "test", "rules", f"part{n}.test.yml"]
        running.append(
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
            )
        )
    try:
        for process in running:
            output, _ = process.communicate(timeout=60)
            assert process.returncode == 0, output
            assert "SUCCESS" in output, output
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait()
    tested = set(re.findall(r"alertname: (\w+)", text))
    defined = set(re.findall(r"- alert: (\w+)", ALERTS.read_text()))
    assert tested == defined


async def test_every_metric_an_alert_names_is_exported(tmp_path: Path) -> None:
    """The names in deploy/alerts.yml are those a running service's /metrics serves (after
    its store check, with a retention configured and recording on)."""
    named = set(re.findall(r"\b((?:candles|process)_[a-z_]+)\b", ALERTS.read_text()))
    overrides: dict[str, Any] = {
        "metrics.enabled": True,
        "metrics.port": 0,
        "store.retention": {"1m": "2d"},
        "record.enabled": True,  # the recording's metrics appear only while it records
        "record.dir": str(tmp_path / "recordings"),
    }
    config = service_config(tmp_path / "data", symbols=("AAPL",), **overrides)
    async with Simulator(token=TOKEN, seed=5, clock=SimulatorClock.manual(START_MS)) as sim:
        service = make_service(config, sim)
        runner = asyncio.create_task(service.run())
        try:
            await sim.wait_for_subscriptions(2)
            await eventually(lambda: service.stats.candles_received > 0, what="history")
            await service.flush("test")
            assert await service.metrics.check_store() is not None
            url = service.metrics.url
            assert url is not None
            body = await asyncio.to_thread(_get, url + "/metrics")
        finally:
            service.stop()
            await runner
    exported = {line.split("{")[0].split()[0] for line in body.splitlines() if line[:1].isalpha()}
    exported |= {name.removesuffix("_total") for name in exported}
    assert named - exported == set()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
        return str(reply.read().decode())


# ------------------------------------------------------------------- a stop under the unit


async def test_sigterm_stops_ingest_inside_the_units_stop_timeout_logging_plain_lines(
    tmp_path: Path,
) -> None:
    """A real `candles ingest` off a terminal: SIGTERM after it stored candles exits 0 well
    inside TimeoutStopSec, and stderr (the journal) is plain timestamped lines (no status
    line), opening with what runs and ending with what was stored."""
    stop = _seconds(unit_settings()["Service"]["TimeoutStopSec"][0])
    store = tmp_path / "data"
    async with Simulator(token=TOKEN, seed=9, clock=SimulatorClock.manual(START_MS)) as sim:
        config = write_ingest_config(tmp_path / "config.toml", store, sim.url)
        process = start_ingest(config)
        try:

            async def flushed() -> bool:
                return await asyncio.to_thread(_stored, store) > 0

            await eventually(flushed, within=3 * TIMEOUT, what="a flush")
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.to_thread(process.communicate, timeout=stop)
            took = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    log = stderr.decode()
    assert process.returncode == 0, log[-2000:]
    assert took < stop
    assert "\r" not in log and "\x1b" not in log
    lines = log.splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), log[-2000:]
    assert any("starting candle-pipeline" in line and "store " in line for line in lines)
    assert "stopping (SIGTERM)" in log
    assert re.search(r"stopped: \d+ candles stored in \d+ flushes, 0 flush failures", lines[-1])


def _stored(path: Path) -> int:
    if not (path / "catalog.sqlite").exists():
        return 0
    try:
        con = connect(path, verify_extensions=False)
    except Exception:  # not created yet
        return 0
    try:
        row = con.execute("SELECT count(*) FROM candles").fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0
