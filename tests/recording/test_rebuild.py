"""``candles rebuild``: a store from a recording, and damaged recordings used up to the damage.

The recordings are the checked-in fixture (real frames of two simulator runs), re-cut into
small blocks so a test can damage one block of real data.
"""

from __future__ import annotations

from pathlib import Path

import zstandard
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.ingest import rebuild
from pipeline.recording import Recording, recording_files
from pipeline.recording.format import Header, encode_header
from pipeline.sharding import SINGLE
from pipeline.store import WriterLock
from tests.helpers.recording import FIXTURE, differences, fixture_facts, stored_rows
from tests.helpers.service import service_config
from tests.recording.files import T0, block_offsets, reblock


def rebuilt(files: list[Path], store: Path) -> list[str]:
    """Rebuild ``store`` from ``files``; return the problems reported."""
    return rebuild(Recording(files), service_config(store)).problems


def subset_problems(smaller: Path, larger: Path) -> list[str]:
    """Rows of ``smaller`` that ``larger`` lacks or holds with other values."""
    return [
        p
        for p in differences(stored_rows(smaller), stored_rows(larger))
        if not p.startswith("extra")
    ]


def test_a_truncated_recording_gives_what_its_intact_part_holds(tmp_path: Path) -> None:
    """The last file cut mid-block (a killed writer): the rebuild equals one from the same
    files cut cleanly before that block, and the problem names the file and the offset."""
    files = reblock(recording_files([FIXTURE]), tmp_path / "rec", per_block=8)
    last = files[-1]
    offsets = block_offsets(last)
    cut_at = offsets[len(offsets) // 2]
    data = last.read_bytes()
    clean = tmp_path / "clean" / last.name
    clean.parent.mkdir()
    clean.write_bytes(data[:cut_at])
    last.write_bytes(data[: cut_at + (offsets[len(offsets) // 2 + 1] - cut_at) // 2])
    problems = rebuilt(files, tmp_path / "damaged")
    assert rebuilt([*files[:-1], clean], tmp_path / "reference") == []
    assert differences(stored_rows(tmp_path / "reference"), stored_rows(tmp_path / "damaged")) == []
    (problem,) = problems
    assert problem.startswith(f"{last}: the last block is cut short")
    assert f"(at byte {cut_at:,})" in problem and "connection 1 of session" in problem


def test_a_corrupt_block_costs_only_the_rest_of_its_connection(tmp_path: Path) -> None:
    """A corrupt block inside the first connection: what came before it is stored, that
    connection's later frames are not, the later connections are; nothing differs from the
    whole recording's rebuild, and the problem names the file and the offset."""
    files = reblock(recording_files([FIXTURE]), tmp_path / "rec", per_block=6)
    assert rebuilt(files, tmp_path / "whole") == []
    first = files[0]
    damaged_at = block_offsets(first)[3]  # inside connection 1's snapshot
    data = bytearray(first.read_bytes())
    data[damaged_at + 20] ^= 0xFF
    first.write_bytes(bytes(data))
    problems = rebuilt(files, tmp_path / "damaged")
    assert any(
        p.startswith(f"{first}: a corrupt block") and f"(at byte {damaged_at:,})" in p
        for p in problems
    )
    assert any("connection 1 of session" in p and "not used" in p for p in problems)
    damaged, whole = stored_rows(tmp_path / "damaged"), stored_rows(tmp_path / "whole")
    assert 0 < damaged.height <= whole.height
    assert subset_problems(tmp_path / "damaged", tmp_path / "whole") == []
    # The later connections (a reconnect, then a restart) resumed and stored their candles.
    assert damaged["time"].max() == whole["time"].max()


def test_the_cli_rebuilds_and_says_when_parts_were_left_out(tmp_path: Path) -> None:
    """Exit 0 with a summary for a whole recording; exit 1 naming an unusable file (another
    format version) while still rebuilding from the rest."""
    runner = CliRunner()
    store = tmp_path / "store"
    result = runner.invoke(
        cli, ["rebuild", "--from-recording", str(FIXTURE), "--store", str(store)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("rebuilt from 2 files (2 sessions, 3 connections, ")
    assert stored_rows(store).height == fixture_facts().stored
    newer = tmp_path / "newer.jsonl.zst"
    header = encode_header(Header("ef" * 16, 0, T0, T0, "candle-pipeline 9.0"))
    newer.write_bytes(
        zstandard.ZstdCompressor().compress(header.replace(b'"version":1', b'"version":2'))
    )
    files = [str(p) for p in recording_files([FIXTURE])]
    argv = [
        "rebuild",
        "--from-recording",
        files[0],
        *files[1:],
        str(newer),
        "--store",
        str(tmp_path / "again"),
    ]
    result = runner.invoke(cli, argv)
    assert result.exit_code == 1
    assert (
        f"! {newer}: format version 2; this candle-pipeline reads version 1 only" in result.output
    )
    assert "1 parts of the recording were left out" in result.output
    assert stored_rows(tmp_path / "again").height == fixture_facts().stored


def test_rebuild_refuses_a_store_another_process_writes(tmp_path: Path) -> None:
    """A store held by a running ingest is refused with a message, nothing written."""
    store = tmp_path / "store"
    lock = WriterLock(store, SINGLE)
    lock.acquire()
    try:
        result = CliRunner().invoke(
            cli, ["rebuild", "--from-recording", str(FIXTURE), "--store", str(store)]
        )
    finally:
        lock.release()
    assert result.exit_code == 1
    assert "Error:" in result.output and "ingest" in result.output
