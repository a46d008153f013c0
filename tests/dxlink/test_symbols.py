"""Tests for pipeline/dxlink/symbols.py: candle symbol grammar (dxlink-protocol.md §5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.dxlink import CandleInterval, CandleSymbol, parse_interval
from pipeline.dxlink.symbols import PERIOD_UNITS

NORMALISATION = [
    # (input, normalized, period_label, period_ms)
    ("AAPL{=5m}", "AAPL{=5m}", "5m", 300_000),
    ("AAPL{=1d}", "AAPL{=d}", "1d", 86_400_000),
    ("AAPL{=d}", "AAPL{=d}", "1d", 86_400_000),
    ("GOOG{=1w,tho=true}", "GOOG{=w,tho=true}", "1w,tho=true", 604_800_000),
    ("QQQ{=5m}", "QQQ{=5m}", "5m", 300_000),
    ("AAPL{=1h}", "AAPL{=h}", "1h", 3_600_000),
    ("AAPL{=15s}", "AAPL{=15s}", "15s", 15_000),
    ("AAPL{=1.5h}", "AAPL{=1.5h}", "1.5h", 5_400_000),
    ("AAPL{=0.5s}", "AAPL{=0.5s}", "0.5s", 500),
    ("AAPL{=5.0m}", "AAPL{=5m}", "5m", 300_000),
    ("AAPL{=min}", "AAPL{=m}", "1m", 60_000),
    ("AAPL{=5minutes}", "AAPL{=5m}", "5m", 300_000),
    ("AAPL{=3days}", "AAPL{=3d}", "3d", 3 * 86_400_000),
    ("AAPL{=M}", "AAPL{=m}", "1m", 60_000),
    ("AAPL{=mo}", "AAPL{=mo}", "1mo", None),
    ("AAPL{=Month}", "AAPL{=mo}", "1mo", None),
    ("AAPL{=2months}", "AAPL{=2mo}", "2mo", None),
    ("AAPL{=o}", "AAPL{=o}", "1o", None),
    ("AAPL{=y}", "AAPL{=y}", "1y", None),
    ("AAPL{=1000t}", "AAPL{=1000t}", "1000t", None),
    ("AAPL{=ticks}", "AAPL{=t}", "1t", None),
    ("AAPL{=100v}", "AAPL{=100v}", "100v", None),
    ("AAPL{=2p}", "AAPL{=2p}", "2p", None),
    ("AAPL{=pm}", "AAPL{=pm}", "1pm", None),
    ("AAPL{=PM}", "AAPL{=pm}", "1pm", None),
    ("AAPL{=pr}", "AAPL{=pr}", "1pr", None),
    ("AAPL{=price_renko}", "AAPL{=pr}", "1pr", None),
    # Keys sorted "" < a < pl < price < tho; values lower-cased and shortened (§5.3).
    (
        "X{=5m,tho=TRUE,price=Bid,a=S}",
        "X{=5m,a=s,price=bid,tho=true}",
        "5m,a=s,price=bid,tho=true",
        300_000,
    ),
    ("X{=d,price=settlement}", "X{=d,price=s}", "1d,price=s", 86_400_000),
    ("X{=d,a=session,pl=0.25}", "X{=d,a=s,pl=0.25}", "1d,a=s,pl=0.25", 86_400_000),
    # Default-valued attributes are dropped (§5.3).
    ("X{=5m,price=last,tho=false,a=m}", "X{=5m}", "5m", 300_000),
    ("X{=5m,a=midnight}", "X{=5m}", "5m", 300_000),
    # Base symbols of every tastytrade instrument class (§5.1) and an exchange suffix.
    ("/ESZ25:XCME{=5m}", "/ESZ25:XCME{=5m}", "5m", 300_000),
    ("BTC/USD:CXTALP{=1h}", "BTC/USD:CXTALP{=h}", "1h", 3_600_000),
    (".SPLG230616C23{=d}", ".SPLG230616C23{=d}", "1d", 86_400_000),
    ("AAPL&Q{=5m}", "AAPL&Q{=5m}", "5m", 300_000),
    ("  AAPL{=5m}  ", "AAPL{=5m}", "5m", 300_000),
]


@pytest.mark.parametrize(("text", "normalized", "label", "period_ms"), NORMALISATION)
def test_parse_normalises_like_the_server(
    text: str, normalized: str, label: str, period_ms: int | None
) -> None:
    """Each symbol parses to the server's normalised form, store label and period length."""
    symbol = CandleSymbol.parse(text)
    assert symbol.normalized == normalized
    assert str(symbol) == normalized
    assert symbol.period_label == label
    assert symbol.period_ms == period_ms


BAD_SYMBOLS = [
    # (input, fragment the error must contain)
    ("AAPL", "has no candle period"),
    ("AAPL{tho=true}", "has no candle period"),
    ("{=5m}", "has no base symbol"),
    ("", "has no"),
    ("AAPL{=5m", "unbalanced"),
    ("AAPL=5m}", "unbalanced"),
    ("AAPL{{=5m}}", "unbalanced"),
    ("AAPL{=5m}x", "unbalanced"),
    ("AAPL{=5x}", '"5x" is not a candle period; use <number><unit> with unit one of s, m, h'),
    ("AAPL{=0m}", "must be positive"),
    ("AAPL{=-5m}", "must be positive"),
    ("AAPL{=0.0000001s}", "shorter than 1 ms"),
    ("AAPL{=5m,A=s}", "unknown attribute key 'A'"),
    ("AAPL{=5m,Tho=true}", "keys (case-sensitive)"),
    ("AAPL{=5m,session=x}", "unknown attribute key 'session'"),
    ("AAPL{=5m,tho=yes}", "tho='yes' is not valid; use tho=true|false"),
    ("AAPL{=5m,a=x}", "a='x' is not valid; use a=m|midnight|s|session"),
    ("AAPL{=5m,price=b}", "price='b' is not valid"),
    ("AAPL{=5m,pl=-1}", "pl='-1' is not valid"),
    ("AAPL{=5m,pl=nan}", "pl='nan' is not valid"),
    ("AAPL{=5m,,}", "is not key=value"),
    ("AAPL{=5m,tho}", "'tho' is not key=value"),
    ("AAPL{=5m,=1h}", "appears twice"),
    ("AAPL{=5m,tho=true,tho=true}", "appears twice"),
    ("AA PL{=5m}", "contains ' '"),
    ("AAPL&{=5m}", "exchange suffix"),
    ("AAPL&?{=5m}", "exchange suffix"),
    ("&Q{=5m}", "no base symbol"),
    ("AAPL{=mins}", '"mins" is not a candle period'),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_SYMBOLS)
def test_bad_symbols_are_rejected_with_a_helpful_message(text: str, fragment: str) -> None:
    """Invalid symbols raise ValueError saying what is wrong and what would be right."""
    with pytest.raises(ValueError) as info:
        CandleSymbol.parse(text)
    assert fragment in str(info.value)


def test_period_error_lists_valid_forms_verbatim() -> None:
    """The period error message is exactly the documented wording."""
    with pytest.raises(ValueError) as info:
        parse_interval("5x")
    assert str(info.value) == (
        '"5x" is not a candle period; use <number><unit> with unit one of s, m, h, d, w, mo, '
        "y, t, v, p (e.g. 5m, 1h, 1d)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5m", (5.0, "m")),
        ("m", (1.0, "m")),
        ("1.5h", (1.5, "h")),
        (".5d", (0.5, "d")),
        ("days", (1.0, "d")),
        ("mo", (1.0, "mo")),
        ("month", (1.0, "mo")),
        ("S", (1.0, "s")),
        ("sec", (1.0, "s")),
        ("10minute", (10.0, "m")),
        ("Vol", (1.0, "v")),
        ("opt", (1.0, "o")),
        ("PR", (1.0, "p")),  # Java CandleType.parse: prefix of PRICE wins over the code pr
    ],
)
def test_parse_interval_accepts_codes_prefixes_and_plurals(
    text: str, expected: tuple[float, str]
) -> None:
    """parse_interval maps codes, long-name prefixes and plurals to (value, unit)."""
    assert parse_interval(text) == expected


@pytest.mark.parametrize("text", ["", "5", "x", "5 m", "m5", "5mm", "1e3m", "inf", "+5m"])
def test_parse_interval_rejects_junk(text: str) -> None:
    """Non-period strings raise ValueError listing the valid forms."""
    with pytest.raises(ValueError, match="with unit one of"):
        parse_interval(text)


def test_parse_interval_rejects_non_strings() -> None:
    """A non-string period raises ValueError, not TypeError."""
    with pytest.raises(ValueError, match="must be a string"):
        parse_interval(5)  # type: ignore[arg-type]


def test_of_builds_the_same_symbol_as_parse() -> None:
    """CandleSymbol.of(base, interval, **attrs) equals parsing the spelled-out symbol."""
    built = CandleSymbol.of("AAPL", "5m", tho="true", price="BID")
    assert built == CandleSymbol.parse("AAPL{=5m,price=bid,tho=true}")
    assert built.normalized == "AAPL{=5m,price=bid,tho=true}"
    assert CandleSymbol.of("SPY", CandleInterval.D1).normalized == "SPY{=d}"


def test_of_rejects_unknown_attribute() -> None:
    """CandleSymbol.of validates attribute keys like parse does."""
    with pytest.raises(ValueError, match="unknown attribute key 'session'"):
        CandleSymbol.of("AAPL", "5m", session="true")


def test_direct_construction_validates_and_normalises() -> None:
    """Constructing a CandleSymbol directly validates the parts and normalises them."""
    symbol = CandleSymbol("AAPL", 1, "d", (("tho", "TRUE"), ("a", "m")))
    assert symbol.normalized == "AAPL{=d,tho=true}"
    assert symbol.attributes == (("tho", "true"),)
    with pytest.raises(ValueError, match="canonical unit code"):
        CandleSymbol("AAPL", 1.0, "day")
    with pytest.raises(ValueError, match="must be positive"):
        CandleSymbol("AAPL", float("nan"), "d")
    with pytest.raises(ValueError, match="must be a number"):
        CandleSymbol("AAPL", "5", "m")  # type: ignore[arg-type]


def test_equal_series_are_equal_and_hash_alike() -> None:
    """Symbols that normalise alike are equal and usable as the same dict key."""
    a = CandleSymbol.parse("GOOG{=1w,tho=true}")
    b = CandleSymbol.parse("GOOG{=week,tho=TRUE,price=last}")
    assert a == b
    assert {a: 1}[b] == 1


def test_time_based_and_exchange() -> None:
    """is_time_based covers s..y units; exchange is the &X suffix of the base."""
    assert CandleSymbol.parse("A{=5m}").is_time_based
    assert CandleSymbol.parse("A{=mo}").is_time_based
    assert not CandleSymbol.parse("A{=100t}").is_time_based
    assert not CandleSymbol.parse("A{=2v}").is_time_based
    assert CandleSymbol.parse("AAPL&Q{=5m}").exchange == "Q"
    assert CandleSymbol.parse("AAPL{=5m}").exchange is None


def test_candle_interval_values_are_valid_periods() -> None:
    """Every CandleInterval member is a valid period string and works as a plain str."""
    for interval in CandleInterval:
        value, unit = parse_interval(interval)
        assert CandleSymbol.of("X", interval).period_label == interval.value
        assert value >= 1 and unit in PERIOD_UNITS
    assert isinstance(CandleInterval.M5, str) and f"{CandleInterval.M5}" == "5m"


# Hypothesis strategies for valid symbols in arbitrary spellings.
_UNIT_SPELLINGS = {
    "t": ["t", "tick", "TICKS"],
    "s": ["s", "sec", "Seconds"],
    "m": ["m", "M", "min", "minutes"],
    "h": ["h", "hour", "HOURS"],
    "d": ["d", "day", "Days"],
    "w": ["w", "week", "weeks"],
    "mo": ["mo", "MO", "month", "months"],
    "o": ["o", "optexp"],
    "y": ["y", "year", "years"],
    "v": ["v", "volume"],
    "p": ["p", "price"],
    "pm": ["pm", "price_momentum"],
    "pr": ["pr", "price_renko"],
}
_bases = st.from_regex(r"[A-Z./][A-Z0-9./:]{0,11}(&[A-Z])?", fullmatch=True)
_counts = st.one_of(
    st.integers(min_value=1, max_value=100_000).map(str),
    st.sampled_from(["0.5", "1.5", "2.25", "10.0", ".5"]),
    st.just(""),
)


@st.composite
def _symbol_texts(draw: st.DrawFn) -> tuple[str, str]:
    unit = draw(st.sampled_from(sorted(_UNIT_SPELLINGS)))
    period = draw(_counts) + draw(st.sampled_from(_UNIT_SPELLINGS[unit]))
    attrs = draw(
        st.dictionaries(
            st.sampled_from(["a", "price", "tho", "pl"]),
            st.just(""),
        )
    )
    values = {
        "a": draw(st.sampled_from(["m", "s", "M", "Session"])),
        "price": draw(st.sampled_from(["last", "bid", "ASK", "mark", "s", "Settlement"])),
        "tho": draw(st.sampled_from(["true", "false", "TRUE"])),
        "pl": draw(st.sampled_from(["0.5", "12", "3.25"])),
    }
    items = [f"={period}", *(f"{key}={values[key]}" for key in attrs)]
    items = draw(st.permutations(items))
    return draw(_bases), "{" + ",".join(items) + "}"


@given(_symbol_texts())
def test_normalisation_is_idempotent(parts: tuple[str, str]) -> None:
    """parse(normalized) gives the same symbol and the same normalised text."""
    symbol = CandleSymbol.parse(parts[0] + parts[1])
    again = CandleSymbol.parse(symbol.normalized)
    assert again == symbol
    assert again.normalized == symbol.normalized
    assert CandleSymbol.parse(str(again)).normalized == symbol.normalized


@given(_symbol_texts())
def test_period_label_round_trips(parts: tuple[str, str]) -> None:
    """The store label rebuilds the same series via CandleSymbol.of."""
    symbol = CandleSymbol.parse(parts[0] + parts[1])
    period, *attrs = symbol.period_label.split(",")
    rebuilt = CandleSymbol.of(symbol.base, period, **dict(a.split("=") for a in attrs))
    assert rebuilt == symbol
    assert rebuilt.normalized == symbol.normalized


@given(
    st.integers(min_value=1, max_value=10_000),
    st.sampled_from(
        [("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000), ("w", 604_800_000)]
    ),
)
def test_period_ms_arithmetic(count: int, unit_ms: tuple[str, int]) -> None:
    """period_ms is count times the unit length, and 1<unit> equals <unit>."""
    unit, ms = unit_ms
    symbol = CandleSymbol.of("X", f"{count}{unit}")
    assert symbol.period_ms == count * ms
    assert CandleSymbol.of("X", f"1{unit}").period_ms == CandleSymbol.of("X", unit).period_ms
    assert (
        CandleSymbol.of("X", f"{count * 60}s").period_ms
        == CandleSymbol.of("X", f"{count}m").period_ms
    )
