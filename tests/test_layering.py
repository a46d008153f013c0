"""Imports flow one way through the house (DESIGN.md rules; STYLE.md pattern 1).

Every import of every module is read with ``ast`` (nothing is executed), so an import hidden
inside a function body or an ``if TYPE_CHECKING`` block counts too. The rules:

* each package imports only the packages :data:`tests.helpers.layering.ALLOWED` lists for it
  (the same arrows as the README's package diagram);
* code outside a package imports it through its face (``pipeline.store``, not
  ``pipeline.store.upsert``); a subpackage may use its parent's modules (the client drives
  the protocol's modules), and the listed :data:`FACE_EXCEPTIONS` say why they reach past;
* the sans-I/O protocol (``pipeline/dxlink/*.py``) imports no socket, clock or event loop;
* a test module imports no other test module: shared code lives in helper modules.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.layering import (
    ALLOWED,
    FACE_EXCEPTIONS,
    IO_MODULES,
    PACKAGE,
    ROOT,
    Import,
    imports_of,
    package_of,
    project_modules,
)

MODULES = project_modules(PACKAGE)
KNOWN = set(MODULES)
CORE = sorted(name for name, path in MODULES.items() if path.parent == PACKAGE / "dxlink")


def project_imports(module: str) -> list[Import]:
    """The ``pipeline`` modules (or packages) ``module`` imports."""
    found = imports_of(MODULES[module], KNOWN)
    return [i for i in found if i.module == "pipeline" or i.module.startswith("pipeline.")]


def face(package: str) -> str:
    """The module that is a package's public face."""
    return "pipeline" if package == "pipeline" else f"pipeline.{package}"


def test_every_module_belongs_to_a_package_of_the_table() -> None:
    """A new package or top-level module gets its row in the table before it is used."""
    assert [module for module in MODULES if package_of(module) is None] == []
    assert {package_of(module) for module in MODULES} == set(ALLOWED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_packages_below_it(module: str) -> None:
    """Each module imports its own package and the packages the table allows, nothing else."""
    package = package_of(module)
    assert package is not None
    bad = [
        f"line {i.line}: {i.module}"
        for i in project_imports(module)
        if (imported := package_of(i.module)) != package and imported not in ALLOWED[package]
    ]
    assert bad == [], f"{module} ({package}) may import only {sorted(ALLOWED[package])}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_other_packages_through_their_face(module: str) -> None:
    """Another package is imported through its ``__init__``, unless the pair is listed."""
    package = package_of(module)
    assert package is not None
    bad = []
    for i in project_imports(module):
        imported = package_of(i.module)
        assert imported is not None, i
        inside = imported == package or package.startswith(f"{imported}.")
        if not inside and i.module != face(imported) and (module, i.module) not in FACE_EXCEPTIONS:
            bad.append(f"line {i.line}: {i.module} (use {face(imported)})")
    assert bad == [], f"{module} reaches past a package's face"


def test_face_exceptions_still_occur() -> None:
    """Each listed exception is an import the tree really makes (a stale one is removed)."""
    made = {(module, i.module) for module in MODULES for i in project_imports(module)}
    assert sorted(set(FACE_EXCEPTIONS) - made) == []


def test_nothing_imports_the_entry_points() -> None:
    """Only ``cli`` imports ``ingest``, only ``__main__`` imports ``cli``; nobody imports
    ``__main__``."""
    for module in MODULES:
        package = package_of(module)
        for i in project_imports(module):
            imported = package_of(i.module)
            if imported == package:
                continue
            assert imported != "__main__", f"{module} imports {i.module}"
            assert imported != "cli" or package == "__main__", f"{module} imports {i.module}"
            assert imported != "ingest" or package == "cli", f"{module} imports {i.module}"


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io_or_clock(module: str) -> None:
    """A protocol module imports none of asyncio, websockets, time, sockets or HTTP clients."""
    found = imports_of(MODULES[module], KNOWN)
    bad = sorted({i.module for i in found if i.module.split(".")[0] in IO_MODULES})
    assert bad == [], f"{module} imports {bad}"


def test_core_is_every_module_of_the_protocol_folder() -> None:
    """The I/O rule covers the whole protocol folder, not a hand-kept list of it."""
    assert "pipeline.dxlink.protocol" in CORE and "pipeline.dxlink.pacing" in CORE
    assert not any(name.startswith("pipeline.dxlink.client") for name in CORE)


def test_nothing_in_the_package_imports_tests_or_benchmarks() -> None:
    """The shipped package stands alone: it never imports the suite or the benchmarks."""
    bad = [
        f"{module}: {i.module}"
        for module, path in MODULES.items()
        for i in imports_of(path, KNOWN)
        if i.module.split(".")[0] in ("tests", "benchmarks")
    ]
    assert bad == []


TEST_SIDE = project_modules(ROOT / "tests") | project_modules(ROOT / "benchmarks")


def is_test_module(module: str) -> bool:
    """A module pytest collects (``test_*.py``) or its ``conftest``."""
    last = module.rpartition(".")[2]
    return last.startswith("test_") or last == "conftest"


@pytest.mark.parametrize("module", sorted(TEST_SIDE))
def test_no_module_of_the_suite_imports_a_test_module(module: str) -> None:
    """Tests, helpers and benchmarks share code through helper modules, never test modules."""
    found = imports_of(TEST_SIDE[module], set(TEST_SIDE))
    bad = [f"line {i.line}: {i.module}" for i in found if is_test_module(i.module)]
    assert bad == []


# --------------------------------------------------------------------------- the checker


def test_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The ast check also finds an import hidden inside a function body."""
    source = tmp_path / "sneaky.py"
    source.write_text("def f():\n    import time\n    from asyncio import sleep\n")
    assert {i.module for i in imports_of(source)} == {"time", "asyncio"}


def test_checker_sees_type_checking_imports_and_resolves_relative_ones(tmp_path: Path) -> None:
    """Imports under ``if TYPE_CHECKING``, relative imports and ``from package import
    submodule`` all resolve to the absolute module imported."""
    package = tmp_path / "pipeline" / "metrics"
    package.mkdir(parents=True)
    source = package / "sneaky.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from pipeline.store.upsert import UpsertResult\n"
        "from . import health\n"
        "from ..dxlink import candle_block, Candle\n"
    )
    known = {"pipeline.metrics.health", "pipeline.dxlink.candle_block"}
    found = sorted(i.module for i in imports_of(source, known, root=tmp_path))
    assert found == [
        "pipeline.dxlink",
        "pipeline.dxlink.candle_block",
        "pipeline.metrics.health",
        "pipeline.store.upsert",
        "typing",
    ]


def test_package_of_takes_the_longest_match() -> None:
    """The client's modules belong to ``dxlink.client``, the protocol's to ``dxlink``."""
    assert package_of("pipeline.dxlink.client.manager") == "dxlink.client"
    assert package_of("pipeline.dxlink.events") == "dxlink"
    assert package_of("pipeline") == "pipeline"
    assert package_of("pipeline.schema") == "schema"
    assert package_of("polars") is None
