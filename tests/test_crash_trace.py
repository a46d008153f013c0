"""A fatal signal in the test process leaves its traceback where CI keeps it (issue 14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers.crash_trace import ROOT

DIES = """
import os, signal

def test_dies_like_the_ci_run_did():
    os.kill(os.getpid(), signal.SIGBUS)
"""
LIVES = """
def test_lives():
    assert True
"""


def _session(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_child.py"
    test.write_text(source)
    env = {**os.environ, "CANDLES_CRASH_DIR": str(tmp_path / "crash")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "tests.helpers.crash_trace", str(test)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_sigbus_in_pytest_leaves_a_traceback_file(tmp_path: Path) -> None:
    """SIGBUS inside a test: the session dies, its stack is in crash/pytest-<pid>.log."""
    result = _session(tmp_path, DIES)
    assert result.returncode == -signal.SIGBUS, result.stdout + result.stderr
    (trace,) = (tmp_path / "crash").iterdir()
    text = trace.read_text()
    assert trace.name.startswith("pytest-") and "Bus error" in text, text
    assert "test_dies_like_the_ci_run_did" in text, text


def test_a_session_without_a_crash_leaves_no_file(tmp_path: Path) -> None:
    """A normal session removes its empty trace file: a file that stays is a crash."""
    result = _session(tmp_path, LIVES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list((tmp_path / "crash").iterdir()) == []
