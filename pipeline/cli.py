"""The ``candles`` command line: a thin layer over the library.

Each command loads what it needs, calls one library function and turns library errors into a
clean message with exit code 1 (sqlite-utils' ``cli.py`` is the model).

The config file is ``--config``, else ``$CANDLES_CONFIG``, else the nearest ``config.toml`` in
the working directory or a folder above it (:func:`pipeline.config.find_config_file`); paths
in it are relative to its folder, so every command means the same store wherever it is run
from. A value given by a flag is named by that flag in errors (``--symbol: ...``) and in
``candles config check --show``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import click

from pipeline import __version__
from pipeline.config import (
    Config,
    ConfigError,
    ResolvedConfig,
    describe_options,
    find_config_file,
    parse_duration,
    resolve_config,
)
from pipeline.simulator import FAULT_HELP

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])


def config_options(func: F) -> F:
    """``--config`` and ``--profile``, shared by every command that reads the config."""
    func = click.option(
        "--profile",
        envvar="CANDLES_PROFILE",
        help="Profile from the config file to apply, e.g. simulator or production "
        "[default: $CANDLES_PROFILE, else none].",
    )(func)
    func = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="CANDLES_CONFIG",
        help="Config file [default: $CANDLES_CONFIG, else the nearest config.toml in this "
        "folder or above, else built-in defaults].",
    )(func)
    return func


def load(
    config_path: Path | None,
    profile: str | None,
    flags: Mapping[str, tuple[str, Any]] | None = None,
) -> ResolvedConfig:
    """Load the config, or exit 1 with every problem listed.

    Args:
        config_path: ``--config`` (or ``$CANDLES_CONFIG``); ``None`` searches for one.
        profile: ``--profile``.
        flags: option key → (flag, value) for the flags given; ``None`` values are unset.
    """
    path = config_path if config_path is not None else find_config_file()
    given = {key: (flag, value) for key, (flag, value) in (flags or {}).items()}
    given = {k: v for k, v in given.items() if v[1] is not None and v[1] != []}
    try:
        return resolve_config(
            path,
            profile,
            {key: value for key, (_, value) in given.items()},
            flags={key: flag for key, (flag, _) in given.items()},
        )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _duration(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None
    if seconds <= 0:
        raise click.BadParameter(f"{text!r} is not a positive duration", param_hint=flag)
    return seconds


@click.group()
@click.version_option(__version__, prog_name="candles")
def cli() -> None:
    """Capture tastytrade DXLink candles into a DuckLake store and query them with SQL."""


@cli.command()
@config_options
@click.option(
    "--symbol",
    "symbols",
    multiple=True,
    help="Symbol to capture (repeatable) [default: subscriptions.symbols].",
)
@click.option(
    "--interval",
    "intervals",
    multiple=True,
    help="Candle period, e.g. 5m (repeatable) [default: subscriptions.intervals].",
)
@click.option(
    "--lookback",
    help="History to request on first start, e.g. 3d [default: subscriptions.lookback].",
)
@click.option("--duration", help="Stop after this long, e.g. 90s, 10m, 2h [default: run forever].")
@click.option("--store", "store_path", help="Store folder [default: store.path].")
@click.option("--shard", help="Capture only shard K of N of the series, e.g. 2/3 [default: all].")
@click.option(
    "--record",
    "record_dir",
    metavar="DIR",
    help="Record every DXLink frame into DIR (secrets redacted) [default: [record] section].",
)
def ingest(
    config_path: Path | None,
    profile: str | None,
    symbols: tuple[str, ...],
    intervals: tuple[str, ...],
    lookback: str | None,
    duration: str | None,
    store_path: str | None,
    shard: str | None,
    record_dir: str | None,
) -> None:
    """Stream candles into the store until interrupted.

    With no tastytrade account configured this runs the built-in DXLink simulator:

        candles ingest --symbol AAPL --interval 1m --duration 2m

    SIGINT/SIGTERM (or the end of --duration) stores the completed candles, then exits.

    \b
    Exit status:
      0   stopped with every completed candle stored
      1   could not start or had to stop; the message says what to fix
      69  stopped without ever connecting to the source (every attempt failed)
      75  stopped with completed candles not stored (the store stayed unwritable for
          ingest.shutdown_timeout seconds, or a second signal came while stopping);
          the log says how many; the next start fetches them again
    """
    from pipeline.ingest import IngestError, NeverConnected, ShutdownIncomplete, run_ingest

    resolved = load(
        config_path,
        profile,
        {
            "subscriptions.symbols": ("--symbol", list(symbols)),
            "subscriptions.intervals": ("--interval", list(intervals)),
            "subscriptions.lookback": ("--lookback", lookback),
            "store.path": ("--store", store_path),
            "ingest.shard": ("--shard", shard),
            "record.enabled": ("--record", True if record_dir is not None else None),
            "record.dir": ("--record", record_dir),
        },
    )
    seconds = _duration(duration, "--duration")
    try:
        run_ingest(resolved.config, duration=seconds, interactive=sys.stderr.isatty())
    except (ShutdownIncomplete, NeverConnected) as exc:
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
    help="Output format; NaN is written as null (an empty CSV field) in every format.",
)
def query(
    sql: str, config_path: Path | None, profile: str | None, store_path: str | None, fmt: str
) -> None:
    """Run read-only SQL against the store (works while ingest runs).

    candles query "SELECT symbol, period, count(*) FROM candles GROUP BY ALL"
    """
    from pipeline.store import QueryError, S3Options, format_frame, run_query

    store = load(config_path, profile, {"store.path": ("--store", store_path)}).config.store
    try:
        frame = run_query(
            sql,
            path=store.path,
            catalog=store.catalog,
            data_path=store.data_path,
            s3=S3Options(**store.s3.model_dump()),
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
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "csv"]),
    default="parquet",
    show_default=True,
    help="File format; NaN is written as null (an empty CSV field).",
)
@click.option("--where", help="SQL filter, e.g. \"symbol = 'AAPL'\" [default: every candle].")
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

    store = load(config_path, profile, {"store.path": ("--store", store_path)}).config.store
    try:
        count = export_store(
            out,
            path=store.path,
            catalog=store.catalog,
            data_path=store.data_path,
            fmt=fmt,  # type: ignore[arg-type]
            where=where,
            s3=S3Options(**store.s3.model_dump()),
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

    config = load(config_path, profile).config
    try:
        summary = fetch_status(url or url_for(config.metrics.host, config.metrics.port))
    except StatusError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render_status(summary))
    if not summary.healthy:
        sys.exit(1)


@cli.command()
@config_options
@click.option(
    "--source",
    "source_kind",
    type=click.Choice(["simulator", "tastytrade", "dxlink"]),
    help="Source to check [default: source.kind].",
)
@click.option("--symbol", help="Symbol to subscribe [default: the first of subscriptions.symbols].")
@click.option("--interval", help="Candle period [default: the first of subscriptions.intervals].")
@click.option("--since", default="1h", show_default=True, help="fromTime of the subscription.")
@click.option("--timeout", default="30s", show_default=True, help="Longest wait for the candles.")
def doctor(
    config_path: Path | None,
    profile: str | None,
    source_kind: str | None,
    symbol: str | None,
    interval: str | None,
    since: str,
    timeout: str,
) -> None:
    """Check, step by step, that the source delivers candles (first contact).

    Secrets in the environment, the OAuth access token, the quote token and DXLink URL
    (tastytrade), the WebSocket connect, SETUP and AUTH_STATE, a channel and its
    FEED_CONFIG, one Candle subscription and the first candles: each step timed, its
    findings shown with every secret masked. Exit status 0 only if every step passes.

        candles doctor --profile production
    """
    from pipeline.dxlink import CandleSymbol
    from pipeline.ingest import Outcome, StepResult, run_doctor

    resolved = load(
        config_path,
        profile,
        {
            "source.kind": ("--source", source_kind),
            "subscriptions.symbols": ("--symbol", [symbol] if symbol is not None else None),
            "subscriptions.intervals": ("--interval", [interval] if interval is not None else None),
        },
    )
    config = resolved.config
    wait = _duration(timeout, "--timeout") or 30.0
    back = timedelta(seconds=_duration(since, "--since") or 3600.0)
    subs = config.subscriptions
    series = CandleSymbol.of(
        subs.symbols[0], subs.intervals[0], **({} if subs.extended_hours else {"tho": "true"})
    )
    click.echo(f"candles doctor: source {config.source.kind}, {series.normalized}")

    def show(result: StepResult) -> None:
        took = "" if result.outcome is Outcome.NOT_RUN else f"{result.seconds:7.3f}s"
        text = f"{result.step}: {result.detail}" if result.detail else str(result.step)
        click.echo(f"  {result.outcome!s:<8} {took:>8}  {text}")
        if result.advice:
            click.echo(f"  {'':<8} {'':>8}  what to do: {result.advice}")

    report = asyncio.run(run_doctor(config, series=series, since=back, wait=wait, on_step=show))
    if report.ok:
        click.echo("doctor: every step passed; `candles ingest` can run with this config")
        return
    failed = report.failed
    click.echo(f"doctor: failed at {failed.step if failed else 'an unknown step'}", err=True)
    sys.exit(1)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, help="TCP port; 0 picks a free one.")
@click.option("--token", default="simulator", show_default=True, help="Token AUTH must carry.")
@click.option(
    "--no-auth",
    is_flag=True,
    help="Need no token: AUTHORIZED right after SETUP, like dxFeed's demo endpoint "
    "[default: a token is needed].",
)
@click.option(
    "--speed",
    default=60.0,
    show_default=True,
    help="Simulated seconds per second while the market clock is behind the wall clock.",
)
@click.option(
    "--start-behind",
    default="1h",
    show_default=True,
    help="How far behind the wall clock the market clock starts (0s: at it); it never "
    "runs ahead of the wall clock.",
)
@click.option("--seed", default=1, show_default=True, help="Market seed: same seed, same candles.")
@click.option(
    "--fault",
    "faults",
    multiple=True,
    help=f"Inject a fault (repeatable) [default: none]: {FAULT_HELP}",
)
def simulate(
    host: str,
    port: int,
    token: str,
    no_auth: bool,
    speed: float,
    start_behind: str,
    seed: int,
    faults: tuple[str, ...],
) -> None:
    """Run the built-in DXLink simulator until interrupted (SIGINT/SIGTERM).

    candles simulate --port 8765 --token TOKEN --speed 60 --seed 1 --fault drop@30
    """
    import time

    from pipeline.simulator import Simulator, SimulatorClock, parse_fault

    try:
        behind = parse_duration(start_behind)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--start-behind") from None
    try:
        now_ms = int(time.time() * 1000)
        clock = SimulatorClock.catching_up(speed, now_ms - int(behind.total_seconds() * 1000))
        scheduled = [parse_fault(spec) for spec in faults]
        sim = Simulator(
            host=host,
            port=port,
            token=None if no_auth else token,
            seed=seed,
            clock=clock,
            faults=scheduled,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    catch_up = clock.real_seconds_to_catch_up()
    if catch_up == 0:
        pace = "runs in real time"
    elif catch_up is None:
        pace = f"runs {speed:g}x, slower than the wall clock"
    else:
        pace = f"runs {speed:g}x until it reaches the wall clock in about {catch_up:.0f}s"

    def ready(url: str) -> None:
        auth = "no token needed" if no_auth else "token required"
        click.echo(
            f"DXLink simulator serving {url} (seed {seed}, {auth}): market clock starts "
            f"{start_behind} behind the wall clock and {pace}, then in real time, never "
            "ahead of it; Ctrl-C stops"
        )

    asyncio.run(_serve_until_signalled(sim, ready))


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--speed",
    type=float,
    help="Replay the recorded timing X times faster [default: as fast as the client reads].",
)
@click.option("--port", default=8765, show_default=True, help="TCP port; 0 picks a free one.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--wait",
    "wait_for_client",
    default=10.0,
    show_default=True,
    help="Seconds a recorded frame waits for the client step it answers before it is left out.",
)
def replay(
    files: tuple[Path, ...], speed: float | None, port: int, host: str, wait_for_client: float
) -> None:
    """Serve recorded DXLink sessions over DXLink until interrupted (SIGINT/SIGTERM).

    FILES are recording files or folders of them (candles ingest --record). Point any DXLink
    client at the URL it prints, e.g. ingest:

    \b
      candles replay recordings/ --port 8765
      CANDLES_SOURCE__SIMULATOR__URL=ws://127.0.0.1:8765/ candles ingest --store replayed
    """
    import asyncio
    import logging

    from pipeline.recording import Recording, RecordingError, ReplayServer, recording_files

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        server = ReplayServer(
            Recording(recording_files(files)),
            host=host,
            port=port,
            speed=speed,
            wait_for_client=wait_for_client,
        )
    except RecordingError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    for problem in server.problems:
        click.echo(f"! {problem}", err=True)
    pace = "as fast as the client reads" if speed is None else f"{speed:g}x the recorded pace"
    summary = server.describe()

    def ready(url: str) -> None:
        click.echo(f"replaying {summary} at {url} ({pace}); Ctrl-C stops")

    try:
        asyncio.run(_serve_until_signalled(server, ready))
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None


@cli.command()
@config_options
@click.option(
    "--from-recording",
    "recordings",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    metavar="FILES",
    help="Recording files or folders of them (more may follow as arguments).",
)
@click.argument("more", nargs=-1, type=click.Path(path_type=Path))
@click.option("--store", "store_path", help="Store folder [default: store.path].")
def rebuild(
    config_path: Path | None,
    profile: str | None,
    recordings: tuple[Path, ...],
    more: tuple[Path, ...],
    store_path: str | None,
) -> None:
    """Rebuild or repair a store from recorded DXLink sessions, without a network.

    The recorded server frames go through the same protocol, candle manager and store as
    ingest does; candles already stored with the same values are left as they are.

    \b
      candles rebuild --from-recording recordings/*.jsonl.zst --store rebuilt

    \b
    Exit status:
      0   every recorded frame was used
      1   part of the recording was damaged or unusable (each part is named above the
          summary, with its file and byte offset; nothing from it reached the store), or the
          rebuild could not run
    """
    from pipeline.ingest import ingest_process_tuning
    from pipeline.ingest import rebuild as run_rebuild
    from pipeline.recording import Recording, RecordingError, recording_files
    from pipeline.store import StoreError

    config = load(config_path, profile, {"store.path": ("--store", store_path)}).config
    try:
        recording = Recording(recording_files((*recordings, *more)))
        with ingest_process_tuning():  # the ingest hot path: the same process settings
            report = run_rebuild(
                recording, config, on_problem=lambda text: click.echo(f"! {text}", err=True)
            )
    except (RecordingError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.summary())
    if report.problems:
        click.echo(
            f"{len(report.problems)} parts of the recording were left out (listed above)",
            err=True,
        )
        sys.exit(1)


@cli.group(name="config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command()
@config_options
@click.option(
    "--show",
    is_flag=True,
    help="List every effective value and where it came from [default: only check].",
)
def check(config_path: Path | None, profile: str | None, show: bool) -> None:
    """Validate the config (no network); exit 1 listing every problem.

    candles config check --config config.toml --profile production --show
    """
    resolved = load(config_path, profile)
    config = resolved.config
    problem = _credentials_problem(config)
    if problem is None:
        for note in config.store.notes():
            click.echo(f"note: {note}")
        series = config.subscriptions.candle_symbols()
        listed = ", ".join(s.normalized for s in series[:4]) + (", ..." if len(series) > 4 else "")
        file = str(resolved.file) if resolved.file else "none (built-in defaults)"
        profile_note = f", profile {resolved.profile}" if resolved.profile else ""
        click.echo(
            f"config OK: source {config.source.kind}, {len(series)} series ({listed}), "
            f"store {config.store.path}; config file {file}{profile_note}"
        )
    if show:
        click.echo(render_effective(resolved))
    if problem is not None:
        raise click.ClickException(problem)


def _credentials_problem(config: Config) -> str | None:
    """What the selected source needs from the environment and does not find there."""
    source = config.source
    if source.kind == "tastytrade":
        missing = source.tastytrade.missing_env()
        if missing:
            return "the tastytrade source needs these environment variables set: " + ", ".join(
                missing
            )
    if source.kind == "dxlink" and (problem := source.dxlink.token_problem()) is not None:
        return problem
    store = config.store
    if store.data_path is not None and "://" in store.data_path:
        missing = store.s3.missing_env()
        if missing:
            return (
                f"the data path {store.data_path} needs these environment variables set: "
                + ", ".join(missing)
            )
    return None


def render_effective(resolved: ResolvedConfig, environ: Mapping[str, str] | None = None) -> str:
    """Every option's effective value and where it came from, one line each.

    Secrets never appear: options that name an environment variable (``*_env``) show the
    name and whether it is set; a ``token`` option (the simulator's) is not shown at all; URLs
    are shown without user info or query.
    """
    import os

    env = os.environ if environ is None else environ
    config_data = resolved.config.model_dump(mode="json")
    rows: list[tuple[str, str, str]] = []
    for option in describe_options():
        value: Any = config_data
        for part in option.key.split("."):
            value = value[part]
        source = resolved.sources[option.key]
        origin = "file" if source.kind == "file" else str(source)  # the file is named above
        if source.kind == "default" and value is not None and option.key in _PATHS:
            where = resolved.file.parent if resolved.file is not None else "the working directory"
            origin += f" (relative to {where})"
        rows.append((option.key, _shown(option.key, value, env), origin))
    width = max(len(key) for key, _, _ in rows)
    value_width = min(48, max(len(text) for _, text, _ in rows))
    head = f"{'option':<{width}}  {'value':<{value_width}}  from"
    lines = [head] + [f"{k:<{width}}  {v:<{value_width}}  {o}" for k, v, o in rows]
    return "\n".join(lines)


_PATHS = frozenset({"store.path", "store.data_path", "store.catalog"})


def _shown(key: str, value: Any, env: Mapping[str, str]) -> str:
    name = key.rsplit(".", 1)[-1]
    if name.endswith("_env"):
        if value is None:
            return "(unset)"
        state = "set" if env.get(str(value), "").strip() else "not set"
        return f"{value} ({state})"
    if name == "token":
        return "(not shown)"
    if value is None:
        return "(unset)"
    if name.endswith("url") and isinstance(value, str):
        from pipeline.dxlink.client import loggable_url

        value = loggable_url(value)  # user info or a query could carry a credential
    return json.dumps(value, ensure_ascii=False)


class _Server(Protocol):
    """A server the CLI runs in the foreground: ``candles simulator``, ``candles replay``."""

    @property
    def url(self) -> str: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


async def _serve_until_signalled(server: _Server, on_ready: Callable[[str], None]) -> None:
    """Run ``server`` until SIGINT or SIGTERM, then stop it cleanly; ``on_ready(url)`` once
    listening."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with server:
            on_ready(server.url)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main() -> None:
    cli()
