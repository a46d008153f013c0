"""Property tests: invalid configuration always yields a ConfigError that names the key."""

from __future__ import annotations

import json
import math
import re
import typing
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import annotated_types
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.config import Config, ConfigError, loads_config

NOW = datetime(2025, 6, 2, tzinfo=UTC)
FUZZ = settings(max_examples=120, deadline=None)
LINE = re.compile(r"^.+?: .+?: .+; allowed: .+$")


def tables(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict[str, FieldInfo]]]:
    """(path, fields) for every table of the schema, via pydantic's public field API."""
    yield prefix, model.model_fields
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from tables(annotation, (*prefix, name))


SCHEMA = dict(tables(Config))
TABLES = sorted(SCHEMA)
VALID_KEYS = {
    path: set(fields) | ({"profiles"} if not path else set()) for path, fields in SCHEMA.items()
}
LEAVES: list[tuple[tuple[str, ...], FieldInfo]] = [
    ((*path, name), field)
    for path, fields in SCHEMA.items()
    for name, field in fields.items()
    if (*path, name) not in SCHEMA
]


def quote(text: str) -> str:
    """A TOML basic string (JSON escapes, but astral characters kept as they are)."""
    return json.dumps(text, ensure_ascii=False)


def toml_value(value: Any) -> str:
    """Render a value as TOML (inline tables for dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return ("-inf" if value < 0 else "inf") if math.isinf(value) else repr(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{quote(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def nested(path: tuple[str, ...], value: Any) -> str:
    """A document setting ``path`` to ``value``, as one line with inline tables."""
    for key in reversed(path[1:]):
        value = {key: value}
    return f"{quote(path[0])} = {toml_value(value)}\n"


def assert_clean_error(error: ConfigError) -> str:
    """The message is non-empty, one formatted line per problem, and no pydantic dump."""
    message = str(error)
    assert message and len(message.splitlines()) == len(error.problems)
    for line in message.splitlines():
        assert LINE.match(line), line
    assert "errors.pydantic.dev" not in message and "validation error" not in message
    assert "Traceback" not in message
    return message


TRICKY = [
    "99999999999999999999d", "1" * 30 + "s", "²", "1e999", "-1", "0", "nan", "inf", "1.5",
    "2025-13-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "1691402400",
    "wss://x", "http://u:p@h", "sqlite:", "postgres:", "5m", "1mo", "AAPL{=5m}", "&", "",
]  # fmt: skip
TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=20)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(),
    TEXT,
    st.sampled_from(TRICKY),
    st.datetimes(timezones=st.sampled_from([UTC, None])),
    st.dates(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
KEYS = st.text(
    st.characters(categories=("L", "N")) | st.sampled_from("_-"), min_size=1, max_size=12
)


@FUZZ
@given(st.binary(max_size=200))
def test_garbage_bytes_give_config_or_config_error(data: bytes) -> None:
    """Arbitrary bytes either load (e.g. empty or a comment) or raise ConfigError."""
    try:
        loads_config(data, source="fuzz.toml", environ={}, now=NOW)
    except ConfigError as error:
        assert_clean_error(error)


@FUZZ
@given(st.dictionaries(TEXT, VALUES, max_size=5))
def test_random_documents_give_config_or_config_error(document: dict[str, Any]) -> None:
    """Random tables of random values never raise anything but ConfigError."""
    text = "".join(f"{quote(key)} = {toml_value(value)}\n" for key, value in document.items())
    try:
        loads_config(text, source="fuzz.toml", environ={}, now=NOW)
    except ConfigError as error:
        assert_clean_error(error)


@FUZZ
@given(st.sampled_from(TABLES), KEYS, VALUES)
def test_unknown_keys_are_named(table: tuple[str, ...], key: str, value: Any) -> None:
    """A key that is not an option is reported by name, with its section's valid keys."""
    if key in VALID_KEYS[table]:
        return
    if not table:
        value = value if isinstance(value, dict) else {"x": value}
    try:
        loads_config(nested((*table, key), value), source="fuzz.toml", environ={}, now=NOW)
    except ConfigError as error:
        message = assert_clean_error(error)
        assert key in message
        assert any(valid in message for valid in VALID_KEYS[table])
    else:
        raise AssertionError(f"unknown key {key!r} in {table} was accepted")


def wrong_values(field: FieldInfo) -> st.SearchStrategy[Any]:
    """Values of a type the field never accepts."""
    tables = st.dictionaries(TEXT, SCALARS, max_size=3)
    if typing.get_origin(field.annotation) is dict:  # a table option: anything but a table
        return SCALARS | st.lists(SCALARS, min_size=1, max_size=3)
    if field.annotation in (int, float):
        words = TEXT.filter(lambda s: not re.fullmatch(r"\s*[-+]?[\d_.eE]*\s*|.*(inf|nan).*", s))
        return tables | words | st.lists(SCALARS, max_size=3)
    if field.annotation is bool:
        return tables | st.lists(SCALARS, max_size=3) | st.floats(0.01, 0.99)
    return tables | st.lists(tables, min_size=1, max_size=2)


@FUZZ
@given(st.data())
def test_wrongly_typed_values_are_named(data: st.DataObject) -> None:
    """A value of the wrong type is reported under the option's dotted key."""
    path, field = data.draw(st.sampled_from(LEAVES))
    value = data.draw(wrong_values(field))
    try:
        loads_config(nested(path, value), source="fuzz.toml", environ={}, now=NOW)
    except ConfigError as error:
        assert ".".join(path) in assert_clean_error(error)
    else:
        raise AssertionError(f"{'.'.join(path)} = {value!r} was accepted")


@FUZZ
@given(st.data())
def test_any_value_for_any_option_is_accepted_or_named(data: st.DataObject) -> None:
    """Whatever value an option gets, it either validates or the error names that option."""
    path, _ = data.draw(st.sampled_from(LEAVES))
    value = data.draw(VALUES)
    try:
        loads_config(nested(path, value), source="fuzz.toml", environ={}, now=NOW)
    except ConfigError as error:
        assert ".".join(path) in assert_clean_error(error)


def out_of_range(field: FieldInfo) -> st.SearchStrategy[Any] | None:
    """Numbers outside a field's bounds, or None for unbounded fields."""
    integer = field.annotation is int
    strategies: list[st.SearchStrategy[Any]] = []
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            below = int(meta.ge) - 1  # type: ignore[call-overload]
            strategies.append(
                st.integers(max_value=below)
                if integer
                else st.floats(max_value=float(meta.ge), exclude_max=True, allow_nan=False)  # type: ignore[arg-type]
            )
        elif isinstance(meta, annotated_types.Gt):
            strategies.append(
                st.integers(max_value=int(meta.gt))  # type: ignore[call-overload]
                if integer
                else st.floats(max_value=float(meta.gt), allow_nan=False)  # type: ignore[arg-type]
            )
        elif isinstance(meta, annotated_types.Le):
            strategies.append(
                st.integers(min_value=int(meta.le) + 1)  # type: ignore[call-overload]
                if integer
                else st.floats(min_value=float(meta.le), exclude_min=True, allow_nan=False)  # type: ignore[arg-type]
            )
    return st.one_of(strategies) if strategies else None


BOUNDED = [(path, field, s) for path, field in LEAVES if (s := out_of_range(field)) is not None]


@FUZZ
@given(st.data())
def test_out_of_range_values_are_named(data: st.DataObject) -> None:
    """A number outside an option's bounds is reported under its dotted key with the range."""
    path, _, strategy = data.draw(st.sampled_from(BOUNDED))
    value = data.draw(strategy)
    try:
        loads_config(nested(path, value), source="fuzz.toml", environ={}, now=NOW)
    except ConfigError as error:
        message = assert_clean_error(error)
        assert ".".join(path) in message
        assert ">" in message or "<" in message
    else:
        raise AssertionError(f"{'.'.join(path)} = {value!r} was accepted")


def test_every_bounded_numeric_option_is_fuzzed() -> None:
    """The out-of-range property covers every bounded number (guards the helper above)."""
    numeric = [path for path, field in LEAVES if field.annotation in (int, float)]
    assert sorted(path for path, _, _ in BOUNDED) == sorted(numeric)
