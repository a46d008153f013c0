"""Stop an in-process ``candles ingest`` the way its user does: Ctrl-C (SIGINT), on an event.

``candles ingest`` runs until interrupted; a test that runs it through ``CliRunner`` (in this
process) need not bound it by a wall-clock ``--duration`` and then hope the data arrived in
time. :func:`interrupt_when` watches the :class:`~pipeline.ingest.IngestService` the command
builds and raises SIGINT in this process as soon as ``ready(service)`` holds: the runner's own
signal handler then stops the service, which stores what it completed, as after a Ctrl-C.

If ``ready`` never holds, SIGINT still comes after ``within`` seconds (the run is bounded),
and :attr:`Interrupt.met` stays ``False`` for the test to assert.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from pipeline.ingest import IngestService
from pipeline.ingest import runner as ingest_runner
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
        while not service.stopping and loop.time() < deadline:
            if ready(service):
                seen.met = True
                break
            await asyncio.sleep(POLL_S)
        if not service.stopping:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C: the runner's handler takes it

    with monkeypatch.context() as patch:
        patch.setattr(ingest_runner, "IngestService", build)
        yield seen
