"""The recorder: every frame of every DXLink connection to disk, never slowing the reader.

:class:`Recorder` is the DXLink client's frame tap (:class:`pipeline.dxlink.client.FrameTap`):
the client calls :meth:`Recorder.connection` when a WebSocket opens, then the returned
:class:`RecordedConnection` with every frame received and sent and when the connection ends.
Each call only takes the clocks and appends to a queue (a lock, a list append): the socket
reader never waits for the disk.

A thread does the rest: decodes, redacts (:mod:`pipeline.recording.redact`), encodes lines,
gathers them into blocks of about ``block_bytes`` or ``flush_seconds`` of traffic, and hands
each block to the :class:`~pipeline.recording.writer.SessionWriter` (compress, append,
rotate).

Falling behind never costs the ingest anything:

* **queue full** (a slow disk, or more traffic than the thread compresses): new frames are
  dropped while the queue holds ``max_queue_bytes``; counted, logged once, and a gap record
  (``"d": "!"``) marks the place in the recording, so no reader mistakes it for a whole one;
* **write failure** (a full disk, a vanished directory): the block is dropped and counted,
  the failure is logged once per episode, recording retries with a new file every
  ``retry_seconds``, and the first block written again starts with a gap record saying what
  was lost and why.

``stats`` (:class:`RecorderStats`) is what ``/metrics`` exports as ``candles_recording_*``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from pipeline.recording.format import (
    CLOSED,
    GAP,
    OPENED,
    RECEIVED,
    REPLACED,
    SENT,
    encode_record,
)
from pipeline.recording.redact import Redactor
from pipeline.recording.writer import DEFAULT_LEVEL, Opener, SessionWriter, exclusive_open

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_ROTATE_BYTES",
    "DEFAULT_ROTATE_SECONDS",
    "RecordedConnection",
    "Recorder",
    "RecorderStats",
]

logger = logging.getLogger("pipeline.recording")

MIB: Final = 2**20
DEFAULT_ROTATE_BYTES: Final = 64 * MIB
DEFAULT_ROTATE_SECONDS: Final = 3600.0
DEFAULT_MAX_QUEUE_BYTES: Final = 64 * MIB
DEFAULT_BLOCK_BYTES: Final = MIB
"""Uncompressed bytes per block: what a killed writer can lose at most (with the time bound)."""
DEFAULT_FLUSH_SECONDS: Final = 1.0
"""The longest a recorded frame waits in memory before its block is written."""
DEFAULT_RETRY_SECONDS: Final = 10.0

_Item = tuple[int, int, int, str, "str | bytes", "int | None"]


@dataclass(slots=True)
class RecorderStats:
    """What the recorder did so far (``/metrics``: ``candles_recording_*``)."""

    records: int = 0
    """Records written: frames, connection openings and endings, gap marks."""
    frames_bytes: int = 0
    """Bytes of the frames written, before compression."""
    bytes_written: int = 0
    """Compressed bytes written to files."""
    files: int = 0
    """Files started."""
    dropped_frames: int = 0
    """Frames (and other records) not recorded: queue full or a write failure."""
    dropped_bytes: int = 0
    gaps: int = 0
    """Gap records written (each marks one stretch of dropped records)."""
    write_failures: int = 0
    failing: bool = False
    """True while writing fails (recording is retried every ``retry_seconds``)."""
    last_error: str | None = None


class RecordedConnection:
    """One connection's tap (:class:`pipeline.dxlink.client.ConnectionTap`)."""

    __slots__ = ("_put", "number")

    def __init__(self, number: int, put: Callable[..., None]) -> None:
        self.number = number
        """The connection's number in this session (from 1)."""
        self._put = put

    def __repr__(self) -> str:
        return f"RecordedConnection({self.number})"

    def received(self, frame: str | bytes) -> None:
        """A frame from the server (called by the client's reader, must not block)."""
        self._put(self.number, RECEIVED, frame)

    def sent(self, frame: str) -> None:
        """A frame the client sent."""
        self._put(self.number, SENT, frame)

    def closed(self, reason: str) -> None:
        """The connection ended, and why."""
        self._put(self.number, CLOSED, reason)


class Recorder:
    """Records DXLink sessions into ``directory`` (see the module docstring).

    Args:
        directory: Where the session's files go (created if missing).
        rotate_bytes: Start a new file after this many compressed bytes.
        rotate_seconds: Start a new file after this many seconds.
        max_queue_bytes: Frame bytes waiting for the thread before new frames are dropped.
        block_bytes: Uncompressed bytes per block.
        flush_seconds: Longest a frame waits before its block is written.
        retry_seconds: After a write failure, how long until recording is tried again.
        level: zstd compression level.
        meta: Facts about the session for each file's header (never secrets).
        clock: The client's wall clock (Unix seconds) for each record's ``t``.
        opener: Creates each file (tests: a disk that fills up).
        monotonic: Seconds, for block age and retries (not the records' ``m``, which is
            always ``time.monotonic_ns``).
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        rotate_bytes: int = DEFAULT_ROTATE_BYTES,
        rotate_seconds: float = DEFAULT_ROTATE_SECONDS,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        level: int = DEFAULT_LEVEL,
        meta: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        opener: Opener = exclusive_open,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (
            ("max_queue_bytes", max_queue_bytes),
            ("block_bytes", block_bytes),
            ("flush_seconds", flush_seconds),
            ("retry_seconds", retry_seconds),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.directory = Path(directory)
        self.stats = RecorderStats()
        self._writer = SessionWriter(
            self.directory,
            rotate_bytes=rotate_bytes,
            rotate_seconds=rotate_seconds,
            meta=meta,
            wall_clock_ms=lambda: time.time_ns() // 1_000_000,
            level=level,
            opener=opener,
            monotonic=monotonic,
        )
        self._monotonic = monotonic
        self._max_queue_bytes = max_queue_bytes
        self._block_bytes = block_bytes
        self._flush_seconds = flush_seconds
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._redact = Redactor()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: list[_Item] = []
        self._queued_bytes = 0
        self._unmarked = [0, 0]  # records / bytes dropped since the last gap record
        self._closing = False
        self._syncs: list[threading.Event] = []
        self._connections = 0
        self._thread: threading.Thread | None = None
        # The thread's own state.
        self._block: list[bytes] = []
        self._block_size = 0
        self._block_records = 0
        self._block_frame_bytes = 0
        self._block_started = 0.0
        self._first_of_block: tuple[int, int] | None = None
        self._lost = [0, 0]  # records / bytes lost to write failures, not yet marked
        self._retry_at = 0.0

    def __repr__(self) -> str:
        return f"Recorder({self.directory}, session={self.session[:8]})"

    @property
    def session(self) -> str:
        """The session's id (every file's header carries it)."""
        return self._writer.session

    @property
    def paths(self) -> list[Path]:
        """The files started so far."""
        return list(self._writer.paths)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Path:
        """Create the directory and the first file, then start the thread.

        Returns:
            The first file.

        Raises:
            OSError: the directory or the file cannot be created (nothing was started).
        """
        if self._thread is not None:
            raise RuntimeError("the recorder is already started")
        path = self._writer.open()
        self.stats.files = 1
        self._thread = threading.Thread(target=self._run, name="dxlink-recorder", daemon=True)
        self._thread.start()
        logger.info("recording DXLink sessions to %s", path)
        return path

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything queued so far; True once it is on disk (or dropped, counted)."""
        if self._thread is None or not self._thread.is_alive():
            return False
        done = threading.Event()
        with self._lock:
            self._syncs.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Write what is queued, close the file and stop the thread (idempotent).

        Returns:
            True when the thread finished within ``timeout`` (a hung disk may keep it).
        """
        with self._lock:
            self._closing = True
        self._wake.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # ------------------------------------------------------------------ the client's tap

    def connection(
        self, url: str, *, attempt: int, secrets: tuple[str, ...] = ()
    ) -> RecordedConnection:
        """A connection opened: record it and return its tap.

        Args:
            url: The server's URL without credentials or query.
            attempt: Failed attempts right before this one.
            secrets: Values to redact wherever they appear (the token it authenticates with).
        """
        for secret in secrets:
            self._redact.add_secret(secret)
        self._connections += 1
        number = self._connections
        self._put(number, OPENED, url, attempt)
        return RecordedConnection(number, self._put)

    def _put(
        self, connection: int, kind: str, frame: str | bytes, attempt: int | None = None
    ) -> None:
        t = int(self._clock() * 1000)
        m = time.monotonic_ns()
        size = len(frame)
        with self._lock:
            if self._closing:
                return
            if self._queued_bytes + size > self._max_queue_bytes and self._queued_bytes:
                # A full queue drops the new frame, never an older one: what is recorded
                # stays contiguous up to the gap record.
                first = self.stats.dropped_frames == 0
                self._unmarked[0] += 1
                self._unmarked[1] += size
                self.stats.dropped_frames += 1
                self.stats.dropped_bytes += size
            else:
                if self._unmarked[0]:
                    self._pending.append((t, m, 0, GAP, self._gap_text(), None))
                self._pending.append((t, m, connection, kind, frame, attempt))
                self._queued_bytes += size
                if self._queued_bytes < self._block_bytes or self._wake.is_set():
                    return
                first = False
        if first:
            logger.warning(
                "! recording falls behind the stream: frames are dropped while %d MiB wait for "
                "the disk (counted in candles_recording_dropped_frames_total; the recording "
                "marks each gap)",
                self._max_queue_bytes // 2**20,
            )
        elif not self._wake.is_set():
            self._wake.set()

    def _gap_text(self) -> str:
        frames, size = self._unmarked
        self._unmarked = [0, 0]
        self.stats.gaps += 1
        return f"{frames} records ({size:,} bytes) were dropped here: the recorder's queue was full"

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self._flush_seconds)
                self._wake.clear()
                with self._lock:
                    items, self._pending, self._queued_bytes = self._pending, [], 0
                    closing = self._closing
                    syncs, self._syncs = self._syncs, []
                for item in items:
                    self._add(item)
                if self._block and (
                    closing
                    or syncs
                    or self._monotonic() - self._block_started >= self._flush_seconds
                ):
                    self._write_block()
                for sync in syncs:
                    sync.set()
                if closing:
                    break
        except Exception:  # a bug here must never reach the ingest; say so loudly, once
            logger.exception("! the recorder stopped; nothing more is recorded")
            self.stats.failing = True
            self.stats.last_error = "the recorder's thread failed (see the log)"
        finally:
            self._finish()

    def _add(self, item: _Item) -> None:
        t, m, connection, kind, frame, attempt = item
        encoding = None
        if isinstance(frame, str):
            text = frame
        else:
            try:
                text = frame.decode()
            except UnicodeDecodeError:
                text, encoding = frame.decode(errors="replace"), REPLACED
        line = encode_record(t, m, connection, kind, self._redact(text), a=attempt, e=encoding)
        if not self._block:
            self._block_started = self._monotonic()
            self._first_of_block = (t, m)
        self._block.append(line)
        self._block_size += len(line)
        self._block_records += 1
        self._block_frame_bytes += len(frame)
        if self._block_size >= self._block_bytes:
            self._write_block()

    def _write_block(self) -> None:
        lines, records, first = self._block, self._block_records, self._first_of_block
        size = self._block_frame_bytes
        self._block, self._block_size, self._block_records = [], 0, 0
        self._block_frame_bytes = 0
        if self.stats.failing and self._monotonic() < self._retry_at:
            self._lose(records, size)
            return
        if self._lost[0] and first is not None:
            lost, lost_bytes = self._lost
            text = (
                f"{lost} records ({lost_bytes:,} bytes) were lost here: writing failed "
                f"({self.stats.last_error})"
            )
            lines.insert(0, encode_record(first[0], first[1], 0, GAP, text))
        try:
            written = self._writer.write(b"".join(lines))
        except OSError as exc:
            self._failed(exc)
            self._lose(records, size)
            return
        if self._lost[0]:
            self.stats.gaps += 1
            logger.warning(
                "recording resumed in %s after losing %d records",
                self._writer.current,
                self._lost[0],
            )
            self._lost = [0, 0]
        self.stats.failing = False
        self.stats.records += records
        self.stats.frames_bytes += size
        self.stats.bytes_written += written
        self.stats.files = len(self._writer.paths)

    def _failed(self, exc: OSError) -> None:
        self.stats.write_failures += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc.strerror or exc}"
        self._retry_at = self._monotonic() + self._retry_seconds
        self.stats.files = len(self._writer.paths)
        if not self.stats.failing:
            self.stats.failing = True
            logger.error(
                "! recording to %s failed (%s); frames are dropped (counted in "
                "candles_recording_dropped_frames_total) and recording is retried every %g s; "
                "ingest goes on",
                self.directory, self.stats.last_error, self._retry_seconds,
            )  # fmt: skip

    def _lose(self, records: int, size: int) -> None:
        self._lost[0] += records
        self._lost[1] += size
        self.stats.dropped_frames += records
        self.stats.dropped_bytes += size

    def _finish(self) -> None:
        try:
            self._writer.close()
        except OSError as exc:
            self._failed(exc)
        stats = self.stats
        lost = stats.dropped_frames
        level = logging.WARNING if lost or stats.failing else logging.INFO
        logger.log(
            level,
            "recording closed: %d records, %.1f MB in %d files in %s%s",
            stats.records, stats.bytes_written / 1e6, stats.files, self.directory,
            f"; {lost} records dropped (marked as gaps)" if lost else "",
        )  # fmt: skip

    def snapshot(self) -> RecorderStats:
        """A copy of :attr:`stats` (read from another thread)."""
        return replace(self.stats)
