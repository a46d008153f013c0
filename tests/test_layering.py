"""The sans-I/O core imports no I/O, clock or event loop (DESIGN.md rules; STYLE.md pattern 1).

Checked with ``ast`` on the source, so a forbidden import hidden inside a function body or
an ``if TYPE_CHECKING`` block is caught too, and nothing is executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"

# The pure modules: protocol state machines, codecs, symbols, event records, errors.
CORE = [
    "dxlink/candle_block.py",
    "dxlink/errors.py",
    "dxlink/events.py",
    "dxlink/symbols.py",
    "dxlink/message_models.py",
    "dxlink/messages.py",
    "dxlink/feed_codec.py",
    "dxlink/protocol_events.py",
    "dxlink/protocol_core.py",
    "dxlink/protocol.py",
    "dxlink/server_protocol.py",
]
FORBIDDEN = {
    "asyncio",
    "websockets",
    "time",
    "socket",
    "ssl",
    "selectors",
    "threading",
    "concurrent",
    "aiohttp",
    "httpx",
    "requests",
    "urllib",
    "trio",
    "anyio",
}


def imported_modules(path: Path) -> set[str]:
    """Every module name a file imports, anywhere in its body (absolute form)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            names.add("pipeline.dxlink." + (node.module or ""))
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io_or_clock(module: str) -> None:
    """A core module imports none of asyncio, websockets, time, sockets or HTTP clients."""
    bad = {name for name in imported_modules(PACKAGE / module) if name.split(".")[0] in FORBIDDEN}
    assert bad == set(), f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_only_core_modules(module: str) -> None:
    """Within the project, core modules depend only on other core modules."""
    core_names = {"pipeline.dxlink." + Path(name).stem for name in CORE}
    project = {name for name in imported_modules(PACKAGE / module) if name.startswith("pipeline")}
    assert project <= core_names, f"{module} imports {sorted(project - core_names)}"


def test_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The ast check also finds an import hidden inside a function body."""
    source = tmp_path / "sneaky.py"
    source.write_text("def f():\n    import time\n    from asyncio import sleep\n")
    assert imported_modules(source) == {"time", "asyncio"}
