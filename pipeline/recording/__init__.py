"""Recording DXLink sessions, reading them back, and serving them again as a DXLink server.

* ``recorder``: :class:`Recorder`, the client's frame tap: every frame of every connection,
  both directions, with the client's wall clock and the monotonic clock, queued to a thread
  that redacts secrets (``redact``) and writes rotating zstd files (``writer``); a slow or full
  disk costs the recording (counted, marked as a gap), never the ingest;
* ``format``: the versioned file format (docs/recording-format.md);
* ``reader``: :class:`Recording`, files in session order, records with positions, damage
  (a truncated file, a corrupt block, another version) named by file and offset;
* ``stream``: :func:`usable_records`, the records of whole connections, cut at damage;
* ``replay``: :class:`ReplayServer`, a DXLink server that answers a client's handshake,
  channels and subscriptions with the recorded server frames (``feed``: which series a
  FEED_DATA frame carries, and the frame for fewer of them or another channel number).

Rebuilding a store from a recording uses the candle manager and the store, so it lives with
ingest: :func:`pipeline.ingest.rebuild`.
"""

from __future__ import annotations

from pipeline.recording.format import (
    CLOSED,
    FORMAT,
    GAP,
    OPENED,
    RECEIVED,
    SENT,
    VERSION,
    Header,
    Record,
    RecordError,
)
from pipeline.recording.reader import (
    Damage,
    Entry,
    Position,
    Recording,
    RecordingError,
    recording_files,
)
from pipeline.recording.recorder import RecordedConnection, Recorder, RecorderStats
from pipeline.recording.redact import REDACTED, Redactor
from pipeline.recording.replay import ReplayServer, ReplayStats
from pipeline.recording.stream import Problem, Usable, usable_records

__all__ = [
    "CLOSED",
    "FORMAT",
    "GAP",
    "OPENED",
    "RECEIVED",
    "REDACTED",
    "SENT",
    "VERSION",
    "Damage",
    "Entry",
    "Header",
    "Position",
    "Problem",
    "Record",
    "RecordError",
    "RecordedConnection",
    "Recorder",
    "RecorderStats",
    "Recording",
    "RecordingError",
    "Redactor",
    "ReplayServer",
    "ReplayStats",
    "Usable",
    "recording_files",
    "usable_records",
]
