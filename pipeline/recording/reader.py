"""Reading recordings: files in session order, records with their positions, damage named.

A :class:`Recording` opens the files it is given, reads each header, and orders them by
session (start time) and file number. :meth:`Recording.entries` then yields every record
with its :class:`Position` and session, from the start or from a position (the replay server
serves one recorded connection at a time from where it begins).

Damage never stops the reading and never passes silently: it is yielded in place as a
:class:`Damage` naming the file and the byte offset, after everything before it:

* a file cut short (the writer was killed while writing a block): its last, partial block;
* a corrupt block (a bad checksum, undecodable data) or a line that is not a record: from
  there to the next intact block, which the reader finds by scanning for the zstd magic
  number, so later blocks and files stay usable;
* a missing file of a session (files 0 and 2 given, 1 not).

What was in the damaged part is unknown, so a consumer must treat the connection that was
open there as broken: :func:`pipeline.recording.connection_records` skips its remaining
records. A file that cannot be read at all (not a recording, another format version, not
zstd) is listed in :attr:`Recording.unusable` instead, also as a :class:`Damage`.
"""

from __future__ import annotations

import mmap
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import zstandard

from pipeline.recording.format import (
    FILE_SUFFIX,
    Header,
    Record,
    RecordError,
    decode_header,
    decode_record,
)

__all__ = [
    "Damage",
    "Entry",
    "Position",
    "Recording",
    "RecordingError",
    "read_blocks",
    "recording_files",
]

_MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame's first four bytes (RFC 8878 §3.1.1)
_FEED = 1 << 18  # compressed bytes handed to the decompressor at a time


class RecordingError(Exception):
    """No file of a recording could be used; the message names each and why."""


@dataclass(frozen=True, slots=True)
class Damage:
    """A part of a recording that cannot be read (see the module docstring)."""

    path: Path
    offset: int
    """Byte offset in the file where the damage starts."""
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem} (at byte {self.offset:,})"


class Position(NamedTuple):
    """Where a record sits: file (index in :attr:`Recording.files`), block offset, line."""

    file: int
    block: int
    line: int


class Entry(NamedTuple):
    """A record (or damage) with its position and the session it belongs to."""

    position: Position
    session: str
    item: Record | Damage


@dataclass(frozen=True, slots=True)
class RecordingFile:
    """One readable file: where it is and its header."""

    path: Path
    header: Header


class _Block(NamedTuple):
    offset: int
    content: bytes


def read_blocks(path: Path, start: int = 0) -> Generator[_Block | Damage, None, None]:
    """Every intact block of ``path`` from byte ``start``, and the damage between them."""
    with path.open("rb") as handle:
        size = path.stat().st_size
        if size <= start:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield from _scan(path, memoryview(mapped), start)


def _scan(path: Path, view: memoryview, offset: int) -> Iterator[_Block | Damage]:
    decompressor = zstandard.ZstdDecompressor()
    size = len(view)
    try:
        while offset < size:
            try:
                end, content = _frame(decompressor, view, offset)
            except _Truncated as cut:
                following = _next_frame(decompressor, view, offset + 1)
                if following is None:
                    yield Damage(
                        path,
                        offset,
                        f"the last block is cut short: {cut.present:,} of its bytes are there "
                        "(the writer stopped while writing it); what it held is lost",
                    )
                    return
                yield _corrupt(path, offset, "a block with a bad frame length", following)
                offset = following
                continue
            except (zstandard.ZstdError, _NotZstd) as exc:
                following = _next_frame(decompressor, view, offset + 1)
                yield _corrupt(path, offset, f"a corrupt block ({exc})", following)
                if following is None:
                    return
                offset = following
                continue
            yield _Block(offset, content)
            offset = end
    finally:
        view.release()


def _corrupt(path: Path, offset: int, what: str, following: int | None) -> Damage:
    if following is None:
        return Damage(path, offset, f"{what}; nothing after it in the file is readable")
    return Damage(
        path, offset, f"{what}; reading resumes at the next intact block, byte {following:,}"
    )


class _Truncated(Exception):
    def __init__(self, present: int) -> None:
        self.present = present


class _NotZstd(Exception):
    pass


def _frame(
    decompressor: zstandard.ZstdDecompressor, view: memoryview, offset: int
) -> tuple[int, bytes]:
    """(end offset, content) of the zstd frame at ``offset``.

    Raises:
        _NotZstd: no frame starts there.
        _Truncated: the file ends inside the frame.
        zstandard.ZstdError: the frame is corrupt (bad checksum, bad data).
    """
    if bytes(view[offset : offset + 4]) != _MAGIC:
        raise _NotZstd("no zstd frame starts here")
    stream = decompressor.decompressobj()
    parts: list[bytes] = []
    at = offset
    size = len(view)
    while True:
        chunk = view[at : at + _FEED]
        if not len(chunk):
            raise _Truncated(at - offset)
        parts.append(stream.decompress(chunk))
        at += len(chunk)
        if stream.eof:
            return at - len(stream.unused_data), b"".join(parts)
        if at >= size:
            raise _Truncated(at - offset)


def _next_frame(
    decompressor: zstandard.ZstdDecompressor, view: memoryview, start: int
) -> int | None:
    """The offset of the next intact frame at or after ``start``, or None."""
    data = view.obj
    assert isinstance(data, mmap.mmap)
    at = start
    while (at := data.find(_MAGIC, at)) >= 0:
        try:
            _frame(decompressor, view, at)
        except (zstandard.ZstdError, _Truncated, _NotZstd):
            at += 1
            continue
        return at
    return None


def recording_files(paths: Iterable[Path | str]) -> list[Path]:
    """The files named, a directory standing for every ``*.jsonl.zst`` in it (sorted).

    Raises:
        RecordingError: a path does not exist, or a directory holds no recording file.
    """
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(path.glob(f"*{FILE_SUFFIX}"))
            if not found:
                raise RecordingError(f"{path}: no recording files (*{FILE_SUFFIX}) in it")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise RecordingError(f"{path}: no such file or directory")
    if not files:
        raise RecordingError("no recording files given")
    return files


class Recording:
    """The files of one or more recorded sessions, ordered, ready to read.

    Args:
        paths: Recording files in any order (``dxlink-*.jsonl.zst``); several sessions may be
            mixed. Files that cannot be used at all are listed in :attr:`unusable`.

    Raises:
        RecordingError: none of the files can be used (the message names each and why).
    """

    def __init__(self, paths: Iterable[Path | str]) -> None:
        self.unusable: list[Damage] = []
        """Files skipped entirely: not a recording, another format version, unreadable."""
        files: list[RecordingFile] = []
        given = {Path(p).resolve(): Path(p) for p in paths}  # each file once
        for path in given.values():
            try:
                files.append(RecordingFile(path, _read_header(path)))
            except _Unusable as exc:
                self.unusable.append(exc.damage)
        if not files:
            reasons = "; ".join(str(d) for d in self.unusable) or "no files were given"
            raise RecordingError(f"no usable recording: {reasons}")
        files.sort(key=lambda f: (f.header.started, f.header.session, f.header.file, f.path))
        self.files: list[RecordingFile] = files
        """The readable files, in session and file order."""

    @property
    def sessions(self) -> list[str]:
        """The sessions, in the order they started."""
        return list(dict.fromkeys(f.header.session for f in self.files))

    def entries(self, start: Position | None = None) -> Iterator[Entry]:
        """Every record (and damage) from ``start`` (default: the beginning) to the end."""
        first = start or Position(0, 0, 0)
        for index in range(first.file, len(self.files)):
            file = self.files[index]
            session = file.header.session
            if index == first.file and start is not None:
                block_from, line_from = first.block, first.line
            else:
                block_from, line_from = 0, 0
                previous = self.files[index - 1].header if index else None
                gap = _missing_files(previous, file.header)
                if gap:
                    yield Entry(Position(index, 0, 0), session, Damage(file.path, 0, gap))
            yield from self._file_entries(index, file, block_from, line_from)

    def _file_entries(
        self, index: int, file: RecordingFile, block_from: int, line_from: int
    ) -> Iterator[Entry]:
        session = file.header.session
        for block in read_blocks(file.path, block_from):
            if isinstance(block, Damage):
                yield Entry(Position(index, block.offset, 0), session, block)
                continue
            lines = block.content.split(b"\n")
            if lines[-1]:
                problem = "a block whose last line is unfinished (no newline)"
                position = Position(index, block.offset, len(lines) - 1)
                yield Entry(position, session, Damage(file.path, block.offset, problem))
            first = line_from if block.offset == block_from else 0
            if block.offset == 0:
                first = max(first, 1)  # line 0 of the file is the header, read on opening
            for number in range(first, len(lines) - 1):
                try:
                    item: Record | Damage = decode_record(lines[number])
                except RecordError as exc:
                    item = Damage(file.path, block.offset, f"line {number + 1} of a block: {exc}")
                yield Entry(Position(index, block.offset, number), session, item)


class _Unusable(Exception):
    def __init__(self, damage: Damage) -> None:
        self.damage = damage


def _read_header(path: Path) -> Header:
    blocks = read_blocks(path)
    try:
        first = next(blocks, None)
    except OSError as exc:
        raise _Unusable(Damage(path, 0, f"cannot be read: {exc.strerror or exc}")) from None
    except ValueError as exc:  # mmap of an empty or special file
        raise _Unusable(Damage(path, 0, f"cannot be read: {exc}")) from None
    finally:
        blocks.close()
    if first is None:
        raise _Unusable(Damage(path, 0, "is empty"))
    if isinstance(first, Damage):
        problem = "not a zstd-compressed recording" if first.offset == 0 else first.problem
        raise _Unusable(Damage(path, 0, problem))
    if first.offset != 0:
        raise _Unusable(Damage(path, 0, "not a zstd-compressed recording"))
    line = first.content.split(b"\n", 1)[0]
    try:
        return decode_header(line)
    except RecordError as exc:
        raise _Unusable(Damage(path, 0, str(exc))) from None


def _missing_files(previous: Header | None, header: Header) -> str | None:
    """Why records are missing before this file (a session's files skip a number), or None."""
    if previous is not None and previous.session == header.session:
        if header.file == previous.file + 1:
            return None
        if header.file == previous.file:
            return f"two files claim to be file {header.file} of session {header.session[:8]}"
        missing = f"{previous.file + 1}..{header.file - 1}"
        return f"files {missing} of session {header.session[:8]} are missing"
    if header.file != 0:
        return f"files 0..{header.file - 1} of session {header.session[:8]} are missing"
    return None
