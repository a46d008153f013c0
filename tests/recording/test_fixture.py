"""The checked-in recording (tests/recording/fixture/): what it holds, and how it is remade.

It was made by ``make_fixture_recording`` (tests/helpers/recording.py): two ingest runs against
the simulator, a drop in the first, a restart between them. To remake it after a change that
should show in it: ``CANDLES_UPDATE_FIXTURES=1 ./run pytest tests/recording/test_fixture.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.ingest import rebuild
from pipeline.recording import OPENED, Recording, recording_files
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import CandleStore
from tests.helpers.recording import (
    FIXTURE,
    FIXTURE_TOKEN,
    FixtureFacts,
    fixture_facts,
    make_fixture_recording,
    stored_rows,
)
from tests.helpers.service import differences, service_config, stored_frame, truth_frame
from tests.recording.files import decompressed

UPDATE_ENV = "CANDLES_UPDATE_FIXTURES"


def truth_problems(facts: FixtureFacts, store: Path) -> list[str]:
    """Differences between a store and the simulator's truth over the fixture's complete range."""
    sim = Simulator(token="unused", seed=facts.seed, clock=SimulatorClock.manual(facts.end_ms))
    end = facts.end_ms - 5 * 60_000
    with CandleStore(store) as opened:
        return [
            f"{key}: {problem}"
            for key in facts.series
            for problem in differences(
                truth_frame(sim, key, facts.from_ms, end),
                stored_frame(opened, key, facts.from_ms, end),
            )
        ]


def test_the_fixture_holds_two_sessions_three_connections_and_no_token() -> None:
    """Two runs (a restart), three connections (a drop), all readable, no secret in it."""
    files = recording_files([FIXTURE])
    recording = Recording(files)
    assert recording.unusable == [] and len(recording.sessions) == 2
    opened = [e.item for e in recording.entries() if getattr(e.item, "d", None) == OPENED]
    assert len(opened) == 3
    for path in files:
        assert FIXTURE_TOKEN.encode() not in decompressed(path)


def test_the_fixture_rebuilds_to_the_simulators_truth(tmp_path: Path) -> None:
    """Rebuilt, the fixture gives exactly the rows the recorded runs stored, equal to truth."""
    facts = fixture_facts()
    report = rebuild(Recording(recording_files([FIXTURE])), service_config(tmp_path / "store"))
    assert report.problems == [] and report.connections == 3
    assert stored_rows(tmp_path / "store").height == facts.stored
    assert truth_problems(facts, tmp_path / "store") == []


async def test_the_fixture_can_be_remade(tmp_path: Path) -> None:
    """make_fixture_recording records a run that rebuilds to the truth; with
    CANDLES_UPDATE_FIXTURES=1 it replaces the checked-in fixture."""
    folder = FIXTURE if os.environ.get(UPDATE_ENV) == "1" else tmp_path / "fixture"
    facts = await make_fixture_recording(folder, tmp_path / "work")
    assert fixture_facts(folder) == facts
    report = rebuild(Recording(recording_files([folder])), service_config(tmp_path / "rebuilt"))
    assert report.problems == []
    assert stored_rows(tmp_path / "rebuilt").height == facts.stored
    assert truth_problems(facts, tmp_path / "rebuilt") == []
