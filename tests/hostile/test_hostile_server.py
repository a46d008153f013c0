"""`candles ingest` against a malicious DXLink server (issue 14): nothing it sends stops ingest.

The server (``tests/helpers/hostile.py``) completes a correct handshake and serves a seeded
market, then misbehaves: absurd candle values of every kind, floods of symbols nobody
subscribed, silence behind an absurd keepalive advertisement, a frame over the size limit, a
socket that stops reading and talking, junk frames. Every case runs the real
``IngestService`` (client, manager, DuckLake store on disk) and checks the same four things:

* ingest keeps running (its task is alive at the end and stops cleanly when asked);
* memory stays bounded (the manager holds only the configured series, within its bound) and
  so does the log (a bounded number of lines, whatever the volume of the attack);
* the store holds only valid candles and equals the server's truth for them;
* what the case is about (a counted fault, a stall reported by /health, ...).

Fast cases run in the default suite; the long floods measuring RSS and log bytes over a
minute are behind ``--run-soak``. The cases about invalid values and unsolicited series need
the manager's validation door (issue 14 items 1, 2 and 6, built on another branch) and are
marked ``xfail(strict=True)`` until it is merged: drop the marks then.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.dxlink import index_of
from pipeline.ingest import IngestService, SimulatorTokenSource
from pipeline.store import CandleStore
from tests.helpers.hostile import TOKEN, HostileServer, HostileSession, Market, candle_values
from tests.helpers.service import eventually, service_config
from tests.helpers.timing import TIMEOUT

MINUTE = 60_000
END_MS = 1_793_890_800_000  # 2026-11-05T15:00Z: the newest candle of every series
CANDLES = 40
SERIES = ("AAPL{=m}", "SPY{=m}")
FROM_MS = END_MS - (CANDLES - 1) * MINUTE
NOW_MS = END_MS + 10 * MINUTE  # the source clock: every candle up to END_MS + 8 min is complete
NEEDS_DOOR = pytest.mark.xfail(
    strict=True, reason="needs the validation door (manager branch, issue 14 items 1, 2, 6)"
)
INT64 = (-(2**63), 2**63 - 1)


def _int64(value: int) -> int:
    return max(INT64[0], min(INT64[1], value))


@dataclass
class Attack:
    """What the hostile server adds to the truth, per subscribed series and connection."""

    events: Callable[[str, int], list[dict[str, Any]]] = lambda symbol, from_time: []
    """Hostile Candle events for ``symbol`` (each sent in a frame of its own)."""
    frames: Callable[[HostileSession, int], list[str]] = lambda session, channel: []
    """Raw frames sent before the snapshot."""
    invalid_times: Callable[[str], set[int]] = lambda symbol: set()
    """Candle times that must never be stored."""


@dataclass
class Run:
    """One ingest service running against one hostile server."""

    service: IngestService
    task: asyncio.Task[None]
    server: HostileServer
    market: Market
    store_path: Path
    log: LogTally


class LogTally(logging.Handler):
    """Counts what ingest logs at INFO and above and keeps only the last lines: a flood under
    test must not be held in memory by the test itself."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines = 0
        self.characters = 0
        self.warnings = 0
        self.last: deque[str] = deque(maxlen=20)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.lines += 1
        self.characters += len(message)
        self.warnings += record.levelno == logging.WARNING
        self.last.append(message[:200])


def feed_for(market: Market, attack: Attack) -> Callable[..., list[str]]:
    """The server's answer to a candle subscription: attack frames, the truth, hostile events."""

    def feed(session: HostileSession, channel: int, symbol: str, from_time: int) -> list[str]:
        fields = session.fields[channel]
        frames = list(attack.frames(session, channel))
        frames.append(
            HostileServer.candle_frame(channel, fields, market.snapshot(symbol, from_time))
        )
        frames += [
            HostileServer.candle_frame(channel, fields, [event])
            for event in attack.events(symbol, from_time)
        ]
        return frames

    return feed


@asynccontextmanager
async def running(
    tmp_path: Path,
    attack: Attack | None = None,
    *,
    server: HostileServer | None = None,
    **settings: Any,
) -> AsyncIterator[Run]:
    """Start the hostile server and an IngestService on a fresh store; stop both after."""
    market = Market(seed=14, end_ms=END_MS, count=CANDLES)
    hostile = server or HostileServer(seed=14)
    hostile.feed = hostile.feed or feed_for(market, attack or Attack())
    overrides: dict[str, Any] = {
        "client.dead_peer_timeout": 1.0,
        "client.max_dead_peer_timeout": 2.0,
        "manager.grace_seconds": 0.0,
    }
    overrides.update(settings)
    store_path = tmp_path / "data"
    config = service_config(
        store_path, symbols=("AAPL", "SPY"), intervals=("1m",), from_ms=FROM_MS, **overrides
    )
    handler = LogTally()
    pipeline_logger = logging.getLogger("pipeline")
    pipeline_logger.addHandler(handler)
    level = pipeline_logger.level
    pipeline_logger.setLevel(logging.INFO)
    try:
        async with hostile:
            service = IngestService(
                config,
                token_source=SimulatorTokenSource(hostile.url, TOKEN),
                source_clock_ms=lambda: NOW_MS,
            )
            task = asyncio.create_task(service.run())
            run = Run(service, task, hostile, market, store_path, handler)
            try:
                yield run
            finally:
                service.stop()
                await asyncio.wait_for(asyncio.shield(task), TIMEOUT)
    finally:
        pipeline_logger.removeHandler(handler)
        pipeline_logger.setLevel(level)


async def stored_everything(run: Run) -> None:
    """Wait until the truth of every series is in memory, then flush it."""

    def complete() -> bool:
        assert not run.task.done(), f"ingest stopped: {run.task.exception()!r}"
        return run.service.stats.stream_time_ms >= END_MS

    await eventually(complete, within=TIMEOUT, what="the history arrived")
    await eventually(
        lambda: run.service.manager.stats().buffered_events == 0, within=TIMEOUT, what="applied"
    )
    report = await run.service.flush("test")
    assert report.error is None, report.error


def check(run: Run, attack: Attack, *, max_log_lines: int = 40) -> None:
    """The four things every case checks (see the module docstring)."""
    service = run.service
    assert not run.task.done(), f"ingest stopped: {run.task.exception()!r}"
    stats = service.manager.stats()
    assert stats.series <= len(SERIES), f"{stats.series} series held, {len(SERIES)} subscribed"
    assert stats.memory_bytes <= stats.memory_limit_bytes
    assert run.log.lines <= max_log_lines, list(run.log.last)
    with CandleStore(run.store_path, verify_extensions=False) as store:
        for series in SERIES:
            stored = store.history(series, 0, 2**41)
            want = run.market.candles(series)
            times = stored["time"].dt.epoch("ms").to_list()
            assert not set(times) & attack.invalid_times(series), "an invalid candle was stored"
            assert times == [c["time"] for c in want], f"{series}: stored times differ"
            for name in ("open", "high", "low", "close", "volume", "vwap", "count"):
                have = stored[name].to_list()
                expected = [c[name] for c in want]
                assert all(_same(a, b) for a, b in zip(have, expected, strict=True)), name


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12)
    return a == b


# ------------------------------------------------------------------- absurd values


def absurd(symbol: str, time_ms: int, **fields: Any) -> dict[str, Any]:
    """A candle at ``time_ms`` with ``fields`` replaced (index kept within int64)."""
    values = candle_values(symbol, time_ms, **fields)
    values["index"] = _int64(index_of(time_ms)) if "index" not in fields else fields["index"]
    return values


PERIOD_MS = MINUTE
# Times not in the truth (which spans FROM_MS..END_MS), so a dropped event leaves it intact.
LATER = END_MS + 3 * MINUTE  # complete by NOW_MS, not in the future: only its values are absurd
ABSURD: dict[str, Callable[[str], dict[str, Any]]] = {
    "time in year 1": lambda s: absurd(s, -62_135_596_800_000),
    "time 2**62": lambda s: absurd(s, 2**62),
    "negative volume": lambda s: absurd(s, LATER, volume=-5.0),
    "negative count": lambda s: absurd(s, LATER, count=-3),
    "high +Infinity": lambda s: absurd(s, LATER, high=math.inf),
    "low -Infinity": lambda s: absurd(s, LATER, low=-math.inf),
    "close NaN among numbers": lambda s: absurd(s, LATER, close=math.nan),
    "high below low": lambda s: absurd(s, LATER, high=90.0, low=110.0, open=100.0, close=100.0),
    "off its period boundary": lambda s: absurd(s, LATER + 56_790),
    "before the subscription's fromTime": lambda s: absurd(s, FROM_MS - 10 * MINUTE),
}


def attack_with(kind: str) -> Attack:
    make = ABSURD[kind]
    return Attack(
        events=lambda symbol, from_time: [make(symbol)],
        invalid_times=lambda symbol: {int(make(symbol)["time"])},
    )


@pytest.mark.parametrize(
    "kind",
    [pytest.param(kind, marks=NEEDS_DOOR) for kind in ABSURD],
)
async def test_absurd_candle_values_are_never_stored_and_never_stop_ingest(
    tmp_path: Path, kind: str
) -> None:
    """Each kind of absurd Candle: dropped, counted, ingest goes on, the store equals the truth."""
    attack = attack_with(kind)
    async with running(tmp_path, attack) as run:
        await stored_everything(run)
        check(run, attack)
        assert run.service.manager.stats().invalid_events >= 1


# --------------------------------------------------------------- unsolicited floods


def unsolicited(count: int) -> Attack:
    """``count`` series nobody subscribed, each one candle, before the truth arrives."""

    def frames(session: HostileSession, channel: int) -> list[str]:
        fields = session.fields[channel]
        events = [candle_values(f"U{n:06d}{{=m}}", END_MS) for n in range(count)]
        return [
            HostileServer.candle_frame(channel, fields, events[at : at + 500])
            for at in range(0, count, 500)
        ]

    return Attack(frames=frames)


@NEEDS_DOOR
async def test_a_flood_of_unsolicited_series_neither_evicts_nor_floods(tmp_path: Path) -> None:
    """20,000 unsolicited series ahead of the subscribed ones: all dropped, the subscribed
    ones stored in full, memory and the log bounded."""
    attack = unsolicited(20_000)
    async with running(tmp_path, attack) as run:
        await stored_everything(run)
        check(run, attack)


# ------------------------------------------------------------- the connection itself


async def test_a_silent_server_with_an_absurd_keepalive_is_a_reported_stall(
    tmp_path: Path,
) -> None:
    """SETUP keepaliveTimeout 1e9, then silence: ingest drops it at the 2 s cap, /health and
    the status line say 'stalled' while it lasts, and it all flows once the server talks."""
    server = HostileServer(seed=14, setup={"keepaliveTimeout": 1e9, "acceptKeepaliveTimeout": 1e9})
    server.silent = True
    attack = Attack()
    async with running(
        tmp_path, attack, server=server, **{"metrics.enabled": True, "metrics.port": 0}
    ) as run:

        def dead_twice() -> bool:
            client = run.service.client
            if client is None:
                return False
            drops: dict[str, int] = client.get_metrics()["connection"]["disconnect_count"]
            return drops.get("peer_timeout", 0) >= 2

        await eventually(dead_twice, within=TIMEOUT, what="two connections dropped as dead")
        status, health = await asyncio.to_thread(_health, run.service)
        state = run.service.connection_state()
        server.silent = False  # and now it serves the market
        await eventually(
            lambda: (
                len(server.sessions) > 2
                and not server.sessions[-1].closed.is_set()
                and bool(server.sessions[-1].subscribed)
            ),
            within=TIMEOUT,
            what="a connection with the server talking",
        )
        await stored_everything(run)
        healthy = await asyncio.to_thread(_health, run.service)
        check(run, attack)
    assert status == 503 and any(r.startswith("stalled") for r in health["reasons"]), health
    assert "stalled" in state, state
    assert healthy[0] == 200, healthy


def _health(service: IngestService) -> tuple[int, dict[str, Any]]:
    url = f"{service.metrics.url}/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


async def test_one_oversized_frame_is_a_counted_fault_not_an_exit(tmp_path: Path) -> None:
    """A 1 MB frame against a 64 KiB limit: that connection is dropped and counted, the next
    one brings the history, ingest never stops."""
    server = HostileServer(seed=14)

    def monster(session: HostileSession, channel: int) -> list[str]:
        if session is not server.sessions[0]:
            return []
        return ['{"type":"KEEPALIVE","channel":0,"pad":"' + "x" * 1_000_000 + '"}']

    attack = Attack(frames=monster)
    async with running(
        tmp_path, attack, server=server, **{"client.max_message_size": 65_536}
    ) as run:
        await stored_everything(run)
        assert run.service.client is not None
        metrics = run.service.client.get_metrics()["connection"]
        check(run, attack)
    assert metrics["disconnect_count"].get("message_too_big") == 1


async def test_a_half_open_socket_is_dropped_and_replaced(tmp_path: Path) -> None:
    """The first connection goes deaf and mute right after the handshake (a half-open
    socket): it is judged dead within the dead-peer timeout and the next one delivers."""
    server = HostileServer(seed=14)
    server.deaf = server.silent = True
    attack = Attack()
    async with running(tmp_path, attack, server=server) as run:
        await eventually(lambda: len(server.sessions) >= 1, within=TIMEOUT, what="a connection")
        await asyncio.wait_for(server.sessions[0].closed.wait(), TIMEOUT)  # judged dead
        server.deaf = server.silent = False
        await stored_everything(run)
        check(run, attack)
    assert server.sessions[0].close_frame is None  # dropped without a closing handshake
    assert len(server.sessions) >= 2


async def test_junk_frames_are_skipped_and_logged_a_few_times(tmp_path: Path) -> None:
    """3,000 junk frames around the history: all skipped and counted, the history stored,
    a few WARNING lines."""
    junk = ['{"type":"FEED_DATA","channel":', "[]", '{"type":"FEED_DATA","channel":1,"data":7}']
    attack = Attack(frames=lambda session, channel: junk * 1000)
    async with running(tmp_path, attack) as run:
        await stored_everything(run)
        assert run.service.client is not None
        metrics = run.service.client.get_metrics()["connection"]
        check(run, attack)
    assert metrics["malformed_messages"] >= 3000
    assert 1 <= run.log.warnings <= 4, list(run.log.last)


# ---------------------------------------------------------------- soak: the long floods


def _rss_mib() -> float:
    """This process's resident memory now (Linux ``/proc/self/statm``), in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.soak
@NEEDS_DOOR
async def test_a_minute_of_unsolicited_symbols_keeps_memory_and_the_log_flat(
    tmp_path: Path,
) -> None:
    """60 s of floods of new unsolicited symbols (the issue's 765 MB of log in 65 s):
    RSS grows less than 64 MiB after the first 10 s, the log stays under 200 lines."""
    async with running(tmp_path, Attack()) as run:
        await stored_everything(run)
        serial = 0
        samples: list[float] = []
        started = time.monotonic()
        while time.monotonic() - started < 60:
            session = run.server.sessions[-1]
            channel = session.channels["HISTORY"]
            fields = session.fields[channel]
            events = [candle_values(f"F{serial + n:08d}{{=m}}", END_MS) for n in range(500)]
            serial += 500
            await run.server.send(session, HostileServer.candle_frame(channel, fields, events))
            if len(samples) < (time.monotonic() - started) // 5 + 1:
                samples.append(_rss_mib())
        check(run, Attack(), max_log_lines=200)
    print(
        f"unsolicited flood: {serial:,} symbols in 60 s, {run.log.lines} log lines "
        f"({run.log.characters:,} characters), RSS MiB every 5 s: {samples}"
    )
    assert max(samples[2:]) - samples[2] < 64, samples


@pytest.mark.soak
async def test_a_minute_of_junk_frames_keeps_memory_and_the_log_flat(tmp_path: Path) -> None:
    """60 s of junk frames as fast as the server can send: RSS flat within 64 MiB after the
    first 10 s, the log under 20 lines, the history intact."""
    async with running(tmp_path, Attack()) as run:
        await stored_everything(run)
        sent, samples = 0, list[float]()
        started = time.monotonic()
        while time.monotonic() - started < 60:
            session = run.server.sessions[-1]
            await run.server.send(session, '{"type":"FEED_DATA","channel":' + "9" * 200)
            sent += 1
            if len(samples) < (time.monotonic() - started) // 5 + 1:
                samples.append(_rss_mib())
        assert run.service.client is not None
        counted = run.service.client.get_metrics()["connection"]["malformed_messages"]
        check(run, Attack(), max_log_lines=20)
    print(
        f"junk flood: {sent:,} frames in 60 s ({counted:,} counted), {run.log.lines} log lines "
        f"({run.log.characters:,} characters), RSS MiB: {samples}"
    )
    assert max(samples[2:]) - samples[2] < 64, samples


@pytest.mark.soak
async def test_stall_detection_takes_the_dead_peer_timeout_by_default(tmp_path: Path) -> None:
    """With the default client settings a server that goes silent is dropped about 10 s
    after its last frame (it asked to be judged within 10 s): the figure, measured."""
    server = HostileServer(seed=14, keepalive_every=1.0)
    async with running(
        tmp_path,
        Attack(),
        server=server,
        **{"client.dead_peer_timeout": 10.0, "client.max_dead_peer_timeout": 60.0},
    ) as run:
        await stored_everything(run)
        silent_from = time.monotonic()
        server.silent = True
        await eventually(
            lambda: len(server.sessions) >= 2, within=30, what="a new connection after the stall"
        )
        detected = time.monotonic() - silent_from
    print(f"stall detected and replaced after {detected:.1f} s (dead_peer_timeout 10 s)")
    assert 9 <= detected <= 13, detected
