"""The ``candles`` command line: a thin layer over the library.

Each command loads what it needs, calls one library function and turns library errors into a
clean message with exit code 1 (sqlite-utils' ``cli.py`` is the model).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from pipeline import __version__
from pipeline.config import Config, ConfigError, load_config, parse_duration
from pipeline.simulator import FAULT_HELP

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_CONFIG = Path("config.toml")


def config_options(func: F) -> F:
    """``--config`` and ``--profile``, shared by every command that reads the config."""
    func = click.option(
        "--profile",
        envvar="CANDLES_PROFILE",
        help="Profile from config.toml to apply, e.g. simulator or production.",
    )(func)
    func = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="CANDLES_CONFIG",
        help="Config file [default: ./config.toml if present, else built-in defaults].",
    )(func)
    return func


def load(config_path: Path | None, profile: str | None, **overrides: Any) -> Config:
    """Load the config, or exit 1 with every problem listed."""
    if config_path is None and DEFAULT_CONFIG.is_file():
        config_path = DEFAULT_CONFIG
    try:
        return load_config(config_path, profile, {k: v for k, v in overrides.items() if v})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(__version__, prog_name="candles")
def cli() -> None:
    """Capture tastytrade DXLink candles into a DuckLake store and query them with SQL."""


@cli.command()
@config_options
@click.option("--symbol", "symbols", multiple=True, help="Symbol to capture (repeatable).")
@click.option("--interval", "intervals", multiple=True, help="Candle period, e.g. 5m (repeatable).")
@click.option("--duration", help="Stop after this long, e.g. 90s, 10m, 2h [default: run forever].")
@click.option("--store", "store_path", help="Store folder [default: store.path].")
@click.option("--shard", help="Capture only shard K of N of the series, e.g. 2/3 [default: all].")
def ingest(
    config_path: Path | None,
    profile: str | None,
    symbols: tuple[str, ...],
    intervals: tuple[str, ...],
    duration: str | None,
    store_path: str | None,
    shard: str | None,
) -> None:
    """Stream candles into the store until interrupted.

    With no tastytrade account configured this runs the built-in DXLink simulator:

        candles ingest --symbol AAPL --interval 1m --duration 2m

    SIGINT/SIGTERM (or the end of --duration) stores the completed candles, then exits.

    \b
    Exit status:
      0   stopped with every completed candle stored
      1   could not start or had to stop; the message says what to fix
      75  stopped with completed candles not stored (the final flush failed, the store
          stayed unwritable for ingest.shutdown_timeout seconds, or a second signal came
          while stopping); the log says how many; the next start fetches them again
    """
    from pipeline.ingest import IngestError, ShutdownIncomplete, run_ingest

    config = load(
        config_path,
        profile,
        **{
            "subscriptions.symbols": list(symbols),
            "subscriptions.intervals": list(intervals),
            "store.path": store_path,
            "ingest.shard": shard,
        },
    )
    seconds = None
    if duration is not None:
        try:
            seconds = parse_duration(duration).total_seconds()
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--duration") from None
    try:
        run_ingest(config, duration=seconds, interactive=sys.stderr.isatty())
    except ShutdownIncomplete as exc:
        sys.exit(exc.exit_code)  # the explanation is in the log already
    except IngestError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@click.argument("sql")
@config_options
@click.option("--store", "store_path", help="Store folder [default: store.path].")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table",
    show_default=True,
)
def query(
    sql: str, config_path: Path | None, profile: str | None, store_path: str | None, fmt: str
) -> None:
    """Run read-only SQL against the store (works while ingest runs).

    candles query "SELECT symbol, period, count(*) FROM candles GROUP BY ALL"
    """
    from pipeline.store import QueryError, S3Options, format_frame, run_query

    config = load(config_path, profile)
    path = store_path or config.store.path
    try:
        frame = run_query(
            sql,
            path=path,
            catalog=config.store.catalog,
            data_path=config.store.data_path,
            s3=S3Options(**config.store.s3.model_dump()),
        )
    except QueryError as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "parquet" and sys.stdout.isatty():
        raise click.ClickException("refusing to write Parquet to a terminal; redirect to a file")
    sys.stdout.buffer.write(format_frame(frame, fmt))  # type: ignore[arg-type]
    sys.stdout.flush()


@cli.command()
@config_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Target folder.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet")
@click.option("--where", help="SQL filter, e.g. \"symbol = 'AAPL'\".")
@click.option("--store", "store_path", help="Store folder [default: store.path].")
def export(
    config_path: Path | None,
    profile: str | None,
    out: str,
    fmt: str,
    where: str | None,
    store_path: str | None,
) -> None:
    """Export candles to files partitioned by period=/date=.

    candles export --out exports/candles --where "symbol = 'AAPL'"
    """
    from pipeline.store import QueryError, S3Options, export_store

    config = load(config_path, profile)
    try:
        count = export_store(
            out,
            path=store_path or config.store.path,
            catalog=config.store.catalog,
            data_path=config.store.data_path,
            fmt=fmt,  # type: ignore[arg-type]
            where=where,
            s3=S3Options(**config.store.s3.model_dump()),
        )
    except QueryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"exported {count} candles to {out}")


@cli.command()
@config_options
@click.option("--url", help="Metrics URL of the service [default: from [metrics] in the config].")
def status(config_path: Path | None, profile: str | None, url: str | None) -> None:
    """Show what a running ingest service is doing (reads its /metrics and /health).

    candles status
    """
    from pipeline.metrics import StatusError, fetch_status, render_status, url_for

    config = load(config_path, profile)
    try:
        summary = fetch_status(url or url_for(config.metrics.host, config.metrics.port))
    except StatusError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render_status(summary))
    if not summary.healthy:
        sys.exit(1)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, help="TCP port; 0 picks a free one.")
@click.option("--token", default="simulator", show_default=True, help="Token AUTH must carry.")
@click.option("--speed", default=60.0, show_default=True, help="Simulated seconds per second.")
@click.option("--seed", default=1, show_default=True, help="Market seed: same seed, same candles.")
@click.option("--fault", "faults", multiple=True, help=f"Inject a fault (repeatable): {FAULT_HELP}")
def simulate(
    host: str, port: int, token: str, speed: float, seed: int, faults: tuple[str, ...]
) -> None:
    """Run the built-in DXLink simulator until interrupted (SIGINT/SIGTERM).

    candles simulate --port 8765 --token TOKEN --speed 60 --seed 1 --fault drop@30
    """
    import asyncio

    from pipeline.simulator import Simulator, SimulatorClock, parse_fault

    try:
        clock = SimulatorClock.accelerated(speed)
        scheduled = [parse_fault(spec) for spec in faults]
        sim = Simulator(host=host, port=port, token=token, seed=seed, clock=clock, faults=scheduled)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None

    def ready(url: str) -> None:
        click.echo(f"DXLink simulator serving {url} (speed {speed:g}x, seed {seed}); Ctrl-C stops")

    asyncio.run(sim.serve_until_signalled(ready))


@cli.group(name="config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command()
@config_options
def check(config_path: Path | None, profile: str | None) -> None:
    """Validate the config file (no network); exit 1 listing every problem.

    candles config check --config config.toml --profile production
    """
    config = load(config_path, profile)
    if config.source.kind == "tastytrade":
        missing = config.source.tastytrade.missing_env()
        if missing:
            raise click.ClickException(
                "the tastytrade source needs these environment variables set: " + ", ".join(missing)
            )
    if config.store.data_path is not None and "://" in config.store.data_path:
        missing = config.store.s3.missing_env()
        if missing:
            raise click.ClickException(
                f"the data path {config.store.data_path} needs these environment variables "
                "set: " + ", ".join(missing)
            )
    for note in config.store.notes():
        click.echo(f"note: {note}")
    series = config.subscriptions.candle_symbols()
    click.echo(
        f"config OK: source {config.source.kind}, {len(series)} series "
        f"({', '.join(s.normalized for s in series[:4])}{', ...' if len(series) > 4 else ''}), "
        f"store {config.store.path}"
    )


def main() -> None:
    cli()
