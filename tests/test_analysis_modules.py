"""pipeline.analysis is one import for the notebooks, built from small modules with one job each."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import analysis

PACKAGE = Path(analysis.__file__).parent
# The parts whose public names the notebooks use through pipeline.analysis.
PARTS = (
    "pipeline.analysis_store",
    "pipeline.analysis_returns",
    "pipeline.analysis_quality",
    "pipeline.analysis_plots",
    "pipeline.analysis_figures",
)
# The shared checks are for the parts, not the notebooks.
INTERNAL = ("pipeline.analysis_frames",)
MAX_LINES = 400


def test_analysis_exports_exactly_the_public_names_of_its_parts() -> None:
    """pipeline.analysis re-exports every public name of its parts, and nothing else."""
    exported: dict[str, object] = {}
    for name in PARTS:
        part = importlib.import_module(name)
        overlap = set(exported) & set(part.__all__)
        assert not overlap, f"{name} exports {sorted(overlap)} again"
        exported.update({public: getattr(part, public) for public in part.__all__})
    assert sorted(analysis.__all__) == sorted(exported)
    for public, value in exported.items():
        assert getattr(analysis, public) is value, f"analysis.{public} is not the part's object"


def test_every_analysis_module_is_a_part_or_internal() -> None:
    """A new pipeline/analysis_*.py is listed here, so its names cannot go missing silently."""
    found = {f"pipeline.{path.stem}" for path in PACKAGE.glob("analysis_*.py")}
    assert found == set(PARTS) | set(INTERNAL)


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("analysis*.py")), ids=lambda p: p.name)
def test_analysis_module_stays_small(path: Path) -> None:
    """Each analysis module stays under 400 lines (one job per module)."""
    lines = len(path.read_text().splitlines())
    assert lines < MAX_LINES, f"{path.name} has {lines} lines; split it"


def test_importing_analysis_leaves_matplotlib_unloaded() -> None:
    """Importing pipeline.analysis does not import matplotlib (an optional extra)."""
    probe = "import sys, pipeline.analysis; print('matplotlib' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
        timeout=60,
    )
    assert done.stdout.strip() == "False", done.stderr
