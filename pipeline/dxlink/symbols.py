"""Candle symbol grammar: parse, validate and normalise (dxlink-protocol.md §5).

A candle symbol is ``<base>[&<exchange>]{=<period>[,a=..][,pl=..][,price=..][,tho=true]}``.
The server answers with its *normalised* spelling of whatever we subscribed (§5.3), so
every component that routes events by symbol keys them by :attr:`CandleSymbol.normalized`;
normalising here exactly like the server is what makes ``AAPL{=1d}`` and the echoed
``AAPL{=d}`` the same series.

Parsing mirrors dxFeed's Java ``CandleSymbol``/``CandlePeriod``/``CandleType`` (§5.1):

* period type: an exact short code (``t s m h d w mo o y v p pm pr``) first, then any
  case-insensitive prefix of the long name in enum order (``min`` → minute, ``mo`` →
  month, ``M`` → minute), then a plural ``s`` (``days``). As a lenient fallback an
  upper-case short code (``PM``) is accepted too; we always send the canonical form.
* attribute keys are case-sensitive, values are not.
* a period value of 1 and default-valued attributes (``a=m``, ``price=last``,
  ``tho=false``) are dropped from the normalised form.

Deliberate differences from Java: a period is required (tastytrade rejects symbols without
one, §5.1), unknown attribute keys are rejected rather than carried along, and
``price=`` accepts only the full value names plus ``s``/``settlement`` (§5.1 says the
others cannot be abbreviated).

No I/O, no clock. Errors are ``ValueError`` with a message that names the bad part and
lists the valid forms.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "PERIOD_UNITS",
    "CandleInterval",
    "CandleSymbol",
    "parse_interval",
]

# §5.1 CandleType: canonical code -> (Java enum name, fixed length in ms or None).
# The order is the Java enum order, which decides prefix matches ("m" → MINUTE, not MONTH).
_UNITS: tuple[tuple[str, str, int | None], ...] = (
    ("t", "TICK", None),
    ("s", "SECOND", 1_000),
    ("m", "MINUTE", 60_000),
    ("h", "HOUR", 3_600_000),
    ("d", "DAY", 86_400_000),
    ("w", "WEEK", 604_800_000),
    ("mo", "MONTH", None),  # calendar month: no fixed length
    ("o", "OPTEXP", None),  # option-expiration month (3rd Friday): no fixed length
    ("y", "YEAR", None),  # calendar year: no fixed length
    ("v", "VOLUME", None),
    ("p", "PRICE", None),
    ("pm", "PRICE_MOMENTUM", None),
    ("pr", "PRICE_RENKO", None),
)

PERIOD_UNITS: frozenset[str] = frozenset(code for code, _, _ in _UNITS)
"""The canonical period unit codes."""

_UNIT_MS: dict[str, int | None] = {code: ms for code, _, ms in _UNITS}
_TIME_UNITS = frozenset({"s", "m", "h", "d", "w", "mo", "o", "y"})

_PERIOD_HELP = "use <number><unit> with unit one of s, m, h, d, w, mo, y, t, v, p (e.g. 5m, 1h, 1d)"
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")
_PERIOD = re.compile(r"(?P<value>\d+(?:\.\d*)?|\.\d+)?(?P<unit>[A-Za-z_]+)")
_EXCHANGE = re.compile(r"[A-Za-z0-9]")

# §5.1 attribute keys (case-sensitive) in normalised order (§5.3: "" < a < pl < price < tho).
_KEY_ORDER = ("a", "pl", "price", "tho")
_ALIGNMENTS = {"m": "m", "midnight": "m", "s": "s", "session": "s"}
_PRICES = {
    "last": "last",
    "bid": "bid",
    "ask": "ask",
    "mark": "mark",
    "s": "s",
    "settlement": "s",
}
_SESSIONS = {"true": "true", "false": "false"}
# §5.3: attributes whose default value the normalised form leaves out.
_DEFAULTS = {"a": "m", "price": "last", "tho": "false"}

_KEY_HELP = (
    "valid keys (case-sensitive) are '' (period, as in {=5m}), a=m|s, "
    "price=last|bid|ask|mark|s, tho=true, pl=<number>"
)


def _parse_unit(text: str, whole: str) -> str:
    """§5.1 CandleType.parse: exact code, then name prefix in enum order, then plural."""
    if text in PERIOD_UNITS:
        return text
    n = len(text)
    upper = text.upper()
    for code, name, _ in _UNITS:
        if len(name) >= n and name[:n] == upper:
            return code
        if text.endswith(("s", "S")) and name == upper[:-1]:
            return code
    lower = text.lower()
    if lower in PERIOD_UNITS:
        return lower
    raise ValueError(f'"{whole}" is not a candle period; {_PERIOD_HELP}')


def _check_period(value: float, unit: str, text: str) -> None:
    """Reject zero, negative, non-finite and sub-millisecond periods."""
    if not value > 0 or not math.isfinite(value):
        raise ValueError(
            f'"{text}" is not a candle period: the number must be positive; {_PERIOD_HELP}'
        )
    unit_ms = _UNIT_MS[unit]
    if unit_ms is not None and round(value * unit_ms) < 1:
        raise ValueError(
            f'"{text}" is not a candle period: it is shorter than 1 ms; {_PERIOD_HELP}'
        )


def parse_interval(text: str) -> tuple[float, str]:
    """Parse a period such as ``5m``, ``1.5h``, ``d`` or ``days`` (§5.1).

    Args:
        text: the period text; the number is optional (default 1) and may have decimals.

    Returns:
        ``(value, unit)`` with the canonical unit code, e.g. ``(5.0, "m")``.

    Raises:
        ValueError: the text is not a period, or its value is zero or negative.
    """
    if not isinstance(text, str):
        raise ValueError(
            f"a candle period must be a string, not {type(text).__name__}; {_PERIOD_HELP}"
        )
    if text.startswith("-") and _PERIOD.fullmatch(text[1:]):
        raise ValueError(
            f'"{text}" is not a candle period: the number must be positive; {_PERIOD_HELP}'
        )
    match = _PERIOD.fullmatch(text)
    if match is None:
        raise ValueError(f'"{text}" is not a candle period; {_PERIOD_HELP}')
    raw_value = match.group("value")
    value = 1.0 if raw_value is None else float(raw_value)
    unit = _parse_unit(match.group("unit"), text)
    _check_period(value, unit, text)
    return value, unit


def _format_number(value: float) -> str:
    """Java ``CandlePeriod.toString`` style: integral values without a decimal point."""
    if value == int(value):
        return str(int(value))
    return repr(value)


def _normalise_attribute(key: str, value: str) -> str:
    """Validate one non-period attribute and return its normalised value (§5.1, §5.3)."""
    lowered = value.lower()
    table = {"a": _ALIGNMENTS, "price": _PRICES, "tho": _SESSIONS}.get(key)
    if table is not None:
        normalised = table.get(lowered)
        if normalised is None:
            allowed = "|".join(dict.fromkeys(table))
            raise ValueError(f"{key}={value!r} is not valid; use {key}={allowed}")
        return normalised
    if key == "pl":
        if _NUMBER.fullmatch(value) is None or not float(value) > 0:
            raise ValueError(f"pl={value!r} is not valid; use pl=<positive number>, e.g. pl=0.5")
        return repr(float(value))
    raise ValueError(f"unknown attribute key {key!r}; {_KEY_HELP}")


def _validate_base(base: str, symbol: str) -> None:
    """Reject bases the server could never echo back unchanged."""
    if not base:
        raise ValueError(f"{symbol!r} has no base symbol; write e.g. AAPL{{=5m}}")
    bad = sorted({c for c in base if c in "{}=," or c.isspace()})
    if bad:
        raise ValueError(
            f"{symbol!r}: the base symbol {base!r} contains {''.join(bad)!r}; "
            "write <symbol>{=<period>,...} with braces only around the attributes"
        )
    if base.endswith("&") or (
        len(base) >= 2 and base[-2] == "&" and _EXCHANGE.fullmatch(base[-1]) is None
    ):
        raise ValueError(
            f"{symbol!r}: {base[-2:]!r} is not an exchange suffix; "
            "use &<letter or digit>, e.g. AAPL&Q"
        )
    if base == "&" or (len(base) == 2 and base[0] == "&"):
        raise ValueError(f"{symbol!r} has no base symbol before the exchange suffix")


@dataclass(frozen=True, slots=True)
class CandleSymbol:
    """A validated candle symbol; equal symbols have equal :attr:`normalized` forms.

    Build one with :meth:`parse` or :meth:`of`; direct construction validates too.
    """

    base: str
    """The streamer symbol before ``{``, e.g. ``AAPL``, ``/ESZ25:XCME``, ``AAPL&Q``."""
    period_value: float
    """The period count, e.g. ``5.0`` for ``5m`` (1 when omitted)."""
    period_unit: str
    """The canonical period unit code, e.g. ``"m"`` or ``"mo"``."""
    attributes: tuple[tuple[str, str], ...] = ()
    """Non-period attributes, normalised, defaults dropped, sorted by key."""
    normalized: str = field(init=False, repr=False, compare=False)
    """The server's form (§5.3), e.g. ``AAPL{=d}``, ``AAPL{=5m,tho=true}``; the series key."""

    def __post_init__(self) -> None:
        _validate_base(self.base, self.base)
        unit = self.period_unit
        if unit not in PERIOD_UNITS:
            raise ValueError(
                f"period_unit {unit!r} is not a canonical unit code; "
                f"use one of {', '.join(code for code, _, _ in _UNITS)}"
            )
        if isinstance(self.period_value, bool) or not isinstance(self.period_value, int | float):
            raise ValueError(f"period_value must be a number, not {self.period_value!r}")
        value = float(self.period_value)
        _check_period(value, unit, f"{self.period_value}{unit}")
        attributes = dict(self.attributes)
        if len(attributes) != len(self.attributes):
            raise ValueError(f"duplicate attribute keys in {self.attributes!r}")
        cleaned = {key: _normalise_attribute(key, attr) for key, attr in attributes.items()}
        kept = tuple(
            (key, cleaned[key])
            for key in _KEY_ORDER
            if key in cleaned and _DEFAULTS.get(key) != cleaned[key]
        )
        object.__setattr__(self, "period_value", value)
        object.__setattr__(self, "attributes", kept)
        period = "" if value == 1 else _format_number(value)
        parts = [f"={period}{unit}", *(f"{key}={attr}" for key, attr in kept)]
        object.__setattr__(self, "normalized", f"{self.base}{{{','.join(parts)}}}")

    @classmethod
    def parse(cls, text: str) -> CandleSymbol:
        """Parse a candle symbol such as ``AAPL{=5m,tho=true}`` (§5.1).

        Args:
            text: the symbol; surrounding whitespace is ignored.

        Returns:
            The validated symbol.

        Raises:
            ValueError: naming what is wrong (empty base, unbalanced braces, unknown key,
                bad period or value) and what would be right.
        """
        if not isinstance(text, str):
            raise ValueError(f"a candle symbol must be a string, not {type(text).__name__}")
        symbol = text.strip()
        opening = symbol.find("{")
        if (
            opening < 0
            or not symbol.endswith("}")
            or symbol.count("{") != 1
            or symbol.count("}") != 1
        ):
            if "{" not in symbol and "}" not in symbol:
                raise ValueError(
                    f"{symbol!r} has no candle period; write <symbol>{{=<period>}}, "
                    "e.g. AAPL{=5m}"
                )
            raise ValueError(
                f"{symbol!r} has unbalanced or misplaced braces; write "
                "<symbol>{=<period>[,key=value...]}, e.g. AAPL{=5m,tho=true}"
            )
        base, body = symbol[:opening], symbol[opening + 1 : -1]
        _validate_base(base, symbol)
        period: str | None = None
        attributes: dict[str, str] = {}
        for item in body.split(","):
            key, eq, text_value = item.partition("=")
            if not eq or not text_value:
                raise ValueError(f"{symbol!r}: {item!r} is not key=value; {_KEY_HELP}")
            if key in attributes or (key == "" and period is not None):
                raise ValueError(f"{symbol!r}: attribute {key!r} appears twice")
            if key == "":
                period = text_value
            else:
                attributes[key] = text_value
        if period is None:
            raise ValueError(
                f"{symbol!r} has no candle period; add one as {{=<period>}} and {_PERIOD_HELP}"
            )
        try:
            value, unit = parse_interval(period)
            return cls(base, value, unit, tuple(attributes.items()))
        except ValueError as exc:
            raise ValueError(f"{symbol!r}: {exc}") from None

    @classmethod
    def of(cls, base: str, interval: str, **attrs: str) -> CandleSymbol:
        """Build a symbol from parts, e.g. ``CandleSymbol.of("AAPL", "5m", tho="true")``.

        Args:
            base: the streamer symbol (``AAPL``, ``/ESZ25:XCME``).
            interval: any period accepted by :func:`parse_interval` (or a CandleInterval).
            **attrs: attribute keys ``a``, ``price``, ``tho``, ``pl`` with string values.

        Raises:
            ValueError: as for :meth:`parse`.
        """
        value, unit = parse_interval(str(interval))
        return cls(base, value, unit, tuple(attrs.items()))

    @property
    def period_label(self) -> str:
        """The store's ``period`` column: the count always written, e.g. ``1d``, ``5m,tho=true``."""
        head = f"{_format_number(self.period_value)}{self.period_unit}"
        return ",".join([head, *(f"{key}={value}" for key, value in self.attributes)])

    @property
    def period_ms(self) -> int | None:
        """Fixed period length in ms for s/m/h/d/w; ``None`` for calendar and non-time units."""
        unit_ms = _UNIT_MS[self.period_unit]
        return None if unit_ms is None else round(self.period_value * unit_ms)

    @property
    def is_time_based(self) -> bool:
        """True for periods measured in time (s..y), False for t/v/p/pm/pr (§6.5)."""
        return self.period_unit in _TIME_UNITS

    @property
    def exchange(self) -> str | None:
        """The ``&X`` exchange code of the base symbol, or ``None`` (§5.1)."""
        if len(self.base) >= 2 and self.base[-2] == "&":
            return self.base[-1]
        return None

    def __str__(self) -> str:
        return self.normalized


class CandleInterval(StrEnum):
    """Common candle periods, for convenience only: any valid period string works anywhere."""

    M1 = "1m"
    M2 = "2m"
    M3 = "3m"
    M5 = "5m"
    M10 = "10m"
    M15 = "15m"
    M30 = "30m"
    H1 = "1h"
    H2 = "2h"
    H4 = "4h"
    D1 = "1d"
    W1 = "1w"
    MO1 = "1mo"
