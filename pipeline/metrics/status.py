"""``candles status``: fetch a running ingest service's ``/metrics`` and ``/health`` and summarise.

:func:`fetch_status` reads both endpoints of the service's metrics server
(:class:`pipeline.metrics.MetricsServer`), parses the Prometheus text with
``prometheus_client.parser`` and returns a :class:`StatusSummary`; :func:`render_status`
turns that into a few readable lines. Ages (last flush, last message) come from the service's
own clock, so the summary needs no clock of its own. Every failure is a :class:`StatusError`
whose message says what went wrong and what to do.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "DEFAULT_URL",
    "ChannelStatus",
    "StatusError",
    "StatusSummary",
    "fetch_status",
    "parse_status",
    "render_status",
    "url_for",
]

DEFAULT_URL = "http://127.0.0.1:9464"
"""Where ``candles ingest`` serves metrics with the default ``[metrics]`` settings."""

_Labels = tuple[tuple[str, str], ...]


class StatusError(Exception):
    """The status could not be fetched or read; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """One DXLink channel role (``candles`` or ``events``)."""

    messages: int
    errors: int
    last_message_age_seconds: float | None
    queue_depth: int | None
    queue_high_water_mark: int


@dataclass(frozen=True, slots=True)
class StatusSummary:
    """What ``candles status`` shows (metric definitions: :mod:`pipeline.metrics`)."""

    url: str
    healthy: bool
    reasons: tuple[str, ...]
    connection_state: str
    uptime_seconds: float
    connected_seconds: float
    connects: int
    disconnects: Mapping[str, int]
    """Non-zero disconnect counts by reason."""
    reconnect_attempts: int
    candles_received: int
    candles_completed: int
    candles_stored: int
    candles_revised: int
    series: int
    series_limit: int
    memory_bytes: int
    memory_limit_bytes: int
    resident_memory_bytes: int | None
    flushes: int
    flush_failures: int
    last_flush_age_seconds: float | None
    last_flush_duration_seconds: float
    gaps: int | None
    """``None`` until the service's first store check."""
    missing_periods: int | None
    backfill_lag_seconds: float | None
    subscriptions: Mapping[str, int]
    channels: Mapping[str, ChannelStatus]
    oldest_by_period: Mapping[str, float] = field(default_factory=dict)
    """Start of the oldest stored candle per period (Unix seconds); empty until the first
    store check."""
    retention_seconds: Mapping[str, float] = field(default_factory=dict)
    """``store.retention`` per period in seconds; periods kept forever are absent."""
    candles_pruned: int = 0
    """Candles the maintenance job removed under ``store.retention``."""

    @property
    def candles_per_second(self) -> float:
        """Candles received per second, averaged over the uptime."""
        return self.candles_received / self.uptime_seconds if self.uptime_seconds > 0 else 0.0


def url_for(host: str, port: int) -> str:
    """The metrics URL of a service configured with ``metrics.host`` / ``metrics.port``.

    Raises:
        StatusError: ``port`` is 0: the service picked a free port that the config cannot tell.
    """
    if port == 0:
        raise StatusError(
            "metrics.port is 0, so the service picked a free port at start; pass --url with "
            "the address it logged ('serving metrics at http://...')"
        )
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: ask on loopback
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def fetch_status(url: str = DEFAULT_URL, *, timeout: float = 5.0) -> StatusSummary:
    """Read ``<url>/metrics`` and ``<url>/health`` of a running ingest service.

    Args:
        url: The metrics server, ``http://host:port`` (a trailing path is ignored).
        timeout: Seconds to wait for each answer.

    Raises:
        StatusError: Nothing listens there, it answered with something else, or too slowly.
    """
    parts = urlsplit(url)
    try:
        valid = parts.scheme == "http" and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number in 0..65535
        valid = False
    if not valid:
        raise StatusError(f"--url {url!r} is not an http://host:port address, e.g. {DEFAULT_URL}")
    base = f"http://{parts.netloc}"
    status, metrics = _get(base, "/metrics", timeout)
    if status != 200:
        raise StatusError(f"{base}/metrics answered HTTP {status}; is this `candles ingest`?")
    status, health = _get(base, "/health", timeout)
    if status not in (200, 503):
        raise StatusError(f"{base}/health answered HTTP {status}; is this `candles ingest`?")
    try:
        health_doc = json.loads(health)
    except ValueError as exc:
        raise StatusError(f"{base}/health did not answer JSON ({exc})") from exc
    return parse_status(base, metrics, health_doc)


def _get(base: str, path: str, timeout: float) -> tuple[int, str]:
    """(HTTP status, body) of one GET; connection problems become :class:`StatusError`."""
    try:
        with urllib.request.urlopen(base + path, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode("utf-8", "replace")
    except TimeoutError as exc:
        raise StatusError(f"{base} did not answer within {timeout:g}s") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise StatusError(f"{base} did not answer within {timeout:g}s") from exc
        raise StatusError(
            f"no ingest service is serving metrics at {base}; start `candles ingest` or pass "
            f"--url ({reason})"
        ) from exc


def parse_status(url: str, metrics_text: str, health: Mapping[str, Any]) -> StatusSummary:
    """Build a summary from a ``/metrics`` body and the parsed ``/health`` JSON.

    Raises:
        StatusError: The text is not Prometheus format, or not from a candles ingest service.
    """
    samples: dict[str, dict[_Labels, float]] = {}
    try:
        for family in text_string_to_metric_families(metrics_text):
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                samples.setdefault(sample.name, {})[labels] = sample.value
    except ValueError as exc:
        raise StatusError(f"{url}/metrics is not Prometheus text ({exc})") from exc
    if "candles_uptime_seconds" not in samples:
        raise StatusError(f"{url} serves metrics, but not those of `candles ingest`")

    def value(name: str) -> float | None:
        return samples.get(name, {}).get(())

    def number(name: str) -> float:
        return value(name) or 0.0

    def by(name: str, label: str) -> dict[str, float]:
        return {dict(k)[label]: v for k, v in samples.get(name, {}).items() if label in dict(k)}

    def optional_int(name: str) -> int | None:
        found = value(name)
        return None if found is None else int(found)

    ages = by("candles_channel_last_message_age_seconds", "channel")
    depths = by("candles_channel_queue_depth", "channel")
    marks = by("candles_channel_queue_high_water_mark", "channel")
    errors = by("candles_channel_errors_total", "channel")
    channels = {
        role: ChannelStatus(
            messages=int(count),
            errors=int(errors.get(role, 0)),
            last_message_age_seconds=ages.get(role),
            queue_depth=None if role not in depths else int(depths[role]),
            queue_high_water_mark=int(marks.get(role, 0)),
        )
        for role, count in sorted(by("candles_channel_messages_total", "channel").items())
    }
    return StatusSummary(
        url=url,
        healthy=health.get("status") == "ok",
        reasons=tuple(str(r) for r in health.get("reasons", [])),
        connection_state=str(health.get("connection_state", "unknown")),
        uptime_seconds=number("candles_uptime_seconds"),
        connected_seconds=number("candles_connected_seconds_total"),
        connects=int(number("candles_connects_total")),
        disconnects={
            k: int(v) for k, v in sorted(by("candles_disconnects_total", "reason").items()) if v
        },
        reconnect_attempts=int(number("candles_reconnect_attempts_total")),
        candles_received=int(number("candles_received_total")),
        candles_completed=int(number("candles_completed_total")),
        candles_stored=int(number("candles_stored_total")),
        candles_revised=int(number("candles_revised_total")),
        series=int(number("candles_series")),
        series_limit=int(number("candles_series_limit")),
        memory_bytes=int(number("candles_memory_bytes")),
        memory_limit_bytes=int(number("candles_memory_limit_bytes")),
        resident_memory_bytes=optional_int("process_resident_memory_bytes"),
        flushes=int(number("candles_flushes_total")),
        flush_failures=int(number("candles_flush_failures_total")),
        last_flush_age_seconds=health.get("last_flush_age_seconds"),
        last_flush_duration_seconds=number("candles_last_flush_duration_seconds"),
        gaps=optional_int("candles_gaps"),
        missing_periods=optional_int("candles_gap_missing_periods"),
        backfill_lag_seconds=value("candles_backfill_lag_seconds"),
        subscriptions={k: int(v) for k, v in by("candles_subscriptions", "state").items()},
        channels=channels,
        oldest_by_period=dict(
            sorted(by("candles_oldest_candle_timestamp_seconds", "period").items())
        ),
        retention_seconds=by("candles_retention_seconds", "period"),
        candles_pruned=int(number("candles_pruned_total")),
    )


def render_status(summary: StatusSummary) -> str:
    """A readable multi-line summary (no trailing newline)."""
    s = summary
    verdict = "OK" if s.healthy else "UNHEALTHY"
    lines = [f"candles ingest at {s.url}: {verdict}"]
    lines += [f"  ! {reason}" for reason in s.reasons]
    disconnects = ", ".join(f"{reason} {count}" for reason, count in s.disconnects.items())
    flush = (
        "never"
        if s.last_flush_age_seconds is None
        else f"{_duration(s.last_flush_age_seconds)} ago, took {s.last_flush_duration_seconds:.3f}s"
    )
    rss = "" if s.resident_memory_bytes is None else f"; process {_size(s.resident_memory_bytes)}"
    rows = [
        ("state", f"{s.connection_state}, up {_duration(s.uptime_seconds)} "
                  f"(connected {_duration(s.connected_seconds)})"),
        ("connections", f"{s.connects} connects, {sum(s.disconnects.values())} disconnects"
                        + (f" ({disconnects})" if disconnects else "")
                        + f", {s.reconnect_attempts} reconnect attempts"),
        ("candles", f"{s.candles_received:,} received ({s.candles_per_second:,.1f}/s average), "
                    f"{s.candles_completed:,} completed, {s.candles_stored:,} stored, "
                    f"{s.candles_revised:,} revised"),
        ("series", f"{s.series:,} of {s.series_limit:,}; memory {_size(s.memory_bytes)} of "
                   f"{_size(s.memory_limit_bytes)} bound{rss}"),
        ("last flush", f"{flush}; {s.flushes:,} flushes, {s.flush_failures:,} failed"),
        ("store", "not checked yet" if s.gaps is None else
                  f"{s.gaps:,} gaps ({s.missing_periods or 0:,} missing periods) recently; "
                  "backfill lag " + ("n/a" if s.backfill_lag_seconds is None
                                     else _duration(s.backfill_lag_seconds))),
    ]  # fmt: skip
    if s.subscriptions:
        rows.append(("subscriptions", ", ".join(f"{k} {v}" for k, v in s.subscriptions.items())))
    for role, channel in s.channels.items():
        age = channel.last_message_age_seconds
        depth = "?" if channel.queue_depth is None else str(channel.queue_depth)
        rows.append((
            f"{role} channel",
            f"{channel.messages:,} messages, last {'never' if age is None else _duration(age)}"
            f"{'' if age is None else ' ago'}, queue {depth} (max {channel.queue_high_water_mark})"
            f", {channel.errors} errors",
        ))  # fmt: skip
    if s.oldest_by_period or s.retention_seconds:
        rows.append(("oldest kept", _retention_text(s)))
    width = max(len(label) for label, _ in rows)
    lines += [f"  {label:<{width}}  {text}" for label, text in rows]
    return "\n".join(lines)


def _retention_text(s: StatusSummary) -> str:
    """``1m 2026-11-07 14:30 (keep 30d), 1d 2024-01-02 00:00 (keep forever); 1,234 pruned``."""
    periods = list(s.oldest_by_period) + [
        p for p in s.retention_seconds if p not in s.oldest_by_period
    ]
    parts = []
    for period in periods:
        oldest = s.oldest_by_period.get(period)
        when = (
            "none stored"
            if oldest is None
            else (f"{datetime.fromtimestamp(oldest, UTC):%Y-%m-%d %H:%M}")
        )
        keep = s.retention_seconds.get(period)
        parts.append(f"{period} {when} (keep {_keep(keep)})")
    text = ", ".join(parts) if parts else "not checked yet"
    return f"{text}; {s.candles_pruned:,} removed by retention" if s.candles_pruned else text


def _keep(seconds: float | None) -> str:
    """``forever``, ``30d``, ``36h``: a retention as configured."""
    if seconds is None:
        return "forever"
    whole = int(seconds)
    if whole % 86_400 == 0:
        return f"{whole // 86_400}d"
    return f"{whole // 3600}h" if whole % 3600 == 0 else _duration(seconds)


def _duration(seconds: float) -> str:
    """``0.4s``, ``42s``, ``3m05s``, ``2h07m``, ``3d04h``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _size(count: float) -> str:
    """``512 B``, ``1.2 KiB``, ``3.4 GiB``."""
    if count < 1024:
        return f"{count:.0f} B"
    exponent = min(3, int(math.log(count, 1024)))
    return f"{count / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"
