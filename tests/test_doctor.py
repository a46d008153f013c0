"""``candles doctor``: each step against the real simulator and the local fake of tastytrade.

Every failure the doctor is for is produced by a real part: a refresh token the fake REST API
rejects, a quote-token request it answers with 503, a URL where nothing or no DXLink server
listens, a simulator that refuses the token or wants one, a symbol the simulator does not
trade. The doctor must name the failing step, say what to do, run no step after it, time
every step it ran and never show a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from pipeline.cli import cli
from pipeline.config import Config, load_config
from pipeline.dxlink import CandleSymbol
from pipeline.ingest import DoctorReport, Outcome, Step, run_doctor
from pipeline.simulator import Simulator, SimulatorClock
from tests.helpers.fake_tastytrade import FakeTastytrade, IssuedTokenSimulator
from tests.helpers.timing import TIMEOUT

TOKEN = "doctor-dxlink-token-1234"
CLIENT_SECRET = "doctor-client-secret-5678"
REFRESH_TOKEN = "doctor-refresh-token-9012"
TOKEN_ENV = "DOCTOR_TEST_DXLINK_TOKEN"
SECRETS = {
    "TASTYTRADE_CLIENT_SECRET": CLIENT_SECRET,
    "TASTYTRADE_REFRESH_TOKEN": REFRESH_TOKEN,
}
NO_CANDLES_WAIT = 0.3  # seconds the doctor waits for candles that never come


def config_for(**settings: Any) -> Config:
    """A test config: fast handshake limits, no CANDLES_* from the environment."""
    base: dict[str, Any] = {
        "subscriptions.symbols": ["AAPL"],
        "subscriptions.intervals": ["1m"],
        "client.connect_timeout": 5.0,
        "client.handshake_timeout": 5.0,
    }
    return load_config(None, None, base | settings, environ={})


def dxlink_config(url: str, *, token_env: str | None = TOKEN_ENV) -> Config:
    settings: dict[str, Any] = {"source.kind": "dxlink", "source.dxlink.url": url}
    if token_env is not None:
        settings["source.dxlink.token_env"] = token_env
    return config_for(**settings)


def manual_clock() -> SimulatorClock:
    """The simulator at the wall clock's minute: the doctor asks for an hour back from now."""
    now_ms = int(time.time() * 1000)
    return SimulatorClock.manual(now_ms - now_ms % 1000)


async def doctor(
    config: Config, environ: dict[str, str], *, wait: float = TIMEOUT, symbol: str = "AAPL"
) -> DoctorReport:
    async with asyncio.timeout(3 * TIMEOUT):
        return await run_doctor(
            config,
            series=CandleSymbol.of(symbol, "1m"),
            since=timedelta(hours=1),
            wait=wait,
            environ=environ,
        )


def outcomes(report: DoctorReport) -> dict[Step, Outcome]:
    return {result.step: result.outcome for result in report.steps}


def assert_failed_at(report: DoctorReport, step: Step) -> str:
    """The report ran every step up to ``step``, failed there, ran nothing after it."""
    order = list(Step)
    assert [r.step for r in report.steps] == order, report.steps
    assert not report.ok and report.failed is not None and report.failed.step is step, report
    failed_at = order.index(step)
    for result in report.steps:
        position = order.index(result.step)
        if position < failed_at:
            assert result.outcome in (Outcome.OK, Outcome.SKIPPED), result
        elif position > failed_at:
            assert result.outcome is Outcome.NOT_RUN, result
    assert report.failed.advice, "a failed step must say what to do"
    return f"{report.failed.detail} / {report.failed.advice}"


def all_text(report: DoctorReport) -> str:
    return "\n".join(f"{r.step} {r.detail} {r.advice}" for r in report.steps)


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def tastytrade_api(**options: Any) -> Iterator[FakeTastytrade]:
    with FakeTastytrade(
        client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, clock=time.time, **options
    ) as rest:
        yield rest


@contextlib.asynccontextmanager
async def tastytrade_stand_in() -> AsyncIterator[tuple[FakeTastytrade, Config]]:
    """The fake REST API handing out tokens for a simulator that accepts exactly those."""
    with tastytrade_api() as rest:
        async with IssuedTokenSimulator(rest, clock=manual_clock()) as sim:
            rest.dxlink_url = sim.url
            config = config_for(
                **{"source.kind": "tastytrade", "source.tastytrade.api_url": rest.url}
            )
            yield rest, config


# ------------------------------------------------------------------------- every step passes


async def test_every_step_passes_against_a_dxlink_endpoint_with_a_token() -> None:
    """A dxlink source: secrets, URL, connect, AUTH, channel, subscription and candles pass;
    the OAuth step is skipped; every step is timed."""
    async with Simulator(token=TOKEN, clock=manual_clock()) as sim:
        report = await doctor(dxlink_config(sim.url), {TOKEN_ENV: TOKEN})
    assert report.ok, all_text(report)
    assert outcomes(report)[Step.ACCESS_TOKEN] is Outcome.SKIPPED
    assert all(r.seconds >= 0 for r in report.steps)
    candles = next(r for r in report.steps if r.step is Step.CANDLES)
    assert "snapshot complete" in candles.detail and "candles from" in candles.detail
    assert TOKEN not in all_text(report)
    assert f"{TOKEN_ENV} is set" in all_text(report)


async def test_an_endpoint_without_a_token_passes_with_none_configured() -> None:
    """dxFeed's demo endpoint needs no token: no token_env, AUTHORIZED after SETUP."""
    async with Simulator(token=None, clock=manual_clock()) as sim:
        report = await doctor(dxlink_config(sim.url, token_env=None), {})
    assert report.ok, all_text(report)
    auth = next(r for r in report.steps if r.step is Step.AUTH)
    assert "no token needed" in auth.detail


async def test_every_step_passes_against_tastytrade() -> None:
    """The tastytrade path: OAuth token, quote token and URL, then DXLink; no secret shown."""
    async with tastytrade_stand_in() as (rest, config):
        report = await doctor(config, SECRETS)
    assert report.ok, all_text(report)
    assert rest.count("/oauth/token") == 1 and rest.count("/api-quote-tokens") == 1
    text = all_text(report)
    for secret in (CLIENT_SECRET, REFRESH_TOKEN, *rest.quote_tokens, *rest.access_tokens):
        assert secret not in text
    quote = next(r for r in report.steps if r.step is Step.QUOTE_TOKEN)
    assert "level 'api'" in quote.detail and "valid until" in quote.detail


# ------------------------------------------------------------------------- each failure


async def test_missing_secrets_fail_the_first_step_naming_the_variables() -> None:
    """No TASTYTRADE_* variables: step 1 fails naming them, nothing is requested."""
    async with tastytrade_stand_in() as (rest, config):
        report = await doctor(config, {})
    found = assert_failed_at(report, Step.SECRETS)
    assert "TASTYTRADE_CLIENT_SECRET and TASTYTRADE_REFRESH_TOKEN are not set" in found
    assert rest.requests == []


async def test_a_rejected_refresh_token_fails_the_oauth_step() -> None:
    """tastytrade rejects the refresh token: the OAuth step fails naming the variable to fix,
    never its value."""
    wrong = "doctor-expired-refresh-token"
    async with tastytrade_stand_in() as (_, config):
        report = await doctor(config, SECRETS | {"TASTYTRADE_REFRESH_TOKEN": wrong})
    found = assert_failed_at(report, Step.ACCESS_TOKEN)
    assert "invalid_grant" in found and "TASTYTRADE_REFRESH_TOKEN" in found
    assert wrong not in all_text(report) and CLIENT_SECRET not in all_text(report)


async def test_a_quote_token_5xx_fails_the_quote_step_saying_it_is_tastytrades_side() -> None:
    """/api-quote-tokens answers 503: the quote step fails with the status and 'try again'."""
    async with tastytrade_stand_in() as (rest, config):
        rest.fail_next(
            "/api-quote-tokens", 503, {"error": {"code": "unavailable", "message": "down"}}
        )
        report = await doctor(config, SECRETS)
    found = assert_failed_at(report, Step.QUOTE_TOKEN)
    assert "HTTP 503" in found and "try again" in found


async def test_a_url_where_nothing_listens_fails_the_connect_step() -> None:
    """A wrong port: the connect step fails naming the URL and what to check."""
    url = f"ws://127.0.0.1:{free_port()}/dxlink-ws"
    report = await doctor(dxlink_config(url), {TOKEN_ENV: TOKEN})
    found = assert_failed_at(report, Step.CONNECT)
    assert url in found and "source.dxlink.url" in found


async def test_a_url_of_a_web_server_that_is_no_dxlink_endpoint_fails_the_connect_step() -> None:
    """An HTTP server that refuses the WebSocket upgrade: the status is shown."""
    with tastytrade_api() as rest:
        url = rest.url.replace("http://", "ws://") + "/realtime"
        report = await doctor(dxlink_config(url), {TOKEN_ENV: TOKEN})
    found = assert_failed_at(report, Step.CONNECT)
    assert "HTTP 404" in found and "not a DXLink endpoint" in found


async def test_a_server_refusing_auth_fails_the_auth_step() -> None:
    """The simulator rejects the token: AUTH_STATE UNAUTHORIZED after AUTH, named as such."""
    wrong = "doctor-wrong-dxlink-token"
    async with Simulator(token=TOKEN, clock=manual_clock()) as sim:
        report = await doctor(dxlink_config(sim.url), {TOKEN_ENV: wrong})
    found = assert_failed_at(report, Step.AUTH)
    assert "refused AUTH" in found and TOKEN_ENV in found
    assert wrong not in all_text(report)


async def test_a_server_wanting_a_token_when_none_is_configured_fails_the_auth_step() -> None:
    """No token_env but the server says UNAUTHORIZED: the doctor says to configure one."""
    async with Simulator(token=TOKEN, clock=manual_clock()) as sim:
        report = await doctor(dxlink_config(sim.url, token_env=None), {})
    found = assert_failed_at(report, Step.AUTH)
    assert "requires a token" in found and "source.dxlink.token_env" in found


async def test_no_candles_fails_the_last_step() -> None:
    """A symbol the feed does not serve gets silence: the candles step fails and says why."""
    async with Simulator(token=TOKEN, clock=manual_clock(), symbols=["SPY"]) as sim:
        report = await doctor(
            dxlink_config(sim.url), {TOKEN_ENV: TOKEN}, wait=NO_CANDLES_WAIT, symbol="AAPL"
        )
    found = assert_failed_at(report, Step.CANDLES)
    assert "no candles for AAPL{=m}" in found and "--since" in found


async def test_an_unset_token_variable_fails_the_secrets_step() -> None:
    """token_env names a variable that is not set: step 1 says so."""
    report = await doctor(dxlink_config("wss://dxlink.example/ws"), {})
    found = assert_failed_at(report, Step.SECRETS)
    assert f"names {TOKEN_ENV}, which is not set" in found


# ------------------------------------------------------------------------- the command


def write_config(folder: Path, url: str) -> Path:
    path = folder / "config.toml"
    path.write_text(
        '[source]\nkind = "dxlink"\n'
        f'[source.dxlink]\nurl = "{url}"\ntoken_env = "{TOKEN_ENV}"\n'
        '[subscriptions]\nsymbols = ["AAPL"]\nintervals = ["1m"]\n'
        "[client]\nhandshake_timeout = 5.0\n"
    )
    return path


def invoke(argv: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli, argv, env=env, catch_exceptions=False)


async def test_doctor_command_prints_timed_steps_and_exits_0_when_all_pass(tmp_path: Path) -> None:
    """`candles doctor`: a line per step with its time; exit 0; no secret printed."""
    async with Simulator(token=TOKEN, clock=manual_clock()) as sim:
        config = write_config(tmp_path, sim.url)
        argv = ["doctor", "--config", str(config)]
        result = await asyncio.to_thread(invoke, argv, {TOKEN_ENV: TOKEN})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "candles doctor: source dxlink, AAPL{=m}"
    steps = lines[1:-1]
    assert len(steps) == len(Step)
    for line, step in zip(steps, Step, strict=True):
        assert str(step) in line
        assert line.split()[0] in ("ok", "skipped")
    assert "s  WebSocket connect: connected to" in result.output  # timed
    assert lines[-1].startswith("doctor: every step passed")
    assert TOKEN not in result.output


async def test_doctor_command_exits_1_naming_the_failed_step(tmp_path: Path) -> None:
    """A refused token: exit 1, FAILED with what to do, the later steps 'not run'."""
    async with Simulator(token=TOKEN, clock=manual_clock()) as sim:
        config = write_config(tmp_path, sim.url)
        argv = ["doctor", "--config", str(config)]
        result = await asyncio.to_thread(invoke, argv, {TOKEN_ENV: "not-the-token"})
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "what to do:" in result.output
    assert result.output.count("not run") == 3
    assert "doctor: failed at SETUP and AUTH_STATE" in result.output
    assert "not-the-token" not in result.output


def test_doctor_on_the_built_in_simulator_passes(tmp_path: Path) -> None:
    """With no config the doctor checks the built-in simulator, started in-process."""
    result = CliRunner().invoke(
        cli,
        ["doctor", "--config", str(write_default_config(tmp_path)), "--timeout", "20s"],
        env={"CANDLES_PROFILE": ""},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "source simulator" in result.output.splitlines()[0]


def write_default_config(folder: Path) -> Path:
    path = folder / "config.toml"
    path.write_text('[subscriptions]\nsymbols = ["AAPL"]\nintervals = ["1m"]\n')
    return path


def test_since_and_timeout_must_be_durations() -> None:
    """A bad --since is refused before anything runs, naming the flag."""
    result = CliRunner().invoke(cli, ["doctor", "--since", "soon"], catch_exceptions=False)
    assert result.exit_code == 2 and "--since" in result.output


def test_doctor_help_shows_the_defaults() -> None:
    """--since defaults to an hour back, --timeout to 30s; --help says so."""
    result = CliRunner().invoke(cli, ["doctor", "--help"], catch_exceptions=False)
    assert "[default: 1h]" in result.output and "[default: 30s]" in result.output


async def test_a_built_in_simulator_that_cannot_listen_fails_the_url_step() -> None:
    """source.simulator.port taken by another process: the quote-token-and-URL step says so."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        report = await doctor(config_for(**{"source.simulator.port": port}), {})
    found = assert_failed_at(report, Step.QUOTE_TOKEN)
    assert "the built-in simulator could not start" in found and "source.simulator.port" in found
