"""The store against a dict model under arbitrary values (the fuzz the suite lacked).

Decoder, manager and config are fuzzed elsewhere (tests/dxlink/test_codec_fuzz.py, which
already covers deep nesting, huge arrays and non-UTF-8 frames through ClientProtocol;
tests/test_candles_model.py; tests/test_config_fuzz.py). What was missing is the last
hop: whatever floats the feed carries (NaN, infinities, -0.0, subnormals, huge values) and
whatever order of rewrites and deletions, the store must read back exactly what was
written last, since "no wrong value" is judged against the store. The series is a tick
series whose candles can share a time and differ by ``sequence`` (§4.2, issue 7), so a
key that lost its sequence somewhere would show as a missing or overwritten candle.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.schema import CANDLE_SCHEMA, KEY_COLUMNS
from pipeline.store import CandleStore

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
PERIOD = "1t"  # the store's label of tick candles (series key `{=t}`)
FLOATS = ("open", "high", "low", "close", "volume", "vwap", "bid_volume", "ask_volume",
          "imp_volatility", "open_interest")  # fmt: skip
_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308, float("nan"), -math.inf]),
)
_sequences = st.integers(0, 2)  # 0 alone takes the upsert's 3-column join, others the 4-column
_row = st.fixed_dictionaries(
    {"slot": st.integers(0, 5), "sequence": _sequences, **{name: _values for name in FLOATS},
     "count": st.integers(0, 2**62), "revision": st.integers(0, 2**40)}
)  # fmt: skip
_operation = st.one_of(
    st.tuples(st.just("upsert"), st.lists(_row, min_size=1, max_size=6)),
    st.tuples(
        st.just("delete"),
        st.lists(st.tuples(st.integers(0, 5), _sequences), min_size=1, max_size=3),
    ),
)
_symbols = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CandleStore]:
    path: Path = tmp_path_factory.mktemp("model") / "store"
    with CandleStore(path, verify_extensions=False) as opened:
        yield opened


def _frame(symbol: str, rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "symbol": symbol, "period": PERIOD,
                "time": T0 + timedelta(minutes=int(row["slot"])),  # type: ignore[call-overload]
                **{name: row[name] for name in (*FLOATS, "count", "revision", "sequence")},
                "ingested_at": None,
            }
            for row in rows
        ],
        schema=CANDLE_SCHEMA,
    )  # fmt: skip


def _deletions(symbol: str, keys: list[tuple[int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"symbol": [symbol] * len(keys), "period": [PERIOD] * len(keys),
         "time": [T0 + timedelta(minutes=slot) for slot, _ in keys],
         "sequence": [sequence for _, sequence in keys]},
        schema={n: CANDLE_SCHEMA[n] for n in KEY_COLUMNS},
    )  # fmt: skip


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def check_against_model(store: CandleStore, operations: list[tuple[str, list[object]]]) -> None:
    """Apply ``operations`` to the store and a dict model; the store must read back the model."""
    symbol = f"F{next(_symbols)}"
    model: dict[tuple[int, int], dict[str, object]] = {}
    for kind, items in operations:
        if kind == "upsert":
            rows: list[dict[str, object]] = items  # type: ignore[assignment]
            # Within a batch the highest revision wins, then the last row (store.upsert).
            winners: dict[tuple[int, int], dict[str, object]] = {}
            for row in rows:
                key = (int(row["slot"]), int(row["sequence"]))  # type: ignore[call-overload]
                kept = winners.get(key)
                if kept is None or row["revision"] >= kept["revision"]:  # type: ignore[operator]
                    winners[key] = row
            store.upsert(_frame(symbol, rows))
            model.update(winners)
        else:
            keys: list[tuple[int, int]] = items  # type: ignore[assignment]
            store.upsert(_frame(symbol, [])[:0], _deletions(symbol, keys))
            for key in keys:
                model.pop(key, None)
    t0_ms = int(T0.timestamp() * 1000)
    stored = store.history(f"{symbol}{{=t}}", t0_ms, t0_ms + 10 * 60_000)
    have = {
        (int((row["time"] - T0).total_seconds() // 60), row["sequence"]): row
        for row in stored.to_dicts()
    }
    assert sorted(have) == sorted(model)
    for key, row in model.items():
        wrong = [
            f"{name}: wrote {row[name]!r}, read {have[key][name]!r}"
            for name in (*FLOATS, "count")  # a revision alone does not rewrite (store.upsert)
            if not _same(row[name], have[key][name])
        ]
        assert wrong == [], f"(slot, sequence) {key}"


_FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # one store, a new symbol per example


@settings(max_examples=6, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(st.lists(_operation, min_size=1, max_size=5))
def test_the_store_reads_back_the_last_write_exactly(
    store: CandleStore, operations: list[tuple[str, list[object]]]
) -> None:
    """Any values, rewrites and deletions: the store holds exactly what a dict model holds."""
    check_against_model(store, operations)


@pytest.mark.soak
@settings(max_examples=300, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(st.lists(_operation, min_size=1, max_size=8))
def test_the_store_reads_back_the_last_write_exactly_long(
    store: CandleStore, operations: list[tuple[str, list[object]]]
) -> None:
    """The same property over many more examples (opt-in soak)."""
    check_against_model(store, operations)
