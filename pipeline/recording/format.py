"""The recording file format, version 1: what a file, a block and a line hold.

The whole specification, with a reader in ten lines of Python, is docs/recording-format.md;
this module is its code. In short:

* a *session* is what one recorder wrote (one ``candles ingest`` run); it is split into
  *files* by size and age, numbered from 0, named ``dxlink-<started>-<session>-<file>.jsonl.zst``;
* a file is a sequence of *blocks*, each an independent zstd frame (with its content size and
  a checksum) holding whole lines, so a file cut short loses only its last block and any zstd
  tool (``zstd -dc``) reads the rest;
* every line is one UTF-8 JSON object: the first line of each file is the :class:`Header`,
  every other line one :class:`Record`: ``{"t": wall ms, "m": monotonic ns, "c": connection,
  "d": kind, "f": text}`` (kinds in :data:`KINDS`).

Readers reject a file whose header names another ``format`` or a ``version`` they do not know
(a new version is a format change readers must learn), and ignore keys they do not know (a
writer may add some within a version).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import orjson

__all__ = [
    "CLOSED",
    "FILE_SUFFIX",
    "FORMAT",
    "GAP",
    "KINDS",
    "OPENED",
    "RECEIVED",
    "REPLACED",
    "SENT",
    "VERSION",
    "Header",
    "Record",
    "RecordError",
    "decode_header",
    "decode_record",
    "encode_header",
    "encode_record",
    "file_name",
]

FORMAT: Final = "candle-pipeline/dxlink-recording"
"""The header's ``format``: what kind of file this is."""
VERSION: Final = 1
"""The format version this code writes and reads."""
FILE_SUFFIX: Final = ".jsonl.zst"

RECEIVED: Final = "<"
"""A frame the client received (server to client); ``f`` is the frame's text."""
SENT: Final = ">"
"""A frame the client sent (client to server), secrets redacted; ``f`` is its text."""
OPENED: Final = "+"
"""A connection opened; ``f`` is the server's URL (no credentials, no query), ``a`` the number
of failed attempts right before it."""
CLOSED: Final = "-"
"""A connection ended; ``f`` says why (as the client's log does)."""
GAP: Final = "!"
"""Records are missing here (the recorder fell behind or could not write); ``f`` says how
many and why. Whatever connection was open continues without them."""
KINDS: Final = frozenset({RECEIVED, SENT, OPENED, CLOSED, GAP})

REPLACED: Final = "replaced"
"""``e`` of a frame that was not valid UTF-8: its invalid bytes were replaced by U+FFFD."""

_NAME_SAFE = re.compile(r"[^0-9A-Za-z]")


class RecordError(ValueError):
    """A line that is not a valid header or record of this format version."""


class Record(NamedTuple):
    """One line after the header: a frame, a connection opening or ending, or a gap."""

    t: int
    """Wall-clock time in ms since the epoch, as the client's clock read it (the real clock
    against tastytrade; an in-process simulator's accelerated clock when ingest runs on one)."""
    m: int
    """Monotonic clock in ns (``time.monotonic_ns``): order and spacing within a session."""
    c: int
    """The connection, numbered from 1 within the session; 0 for a gap."""
    d: str
    """The kind: one of :data:`KINDS`."""
    f: str
    """The frame's text, the URL, the reason or the gap's description (see the kind)."""
    a: int | None = None
    """Failed attempts before the connection (``OPENED`` only)."""
    e: str | None = None
    """:data:`REPLACED` when the frame had invalid UTF-8; else None."""


@dataclass(frozen=True, slots=True)
class Header:
    """The first line of every file of a session."""

    session: str
    """The session's id (32 hex digits), the same in every file of the session."""
    file: int
    """The file's number within the session, from 0."""
    started: int
    """When the session started, wall ms."""
    created: int
    """When this file was started, wall ms."""
    writer: str
    """What wrote it, e.g. ``candle-pipeline 0.1.0``."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Free-form facts about the session (source kind, series, the manager's grace...)."""
    version: int = VERSION


def encode_header(header: Header) -> bytes:
    """The header as one line (newline included)."""
    return (
        orjson.dumps(
            {
                "format": FORMAT,
                "version": header.version,
                "session": header.session,
                "file": header.file,
                "started": header.started,
                "created": header.created,
                "writer": header.writer,
                "meta": dict(header.meta),
            }
        )
        + b"\n"
    )


def decode_header(line: bytes) -> Header:
    """Parse a file's first line.

    Raises:
        RecordError: not JSON, not this format, another version, or a missing field; the
            message says which (and what this reader supports).
    """
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise RecordError("the first line is not JSON: not a DXLink recording") from None
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        shown = value.get("format") if isinstance(value, dict) else None
        raise RecordError(
            f"the first line names format {shown!r}, not {FORMAT!r}: not a DXLink recording"
        )
    version = value.get("version")
    if version != VERSION:
        raise RecordError(
            f"format version {version!r}; this candle-pipeline reads version {VERSION} only "
            "(a newer candle-pipeline reads newer recordings)"
        )
    try:
        return Header(
            session=_text(value["session"], "session"),
            file=_number(value["file"], "file"),
            started=_number(value["started"], "started"),
            created=_number(value["created"], "created"),
            writer=_text(value.get("writer", ""), "writer"),
            meta=value.get("meta") or {},
        )
    except KeyError as exc:
        raise RecordError(f"the header has no {exc.args[0]!r}") from None


def encode_record(
    t: int, m: int, c: int, d: str, f: str, *, a: int | None = None, e: str | None = None
) -> bytes:
    """One record as a line (newline included); ``f`` is escaped as a JSON string."""
    record: dict[str, object] = {"t": t, "m": m, "c": c, "d": d, "f": f}
    if a is not None:
        record["a"] = a
    if e is not None:
        record["e"] = e
    return orjson.dumps(record) + b"\n"


def decode_record(line: bytes | str) -> Record:
    """Parse one record line.

    Raises:
        RecordError: not a JSON object with the fields of a record (the message says which).
    """
    try:
        value = orjson.loads(line)
        t, m, c, d, f = value["t"], value["m"], value["c"], value["d"], value["f"]
    except orjson.JSONDecodeError:
        raise RecordError("a line is not JSON") from None
    except (KeyError, TypeError):
        raise RecordError("a line lacks one of the record fields t, m, c, d, f") from None
    if not (
        t.__class__ is int and m.__class__ is int and c.__class__ is int and f.__class__ is str
    ):
        raise RecordError("a record's t, m and c must be integers and f a string")
    if d not in KINDS:
        raise RecordError(f"a record has kind {d!r:.20}, not one of {' '.join(sorted(KINDS))}")
    return Record(t, m, c, d, f, value.get("a"), value.get("e"))


def file_name(started_ms: int, session: str, number: int) -> str:
    """``dxlink-20261103T150000Z-1a2b3c4d-0000.jsonl.zst``: sorts by start, then file number."""
    stamp = datetime.fromtimestamp(started_ms / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"dxlink-{stamp}-{_NAME_SAFE.sub('', session)[:8]}-{number:04d}{FILE_SUFFIX}"


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"the header's {name} must be a string")
    return value


def _number(value: object, name: str) -> int:
    if value.__class__ is not int:
        raise RecordError(f"the header's {name} must be an integer")
    return value
