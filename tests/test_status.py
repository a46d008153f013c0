"""`candles status`: fetch /metrics and /health from a real MetricsServer and summarise them."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pipeline.dxlink.client import DisconnectReason
from pipeline.metrics import (
    MetricsServer,
    StatusError,
    StatusSummary,
    fetch_status,
    parse_status,
    render_status,
    url_for,
)
from tests.helpers.fake_tastytrade import FakeClock
from tests.helpers.metrics import MINUTE_MS, START, FakeService, reader
from tests.helpers.store import T0_MS, candle_frame, open_store
from tests.helpers.timing import MS, TIMEOUT


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def service(clock: FakeClock) -> FakeService:
    """A service that has run for 2 h 5 min: reconnected once, flushed, one store check."""
    service = FakeService(clock)
    client = service.connect()
    clock.advance(3600.0)
    client.drop(DisconnectReason.PEER_TIMEOUT)
    client.drop(DisconnectReason.CONNECTION_LOST)
    clock.advance(5.0)
    client.connect()
    client.by_state.update(live=2, snapshot=1)
    clock.advance(3600.0)
    service.stream_ms = T0_MS + 3 * MINUTE_MS - 1
    service.receive(0, 1, 2)
    client.receive(messages=4, events=3)
    client.queue_depth = 1
    client.channels["candles"].queue_high_water_mark = 7
    service.flush(at=clock())
    clock.advance(300.0)
    return service


@pytest.fixture
async def url(service: FakeService, clock: FakeClock, tmp_path: Path) -> AsyncIterator[str]:
    store = open_store(tmp_path / "data")
    store.upsert(candle_frame(n=2))  # T0 and T0+1m: every candle complete by stream time
    store.close()
    check = reader(tmp_path / "data", clock)
    async with MetricsServer(service, port=0, clock=clock, store_check=check) as server:
        assert await server.check_store() is not None
        assert server.url is not None
        yield server.url


async def test_status_summarises_a_real_scrape(url: str, service: FakeService) -> None:
    """fetch_status reads both endpoints over the socket into a StatusSummary."""
    summary = await asyncio.to_thread(fetch_status, url, timeout=TIMEOUT)
    assert summary.healthy and summary.reasons == ()
    assert summary.connection_state == "connected"
    assert summary.uptime_seconds == 7505.0
    assert summary.connected_seconds == 3600.0 + 3900.0
    assert summary.connects == 2
    assert summary.disconnects == {"connection_lost": 1, "peer_timeout": 1}
    assert summary.reconnect_attempts == 2
    assert (summary.candles_received, summary.candles_completed) == (3, 2)
    assert summary.candles_stored == 2
    assert summary.series == 1 and summary.series_limit == 50
    assert 0 < summary.memory_bytes < summary.memory_limit_bytes
    assert summary.resident_memory_bytes is not None
    assert summary.last_flush_age_seconds == 300.0
    assert (summary.flushes, summary.flush_failures) == (1, 0)
    assert (summary.gaps, summary.missing_periods) == (0, 0)
    assert summary.backfill_lag_seconds == 0.0
    assert summary.subscriptions == {"live": 2, "pending": 0, "snapshot": 1}
    channel = summary.channels["candles"]
    assert (channel.messages, channel.queue_depth, channel.queue_high_water_mark) == (4, 1, 7)
    assert channel.last_message_age_seconds == 300.0


async def test_render_is_a_readable_summary(url: str) -> None:
    """render_status prints state, uptime, reconnects, rates, bounds, flush and store lines."""
    text = render_status(await asyncio.to_thread(fetch_status, url, timeout=TIMEOUT))
    lines = text.splitlines()
    assert lines[0] == f"candles ingest at {url}: OK"
    assert lines[1] == "  state            connected, up 2h05m (connected 2h05m)"
    assert lines[2] == (
        "  connections      2 connects, 2 disconnects (connection_lost 1, peer_timeout 1), "
        "2 reconnect attempts"
    )
    assert (
        lines[3]
        == "  candles          3 received (0.0/s average), 2 completed, 2 stored, 0 revised"
    )
    assert lines[4].startswith("  series           1 of 50; memory ")
    assert " bound; process " in lines[4]
    assert lines[5] == "  last flush       5m00s ago, took 0.250s; 1 flushes, 0 failed"
    assert lines[6] == "  store            0 gaps (0 missing periods) recently; backfill lag 0.0s"
    assert lines[7] == "  subscriptions    live 2, pending 0, snapshot 1"
    assert lines[8] == ("  candles channel  4 messages, last 5m00s ago, queue 1 (max 7), 0 errors")


async def test_unhealthy_status_lists_the_reasons(
    service: FakeService, clock: FakeClock, url: str
) -> None:
    """A failed flush shows as UNHEALTHY with the service's reason under the headline."""
    service.stats.flush_failures = 1
    service.stats.last_flush_error = "StoreBusyError: the catalog stayed busy"
    summary = await asyncio.to_thread(fetch_status, url, timeout=TIMEOUT)
    assert not summary.healthy
    lines = render_status(summary).splitlines()
    assert lines[0].endswith(": UNHEALTHY")
    assert lines[1] == "  ! the last flush failed (StoreBusyError); 1 failed flushes so far"


def free_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_nothing_listening_says_how_to_fix_it() -> None:
    """Connection refused names the URL and suggests `candles ingest` or --url."""
    base = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StatusError) as caught:
        fetch_status(base, timeout=TIMEOUT)
    assert str(caught.value).startswith(
        f"no ingest service is serving metrics at {base}; start `candles ingest` or pass --url"
    )


def test_a_silent_server_times_out_with_a_clear_error() -> None:
    """A listener that never answers is reported as too slow, not as absent."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        timeout = 50 * MS
        with pytest.raises(StatusError, match=rf"{base} did not answer within {timeout:g}s"):
            fetch_status(base, timeout=timeout)


@pytest.mark.parametrize("bad", ["127.0.0.1:9464", "https://x:1", "http://:9464", "http://h:x"])
def test_a_malformed_url_is_rejected_with_an_example(bad: str) -> None:
    """Only http://host:port addresses are accepted; the error shows the default form."""
    with pytest.raises(StatusError, match=r"not an http://host:port address, e\.g\. http://"):
        fetch_status(bad)


async def answer_404(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Some other web server: every path is 404."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


async def test_a_foreign_server_is_not_mistaken_for_ingest() -> None:
    """A 404 on /metrics, or metrics without ours, say it is not `candles ingest`."""
    other = await asyncio.start_server(answer_404, "127.0.0.1", 0)
    async with other:
        base = f"http://127.0.0.1:{other.sockets[0].getsockname()[1]}"
        with pytest.raises(StatusError, match=r"/metrics answered HTTP 404; is this `candles"):
            await asyncio.to_thread(fetch_status, base, timeout=TIMEOUT)
    with pytest.raises(StatusError, match="not those of `candles ingest`"):
        parse_status("http://h:1", "# TYPE up gauge\nup 1\n", {"status": "ok"})
    with pytest.raises(StatusError, match="is not Prometheus text"):
        parse_status("http://h:1", "candles_uptime_seconds{ 1\n", {"status": "ok"})


def test_url_for_the_configured_endpoint() -> None:
    """Wildcard hosts are asked on loopback, IPv6 is bracketed, port 0 cannot be guessed."""
    assert url_for("127.0.0.1", 9464) == "http://127.0.0.1:9464"
    assert url_for("0.0.0.0", 9000) == "http://127.0.0.1:9000"
    assert url_for("::1", 9000) == "http://[::1]:9000"
    with pytest.raises(StatusError, match=r"metrics\.port is 0.*pass --url"):
        url_for("127.0.0.1", 0)


def test_render_formats_long_durations_and_sizes() -> None:
    """Days, gigabytes, a missing store check and an unknown queue depth read naturally."""
    summary = StatusSummary(
        url="http://127.0.0.1:9464",
        healthy=True,
        reasons=(),
        connection_state="connected",
        uptime_seconds=3 * 86_400 + 4 * 3600 + 1,
        connected_seconds=42.0,
        connects=1,
        disconnects={},
        reconnect_attempts=0,
        candles_received=1_234_567,
        candles_completed=1_000,
        candles_stored=990,
        candles_revised=3,
        series=12,
        series_limit=10_000,
        memory_bytes=1536,
        memory_limit_bytes=3 * 1024**3,
        resident_memory_bytes=None,
        flushes=0,
        flush_failures=0,
        last_flush_age_seconds=None,
        last_flush_duration_seconds=0.0,
        gaps=None,
        missing_periods=None,
        backfill_lag_seconds=None,
        subscriptions={},
        channels={},
    )
    lines = render_status(summary).splitlines()
    assert lines[1] == "  state        connected, up 3d04h (connected 42s)"
    assert lines[2] == "  connections  1 connects, 0 disconnects, 0 reconnect attempts"
    assert lines[3].startswith("  candles      1,234,567 received (4.5/s average)")
    assert lines[4] == "  series       12 of 10,000; memory 1.5 KiB of 3.0 GiB bound"
    assert lines[5] == "  last flush   never; 0 flushes, 0 failed"
    assert lines[6] == "  store        not checked yet"
