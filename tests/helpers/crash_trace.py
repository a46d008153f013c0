"""A pytest plugin: a fatal signal leaves its traceback in a file CI keeps (issue 14).

One run of the suite died with SIGBUS inside pytest on a loaded machine and its traceback,
written to the captured stderr, was lost. This plugin points ``faulthandler`` at a file of
its own per pytest process, ``$CANDLES_CRASH_DIR/pytest-<pid>.log`` (default ``build/crash``
in the checkout), with every thread's stack; an empty file is removed when the session ends
normally, so a file that stays is a crash. ``.ci/run`` prints them at the end. Child Python
processes the tests start get ``PYTHONFAULTHANDLER=1``: a crash there shows in their stderr,
which the tests that start them report.
"""

from __future__ import annotations

import faulthandler
import os
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parents[2]
_KEY = pytest.StashKey[tuple[Path, IO[str]]]()


def crash_dir() -> Path:
    """Where crash traces go: ``$CANDLES_CRASH_DIR`` or ``build/crash`` in the checkout."""
    return Path(os.environ.get("CANDLES_CRASH_DIR") or ROOT / "build" / "crash")


@pytest.hookimpl(trylast=True)  # after pytest's own faulthandler plugin pointed it at stderr
def pytest_configure(config: pytest.Config) -> None:
    folder = crash_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pytest-{os.getpid()}.log"
    file = path.open("w", encoding="utf-8")
    faulthandler.enable(file=file, all_threads=True)
    config.stash[_KEY] = (path, file)
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")


@pytest.hookimpl(trylast=True)  # after pytest's plugin gave faulthandler back to stderr
def pytest_unconfigure(config: pytest.Config) -> None:
    path, file = config.stash[_KEY]
    if faulthandler.is_enabled():
        faulthandler.enable(file=2, all_threads=True)  # never a closed file
    file.close()
    if path.stat().st_size == 0:
        path.unlink()
