"""The analysis notebooks: stored clean, and run top to bottom in a fresh kernel.

Each notebook runs through nbclient in a new ``python3`` kernel (this virtualenv's
interpreter) against a store that :func:`tests.helpers.notebook_store.fill_store` wrote from the
simulator's market. The kernel gets ``CANDLES_STORE`` and ``CANDLES_FIGURES`` through its
environment, as a user would set them, and the Agg backend (no display). The PNG files the
notebooks save are then checked for what a reader should see in them.

And as shipped (issue 17): in a copy of the project, ``candles ingest`` runs as a process from
the project's root, then both notebooks run from ``notebooks/`` (where Jupyter starts their
kernels) with no ``CANDLES_STORE`` or ``CANDLES_CONFIG``: they must find that store through
the project's ``config.toml``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import nbformat
import numpy as np
import polars as pl
import pytest
from matplotlib.colors import to_rgb
from nbclient import NotebookClient
from nbformat import NotebookNode

from pipeline import analysis
from pipeline.config import load_config
from tests.helpers.ingest_stop import ingest_until_stored
from tests.helpers.notebook_store import FilledStore, fill_store

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXPLORE = "01_explore_candles.ipynb"
QUALITY = "02_data_quality.ipynb"
CELL_TIMEOUT_S = 60  # per cell; a cell takes well under 2 s, this only stops a hung kernel
MIN_PNG_BYTES = 20_000  # an empty 11x6 in. figure with two axes is about 18 KB


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> FilledStore:
    return fill_store(tmp_path_factory.mktemp("notebook-store") / "data")


def read_notebook(name: str) -> NotebookNode:
    """The committed notebook (nbformat has no type hints, hence the cast)."""
    reader: Callable[..., NotebookNode] = nbformat.read
    return reader(NOTEBOOKS / name, as_version=4)


def run_notebook(
    name: str,
    store: Path | None,
    figures: Path,
    scratch: Path,
    *,
    folder: Path = NOTEBOOKS,
) -> NotebookNode:
    """Execute a notebook in a fresh kernel started in ``folder``; a failing cell raises
    CellExecutionError. ``store`` None: no CANDLES_STORE (nor CANDLES_CONFIG), as shipped."""
    notebook = read_notebook(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANDLES_")}
    env |= {
        "CANDLES_FIGURES": str(figures),
        "MPLBACKEND": "Agg",
        "IPYTHONDIR": str(scratch / "ipython"),  # no history database in the user's home
    }
    if store is not None:
        env["CANDLES_STORE"] = str(store)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(folder)}},
    )
    client.execute(env=env)
    return notebook


def text_outputs(notebook: NotebookNode) -> str:
    """Everything the notebook printed or displayed as text, in order."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def coloured_pixels(png: Path) -> int:
    """Pixels with a clear hue: data drawn in colour, not axes, grid, text or background."""
    rgb = matplotlib.image.imread(png)[..., :3]
    return int(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.2).sum())


def colour_runs(png: Path, colour: str) -> int:
    """How many separate runs of image columns hold pixels of exactly ``colour``.

    Candle bodies are filled rectangles separated by a gap, so each body of that colour is
    one run (neighbouring bodies of the same colour stay apart by the 30 % gap).
    """
    rgb = matplotlib.image.imread(png)[..., :3]
    mask = (np.abs(rgb - np.array(to_rgb(colour))) < 0.02).all(axis=-1)
    columns = mask.any(axis=0).astype(int)
    return int((np.diff(np.concatenate(([0], columns))) == 1).sum())


def check_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not saved"
    assert path.stat().st_size > MIN_PNG_BYTES, f"{path.name} is nearly empty"
    assert coloured_pixels(path) > 500, f"{path.name} shows no data"


# ----------------------------------------------------------------- stored form


@pytest.mark.parametrize("name", [EXPLORE, QUALITY])
def test_committed_notebook_has_no_outputs(name: str) -> None:
    """The committed notebook is valid and has no outputs or execution counts."""
    notebook = read_notebook(name)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{name} has no code"
    for cell in code:
        assert cell.outputs == [], f"{name}: a cell has outputs: {cell.source[:60]!r}"
        assert cell.execution_count is None, f"{name}: a cell has an execution count"
    assert "widgets" not in notebook.metadata


@pytest.mark.parametrize("name", [EXPLORE, QUALITY])
def test_notebook_reads_the_store_only_through_connect(name: str) -> None:
    """The store location comes from one place: connect() with no path, no env lookups."""
    notebook = read_notebook(name)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert code.count("analysis.connect()") == 1
    for forbidden in ("os.environ", "getenv", "CANDLES_STORE", "duckdb.connect"):
        assert forbidden not in code, f"{name} bypasses analysis.connect(): {forbidden}"
    assert notebook.cells[0].cell_type == "markdown"


# ----------------------------------------------------------------- the filled store


def test_fill_store_writes_what_it_reports(filled: FilledStore) -> None:
    """Row counts per series match the summary; revisions and a removal were written."""
    con = analysis.connect(filled.path, verify_extensions=False)
    try:
        stored = analysis.coverage(con)
        revised = analysis.revisions(con)
    finally:
        con.close()
    assert stored["candles"].sum() == filled.candles == sum(filled.per_series.values())
    assert stored.height == len(filled.symbols) * len(filled.periods)
    assert revised.height == filled.revised >= 1
    assert filled.removed >= 0
    daily = stored.filter(pl.col("period") == "1d")
    assert daily["first"].unique().to_list() == [filled.daily_start]


def test_fill_store_quiet_period_is_a_gap_in_every_intraday_series(
    filled: FilledStore,
) -> None:
    """The trading halt leaves no 1m/5m candle: candle_gaps spans it in every series."""
    con = analysis.connect(filled.path, verify_extensions=False)
    try:
        holes = analysis.gaps(con)
        inside = con.execute(
            "SELECT count(*) FROM candles WHERE period IN ('1m', '5m') AND time >= ? AND time < ?",
            list(filled.quiet),
        ).fetchone()
    finally:
        con.close()
    assert inside == (0,)
    halt_start, halt_end = filled.quiet
    for symbol in filled.symbols:
        for period in ("1m", "5m"):
            spans = holes.filter(pl.col("symbol") == symbol, pl.col("period") == period)
            covering = spans.filter(
                pl.col("gap_start") <= halt_start, pl.col("gap_end") >= halt_end
            )
            assert covering.height == 1, f"no gap over the halt in {symbol} {period}"


def test_fill_store_periods_agree_and_lag_is_positive(filled: FilledStore) -> None:
    """5m candles equal their 1m candles rolled up; every candle was stored after it ended."""
    values = ["time", "open", "high", "low", "close", "volume"]
    con = analysis.connect(filled.path, verify_extensions=False)
    try:
        for symbol in filled.symbols:
            stored = analysis.load_candles(con, symbol, "5m").select(values)
            rolled = con.execute(
                f"SELECT {', '.join(values)} FROM resample(?, '1m', INTERVAL 5 MINUTE)", [symbol]
            ).pl()
            assert stored.equals(rolled.cast(stored.schema)), f"{symbol}: 5m != rolled-up 1m"
        lag = analysis.ingestion_lag(con)
    finally:
        con.close()
    assert (lag["lag"].dt.total_milliseconds() > 0).all()


# ----------------------------------------------------------------- executed notebooks


def test_explore_notebook_runs_and_draws_candles(filled: FilledStore, tmp_path: Path) -> None:
    """01 runs top to bottom and saves a candlestick chart with real candles and a vol chart."""
    figures = tmp_path / "figures"
    notebook = run_notebook(EXPLORE, filled.path, figures, tmp_path)
    charts = sorted(figures.glob("candles_*_5m.png"))
    assert len(charts) == 1, sorted(p.name for p in figures.iterdir())
    check_png(charts[0])
    up, down = (
        colour_runs(charts[0], analysis.UP_COLOR),
        colour_runs(charts[0], analysis.DOWN_COLOR),
    )
    assert up + down >= 40, f"only {up} rising and {down} falling candle bodies drawn"
    check_png(figures / "realized_volatility.png")
    shown = text_outputs(notebook)
    assert f"store: {filled.path.resolve()}" in shown
    assert "annualized_vol" in shown


def test_quality_notebook_runs_and_shows_the_gap(filled: FilledStore, tmp_path: Path) -> None:
    """02 runs top to bottom, lists the halt among the gaps and saves its two pictures."""
    figures = tmp_path / "figures"
    notebook = run_notebook(QUALITY, filled.path, figures, tmp_path)
    coverage_png = figures / "coverage.png"
    check_png(coverage_png)
    assert colour_runs(coverage_png, analysis.DOWN_COLOR) >= 1, "no gap drawn"
    check_png(figures / "ingestion_lag.png")
    shown = text_outputs(notebook)
    assert filled.quiet[0].strftime("%Y-%m-%d %H:%M:%S") in shown
    assert "candles stored before their period ended: 0" in shown


# ----------------------------------------------------------------- as shipped


@pytest.fixture(scope="module")
def ingested_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project (config.toml, notebooks/) after `candles ingest` ran from its
    root as a process, as the README's quick start has it."""
    project = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "config.toml", project / "config.toml")
    shutil.copytree(NOTEBOOKS, project / "notebooks")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANDLES_")}
    env["CANDLES_METRICS__ENABLED"] = "false"  # port 9464 may be taken on a shared machine
    # Stored at the first flush, not 5 s in; stopped (Ctrl-C) once every series is stored.
    env["CANDLES_SCHEDULE__FLUSH_INTERVAL"] = "0.2"
    series = {
        (s.base, s.period_label)
        for s in load_config(project / "config.toml", environ={}).subscriptions.candle_symbols()
    }
    code, log = ingest_until_stored(
        [sys.executable, "-m", "pipeline", "ingest"], project / "data", series, cwd=project, env=env
    )
    assert code == 0, log[-3000:]
    assert (project / "data" / "catalog.sqlite").is_file()
    return project


@pytest.mark.parametrize("name", [EXPLORE, QUALITY])
def test_notebook_runs_from_its_folder_against_the_ingested_store(
    name: str, ingested_project: Path, tmp_path: Path
) -> None:
    """From notebooks/ with no CANDLES_STORE: the notebook finds ../config.toml, reads the
    store `candles ingest` filled, runs top to bottom and draws its figures."""
    figures = tmp_path / "figures"
    notebook = run_notebook(name, None, figures, tmp_path, folder=ingested_project / "notebooks")
    shown = text_outputs(notebook)
    config = ingested_project / "config.toml"
    assert f"store: {ingested_project / 'data'} - found by store.path in {config}" in shown
    pictures = sorted(figures.glob("*.png"))
    assert len(pictures) == 2, [p.name for p in pictures]
    for picture in pictures:
        check_png(picture)
