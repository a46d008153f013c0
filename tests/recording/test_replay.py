"""``candles replay``: the recorded server frames served to real clients over real sockets.

The recording is the checked-in fixture (two simulator runs: a drop, a restart). The clients
are ingest itself, and a raw DXLink client (tests/simulator/client.py) that numbers its
channels its own way or subscribes fewer series.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from pipeline.dxlink import (
    CANDLE_FIELDS,
    Authorized,
    CandlesReceived,
    CandleSymbol,
    ChannelOpened,
    DataFormat,
    FeedConfigured,
    SubscriptionItem,
)
from pipeline.ingest import IngestService, SimulatorTokenSource, rebuild
from pipeline.recording import OPENED, RECEIVED, Recording, ReplayServer, recording_files
from pipeline.recording.format import CLOSED, SENT, encode_record
from tests.helpers.recording import FIXTURE, differences, stored_rows
from tests.helpers.service import eventually, service_config
from tests.helpers.timing import TIMEOUT
from tests.recording.files import T0, Lines, recorded_candles, write_session
from tests.simulator.client import TestClient, comparable

FIELDS = CANDLE_FIELDS
"""The fields the recorded client asked for (a replay sends the frames as recorded)."""


@pytest.fixture
async def replay() -> AsyncIterator[ReplayServer]:
    """The fixture served; a step the client never takes is given up after 1.5 s (long
    enough for a loaded machine's client to take the steps it does take)."""
    async with ReplayServer(Recording(recording_files([FIXTURE])), wait_for_client=1.5) as server:
        yield server


def encode(c: int, d: str, f: str, at_ms: int) -> bytes:
    """A record ``at_ms`` after the hand-made recording's first line."""
    return encode_record(T0 + at_ms, at_ms * 1_000_000, c, d, f)


async def read_until_closed(client: TestClient) -> list[CandlesReceived]:
    """Every CandlesReceived until the server closes the connection."""
    received: list[CandlesReceived] = []
    try:
        while True:
            for event in await client.receive():
                if isinstance(event, CandlesReceived):
                    received.append(event)
    except ConnectionClosed:
        return received


async def test_ingest_against_a_replay_stores_what_the_recorded_runs_stored(tmp_path: Path) -> None:
    """candles ingest's service, pointed at the replay, stores the recorded runs' rows;
    only a candle that the recorded clock (not a newer candle) completed at the very end may
    be missing: a DXLink client knows only the stream's time."""
    files = recording_files([FIXTURE])
    reference = rebuild(Recording(files), service_config(tmp_path / "reference"))
    async with ReplayServer(Recording(files)) as server:
        service = IngestService(
            service_config(tmp_path / "replayed"),
            token_source=SimulatorTokenSource(server.url, "any-token"),
        )
        runner = asyncio.create_task(service.run())
        async with asyncio.timeout(TIMEOUT):
            await server.wait_finished()
        await eventually(
            lambda: service.stats.candles_received == reference.candles_received,
            what="every recorded candle event received",
        )
        service.stop()
        await runner
    assert server.stats.served == 3 and server.stats.connections == 3
    assert server.stats.frames_left_out == 0 and server.stats.frames_rewritten == 0
    expected, got = stored_rows(tmp_path / "reference"), stored_rows(tmp_path / "replayed")
    problems = differences(expected, got)
    stream_end = service.stats.stream_time_ms
    missing = [p for p in problems if p.startswith("missing ")]
    assert problems == missing, problems  # nothing extra, nothing different
    series_missing = set()
    for row in expected.join(
        got, on=["symbol", "period", "time", "sequence"], how="anti"
    ).iter_rows(named=True):
        period = CandleSymbol.of(row["symbol"], row["period"]).period_ms
        assert period is not None
        assert int(row["time"].timestamp() * 1000) + period > stream_end, row
        assert (row["symbol"], row["period"]) not in series_missing  # at most the last one
        series_missing.add((row["symbol"], row["period"]))
    assert got.height >= expected.height - 4


async def test_a_client_with_its_own_channel_numbers_gets_them(replay: ReplayServer) -> None:
    """A client asking for candles on channel 5 gets the recorded channel 1 rewritten as 5:
    every candle the recorded connection received, none on another channel."""
    client = await TestClient.open(replay.url, token="whatever")
    await client.expect(Authorized)
    channel = client.protocol.open_channel("HISTORY", number=5)
    await client.flush()
    await client.expect(ChannelOpened, lambda e: e.channel == 5)
    client.protocol.setup_feed(
        5, aggregation_period=0.1, data_format=DataFormat.COMPACT, event_fields={"Candle": FIELDS}
    )
    await client.flush()
    await client.expect(FeedConfigured, lambda e: e.channel == 5)
    series = ["AAPL{=m}", "AAPL{=5m}", "SPY{=m}", "SPY{=5m}"]
    client.protocol.subscribe(channel, add=[SubscriptionItem("Candle", s, 0) for s in series])
    await client.flush()
    received = await read_until_closed(client)
    assert {event.channel for event in received} == {5}
    expected = recorded_candles(recording_files([FIXTURE]), session=0, connection=1)
    assert comparable(c for event in received for c in event.candles) == comparable(expected)
    assert replay.stats.frames_rewritten > 0


async def test_a_client_subscribing_fewer_series_gets_only_those(replay: ReplayServer) -> None:
    """Only AAPL 1m subscribed: its recorded events arrive in order; the others are left out
    (after the bounded wait for a subscription that never comes)."""
    client = await TestClient.open(replay.url, token="whatever")
    await client.expect(Authorized)
    channel = await client.candle_channel(fields=FIELDS)
    await client.subscribe(channel, "AAPL{=1m}", 0)
    received = await read_until_closed(client)
    expected = [
        c
        for c in recorded_candles(recording_files([FIXTURE]), session=0, connection=1)
        if c.symbol == "AAPL{=m}"
    ]
    assert comparable(c for event in received for c in event.candles) == comparable(expected)
    assert replay.stats.frames_left_out > 0 or replay.stats.frames_rewritten > 0


async def test_after_the_recording_a_client_gets_a_handshake_and_no_data(
    replay: ReplayServer,
) -> None:
    """Once every recorded connection was served, a client still completes its handshake."""
    for _ in range(3):  # the three recorded connections
        client = await TestClient.open(replay.url, token="t")
        await client.expect(Authorized)
        # Leaving serves the recorded connection at once; staying would only sit out
        # wait_for_client for each channel this client never opens (the server ending a
        # recorded drop: test_ingest_against_a_replay_stores_what_the_recorded_runs_stored).
        await client.close()
    await eventually(lambda: replay.finished, within=TIMEOUT, what="the replay finished")
    assert replay.finished
    late = await TestClient.open(replay.url, token="t")
    await late.expect(Authorized)
    channel = await late.candle_channel()
    assert channel == 1
    await late.close()
    assert replay.stats.connections == 4


async def test_speed_keeps_the_recorded_spacing(tmp_path: Path) -> None:
    """With --speed 1 frames recorded 400 ms into a connection come no sooner; with 10,
    no sooner than 40 ms."""
    lines = Lines()
    block = [
        lines.line(1, OPENED, "ws://recorded/", a=0),
        lines.line(
            1,
            SENT,
            '{"type":"SETUP","channel":0,"version":"0.1","keepaliveTimeout":60,"acceptKeepaliveTimeout":60}',
        ),
        lines.line(
            1,
            RECEIVED,
            '{"type":"SETUP","channel":0,"version":"1.0","keepaliveTimeout":60,"acceptKeepaliveTimeout":60}',
        ),
        lines.line(1, RECEIVED, '{"type":"AUTH_STATE","channel":0,"state":"UNAUTHORIZED"}'),
        lines.line(1, SENT, '{"type":"AUTH","channel":0,"token":"<redacted>"}'),
        lines.line(
            1, RECEIVED, '{"type":"AUTH_STATE","channel":0,"state":"AUTHORIZED","userId":"u"}'
        ),
    ]
    # Then keepalives 100 ms apart and the end 500 ms after the opening (recorded time).
    keepalive = '{"type":"KEEPALIVE","channel":0}'
    block += [encode(1, RECEIVED, keepalive, 100 * n) for n in range(1, 5)]
    block.append(encode(1, CLOSED, "closed by the client", 500))
    writer = write_session(tmp_path, [block])
    two = Recording(writer.paths)
    async with (
        ReplayServer(Recording(writer.paths), speed=1.0) as server,
        ReplayServer(two, speed=10.0) as fast,
    ):
        for replay_server, at_least in ((server, 0.4), (fast, 0.04)):
            # Taken before connecting, so before the server's schedule starts: the fourth
            # keepalive (recorded 400 ms in) cannot arrive sooner than 400 ms / speed after.
            began = time.monotonic()
            client = await TestClient.open(replay_server.url, token="t")
            await client.expect(Authorized)
            keepalives = 0
            async with asyncio.timeout(TIMEOUT):
                while keepalives < 4:
                    frame = await client.next_frame()
                    keepalives += frame == keepalive
            assert time.monotonic() - began >= at_least
            await client.close()


def test_the_replay_command_serves_until_signalled(tmp_path: Path) -> None:
    """``candles replay FILES --port 0`` prints its URL, serves a client, exits 0 on SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "replay", str(FIXTURE), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CANDLES_PROFILE": ""},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"at (ws://127\.0\.0\.1:\d+/)", line)
        assert found, line
        assert line.startswith("replaying 3 recorded connections from 2 sessions, ")

        async def handshake() -> None:
            client = await TestClient.open(found[1], token="t")
            await client.expect(Authorized)
            await client.close()

        asyncio.run(handshake())
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
