"""docs/recording-format.md is true: its reader runs on a real recording, its tables match."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson

from pipeline.recording import Record, Recording, recording_files
from pipeline.recording.format import FORMAT, KINDS, VERSION, Header
from tests.helpers.recording import FIXTURE

DOC = Path(__file__).resolve().parents[2] / "docs" / "recording-format.md"
TEXT = DOC.read_text(encoding="utf-8")


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", TEXT, flags=re.M | re.S)


def test_the_documented_reader_reads_a_real_recording() -> None:
    """The Python reader in the doc prints t, connection and type of every received frame."""
    (code,) = python_blocks()
    assert len(code.strip().splitlines()) <= 12
    path = recording_files([FIXTURE])[0]
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    received = [
        record
        for e in Recording([path]).entries()
        if isinstance(record := e.item, Record) and record.d == "<"
    ]
    expected = [f"{r.t} {r.c} {orjson.loads(r.f)['type']}" for r in received]
    assert done.stdout.splitlines() == expected
    assert len(expected) > 20


def test_the_documented_tables_name_the_format() -> None:
    """Format name, version, header keys and record kinds in the doc are the code's."""
    assert f'`"{FORMAT}"`' in TEXT and f"# DXLink recording format, version {VERSION}" in TEXT
    for name in Header.__dataclass_fields__:
        assert f"| `{name}` |" in TEXT, name
    documented = set(re.findall(r'^\| `"(.)"` \|', TEXT, flags=re.M))
    assert documented == set(KINDS)
