"""The house's import rules, and a reader of imports that executes nothing (``ast``).

:data:`ALLOWED` is the one table of which package may import which: ``tests/test_layering.py``
checks every import of ``pipeline/`` against it, and ``tests/test_readme.py`` checks that the
README's package diagram draws exactly these arrows. Package names are dotted and relative to
``pipeline``; ``pipeline`` itself names the root face (``pipeline/__init__.py``:
``__version__`` and the lazy ``connect()``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ALLOWED",
    "BELOW_INGEST",
    "FACE_EXCEPTIONS",
    "IO_MODULES",
    "PACKAGE",
    "ROOT",
    "Import",
    "imports_of",
    "module_name",
    "package_of",
    "project_modules",
]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"

BELOW_INGEST = frozenset(
    {
        "dxlink",
        "dxlink.client",
        "schema",
        "sharding",
        "simulator",
        "recording",
        "candles",
        "store",
        "config",
        "metrics",
        "analysis",
        "pipeline",
    }
)
"""Every package the ingest package stands on: all but ``cli`` and ``__main__``."""

ALLOWED: dict[str, frozenset[str]] = {
    # The sans-I/O protocol: nothing of the project, and no I/O module (IO_MODULES).
    "dxlink": frozenset(),
    # Its asyncio driver, beside it: the protocol and nothing else of the project.
    "dxlink.client": frozenset({"dxlink"}),
    # The table's columns and the shard hash: both sides agree on them, so they stand low.
    "schema": frozenset({"dxlink"}),
    "sharding": frozenset({"dxlink"}),
    # A DXLink server built on the protocol's public face only.
    "simulator": frozenset({"dxlink"}),
    # Recordings: the client's frame tap writes them (through an interface the client
    # defines), a replay serves them on the protocol's face; rebuilding is ingest's.
    "recording": frozenset({"dxlink"}),
    # The pure manager: events in, frames in the table's schema out.
    "candles": frozenset({"dxlink", "schema"}),
    # The store knows the table and the symbols, never the manager or the service.
    "store": frozenset({"dxlink", "schema", "sharding"}),
    "config": frozenset({"dxlink", "sharding"}),
    # The notebooks' door finds the store as the CLI does: through the config file (issue 17).
    "analysis": frozenset({"config", "store", "schema", "dxlink"}),
    "metrics": frozenset({"config", "candles", "store", "recording", "dxlink", "dxlink.client"}),
    # The root face: ``pipeline.connect`` is analysis' connect, imported when first used.
    "pipeline": frozenset({"analysis"}),
    "ingest": BELOW_INGEST,
    "cli": BELOW_INGEST | {"ingest"},
    "__main__": frozenset({"cli"}),
}
"""Package -> the packages its modules may import (besides its own modules)."""

FACE_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("pipeline.candles.records", "pipeline.dxlink.candle_block"): (
        "the manager packs its records a column at a time straight from a CandleBlock's integer "
        "rows, whose numbering (candle_block.COUNT) is not in the protocol's face; the manager's "
        "rewrite (issue 13, items 1-2) owns this module"
    ),
}
"""(importing module, imported module) -> why it may reach past the imported package's face.
A listed pair that no longer occurs fails the test, so the list stays true."""

IO_MODULES = frozenset(
    {
        "asyncio",
        "websockets",
        "time",
        "socket",
        "ssl",
        "selectors",
        "threading",
        "concurrent",
        "subprocess",
        "aiohttp",
        "httpx",
        "requests",
        "urllib",
        "http",
        "trio",
        "anyio",
    }
)
"""Top-level modules the sans-I/O protocol must not import: sockets, clocks, event loops."""


@dataclass(frozen=True)
class Import:
    """One imported module, as an absolute dotted name, and the line importing it."""

    module: str
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted module name of a ``.py`` file under ``root`` (a package is its ``__init__``)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(folder: Path, root: Path = ROOT) -> dict[str, Path]:
    """Every module under ``folder`` by dotted name (symlinked folders such as ``sql`` hold
    no Python)."""
    return {module_name(path, root): path for path in sorted(folder.rglob("*.py"))}


def imports_of(path: Path, known: set[str] | None = None, root: Path = ROOT) -> Iterator[Import]:
    """Every module ``path`` imports, anywhere in its body (functions, ``if TYPE_CHECKING``).

    Relative imports are made absolute. ``from package import name`` counts as an import of
    ``package.name`` when that is one of the ``known`` modules (a submodule), else of
    ``package``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path, root) if path.is_relative_to(root) else path.stem
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield Import(submodule if known and submodule in known else base, node.lineno)


def package_of(module: str) -> str | None:
    """The package of :data:`ALLOWED` that a ``pipeline`` module belongs to (the longest
    match), or ``None`` for a module outside ``pipeline``."""
    if module == "pipeline":
        return "pipeline"
    if not module.startswith("pipeline."):
        return None
    relative = module.removeprefix("pipeline.")
    candidates = [p for p in ALLOWED if relative == p or relative.startswith(f"{p}.")]
    return max(candidates, key=len, default=None)
