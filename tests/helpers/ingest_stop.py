"""Stop ``candles ingest`` the way its user does, Ctrl-C (SIGINT), on an event, not a timer.

``candles ingest`` runs until interrupted; a test that runs it through ``CliRunner`` (in this
process) need not bound it by a wall-clock ``--duration`` and then hope the data arrived in
time. :func:`interrupt_when` watches the :class:`~pipeline.ingest.IngestService` the command
builds and raises SIGINT in this process as soon as ``ready(service)`` holds: the runner's own
signal handler then stops the service, which stores what it completed, as after a Ctrl-C.

If ``ready`` never holds, SIGINT still comes after ``within`` seconds (the run is bounded),
and :attr:`Interrupt.met` stays ``False`` for the test to assert.

A ``candles ingest`` *process* is watched from outside: :func:`wait_until_stored` reads its
store as any reader may while it writes, and returns once the series are there; the test
then sends the SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.ingest import IngestService
from pipeline.ingest import runner as ingest_runner
from pipeline.store import QueryError, run_query
from tests.helpers.service import eventually
from tests.helpers.timing import TIMEOUT

POLL_S = 0.02
"""How often ``ready`` is checked, on the ingest's own event loop (never a sleep that
synchronises: the SIGINT follows the condition, not the clock)."""


@dataclass
class Interrupt:
    """What :func:`interrupt_when` saw."""

    services: list[IngestService] = field(default_factory=list)
    watchers: list[asyncio.Task[None]] = field(default_factory=list)
    met: bool = False
    """``ready(service)`` held before the SIGINT."""
    error: Exception | None = None
    """What ``ready`` raised, if it did (the SIGINT came at once)."""


def completed(service: IngestService, series: str) -> int:
    """Completed candles the service's manager holds of ``series`` (a final flush stores
    them)."""
    return sum(1 for candle in service.manager.history(series) if candle.is_complete)


def every_series_completed(
    minimum: Callable[[str], int] = lambda _: 1,
) -> Callable[[IngestService], bool]:
    """``ready``: each subscribed series holds at least ``minimum(series)`` completed candles."""

    def ready(service: IngestService) -> bool:
        return all(
            completed(service, s.normalized) >= minimum(s.normalized) for s in service.series
        )

    return ready


def any_series_completed(service: IngestService) -> bool:
    """``ready``: some subscribed series holds a completed candle."""
    return any(completed(service, s.normalized) > 0 for s in service.series)


@contextmanager
def interrupt_when(
    monkeypatch: pytest.MonkeyPatch,
    ready: Callable[[IngestService], bool],
    *,
    within: float = TIMEOUT,
) -> Iterator[Interrupt]:
    """Within the block, every ``candles ingest`` run in this process gets SIGINT once
    ``ready(service)`` holds (or after ``within`` s)."""
    seen = Interrupt()

    def build(*args: object, **kwargs: object) -> IngestService:
        service = IngestService(*args, **kwargs)  # type: ignore[arg-type]
        seen.services.append(service)
        # Started before the runner installs its handlers, first run after it has (no await
        # lies between), and ended with the loop if the run ends first.
        seen.watchers.append(asyncio.get_running_loop().create_task(_watch(service)))
        return service

    async def _watch(service: IngestService) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        try:
            while not service.stopping and loop.time() < deadline:
                if ready(service):
                    seen.met = True
                    break
                await asyncio.sleep(POLL_S)
        except Exception as exc:  # reported by the test; the run must end all the same
            seen.error = exc
        if not service.stopping:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C: the runner's handler takes it

    with monkeypatch.context() as patch:
        patch.setattr(ingest_runner, "IngestService", build)
        yield seen


# ------------------------------------------------------------ a `candles ingest` process


def stored_series(store: Path) -> set[tuple[str, str]]:
    """(symbol, period) of every series in the store, read as a reader does (no lock that
    could block the writer); empty before the first flush created the store."""
    try:
        frame = run_query("SELECT DISTINCT symbol, period FROM candles", path=store)
    except QueryError:  # no lake there yet
        return set()
    return set(frame.iter_rows())


def wait_until_stored(
    process: subprocess.Popen[Any],
    store: Path,
    series: Iterable[tuple[str, str]],
    *,
    within: float = 6 * TIMEOUT,
) -> None:
    """Return once the store of the ``candles ingest`` ``process`` holds every one of
    ``series`` (then the test stops it, as its user would); fail if the process ends first
    or ``within`` s pass."""
    wanted, deadline = set(series), time.monotonic() + within
    while not wanted <= (seen := stored_series(store)):
        assert process.poll() is None, f"ingest exited {process.returncode} first; {seen=}"
        assert time.monotonic() < deadline, f"not stored within {within}s: {wanted - seen}"
        time.sleep(POLL_S)  # the pace of re-reading, not a synchronisation


async def wait_until_stored_async(
    process: asyncio.subprocess.Process,
    store: Path,
    series: Iterable[tuple[str, str]],
    *,
    within: float = 6 * TIMEOUT,
) -> None:
    """:func:`wait_until_stored` for an asyncio child process."""
    wanted = set(series)

    async def stored() -> bool:
        seen = await asyncio.to_thread(stored_series, store)
        assert process.returncode is None, f"ingest exited {process.returncode} first; {seen=}"
        return wanted <= seen

    await eventually(stored, within=within, what=f"{sorted(wanted)} stored in {store}")


def ingest_until_stored(
    argv: Sequence[str | Path],
    store: Path,
    series: Iterable[tuple[str, str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    within: float = 6 * TIMEOUT,
) -> tuple[int, str]:
    """Run ``argv`` (a ``candles ingest`` command) as a process until ``store`` holds every
    one of ``series``, then SIGINT it as its user would; (exit status, stderr)."""
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [str(a) for a in argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err
        )

        def log() -> str:
            err.seek(0)
            return err.read().decode(errors="replace")

        try:
            try:
                wait_until_stored(process, store, series, within=within)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{log()[-3000:]}") from None
            process.send_signal(signal.SIGINT)
            process.wait(within)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        return process.returncode, log()
