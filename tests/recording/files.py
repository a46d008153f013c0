"""Recordings made by hand for the format and reader tests: blocks of chosen lines, and damage.

``SessionWriter`` writes them, exactly as the recorder does, so a test controls what each
block holds; :func:`read_all` reads a recording back as records and damage.
"""

from __future__ import annotations

import errno
import io
import itertools
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import zstandard

from pipeline.dxlink import Candle, CandlesReceived, ClientProtocol
from pipeline.recording import Damage, Record, Recording
from pipeline.recording.format import CLOSED, OPENED, RECEIVED, SENT, encode_record
from pipeline.recording.writer import SessionWriter
from tests.helpers.timing import TIMEOUT

__all__ = [
    "T0",
    "Disk",
    "DiskFile",
    "FakeClock",
    "GatedFile",
    "Lines",
    "block_offsets",
    "connection_lines",
    "decompressed",
    "read_all",
    "reblock",
    "recorded_candles",
    "write_session",
]

T0 = 1_762_182_000_000
"""Wall clock of the first hand-made record (2025-11-03T15:00Z)."""


class Lines:
    """Record lines with a clock that moves 1 ms (and 1 ms monotonic) per line."""

    def __init__(self) -> None:
        self._tick = itertools.count()

    def line(self, c: int, d: str, f: str, **extra: int) -> bytes:
        n = next(self._tick)
        return encode_record(T0 + n, 1_000_000 * n, c, d, f, a=extra.get("a"))


def connection_lines(lines: Lines, c: int, frames: int, *, close: bool = True) -> list[bytes]:
    """One connection: opened, a SETUP out, ``frames`` FEED_DATA-like frames in, closed."""
    out = [lines.line(c, OPENED, "ws://127.0.0.1:1/", a=0)]
    out.append(lines.line(c, SENT, '{"type":"SETUP","channel":0,"version":"0.1-test"}'))
    out += [
        lines.line(c, RECEIVED, f'{{"type":"FEED_DATA","channel":1,"data":["Candle",[{i}]]}}')
        for i in range(frames)
    ]
    if close:
        out.append(lines.line(c, CLOSED, "closed by the client"))
    return out


def write_session(
    directory: Path,
    blocks: Iterable[list[bytes]],
    *,
    rotate_bytes: int = 2**30,
    started: int = T0,
) -> SessionWriter:
    """Write each list of lines as one block (files rotate at ``rotate_bytes``); the
    session's header says it started at ``started`` (sessions are read in that order)."""
    writer = SessionWriter(
        directory,
        rotate_bytes=rotate_bytes,
        rotate_seconds=3600,
        wall_clock_ms=lambda: started,
        meta={"source": "test"},
    )
    for block in blocks:
        writer.write(b"".join(block))
    writer.close()
    return writer


def block_offsets(path: Path) -> list[int]:
    """Byte offsets of the zstd frames (blocks) in ``path``, the header block first."""
    data = path.read_bytes()
    offsets, at = [], 0
    while at < len(data):
        offsets.append(at)
        stream = zstandard.ZstdDecompressor().decompressobj()
        stream.decompress(data[at:])
        at = len(data) - len(stream.unused_data)
    return offsets


def decompressed(path: Path) -> bytes:
    """Every byte of every block of ``path``, as ``zstd -dc`` prints it."""
    reader = zstandard.ZstdDecompressor().stream_reader(path.read_bytes(), read_across_frames=True)
    return reader.read()


def read_all(paths: Iterable[Path]) -> list[Record | Damage]:
    """Every record and damage of a recording, in order."""
    return [entry.item for entry in Recording(paths).entries()]


def records(items: Iterable[Record | Damage]) -> Iterator[Record]:
    """Only the records."""
    return (item for item in items if isinstance(item, Record))


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedFile(io.BufferedWriter):
    """A file whose writes after the first (the header) wait until ``gate`` is set."""

    def __init__(self, path: Path, gate: threading.Event, entered: threading.Event) -> None:
        super().__init__(io.FileIO(path, "x"))
        self.gate, self.entered, self.writes = gate, entered, 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        if self.writes > 1:
            self.entered.set()
            assert self.gate.wait(TIMEOUT)
        return super().write(data)


class Disk:
    """A disk that can be full: its files raise ENOSPC on write while ``full`` is set."""

    def __init__(self) -> None:
        self.full = False
        self.opened: list[Path] = []

    def open(self, path: Path) -> DiskFile:
        self.opened.append(path)
        return DiskFile(path, self)


class DiskFile(io.BufferedWriter):
    def __init__(self, path: Path, disk: Disk) -> None:
        super().__init__(io.FileIO(path, "x"))
        self.disk = disk

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.disk.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def reblock(paths: Iterable[Path], out: Path, per_block: int) -> list[Path]:
    """The recording again, ``per_block`` records to a block (one file per session), so a
    test can damage a small part of real frames."""
    recording = Recording(paths)
    written: list[Path] = []
    started = {f.header.session: f.header.started for f in recording.files}
    for number, session in enumerate(recording.sessions):
        lines = [
            encode_record(r.t, r.m, r.c, r.d, r.f, a=r.a, e=r.e)
            for entry in recording.entries()
            if entry.session == session and isinstance(r := entry.item, Record)
        ]
        blocks = [lines[i : i + per_block] for i in range(0, len(lines), per_block)]
        folder = out / f"session-{number}"
        written += write_session(folder, blocks, started=started[session]).paths
    return written


def recorded_candles(paths: Iterable[Path], session: int, connection: int) -> list[Candle]:
    """The Candle events one recorded connection received, decoded as the client did."""
    recording = Recording(paths)
    wanted = recording.sessions[session]
    protocol = ClientProtocol(token="unused")
    candles: list[Candle] = []
    for entry in recording.entries():
        record = entry.item
        if entry.session != wanted or not isinstance(record, Record) or record.c != connection:
            continue
        if record.d == OPENED:
            protocol.start(0)
        elif record.d == RECEIVED:
            message = orjson.loads(record.f)
            if message.get("type") == "CHANNEL_OPENED":
                contract = message["parameters"]["contract"]
                protocol.open_channel(contract, number=message["channel"])
            protocol.receive_message(record.f, 0)
            for event in protocol.events_received():
                if isinstance(event, CandlesReceived):
                    candles.extend(event.candles)
        protocol.messages_to_send()
    return candles
