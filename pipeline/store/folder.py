"""The store's folder on disk: made ready for a writer, or refused in one line (issue 17).

A store folder that cannot work used to surface as whatever the first library to touch it
raised: ``FileExistsError`` when the path is a file, ``sqlite3.OperationalError: unable to
open database file`` with a long traceback when the folder is not writable, a bare
``FileNotFoundError`` under ``/proc``. :func:`prepare_folder` checks the folder before anything
else uses it and says, in one :class:`~pipeline.store.lake.StoreError` line, which path is
unusable, why, and what would work.
"""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

from pipeline.store.lake import StoreError

__all__ = ["prepare_folder"]

_SETTING = "store.path (or --store)"


def prepare_folder(path: Path | str, *, setting: str = _SETTING) -> Path:
    """Create ``path`` (with its parents) if missing and check that files can be made in it.

    Args:
        path: The folder.
        setting: How messages name the option that chose the folder.

    Returns:
        The folder, as given.

    Raises:
        StoreError: The folder cannot be created or written; the message names the path,
            what is wrong with it and what to do instead.
    """
    folder = Path(path)
    advice = f"set {setting} to a folder you can write (it is created if missing)"
    if folder.exists() and not folder.is_dir():
        raise StoreError(f"the store folder {folder} is a file, not a folder; {advice}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = _file_in_the_way(folder)
        if blocker is not None:
            raise StoreError(
                f"cannot create the store folder {folder}: {blocker} is a file, not a folder; "
                f"{advice}"
            ) from None
        raise StoreError(
            f"cannot create the store folder {folder}: {_reason(exc)}; {advice}"
        ) from None
    try:
        # A real file, created and removed: permission bits alone do not tell (root, ACLs,
        # read-only mounts, pseudo file systems such as /proc and /sys).
        with tempfile.NamedTemporaryFile(prefix=".write-check-", dir=folder):
            pass
    except OSError as exc:
        raise StoreError(
            f"cannot write in the store folder {folder}: {_reason(exc)}; {advice}"
        ) from None
    return folder


def _file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing ancestor of ``folder`` when it is a file (mkdir then fails)."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _reason(exc: OSError) -> str:
    """The OS's words, with what they mean for a store folder where that helps."""
    text = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{text} (no permission to create files there)"
    if exc.errno == errno.EROFS:
        return f"{text} (the file system is mounted read-only)"
    if exc.errno == errno.ENOSPC:
        return f"{text} (the disk is full)"
    if exc.errno == errno.ENOENT:
        return f"{text} (that place does not accept new folders)"
    return text
