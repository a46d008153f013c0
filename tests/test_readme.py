"""README.md is true: its option table is generated, every example runs, every name exists.

* The block between ``<!-- options:start -->`` and ``<!-- options:end -->`` is
  :func:`pipeline.config.describe_options` as a Markdown table. When it differs, the test
  fails; ``CANDLES_UPDATE_README=1`` rewrites it.
* Every fenced block is executed or checked (sqlite-utils' ``tests/test_docs.py`` is the
  model): SQL statements through ``run_query`` against a store filled from the simulator
  market; ``./run candles ...`` lines through ``CliRunner`` in a folder laid out like the
  project (``config.toml`` plus ``data/``); Python snippets with ``exec``; output samples
  against what the code prints; the architecture diagram's paths and classes; the package
  diagram's arrows against the import rules of ``tests/test_layering.py``. A block (or,
  with a quoted command prefix, some lines of a shell block) that cannot run here carries
  ``<!-- not-executed: reason -->`` or ``<!-- not-executed `prefix`: reason -->`` on the line
  right before its fence; anything else unexecuted fails.
* Config keys, metric names, CLI options, SQL objects, environment variables and packages
  named in the prose exist.

The tastytrade examples run against ``tests/helpers/fake_tastytrade.py`` plus a real simulator that
accepts exactly the quote tokens the fake REST API issued.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.metadata
import inspect
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import duckdb
import pytest
import zstandard
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from pipeline import analysis
from pipeline import config as config_module
from pipeline.cli import cli
from pipeline.config import Config, ConfigError, describe_options, load_config, loads_config
from pipeline.dxlink import SNAPSHOT_BEGIN, Candle, CandleSymbol
from pipeline.metrics import MetricsServer
from pipeline.recording import Record, Recording, recording_files
from pipeline.simulator import Simulator, SimulatorClock
from pipeline.store import run_query
from tests.helpers.fake_tastytrade import FakeClock, FakeTastytrade, IssuedTokenSimulator
from tests.helpers.ingest_stop import any_series_completed, every_series_completed, interrupt_when
from tests.helpers.layering import ALLOWED, PACKAGE
from tests.helpers.metrics import START, FakeService, reader
from tests.helpers.notebook_store import FilledStore, fill_store
from tests.helpers.recording import FIXTURE
from tests.helpers.timing import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
UPDATE_ENV = "CANDLES_UPDATE_README"
OPTIONS_START, OPTIONS_END = "<!-- options:start -->", "<!-- options:end -->"
CLIENT_SECRET, REFRESH_TOKEN = "readme-client-secret", "readme-refresh-token"

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
_MARKER = re.compile(r"^\s*<!-- not-executed(?: `(?P<prefix>[^`]+)`)?: (?P<reason>.+?) -->\s*$")
_ELLIPSIS_BODY = re.compile(r"^(?P<indent>\s*)\.\.\.\s*(#.*)?$", re.M)


# --------------------------------------------------------------------------- README model


@dataclass(frozen=True)
class Marker:
    """``<!-- not-executed[ `prefix`]: reason -->``: the block, or its lines with the prefix."""

    prefix: str | None
    reason: str


@dataclass(frozen=True)
class Block:
    """A fenced block: its language, the README line of its first code line, its code."""

    lang: str
    line: int
    code: str
    markers: tuple[Marker, ...]

    def skip_reason(self, text: str | None = None) -> str | None:
        """Why the block (or its line ``text``) is not executed, if it is marked."""
        for marker in self.markers:
            if marker.prefix is None or (text is not None and text.startswith(marker.prefix)):
                return marker.reason
        return None


@dataclass(frozen=True)
class Example:
    """One unit to execute: an SQL statement, a shell line, or a whole block."""

    block: Block
    line: int
    code: str

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def parse_blocks(text: str) -> list[Block]:
    """Every fenced block, with the not-executed markers on the lines right above it."""
    lines, blocks, i = text.splitlines(), list[Block](), 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        start, indent = i, len(fence["indent"])
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if not lines[i][:indent].strip() else lines[i])
            i += 1
        assert i < len(lines), f"README.md:{start + 1}: the fence is never closed"
        markers, above = list[Marker](), start - 1
        while above >= 0 and (found := _MARKER.match(lines[above])):
            markers.insert(0, Marker(found["prefix"], found["reason"]))
            above -= 1
        blocks.append(Block(fence["lang"], start + 2, "\n".join(body), tuple(markers)))
        i += 1
    return blocks


def prose(text: str) -> str:
    """The README without its fenced blocks."""
    return re.sub(r"^\s*```[\w-]*\s*$.*?^\s*```\s*$", "", text, flags=re.M | re.S)


def inline_code(text: str) -> list[str]:
    """Every `code span` of the prose, table pipes unescaped."""
    return [span.replace("\\|", "|") for span in re.findall(r"`([^`\n]+)`", prose(text))]


def examples(blocks: list[Block]) -> list[Example]:
    """SQL blocks split into statements, shell blocks into lines, other blocks whole."""
    units: list[Example] = []
    for block in blocks:
        lines = block.code.splitlines()
        if block.lang == "sql":
            cursor = 0
            for statement in duckdb.extract_statements(block.code):
                first = next(s for s in statement.query.splitlines() if _is_sql(s))
                cursor = next(n for n in range(cursor, len(lines)) if lines[n].startswith(first))
                units.append(Example(block, block.line + cursor, statement.query.strip()))
        elif block.lang == "sh":
            units += [
                Example(block, block.line + n, line.strip())
                for n, line in enumerate(lines)
                if shlex.split(line, comments=True)
            ]
        else:
            units.append(Example(block, block.line, block.code))
    return units


def _is_sql(line: str) -> bool:
    return bool(line.strip()) and not line.strip().startswith("--")


README_TEXT = README.read_text(encoding="utf-8")
BLOCKS = parse_blocks(README_TEXT)
EXAMPLES = examples(BLOCKS)


# --------------------------------------------------------------------------- options table


def _cell(text: str) -> str:
    """One Markdown table cell: one line, RST ``code`` as `code`, ``<`` and ``|`` escaped."""
    text = re.sub(r"``(.+?)``", r"`\1`", " ".join(text.split()))
    parts = text.split("`")  # even indexes lie outside code spans
    parts = [p.replace("<", "\\<") if n % 2 == 0 else p for n, p in enumerate(parts)]
    return "`".join(parts).replace("|", "\\|")


def options_table() -> str:
    """describe_options() as the README's Markdown table."""
    rows = ["| option | type / allowed | default | description |", "|---|---|---|---|"]
    for option in describe_options():
        default = option.default
        if default != "(unset)" and "`" not in default:
            default = f"`{default}`"
        cells = (f"`{option.key}`", option.type, default, option.description)
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows)


def with_options_table(text: str) -> str:
    """The README text with the generated section replaced by the current table."""
    assert text.count(OPTIONS_START) == 1 and text.count(OPTIONS_END) == 1, (
        f"README.md needs exactly one {OPTIONS_START} and one {OPTIONS_END}"
    )
    head, rest = text.split(OPTIONS_START)
    _, tail = rest.split(OPTIONS_END)
    return f"{head}{OPTIONS_START}\n{options_table()}\n{OPTIONS_END}{tail}"


def test_option_table_is_generated_from_the_code() -> None:
    """The README lists every option with its type and default exactly as describe_options."""
    current = README.read_text(encoding="utf-8")
    wanted = with_options_table(current)
    if os.environ.get(UPDATE_ENV) == "1" and wanted != current:
        README.write_text(wanted, encoding="utf-8")
        current = wanted
    assert current == wanted, (
        "README.md's option table differs from pipeline.config.describe_options(); "
        f"regenerate it: {UPDATE_ENV}=1 .venv/bin/python -m pytest "
        "tests/test_readme.py -k option_table"
    )


# --------------------------------------------------------------------------- environment


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> FilledStore:
    """A folder laid out like the project for ``./run``: config.toml plus a filled data/."""
    folder = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "config.toml", folder / "config.toml")
    return fill_store(folder / "data")


@dataclass
class Context:
    """What the example runners need."""

    filled: FilledStore
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch


@pytest.fixture
def context(project: FilledStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Context:
    """Run in the project folder, with no CANDLES_* settings leaking in from outside."""
    for name in list(os.environ):
        if name in ("CANDLES_CONFIG", "CANDLES_PROFILE", "CANDLES_STORE") or (
            name.startswith("CANDLES_") and "__" in name
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(project.path.parent)
    return Context(project, tmp_path, monkeypatch)


class SimulatorThread:
    """A simulator on its own thread and event loop (``candles ingest`` runs asyncio.run):
    one accepting the quote tokens ``rest`` issued, or (no ``rest``) one needing no token."""

    def __init__(self, rest: FakeTastytrade | None) -> None:
        self._rest = rest
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.url: str | None = None

    async def _serve(self) -> None:
        try:
            clock = SimulatorClock.manual(int(time.time() * 1000))
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            sim = (
                Simulator(token=None, clock=clock)
                if self._rest is None
                else IssuedTokenSimulator(self._rest, clock=clock)
            )
            async with sim:
                self.url = sim.url
                self._ready.set()
                await self._stop.wait()
        finally:
            self._ready.set()

    def __enter__(self) -> str:
        self._thread.start()
        assert self._ready.wait(TIMEOUT) and self.url, "the simulator did not start"
        return self.url

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the simulator thread did not stop"


@contextlib.contextmanager
def tastytrade_stand_in() -> Iterator[tuple[FakeTastytrade, dict[str, str]]]:
    """tastytrade's REST API (fake) and DXLink (simulator); yields the env that points there."""
    rest = FakeTastytrade(client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, clock=time.time)
    with rest, SimulatorThread(rest) as dxlink_url:
        rest.dxlink_url = dxlink_url
        yield (
            rest,
            {
                "TASTYTRADE_CLIENT_SECRET": CLIENT_SECRET,
                "TASTYTRADE_REFRESH_TOKEN": REFRESH_TOKEN,
                "CANDLES_SOURCE__TASTYTRADE__API_URL": rest.url,
            },
        )


@contextlib.contextmanager
def dxlink_stand_in() -> Iterator[dict[str, str]]:
    """dxFeed's demo endpoint (no network here): a simulator needing no token; yields the env
    that points ``source.dxlink.url`` there."""
    with SimulatorThread(None) as url:
        yield {"CANDLES_SOURCE__DXLINK__URL": url}


@contextlib.contextmanager
def stand_in_for(kind: str) -> Iterator[tuple[FakeTastytrade | None, dict[str, str]]]:
    """The local stand-in for a source kind and the env pointing there (none for the
    built-in simulator)."""
    if kind == "tastytrade":
        with tastytrade_stand_in() as (rest, env):
            yield rest, env
    elif kind == "dxlink":
        with dxlink_stand_in() as env:
            yield None, env
    else:
        yield None, {}


@contextlib.asynccontextmanager
async def metrics_server(store: Path) -> AsyncIterator[MetricsServer]:
    """A real MetricsServer over a connected service, with a store check of ``store``."""
    clock = FakeClock(START)
    # Retention configured and the store's folder real, so their metrics are served too.
    config = loads_config(f'[store]\npath = "{store}"\n[store.retention]\n1m = "30d"\n', environ={})
    service = FakeService(clock, config)
    service.connect().receive(messages=1, events=1)
    async with MetricsServer(service, port=0, clock=clock, store_check=reader(store, clock)) as srv:
        assert await srv.check_store() is not None
        yield srv


def invoke(argv: list[str], env: dict[str, str] | None = None) -> Result:
    """``candles ARGV`` in this process; fails the test with the output unless it exits 0."""
    result = CliRunner().invoke(cli, argv, env=env, catch_exceptions=False)
    assert result.exit_code == 0, (
        f"candles {shlex.join(argv)} exited {result.exit_code}:\n{result.output}"
    )
    return result


# --------------------------------------------------------------------------- runners


def run_sql(example: Example, ctx: Context) -> None:
    """One cookbook statement, read-only through ``run_query``; it must return rows."""
    frame = run_query(example.code, path=ctx.filled.path)
    assert frame.height > 0, f"{example.where}: the statement returned no rows"


def _profile_config(argv: list[str], ctx: Context) -> Config:
    profile = argv[argv.index("--profile") + 1] if "--profile" in argv else None
    return load_config(ctx.filled.path.parent / "config.toml", profile, environ={})


def run_candles(
    argv: list[str], ctx: Context, env: dict[str, str] | None = None, *, background: bool = False
) -> None:
    """One ``./run candles ...`` line, as the README shows it."""
    assert not background or argv[0] == "replay", f"no background runner for {argv[0]}"
    config = _profile_config(argv, ctx)
    secrets = {"TASTYTRADE_CLIENT_SECRET": "dummy", "TASTYTRADE_REFRESH_TOKEN": "dummy"}
    if argv[:2] == ["config", "check"]:
        result = invoke(argv, secrets if config.source.kind == "tastytrade" else None)
        assert result.stdout.startswith(f"config OK: source {config.source.kind}, ")
    elif argv[0] == "query":
        result = invoke(argv)
        shape = re.search(r"shape: \((\d+), \d+\)", result.stdout)
        assert shape and int(shape[1]) > 0, result.stdout
    elif argv[0] == "status":
        asyncio.run(_status(argv, ctx))
    elif argv[0] == "ingest":
        _ingest(argv, config, ctx, env or {})
    elif argv[0] == "doctor":
        _doctor(argv, config)
    elif argv[0] == "replay":
        assert background, "candles replay serves until stopped: the README runs it with &"
        REPLAYS.start(argv, ctx)
    elif argv[0] == "rebuild":
        _recordings(ctx)
        store = ctx.tmp_path / "rebuilt"
        result = invoke([*argv, "--store", str(store)])
        assert result.stdout.startswith("rebuilt from "), result.stdout
        assert run_query("SELECT count(*) AS n FROM candles", path=store)["n"][0] > 0
    else:
        raise AssertionError(f"no runner for `candles {argv[0]}`: add one or mark the block")


async def _status(argv: list[str], ctx: Context) -> None:
    async with metrics_server(ctx.filled.path) as server:
        url, env = server.url, {"CANDLES_METRICS__PORT": str(server.port)}  # not 9464
        result = await asyncio.to_thread(invoke, argv, env)
    assert result.stdout.splitlines()[0] == f"candles ingest at {url}: OK"


def _doctor(argv: list[str], config: Config) -> None:
    """``candles doctor``: every step passes against the source's local stand-in."""
    kind = argv[argv.index("--source") + 1] if "--source" in argv else config.source.kind
    with stand_in_for(kind) as (rest, env):
        result = invoke(argv, env)
    assert result.stdout.splitlines()[0].startswith(f"candles doctor: source {kind}, ")
    assert "doctor: every step passed" in result.stdout
    if rest is not None:
        assert rest.count("/oauth/token") == 1 and rest.count("/api-quote-tokens") == 1


def _ingest(argv: list[str], config: Config, ctx: Context, line_env: dict[str, str]) -> None:
    """``candles ingest``, stopped as its user stops it (Ctrl-C) once it holds what the line
    is for: a completed candle of every series (of some series against a replay, which
    serves only what was recorded), and with ``--lookback`` the daily history asked for.
    A README ``--duration`` stays as written; the SIGINT comes first."""
    store = ctx.tmp_path / "ingested"
    argv = [*argv, "--store", str(store)]
    env = {"CANDLES_METRICS__PORT": "0", **line_env}
    lookback = "--lookback" in argv
    replayed = env.get(REPLAY_URL_ENV)
    ready = (
        any_series_completed
        if replayed is not None
        else every_series_completed(lambda s: 20 if lookback and daily_series(s) else 1)
    )
    with interrupt_when(ctx.monkeypatch, ready) as interrupt:
        if replayed is not None:  # ingest against `candles replay` started by an earlier line
            env[REPLAY_URL_ENV] = REPLAYS.url_for(replayed, ctx)
            invoke(argv, env)
            assert REPLAYS.stop(replayed) == 0
        else:
            with stand_in_for(config.source.kind) as (rest, rest_env):
                invoke(argv, env | rest_env)
            if rest is not None:
                assert rest.count("/oauth/token") >= 1 and rest.count("/api-quote-tokens") >= 1
                if "--record" in argv:
                    secrets = [
                        CLIENT_SECRET, REFRESH_TOKEN, *rest.quote_tokens, *rest.access_tokens
                    ]  # fmt: skip
                    _check_recording(Path(argv[argv.index("--record") + 1]), secrets)
    assert interrupt.met, (
        f"candles {shlex.join(argv)}: what it waits for never arrived ({interrupt.error!r})"
    )
    (service,) = interrupt.services
    wanted = {(s.base, s.period_label) for s in service.series}  # config.toml and the options
    stored = set(run_query("SELECT DISTINCT symbol, period FROM candles", path=store).iter_rows())
    # Stopped with every series completed, the run stored every series; a replay serves the
    # series recorded (and subscribed) only. Never more than the run asked for.
    assert stored and stored <= wanted
    if replayed is None:
        assert stored == wanted
    if lookback:  # the history asked for is there: a month of daily candles
        daily = run_query(
            "SELECT count(*) AS n, count(ret) AS returns FROM (SELECT close / lag(close) "
            "OVER (PARTITION BY symbol ORDER BY time) - 1 AS ret FROM candles "
            "WHERE period = '1d')",
            path=store,
        )
        symbols = {base for base, _ in wanted}
        assert daily["n"][0] >= 20 * len(symbols), daily
        assert daily["returns"][0] >= 19 * len(symbols), daily


def daily_series(series: str) -> bool:
    """``series`` (a DXLink candle symbol) is of daily candles."""
    return CandleSymbol.parse(series).period_label == "1d"


REPLAY_URL_ENV = "CANDLES_SOURCE__SIMULATOR__URL"


def _recordings(ctx: Context) -> Path:
    """The project's ``recordings/``: what an earlier README line recorded, else the fixture
    recording (when a test runs alone)."""
    folder = Path("recordings")
    if not any(folder.glob("*.jsonl.zst")):
        folder.mkdir(exist_ok=True)
        for path in FIXTURE.glob("*.jsonl.zst"):
            shutil.copy(path, folder / path.name)
    return folder


def _check_recording(folder: Path, secrets: list[str]) -> None:
    """The recording is readable, holds the session, and none of ``secrets``."""
    recording = Recording(recording_files([folder]))
    assert recording.unusable == []
    sent = [r.f for e in recording.entries() if isinstance(r := e.item, Record) and r.d == ">"]
    assert '{"type":"AUTH","channel":0,"token":"<redacted>"}' in sent
    for path in recording_files([folder]):
        content = (
            zstandard.ZstdDecompressor()
            .stream_reader(path.read_bytes(), read_across_frames=True)
            .read()
        )
        leaked = [s for s in secrets if s.encode() in content or s.encode() in path.read_bytes()]
        assert leaked == [], f"{path} holds a secret"


class BackgroundReplays:
    """``candles replay ... &`` lines: the processes they started, by the README's URL."""

    def __init__(self) -> None:
        self.running: dict[str, tuple[subprocess.Popen[str], str]] = {}

    def start(self, argv: list[str], ctx: Context) -> str:
        """Start ``candles replay`` (on a free port); return the URL the README names."""
        _recordings(ctx)
        port = argv[argv.index("--port") + 1] if "--port" in argv else "8765"
        readme_url = f"ws://127.0.0.1:{port}/"
        command = [a if a != port else "0" for a in argv]  # a free port, not the README's
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"at (ws://[^ ]+/) ", line)
        assert found, f"candles replay printed {line!r}"
        self.running[readme_url] = (process, found[1])
        return readme_url

    def url_for(self, readme_url: str, ctx: Context) -> str:
        """Where the replay the README calls ``readme_url`` really listens (started if the
        line that starts it did not run in this session)."""
        if readme_url not in self.running:
            port = readme_url.rstrip("/").rsplit(":", 1)[1]
            self.start(["replay", "recordings", "--port", port], ctx)
        return self.running[readme_url][1]

    def stop(self, readme_url: str) -> int:
        """SIGTERM the replay; its exit status."""
        process, _ = self.running.pop(readme_url)
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()


REPLAYS = BackgroundReplays()


def run_shell_line(example: Example, ctx: Context) -> None:
    """``[NAME=value ...] ./run candles ... [&]`` runs (``&``: in the background, stopped by a
    later line that uses it); ``export NAME=...`` names a variable the source reads."""
    argv = shlex.split(example.code, comments=True)
    env: dict[str, str] = {}
    while argv and re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", argv[0]):
        name, _, value = argv.pop(0).partition("=")
        env[name] = value
    background = argv[-1:] == ["&"]
    if background:
        argv = argv[:-1]
    if argv[:2] == ["./run", "candles"]:
        run_candles(argv[2:], ctx, env, background=background)
    elif argv[0] == "export":
        defaults = Config().source.tastytrade
        name = argv[1].partition("=")[0]
        assert name in (defaults.client_secret_env, defaults.refresh_token_env), (
            f"{example.where}: {name} is not a variable the tastytrade source reads"
        )
    else:
        raise AssertionError(f"{example.where}: no runner for {example.code!r}: mark it")


def _compile(code: str, where: str) -> Any:
    return compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def run_connect_snippet(example: Example, ctx: Context) -> None:
    """``pipeline.connect("data")`` in the project folder prints the store's row count."""
    printed = io.StringIO()
    namespace: dict[str, Any] = {}
    with contextlib.redirect_stdout(printed):
        exec(_compile(example.code, example.where), namespace)
    namespace["con"].close()
    assert printed.getvalue() == f"({ctx.filled.candles},)\n"


def run_dxlink_snippet(example: Example, ctx: Context) -> None:
    """The migration snippet, its ``...`` loop body replaced by ``break``."""
    code, bodies = _ELLIPSIS_BODY.subn(r"\g<indent>break", example.code)
    assert bodies == 1, f"{example.where}: expected one `...` loop body to replace"
    namespace: dict[str, Any] = {"start": datetime.now(UTC) - timedelta(hours=1)}

    async def main() -> None:
        async with asyncio.timeout(TIMEOUT):
            result = eval(_compile(code, example.where), namespace)
            if inspect.iscoroutine(result):
                await result

    with tastytrade_stand_in() as (rest, env):
        for name, value in env.items():
            ctx.monkeypatch.setenv(name, value)
        asyncio.run(main())
    batch = namespace.get("batch")
    assert isinstance(batch, list) and batch, "no batch of candles arrived"
    assert all(isinstance(c, Candle) and c.symbol == "AAPL{=5m}" for c in batch)
    assert batch[0].flags & SNAPSHOT_BEGIN  # the history snapshot from `start`
    assert rest.count("/api-quote-tokens") >= 1  # the token came through the REST flow


def run_door_snippet(example: Example, ctx: Context) -> None:
    """The manager's door: one candle held, one negative and one future dropped by reason,
    one unsolicited."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(_compile(example.code, example.where), {})
    held, _, rest = printed.getvalue().rstrip("\n").partition(" ")
    reasons, _, unsolicited = rest.rpartition(" ")
    assert (held, unsolicited) == ("1", "1"), printed.getvalue()
    assert ast.literal_eval(reasons) == {
        "symbol": 0, "time_range": 0, "future": 1, "before_from_time": 0, "index": 0,
        "off_period": 0, "ohlc": 0, "negative": 1, "value_range": 0,
    }, printed.getvalue()  # fmt: skip


PYTHON_RUNNERS: tuple[tuple[str, Callable[[Example, Context], None]], ...] = (
    ("pipeline.connect(", run_connect_snippet),
    ("DXLinkManager(", run_dxlink_snippet),
    ("CandleDataManager(", run_door_snippet),
)


def run_python(example: Example, ctx: Context) -> None:
    """Hand a Python block to the runner that knows what it should do."""
    for needle, runner in PYTHON_RUNNERS:
        if needle in example.code:
            runner(example, ctx)
            return
    raise AssertionError(f"{example.where}: no runner for this Python block: add one or mark it")


_UNKNOWN_KEY_SAMPLE = re.compile(r"^(?P<source>[^:]+): (?P<key>[\w.]+): unknown key ")


def check_output_sample(example: Example, ctx: Context) -> None:
    """Each sample line is what the config loader prints for the mistake it shows."""
    for line in example.code.splitlines():
        sample = _UNKNOWN_KEY_SAMPLE.match(line)
        assert sample, f"{example.where}: no check reproduces the sample {line!r}"
        section, _, key = sample["key"].rpartition(".")
        with pytest.raises(ConfigError) as error:
            loads_config(f"[{section}]\n{key} = 1\n", source=sample["source"])
        printed, shown = str(error.value), line.removesuffix("...")
        assert printed.startswith(shown) if line.endswith("...") else printed == line


_ARROW = "──▶"


def parse_package_diagram(code: str) -> list[tuple[str, frozenset[str]]]:
    """The package diagram's rows, top to bottom: (package, the packages its arrow names).
    ``everything below`` names every package on a later row; a ``(remark)`` ends a row."""
    rows = []
    for line in code.splitlines():
        if _ARROW in line:
            left, _, right = line.partition(_ARROW)
            rows.append((left.split()[-1], right.partition("(")[0].split()))
    names = [name for name, _ in rows]
    parsed = []
    for position, (name, targets) in enumerate(rows):
        if targets == ["everything", "below"]:
            parsed.append((name, frozenset(names[position + 1 :])))
        else:
            parsed.append((name, frozenset(t for t in targets if t != "nothing")))
    return parsed


def check_package_diagram(example: Example, ctx: Context) -> None:
    """Each package drawn exists, each arrow points below it, and the arrows are exactly the
    rules tests/test_layering.py holds the imports to."""
    rows = parse_package_diagram(example.code)
    names = [name for name, _ in rows]
    assert len(set(names)) == len(names), f"{example.where}: a package is drawn twice"
    for position, (name, targets) in enumerate(rows):
        path = PACKAGE / name.replace(".", "/") if name != "pipeline" else PACKAGE
        found = (path / "__init__.py").is_file() or path.with_suffix(".py").is_file()
        assert found, f"{example.where}: the diagram names {name}, which is not in pipeline/"
        above = set(targets) - set(names[position + 1 :])
        assert above == set(), f"{example.where}: {name} points at {sorted(above)}, not below"
    assert dict(rows) == ALLOWED, (
        f"{example.where}: the diagram's arrows differ from tests/helpers/layering.py's ALLOWED"
    )


def check_diagram(example: Example, ctx: Context) -> None:
    """Every module path in the diagram exists and defines the classes named next to it."""
    if _ARROW in example.code:
        check_package_diagram(example, ctx)
        return
    checked, folder = 0, ""
    for line in example.code.splitlines():
        module = None  # a bare file name is in the folder last named (continuation lines)
        for path in re.findall(r"(?:[\w*]+/)*[\w*]+\.py|pipeline/(?:\w+/)+", line):
            path = path if "/" in path else f"{folder}/{path}"
            found = sorted(ROOT.glob(path.rstrip("/")))
            assert found, f"{example.where}: the diagram names {path}, which does not exist"
            folder, module, checked = path.rpartition("/")[0], module or found[0], checked + 1
        for name in re.findall(r"\b([A-Z]\w+):", line):
            assert module and re.search(rf"^class {name}\b", module.read_text(), re.M), (
                f"{example.where}: {name} is not a class of {module}"
            )
    assert checked > 5


def check_toml(example: Example, ctx: Context) -> None:
    """A config excerpt loads as shown; a dxlink one names its token by a variable."""
    config = loads_config(example.code, source=example.where, environ={})
    if config.source.kind == "dxlink":
        assert config.source.dxlink.url.startswith("wss://")
        assert config.source.dxlink.token_env, "a token belongs in an environment variable"


RUNNERS: dict[str, Callable[[Example, Context], None]] = {
    "toml": check_toml,
    "sql": run_sql,
    "sh": run_shell_line,
    "python": run_python,
    "text": check_output_sample,
    "": check_diagram,
}


@pytest.mark.parametrize(
    "example", EXAMPLES, ids=lambda e: f"{e.block.lang or 'diagram'}-L{e.line}"
)
def test_readme_example_runs(example: Example, context: Context) -> None:
    """Every README example runs (or is checked) unless marked not-executed with a reason."""
    reason = example.block.skip_reason(example.code)
    if reason is not None:
        if example.block.lang == "python":
            _compile(example.code, example.where)  # illustrative, but still valid Python
        pytest.skip(f"not executed: {reason}")
    runner = RUNNERS.get(example.block.lang)
    assert runner, f"{example.where}: no runner for ```{example.block.lang}: mark it"
    runner(example, context)


def test_markers_sit_on_a_fence_and_match_lines() -> None:
    """Every not-executed marker belongs to the fence below it and exempts something there."""
    markers = [m for b in BLOCKS for m in b.markers]
    assert len(markers) == README_TEXT.count("<!-- not-executed"), "a marker is not on a fence"
    for block in BLOCKS:
        for marker in block.markers:
            lines = [line.strip() for line in block.code.splitlines()]
            assert marker.prefix is None or any(s.startswith(marker.prefix) for s in lines), (
                f"README.md:{block.line}: no line starts with {marker.prefix!r}"
            )
    assert any(m.reason == "other SDK" for m in markers)


# --------------------------------------------------------------------------- names in prose


def test_config_keys_named_in_the_readme_exist() -> None:
    """Every `section.key` and `[section]` in the prose is an option or a section of one."""
    keys = {option.key for option in describe_options()}
    sections = {key.rsplit(".", n)[0] for key in keys for n in range(1, key.count(".") + 1)}
    pattern = re.compile(rf"(?:{'|'.join(Config.model_fields)})(?:\.\w+)+")
    named = {s for s in inline_code(README_TEXT) if pattern.fullmatch(s)}
    assert {"client.dead_peer_timeout", "client.backoff_max", "manager.grace_seconds"} <= named
    assert sorted(named - keys - sections) == []
    brackets = {s[1:-1] for s in inline_code(README_TEXT) if re.fullmatch(r"\[[\w.]+\]", s)}
    assert brackets and brackets <= sections


def test_environment_overrides_shown_in_the_readme_apply() -> None:
    """`CANDLES_<SECTION>__<KEY>=value` examples set that option to that value."""
    shown = [s for s in inline_code(README_TEXT) if re.fullmatch(r"CANDLES_\w+__\w+=\S+", s)]
    assert shown
    for text in shown:
        name, _, raw = text.partition("=")
        value: Any = load_config(None, environ={name: raw})
        for part in name.removeprefix("CANDLES_").lower().split("__"):
            value = getattr(value, part)
        assert value == tomllib.loads(f"v = {raw}")["v"], text


def test_environment_variables_named_in_the_readme_are_read() -> None:
    """Every `$CANDLES_...` variable in the prose is one the code reads."""
    read = {config_module.CONFIG_ENV, config_module.PROFILE_ENV, analysis.STORE_ENV}
    named = {m for s in inline_code(README_TEXT) for m in re.findall(r"\$(CANDLES_\w+)", s)}
    assert named and named <= read | {analysis.FIGURES_ENV}


def test_lookback_values_in_the_readme_are_valid() -> None:
    """The history lookbacks the README recommends all load as subscriptions.lookback."""
    paragraph = next(p for p in prose(README_TEXT).split("\n\n") if "`lookback = " in p)
    values = re.findall(r'`(?:lookback = )?"([^"]+)"`', paragraph)
    assert len(values) >= 3
    for value in values:
        loads_config(f'[subscriptions]\nlookback = "{value}"\n')


async def test_metric_names_in_the_readme_are_exported(project: FilledStore) -> None:
    """Every candles_* metric (and label) the README names is served on /metrics."""
    async with metrics_server(project.path) as server:
        url = f"{server.url}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=TIMEOUT).read())
    samples = {
        (sample.name, label)
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        for label in [""] + [f'{k}="{v}"' for k, v in sample.labels.items()]
    }
    named = [
        (name, labels)
        for span in inline_code(README_TEXT)
        for name, labels in re.findall(r"\b(candles_\w+)(?:\{([^}]*)\})?", span)
    ]
    assert len(named) >= 10
    assert [n for n in named if n not in samples] == []
    defaults = Config().metrics
    assert f"http://{defaults.host}:{defaults.port}/metrics" in README_TEXT


def _leaf_commands(group: click.Group, prefix: str = "candles") -> dict[str, click.Command]:
    leaves: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            leaves |= _leaf_commands(command, f"{prefix} {name}")
        else:
            leaves[f"{prefix} {name}"] = command
    return leaves


def test_commands_table_matches_the_cli() -> None:
    """Each `candles ...` in the prose exists with the options and choices shown; all listed."""
    leaves = _leaf_commands(cli)
    documented = set()
    for span in inline_code(README_TEXT):
        if not span.startswith("candles "):
            continue
        path = next((p for p in leaves if f"{span} ".startswith(f"{p} ")), None)
        assert path, f"`{span}`: no such command"
        documented.add(path)
        params = {opt: p for p in leaves[path].params for opt in p.opts}
        for option, value in re.findall(r"(--[\w-]+)(?: ([\w|.]+))?", span):
            assert option in params, f"`{path}` has no {option}"
            if "|" in value:
                choices = getattr(params[option].type, "choices", ())
                assert set(value.split("|")) == set(choices), f"`{path} {option}` choices"
    assert documented == set(leaves)
    for command in leaves.values():
        envvars = {p.name: p.envvar for p in command.params}
        if "config_path" in envvars:
            assert (envvars["config_path"], envvars["profile"]) == (
                config_module.CONFIG_ENV,
                config_module.PROFILE_ENV,
            )


def test_sql_objects_named_in_the_readme_exist(project: FilledStore) -> None:
    """The candles columns, latest_candles, candle_gaps and resample are as described."""
    columns = re.search(r"`candles` \(([^)]*)\)", prose(README_TEXT))
    assert columns, "the README no longer lists the candles columns"
    described = run_query("DESCRIBE candles", path=project.path)["column_name"].to_list()
    assert [c.strip() for c in columns[1].split(",")] == described
    latest = run_query("SELECT * FROM latest_candles", path=project.path)
    assert latest.height == len(project.per_series)  # the newest candle per series
    gaps = run_query("SELECT * FROM candle_gaps", path=project.path)
    assert gaps.height > 0 and "missing_periods" in gaps.columns
    macro = run_query(
        "SELECT parameters FROM duckdb_functions() WHERE function_name = 'resample'",
        path=project.path,
    )
    documented = re.search(r"`resample\(([^)]*)\)`", README_TEXT)
    assert documented and len(macro["parameters"][0]) == len(documented[1].split(","))
    assert CandleSymbol.of("AAPL", "5m", tho="true").period_label == "5m,tho=true"


def test_dependencies_table_names_the_project_requirements() -> None:
    """Each package in the dependencies table is a requirement of candle-pipeline."""
    required = {
        re.split(r"[\s<>=!;\[]", requirement, maxsplit=1)[0].lower()
        for requirement in importlib.metadata.requires("candle-pipeline") or []
    }
    section = README_TEXT.split("## Dependencies", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| ")][1:]
    named = [
        name.strip()
        for row in rows
        for name in re.sub(r"\([^)]*\)", "", row).split("+")
        if name.strip()
    ]
    assert len(named) >= 10 and sorted(set(named) - required) == []


def test_pytest_options_in_the_readme_exist() -> None:
    """Options shown for `./run pytest` are defined by the suite's conftest."""
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    shown = [s for s in inline_code(README_TEXT) if s.startswith("./run pytest ")]
    assert shown
    for span in shown:
        for option in re.findall(r"--[\w-]+", span):
            assert json.dumps(option) in conftest, f"{span}: no such pytest option"
