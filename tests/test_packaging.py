"""The project is installable: its sdist and wheel carry everything, and the wheel runs anywhere.

``python -m build --no-isolation`` builds the sdist, then the wheel *from the sdist*, as a
release does, with the build backend the dev extra installs (offline). ``pipeline/sql`` is a
symlink to the top-level ``sql/`` folder: the sdist stores the files it points to, so the
wheel built from the sdist ships them inside the package, where :mod:`importlib.resources`
finds them. The installed wheel then runs ``candles ingest`` from an unrelated folder in a
fresh virtualenv that sees the suite's dependencies through a ``.pth`` file (no download) but
not the source tree.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config import Config
from tests.helpers.ingest_stop import ingest_until_stored
from tests.helpers.layering import PACKAGE, ROOT

SQL = ROOT / "sql"


@dataclass(frozen=True)
class Dists:
    """The built sdist and wheel."""

    sdist: Path
    wheel: Path


def _run(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command to completion; its stdout, or a failure showing both streams."""
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


# What a fresh checkout does not have: setuptools would read a stale egg-info's SOURCES.txt
# and ship files the configuration no longer names.
_NOT_CHECKED_OUT = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", ".*_cache", ".hypothesis",
    "results", "data",
)  # fmt: skip


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The sdist and the wheel built from it, from a copy of the tree as a checkout has it."""
    source = tmp_path_factory.mktemp("checkout") / "candle-pipeline"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_CHECKED_OUT)
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dists(sdist, wheel)


def test_wheel_ships_the_sql_files_inside_the_package(dists: Dists) -> None:
    """Every ``sql/*.sql`` file is in the wheel as ``pipeline/sql/<name>``, byte for byte."""
    wanted = {f"pipeline/sql/{path.name}": path.read_bytes() for path in SQL.glob("*.sql")}
    assert {"pipeline/sql/schema.sql", "pipeline/sql/gaps.sql"} <= set(wanted)
    with zipfile.ZipFile(dists.wheel) as wheel:
        shipped = {n: wheel.read(n) for n in wheel.namelist() if n.startswith("pipeline/sql/")}
    assert shipped == wanted


def test_wheel_ships_every_module_and_the_entry_point(dists: Dists) -> None:
    """Each subpackage and module of ``pipeline`` is in the wheel, with ``py.typed`` and the
    ``candles`` console script."""
    modules = {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.py")}
    packages = {name for name in modules if name.endswith("/__init__.py")}
    assert "pipeline/dxlink/client/__init__.py" in packages and len(packages) >= 10
    with zipfile.ZipFile(dists.wheel) as wheel:
        names = set(wheel.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = wheel.read(entry_points).decode()
    assert sorted(modules - names) == []
    assert "pipeline/py.typed" in names
    assert "candles = pipeline.cli:main" in scripts


def test_sdist_stores_the_linked_sql_files_as_files(dists: Dists) -> None:
    """The sdist holds ``pipeline/sql/*.sql`` as regular files equal to ``sql/``'s (the symlink
    itself does not travel; what it points to does)."""
    with tarfile.open(dists.sdist) as sdist:
        members = {m.name.partition("/")[2]: m for m in sdist.getmembers()}
        shipped = {}
        for name, member in members.items():
            if name.startswith("pipeline/sql/") and name.endswith(".sql"):
                assert member.isfile(), f"{name} is not a regular file in the sdist"
                extracted = sdist.extractfile(member)
                assert extracted is not None
                shipped[name.removeprefix("pipeline/sql/")] = extracted.read()
    assert shipped == {path.name: path.read_bytes() for path in SQL.glob("*.sql")}
    assert "pyproject.toml" in members and "README.md" in members


def _fresh_venv(folder: Path) -> Path:
    """A new virtualenv that reaches the suite's installed dependencies through a ``.pth``
    file (no download, no source tree on its path); its python."""
    _run(sys.executable, "-m", "venv", "--without-pip", folder)
    python = folder / "bin" / "python"
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    # A path listed in a .pth file is added to sys.path, but .pth files inside it are not
    # read: the suite's editable install of this project stays invisible.
    (Path(site) / "suite_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def test_installed_wheel_ingests_into_a_store_from_an_unrelated_folder(
    dists: Dists, tmp_path: Path
) -> None:
    """``pip install`` of the wheel into a fresh venv, then ``candles ingest`` in an empty
    folder creates ``data/`` there and fills it; ``candles query`` reads it back."""
    python = _fresh_venv(tmp_path / "venv")
    _run(
        sys.executable, "-m", "pip", "--python", python, "install",
        "--no-deps", "--no-index", "--quiet", dists.wheel,
    )  # fmt: skip
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CANDLES_", "PYTHON"))}
    env["CANDLES_METRICS__PORT"] = "0"  # the default 9464 may be taken on a shared machine
    where = _run(python, "-c", "import pipeline; print(pipeline.__file__)", cwd=folder, env=env)
    assert Path(where.strip()).is_relative_to(tmp_path / "venv"), where
    candles = tmp_path / "venv" / "bin" / "candles"
    wanted = {(s.base, s.period_label) for s in Config().subscriptions.candle_symbols()}
    # Stored at the first flush, not 5 s in; stopped (Ctrl-C) once every series is stored.
    flush_soon = env | {"CANDLES_SCHEDULE__FLUSH_INTERVAL": "0.2"}
    code, log = ingest_until_stored(
        [candles, "ingest"], folder / "data", wanted, cwd=folder, env=flush_soon
    )
    assert code == 0, log[-3000:]
    assert (folder / "data" / "catalog.sqlite").is_file()
    sql = "SELECT symbol, period, count(*) AS candles FROM candles GROUP BY ALL"
    printed = _run(candles, "query", "--format", "csv", sql, cwd=folder, env=env)
    rows = list(csv.DictReader(io.StringIO(printed)))
    assert {(r["symbol"], r["period"]) for r in rows} == wanted
    assert sum(int(r["candles"]) for r in rows) > 0
