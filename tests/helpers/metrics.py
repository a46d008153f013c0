"""A service stand-in for the metrics and status tests, and the store check they read."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.candles import CandleDataManager
from pipeline.config import Config
from pipeline.dxlink import Candle, CandleSymbol
from pipeline.dxlink.client import (
    ChannelMetrics,
    ConnectionMetrics,
    ConnectionState,
    DeliveryMetrics,
    DisconnectReason,
)
from pipeline.dxlink.client.metrics import snapshot
from pipeline.ingest import ServiceStats
from pipeline.metrics import StoreCheck
from pipeline.recording import RecorderStats
from pipeline.store import StoreStats, connect
from tests.helpers.fake_tastytrade import FakeClock
from tests.helpers.store import T0_MS

START = 1_750_000_000.0
"""Wall-clock start of the fake service (Unix seconds)."""

MINUTE_MS = 60_000

SERIES = "AAPL{=1m}"


class FakeClient:
    """A DXLink client's counters, reported through the real ``snapshot()``."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.connection = ConnectionMetrics()
        self.channels = {"candles": ChannelMetrics()}
        self.delivery = DeliveryMetrics()
        self.queue_depth = 0
        self.by_state = {"pending": 0, "snapshot": 0, "live": 0}

    def connect(self) -> None:
        """Complete a handshake now."""
        self.connection.state = ConnectionState.CONNECTED
        self.connection.connect_count += 1
        self.connection.connected_since = self.clock()
        self.connection.last_connect_time = self.clock()
        self.connection.heard_at = self.clock()  # the stall clock starts at the handshake

    def hear(self) -> None:
        """A frame from the server arrives now, on the current (handshaken) connection."""
        self.connection.heard(self.clock())

    def drop(self, reason: DisconnectReason) -> None:
        """Lose the connection now and start backing off."""
        self.connection.record_disconnect(reason, now=self.clock())
        self.connection.state = ConnectionState.BACKING_OFF
        self.connection.reconnect_attempts += 1

    def receive(self, messages: int, events: int) -> None:
        """Count FEED_DATA on the candles channel, received now."""
        channel = self.channels["candles"]
        channel.message_count += messages
        channel.event_count += events
        channel.last_message_time = self.clock()

    def get_metrics(self) -> dict[str, Any]:
        subscriptions = {"regular": 0, "candles": 1, "candles_by_state": dict(self.by_state)}
        result = snapshot(
            self.connection, self.channels, self.delivery, subscriptions, now=self.clock()
        )
        result["channels"]["candles"]["queue_depth"] = self.queue_depth
        return result


@dataclass
class FakeStore:
    stats: StoreStats = field(default_factory=StoreStats)


class FakeService:
    """A :class:`~pipeline.metrics.MetricsSource` made of the real parts that hold the state."""

    def __init__(self, clock: FakeClock, config: Config | None = None) -> None:
        self.config = config or Config()
        self.stats = ServiceStats(started_at=START)
        self.manager = CandleDataManager(max_series=50, grace_ms=0)
        self.client: FakeClient | None = FakeClient(clock)
        self.opened_store: FakeStore | None = FakeStore()
        self.series: Sequence[CandleSymbol] = (CandleSymbol.parse(SERIES),)
        self.stream_ms = T0_MS
        self.recording: RecorderStats | None = RecorderStats(records=3, bytes_written=512)

    @property
    def store(self) -> FakeStore:
        if self.opened_store is None:
            raise RuntimeError("the service has not started")
        return self.opened_store

    def now_ms(self) -> int:
        return self.stream_ms

    def connect(self) -> FakeClient:
        """Complete a handshake of the client now; return the client."""
        assert self.client is not None
        self.client.connect()
        return self.client

    def receive(self, *minutes: int, close: float = 1.0) -> None:
        """Feed one-minute candles starting ``minutes`` after T0, as the consumer would."""
        batch = [Candle(SERIES, T0_MS + m * MINUTE_MS, close=close, volume=1.0) for m in minutes]
        self.stats.batches += 1
        self.stats.candles_received += len(batch)
        self.manager.update(batch, self.stream_ms)

    def flush(self, at: float) -> int:
        """A successful flush at wall time ``at``: take, pretend to store, commit."""
        batch = self.manager.take_completed()
        self.manager.commit(batch)
        self.stats.flushes += 1
        self.stats.candles_stored += batch.frame.height
        self.stats.last_flush_at = at
        self.stats.last_flush_seconds = 0.25
        self.stats.last_flush_error = None
        self.store.stats.rows_written += batch.frame.height
        return batch.frame.height


def reader(path: Path, clock: FakeClock | None = None) -> StoreCheck:
    """A store check on a read-only connection to the lake at ``path``."""
    opener = functools.partial(connect, path, read_only=True, verify_extensions=False)
    return StoreCheck(opener, clock=clock or FakeClock(START))
