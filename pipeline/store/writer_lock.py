"""One ingest writer per store (or per shard of it): an advisory lock in the store's folder.

The store's upsert is idempotent only while each series has one writer: it skips the
stored-row lookup for rows newer than what *it* knows to be stored (``upsert.py``), so two
``candles ingest`` processes capturing the same series would both store a re-sent candle.
Sharding splits the series between processes (:mod:`pipeline.sharding`); this lock catches the
usual mistake, the same configuration started twice on one machine, before anything is
written:

* an unsharded writer (shard ``1/1``) holds ``.ingest.lock`` exclusively;
* a shard ``K/N`` holds ``.ingest.lock`` shared (shards run side by side, but not next to an
  unsharded writer) and ``.ingest-shard-K-of-N.lock`` exclusively (one process per shard).

Locks are ``flock`` locks: the kernel drops them when the process ends, however it ends, so a
killed writer never leaves a stale lock behind. The lock files hold the holder's pid and shard
for the message of whoever is refused. This lock guards a store with a SQLite catalog (one
host); a PostgreSQL-catalog lake, written from any number of hosts, is guarded by the lease in
its catalog database instead (:mod:`pipeline.store.lease`), which also refuses shards of
different counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import IO

from pipeline.sharding import ShardSpec
from pipeline.store.folder import prepare_folder
from pipeline.store.lake import StoreError

if sys.platform != "win32":
    import fcntl

__all__ = ["StoreBusy", "WriterLock"]

logger = logging.getLogger(__name__)

_STORE_LOCK = ".ingest.lock"


class StoreBusy(StoreError):
    """Another ``candles ingest`` writes the same store (or the same shard of it)."""


class WriterLock:
    """The lock one ingest process holds on its store while it runs.

    Args:
        store: The store's folder (``store.path``); created if missing.
        shard: This process's shard (``1/1`` when not sharded).
    """

    def __init__(self, store: Path | str, shard: ShardSpec) -> None:
        self.store = Path(store)
        self.shard = shard
        self._files: list[tuple[IO[str], bool]] = []  # (lock file, held exclusively)

    @property
    def held(self) -> bool:
        """Whether this object holds its locks."""
        return bool(self._files)

    def acquire(self) -> None:
        """Take the locks, or fail at once.

        Raises:
            StoreBusy: Another writer holds a conflicting lock; the message names it.
        """
        if self._files:
            return
        if sys.platform == "win32":
            logger.warning("! no flock here: two ingest processes on one store are not detected")
            return
        prepare_folder(self.store)  # StoreError naming the path when it cannot work
        sharded = self.shard.count > 1
        try:
            self._take(_STORE_LOCK, exclusive=not sharded)
            if sharded:
                name = f".ingest-shard-{self.shard.index}-of-{self.shard.count}.lock"
                self._take(name, exclusive=True)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Drop the locks (closing the files does it); idempotent."""
        files, self._files = self._files, []
        for file, exclusive in reversed(files):
            with contextlib.suppress(OSError):
                if exclusive:  # still ours: clear the note, so no one reads a gone holder
                    file.truncate(0)
                file.close()

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _take(self, name: str, *, exclusive: bool) -> None:
        if sys.platform == "win32":  # acquire() returns before; this keeps mypy exact
            return
        path = self.store / name
        # "a+": never truncates another holder's note before we know we may write ours.
        file = open(path, "a+", encoding="utf-8")  # noqa: SIM115  # held until release()
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        try:
            fcntl.flock(file.fileno(), mode)
        except BlockingIOError:
            file.seek(0)
            note = file.read().strip()
            holder = f"it noted: {note}" if note else "pid unknown"
            file.close()
            raise StoreBusy(self._refusal(holder)) from None
        except BaseException:
            file.close()
            raise
        if exclusive:  # the only holder: say who we are (shared holders leave it alone)
            file.seek(0)
            file.truncate()
            file.write(f"pid {os.getpid()}, shard {self.shard}\n")
            file.flush()
        self._files.append((file, exclusive))

    def _refusal(self, holder: str) -> str:
        where = f"store {self.store}"
        if self.shard.count > 1:
            return (
                f"shard {self.shard} of {where} is already being written by another "
                f"`candles ingest` ({holder}), or an unsharded one is running; each shard "
                "runs in exactly one process (docs/scaling.md)"
            )
        return (
            f"{where} is already being written by another `candles ingest` ({holder}); stop "
            "it first, or split the series between processes with --shard K/N "
            "(docs/scaling.md): two writers of one series would store re-sent candles twice"
        )
