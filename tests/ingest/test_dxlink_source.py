"""``source.kind = "dxlink"``: any DXLink endpoint, here ``candles simulate`` in its own process.

The endpoint is a real separate process (as dxFeed's demo or another broker would be); ingest
runs as ``candles ingest`` in another, with the token in an environment variable the config
names, or with none for an endpoint that needs none. The config is checked like tastytrade's
URL: wss:// unless the host is loopback or plain ws:// is explicitly allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pipeline.config import ConfigError, loads_config
from pipeline.ingest import DXLinkTokenSource
from tests.helpers.ingest_stop import stored_series, wait_until_stored_async
from tests.helpers.timing import TIMEOUT

TOKEN = "dxlink-source-token-4711"
TOKEN_ENV = "TEST_DXLINK_SOURCE_TOKEN"
SERIES = {("AAPL", "1m"), ("AAPL", "5m"), ("SPY", "1m"), ("SPY", "5m")}


@contextlib.asynccontextmanager
async def simulate(*flags: str) -> AsyncIterator[str]:
    """``candles simulate --port 0 FLAGS`` as a child process; yields the URL it prints."""
    process = await asyncio.create_subprocess_exec(
        # At the wall clock, in real time: a live feed, as dxFeed's endpoints are.
        sys.executable, "-m", "pipeline", "simulate", "--port", "0", "--seed", "5",
        "--start-behind", "0s", *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = (await process.stdout.readline()).decode()
        assert "serving " in line, line
        yield line.split("serving ", 1)[1].split()[0]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            assert await process.wait() == 0


def write_config(folder: Path, url: str, *, token_env: str | None) -> Path:
    token = f'token_env = "{token_env}"\n' if token_env else ""
    path = folder / "config.toml"
    path.write_text(
        f'[source]\nkind = "dxlink"\n[source.dxlink]\nurl = "{url}"\n{token}'
        '[subscriptions]\nsymbols = ["AAPL", "SPY"]\nintervals = ["1m", "5m"]\nlookback = "2h"\n'
        "[client]\nbackoff_initial = 0.05\nbackoff_max = 0.5\n"
        "[schedule]\nflush_interval = 0.2\n[manager]\ngrace_seconds = 0.0\n"
        "[metrics]\nenabled = false\n"
    )
    return path


async def ingest(
    config: Path,
    env: dict[str, str],
    duration: str = "30s",
    *,
    until_stored: set[tuple[str, str]] | None = None,
) -> tuple[int, str]:
    """``candles ingest --config CONFIG --duration D`` as a child process: (exit, stderr).
    ``until_stored``: the SIGINT (Ctrl-C) its user would send once the store holds these
    series stops it first."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CANDLES_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "ingest", "--config", str(config),
        "--duration", duration,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=clean | env,
    )  # fmt: skip
    assert process.stderr is not None
    # Read all along, so that a chatty child never blocks on a full pipe.
    err = asyncio.ensure_future(process.stderr.read())
    try:
        if until_stored:
            await wait_until_stored_async(process, config.parent / "data", until_stored)
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(6 * TIMEOUT):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, (await err).decode(errors="replace")


async def test_ingest_from_a_dxlink_endpoint_with_a_token_from_the_environment(
    tmp_path: Path,
) -> None:
    """`candles simulate --token T` in one process, `candles ingest` with kind dxlink and
    token_env in another: every series stored, exit 0, the token never logged."""
    async with simulate("--token", TOKEN) as url:
        code, log = await ingest(
            write_config(tmp_path, url, token_env=TOKEN_ENV),
            {TOKEN_ENV: TOKEN},
            until_stored=SERIES,
        )
    assert code == 0, log[-3000:]
    assert stored_series(tmp_path / "data") == SERIES
    assert TOKEN not in log


async def test_ingest_from_a_dxlink_endpoint_that_needs_no_token(tmp_path: Path) -> None:
    """dxFeed's demo needs no token: no token_env, `candles simulate --no-auth`, exit 0."""
    async with simulate("--no-auth") as url:
        code, log = await ingest(
            write_config(tmp_path, url, token_env=None), {}, until_stored=SERIES
        )
    assert code == 0, log[-3000:]
    assert stored_series(tmp_path / "data") == SERIES


async def test_a_rejected_token_stops_ingest_naming_the_variable(tmp_path: Path) -> None:
    """A wrong token cannot be refreshed: exit 1 naming the variable, not its value."""
    wrong = "not-the-dxlink-token"
    async with simulate("--token", TOKEN) as url:
        config = write_config(tmp_path, url, token_env=TOKEN_ENV)
        code, log = await ingest(config, {TOKEN_ENV: wrong}, duration="30s")
    assert code == 1, log[-3000:]
    assert f"rejected the token from the environment variable {TOKEN_ENV}" in log
    assert wrong not in log


async def test_a_server_that_needs_a_token_stops_a_tokenless_source_at_once(
    tmp_path: Path,
) -> None:
    """No token_env, but the server asks for one (AUTH_STATE UNAUTHORIZED): exit 1 naming
    source.dxlink.token_env at the first AUTH_STATE, not after the handshake timeout."""
    async with simulate("--token", TOKEN) as url:
        config = write_config(tmp_path, url, token_env=None)
        # A handshake limit the test could not outwait: the refusal must not need it.
        text = config.read_text().replace("[client]\n", "[client]\nhandshake_timeout = 600\n")
        config.write_text(text)
        code, log = await ingest(config, {}, duration="600s")
    assert code == 1, log[-3000:]
    assert "wants a token and none is configured" in log
    assert "source.dxlink.token_env" in log


async def test_an_unset_token_variable_stops_ingest_at_once(tmp_path: Path) -> None:
    """token_env names a variable that is not set: exit 1 before connecting, naming it."""
    config = write_config(tmp_path, "ws://127.0.0.1:9/", token_env=TOKEN_ENV)
    code, log = await ingest(config, {}, duration="30s")
    assert code == 1
    assert f"source.dxlink.token_env names {TOKEN_ENV}, which is not set" in log


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ('url = "ws://feed.example.com/dxlink"', "ws://feed.example.com is unencrypted"),
        ('url = "https://feed.example.com/dxlink"', "not a ws:// or wss:// URL"),
        ('url = "wss://user:pw@feed.example.com/"', "must not carry credentials"),
        ('url = "wss://feed.example.com/?token=abc"', "must not carry credentials"),
        ('token_env = "my token"', "not an environment variable name"),
    ],
)
def test_dxlink_settings_are_checked_like_tastytrades(settings: str, fragment: str) -> None:
    """wss:// off loopback, no credentials in the URL, a real variable name."""
    with pytest.raises(ConfigError) as raised:
        loads_config(f'[source]\nkind = "dxlink"\n[source.dxlink]\n{settings}\n', environ={})
    assert fragment in str(raised.value)
    assert "pw" not in str(raised.value) and "abc" not in str(raised.value)


def test_plain_ws_off_loopback_only_when_allowed() -> None:
    """allow_insecure_ws = true accepts ws:// to another host; loopback needs nothing."""
    text = '[source.dxlink]\nurl = "ws://feed.example.com/dxlink"\nallow_insecure_ws = true\n'
    assert loads_config(text, environ={}).source.dxlink.url == "ws://feed.example.com/dxlink"
    local = loads_config('[source.dxlink]\nurl = "ws://127.0.0.1:8765/"\n', environ={})
    source = DXLinkTokenSource(local.source.dxlink.url)
    assert not source.has_token and "127.0.0.1:8765" in repr(source)
