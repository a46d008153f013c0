"""An unusable store folder is one line naming the path and what is wrong (issue 17, item 2).

The four ways a newcomer met it: a path that is a file, a parent that is a file, a place
that takes no folders (``/proc``), a folder that cannot be written. ``chmod`` does not stop
root, so the unwritable folder is one the kernel refuses to everyone (sysfs) when the tests
run as root, and a ``chmod 555`` folder otherwise.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.sharding import SINGLE
from pipeline.store import CandleStore, StoreError, WriterLock, prepare_folder

ADVICE = "set store.path (or --store) to a folder you can write"


def refuses_files(folder: Path) -> bool:
    """Whether creating a file in ``folder`` fails (the real test, not the permission bits)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return False
    except OSError:
        return True


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """An existing folder this process cannot create files in."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if not refuses_files(folder):  # root: permission bits do not apply
            folder = Path("/sys")
            if not (folder.is_dir() and refuses_files(folder)):
                pytest.skip("no folder here refuses files to this user")
        yield folder
    finally:
        (tmp_path / "read-only").chmod(0o755)


def cases(tmp_path: Path, unwritable: Path) -> list[tuple[Path, str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    return [
        (a_file, f"the store folder {a_file} is a file, not a folder"),
        (a_file / "data", f"cannot create the store folder {a_file / 'data'}: {a_file} is a file"),
        (Path("/proc/candles-store"), "cannot create the store folder /proc/candles-store: "),
        (unwritable, f"cannot write in the store folder {unwritable}: "),
    ]


def test_prepare_folder_names_the_path_and_what_is_wrong(tmp_path: Path, unwritable: Path) -> None:
    """Each unusable path is a StoreError of one line: the path, the reason, the remedy."""
    for path, expected in cases(tmp_path, unwritable):
        with pytest.raises(StoreError) as raised:
            prepare_folder(path)
        message = str(raised.value)
        assert message.startswith(expected), message
        assert ADVICE in message and "\n" not in message


def test_prepare_folder_creates_a_missing_folder_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """A missing folder (with parents) is created; the write check leaves no file."""
    folder = prepare_folder(tmp_path / "new" / "store")
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_the_writer_and_its_lock_refuse_an_unusable_folder_the_same_way(
    tmp_path: Path, unwritable: Path
) -> None:
    """CandleStore and WriterLock raise the same one-line StoreError before touching SQLite."""
    for path, expected in cases(tmp_path, unwritable):
        with pytest.raises(StoreError, match="^" + re.escape(expected)) as raised:
            CandleStore(path, verify_extensions=False)
        assert ADVICE in str(raised.value)
        with pytest.raises(StoreError, match="^" + re.escape(expected)) as raised:
            WriterLock(path, SINGLE).acquire()
        assert ADVICE in str(raised.value)


def test_candles_ingest_with_an_unusable_store_prints_one_line(
    tmp_path: Path, unwritable: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`candles ingest --store X`: exit 1 with one 'Error:' line naming X, no traceback."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("CANDLES_")]:
        monkeypatch.delenv(name)
    for path, expected in cases(tmp_path, unwritable):
        argv = ["ingest", "--store", str(path), "--duration", "30s"]
        result = CliRunner().invoke(cli, argv, env={"CANDLES_METRICS__ENABLED": "false"})
        assert result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert errors == [f"Error: {errors[0].removeprefix('Error: ')}"] and len(errors) == 1
        assert errors[0].startswith(f"Error: {expected}"), errors[0]
        assert "Traceback" not in result.output
