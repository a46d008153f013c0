"""MetricsServer: /metrics and /health over a real loopback socket, health rules, store check."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.candles import InvalidReason
from pipeline.config import Config
from pipeline.dxlink import Candle, CandleSymbol
from pipeline.dxlink.client import (
    ConnectionState,
    DisconnectReason,
)
from pipeline.metrics import MetricsServer, StoreCheck, StoreCheckResult
from pipeline.store import CandleStore, connect
from tests.helpers.fake_tastytrade import FakeClock
from tests.helpers.metrics import MINUTE_MS, SERIES, START, FakeService, reader
from tests.helpers.service import eventually
from tests.helpers.store import MINUTE, T0, T0_MS, candle_frame, open_store
from tests.helpers.timing import TIMEOUT

SECRET = "tok-3b9f-SECRET"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def service(clock: FakeClock) -> FakeService:
    return FakeService(clock)


@pytest.fixture
async def server(service: FakeService, clock: FakeClock) -> AsyncIterator[MetricsServer]:
    async with MetricsServer(service, port=0, disconnect_grace=30.0, clock=clock) as running:
        yield running


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request, 4xx/5xx included."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


async def scrape(server: MetricsServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics over the socket and parse it: {(sample name, labels): value}."""
    status, headers, body = await asyncio.to_thread(get, f"{server.url}/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


async def health(server: MetricsServer) -> tuple[int, dict[str, Any]]:
    status, headers, body = await asyncio.to_thread(get, f"{server.url}/health")
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


# ----------------------------------------------------------------------------- /metrics


async def test_metrics_are_served_in_text_format_on_a_loopback_port(
    server: MetricsServer, service: FakeService
) -> None:
    """/metrics answers Prometheus text 0.0.4 on 127.0.0.1 with the documented families."""
    service.connect()
    assert server.url == f"http://127.0.0.1:{server.port}"
    metrics = await scrape(server)
    assert metrics[("candles_connection_state", (("state", "connected"),))] == 1
    assert metrics[("candles_connection_state", (("state", "backing_off"),))] == 0
    assert metrics[("candles_connects_total", ())] == 1
    for reason in DisconnectReason:  # every reason exists from the start, so rate() works
        assert metrics[("candles_disconnects_total", (("reason", str(reason)),))] == 0
    assert metrics[("candles_series_limit", ())] == 50
    assert metrics[("candles_memory_limit_bytes", ())] > 0
    assert metrics[("candles_uptime_seconds", ())] == 0
    assert metrics[("candles_channel_queue_depth", (("channel", "candles"),))] == 0
    assert ("candles_gaps", ()) not in metrics  # no store check has run
    assert ("process_resident_memory_bytes", ()) in metrics
    assert all(name.startswith(("candles_", "process_")) for name, _ in metrics), (
        "only our own and the process collector's metrics"
    )


async def test_counters_move_between_two_scrapes(
    server: MetricsServer, service: FakeService, clock: FakeClock
) -> None:
    """Received, completed, stored and revised candles, messages and ages follow the service."""
    client = service.connect()
    service.receive(0, 1)
    client.receive(messages=1, events=2)
    first = await scrape(server)

    clock.advance(3.0)
    service.stream_ms = T0_MS + 3 * MINUTE_MS - 1
    service.receive(2)
    assert service.flush(at=clock()) == 2
    service.receive(0, close=2.0)  # a correction of a candle already handed out: a revision
    client.receive(messages=2, events=2)
    clock.advance(0.5)
    second = await scrape(server)

    assert first[("candles_received_total", ())] == 2
    assert second[("candles_received_total", ())] == 4
    assert (first[("candles_completed_total", ())], second[("candles_completed_total", ())]) == (
        0,
        2,
    )
    assert second[("candles_stored_total", ())] == 2
    assert second[("candles_revised_total", ())] == first[("candles_revised_total", ())] + 1
    assert second[("candles_flushes_total", ())] == 1
    assert second[("candles_last_flush_timestamp_seconds", ())] == START + 3.0
    assert second[("candles_last_flush_duration_seconds", ())] == 0.25
    channel = (("channel", "candles"),)
    assert first[("candles_channel_messages_total", channel)] == 1
    assert second[("candles_channel_messages_total", channel)] == 3
    assert second[("candles_channel_last_message_age_seconds", channel)] == 0.5
    assert second[("candles_uptime_seconds", ())] == 3.5


async def test_dropped_candle_events_are_counted_by_reason(
    server: MetricsServer, service: FakeService
) -> None:
    """Invalid Candle events show up under their reason (every reason exists from the start),
    events of series nobody subscribed under a counter of their own."""
    first = await scrape(server)
    for reason in InvalidReason:
        assert first[("candles_invalid_events_total", (("reason", str(reason)),))] == 0
    service.manager.subscribe(SERIES)
    service.manager.update(
        [
            Candle(SERIES, T0_MS, open=1.0, high=1.0, low=1.0, close=1.0, volume=-1.0),
            Candle(SERIES, T0_MS + 1, open=1.0, high=1.0, low=1.0, close=1.0),
            Candle("MSFT{=m}", T0_MS, open=1.0, high=1.0, low=1.0, close=1.0),
        ],
        T0_MS,
    )
    second = await scrape(server)
    assert second[("candles_invalid_events_total", (("reason", "negative"),))] == 1
    assert second[("candles_invalid_events_total", (("reason", "off_period"),))] == 1
    assert second[("candles_unsolicited_events_total", ())] == 1
    assert second[("candles_refused_series_events_total", ())] == 0


async def test_disconnects_are_counted_by_reason(
    server: MetricsServer, service: FakeService, clock: FakeClock
) -> None:
    """A drop shows up under its reason, with the reconnect attempt and the new state."""
    client = service.connect()
    clock.advance(10.0)
    client.drop(DisconnectReason.PEER_TIMEOUT)
    metrics = await scrape(server)
    assert metrics[("candles_disconnects_total", (("reason", "peer_timeout"),))] == 1
    assert metrics[("candles_disconnects_total", (("reason", "server_closed"),))] == 0
    assert metrics[("candles_reconnect_attempts_total", ())] == 1
    assert metrics[("candles_connected_seconds_total", ())] == 10.0
    assert metrics[("candles_connection_state", (("state", "backing_off"),))] == 1


async def test_before_the_client_and_store_exist_metrics_still_answer(
    server: MetricsServer, service: FakeService
) -> None:
    """With no client and no open store yet, the state is idle and nothing is stored."""
    service.client = None
    service.opened_store = None
    metrics = await scrape(server)
    assert metrics[("candles_connection_state", (("state", "idle"),))] == 1
    assert metrics[("candles_stored_total", ())] == 0
    assert not any(name.startswith("candles_channel_") for name, _ in metrics)


async def test_two_servers_in_one_process_have_separate_registries(clock: FakeClock) -> None:
    """Each server owns its registry, so several services can run side by side."""
    one, two = FakeService(clock), FakeService(clock)
    two.receive(0)
    async with (
        MetricsServer(one, port=0, clock=clock) as first,
        MetricsServer(two, port=0, clock=clock) as second,
    ):
        assert first.port != second.port
        assert (await scrape(first))[("candles_received_total", ())] == 0
        assert (await scrape(second))[("candles_received_total", ())] == 1


# ----------------------------------------------------------------------------- HTTP


async def test_other_paths_methods_and_garbage_get_clear_errors(server: MetricsServer) -> None:
    """404 for unknown paths, 405 for POST, no body for HEAD, 400 for a non-HTTP line."""
    assert (await asyncio.to_thread(get, f"{server.url}/nope"))[0] == 404
    status, headers, _ = await asyncio.to_thread(get, f"{server.url}/metrics", "POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    status, headers, body = await asyncio.to_thread(get, f"{server.url}/metrics?x=1", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"HELLO\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")


async def test_a_broken_source_answers_500_and_the_server_keeps_serving(
    server: MetricsServer, service: FakeService
) -> None:
    """A collection error is a 500 naming the error type; the next request works again."""
    client = service.client
    service.client = BrokenClient()  # type: ignore[assignment]
    status, _, body = await asyncio.to_thread(get, f"{server.url}/metrics")
    assert status == 500 and b"KeyError" in body
    service.client = client
    assert (await asyncio.to_thread(get, f"{server.url}/metrics"))[0] == 200


class BrokenClient:
    """A client whose metrics dict lacks the documented ``connection`` key."""

    def get_metrics(self) -> dict[str, Any]:
        return {}


async def test_a_busy_port_is_reported_with_the_fix(service: FakeService) -> None:
    """Binding a taken port raises OSError naming the address and the settings to change."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port}.*metrics\.port"):
            await MetricsServer(service, port=port).start()


async def test_stop_closes_idle_connections_and_is_idempotent(service: FakeService) -> None:
    """A client that never sends a request does not keep stop() waiting."""
    server = MetricsServer(service, port=0, request_timeout=TIMEOUT * 10)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await asyncio.wait_for(server.stop(), TIMEOUT)
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    writer.close()
    await server.stop()
    assert server.port is None and server.url is None


async def test_disabled_server_does_not_listen(service: FakeService) -> None:
    """metrics.enabled = false: start() binds nothing."""
    server = MetricsServer(service, port=0, enabled=False)
    await server.start()
    assert server.port is None
    await server.stop()


async def test_for_service_follows_the_config(clock: FakeClock) -> None:
    """for_service takes host, port and enabled from [metrics], the grace from [client]."""
    config = Config.model_validate(
        {"metrics": {"port": 0}, "client": {"backoff_max": 20, "connect_timeout": 4}}
    )
    service = FakeService(clock, config)
    async with MetricsServer.for_service(service) as server:
        assert server.port is not None and server.host == "127.0.0.1"
        assert server.health_monitor.disconnect_grace == 20 + 4 + 3 * 10.0
        assert server.health_monitor.flush_interval == config.schedule.flush_interval


def test_bad_arguments_are_rejected_with_the_allowed_range(service: FakeService) -> None:
    """Out-of-range port, intervals and grace name what would be right."""
    with pytest.raises(ValueError, match=r"port must be 0\.\.65535"):
        MetricsServer(service, port=70_000)
    with pytest.raises(ValueError, match="check_interval must be > 0"):
        MetricsServer(service, check_interval=0)
    with pytest.raises(ValueError, match="disconnect_grace must be >= 0"):
        MetricsServer(service, disconnect_grace=-1)


# ----------------------------------------------------------------------------- /health


async def test_health_is_ok_while_connected_and_flushing(
    server: MetricsServer, service: FakeService, clock: FakeClock
) -> None:
    """Connected, last flush fine: 200 with status, state and the last flush age."""
    service.connect()
    service.stats.last_flush_at = clock() - 2.0
    status, body = await health(server)
    assert status == 200
    assert body == {
        "status": "ok",
        "reasons": [],
        "connection_state": "connected",
        "last_flush_age_seconds": 2.0,
        "disconnected_seconds": None,
    }
    assert (await scrape(server))[("candles_health_ok", ())] == 1


async def test_health_turns_503_after_the_disconnect_grace_and_back(
    server: MetricsServer, service: FakeService, clock: FakeClock
) -> None:
    """A drop is tolerated for the grace period (30 s here), then reported until reconnected."""
    client = service.connect()
    assert (await health(server))[0] == 200
    client.drop(DisconnectReason.CONNECTION_LOST)
    assert (await health(server))[0] == 200  # the outage is first seen now
    clock.advance(30.0)
    assert (await health(server))[0] == 200
    clock.advance(1.0)
    status, body = await health(server)
    assert status == 503
    assert body["reasons"] == ["not connected for 31s (state backing_off; grace 30s)"]
    assert body["disconnected_seconds"] == 31.0
    assert (await scrape(server))[("candles_health_ok", ())] == 0
    client.connect()
    assert (await health(server))[0] == 200


async def test_health_reports_a_stall_across_reconnects_until_the_server_talks(
    server: MetricsServer, service: FakeService, clock: FakeClock
) -> None:
    """Connected but silent past the dead-peer limit is a stall: 503, also while the client
    reconnects after the peer timeout, until a frame arrives (issue 14)."""
    client = service.connect()
    client.connection.dead_peer_timeout = 10.0
    clock.advance(10.0)
    assert (await health(server))[0] == 200
    clock.advance(1.0)
    status, body = await health(server)
    assert status == 503
    assert body["reasons"] == ["stalled: no message from the server for 11s (dead-peer limit 10s)"]
    metrics = await scrape(server)
    assert metrics[("candles_server_silence_seconds", ())] == 11.0
    assert metrics[("candles_dead_peer_timeout_seconds", ())] == 10.0
    client.drop(DisconnectReason.PEER_TIMEOUT)
    clock.advance(1.0)
    assert (await health(server))[1]["reasons"][0].startswith("stalled: no message from the")
    client.connect()
    assert (await health(server))[0] == 503  # a handshake is not the server talking
    client.hear()
    assert (await health(server))[0] == 200


async def test_an_ordinary_reconnect_is_not_a_stall(
    server: MetricsServer, service: FakeService, clock: FakeClock
) -> None:
    """Backing off after a clean close is judged by the disconnect grace, not as a stall."""
    client = service.connect()
    client.connection.dead_peer_timeout = 10.0
    client.hear()
    client.drop(DisconnectReason.SERVER_CLOSED)
    clock.advance(20.0)
    assert (await health(server))[0] == 200
    client.connect()
    assert (await health(server))[0] == 200


async def test_health_counts_a_never_connected_client_from_the_start(
    server: MetricsServer, service: FakeService, clock: FakeClock
) -> None:
    """No handshake ever: the outage started with the service, not with the first probe."""
    clock.advance(31.0)
    status, body = await health(server)
    assert status == 503
    assert body["connection_state"] == "idle"
    assert body["disconnected_seconds"] == 31.0


async def test_health_reports_a_stopped_client_at_once(
    server: MetricsServer, service: FakeService
) -> None:
    """A closed client (fatal error, attempt limit) is unhealthy without waiting for grace."""
    service.connect().connection.state = ConnectionState.CLOSED
    status, body = await health(server)
    assert status == 503
    assert body["reasons"] == ["the DXLink client has stopped (state closed); see the log"]


async def test_health_reports_a_failed_flush_without_its_message(
    server: MetricsServer, service: FakeService, clock: FakeClock
) -> None:
    """The last flush failed: 503 naming the error type only; the next success clears it."""
    service.connect()
    service.stats.flush_failures = 2
    service.stats.last_flush_error = f"StoreError: cannot attach password={SECRET}"
    status, body = await health(server)
    assert status == 503
    assert body["reasons"] == ["the last flush failed (StoreError); 2 failed flushes so far"]
    assert (await scrape(server))[("candles_last_flush_failed", ())] == 1
    service.flush(at=clock())
    assert (await health(server))[0] == 200


async def test_health_reports_completed_candles_waiting_too_long(
    server: MetricsServer, service: FakeService, clock: FakeClock
) -> None:
    """Completed candles unflushed for more than 3 x flush_interval (15 s) make it 503."""
    service.connect()
    service.stream_ms = T0_MS + 3 * MINUTE_MS - 1
    service.receive(0, 1, 2)  # two complete candles and the open one
    assert (await scrape(server))[("candles_flush_backlog", ())] == 2
    assert (await health(server))[0] == 200  # the backlog is first seen now
    clock.advance(15.0)
    assert (await health(server))[0] == 200
    clock.advance(1.0)
    status, body = await health(server)
    assert status == 503
    assert body["reasons"] == [
        "2 completed candles have waited 16s for a flush (limit 3 x flush_interval = 15s)"
    ]
    service.flush(at=clock())
    assert (await health(server))[0] == 200


async def test_an_old_last_flush_alone_is_not_a_stale_flush(
    server: MetricsServer, service: FakeService, clock: FakeClock
) -> None:
    """After a quiet hour, a fresh backlog gets a full 3 x flush_interval before it counts."""
    service.connect()
    service.stats.last_flush_at = clock()
    clock.advance(3600.0)
    service.stream_ms = T0_MS + 2 * MINUTE_MS
    service.receive(0, 1)
    assert (await health(server))[0] == 200
    clock.advance(10.0)
    assert (await health(server))[0] == 200


async def test_secrets_never_reach_metrics_or_health(
    server: MetricsServer, service: FakeService
) -> None:
    """Error texts, which may quote a token or a password, are never exported."""
    client = service.connect()
    client.connection.last_error = f"auth rejected for token {SECRET}"
    client.connection.state = ConnectionState.CLOSED
    service.stats.last_flush_error = f"StoreError: password={SECRET}"
    for path in ("/metrics", "/health"):
        _, _, body = await asyncio.to_thread(get, f"{server.url}{path}")
        assert SECRET.encode() not in body
        assert b"password" not in body


# ----------------------------------------------------------------------------- store check


@pytest.fixture
def lake(tmp_path: Path) -> CandleStore:
    """A real lake holding AAPL 1m at T0+0,1,2 and T0+5,6 minutes (one gap of two periods)."""
    store = open_store(tmp_path / "data")
    frame = pl.concat([candle_frame(n=3), candle_frame(n=2, start=T0 + 5 * MINUTE)])
    store.upsert(frame)
    return store


def test_store_check_counts_gaps_and_backfill_lag(lake: CandleStore, tmp_path: Path) -> None:
    """Gaps come from candle_gaps; lag is how long ago the first missing candle completed."""
    check = reader(tmp_path / "data")
    series = [CandleSymbol.parse(s) for s in ("AAPL{=1m}", "MSFT{=1m}", "AAPL{=1mo}")]
    newest_start = T0_MS + 6 * MINUTE_MS
    try:
        # Caught up: the candle after the newest stored one is not complete yet.
        now = newest_start + 2 * MINUTE_MS - 1
        result = check.run(series, now_ms=now, grace_ms=0)
        assert (result.gaps, result.missing_periods) == (1, 2)
        assert result.backfill_lag_seconds == 0
        assert result.series_without_candles == 2  # MSFT 1m and AAPL 1mo have nothing stored
        # 95 s later with a 5 s grace: the next candle completed 90 s ago.
        result = check.run(series, now_ms=now + 1 + 95_000, grace_ms=5_000)
        assert result.backfill_lag_seconds == 90.0
        # Gaps older than the window (a day of source time) are not counted.
        result = check.run(series, now_ms=newest_start + 86_400_000 + MINUTE_MS, grace_ms=0)
        assert result.gaps == 0
    finally:
        check.close()
        lake.close()


def test_store_check_sees_new_commits(lake: CandleStore, tmp_path: Path) -> None:
    """The reader connection sees what the writer committed after the previous check."""
    check = reader(tmp_path / "data")
    try:
        now = T0_MS + 10 * MINUTE_MS
        assert check.run([], now_ms=now, grace_ms=0).gaps == 1
        lake.upsert(candle_frame(n=2, start=T0 + 3 * MINUTE))
        assert check.run([], now_ms=now, grace_ms=0).gaps == 0
    finally:
        check.close()
        lake.close()


async def test_store_check_failures_are_counted_then_recover(
    service: FakeService, clock: FakeClock, tmp_path: Path
) -> None:
    """No lake yet: the check at start fails and is counted; once the lake exists the next
    one works."""
    check = reader(tmp_path / "data", clock)
    async with MetricsServer(service, port=0, clock=clock, store_check=check) as server:
        await eventually(
            lambda: server.observe().store_check_failures == 1, within=TIMEOUT, what="1 failure"
        )
        metrics = await scrape(server)
        assert metrics[("candles_store_check_failures_total", ())] == 1
        assert ("candles_gaps", ()) not in metrics

        store = open_store(tmp_path / "data")
        store.upsert(candle_frame(n=1))
        store.close()
        service.stream_ms = T0_MS + 10 * MINUTE_MS
        result = await server.check_store()
        assert isinstance(result, StoreCheckResult)
        metrics = await scrape(server)
        assert metrics[("candles_gaps", ())] == 0
        grace = service.config.manager.grace_seconds
        assert metrics[("candles_backfill_lag_seconds", ())] == (10 - 2) * 60 - grace
        assert metrics[("candles_store_check_timestamp_seconds", ())] == START


async def test_store_check_runs_on_its_schedule(
    service: FakeService, clock: FakeClock, tmp_path: Path
) -> None:
    """With a short interval the server runs the check by itself, in a worker thread."""
    ran = threading.Event()
    store = open_store(tmp_path / "data")
    store.close()

    class SignallingCheck(StoreCheck):
        def run(
            self, series: Sequence[CandleSymbol], now_ms: int, grace_ms: int
        ) -> StoreCheckResult:
            assert threading.current_thread() is not threading.main_thread()
            result = super().run(series, now_ms, grace_ms)
            ran.set()
            return result

    check = SignallingCheck(lambda: connect(tmp_path / "data", verify_extensions=False))
    async with MetricsServer(
        service, port=0, clock=clock, store_check=check, check_interval=0.001
    ) as server:
        assert await asyncio.to_thread(ran.wait, TIMEOUT)
    assert server.port is None


def test_the_store_check_keeps_no_file_caches_and_reopens_its_connection(tmp_path: Path) -> None:
    """The check's long-lived connection caches no file footers or blocks (they piled up for
    every flush file, deleted or not) and is reopened every `reopen_every` checks."""
    path = tmp_path / "data"
    with open_store(path) as store:
        for batch in range(4):
            store.upsert(candle_frame(n=20, start=T0 + batch * 20 * MINUTE))
    connections: list[Any] = []

    def opened() -> Any:
        connections.append(connect(path, verify_extensions=False))
        return connections[-1]

    check = StoreCheck(opened, reopen_every=2)
    try:
        for _ in range(5):
            check.run((CandleSymbol.parse("AAPL{=1m}"),), T0_MS, 0)
        con = connections[-1]
        settings = con.execute(
            "SELECT current_setting('enable_external_file_cache'), "
            "current_setting('parquet_metadata_cache')"
        ).fetchone()
        cached = con.execute(
            "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() "
            "WHERE tag IN ('EXTERNAL_FILE_CACHE')"
        ).fetchone()
    finally:
        check.close()
    assert len(connections) == 3  # checks 1-2, 3-4, 5
    assert settings == (False, False)
    assert cached == (0,)


async def test_store_check_runs_at_start_not_after_a_whole_interval(
    service: FakeService, clock: FakeClock, tmp_path: Path
) -> None:
    """The first store check runs when the server starts, so gaps and backfill lag are there
    from the first second even with the default one-minute interval."""
    store = open_store(tmp_path / "data")
    store.upsert(candle_frame(n=3))
    store.close()
    service.stream_ms = T0_MS + 10 * MINUTE_MS
    check = reader(tmp_path / "data", clock)
    async with MetricsServer(service, port=0, clock=clock, store_check=check) as server:
        await eventually(
            lambda: server.observe().store_check is not None, within=TIMEOUT, what="a check"
        )
        metrics = await scrape(server)
    assert metrics[("candles_gaps", ())] == 0
    assert ("candles_backfill_lag_seconds", ()) in metrics
