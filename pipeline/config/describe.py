"""Every configuration option as (key, type / allowed, default, description).

:func:`describe_options` walks :class:`~pipeline.config.models.Config`; the README's option
table and the ``allowed:`` part of every config error are generated from it, so the docs
cannot drift from the models.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.config.models import Config

__all__ = ["OptionDoc", "allowed_text", "describe_options", "render_value", "sub_model", "unwrap"]


class OptionDoc(NamedTuple):
    """One documented option."""

    key: str
    type: str
    default: str
    description: str


def unwrap(annotation: Any) -> tuple[Any, bool]:
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
    inner, optional = unwrap(annotation)
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


def allowed_text(field: FieldInfo) -> str:
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


def render_value(value: object) -> str:
    """A value as it would be written in TOML (secrets never reach this)."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else "a table"
    text = value if isinstance(value, str) else str(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return json.dumps(text, ensure_ascii=False) if isinstance(value, str) else text


def sub_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model a field holds when it is a nested section, else ``None``."""
    inner, _ = unwrap(field.annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _walk(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    for name, field in model.model_fields.items():
        sub = sub_model(field)
        if sub is not None:
            yield from _walk(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def describe_options() -> list[OptionDoc]:
    """Every option as (key path, type, default, description), in file order."""
    return [
        OptionDoc(
            key,
            allowed_text(field),
            render_value(field.get_default(call_default_factory=True)),
            field.description or "",
        )
        for key, field in _walk(Config)
    ]
