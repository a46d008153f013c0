"""DXLinkManager against the real simulator over real sockets on 127.0.0.1 (STYLE.md §C).

Every fault the simulator can inject must end with data flowing again and the registry fully
resubscribed. Waits are on explicit events (lifecycle notifications, the simulator's own
``wait_for_*``) bounded by generous limits; timeouts under test are short (0.2-0.5 s) and
configured, never slept through. Helpers shared with the other ``test_client_*.py`` live
here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from pipeline.dxlink.client import (
    Connected,
    Disconnected,
    DisconnectReason,
    DXLinkManager,
    SnapshotComplete,
)
from pipeline.simulator import Simulator, SimulatorClock
from tests.dxlink.harness import HOUR, NOW, SIM_TOKEN, Collector, Lifecycle, make_client
from tests.helpers.timing import TIMEOUT, short_backoff


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(clock=SimulatorClock.manual(NOW), token=SIM_TOKEN) as simulator:
        yield simulator


SERIES = ["AAPL{=5m}", "SPY{=m}", "QQQ{=h}"]


async def subscribe_all(manager: DXLinkManager, from_time: int = NOW - 2 * HOUR) -> None:
    for key in SERIES:
        await manager.subscribe_to_candles(symbol=key, from_time=from_time)


async def assert_resubscribed(
    sim: Simulator, lifecycle: Lifecycle, snapshots: int, from_time: int = NOW - 2 * HOUR
) -> None:
    """Data flows again (every series' snapshot completed once more) on one live connection,
    and that connection carries exactly the registry's series."""
    await lifecycle.wait_for(SnapshotComplete, snapshots)
    async with asyncio.timeout(TIMEOUT):
        await sim.wait_for(lambda: sim.connections == 1)
    (subscribed,) = sim.subscriptions().values()
    assert subscribed == dict.fromkeys(SERIES, from_time)


async def test_snapshot_matches_the_simulators_truth(sim: Simulator) -> None:
    """The candles delivered for a series are exactly the simulator's ground truth."""
    lifecycle = Lifecycle()
    async with make_client(sim, lifecycle) as manager:
        collector = Collector(manager)
        await manager.subscribe_to_candles(symbol="AAPL", interval="5m", from_time=NOW - HOUR)
        await lifecycle.wait_for(SnapshotComplete)
    await collector.task
    truth = sim.truth("AAPL{=5m}", NOW - HOUR, include_live=True)
    got = {c.time: (c.open, c.high, c.low, c.close, c.volume) for c in collector.candles}
    assert got == {c.time: (c.open, c.high, c.low, c.close, c.volume) for c in truth}
    assert len(truth) == 12


FAULTS: dict[str, Callable[[Simulator], Any]] = {
    "drop": lambda sim: sim.drop_connections(),
    "close_1000": lambda sim: sim.close_connections(1000),
    "close_1001": lambda sim: sim.close_connections(1001),
    "error_timeout": lambda sim: sim.send_error("TIMEOUT", "too slow"),
    "error_unknown": lambda sim: sim.send_error("UNKNOWN", "?"),
    "error_invalid_message": lambda sim: sim.send_error("INVALID_MESSAGE", "bad json"),
    "error_bad_action_connection": lambda sim: sim.send_error("BAD_ACTION", "no", channel=0),
}
REASONS = {
    "drop": DisconnectReason.CONNECTION_LOST,
    "close_1000": DisconnectReason.SERVER_CLOSED,
    "close_1001": DisconnectReason.SERVER_CLOSED,
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_fault_ends_with_data_flowing_and_everything_resubscribed(
    sim: Simulator, fault: str
) -> None:
    """After each connection fault the client reconnects and resubscribes every series."""
    lifecycle = Lifecycle()
    async with make_client(sim, lifecycle) as manager:
        Collector(manager)
        await subscribe_all(manager)
        await lifecycle.wait_for(SnapshotComplete, len(SERIES))
        await FAULTS[fault](sim)
        await assert_resubscribed(sim, lifecycle, 2 * len(SERIES))
        metrics = manager.get_metrics()
    reason = REASONS.get(fault, DisconnectReason.SERVER_ERROR)
    (disconnected,) = lifecycle.of(Disconnected)
    assert disconnected.reason is reason
    assert len(lifecycle.of(Connected)) == 2
    connection = metrics["connection"]
    assert (connection["connect_count"], connection["reconnect_attempts"]) == (2, 1)
    assert connection["disconnect_count"] == {reason: 1}
    assert connection["state"] == "connected" and connection["total_uptime"] > 0
    assert connection["last_connect_time"] == NOW / 1000
    assert metrics["channels"]["candles"]["last_message_time"] == NOW / 1000
    assert metrics["subscriptions"]["candles"] == len(SERIES)


async def test_concurrent_failures_cause_exactly_one_reconnect(sim: Simulator) -> None:
    """An ERROR, a close and a drop at once: the supervisor alone decides, once."""
    lifecycle = Lifecycle()
    async with make_client(sim, lifecycle) as manager:
        Collector(manager)
        await subscribe_all(manager)
        await lifecycle.wait_for(SnapshotComplete, len(SERIES))
        await asyncio.gather(
            sim.send_error("TIMEOUT", "late"), sim.close_connections(1001), sim.drop_connections()
        )
        await assert_resubscribed(sim, lifecycle, 2 * len(SERIES))
    assert len(lifecycle.of(Disconnected)) == 1
    assert sim.connect_count == 2


async def test_stalled_server_is_detected_by_the_keepalive_timeout() -> None:
    """A server that goes silent with the socket open is declared dead and replaced."""
    lifecycle = Lifecycle()
    clock = SimulatorClock.manual(NOW)
    async with Simulator(clock=clock, token=SIM_TOKEN, keepalive_timeout=0.3) as sim:
        manager = make_client(sim, lifecycle, dead_peer_timeout=0.3)
        async with manager:
            Collector(manager)
            await subscribe_all(manager)
            await lifecycle.wait_for(SnapshotComplete, len(SERIES))
            sim.stall(True)
            await assert_resubscribed(sim, lifecycle, 2 * len(SERIES))
    (disconnected,) = lifecycle.of(Disconnected)
    assert disconnected.reason is DisconnectReason.PEER_TIMEOUT
    assert "nothing received for 0.3" in disconnected.error


async def test_expired_token_is_refreshed_mid_session(sim: Simulator) -> None:
    """Token rotation: AUTH_STATE UNAUTHORIZED → fetch a new token → reconnect and resume."""
    lifecycle = Lifecycle()
    manager = make_client(sim, lifecycle, tokens=[SIM_TOKEN, "sim-token-rotated"])
    async with manager:
        Collector(manager)
        await subscribe_all(manager)
        await lifecycle.wait_for(SnapshotComplete, len(SERIES))
        await sim.rotate_token("sim-token-rotated")
        await assert_resubscribed(sim, lifecycle, 2 * len(SERIES))
    (disconnected,) = lifecycle.of(Disconnected)
    assert disconnected.reason is DisconnectReason.AUTH_REJECTED
    assert manager.get_metrics()["connection"]["token_refreshes"] == 1


@pytest.mark.parametrize("channel", [0, 1])
async def test_error_unauthorized_refreshes_the_token(sim: Simulator, channel: int) -> None:
    """ERROR UNAUTHORIZED (connection or channel level) is an auth failure: new token,
    then reconnect."""
    lifecycle = Lifecycle()
    async with make_client(sim, lifecycle) as manager:
        Collector(manager)
        await subscribe_all(manager)
        await lifecycle.wait_for(SnapshotComplete, len(SERIES))
        await sim.send_error("UNAUTHORIZED", "Session not found: api", channel=channel)
        await assert_resubscribed(sim, lifecycle, 2 * len(SERIES))
        assert manager.get_metrics()["connection"]["token_refreshes"] == 1


HARMLESS: dict[str, tuple[Callable[[Simulator], Any], tuple[str, str, str]]] = {
    "malformed_frame": (lambda sim: sim.send_malformed(), ("connection", "malformed_messages", "")),
    "channel_error": (
        lambda sim: sim.send_error("UNKNOWN", "channel trouble", channel=1),
        ("channels", "candles", "error_count"),
    ),
}


@pytest.mark.parametrize("incident", HARMLESS)
async def test_malformed_frames_and_channel_errors_are_counted_not_fatal(
    sim: Simulator, incident: str
) -> None:
    """A garbled frame or a channel-level ERROR is counted; the same connection keeps going."""
    inject, (group, name, counter) = HARMLESS[incident]
    lifecycle = Lifecycle()
    async with make_client(sim, lifecycle) as manager:
        collector = Collector(manager)
        await manager.subscribe_to_candles(symbol="AAPL", interval="1m", from_time=NOW - HOUR)
        await lifecycle.wait_for(SnapshotComplete)
        batches = collector.batches
        await inject(sim)
        await sim.advance(120)  # live updates, sent after the incident on the same socket
        await collector.wait_batches(batches + 1)
        metrics = manager.get_metrics()
    value = metrics[group][name][counter] if counter else metrics[group][name]
    assert value == 1
    assert metrics["connection"]["connect_count"] == 1
    assert lifecycle.of(Disconnected) == []


def recording(
    factory: Callable[[], Iterator[float]],
) -> tuple[list[float], Callable[[], Iterator[float]]]:
    """Wrap a delay factory so the test sees every delay the supervisor asked for."""
    requested: list[float] = []

    def delays() -> Iterator[float]:
        for delay in factory():
            requested.append(delay)
            yield delay

    return requested, delays


async def test_accept_then_drop_server_causes_no_reconnect_storm(sim: Simulator) -> None:
    """Connections that die young never reset the backoff: delays keep growing to the cap."""
    lifecycle = Lifecycle()
    requested, delays = recording(short_backoff)
    async with make_client(sim, lifecycle, reconnect_delays=delays) as manager:
        Collector(manager)
        await subscribe_all(manager)
        await lifecycle.wait_for(SnapshotComplete, len(SERIES))
        sim.drop_next_connections(8)
        await sim.drop_connections()
        await assert_resubscribed(sim, lifecycle, 2 * len(SERIES))
    # One delay per failure, growing 1, 2, 4 ... 20 ms and never starting over.
    assert requested == [0.001, 0.002, 0.004, 0.008, 0.016, 0.02, 0.02, 0.02, 0.02]
    assert sim.connect_count == 1 + len(requested)
    assert len(lifecycle.of(Connected)) == 2


async def test_backoff_delays_stay_within_full_jitter_bounds(sim: Simulator) -> None:
    """The default backoff (first ≤ 0.5 s, doubling, cap 30 s), with an injected sleep."""
    lifecycle = Lifecycle()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)  # recorded, not waited: the client reconnects at once

    async with make_client(sim, lifecycle, reconnect_delays=None, sleep=sleep) as manager:
        await lifecycle.wait_for(Connected)
        sim.drop_next_connections(7)
        await sim.drop_connections()
        await lifecycle.wait_for(Connected, 2)
        assert manager.get_metrics()["connection"]["reconnect_attempts"] == 8
    assert len(slept) == 8
    for attempt, delay in enumerate(slept):
        assert 0.0 <= delay <= min(30.0, 0.5 * 2**attempt)


async def test_max_attempts_gives_up_with_the_last_cause(sim: Simulator) -> None:
    """Against a server that keeps dropping, max_attempts ends in ConnectionError."""
    lifecycle = Lifecycle()
    sim.drop_next_connections(100)
    async with make_client(sim, lifecycle, max_attempts=4) as manager:
        with pytest.raises(ConnectionError, match="after 4 consecutive") as caught:
            async with asyncio.timeout(TIMEOUT):
                async for _ in manager.candles():
                    pass
    assert caught.value.__cause__ is not None
    assert sim.connect_count == 4
    assert manager.get_metrics()["connection"]["state"] == "closed"


@pytest.mark.parametrize("asynchronous", [True, False])
async def test_resubscription_resumes_from_the_callbacks_points(
    sim: Simulator, asynchronous: bool
) -> None:
    """After a reconnect each series resumes from its resume point (never before fromTime);
    the callback (async or plain) is called once per reconnect with every series key."""
    lifecycle = Lifecycle()
    calls: list[list[str]] = []
    first = NOW - 2 * HOUR

    def points(keys: list[str]) -> dict[str, int]:
        calls.append(sorted(keys))
        return {"AAPL{=5m}": NOW - HOUR, "SPY{=m}": first - HOUR}  # QQQ: no point

    async def points_later(keys: list[str]) -> dict[str, int]:
        return points(keys)

    resume_points = points_later if asynchronous else points
    async with make_client(sim, lifecycle, resume_points=resume_points) as manager:
        Collector(manager)
        await subscribe_all(manager, from_time=first)
        await lifecycle.wait_for(SnapshotComplete, len(SERIES))
        assert calls == []  # the first connection uses the requested fromTime
        await sim.drop_connections()
        await lifecycle.wait_for(SnapshotComplete, 2 * len(SERIES))
        async with asyncio.timeout(TIMEOUT):
            await sim.wait_for(lambda: sim.connections == 1)
        (subscribed,) = sim.subscriptions().values()
        metadata = manager.subscription_metadata["AAPL{=5m}"]
    assert calls == [sorted(SERIES)]
    assert subscribed == {"AAPL{=5m}": NOW - HOUR, "SPY{=m}": first, "QQQ{=h}": first}
    assert (metadata.from_time, metadata.sent_from) == (first, NOW - HOUR)


async def test_subscriptions_made_while_disconnected_are_sent_on_connect(sim: Simulator) -> None:
    """The registry is the truth: series added before start() all go out after the handshake."""
    lifecycle = Lifecycle()
    manager = make_client(sim, lifecycle)
    await subscribe_all(manager)
    async with manager:
        Collector(manager)
        await assert_resubscribed(sim, lifecycle, len(SERIES))
