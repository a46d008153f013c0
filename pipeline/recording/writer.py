"""Writing one session's blocks into rotating, compressed files (synchronous).

:class:`SessionWriter` is what the recorder's thread calls: each :meth:`~SessionWriter.write`
compresses one block of whole lines into one zstd frame (content size and checksum included)
and appends it to the current file; a file that reached ``rotate_bytes`` or
``rotate_seconds`` is closed (and synced to disk) first, and the next one starts with its
header block. Files are created exclusively (an existing file is never overwritten).

Why zstd (README, dependencies): its frames are independent (a truncated file loses one
block), its files open with the ``zstd`` tool, Python's ``zstandard`` package or
``compression.zstd`` (Python 3.14), and it compresses DXLink's candle JSON several-fold at a
fraction of the CPU zlib needs for less. Level 1 rather than zstd's default 3: the recorder's
CPU is what competes with a backfill, and level 3 buys only a few per cent fewer bytes for
it. The figures are in benchmarks/README.md.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import uuid
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from pipeline.recording.format import Header, encode_header, file_name

__all__ = ["DEFAULT_LEVEL", "Opener", "SessionWriter", "exclusive_open"]

DEFAULT_LEVEL = 1
"""zstd's fastest standard level: see the module docstring and benchmarks/README.md."""

Opener = Callable[[Path], BinaryIO]
"""Opens a new file for writing (tests hand in one that fails like a full disk)."""


def _writer_name() -> str:
    """``candle-pipeline <version>`` from the installed package's metadata."""
    try:
        return f"candle-pipeline {metadata.version('candle-pipeline')}"
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "candle-pipeline"


def exclusive_open(path: Path) -> BinaryIO:
    """Create ``path`` for writing; fail if it exists."""
    return path.open("xb")


class SessionWriter:
    """Writes a session's blocks into rotating files (see the module docstring).

    Args:
        directory: Where the files go (created if missing).
        rotate_bytes: Start a new file once the current one holds this many bytes.
        rotate_seconds: Start a new file once the current one is this old.
        meta: Facts about the session for every header (never secrets).
        wall_clock_ms: The wall clock, ms (the session's start and each file's creation).
        level: zstd compression level.
        opener: Creates each file.
        monotonic: Seconds, for the files' age.
    """

    def __init__(
        self,
        directory: Path,
        *,
        rotate_bytes: int,
        rotate_seconds: float,
        meta: Mapping[str, Any] | None = None,
        wall_clock_ms: Callable[[], int],
        level: int = DEFAULT_LEVEL,
        opener: Opener = exclusive_open,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if rotate_bytes < 1 or rotate_seconds <= 0:
            raise ValueError("rotate_bytes and rotate_seconds must be positive")
        self.directory = directory
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.meta = dict(meta or {})
        self.session = uuid.uuid4().hex
        """The session's id: the same in every file's header."""
        self.started = wall_clock_ms()
        self.paths: list[Path] = []
        """Every file started so far, in order."""
        self._wall_clock_ms = wall_clock_ms
        self._monotonic = monotonic
        self._opener = opener
        self._compressor = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=True
        )
        self._file: BinaryIO | None = None
        self._file_bytes = 0
        self._opened_at = 0.0
        self._next_number = 0

    def __repr__(self) -> str:
        return (
            f"SessionWriter({self.directory}, session={self.session[:8]}, files={len(self.paths)})"
        )

    @property
    def current(self) -> Path | None:
        """The file being written, or None between files."""
        return self.paths[-1] if self._file is not None else None

    def open(self) -> Path:
        """Start the next file (closing the current one) and write its header block.

        Raises:
            OSError: the directory or the file cannot be created or written.
        """
        self.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        number = self._next_number
        path = self.directory / file_name(self.started, self.session, number)
        self._next_number += 1  # a failed file's number is not reused: it may exist in part
        handle = self._opener(path)
        self.paths.append(path)
        self._file, self._file_bytes, self._opened_at = handle, 0, self._monotonic()
        header = Header(
            session=self.session,
            file=number,
            started=self.started,
            created=self._wall_clock_ms(),
            writer=_writer_name(),
            meta=self.meta,
        )
        self._append(self._compressor.compress(encode_header(header)))
        return path

    def write(self, content: bytes) -> int:
        """Compress ``content`` (whole lines) as one block and append it; return its size.

        Opens a file first when none is open, or when the current one is due for rotation.

        Raises:
            OSError: writing failed; the file is abandoned (the next write starts a new one).
        """
        if self._file is None or self._due():
            self.open()
        return self._append(self._compressor.compress(content))

    def close(self) -> None:
        """Sync and close the current file (idempotent).

        Raises:
            OSError: the final flush or sync failed (the file is closed regardless).
        """
        handle, self._file = self._file, None
        if handle is None:
            return
        try:
            handle.flush()
            with contextlib.suppress(AttributeError, io.UnsupportedOperation):
                os.fsync(handle.fileno())
        finally:
            handle.close()

    def abandon(self) -> None:
        """Drop the current file after a failure, ignoring further errors."""
        with contextlib.suppress(OSError):
            self.close()
        self._file = None

    def _due(self) -> bool:
        return (
            self._file_bytes >= self.rotate_bytes
            or self._monotonic() - self._opened_at >= self.rotate_seconds
        )

    def _append(self, block: bytes) -> int:
        handle = self._file
        assert handle is not None
        try:
            handle.write(block)
            handle.flush()  # to the OS: a killed process loses no written block
        except OSError:
            self.abandon()
            raise
        self._file_bytes += len(block)
        return len(block)
