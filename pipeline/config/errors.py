"""Config errors: one line per problem, naming where it came from and what is allowed.

Each line reads ``<source>: <key.path>: <what is wrong>; allowed: <what is allowed>``.
:func:`problems_in` turns pydantic's errors into :class:`ConfigProblem` s, blaming the layer
(file, profile, environment variable, overrides) that set the offending key.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from pipeline.config.describe import allowed_text, render_value, sub_model
from pipeline.config.models import Config
from pipeline.dxlink import ConfigurationError

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "Layer",
    "LayerKind",
    "locate",
    "path_text",
    "problems_in",
    "syntax_problem",
]

_SECRET_WORDS = ("token", "secret", "password", "passwd", "credential", "api_key", "apikey")
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


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


def path_text(loc: Sequence[object]) -> str:
    """A location as written in messages: ``client.queue_size``, ``symbols[2]``."""
    return (
        "".join(
            _key_text(k) if isinstance(k, int) or i == 0 else "." + _key_text(k)
            for i, k in enumerate(loc)
        )
        or "(top level)"
    )


def locate(loc: Sequence[object]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model holding ``loc`` and the field it names (None where it leaves the schema)."""
    model: type[BaseModel] | None = Config
    field: FieldInfo | None = None
    for key in loc:
        if isinstance(key, int) or model is None:
            continue
        field = model.model_fields.get(str(key))
        if field is None:
            return model, None
        sub = sub_model(field)
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
    model, _ = locate(loc[:-1])
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
        return f"expected a table ([{path_text(loc)}]), got {render_value(value)}"
    message = str(error["msg"]).replace("Input should be", "must be")
    problem = f"{message} (got {render_value(value)})"
    if kind == "literal_error" and isinstance(value, str):
        choices = [str(c).strip("'") for c in re.findall(r"'[^']*'", error["ctx"]["expected"])]
        close = difflib.get_close_matches(value, choices, n=1)
        problem += f" (did you mean {close[0]!r}?)" if close else ""
    return problem


LayerKind = Literal["default", "file", "profile", "environment", "flag", "overrides"]
"""Where a layer of settings comes from (``candles config check --show`` names it)."""


@dataclass(frozen=True, slots=True)
class Layer:
    """One source of settings and where its keys are shown as coming from."""

    label: str
    """How error lines name it: the file, ``environment variable CANDLES_...``, ``--store``."""
    prefix: tuple[str, ...]
    """Where its data sits in the file (a profile's ``("profiles", name)``), for error lines."""
    data: Mapping[str, Any]
    kind: LayerKind = "overrides"
    folder: Path | None = None
    """The folder its relative paths are relative to (its config file's); ``None``: the
    working directory."""

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


def problems_in(errors: ValidationError, layers: Sequence[Layer]) -> list[ConfigProblem]:
    """One :class:`ConfigProblem` per pydantic error, blamed on the layer that set the key."""
    problems = []
    for error in errors.errors():
        loc = error["loc"]
        # The deepest-reaching layer set the offending key; ties go to the later layer.
        layer = max(reversed(layers), key=lambda candidate: candidate.depth(loc))
        if error["type"] == "extra_forbidden":
            problem, allowed = _unknown_key(loc)
        else:
            _, field = locate(loc)
            problem = _problem_text(error)
            allowed = (
                allowed_text(field)
                if field is not None
                else "a table of the keys listed in the docs"
            )
        key = path_text((*layer.prefix, *loc))
        problems.append(ConfigProblem(layer.label, key, problem, allowed))
    return problems


def syntax_problem(source: str, exc: Exception) -> ConfigProblem:
    """The problem of a file that is not UTF-8 or not TOML, with its line and column."""
    if isinstance(exc, UnicodeDecodeError):
        return ConfigProblem(
            source, f"byte {exc.start}", "the file is not UTF-8 text", "a UTF-8 TOML file"
        )
    message = str(exc)
    match = _TOML_POSITION.search(message)
    where = f"line {match[1]}, column {match[2]}" if match else "(file)"
    problem = _TOML_POSITION.sub("", message).strip().rstrip(".")
    return ConfigProblem(source, where, f"TOML syntax error: {problem}", "TOML syntax (toml.io)")
