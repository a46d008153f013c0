"""The recording format and its reader: order, positions, and every kind of damage named."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import zstandard

from pipeline.recording import (
    CLOSED,
    FORMAT,
    OPENED,
    Damage,
    Problem,
    Record,
    RecordError,
    Recording,
    RecordingError,
    recording_files,
    usable_records,
)
from pipeline.recording.format import (
    GAP,
    Header,
    decode_header,
    decode_record,
    encode_header,
    encode_record,
    file_name,
)
from tests.recording.files import (
    T0,
    Lines,
    block_offsets,
    connection_lines,
    decompressed,
    read_all,
    records,
    write_session,
)


def test_a_record_line_round_trips_and_bad_lines_are_named() -> None:
    """encode_record/decode_record keep every field; a line that is not a record says why."""
    line = encode_record(T0, 42, 3, OPENED, "wss://host/", a=2)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert decode_record(line) == Record(T0, 42, 3, OPENED, "wss://host/", 2, None)
    frame = '{"type":"FEED_DATA","channel":1,"data":["Candle",["A\\"B"]]}\n'
    assert decode_record(encode_record(1, 2, 1, "<", frame)).f == frame  # escaped, exact
    with pytest.raises(RecordError, match="not JSON"):
        decode_record(b"{oops")
    with pytest.raises(RecordError, match="lacks one of the record fields"):
        decode_record(b'{"t":1}')
    with pytest.raises(RecordError, match="kind 'x'"):
        decode_record(b'{"t":1,"m":2,"c":3,"d":"x","f":""}')


def test_the_header_names_format_and_version() -> None:
    """A header round-trips; another format or version is refused with what this reads."""
    header = Header("ab" * 16, 0, T0, T0 + 1, "candle-pipeline 0.1.0", {"source": "test"})
    line = encode_header(header)
    assert orjson.loads(line)["format"] == FORMAT
    assert decode_header(line) == header
    newer = line.replace(b'"version":1', b'"version":2')
    with pytest.raises(RecordError, match="format version 2; this candle-pipeline reads version 1"):
        decode_header(newer)
    with pytest.raises(RecordError, match="not a DXLink recording"):
        decode_header(b'{"format":"something-else","version":1}')
    assert file_name(T0, "ab" * 16, 7) == "dxlink-20251103T150000Z-abababab-0007.jsonl.zst"


def test_records_come_back_in_order_with_positions(tmp_path: Path) -> None:
    """Blocks are read in order; reading from a record's position yields the same rest."""
    lines = Lines()
    blocks = [connection_lines(lines, 1, 3), connection_lines(lines, 2, 5)]
    writer = write_session(tmp_path, blocks)
    recording = Recording(writer.paths)
    entries = list(recording.entries())
    assert [e.item for e in entries] == [decode_record(x) for b in blocks for x in b]
    assert {e.session for e in entries} == {writer.session}
    middle = entries[7]
    assert [e.item for e in recording.entries(middle.position)] == [e.item for e in entries[7:]]


def test_records_beside_the_header_in_its_block_are_read_from_any_position(tmp_path: Path) -> None:
    """Another writer may put records in the header's block: they are read, and reading from
    the position of one of them yields it and the rest."""
    lines = Lines()
    records_ = connection_lines(lines, 1, 3)
    header = encode_header(Header("ab" * 16, 0, T0, T0, "another tool 1.0"))
    path = tmp_path / "other.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(header + b"".join(records_)))
    recording = Recording([path])
    entries = list(recording.entries())
    assert [e.item for e in entries] == [decode_record(x) for x in records_]
    assert entries[2].position.line == 3
    assert [e.item for e in recording.entries(entries[2].position)] == [e.item for e in entries[2:]]


def test_files_of_a_session_are_ordered_whatever_order_they_are_given(tmp_path: Path) -> None:
    """Rotated files are read in their numbered order; one header per file is skipped."""
    lines = Lines()
    blocks = [connection_lines(lines, n, 4) for n in range(1, 6)]
    writer = write_session(tmp_path, blocks, rotate_bytes=1)  # a new file before each block
    assert len(writer.paths) == 5
    items = read_all(reversed(writer.paths))
    assert items == [decode_record(x) for b in blocks for x in b]
    assert recording_files([tmp_path]) == sorted(writer.paths)


def test_a_missing_file_is_damage_and_its_connection_is_cut(tmp_path: Path) -> None:
    """Files 0 and 2 without 1: the gap is named; what follows it mid-connection is not used."""
    lines = Lines()
    first = connection_lines(lines, 1, 2, close=False)
    writer = write_session(
        tmp_path, [first, [lines.line(1, "<", "{}")], connection_lines(lines, 2, 1)], rotate_bytes=1
    )
    given = [writer.paths[0], writer.paths[2]]
    items = read_all(given)
    damage = [i for i in items if isinstance(i, Damage)]
    assert len(damage) == 1 and "files 1..1 of session" in damage[0].problem
    assert damage[0].path == writer.paths[2]
    problems: list[Problem] = []
    used = [u.record for u in usable_records(Recording(given).entries(), problems.append)]
    assert [r.d for r in used if r.c == 1][-1] == CLOSED  # cut at the gap
    assert [r.c for r in used].count(2) == 4  # the next connection is whole
    assert "connection 1 of session" in str(problems[0])


def test_a_truncated_file_keeps_everything_before_its_last_block(tmp_path: Path) -> None:
    """A writer killed mid-block: the earlier blocks read, the cut block is named with its
    offset, and its connection ends there (a made-up closing says why)."""
    lines = Lines()
    blocks = [connection_lines(lines, 1, 3, close=False), [lines.line(1, "<", "{}")] * 50]
    writer = write_session(tmp_path, blocks)
    (path,) = writer.paths
    last = block_offsets(path)[-1]
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size - (size - last) // 2)
    items = read_all([path])
    assert list(records(items)) == [decode_record(x) for x in blocks[0]]
    assert isinstance(items[-1], Damage)
    assert items[-1].path == path and items[-1].offset == last
    assert "the last block is cut short" in items[-1].problem
    assert f"{path}: the last block is cut short" in str(items[-1])
    problems: list[Problem] = []
    used = [u.record for u in usable_records(Recording([path]).entries(), problems.append)]
    assert used[-1].d == CLOSED and "recording damaged" in used[-1].f
    assert f"(at byte {last:,})" in str(problems[0]) and "connection 1" in str(problems[0])


def test_a_corrupt_block_is_skipped_and_reading_resumes_after_it(tmp_path: Path) -> None:
    """A flipped byte fails the block's checksum: named with its offset; later blocks read."""
    lines = Lines()
    blocks = [connection_lines(lines, n, 20) for n in range(1, 5)]
    writer = write_session(tmp_path, blocks)
    (path,) = writer.paths
    offsets = block_offsets(path)  # header, then one block per connection
    data = bytearray(path.read_bytes())
    middle = (offsets[2] + offsets[3]) // 2
    data[middle] ^= 0xFF
    path.write_bytes(bytes(data))
    items = read_all([path])
    (damage,) = [i for i in items if isinstance(i, Damage)]
    assert damage.offset == offsets[2]
    assert "corrupt block" in damage.problem
    assert f"reading resumes at the next intact block, byte {offsets[3]:,}" in damage.problem
    kept = list(records(items))
    assert {r.c for r in kept} == {1, 3, 4}
    assert kept == [decode_record(x) for n in (0, 2, 3) for x in blocks[n]]


def test_unusable_files_are_named_and_the_rest_is_read(tmp_path: Path) -> None:
    """Another version, not zstd, empty: each listed with why; the good file still reads."""
    lines = Lines()
    good = write_session(tmp_path / "good", [connection_lines(lines, 1, 2)]).paths[0]
    header = encode_header(Header("cd" * 16, 0, T0, T0, "candle-pipeline 9.0"))
    newer = tmp_path / "newer.jsonl.zst"
    newer.write_bytes(
        zstandard.ZstdCompressor().compress(header.replace(b'"version":1', b'"version":2'))
    )
    text = tmp_path / "plain.jsonl.zst"
    text.write_text('{"t":1}\n')
    empty = tmp_path / "empty.jsonl.zst"
    empty.touch()
    recording = Recording([newer, text, good, empty])
    assert [f.path for f in recording.files] == [good]
    problems = {d.path.name: d for d in recording.unusable}
    assert (
        "format version 2; this candle-pipeline reads version 1 only"
        in problems["newer.jsonl.zst"].problem
    )
    assert problems["plain.jsonl.zst"].problem == "not a zstd-compressed recording"
    assert problems["empty.jsonl.zst"].problem == "is empty"
    assert all(d.offset == 0 for d in recording.unusable)
    assert str(problems["newer.jsonl.zst"]).startswith(f"{newer}: format version 2")
    with pytest.raises(
        RecordingError, match=r"no usable recording: .*newer\.jsonl\.zst: format version 2"
    ):
        Recording([newer])
    with pytest.raises(RecordingError, match="no such file or directory"):
        recording_files([tmp_path / "nowhere"])


def test_a_gap_record_cuts_the_open_connection(tmp_path: Path) -> None:
    """A gap (the recorder fell behind): the open connection ends there, the next is whole."""
    lines = Lines()
    block = [
        *connection_lines(lines, 1, 2, close=False),
        lines.line(
            0, GAP, "3 records (300 bytes) were dropped here: the recorder's queue was full"
        ),
        lines.line(1, "<", "{}"),
        *connection_lines(lines, 2, 2),
    ]
    writer = write_session(tmp_path, [block])
    problems: list[Problem] = []
    used = [u.record for u in usable_records(Recording(writer.paths).entries(), problems.append)]
    assert [(r.c, r.d) for r in used][4] == (1, CLOSED)
    assert [r.c for r in used[5:]] == [2] * 5
    assert "a gap (3 records (300 bytes) were dropped here" in str(problems[0])
    assert "connection 1 of session" in str(problems[0])


def test_a_recording_reads_back_with_zstd_alone(tmp_path: Path) -> None:
    """Any zstd reader sees the lines: the header first, then one JSON record per line."""
    lines = Lines()
    block = connection_lines(lines, 1, 2)
    (path,) = write_session(tmp_path, [block]).paths
    text = decompressed(path).decode().splitlines()
    assert orjson.loads(text[0])["format"] == FORMAT
    assert [line.encode() + b"\n" for line in text[1:]] == block
