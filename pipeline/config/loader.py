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
:func:`find_config_file` adds the command line's rule: with neither, the nearest
``config.toml`` in the working directory or above it (``candles`` and ``pipeline.connect()``
use it, so a command run from ``notebooks/`` finds the project's ``config.toml``).

Paths (``store.path``, ``store.data_path``, the file of a ``sqlite:`` catalog): a relative
path in a config file is relative to the folder of that file, and so is a default the file
leaves alone; a relative path from the environment or the command line is relative to the
working directory, as is a default when no file is used. ``~`` is expanded everywhere. So a
config file means the same store wherever a command is run from.

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from pipeline.config.describe import sub_model, unwrap
from pipeline.config.errors import (
    ConfigError,
    ConfigProblem,
    Layer,
    LayerKind,
    locate,
    path_text,
    problems_in,
    syntax_problem,
)
from pipeline.config.models import Config, PathKind, path_kind

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILE",
    "ENV_PREFIX",
    "PROFILE_ENV",
    "ResolvedConfig",
    "Source",
    "find_config_file",
    "load_config",
    "loads_config",
    "resolve_config",
]

ENV_PREFIX = "CANDLES_"
PROFILE_ENV = "CANDLES_PROFILE"
CONFIG_ENV = "CANDLES_CONFIG"
CONFIG_FILE = "config.toml"
"""The file name :func:`find_config_file` looks for."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where an effective option value came from."""

    kind: LayerKind
    """``default``, ``file``, ``profile``, ``environment``, ``flag`` or ``overrides``."""
    detail: str = ""
    """The file, the profile's name, the variable or the flag; empty for defaults."""

    def __str__(self) -> str:
        return f"{self.kind} {self.detail}" if self.detail else self.kind


@dataclass(frozen=True)
class ResolvedConfig:
    """A validated configuration with where it came from."""

    config: Config
    file: Path | None
    """The config file used (absolute), or ``None`` when only defaults and overrides apply."""
    profile: str | None
    """The profile applied, or ``None``."""
    sources: Mapping[str, Source]
    """Per option key (``store.path``): the layer its effective value came from."""


def find_config_file(
    start: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The config file a command uses when none is named: ``$CANDLES_CONFIG``, else the
    nearest ``config.toml`` in ``start`` (default: the working directory) or a folder above.

    Returns:
        The path (``$CANDLES_CONFIG`` as given; a found file absolute), or ``None``.
    """
    env = os.environ if environ is None else environ
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    folder = Path.cwd() if start is None else Path(start).absolute()
    for candidate in (folder, *folder.parents):
        found = candidate / CONFIG_FILE
        if found.is_file():
            return found
    return None


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
        layers.append(
            Layer(f"environment variable {name}", (), _nest(path, value), kind="environment")
        )
    return layers


def _override_layers(overrides: Mapping[str, Any], flags: Mapping[str, str] | None) -> list[Layer]:
    """The overrides as one layer, except those ``flags`` names: a layer each, labelled with
    the command-line flag that set it (so errors say ``--symbol``, not a key path)."""
    plain: dict[str, Any] = {}
    flagged: list[Layer] = []
    for key, value in overrides.items():
        nested = _nest(str(key).split("."), value)
        flag = (flags or {}).get(str(key))
        if flag is None:
            plain = _merge(plain, nested)
        else:
            flagged.append(Layer(flag, (), nested, kind="flag"))
    return ([Layer("overrides", (), plain)] if plain else []) + flagged


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


def _options(
    model: type[BaseModel] = Config, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    """Every leaf option as (key path, field)."""
    for name, field in model.model_fields.items():
        sub = sub_model(field)
        if sub is not None:
            yield from _options(sub, (*prefix, name))
        else:
            yield (*prefix, name), field


def _deciding_layer(layers: Sequence[Layer], loc: tuple[str, ...]) -> Layer | None:
    """The last layer that sets ``loc`` itself (a later layer wins), or ``None``."""
    for layer in reversed(layers):
        if layer.depth(loc) == len(loc):
            return layer
    return None


def _get(data: Mapping[str, Any], loc: tuple[str, ...]) -> object:
    node: object = data
    for key in loc:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _put(data: dict[str, Any], loc: tuple[str, ...], value: object) -> dict[str, Any]:
    return _merge(data, _nest(loc, value))


def _resolve_path(value: str, kind: PathKind, folder: Path | None) -> str:
    """``value`` with ``~`` expanded and, when relative and ``folder`` is given, joined to it.

    URLs (object storage, ``s3://...``) and non-SQLite catalogs are left as they are.
    """
    if kind == "catalog":
        scheme, sep, target = value.partition(":")
        if scheme != "sqlite" or not sep or not target.strip():
            return value
        return f"sqlite:{_resolve_path(target.strip(), 'folder', folder)}"
    if "://" in value:
        return value
    path = Path(os.path.expanduser(value))
    if folder is not None and not path.is_absolute():
        path = folder / path
    return os.path.normpath(path) if folder is not None else str(path)


def _with_paths_resolved(
    merged: dict[str, Any], layers: Sequence[Layer], file_folder: Path | None
) -> dict[str, Any]:
    """Resolve every path option against the folder of the layer that set it (see "Paths")."""
    for loc, field in _options():
        kind = path_kind(field)
        if kind is None:
            continue
        layer = _deciding_layer(layers, loc)
        if layer is not None:
            value, folder = _get(merged, loc), layer.folder
        else:  # the default: relative to the config file in use, if any
            value, folder = field.get_default(call_default_factory=True), file_folder
        if isinstance(value, str) and value.strip():
            resolved = _resolve_path(value, kind, folder)
            if resolved != value:
                merged = _put(merged, loc, resolved)
    return merged


def _sources(layers: Sequence[Layer]) -> dict[str, Source]:
    """Per option key, the layer its effective value came from."""
    sources: dict[str, Source] = {}
    for loc, _ in _options():
        layer = _deciding_layer(layers, loc)
        key = ".".join(loc)
        if layer is None:
            sources[key] = Source("default")
        elif layer.kind == "environment":
            sources[key] = Source("environment", layer.label.removeprefix("environment variable "))
        elif layer.kind == "profile":
            sources[key] = Source("profile", layer.prefix[-1])
        else:
            sources[key] = Source(layer.kind, "" if layer.kind == "overrides" else layer.label)
    return sources


def _validate(
    layers: Sequence[Layer], context: Mapping[str, Any], file_folder: Path | None
) -> tuple[Config | None, list[ConfigProblem]]:
    """Merge the layers in order and validate; problems are located in their layer."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer.data)
    merged = _with_paths_resolved(merged, layers, file_folder)
    try:
        return Config.model_validate(merged, context=context), []
    except ValidationError as exc:
        return None, problems_in(exc, layers)


def _resolve_text(
    data: bytes | str,
    *,
    source: str,
    folder: Path | None,
    file: Path | None,
    profile: str | None,
    overrides: Mapping[str, Any] | None,
    flags: Mapping[str, str] | None,
    environ: Mapping[str, str] | None,
    now: datetime | None,
) -> ResolvedConfig:
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
    base = Layer(source, (), raw, kind="file", folder=folder)
    chosen = (
        [Layer(source, ("profiles", name), profiles[name], kind="profile", folder=folder)]
        if name in profiles
        else []
    )
    extra = _env_layers(env) + (_override_layers(overrides, flags) if overrides else [])
    layers = [base, *chosen, *extra]
    context = {"now": now or datetime.now(UTC)}
    config, found = _validate(layers, context, folder)
    problems += found
    for other, body in profiles.items():
        if other != name:
            profile_layer = Layer(source, ("profiles", other), body, kind="profile", folder=folder)
            _, found = _validate([base, profile_layer], context, folder)
            problems += [p for p in found if p.key.startswith("profiles.")]
    if problems or config is None:
        raise ConfigError(problems)
    return ResolvedConfig(config, file, name if name in profiles else None, _sources(layers))


def loads_config(
    data: bytes | str,
    *,
    source: str = "<string>",
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
    flags: Mapping[str, str] | None = None,
    folder: Path | str | None = None,
) -> Config:
    """Validate TOML text; see :func:`load_config` for the arguments.

    Args:
        data: the TOML document (bytes are decoded as UTF-8).
        source: how problems name the document, e.g. its path.
        folder: what relative paths in the document are relative to; ``None``: the working
            directory.

    Raises:
        ConfigError: listing every problem.
    """
    base = None if folder is None else Path(folder).absolute()
    return _resolve_text(
        data, source=source, folder=base, file=None, profile=profile, overrides=overrides,
        flags=flags, environ=environ, now=now,
    ).config  # fmt: skip


def resolve_config(
    path: Path | str | None = None,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    flags: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> ResolvedConfig:
    """Load and validate the configuration, keeping where each value came from.

    Args:
        path: the TOML file; ``None`` uses ``$CANDLES_CONFIG`` if set, else defaults only
            (:func:`find_config_file` is the command line's wider search).
        profile: profile to apply; ``None`` uses ``$CANDLES_PROFILE`` if set.
        overrides: final overrides, nested tables or dotted keys.
        flags: for dotted keys of ``overrides``, the command-line flag that set them
            (``{"store.path": "--store"}``): errors and sources name the flag.
        environ: the environment (default ``os.environ``), for ``CANDLES_*`` variables.
        now: the current time, for checking ``subscriptions.from_time`` (default: now).

    Raises:
        ConfigError: the file named is missing or unreadable, or any setting is invalid;
            the message lists every problem.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    options: dict[str, Any] = {
        "profile": profile, "overrides": overrides, "flags": flags, "environ": env, "now": now,
    }  # fmt: skip
    if path is None:
        return _resolve_text("", source="defaults", folder=None, file=None, **options)
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
    file = Path(path).absolute()
    return _resolve_text(data, source=str(path), folder=file.parent, file=file, **options)


def load_config(
    path: Path | str | None = None,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
    flags: Mapping[str, str] | None = None,
) -> Config:
    """Load and validate the configuration (:func:`resolve_config` without the sources).

    Args:
        path: the TOML file; ``None`` uses ``$CANDLES_CONFIG`` if set, else defaults only.
        profile: profile to apply; ``None`` uses ``$CANDLES_PROFILE`` if set.
        overrides: final overrides, nested tables or dotted keys.
        environ: the environment (default ``os.environ``), for ``CANDLES_*`` variables.
        now: the current time, for checking ``subscriptions.from_time`` (default: now).
        flags: see :func:`resolve_config`.

    Returns:
        The frozen configuration; relative paths from the file resolved against its folder.

    Raises:
        ConfigError: the file named is missing or unreadable, or any setting is invalid;
            the message lists every problem.
    """
    return resolve_config(path, profile, overrides, flags=flags, environ=environ, now=now).config
