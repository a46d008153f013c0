"""Configuration: ``config.toml`` → frozen pydantic models; secrets only from env vars.

Where a setting comes from, later layers winning (tables merge key by key; arrays and
scalars replace):

1. the defaults written in the models below (a built-in simulator setup);
2. the file's base sections, e.g. ``[client]``;
3. the selected profile's tables ``[profiles.<name>.<section>]`` (``profile=`` argument, else
   ``$CANDLES_PROFILE``);
4. environment overrides ``CANDLES_<SECTION>__<KEY>``, e.g. ``CANDLES_CLIENT__QUEUE_SIZE=64``
   or ``CANDLES_SOURCE__TASTYTRADE__API_URL=...``; a value is read as a TOML value when it is
   one (``64``, ``true``, ``["AAPL", "SPY"]``) and as a plain string otherwise;
5. the ``overrides`` argument: nested tables or dotted keys (``{"client.queue_size": 64}``).

The file is ``path``, else ``$CANDLES_CONFIG``; with neither, only the defaults apply.

Every problem found is reported at once, as one line each of the form
``<source>: <key.path>: <what is wrong>; allowed: <what is allowed>`` inside a
:class:`ConfigError`. Unselected profiles are validated too, so a typo in the production
profile fails ``config check`` on a laptop. Secrets (OAuth client secret, refresh token)
never live in TOML: only the *names* of the environment variables that hold them do.

:func:`describe_options` lists every option (key, type, default, description) for the
README and the CLI; the descriptions are the attribute docstrings below.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo

from pipeline.dxlink.errors import ConfigurationError
from pipeline.dxlink.symbols import CandleSymbol, parse_interval
from pipeline.sharding import SINGLE, ShardSpec

__all__ = [
    "DEFAULT_API_URL",
    "ClientConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "IngestConfig",
    "LoggingConfig",
    "ManagerConfig",
    "MetricsConfig",
    "OptionDoc",
    "ScheduleConfig",
    "SimulatorSourceConfig",
    "SourceConfig",
    "StoreConfig",
    "SubscriptionsConfig",
    "TastytradeSourceConfig",
    "describe_options",
    "is_loopback_host",
    "load_config",
    "loads_config",
    "parse_duration",
]

DEFAULT_API_URL = "https://api.tastyworks.com"
ENV_PREFIX = "CANDLES_"
PROFILE_ENV = "CANDLES_PROFILE"
CONFIG_ENV = "CANDLES_CONFIG"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(w|d|h|m|s)")
_DURATION_UNITS = {"w": 604_800.0, "d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}
_SECRET_WORDS = ("token", "secret", "password", "passwd", "credential", "api_key", "apikey")
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


def _option(default: Any, *, allowed: str | None = None, **constraints: Any) -> Any:
    """A ``Field`` whose ``allowed`` text (for error messages and docs) is spelled out."""
    extra: dict[str, Any] | None = {"allowed": allowed} if allowed else None
    return Field(default, json_schema_extra=extra, **constraints)


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
    """Simulated seconds per real second (60: one simulated minute per second)."""
    seed: int = Field(default=1, ge=0, le=2**63 - 1)
    """Seed of the simulated market; the same seed gives the same candles."""
    history_days: int = Field(default=30, ge=0, le=3650)
    """Days of candle history the simulator can serve before its start time."""
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


class SourceConfig(_Section):
    """Where candles come from."""

    kind: Literal["simulator", "tastytrade"] = "simulator"
    """Which source to use: the built-in simulator or tastytrade."""
    simulator: SimulatorSourceConfig = SimulatorSourceConfig()
    tastytrade: TastytradeSourceConfig = TastytradeSourceConfig()


def _base_symbol(value: str) -> str:
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
    dead_peer_timeout: float = Field(default=60.0, ge=1, le=3600)
    """Seconds without any message before the server counts as dead (§2.6: at least 60)."""
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

    @field_validator("backoff_max")
    @classmethod
    def _backoff_order(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("backoff_initial")
        if initial is not None and value < initial:
            raise ValueError(f"{value:g} is below client.backoff_initial ({initial:g})")
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


class StoreConfig(_Section):
    """The DuckLake store: a catalog plus Parquet data files."""

    path: str = _option("data", min_length=1, allowed="a directory path")
    """Directory of the embedded lake (SQLite catalog + Parquet files), relative to the cwd."""
    catalog: str | None = _option(
        None,
        allowed="sqlite:<path> or postgres:<conninfo> without a password (use PGPASSWORD)",
    )
    """Catalog location; unset means a SQLite file inside ``path``."""
    data_path: str | None = _option(
        None,
        min_length=1,
        allowed="a directory shared by every shard (a local or network folder)",
    )
    """Folder of the Parquet files; unset means ``<path>/data``. Shards share one."""

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
    """How this ingest process divides the work with others (docs/scaling.md)."""

    shard: str | None = _option(None, allowed='"K/N" with 1 <= K <= N, e.g. "2/3"')
    """Capture only the series hashed to shard K of N; unset captures every series."""

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, value: str | None) -> str | None:
        return None if value is None else str(ShardSpec.parse(value))

    @property
    def shard_spec(self) -> ShardSpec:
        """The shard as a :class:`~pipeline.sharding.ShardSpec` (``1/1`` when unset)."""
        return SINGLE if self.shard is None else ShardSpec.parse(self.shard)


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
    schedule: ScheduleConfig = ScheduleConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()


# --- describing options (docs, errors) -------------------------------------------------


class OptionDoc(NamedTuple):
    """One documented option."""

    key: str
    type: str
    default: str
    description: str


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(inner type, optional?) with ``Annotated`` and ``X | None`` removed."""
    optional = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional, annotation = True, args[0]
        else:
            return annotation, optional


_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _type_text(annotation: Any) -> str:
    inner, optional = _unwrap(annotation)
    origin = typing.get_origin(inner)
    if origin is Literal:
        text = " | ".join(json.dumps(arg) for arg in typing.get_args(inner))
    elif origin is tuple:
        text = f"list of {_type_text(typing.get_args(inner)[0])}s"
    elif inner is datetime:
        text = "datetime"
    else:
        text = _TYPE_NAMES.get(inner, getattr(inner, "__name__", str(inner)))
    return f"{text} (optional)" if optional else text


_BOUNDS: tuple[tuple[type, str, str], ...] = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def _allowed(field: FieldInfo) -> str:
    """What a field accepts, for ``allowed:`` and the docs."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "allowed" in extra:
        return str(extra["allowed"])
    limits = [
        f"{sign} {getattr(meta, attr)}"
        for meta in field.metadata
        for kind, attr, sign in _BOUNDS
        if isinstance(meta, kind)
    ]
    text = _type_text(field.annotation)
    if any(getattr(meta, "min_length", 0) == 1 for meta in field.metadata):
        text = f"non-empty {text}"
    return f"{text} {' and '.join(limits)}" if limits else text


def _render(value: object) -> str:
    """A value as it would be written in TOML (secrets never reach this)."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "a table"
    text = value if isinstance(value, str) else str(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return json.dumps(text, ensure_ascii=False) if isinstance(value, str) else text


def _sub_model(field: FieldInfo) -> type[BaseModel] | None:
    inner, _ = _unwrap(field.annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _walk(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    for name, field in model.model_fields.items():
        sub = _sub_model(field)
        if sub is not None:
            yield from _walk(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def describe_options() -> list[OptionDoc]:
    """Every option as (key path, type, default, description), in file order."""
    return [
        OptionDoc(
            key,
            _allowed(field),
            _render(field.get_default(call_default_factory=True)),
            field.description or "",
        )
        for key, field in _walk(Config)
    ]


# --- errors ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the configuration."""

    source: str
    """The file path, ``environment variable CANDLES_...``, ``overrides`` or ``defaults``."""
    key: str
    """Dotted key path, e.g. ``client.queue_size`` or ``subscriptions.symbols[2]``."""
    problem: str
    allowed: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.problem}; allowed: {self.allowed}"


class ConfigError(ConfigurationError):
    """Invalid configuration; the message has one line per problem, never a traceback."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        """Every problem found, in the order found."""
        super().__init__("\n".join(str(p) for p in self.problems))


def _key_text(key: object) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text)


def _path_text(loc: Sequence[object]) -> str:
    return (
        "".join(
            _key_text(k) if isinstance(k, int) or i == 0 else "." + _key_text(k)
            for i, k in enumerate(loc)
        )
        or "(top level)"
    )


def _locate(loc: Sequence[object]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model holding ``loc`` and the field it names (None where it leaves the schema)."""
    model: type[BaseModel] | None = Config
    field: FieldInfo | None = None
    for key in loc:
        if isinstance(key, int) or model is None:
            continue
        field = model.model_fields.get(str(key))
        if field is None:
            return model, None
        sub = _sub_model(field)
        if sub is None:
            return model, field
        model, field = sub, None
    return model, field


def _secret_hint(key: str) -> str:
    name = "TASTYTRADE_REFRESH_TOKEN" if "refresh" in key or "token" in key else None
    name = name or ("TASTYTRADE_CLIENT_SECRET" if "secret" in key or "client" in key else None)
    where = f"the environment variable {name}" if name else "an environment variable"
    return (
        f"{key!r} looks like a secret, and secrets never go in the config file; "
        f"put it in {where} (source.tastytrade names the variables)"
    )


def _unknown_key(loc: Sequence[object]) -> tuple[str, str]:
    key = str(loc[-1])
    model, _ = _locate(loc[:-1])
    valid = list(model.model_fields) if model else []
    if not loc[:-1]:
        valid.append("profiles")
    if any(word in key.lower() for word in _SECRET_WORDS):
        problem = _secret_hint(key.lower())
    else:
        close = difflib.get_close_matches(key, valid, n=1)
        problem = f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    return problem, "the keys " + ", ".join(valid)


def _problem_text(error: Mapping[str, Any]) -> str:
    kind, loc, value = error["type"], error["loc"], error.get("input")
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind in ("model_type", "dict_type"):
        return f"expected a table ([{_path_text(loc)}]), got {_render(value)}"
    message = str(error["msg"]).replace("Input should be", "must be")
    problem = f"{message} (got {_render(value)})"
    if kind == "literal_error" and isinstance(value, str):
        choices = [str(c).strip("'") for c in re.findall(r"'[^']*'", error["ctx"]["expected"])]
        close = difflib.get_close_matches(value, choices, n=1)
        problem += f" (did you mean {close[0]!r}?)" if close else ""
    return problem


@dataclass(frozen=True, slots=True)
class _Layer:
    """One source of settings and where its keys are shown as coming from."""

    label: str
    prefix: tuple[str, ...]
    data: Mapping[str, Any]

    def depth(self, loc: Sequence[object]) -> int:
        """How many leading parts of ``loc`` this layer sets."""
        node: object = self.data
        for depth, key in enumerate(loc):
            in_table = isinstance(node, Mapping) and isinstance(key, str) and key in node
            in_list = isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)
            if not (in_table or in_list):
                return depth
            node = node[key]  # type: ignore[index]
        return len(loc)


def _problems(errors: ValidationError, layers: Sequence[_Layer]) -> list[ConfigProblem]:
    problems = []
    for error in errors.errors():
        loc = error["loc"]
        # The deepest-reaching layer set the offending key; ties go to the later layer.
        layer = max(reversed(layers), key=lambda candidate: candidate.depth(loc))
        if error["type"] == "extra_forbidden":
            problem, allowed = _unknown_key(loc)
        else:
            _, field = _locate(loc)
            problem = _problem_text(error)
            allowed = (
                _allowed(field) if field is not None else "a table of the keys listed in the docs"
            )
        key = _path_text((*layer.prefix, *loc))
        problems.append(ConfigProblem(layer.label, key, problem, allowed))
    return problems


# --- loading -----------------------------------------------------------------------------


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        old = merged.get(key)
        both = isinstance(old, Mapping) and isinstance(value, Mapping)
        merged[key] = _merge(old, value) if both else value  # type: ignore[arg-type]
    return merged


def _nest(path: Sequence[str], value: object) -> dict[str, Any]:
    for key in reversed(path[1:]):
        value = {key: value}
    return {path[0]: value}


def _env_layers(environ: Mapping[str, str]) -> list[_Layer]:
    layers = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        raw = environ[name]
        value: object = raw
        _, field = _locate(path)
        if field is None or _unwrap(field.annotation)[0] is not str:
            try:
                parsed = tomllib.loads(f"v = {raw}")
                value = parsed["v"] if list(parsed) == ["v"] else raw
            except tomllib.TOMLDecodeError:
                value = raw
        layers.append(_Layer(f"environment variable {name}", (), _nest(path, value)))
    return layers


def _overrides_layer(overrides: Mapping[str, Any]) -> _Layer:
    data: dict[str, Any] = {}
    for key, value in overrides.items():
        data = _merge(data, _nest(str(key).split("."), value))
    return _Layer("overrides", (), data)


def _syntax_problem(source: str, exc: Exception) -> ConfigProblem:
    if isinstance(exc, UnicodeDecodeError):
        return ConfigProblem(
            source, f"byte {exc.start}", "the file is not UTF-8 text", "a UTF-8 TOML file"
        )
    message = str(exc)
    match = _TOML_POSITION.search(message)
    where = f"line {match[1]}, column {match[2]}" if match else "(file)"
    problem = _TOML_POSITION.sub("", message).strip().rstrip(".")
    return ConfigProblem(source, where, f"TOML syntax error: {problem}", "TOML syntax (toml.io)")


def _split_profiles(
    source: str, raw: dict[str, Any]
) -> tuple[dict[str, Mapping[str, Any]], list[ConfigProblem]]:
    profiles = raw.pop("profiles", {})
    if not isinstance(profiles, dict):
        return {}, [ConfigProblem(source, "profiles", "must be a table", "[profiles.<name>]")]
    good: dict[str, Mapping[str, Any]] = {}
    problems: list[ConfigProblem] = []
    for name, body in profiles.items():
        if isinstance(body, dict):
            good[name] = body
        else:
            key = _path_text(("profiles", name))
            problems.append(ConfigProblem(source, key, "must be a table", "[profiles.<name>]"))
    return good, problems


def _validate(
    layers: Sequence[_Layer], context: Mapping[str, Any]
) -> tuple[Config | None, list[ConfigProblem]]:
    """Merge the layers in order and validate; problems are located in their layer."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer.data)
    try:
        return Config.model_validate(merged, context=context), []
    except ValidationError as exc:
        return None, _problems(exc, layers)


def loads_config(
    data: bytes | str,
    *,
    source: str = "<string>",
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Config:
    """Validate TOML text; see :func:`load_config` for the arguments.

    Args:
        data: the TOML document (bytes are decoded as UTF-8).
        source: how problems name the document, e.g. its path.

    Raises:
        ConfigError: listing every problem.
    """
    env = os.environ if environ is None else environ
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        raw = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([_syntax_problem(source, exc)]) from None
    profiles, problems = _split_profiles(source, raw)
    name = profile if profile is not None else env.get(PROFILE_ENV) or None
    if name is not None and name not in profiles:
        who = "profile argument" if profile is not None else f"environment variable {PROFILE_ENV}"
        known = ", ".join(sorted(profiles)) or "(none defined)"
        problems.append(ConfigProblem(who, "profiles", f"no profile {name!r}", known))
    base = _Layer(source, (), raw)
    chosen = [_Layer(source, ("profiles", name), profiles[name])] if name in profiles else []
    extra = _env_layers(env) + ([_overrides_layer(overrides)] if overrides else [])
    context = {"now": now or datetime.now(UTC)}
    config, found = _validate([base, *chosen, *extra], context)
    problems += found
    for other, body in profiles.items():
        if other != name:
            _, found = _validate([base, _Layer(source, ("profiles", other), body)], context)
            problems += [p for p in found if p.key.startswith("profiles.")]
    if problems or config is None:
        raise ConfigError(problems)
    return config


def load_config(
    path: Path | str | None = None,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Config:
    """Load and validate the configuration.

    Args:
        path: the TOML file; ``None`` uses ``$CANDLES_CONFIG`` if set, else defaults only.
        profile: profile to apply; ``None`` uses ``$CANDLES_PROFILE`` if set.
        overrides: final overrides, nested tables or dotted keys.
        environ: the environment (default ``os.environ``), for ``CANDLES_*`` variables.
        now: the current time, for checking ``subscriptions.from_time`` (default: now).

    Returns:
        The frozen configuration.

    Raises:
        ConfigError: the file named is missing or unreadable, or any setting is invalid;
            the message lists every problem.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    if path is None:
        return loads_config(
            "", source="defaults", profile=profile, overrides=overrides, environ=env, now=now
        )
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            [
                ConfigProblem(
                    str(path),
                    "(file)",
                    f"cannot read the file: {reason}",
                    "an existing, readable TOML file, or no file for the defaults",
                )
            ]
        ) from None
    return loads_config(
        data, source=str(path), profile=profile, overrides=overrides, environ=env, now=now
    )
