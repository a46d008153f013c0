"""The records a consumer can trust: whole connections, cut where the recording is damaged.

A replay or a rebuild feeds each recorded connection's frames to a DXLink protocol state
machine from its opening on. A frame is usable only if every frame of its connection before
it is there too. :func:`usable_records` enforces that over :meth:`Recording.entries`:

* a connection's records are used from its opening (``"+"``) on; records of a connection whose
  opening is not in the given files (its earlier files are missing) are skipped;
* damage, a gap record, or a missing file ends every connection open at that point: a
  closing record (``"-"``) is made up for each, and the rest of their records are skipped;
* every skip and every cut is reported once through ``on_problem``, naming the file and the
  byte offset, so nothing is left out silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from pipeline.recording.format import CLOSED, GAP, OPENED, Record
from pipeline.recording.reader import Damage, Entry, Position

__all__ = ["Problem", "Usable", "usable_records"]


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in the recording that is left out, and what of it."""

    text: str

    def __str__(self) -> str:
        return self.text


class Usable(NamedTuple):
    """A record a consumer can use, where it is, and its session."""

    position: Position
    session: str
    record: Record


def usable_records(
    entries: Iterable[Entry], on_problem: Callable[[Problem], None]
) -> Iterator[Usable]:
    """Every record of a connection seen whole up to it (see the module docstring).

    A damaged stretch yields a made-up ``CLOSED`` record (``f`` names the damage) for each
    connection it cuts, so a consumer ends it as if the connection had dropped there.
    """
    open_now: dict[tuple[str, int], tuple[int, int]] = {}  # -> the last record's (t, m)
    orphans: dict[tuple[str, int], int] = {}
    for entry in entries:
        item, session = entry.item, entry.session
        if isinstance(item, Damage) or item.d == GAP:
            if isinstance(item, Damage):
                where, reason = str(item), f"recording damaged: {item}"
                cut = list(open_now)
            else:
                where = f"session {session[:8]}: a gap ({item.f})"
                reason = f"recording gap: {item.f}"
                cut = [key for key in open_now if key[0] == session]
            names = ", ".join(f"connection {c} of session {s[:8]}" for s, c in cut)
            ends = (
                f"{names} ends there; its later records are not used"
                if cut
                else "no connection was open there"
            )
            on_problem(Problem(f"{where}; {ends}"))
            for key in cut:
                t, m = open_now.pop(key)
                yield Usable(entry.position, key[0], Record(t, m, key[1], CLOSED, reason))
            continue
        key = (session, item.c)
        if item.d == OPENED:
            open_now[key] = (item.t, item.m)
            yield Usable(entry.position, session, item)
        elif key in open_now:
            if item.d == CLOSED:
                del open_now[key]
            else:
                open_now[key] = (item.t, item.m)
            yield Usable(entry.position, session, item)
        else:
            orphans[key] = orphans.get(key, 0) + 1
    for (session, number), count in orphans.items():
        on_problem(
            Problem(
                f"connection {number} of session {session[:8]}: {count} records not used "
                "(its opening is not in the files given, or they follow damage)"
            )
        )
