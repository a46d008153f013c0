"""The documentation names only files that exist.

Every project path (``pipeline/...``, ``benchmarks/...``, ``tests/...``, ``sql/...``,
``docs/...``, ``notebooks/...``) written in the Markdown docs, or in a comment or docstring of
the package, the benchmarks or the SQL files, must exist: a tree that moves leaves no stale
names behind. Globs (``sql/*.sql``) must match something; ``benchmarks/results/`` is the
benchmarks' output folder, made by a run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.layering import ROOT

DOCS = [
    ROOT / "README.md",
    ROOT / "benchmarks" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
SOURCES = [
    *sorted((ROOT / "pipeline").rglob("*.py")),
    *sorted((ROOT / "benchmarks").glob("*.py")),
    *sorted((ROOT / "sql").glob("*.sql")),
]
GENERATED = ("benchmarks/results",)
_PATH = re.compile(r"(?<![\w/.-])(?:pipeline|benchmarks|tests|sql|docs|notebooks)/[\w./*-]*[\w*]")


def named_paths(text: str) -> set[str]:
    """The project paths a text names (a trailing ``.`` or ``/`` is not part of one)."""
    return {match.rstrip(".") for match in _PATH.findall(text)}


def missing(path: Path) -> list[str]:
    """The paths ``path`` names that exist nowhere in the tree."""
    return sorted(
        name
        for name in named_paths(path.read_text(encoding="utf-8"))
        if not name.startswith(GENERATED) and not any(ROOT.glob(name))
    )


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_existing_paths(path: Path) -> None:
    """A Markdown document names only paths of the tree."""
    assert missing(path) == []


def test_package_benchmark_and_sql_comments_name_existing_paths() -> None:
    """Comments and docstrings of the code name only paths of the tree."""
    stale = {str(p.relative_to(ROOT)): names for p in SOURCES if (names := missing(p))}
    assert stale == {}


def test_checker_finds_paths_and_globs(tmp_path: Path) -> None:
    """The checker reads paths out of prose and code spans, and a glob counts if it matches."""
    text = "See `pipeline/store/upsert.py`, sql/*.sql and (pipeline/nowhere.py). Not x/pipeline/y."
    assert named_paths(text) == {"pipeline/store/upsert.py", "sql/*.sql", "pipeline/nowhere.py"}
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    assert missing(doc) == ["pipeline/nowhere.py"]
