"""Prometheus metric families from one :class:`Observation` (names: :mod:`pipeline.metrics`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline.dxlink.client import ConnectionState, DisconnectReason
from pipeline.metrics.health import HealthReport
from pipeline.metrics.source import Reading
from pipeline.metrics.store_check import StoreCheckResult

__all__ = ["CandlesCollector", "Observation"]


@dataclass(frozen=True, slots=True)
class Observation:
    """What one scrape or health check sees."""

    reading: Reading
    health: HealthReport
    store_check: StoreCheckResult | None
    store_check_failures: int


def _family(name: str, doc: str, label: str | None = None) -> Metric:
    """A counter when the name ends in ``_total``, else a gauge."""
    kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
    return kind(name, doc, labels=None if label is None else [label])


def _plain_metrics(o: Observation) -> list[tuple[str, float | None, str]]:
    """(name, value, help) of every unlabelled metric; ``None`` values are left out."""
    r, s, m, st = o.reading, o.reading.service, o.reading.manager, o.reading.store
    c = r.client
    rows: list[tuple[str, float | None, str]] = [
        ("candles_health_ok", o.health.healthy, "1 when /health answers 200."),
        ("candles_uptime_seconds", max(0.0, r.now - r.started_at), "Service uptime."),
        ("candles_connects_total", c.connects, "Completed DXLink handshakes."),
        ("candles_reconnect_attempts_total", c.reconnect_attempts, "Attempts after the first."),
        ("candles_connected_seconds_total", c.connected_seconds, "Seconds connected in total."),
        ("candles_token_refreshes_total", c.token_refreshes, "Tokens refetched after rejection."),
        ("candles_server_silence_seconds", c.silence_seconds, "Server silent since (stall clock)."),
        ("candles_dead_peer_timeout_seconds", c.dead_peer_timeout, "Silence judged a dead peer."),
        ("candles_malformed_messages_total", c.malformed_messages, "Invalid frames skipped."),
        ("candles_protocol_violations_total", c.protocol_violations, "Illegal messages."),
        ("candles_delivery_blocked_total", c.delivery.blocked_count, "Reader waits on full queue."),
        ("candles_delivery_blocked_seconds_total", c.delivery.blocked_seconds, "Time waited."),
        ("candles_received_total", s.candles_received, "Candle events received."),
        ("candles_batches_total", s.batches, "Candle batches received."),
        ("candles_completed_total", s.candles_stored, "Completed candles flushed to the store."),
        ("candles_stored_total", st.rows_written, "Rows the store inserted or rewrote."),
        ("candles_revised_total", m.revisions, "Changes to candles already handed out."),
        ("candles_deleted_total", s.candles_deleted, "Stored candles removed server-side."),
        ("candles_unsolicited_events_total", m.unsolicited_events, "Of series not subscribed."),
        ("candles_refused_series_events_total", m.refused_series_events, "Over series limit."),
        ("candles_backpressure_waits_total", s.backpressure_waits, "Intake paused for a flush."),
        ("candles_flushes_total", s.flushes, "Successful flushes that wrote data."),
        ("candles_flush_failures_total", s.flush_failures, "Failed flushes."),
        ("candles_last_flush_failed", s.last_flush_error is not None, "1 if the last failed."),
        ("candles_last_flush_duration_seconds", s.last_flush_seconds, "Last successful flush."),
        ("candles_last_flush_timestamp_seconds", s.last_flush_at, "Unix time of that flush."),
        ("candles_compactions_total", s.compactions, "Store compactions run."),
        ("candles_compaction_failures_total", s.compaction_failures, "Failed compactions."),
        ("candles_retention_runs_total", s.retention_runs, "Retention runs (store.retention)."),
        ("candles_retention_failures_total", s.retention_failures, "Failed retention runs."),
        ("candles_pruned_total", s.candles_pruned, "Stored candles removed by retention."),
        ("candles_store_retries_total", st.retries, "Store transactions retried (collision)."),
        ("candles_store_busy_failures_total", st.busy_failures, "Busy through every retry."),
        ("candles_stream_time_seconds", s.stream_time_ms / 1000 or None, "Newest candle start."),
        ("candles_series", m.series, "Candle series held in memory."),
        ("candles_series_limit", r.series_limit, "Most series held (manager bound)."),
        ("candles_held", m.candles_held, "Candles held in memory."),
        ("candles_unstored", m.dirty, "Held candles whose current version is unstored."),
        ("candles_flush_backlog", r.flush_backlog, "Completed, waiting for a flush (lower bound)."),
        ("candles_pinned", m.pinned, "Unstored candles held beyond the per-series bound."),
        ("candles_pinned_limit", r.pinned_limit, "Pinned candles before back-pressure."),
        ("candles_memory_bytes", m.memory_bytes, "Estimated memory held by candles."),
        ("candles_memory_limit_bytes", m.memory_limit_bytes, "Most the bounds allow (estimate)."),
        ("candles_store_check_failures_total", o.store_check_failures, "Failed store checks."),
        ("candles_store_disk_free_bytes", r.disk_free_bytes, "Free bytes where the store is."),
        ("candles_store_disk_size_bytes", r.disk_size_bytes, "Size of that filesystem."),
    ]
    if (recording := r.recording) is not None:
        rows += [
            ("candles_recording_records_total", recording.records, "Records written."),
            ("candles_recording_bytes_total", recording.bytes_written, "Compressed bytes written."),
            ("candles_recording_dropped_frames_total", recording.dropped_frames,
             "Frames left out of the recording (queue full, write failed)."),
            ("candles_recording_failing", recording.failing, "1 while writing fails."),
        ]  # fmt: skip
    if (check := o.store_check) is not None:
        rows += [
            ("candles_gaps", check.gaps, "Gaps within the gap window, at the last check."),
            ("candles_gap_missing_periods", check.missing_periods, "Periods those gaps miss."),
            ("candles_backfill_lag_seconds", check.backfill_lag_seconds, "Worst series."),
            ("candles_series_without_stored_candles", check.series_without_candles, "None yet."),
            ("candles_store_check_timestamp_seconds", check.checked_at, "Last store check."),
            ("candles_store_check_duration_seconds", check.seconds, "Its duration."),
            ("candles_store_snapshots", check.snapshots, "Snapshots the catalog keeps."),
            ("candles_store_data_files", check.data_files, "Parquet files in the newest snapshot."),
            ("candles_store_data_bytes", check.data_bytes, "Their total size."),
            ("candles_store_files_awaiting_deletion", check.awaiting_deletion,
             "Merged-away files compaction has yet to delete."),
        ]  # fmt: skip
    return rows


class CandlesCollector(Collector):
    """A prometheus_client collector that turns one :class:`Observation` into metrics.

    Args:
        observe: Called once per scrape, on the scraping thread (the event loop).
    """

    def __init__(self, observe: Callable[[], Observation]) -> None:
        self._observe = observe

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (definitions: :mod:`pipeline.metrics`)."""
        o = self._observe()
        for name, value, doc in _plain_metrics(o):
            if value is not None:
                family = _family(name, doc)
                family.add_sample(name, {}, float(value))
                yield family
        client, now = o.reading.client, o.reading.now
        channels = client.channels
        states = {str(state): 0.0 for state in ConnectionState} | {client.state: 1.0}
        labelled: list[tuple[str, str, str, Mapping[str, float]]] = [
            ("candles_connection_state", "1 for the current state.", "state", states),
            ("candles_disconnects_total", "Ended connections and failed attempts.", "reason",
             {str(r): 0 for r in DisconnectReason} | dict(client.disconnects)),
            ("candles_invalid_events_total", "Candle events dropped as invalid.", "reason",
             o.reading.manager.invalid_by_reason),
            ("candles_subscriptions", "Candle subscriptions by snapshot state.", "state",
             client.series_by_state),
            ("candles_channel_messages_total", "FEED_DATA messages.", "channel",
             {k: v.message_count for k, v in channels.items()}),
            ("candles_channel_events_total", "Events decoded.", "channel",
             {k: v.event_count for k, v in channels.items()}),
            ("candles_channel_errors_total", "Channel ERROR messages.", "channel",
             {k: v.error_count for k, v in channels.items()}),
            ("candles_channel_last_message_age_seconds", "Since the last FEED_DATA.", "channel",
             {k: max(0.0, now - v.last_message_time)
              for k, v in channels.items() if v.last_message_time is not None}),
            ("candles_channel_queue_depth", "Batches waiting for the consumer.", "channel",
             client.queue_depths),
            ("candles_channel_queue_high_water_mark", "Deepest queue seen.", "channel",
             {k: v.queue_high_water_mark for k, v in channels.items()}),
            ("candles_retention_seconds", "Configured retention (store.retention).", "period",
             o.reading.retention_seconds),
        ]  # fmt: skip
        if (check := o.store_check) is not None:
            labelled.append(
                ("candles_oldest_candle_timestamp_seconds", "Oldest stored candle start.",
                 "period", check.oldest_by_period),
            )  # fmt: skip
        for name, doc, label, values in labelled:
            family = _family(name, doc, label)
            for key, value in sorted(values.items()):
                family.add_sample(name, {label: key}, float(value))
            yield family
