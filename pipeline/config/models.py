"""The configuration's pydantic models: one frozen section per TOML table.

Each field's default, bounds and rule live here; its attribute docstring is the option's
description (README table, ``config check`` errors: :mod:`pipeline.config.describe`). Loading,
layering and error messages are :mod:`pipeline.config.loader`'s and :mod:`pipeline.config.errors`'.
Secrets never live in these models: only the *names* of the environment variables that hold
them do.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.fields import FieldInfo

from pipeline.dxlink import CandleSymbol, parse_interval
from pipeline.sharding import SINGLE, ShardSpec

__all__ = [
    "DEFAULT_API_URL",
    "DXFEED_DEMO_URL",
    "KEEP_FOREVER",
    "ClientConfig",
    "Config",
    "DXLinkSourceConfig",
    "IngestConfig",
    "LoggingConfig",
    "ManagerConfig",
    "MetricsConfig",
    "PathKind",
    "RecordConfig",
    "S3Config",
    "ScheduleConfig",
    "SimulatorSourceConfig",
    "SourceConfig",
    "StoreConfig",
    "SubscriptionsConfig",
    "TastytradeSourceConfig",
    "insecure_ws_problem",
    "is_loopback_host",
    "parse_duration",
    "path_kind",
    "retention_label",
]

DEFAULT_API_URL = "https://api.tastyworks.com"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(w|d|h|m|s)")
_DURATION_UNITS = {"w": 604_800.0, "d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}


PathKind = Literal["folder", "catalog"]
"""How an option holds a filesystem path: the whole value (``folder``) or the part after
``sqlite:`` (``catalog``). The loader resolves a relative one against the folder of the config
file that set it (:mod:`pipeline.config.loader`, "Paths")."""


def _option(
    default: Any, *, allowed: str | None = None, path: PathKind | None = None, **constraints: Any
) -> Any:
    """A ``Field`` whose ``allowed`` text (for error messages and docs) is spelled out, and
    which is marked as a filesystem path when ``path`` says how."""
    extra: dict[str, Any] = {}
    if allowed:
        extra["allowed"] = allowed
    if path:
        extra["path"] = path
    return Field(default, json_schema_extra=extra or None, **constraints)


def path_kind(field: FieldInfo) -> PathKind | None:
    """How ``field`` holds a filesystem path (see :data:`PathKind`), or ``None``."""
    extra = field.json_schema_extra
    kind = extra.get("path") if isinstance(extra, dict) else None
    return "folder" if kind == "folder" else "catalog" if kind == "catalog" else None


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ``::1``)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_duration(text: str) -> timedelta:
    """Parse a duration such as ``90s``, ``2h``, ``3d``, ``1w`` or ``1d12h``.

    Raises:
        ValueError: naming the text and the accepted form.
    """
    compact = text.strip().lower()
    if not compact or _DURATION_PART.sub("", compact):
        raise ValueError(
            f"{text!r} is not a duration; write <number><unit>[...] with unit one of "
            "s, m, h, d, w (e.g. 90m, 2h, 3d, 1d12h)"
        )
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(compact))
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text[:40]!r} is far too long a duration") from None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _env_var_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        # The value is not echoed: a common slip is pasting the secret itself here.
        raise ValueError("the value is not an environment variable name (value not shown)")
    return value


_EnvName = Annotated[str, AfterValidator(_env_var_name)]


class SimulatorSourceConfig(_Section):
    """The built-in DXLink simulator, run in-process (``source.kind = "simulator"``)."""

    host: str = Field(default="127.0.0.1", min_length=1)
    """Interface the simulator listens on."""
    port: int = Field(default=0, ge=0, le=65535)
    """TCP port of the simulator; 0 picks a free port."""
    speed: float = Field(default=60.0, gt=0, le=1_000_000)
    """Simulated seconds per real second while the simulated clock is behind the wall clock
    (60: one simulated minute per second); it never runs ahead of the wall clock."""
    seed: int = Field(default=1, ge=0, le=2**63 - 1)
    """Seed of the simulated market; the same seed gives the same candles."""
    history_days: int = Field(default=30, ge=0, le=3650)
    """Days of candle history the simulator can serve before its start time."""
    start_behind: str = _option("1h", allowed="a duration from 0s to 30d such as 0s, 90m, 1d")
    """How far behind the wall clock the simulated clock starts (later when the store already
    holds newer candles); it runs at ``speed`` until it reaches the wall clock, then in real
    time. 0s starts at the wall clock."""
    token: str = Field(default="simulator", min_length=1, max_length=1024)
    """Token the local simulator expects in AUTH; not a secret, it only guards the simulator."""
    url: str | None = _option(
        None, allowed="a ws:// URL of a running `candles simulate`, e.g. ws://127.0.0.1:8765/"
    )
    """Connect to an already running ``candles simulate`` here instead of starting one
    in-process (the in-process simulator uses host, port, speed, seed and history_days)."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("ws://", "wss://")):
            raise ValueError(f"{value[:40]!r} is not a ws:// or wss:// URL")
        return value

    @field_validator("start_behind")
    @classmethod
    def _check_start_behind(cls, value: str) -> str:
        if parse_duration(value) > timedelta(days=30):
            raise ValueError(f"{value!r} is more than 30d")
        return value


class TastytradeSourceConfig(_Section):
    """tastytrade's REST API and DXLink feed (``source.kind = "tastytrade"``, §1)."""

    api_url: str = _option(
        DEFAULT_API_URL,
        allowed="an https:// URL (http:// only for a loopback host), no query or credentials",
    )
    """Base URL of tastytrade's REST API."""
    client_secret_env: _EnvName = _option(
        "TASTYTRADE_CLIENT_SECRET", allowed="an environment variable name"
    )
    """Name of the environment variable holding the OAuth client secret."""
    refresh_token_env: _EnvName = _option(
        "TASTYTRADE_REFRESH_TOKEN", allowed="an environment variable name"
    )
    """Name of the environment variable holding the OAuth refresh token."""
    allow_insecure_ws: bool = False
    """Accept a plain ws:// dxlink-url for a non-loopback host (otherwise wss:// is required)."""
    request_timeout: float = Field(default=10.0, gt=0, le=300)
    """Seconds to wait for each REST request."""

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        host = parts.hostname or ""
        if parts.scheme not in ("https", "http") or not host:
            raise ValueError("the value is not an http(s) URL with a host (value not shown)")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(f"{parts.scheme}://{host}... must not carry credentials or a query")
        if parts.scheme == "http" and not is_loopback_host(host):
            raise ValueError(f"http://{host} would send credentials unencrypted; use https://")
        return value.strip().rstrip("/")

    def missing_env(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Names of the credential environment variables that are unset or empty."""
        env = os.environ if environ is None else environ
        names = (self.client_secret_env, self.refresh_token_env)
        return [name for name in names if not env.get(name, "").strip()]


DXFEED_DEMO_URL = "wss://demo.dxfeed.com/dxlink-ws"
"""dxFeed's public DXLink demo endpoint (delayed data, no token)."""


def insecure_ws_problem(url: str, *, allow_insecure: bool, option: str) -> str | None:
    """Why ``url`` is not an acceptable DXLink URL, or ``None`` when it is.

    Accepted: ``wss://`` with a host; ``ws://`` only to a loopback host, unless ``option``
    (the setting that allows it, named in the message) is true. The URL is never echoed
    whole: user info or a query could hold a credential.
    """
    try:
        parts = urlsplit(url.strip())
        host, _ = parts.hostname, parts.port  # port: ValueError when it is not a number
    except ValueError:
        return "the value is not a WebSocket URL (value not shown); write wss://<host>/<path>"
    if parts.scheme not in ("ws", "wss") or not host:
        return "the value is not a ws:// or wss:// URL with a host (value not shown)"
    if parts.username or parts.password or parts.query or parts.fragment:
        return (
            f"{parts.scheme}://{host}... must not carry credentials, a query or a fragment; "
            "a token belongs in the environment variable named by token_env"
        )
    if parts.scheme == "ws" and not allow_insecure and not is_loopback_host(host):
        return (
            f"ws://{host} is unencrypted; use wss://, or set {option} = true to accept "
            "plain ws:// to a non-loopback host"
        )
    return None


class DXLinkSourceConfig(_Section):
    """Any DXLink endpoint (``source.kind = "dxlink"``): dxFeed's demo, another broker's feed.

    The URL is connected to as given, with the token (if any) from the environment variable
    named by ``token_env``; nothing in this section is a secret.
    """

    # Before url: url's check reads it (pydantic validates fields in this order).
    allow_insecure_ws: bool = False
    """Accept a plain ws:// url for a non-loopback host (otherwise wss:// is required)."""
    url: str = _option(
        DXFEED_DEMO_URL,
        allowed="a wss:// URL (ws:// only to a loopback host unless allow_insecure_ws), "
        "no credentials or query",
    )
    """WebSocket URL of the DXLink endpoint; the default is dxFeed's public demo."""
    token_env: _EnvName | None = _option(
        None, allowed="an environment variable name, or unset for an endpoint without a token"
    )
    """Name of the environment variable holding the DXLink token sent in AUTH; unset sends
    none (dxFeed's demo endpoint needs none)."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        allow = bool(info.data.get("allow_insecure_ws", False))
        problem = insecure_ws_problem(
            value, allow_insecure=allow, option="source.dxlink.allow_insecure_ws"
        )
        if problem is not None:
            raise ValueError(problem)
        return value.strip()

    def token_problem(self, environ: Mapping[str, str] | None = None) -> str | None:
        """Why the token cannot be read (the variable named is unset or empty), else None."""
        env = os.environ if environ is None else environ
        if self.token_env is not None and not env.get(self.token_env, "").strip():
            return (
                f"source.dxlink.token_env names {self.token_env}, which is not set; export it "
                "with the DXLink token, or unset token_env for an endpoint without a token"
            )
        return None


class SourceConfig(_Section):
    """Where candles come from."""

    kind: Literal["simulator", "tastytrade", "dxlink"] = "simulator"
    """Which source to use: the built-in simulator, tastytrade, or any DXLink endpoint."""
    simulator: SimulatorSourceConfig = SimulatorSourceConfig()
    tastytrade: TastytradeSourceConfig = TastytradeSourceConfig()
    dxlink: DXLinkSourceConfig = DXLinkSourceConfig()


def _base_symbol(value: str) -> str:
    # CandleSymbol's own messages describe a *candle* symbol (AAPL{=5m}); this list holds
    # base symbols, so the common slips get advice in those terms.
    if not value.strip():
        raise ValueError("the symbol is empty; write a streamer symbol such as AAPL or SPY")
    if value != value.strip() or any(ch.isspace() for ch in value):
        raise ValueError(
            f"{value!r} contains white space; write the streamer symbol alone, e.g. AAPL"
        )
    if "{" in value or "}" in value:
        raise ValueError(
            f"{value!r} has a candle period; list base symbols here (AAPL) and put periods "
            "in subscriptions.intervals"
        )
    try:
        CandleSymbol.of(value, "1m")
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return value


def _interval(value: str) -> str:
    parse_interval(value)
    return value


def _number_as_time_hint(number: float | str) -> str:
    """§6.2: fromTime is ms on the wire but seconds in some docs; say which date each means."""
    hints = []
    for unit, scale in (("seconds", 1.0), ("milliseconds", 1000.0)):
        try:
            when = datetime.fromtimestamp(float(number) / scale, UTC)
        except (OverflowError, OSError, ValueError):
            continue
        if 1990 <= when.year <= 2200:
            hints.append(f"as epoch {unit} it would be {when:%Y-%m-%dT%H:%M:%SZ}")
    guess = "; ".join(hints) if hints else "it is not a plausible epoch time either"
    text = str(number) if len(str(number)) <= 20 else f"{str(number)[:17]}..."
    return f"{text} is a number, not an ISO-8601 time ({guess}); write it as a quoted UTC time"


class SubscriptionsConfig(_Section):
    """What to subscribe to: every symbol x every interval."""

    symbols: tuple[Annotated[str, AfterValidator(_base_symbol)], ...] = _option(
        ("AAPL", "SPY"),
        allowed="a non-empty list of distinct streamer symbols such as AAPL, /ESZ25:XCME, "
        "BTC/USD:CXTALP (no {period})",
    )
    """Streamer symbols (tastytrade ``streamer-symbol``) to capture."""
    intervals: tuple[Annotated[str, AfterValidator(_interval)], ...] = _option(
        ("1m", "5m", "1d"),
        allowed="a non-empty list of distinct candle periods such as 1m, 5m, 1h, 1d, 1w, 1mo",
    )
    """Candle periods to capture for every symbol; any valid dxFeed period (§5.1)."""
    extended_hours: bool = True
    """Include pre- and post-market candles; false subscribes with ``tho=true`` (§5.1)."""
    lookback: str = _option("1d", allowed="a duration from 1s to 3650d such as 90m, 2h, 3d")
    """How far back to request history on first start when from_time is not set."""
    from_time: datetime | None = _option(
        None, allowed='an ISO-8601 UTC time in the past, e.g. "2024-01-02T14:30:00Z"'
    )
    """Fixed start of history (UTC); when set it takes precedence over lookback."""

    @field_validator("symbols", "intervals")
    @classmethod
    def _distinct(cls, values: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not values:
            raise ValueError("the list is empty; list at least one")
        key = str if info.field_name == "symbols" else parse_interval
        seen: dict[object, str] = {}
        for value in values:
            first = seen.setdefault(key(value), value)
            if first is not value:
                raise ValueError(f"{value!r} is listed twice (same as {first!r})")
        return values

    @field_validator("lookback")
    @classmethod
    def _check_lookback(cls, value: str) -> str:
        span = parse_duration(value)
        if not timedelta(seconds=1) <= span <= timedelta(days=3650):
            raise ValueError(f"{value!r} is outside 1s..3650d")
        return value

    @field_validator("from_time", mode="before")
    @classmethod
    def _parse_from_time(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, bool) or value is None:
            return value
        digits = isinstance(value, str) and value.isascii() and value.isdigit()
        if isinstance(value, int | float) or digits:
            raise ValueError(_number_as_time_hint(value))  # type: ignore[arg-type]
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO-8601 time") from None
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime.combine(value, time(), UTC)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError(f"{value.isoformat()} has no time zone; add Z for UTC")
            value = value.astimezone(UTC)
            now = (info.context or {}).get("now") or datetime.now(UTC)
            if value > now:
                raise ValueError(f"{value:%Y-%m-%dT%H:%M:%SZ} is in the future")
            if value.year < 1990:
                raise ValueError(f"{value:%Y-%m-%dT%H:%M:%SZ} is before 1990; a unit mix-up?")
        return value

    def start_time(self, now: datetime) -> datetime:
        """The first candle time to request: ``from_time``, else ``now - lookback``."""
        return self.from_time or now - parse_duration(self.lookback)

    def candle_symbols(self) -> tuple[CandleSymbol, ...]:
        """Every symbol x interval, with ``tho=true`` when extended hours are excluded."""
        attrs = {} if self.extended_hours else {"tho": "true"}
        return tuple(
            CandleSymbol.of(symbol, interval, **attrs)
            for symbol in self.symbols
            for interval in self.intervals
        )


class ClientConfig(_Section):
    """The DXLink client: timeouts, reconnect backoff, subscription pacing, buffering."""

    keepalive_timeout: float = Field(default=60.0, ge=1, le=3600)
    """Seconds we promise the server to never stay silent longer (SETUP, §2.6; tastytrade: 60)."""
    dead_peer_timeout: float = Field(default=10.0, ge=1, le=3600)
    """Seconds without any message before the server counts as dead; asked of the server as
    its acceptKeepaliveTimeout (§2.6). A server advertising a longer keepaliveTimeout is given
    that long, up to max_dead_peer_timeout."""
    max_dead_peer_timeout: float = Field(default=60.0, ge=1, le=3600)
    """The most silence a server's SETUP keepaliveTimeout can make us wait before we judge it
    dead (tastytrade: 60); must be at least dead_peer_timeout."""
    connect_timeout: float = Field(default=10.0, gt=0, le=600)
    """Seconds allowed for the TCP/TLS/WebSocket connect."""
    handshake_timeout: float = Field(default=10.0, gt=0, le=600)
    """Seconds allowed for each handshake reply: SETUP, AUTH_STATE, CHANNEL_OPENED (§2.6)."""
    backoff_initial: float = Field(default=0.5, gt=0, le=3600)
    """Upper bound of the first reconnect delay in seconds (full jitter)."""
    backoff_max: float = Field(default=30.0, gt=0, le=86_400)
    """Cap on the reconnect delay in seconds; must be at least backoff_initial."""
    healthy_after: float = Field(default=30.0, ge=0, le=86_400)
    """Seconds a connection must live before the backoff resets to backoff_initial."""
    max_attempts: int = Field(default=0, ge=0, le=1_000_000)
    """Consecutive failed connects before giving up; 0 retries forever."""
    batch_max_items: int = Field(default=500, ge=1, le=100_000)
    """Most subscriptions in one FEED_SUBSCRIPTION message."""
    batch_max_bytes: int = Field(default=6000, ge=256, le=1_048_576)
    """Most bytes in one FEED_SUBSCRIPTION message (§8: larger frames get close code 1009)."""
    subscribe_rate: float = Field(default=20.0, gt=0, le=10_000)
    """Subscription messages per second, sustained (token bucket refill)."""
    subscribe_burst: int = Field(default=20, ge=1, le=10_000)
    """Subscription messages that may be sent back to back (token bucket size)."""
    queue_size: int = Field(default=256, ge=1, le=1_000_000)
    """Candle batches buffered between the socket reader and the consumer."""
    aggregation_period: float = Field(default=0.1, ge=0, le=3600)
    """acceptAggregationPeriod in seconds asked of the server (§3.2; tastytrade web: 0.1)."""
    max_message_size: int = Field(default=16 * 2**20, ge=65_536, le=2**30)
    """Largest server message accepted, in bytes; a larger one is dropped with its connection
    (close 1009), counted as a message_too_big disconnect, and the client reconnects."""

    @field_validator("backoff_max")
    @classmethod
    def _backoff_order(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("backoff_initial")
        if initial is not None and value < initial:
            raise ValueError(f"{value:g} is below client.backoff_initial ({initial:g})")
        return value

    @field_validator("max_dead_peer_timeout")
    @classmethod
    def _dead_peer_order(cls, value: float, info: ValidationInfo) -> float:
        floor = info.data.get("dead_peer_timeout")
        if floor is not None and value < floor:
            raise ValueError(f"{value:g} is below client.dead_peer_timeout ({floor:g})")
        return value


class ManagerConfig(_Section):
    """The candle manager's memory bounds and completion rule."""

    max_series: int = Field(default=10_000, ge=1, le=10_000_000)
    """Most candle series (symbol x interval) tracked at once."""
    max_historical_candles: int = Field(default=1_000, ge=1, le=10_000_000)
    """Most candles kept in memory per series."""
    max_unstored: int = Field(default=1_000_000, ge=1, le=100_000_000)
    """Most completed candles waiting for the store before back-pressure applies."""
    grace_seconds: float = Field(default=5.0, ge=0, le=86_400)
    """A time-based candle counts as complete this long after its period ends."""


KEEP_FOREVER = "forever"
"""The retention value that keeps a period's candles forever (as leaving it out does)."""
_MIN_RETENTION = timedelta(hours=1)


def _duration_text(span: timedelta) -> str:
    """``2d``, ``36h``, ``90m``: the largest unit that divides ``span``."""
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def retention_label(interval: str) -> str:
    """The store's period label of an interval, without attributes: ``1min`` -> ``1m``.

    Raises:
        ValueError: ``interval`` is not a candle period (§5.1).
    """
    return CandleSymbol.of("X", interval).period_label


def _check_retention(value: Mapping[str, str]) -> dict[str, str]:
    """Keys are candle periods (normalised), values durations or ``forever``."""
    checked: dict[str, str] = {}
    for interval, keep in value.items():
        try:
            label = retention_label(interval)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if label in checked:
            raise ValueError(f"{interval!r} is listed twice (same period as {label!r})")
        if not isinstance(keep, str):
            raise ValueError(
                f'{interval}: {keep!r} is not a duration; write one such as "30d" or '
                f'"{KEEP_FOREVER}"'
            )
        text = keep.strip().lower()
        if text != KEEP_FOREVER:
            try:
                span = parse_duration(text)
            except ValueError as exc:
                raise ValueError(f"{interval}: {exc} or {KEEP_FOREVER!r}") from None
            period_ms = CandleSymbol.of("X", label).period_ms
            shortest = max(_MIN_RETENTION, timedelta(milliseconds=2 * (period_ms or 0)))
            if span < shortest:
                raise ValueError(
                    f"{interval}: {keep!r} is too short; keep candles at least "
                    f"{_duration_text(shortest)} (an hour, and two periods so that a resumed "
                    "series overlaps what is stored)"
                )
        checked[label] = text
    return checked


_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_HOST_PORT = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def is_object_store_url(value: str | None) -> bool:
    """Whether a ``store.data_path`` names object storage (``s3://...``), not a folder."""
    return value is not None and "://" in value


class S3Config(_Section):
    """How to reach a data path on S3 or an S3-compatible store (``store.data_path = "s3://..."``).

    The keys themselves are never configured: only the names of the environment variables
    that hold them (docs/scaling.md).
    """

    endpoint: str | None = _option(
        None, allowed="host[:port] or http(s)://host[:port], e.g. minio.internal:9000"
    )
    """S3-compatible endpoint (MinIO, R2, ...); unset reads AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL, else AWS S3 itself."""
    region: str | None = _option(None, min_length=1, allowed="a region name, e.g. eu-west-1")
    """The bucket's region; unset reads AWS_REGION or AWS_DEFAULT_REGION, else us-east-1."""
    url_style: Literal["auto", "path", "vhost"] = "auto"
    """path (endpoint/bucket/key) or vhost (bucket.endpoint/key); auto: path with a custom
    endpoint, vhost on AWS."""
    use_ssl: bool | None = None
    """TLS to the endpoint; unset means on, unless the endpoint is an http:// URL."""
    access_key_id_env: _EnvName = _option(
        "AWS_ACCESS_KEY_ID", allowed="an environment variable name"
    )
    """Name of the environment variable holding the access key id."""
    secret_access_key_env: _EnvName = _option(
        "AWS_SECRET_ACCESS_KEY", allowed="an environment variable name"
    )
    """Name of the environment variable holding the secret access key."""
    session_token_env: _EnvName = _option(
        "AWS_SESSION_TOKEN", allowed="an environment variable name"
    )
    """Name of the environment variable holding a session token (temporary credentials);
    unset or empty means none."""

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        if "://" in text:
            parts = urlsplit(text)
            if parts.username or parts.password:
                raise ValueError("the endpoint must not carry credentials (value not shown)")
            if parts.scheme not in ("http", "https") or parts.path.strip("/") or parts.query:
                raise ValueError(f"{text[:60]!r} is not http(s)://host[:port] without a path")
            text = parts.netloc
        if not _HOST_PORT.fullmatch(text):
            raise ValueError(f"{text[:60]!r} is not host[:port]")
        return value.strip()

    def missing_env(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Names of the key variables that are unset or empty (the session token is optional)."""
        env = os.environ if environ is None else environ
        names = (self.access_key_id_env, self.secret_access_key_env)
        return [name for name in names if not env.get(name, "").strip()]


class StoreConfig(_Section):
    """The DuckLake store: a catalog plus Parquet data files."""

    path: str = _option("data", min_length=1, allowed="a directory path", path="folder")
    """Directory of the embedded lake (SQLite catalog + Parquet files). A relative path is
    relative to the config file that sets it (or that leaves it at the default), else to the
    working directory."""
    catalog: str | None = _option(
        None,
        allowed="sqlite:<path> or postgres:<conninfo> without a password (use PGPASSWORD)",
        path="catalog",
    )
    """Catalog location; unset means a SQLite file inside ``path``."""
    data_path: str | None = _option(
        None,
        min_length=1,
        allowed="a directory every process reaches under the same name, or s3://bucket/prefix/",
        path="folder",
    )
    """Where the Parquet files live: a folder, or object storage (s3://bucket/prefix/, see
    store.s3); unset means ``<path>/data``. Shards share one."""
    recycle_after: int = Field(default=500, ge=1, le=10_000_000)
    """Upserts after which the ingest writer reopens its DuckDB connection (it also does after
    every compaction): native memory DuckDB keeps per connection is returned only on close."""
    retention: Annotated[dict[str, str], AfterValidator(_check_retention)] = _option(
        {},
        allowed='a table of candle period = duration or "forever", e.g. '
        '{ 1m = "30d", 5m = "365d" }; each at least 1h and two periods',
    )
    """How long to keep each period's candles (by candle time); periods not listed are kept
    forever. The maintenance job removes older candles once a day (once an hour for less than
    2d), then compacts; each series' newest candle always stays (its resume point)."""

    def retention_policy(self) -> dict[str, timedelta]:
        """How long to keep candles, by period label (``1m``); periods kept forever are absent."""
        return {
            label: parse_duration(keep)
            for label, keep in self.retention.items()
            if keep != KEEP_FOREVER
        }

    def retention_for(self, period_label: str) -> timedelta | None:
        """A stored period's retention (``5m,tho=true`` counts as ``5m``); ``None``: forever."""
        return self.retention_policy().get(period_label.split(",", 1)[0])

    lease_check_interval: float = Field(default=5.0, gt=0, le=3600)
    """Seconds between checks that this ingest still holds its shard in a PostgreSQL catalog
    (every commit checks too); after a loss it tries to claim the shard back this often."""
    s3: S3Config = S3Config()

    @field_validator("data_path")
    @classmethod
    def _check_data_path(cls, value: str | None) -> str | None:
        if not is_object_store_url(value):
            return value
        assert value is not None
        parts = urlsplit(value.strip())
        if parts.scheme != "s3":
            raise ValueError(
                f"{parts.scheme}:// is not supported; use s3://bucket/prefix/ (S3-compatible "
                "stores through store.s3.endpoint)"
            )
        if "@" in parts.netloc or parts.query or parts.fragment:
            raise ValueError(
                "the URL must not carry credentials or a query (value not shown); put the keys "
                "in the environment (store.s3.access_key_id_env, secret_access_key_env)"
            )
        if not _S3_BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc:
            raise ValueError(
                f"{parts.netloc[:70]!r} is not an S3 bucket name (3-63 lowercase letters, "
                "digits, dots and hyphens)"
            )
        return value.strip()

    def notes(self) -> list[str]:
        """What ``candles config check`` should tell about this combination (not errors)."""
        if not is_object_store_url(self.data_path):
            return []
        if self.catalog is None or self.catalog.startswith("sqlite:"):
            return [
                f"store: data on {self.data_path} with a SQLite catalog on this host: only "
                "processes on this one host can write or read this lake; for ingest hosts "
                "that share nothing, or readers elsewhere, set store.catalog = "
                '"postgres:..." (docs/scaling.md)'
            ]
        return []

    @field_validator("catalog")
    @classmethod
    def _check_catalog(cls, value: str | None) -> str | None:
        if value is None:
            return None
        kind, sep, target = value.partition(":")
        if kind not in ("sqlite", "postgres") or not sep or not target.strip():
            raise ValueError(f"{value.split(':')[0][:20]!r}... is not sqlite:<path> or postgres:")
        if kind == "postgres" and re.search(r"password\s*=|://[^/@\s]*:[^/@\s]*@", target):
            raise ValueError("the conninfo contains a password; set PGPASSWORD or ~/.pgpass")
        return value


class IngestConfig(_Section):
    """How this ingest process shares the work with others (docs/scaling.md) and stops."""

    shard: str | None = _option(None, allowed='"K/N" with 1 <= K <= N, e.g. "2/3"')
    """Capture only the series hashed to shard K of N; unset captures every series."""
    shutdown_timeout: float = Field(default=60.0, ge=0, le=86_400)
    """Seconds a stop may spend storing candles before it gives up (exit 75); 0 waits forever."""

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, value: str | None) -> str | None:
        return None if value is None else str(ShardSpec.parse(value))

    @property
    def shard_spec(self) -> ShardSpec:
        """The shard as a :class:`~pipeline.sharding.ShardSpec` (``1/1`` when unset)."""
        return SINGLE if self.shard is None else ShardSpec.parse(self.shard)


class RecordConfig(_Section):
    """Recording every DXLink frame of every connection (docs/recording-format.md)."""

    enabled: bool = False
    """Record every WebSocket frame of every connection, both directions, secrets redacted."""
    dir: str = _option("recordings", min_length=1, allowed="a directory path", path="folder")
    """Directory of the recording files (created if missing). A relative path is relative to
    the config file that sets it (or that leaves it at the default), else to the working
    directory."""
    rotate_size_mb: float = Field(default=64.0, gt=0, le=4096)
    """Start a new file once the current one holds this many MiB (compressed)."""
    rotate_after: str = _option("1h", allowed="a duration from 1s to 7d such as 15m, 1h, 1d")
    """Start a new file once the current one is this old."""
    queue_mb: float = Field(default=64.0, gt=0, le=4096)
    """MiB of frames that may wait for the disk; beyond it frames are dropped from the
    recording (counted, marked as a gap in it), never from ingest."""

    @field_validator("rotate_after")
    @classmethod
    def _check_rotate_after(cls, value: str) -> str:
        span = parse_duration(value)
        if not timedelta(seconds=1) <= span <= timedelta(days=7):
            raise ValueError(f"{value!r} is outside 1s..7d")
        return value

    @property
    def rotate_seconds(self) -> float:
        """``rotate_after`` in seconds."""
        return parse_duration(self.rotate_after).total_seconds()


class ScheduleConfig(_Section):
    """Periodic jobs of the ingest service."""

    flush_interval: float = Field(default=5.0, gt=0, le=86_400)
    """Seconds between flushes of completed candles to the store."""
    compaction_interval: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    """Seconds between compactions of the store's Parquet files."""


class MetricsConfig(_Section):
    """The Prometheus ``/metrics`` and ``/health`` endpoint."""

    enabled: bool = True
    """Serve metrics over HTTP."""
    host: str = Field(default="127.0.0.1", min_length=1)
    """Interface to listen on (127.0.0.1 keeps it local)."""
    port: int = Field(default=9464, ge=0, le=65535)
    """TCP port; 0 picks a free port."""


class LoggingConfig(_Section):
    """Log output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """Least severe level logged (case-insensitive)."""

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Config(_Section):
    """The whole configuration."""

    source: SourceConfig = SourceConfig()
    subscriptions: SubscriptionsConfig = SubscriptionsConfig()
    client: ClientConfig = ClientConfig()
    manager: ManagerConfig = ManagerConfig()
    store: StoreConfig = StoreConfig()
    ingest: IngestConfig = IngestConfig()
    record: RecordConfig = RecordConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
