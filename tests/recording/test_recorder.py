"""The recorder: every frame to disk, secrets out, and a slow or full disk never felt upstream.

Disks that are slow or full are stand-ins (a tiny filesystem is not available, and a
read-only directory does not stop root): file objects that wait on an event, or raise
``OSError(ENOSPC)`` while a flag says the disk is full. Everything else is real: the thread,
the zstd files, the reader.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from pipeline.recording import (
    CLOSED,
    GAP,
    OPENED,
    RECEIVED,
    SENT,
    Record,
    Recorder,
    Recording,
)
from pipeline.recording.format import REPLACED
from pipeline.recording.writer import SessionWriter
from tests.helpers.timing import TIMEOUT
from tests.recording.files import (
    Disk,
    FakeClock,
    GatedFile,
    decompressed,
    read_all,
    records,
)

TOKEN = "quote-token-7c1e5a90b2"


def test_every_frame_is_recorded_with_its_connection_and_clocks(tmp_path: Path) -> None:
    """Openings, frames both ways and endings come back in order, numbered per connection,
    with the client's clock as t and a rising monotonic m; invalid UTF-8 is marked."""
    recorder = Recorder(tmp_path, clock=lambda: 1_762_182_000.5)
    recorder.start()
    first = recorder.connection("wss://demo.example/realtime", attempt=0, secrets=(TOKEN,))
    first.sent('{"type":"SETUP","channel":0,"version":"0.1"}')
    first.received(b'{"type":"SETUP","channel":0,"version":"1.0"}')
    first.received(b"\xff not utf-8")
    first.closed("ConnectionClosedError: no close frame received or sent")
    second = recorder.connection("wss://demo.example/realtime", attempt=1, secrets=(TOKEN,))
    second.closed("closed by the client")
    assert recorder.close(TIMEOUT)
    items = read_all(recorder.paths)
    assert all(isinstance(i, Record) for i in items)
    got = [(r.c, r.d, r.a) for r in records(items)]
    assert got == [
        (1, OPENED, 0),
        (1, SENT, None),
        (1, RECEIVED, None),
        (1, RECEIVED, None),
        (1, CLOSED, None),
        (2, OPENED, 1),
        (2, CLOSED, None),
    ]
    kept = list(records(items))
    assert {r.t for r in kept} == {1_762_182_000_500}
    assert [r.m for r in kept] == sorted(r.m for r in kept)
    assert kept[3].e == REPLACED and kept[3].f.endswith(" not utf-8")
    assert kept[2].f == '{"type":"SETUP","channel":0,"version":"1.0"}'
    assert recorder.stats.records == 7 and recorder.stats.dropped_frames == 0


def test_tokens_never_reach_the_file(tmp_path: Path) -> None:
    """The AUTH token and every other appearance of it are redacted before the disk."""
    recorder = Recorder(tmp_path)
    recorder.start()
    tap = recorder.connection("wss://demo.example/", attempt=0, secrets=(TOKEN,))
    tap.sent(f'{{"type":"AUTH","channel":0,"token":"{TOKEN}"}}')
    tap.received(f'{{"type":"ERROR","channel":0,"error":"UNAUTHORIZED","message":"{TOKEN}"}}')
    tap.closed(f"AuthError: token {TOKEN} rejected")
    assert recorder.close(TIMEOUT)
    (path,) = recorder.paths
    assert TOKEN.encode() not in decompressed(path)
    assert TOKEN.encode() not in path.read_bytes()
    auth = next(r for r in records(read_all([path])) if r.d == SENT)
    assert auth.f == '{"type":"AUTH","channel":0,"token":"<redacted>"}'


def test_a_full_queue_drops_new_frames_marks_the_gap_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the disk stalls, frames beyond max_queue_bytes are dropped without waiting;
    the recording marks the gap with what was dropped; one warning is logged."""
    gate, entered = threading.Event(), threading.Event()
    recorder = Recorder(
        tmp_path,
        max_queue_bytes=1000,
        block_bytes=10**6,
        opener=lambda path: GatedFile(path, gate, entered),
    )
    recorder.start()
    tap = recorder.connection("ws://127.0.0.1:1/", attempt=0, secrets=())
    frame = "x" * 600
    recorder.flush(timeout=0)  # the thread writes the opening's block: the disk stalls
    assert entered.wait(TIMEOUT)
    with caplog.at_level(logging.WARNING, logger="pipeline.recording"):
        tap.received(frame)  # queued
        for _ in range(5):
            tap.received(frame)  # beyond 1000 bytes: dropped, and the call returns at once
        gate.set()
        assert recorder.flush(TIMEOUT)
        tap.received("after")
        assert recorder.close(TIMEOUT)
    warnings = [r for r in caplog.records if "recording falls behind" in r.getMessage()]
    assert len(warnings) == 1
    assert recorder.stats.dropped_frames == 5 and recorder.stats.gaps == 1
    kept = list(records(read_all(recorder.paths)))
    assert [(r.d, r.f[:5]) for r in kept] == [
        (OPENED, "ws://"),
        (RECEIVED, "xxxxx"),
        (GAP, "5 rec"),
        (RECEIVED, "after"),
    ]
    assert kept[2].f == "5 records (3,000 bytes) were dropped here: the recorder's queue was full"


def test_a_full_disk_drops_the_recording_not_the_caller_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ENOSPC: frames are counted as dropped, the failure is logged once, the recorder
    retries with a new file once space is back, and the gap says what was lost and why."""
    disk, clock = Disk(), FakeClock()
    recorder = Recorder(tmp_path, opener=disk.open, retry_seconds=10, monotonic=clock)
    recorder.start()
    tap = recorder.connection("ws://127.0.0.1:1/", attempt=0, secrets=())
    tap.received("before")
    assert recorder.flush(TIMEOUT)
    disk.full = True
    with caplog.at_level(logging.ERROR, logger="pipeline.recording"):
        for n in range(3):
            tap.received(f"while full {n}")
            assert recorder.flush(TIMEOUT)
    assert recorder.snapshot().failing and recorder.stats.write_failures == 1
    assert recorder.stats.dropped_frames == 3
    assert recorder.stats.last_error == "OSError: No space left on device"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "ingest goes on" in errors[0].getMessage()
    disk.full = False
    tap.received("too early")  # the retry is not due: dropped as well
    assert recorder.flush(TIMEOUT)
    assert recorder.snapshot().failing and recorder.stats.dropped_frames == 4
    clock.now += 10
    tap.received("after")
    assert recorder.flush(TIMEOUT)
    assert not recorder.snapshot().failing
    assert recorder.close(TIMEOUT)
    assert len(disk.opened) == 2  # the first file (abandoned when writing failed), a new one
    kept = list(records(read_all(recorder.paths)))
    assert [r.f for r in kept if r.d == RECEIVED] == ["before", "after"]
    gap = next(r for r in kept if r.d == GAP)
    assert gap.f == (
        "4 records (45 bytes) were lost here: writing failed (OSError: No space left on device)"
    )


def test_files_rotate_by_size_and_by_age_within_one_session(tmp_path: Path) -> None:
    """A file past rotate_bytes or rotate_seconds is closed; the next carries the next
    number and the same session; read together they are one recording."""
    clock = FakeClock()
    writer = SessionWriter(
        tmp_path,
        rotate_bytes=10**6,
        rotate_seconds=60,
        wall_clock_ms=lambda: 1_762_182_000_000,
        monotonic=clock,
    )
    line = b'{"t":1,"m":1,"c":1,"d":"+","f":"ws://h/"}\n'
    writer.write(line)
    clock.now += 59
    writer.write(line.replace(b'"m":1', b'"m":2'))
    assert len(writer.paths) == 1
    clock.now += 1
    writer.write(line.replace(b'"m":1', b'"m":3'))
    assert len(writer.paths) == 2
    writer.rotate_bytes = 1
    writer.write(line.replace(b'"m":1', b'"m":4'))
    writer.close()
    assert len(writer.paths) == 3
    recording = Recording(reversed(writer.paths))
    assert [f.header.file for f in recording.files] == [0, 1, 2]
    assert len(recording.sessions) == 1
    assert [r.m for r in records(e.item for e in recording.entries())] == [1, 2, 3, 4]


def test_an_unwritable_directory_fails_start_and_nothing_runs(tmp_path: Path) -> None:
    """start() raises when the first file cannot be created; no thread is left behind."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    recorder = Recorder(blocker / "recordings")
    with pytest.raises(OSError):
        recorder.start()
    assert recorder.close(TIMEOUT)
