"""Helpers for the end-to-end benchmarks: figures with baselines, a simulator in its own
process, a raw DXLink receiver, the ingest service's config, waiting and process metrics.

The simulator runs in a child process (:class:`SimulatorProcess`) whenever the benchmark
times or charges CPU to the client: on a 2-core machine a simulator in the same process
would share the client's GIL and event loop and its cost would be booked as ours.

Every figure that compares carries its baseline, measured in the same run
(:class:`Figure`); :func:`print_figures` and :func:`markdown_table` show them with the
ratio and the target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.client import connect

from benchmarks.common import machine_info, print_table, write_json
from pipeline.config import Config, load_config
from pipeline.dxlink import (
    CANDLE_FIELDS,
    Authorized,
    ChannelOpened,
    ClientProtocol,
    FeedConfigured,
    SubscriptionItem,
)
from pipeline.simulator import Simulator, SimulatorClock

__all__ = [
    "START_MS",
    "TOKEN",
    "BenchResult",
    "Figure",
    "RawReceipt",
    "RawTap",
    "SimulatorProcess",
    "bench_config",
    "bench_main",
    "count_feed_events",
    "markdown_table",
    "print_figures",
    "raw_receive",
    "symbols",
    "wait_until",
]

START_MS = int(datetime(2026, 11, 3, 15, 0, tzinfo=UTC).timestamp() * 1000)
"""Where every benchmark's simulated clock starts (a Tuesday, on a minute boundary)."""
TOKEN = "bench-token"
MINUTE_MS = 60_000
KEEPALIVE_EVERY = 15.0
"""Seconds between the raw receiver's KEEPALIVEs (the simulator's timeout is 60 s)."""
SUBSCRIBE_CHUNK = 250
"""Subscription items per FEED_SUBSCRIPTION of the raw receiver (~60 bytes each)."""


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure, with the baseline it is compared with (same run) and its target.

    ``ratio`` is ``value / baseline`` when both exist; ``met`` is None when there is no target.
    """

    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline: float | None = None
    target: str | None = None
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        """``value / baseline`` (None without a baseline or with a zero one)."""
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def as_json(self) -> dict[str, Any]:
        """The figure as a JSON-ready dict, ratio included."""
        return {**asdict(self), "ratio": self.ratio}


def _shown(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "MISSED")


def _rows(figures: Sequence[Figure]) -> list[list[str]]:
    return [
        [
            f.name,
            f"{_shown(f.value)} {f.unit}",
            "-" if f.baseline_name is None else f"{f.baseline_name}: {_shown(f.baseline)}",
            "-" if f.ratio is None else f"{f.ratio:.3g}x",
            f.target or "-",
            _verdict(f.met),
        ]
        for f in figures
    ]


HEADERS = ("figure", "value", "baseline (same run)", "ratio", "target", "verdict")


def print_figures(title: str, figures: Sequence[Figure]) -> None:
    """Print the figures as one aligned table (via ``benchmarks.common.print_table``)."""
    print_table(title, HEADERS, _rows(figures))


def markdown_table(figures: Sequence[Figure]) -> str:
    """The figures as a Markdown table, for the README."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in _rows(figures)
    ]
    return "\n".join(lines)


PACKAGES = ("duckdb", "polars", "pyarrow", "websockets", "orjson")


@dataclass(frozen=True, slots=True)
class BenchResult:
    """What one end-to-end benchmark measured: its figures, its parameters, raw details."""

    name: str
    title: str
    figures: list[Figure]
    parameters: dict[str, Any]
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (without machine info; see :func:`bench_main`)."""
        return {
            "benchmark": self.name,
            "title": self.title,
            "parameters": self.parameters,
            "figures": [f.as_json() for f in self.figures],
            "details": self.details,
        }


def bench_main(
    name: str,
    description: str | None,
    run: Callable[[bool, Path], BenchResult],
    argv: Sequence[str] | None,
) -> int:
    """The command line of one benchmark: ``--quick``, run it in a temporary folder, print
    its table and write ``benchmarks/results/<name>.json``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.bench_{name}", description=description
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as folder:
        result = run(args.quick, Path(folder))
    print_figures(result.title, result.figures)
    path = write_json(
        name, {**result.as_json(), "quick": args.quick, "machine": machine_info(PACKAGES)}
    )
    print(f"\nwrote {path}")
    return 0


def symbols(count: int, prefix: str = "BS") -> tuple[str, ...]:
    """``count`` distinct base symbols (``BS0000``...); the simulator trades any symbol."""
    return tuple(f"{prefix}{i:04d}" for i in range(count))


def bench_config(
    store: Path,
    *,
    bases: Sequence[str],
    intervals: Sequence[str] = ("1m",),
    from_ms: int,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """A service config for benchmarks: fast reconnects, subscriptions not rate-limited, no
    metrics, flushes left to the benchmark unless overridden, no environment influence.

    The product's default subscribe rate (10 messages/s) would make subscribing 1,000 series
    the whole figure; the benchmarks measure the data path, so it is lifted here.
    """
    settings: dict[str, Any] = {
        "subscriptions.symbols": list(bases),
        "subscriptions.intervals": list(intervals),
        "subscriptions.from_time": datetime.fromtimestamp(from_ms / 1000, UTC).isoformat(),
        "store.path": str(store),
        "client.subscribe_rate": 10_000.0,
        "client.subscribe_burst": 10_000,
        "client.handshake_timeout": 10.0,
        "schedule.flush_interval": 3600.0,
        "manager.grace_seconds": 0.0,
        "manager.max_series": max(10_000, 2 * len(bases) * len(intervals)),
        "metrics.enabled": False,
    }
    settings.update(overrides or {})
    return load_config(None, None, settings, environ={}, now=datetime(2030, 1, 1, tzinfo=UTC))


async def wait_until(
    condition: Callable[[], bool], *, within: float, what: str, poll: float = 0.002
) -> float:
    """Wait until ``condition()`` holds, re-checking every ``poll`` s; return when it first
    held (``time.perf_counter()``). Raises TimeoutError naming ``what`` after ``within`` s.

    Polling is the benchmark's observer, not synchronisation: it bounds the figure's
    resolution to ``poll`` seconds, which each benchmark states.
    """
    deadline = time.perf_counter() + within
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not reached within {within} s")
        await asyncio.sleep(poll)
    return time.perf_counter()


# ---------------------------------------------------------------------- simulator process


def _serve(settings: dict[str, Any], pipe: multiprocessing.connection.Connection) -> None:
    """Child process: run a Simulator until the parent sends anything (or goes away)."""

    async def main() -> None:
        speed = settings.pop("speed")
        start_ms = settings.pop("start_ms")
        clock = (
            SimulatorClock.manual(start_ms)
            if speed is None
            else SimulatorClock.accelerated(speed, start_ms)
        )
        real_start = time.monotonic()
        async with Simulator(token=TOKEN, clock=clock, **settings) as sim:
            pipe.send((sim.url, real_start))
            loop = asyncio.get_running_loop()
            while True:
                command = await loop.run_in_executor(None, _recv_quietly, pipe)
                if not isinstance(command, float):
                    return
                sim.publish_interval = command  # read by the publish loop every round

    asyncio.run(main())


def _recv_quietly(pipe: multiprocessing.connection.Connection) -> object:
    """The parent's next command; None when it went away (then the child stops too)."""
    with contextlib.suppress(EOFError):
        return pipe.recv()
    return None


def _spawn(
    target: Callable[..., None], args: tuple[Any, ...], what: str
) -> tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection, Any]:
    """Start ``target(*args, pipe)`` in a ``spawn`` child and wait for its first message.

    Returns:
        The process, the parent's end of the pipe and that first message.
    """
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    child.close()
    if not parent.poll(60):
        process.kill()
        raise RuntimeError(f"{what} did not start within 60 s")
    return process, parent, parent.recv()


def _stop(
    process: multiprocessing.process.BaseProcess | None,
    pipe: multiprocessing.connection.Connection | None,
) -> None:
    """Ask a child from ``_spawn`` to stop (any non-command message), then join it."""
    if pipe is not None:
        with contextlib.suppress(OSError):
            pipe.send("stop")
        pipe.close()
    if process is not None:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


class SimulatorProcess:
    """A :class:`Simulator` in a child process (``spawn``), for use as a context manager.

    Args:
        speed: Simulated seconds per real second; None for a manual clock that never moves
            (snapshots only).
        start_ms: The simulated time at start.
        **settings: Further ``Simulator`` keyword arguments (plain values only).
    """

    def __init__(self, *, speed: float | None = None, start_ms: int = START_MS, **settings: Any):
        self._settings = {"speed": speed, "start_ms": start_ms, **settings}
        self.speed = speed
        self.start_ms = start_ms
        self.url = ""
        """``ws://`` URL of the running simulator."""
        self.real_start = 0.0
        """``time.monotonic()`` (system-wide on Linux) when the simulated clock started."""
        self._pipe: multiprocessing.connection.Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return None if self._process is None else self._process.pid

    def sim_now_ms(self) -> int:
        """The child's simulated time now, computed from its start (no IPC)."""
        if self.speed is None:
            return self.start_ms
        return self.start_ms + int((time.monotonic() - self.real_start) * self.speed * 1000)

    def set_publish_interval(self, seconds: float) -> None:
        """Change the child's real seconds between publish rounds (accelerated clocks)."""
        if self._pipe is None:
            raise RuntimeError("the simulator process is not running")
        self._pipe.send(float(seconds))

    def __enter__(self) -> SimulatorProcess:
        self._process, self._pipe, started = _spawn(
            _serve, (self._settings,), "the simulator process"
        )
        self.url, self.real_start = started
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _stop(self._process, self._pipe)
        self._process = self._pipe = None


# ---------------------------------------------------------------------- raw receiver


@dataclass(frozen=True, slots=True)
class RawReceipt:
    """What :func:`raw_receive` got: the frames and when the first and last arrived."""

    frames: list[str | bytes]
    subscribed_at: float
    last_frame_at: float

    @property
    def seconds(self) -> float:
        """From sending the subscription to the last frame."""
        return self.last_frame_at - self.subscribed_at

    @property
    def bytes(self) -> int:
        """Total payload bytes of the frames."""
        return sum(len(f) for f in self.frames)


async def raw_receive(
    url: str,
    series: Sequence[str],
    from_ms: int,
    *,
    idle: float,
    duration: float | None = None,
    aggregation_period: float = 0.1,
    into: list[tuple[float, str | bytes]] | None = None,
    first_within: float = 120.0,
) -> RawReceipt:
    """The floor of backfill: receive a subscription's frames and do nothing with them.

    Handshake through :class:`ClientProtocol` (SETUP, AUTH, one HISTORY channel, COMPACT
    FEED_SETUP with our field list), then one FEED_SUBSCRIPTION for every series, then
    ``recv()`` in a loop with no parsing until the socket stays quiet for ``idle`` seconds
    after the first frame (which may take up to ``first_within`` seconds), or ``duration``
    seconds after subscribing, for a live feed. The figure ends at the
    last frame's arrival, so the idle wait is not counted. With ``into``, each frame is also
    appended there with its arrival time as it comes (for an observer running alongside).
    """
    proto = ClientProtocol(token=TOKEN)
    async with connect(url, max_size=None, compression=None, ping_interval=None) as ws:

        async def exchange(until: Callable[[list[object]], bool]) -> None:
            seen: list[object] = []
            while True:
                for text in proto.messages_to_send():
                    await ws.send(text)
                if until(seen):
                    return
                proto.receive_message(await ws.recv(), time.monotonic())
                seen += proto.events_received()

        proto.start(time.monotonic())
        await exchange(lambda seen: any(isinstance(e, Authorized) for e in seen))
        channel = proto.open_channel("HISTORY")
        await exchange(lambda seen: any(isinstance(e, ChannelOpened) for e in seen))
        proto.setup_feed(
            channel, aggregation_period=aggregation_period, event_fields={"Candle": CANDLE_FIELDS}
        )
        await exchange(lambda seen: any(isinstance(e, FeedConfigured) for e in seen))
        add = [SubscriptionItem("Candle", s, from_ms) for s in series]
        for first in range(0, len(add), SUBSCRIBE_CHUNK):  # §8: frames stay under 64 KiB
            proto.subscribe(channel, add=add[first : first + SUBSCRIBE_CHUNK])
        frames: list[str | bytes] = []
        subscribed_at = time.perf_counter()
        for text in proto.messages_to_send():
            await ws.send(text)
        last = subscribed_at
        ends = float("inf") if duration is None else subscribed_at + duration
        keepalive_due = subscribed_at + KEEPALIVE_EVERY
        while last < ends:
            if last >= keepalive_due:  # §2.6: or the server times a long-lived receiver out
                await ws.send('{"type":"KEEPALIVE","channel":0}')
                keepalive_due = last + KEEPALIVE_EVERY
            try:
                # The first frame may take long (the server draws the history first).
                frame = await asyncio.wait_for(ws.recv(), idle if frames else first_within)
            except TimeoutError:
                break
            last = time.perf_counter()
            frames.append(frame)
            if into is not None:
                into.append((last, frame))
    return RawReceipt(frames, subscribed_at, last)


# ---------------------------------------------------------------------- raw tap process


def _tap(
    url: str,
    series: list[str],
    from_ms: int,
    aggregation_period: float,
    pipe: multiprocessing.connection.Connection,
) -> None:
    """Child process: a raw receiver that notes (arrival, events) per frame and answers the
    parent's queries ("cpu", ("events", begin, end)) until it sends anything else."""
    arrivals: list[tuple[float, int]] = []
    frames: list[tuple[float, str | bytes]] = []

    async def main() -> None:
        receiver = asyncio.create_task(
            raw_receive(
                url, series, from_ms, idle=3600.0, duration=3600.0,
                aggregation_period=aggregation_period, into=frames,
            )
        )  # fmt: skip
        pipe.send("started")
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, _recv_quietly, pipe)
            if receiver.done():
                receiver.result()  # raises what ended it
            # Counting is done here, on request, not per frame: the receiver stays raw.
            arrivals.extend((at, count_feed_events([frame])) for at, frame in frames)
            frames.clear()
            if command == "cpu":
                pipe.send(time.process_time())
            elif isinstance(command, tuple) and command[0] == "events":
                _, begin, end = command
                pipe.send(sum(n for at, n in arrivals if begin <= at < end))
            else:
                receiver.cancel()
                return

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(main())


class RawTap:
    """A raw receiver (``raw_receive``) in its own process, subscribed for as long as the
    context lasts: what the simulator offers, measured without taking CPU or event-loop
    time from the client under test. Arrival times are ``time.perf_counter()`` (system-wide
    CLOCK_MONOTONIC on Linux), so the parent's windows apply.

    Args:
        url: The simulator's URL.
        series: Candle symbols to subscribe (``AAPL{=1m}``).
        from_ms: Their ``fromTime``.
        aggregation_period: The FEED_SETUP ``acceptAggregationPeriod``.
    """

    def __init__(
        self, url: str, series: Sequence[str], from_ms: int, *, aggregation_period: float = 0.0
    ) -> None:
        self._args = (url, list(series), from_ms, aggregation_period)
        self._pipe: multiprocessing.connection.Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None

    def _ask(self, command: object) -> Any:
        if self._pipe is None:
            raise RuntimeError("the raw tap is not running (use it as a context manager)")
        self._pipe.send(command)
        if not self._pipe.poll(120):
            raise RuntimeError("the raw tap did not answer within 120 s")
        return self._pipe.recv()

    def cpu_seconds(self) -> float:
        """The tap process's CPU time so far (``time.process_time()`` there)."""
        return float(self._ask("cpu"))

    def events_between(self, begin: float, end: float) -> int:
        """Candle events in the FEED_DATA frames that arrived in ``[begin, end)``."""
        return int(self._ask(("events", begin, end)))

    def __enter__(self) -> RawTap:
        self._process, self._pipe, _ = _spawn(_tap, self._args, "the raw tap")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _stop(self._process, self._pipe)
        self._process = self._pipe = None


def count_feed_events(frames: Sequence[str | bytes], fields: int = len(CANDLE_FIELDS)) -> int:
    """Candle events in the COMPACT FEED_DATA frames among ``frames`` (others ignored)."""
    events = 0
    for frame in frames:
        message = orjson.loads(frame)
        if message.get("type") != "FEED_DATA":
            continue
        data = message["data"]
        for i in range(1, len(data), 2):
            events += len(data[i]) // fields
    return events
