"""Where figures go: PNG files in ``$CANDLES_FIGURES`` when it is set.

Part of :mod:`pipeline.analysis`. Figures are shown inline in a notebook; a CI run or a cron
job sets ``CANDLES_FIGURES`` so that it leaves static pictures behind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FIGURES_ENV", "figures_dir", "save_figure"]

FIGURES_ENV = "CANDLES_FIGURES"
"""Environment variable naming a folder to save figures to as PNG; unset: not saved."""

_FILE_NAME = re.compile(r"[^A-Za-z0-9.-]+")  # runs of anything else (and "_") become one "_"
_DPI = 100


def figures_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder named by ``$CANDLES_FIGURES``, or ``None`` when unset or empty."""
    env = os.environ if environ is None else environ
    folder = env.get(FIGURES_ENV, "").strip()
    return Path(folder) if folder else None


def save_figure(fig: Figure, name: str, *, folder: str | Path | None = None) -> Path | None:
    """Write ``fig`` as ``<folder>/<name>.png`` when a folder is set.

    Args:
        fig: The figure.
        name: File name without extension; characters other than letters, digits, ``_``,
            ``.`` and ``-`` become ``_`` (``candles_/ESZ25:XCME`` -> ``candles_ESZ25_XCME``).
        folder: The folder; ``None`` reads :func:`figures_dir`, and with that unset
            nothing is written.

    Returns:
        The file written, or ``None``.
    """
    target = figures_dir() if folder is None else Path(folder)
    if target is None:
        return None
    stem = _FILE_NAME.sub("_", name).strip("_.") or "figure"
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{stem}.png"
    fig.savefig(path, dpi=_DPI)
    return path
