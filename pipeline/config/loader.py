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

The parts: the models (:mod:`pipeline.config.models`), error lines
(:mod:`pipeline.config.errors`) and :func:`describe_options`, which lists every option (key,
type, default, description) for the README and the CLI (:mod:`pipeline.config.describe`).
This module loads and layers; the package :mod:`pipeline.config` exports the public names.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.config.describe import unwrap
from pipeline.config.errors import (
    ConfigError,
    ConfigProblem,
    Layer,
    locate,
    path_text,
    problems_in,
    syntax_problem,
)
from pipeline.config.models import (
    Config,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "PROFILE_ENV",
    "load_config",
    "loads_config",
]

ENV_PREFIX = "CANDLES_"
PROFILE_ENV = "CANDLES_PROFILE"
CONFIG_ENV = "CANDLES_CONFIG"


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


def _env_layers(environ: Mapping[str, str]) -> list[Layer]:
    layers = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        raw = environ[name]
        value: object = raw
        _, field = locate(path)
        if field is None or unwrap(field.annotation)[0] is not str:
            try:
                parsed = tomllib.loads(f"v = {raw}")
                value = parsed["v"] if list(parsed) == ["v"] else raw
            except tomllib.TOMLDecodeError:
                value = raw
        layers.append(Layer(f"environment variable {name}", (), _nest(path, value)))
    return layers


def _overrides_layer(overrides: Mapping[str, Any]) -> Layer:
    data: dict[str, Any] = {}
    for key, value in overrides.items():
        data = _merge(data, _nest(str(key).split("."), value))
    return Layer("overrides", (), data)


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
            key = path_text(("profiles", name))
            problems.append(ConfigProblem(source, key, "must be a table", "[profiles.<name>]"))
    return good, problems


def _validate(
    layers: Sequence[Layer], context: Mapping[str, Any]
) -> tuple[Config | None, list[ConfigProblem]]:
    """Merge the layers in order and validate; problems are located in their layer."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer.data)
    try:
        return Config.model_validate(merged, context=context), []
    except ValidationError as exc:
        return None, problems_in(exc, layers)


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
        raise ConfigError([syntax_problem(source, exc)]) from None
    profiles, problems = _split_profiles(source, raw)
    name = profile if profile is not None else env.get(PROFILE_ENV) or None
    if name is not None and name not in profiles:
        who = "profile argument" if profile is not None else f"environment variable {PROFILE_ENV}"
        known = ", ".join(sorted(profiles)) or "(none defined)"
        problems.append(ConfigProblem(who, "profiles", f"no profile {name!r}", known))
    base = Layer(source, (), raw)
    chosen = [Layer(source, ("profiles", name), profiles[name])] if name in profiles else []
    extra = _env_layers(env) + ([_overrides_layer(overrides)] if overrides else [])
    context = {"now": now or datetime.now(UTC)}
    config, found = _validate([base, *chosen, *extra], context)
    problems += found
    for other, body in profiles.items():
        if other != name:
            _, found = _validate([base, Layer(source, ("profiles", other), body)], context)
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
