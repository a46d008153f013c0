"""The ``candles`` command line: a thin layer over the library."""

from __future__ import annotations

import click

from pipeline import __version__

__all__ = ["cli", "main"]


@click.group()
@click.version_option(__version__, prog_name="candles")
def cli() -> None:
    """Capture tastytrade DXLink candles into a DuckLake store and query them with SQL."""


def main() -> None:
    cli()
