"""``candles simulate``: serves until SIGINT/SIGTERM, prints its URL, takes fault flags."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.dxlink import ErrorReceived
from tests.helpers.timing import TIMEOUT
from tests.simulator.client import TestClient


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
async def test_simulate_prints_its_url_serves_and_stops_cleanly(stop: signal.Signals) -> None:
    """The printed URL accepts DXLink clients; a signal stops the process with exit 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "simulate", "--port", "0", "--token", "cli-token",
        "--speed", "60", "--seed", "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = (await process.stdout.readline()).decode()
        assert "cli-token" not in line
        url = line.split("serving ", 1)[1].split()[0]
        assert url.startswith("ws://127.0.0.1:")
        client = await TestClient.authorized(url, token="cli-token")
        await client.close()
    finally:
        process.send_signal(stop)
        async with asyncio.timeout(TIMEOUT):
            assert await process.wait() == 0


async def test_simulate_fault_flag_injects_on_schedule() -> None:
    """--fault error:CODE@AT/EVERY sends that ERROR to the connected clients, repeatedly."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "simulate", "--port", "0", "--token", "t",
        "--fault", "error:BAD_ACTION@0/0.1",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = (await process.stdout.readline()).decode()
        client = await TestClient.authorized(line.split("serving ", 1)[1].split()[0], token="t")
        error = await client.expect(ErrorReceived)
        assert error.error.code == "BAD_ACTION"
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            await process.wait()


def test_simulate_rejects_a_bad_fault_with_a_clear_message() -> None:
    """A malformed --fault exits 2 naming the problem."""
    result = CliRunner().invoke(cli, ["simulate", "--fault", "explode@3"])
    assert result.exit_code == 2
    assert "unknown kind 'explode'" in result.output


def test_simulate_help_lists_the_fault_syntax() -> None:
    """--help documents the fault specs."""
    result = CliRunner().invoke(cli, ["simulate", "--help"])
    assert result.exit_code == 0
    assert "expire-token" in result.output and "--speed" in result.output


async def test_simulate_says_where_its_clock_starts_and_serves_nothing_from_the_future() -> None:
    """The first line says the clock starts behind and never runs ahead of the wall clock;
    at 600x, a snapshot of an hour of candles ends before the wall clock."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "simulate", "--port", "0", "--token", "t",
        "--speed", "600", "--start-behind", "5m",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = (await process.stdout.readline()).decode()
        assert "market clock starts 5m behind the wall clock" in line
        assert "never ahead of it" in line
        client = await TestClient.authorized(line.split("serving ", 1)[1].split()[0], token="t")
        channel = await client.candle_channel()
        await client.subscribe(channel, "AAPL{=1m}", int(time.time() * 1000) - 3_600_000)
        candles = await client.snapshot()
        await client.close()
        wall_ms = int(time.time() * 1000)
        assert candles and max(c.time for c in candles) <= wall_ms
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            await process.wait()


def test_simulate_rejects_a_bad_start_behind() -> None:
    """--start-behind must be a duration; the flag is named."""
    result = CliRunner().invoke(cli, ["simulate", "--start-behind", "a while"])
    assert result.exit_code == 2 and "--start-behind" in result.output
