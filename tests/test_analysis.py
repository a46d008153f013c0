"""pipeline.analysis without a kernel: a small hand-made store with known answers."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import matplotlib
import numpy as np
import polars as pl
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pipeline import analysis
from pipeline.schema import CANDLE_SCHEMA
from pipeline.store import CandleStore, StoreError

matplotlib.use("Agg")

T0 = datetime(2025, 8, 27, 13, 30, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
FLUSH_LAG = timedelta(seconds=5)

# AAPL 1m: minutes 0, 1, 2, 6, 7 (3, 4 and 5 missing); the candle at minute 6 was revised twice.
AAPL_1M = [(0, 100.0), (1, 110.0), (2, 99.0), (6, 99.0), (7, 100.0)]
REVISED_MINUTE = 6
REVISED_AT = T0 + 17 * MINUTE


def row(
    symbol: str,
    period: str,
    time: datetime,
    close: float,
    *,
    open_: float | None = None,
    revision: int = 0,
    ingested_at: datetime,
) -> dict[str, object]:
    """One store row with a 1-wide range around open and close."""
    start = close if open_ is None else open_
    return {
        "symbol": symbol,
        "period": period,
        "time": time,
        "open": start,
        "high": max(start, close) + 1.0,
        "low": min(start, close) - 1.0,
        "close": close,
        "volume": 1000.0,
        "vwap": close,
        "count": 10,
        "bid_volume": 400.0,
        "ask_volume": 500.0,
        "imp_volatility": math.nan,
        "open_interest": math.nan,
        "revision": revision,
        "ingested_at": ingested_at,
    }


def sample_rows() -> list[dict[str, object]]:
    """The hand-made store: AAPL 1m with a gap and a revision, AAPL 5m, SPY 1m, AAPL 100t."""
    rows = []
    for minute, close in AAPL_1M:
        time = T0 + minute * MINUTE
        revised = minute == REVISED_MINUTE
        rows.append(
            row(
                "AAPL", "1m", time, close,
                revision=2 if revised else 0,
                ingested_at=REVISED_AT if revised else time + MINUTE + FLUSH_LAG,
            )
        )  # fmt: skip
    for i, close in enumerate((101.0, 103.0)):
        time = T0 + 5 * i * MINUTE
        rows.append(row("AAPL", "5m", time, close, ingested_at=time + 5 * MINUTE + FLUSH_LAG))
    for i, close in enumerate((50.0, 51.0)):
        time = T0 + i * MINUTE
        rows.append(row("SPY", "1m", time, close, ingested_at=time + MINUTE + FLUSH_LAG))
    for i, close in enumerate((100.0, 100.5)):
        time = T0 + i * 7 * MINUTE  # tick candles: no fixed length, no gaps, no lag
        rows.append(row("AAPL", "100t", time, close, ingested_at=time + FLUSH_LAG))
    return rows


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("analysis") / "data"
    with CandleStore(path, verify_extensions=False) as store:
        store.upsert(pl.DataFrame(sample_rows(), schema=CANDLE_SCHEMA))
    return path


@pytest.fixture(scope="module")
def con(store_dir: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = analysis.connect(store_dir, verify_extensions=False)
    yield connection
    connection.close()


@pytest.fixture
def figures() -> Iterator[None]:
    """Close every figure a test made, so none leaks into the next."""
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def returns_frame(values: dict[str, list[tuple[datetime, float]]]) -> pl.DataFrame:
    """A log_returns-shaped frame from per-symbol (time, return) lists (period 1m)."""
    rows = [
        {"symbol": symbol, "period": "1m", "time": time, "close": 1.0, "log_return": value}
        for symbol, points in values.items()
        for time, value in points
    ]
    return pl.DataFrame(rows).cast({"time": pl.Datetime("ms", "UTC")})


# ------------------------------------------------------------------ locations


def test_store_location_is_candles_store_else_the_config_file_else_data(tmp_path: Path) -> None:
    """$CANDLES_STORE wins; else the found config file's store.path; else 'data' (also when
    CANDLES_STORE is blank)."""
    bare = tmp_path / "bare"
    bare.mkdir()
    assert analysis.store_location({}, cwd=bare).path == Path("data")
    assert analysis.store_location({"CANDLES_STORE": "  "}, cwd=bare).path == Path("data")
    named = analysis.store_location({"CANDLES_STORE": "/srv/candles"}, cwd=bare)
    assert (named.path, named.found_by) == (Path("/srv/candles"), "$CANDLES_STORE")
    (tmp_path / "config.toml").write_text('[store]\npath = "lake"\n')
    found = analysis.store_location({}, cwd=bare)
    assert found.path == tmp_path / "lake"
    assert found.found_by == f"store.path in {tmp_path / 'config.toml'}"


def test_figures_dir_only_when_set() -> None:
    """Figures go to $CANDLES_FIGURES when set and non-blank; otherwise nowhere."""
    assert analysis.figures_dir({}) is None
    assert analysis.figures_dir({"CANDLES_FIGURES": ""}) is None
    assert analysis.figures_dir({"CANDLES_FIGURES": "out/figs"}) == Path("out/figs")


def test_connect_reads_the_store_named_by_the_environment(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """connect() with no path opens $CANDLES_STORE, with the views attached."""
    monkeypatch.setenv("CANDLES_STORE", str(store_dir))
    con = analysis.connect(verify_extensions=False)
    try:
        assert con.execute("SELECT count(*) FROM candles").fetchone() == (len(sample_rows()),)
        assert con.execute("SELECT count(*) FROM latest_candles").fetchone() == (4,)
    finally:
        con.close()


def test_connect_without_a_store_says_how_to_point_at_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing store names the folder and, for the default lookup, how it was found."""
    monkeypatch.setenv("CANDLES_STORE", str(tmp_path / "nowhere"))
    with pytest.raises(StoreError, match=r"nowhere.*found by \$CANDLES_STORE; set CANDLES_STORE"):
        analysis.connect(verify_extensions=False)
    with pytest.raises(StoreError, match="nowhere") as raised:
        analysis.connect(tmp_path / "nowhere", verify_extensions=False)
    assert "CANDLES_STORE" not in str(raised.value)


def test_connection_cannot_change_the_store(con: duckdb.DuckDBPyConnection) -> None:
    """The notebook connection is read-only: a DELETE fails and nothing is lost."""
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DELETE FROM candles")
    assert con.execute("SELECT count(*) FROM candles").fetchone() == (len(sample_rows()),)


# ------------------------------------------------------------------ loading


def test_load_candles_one_series_in_store_schema(con: duckdb.DuckDBPyConnection) -> None:
    """One symbol and period come back oldest first, typed like the store's frames."""
    frame = analysis.load_candles(con, "AAPL", "1m")
    assert frame.schema == pl.Schema(CANDLE_SCHEMA)
    assert frame["time"].to_list() == [T0 + m * MINUTE for m, _ in AAPL_1M]
    assert frame["close"].to_list() == [close for _, close in AAPL_1M]


def test_load_candles_several_or_all_symbols(con: duckdb.DuckDBPyConnection) -> None:
    """A list picks those symbols; None takes every symbol of the period, sorted."""
    both = analysis.load_candles(con, ["SPY", "AAPL"], "1m")
    assert both.select("symbol").unique(maintain_order=True)["symbol"].to_list() == [
        "AAPL",
        "SPY",
    ]
    assert analysis.load_candles(con, None, "1m").equals(both)
    assert analysis.load_candles(con, period="5m").height == 2


def test_load_candles_time_bounds(con: duckdb.DuckDBPyConnection) -> None:
    """start is inclusive and end exclusive; an empty window of a stored series is empty."""
    frame = analysis.load_candles(con, "AAPL", "1m", start=T0 + MINUTE, end=T0 + 6 * MINUTE)
    assert frame["time"].to_list() == [T0 + MINUTE, T0 + 2 * MINUTE]
    empty = analysis.load_candles(con, "AAPL", "1m", start=T0 + timedelta(days=1))
    assert empty.height == 0
    assert empty.schema == pl.Schema(CANDLE_SCHEMA)


def test_load_candles_rejects_naive_bounds(con: duckdb.DuckDBPyConnection) -> None:
    """A datetime without time zone is refused with an example of an aware one."""
    with pytest.raises(ValueError, match=r"no time zone.*tzinfo=UTC"):
        analysis.load_candles(con, "AAPL", "1m", start=datetime(2025, 8, 27))


def test_load_candles_unknown_series_lists_what_is_stored(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """Asking for a series the store lacks lists the series it has."""
    with pytest.raises(ValueError, match=r"no candles for MSFT 1m.*AAPL 1m, AAPL 5m"):
        analysis.load_candles(con, "MSFT", "1m")
    with pytest.raises(ValueError, match="no candles for period 1h"):
        analysis.load_candles(con, None, "1h")


# ------------------------------------------------------------------ returns


def test_log_returns_per_series(con: duckdb.DuckDBPyConnection) -> None:
    """Each series' returns are ln(close / previous close); its first candle has none."""
    returns = analysis.log_returns(analysis.load_candles(con, None, "1m"))
    aapl = returns.filter(pl.col("symbol") == "AAPL")
    closes = [close for _, close in AAPL_1M]
    expected = [math.log(b / a) for a, b in itertools.pairwise(closes)]
    assert aapl["log_return"].to_list() == pytest.approx(expected)
    assert aapl["time"][0] == T0 + MINUTE
    spy = returns.filter(pl.col("symbol") == "SPY")
    assert spy["log_return"].to_list() == pytest.approx([math.log(51 / 50)])


def test_realized_volatility_per_window(figures: None) -> None:
    """Root of summed squared returns per window, annualised on request, empty windows kept."""
    hour = timedelta(hours=1)
    returns = returns_frame(
        {
            "AAPL": [(T0, 0.03), (T0 + MINUTE, -0.04), (T0 + 2 * hour, 0.01)],
            "SPY": [(T0, 0.02)],
        }
    )
    vol = analysis.realized_volatility(returns, every=hour)
    window = datetime(2025, 8, 27, 13, tzinfo=UTC)
    assert vol.select("symbol", "time", "returns").rows() == [
        ("AAPL", window, 2),
        ("AAPL", window + hour, 0),
        ("AAPL", window + 2 * hour, 1),
        ("SPY", window, 1),
    ]
    values = vol["realized_vol"].to_list()
    assert values[1] is None
    assert [values[0], values[2], values[3]] == pytest.approx([0.05, 0.01, 0.02])
    yearly = analysis.realized_volatility(returns, every=hour, windows_per_year=100.0)
    assert yearly["realized_vol"][0] == pytest.approx(0.5)


def test_volatility_arguments_are_checked() -> None:
    """A non-positive window or year count is refused, naming the argument."""
    returns = returns_frame({"AAPL": [(T0, 0.01)]})
    with pytest.raises(ValueError, match="every must be a positive duration"):
        analysis.realized_volatility(returns, every=timedelta(0))
    with pytest.raises(ValueError, match="per year must be positive"):
        analysis.realized_volatility(returns, windows_per_year=0)
    with pytest.raises(ValueError, match="per year must be positive"):
        analysis.volatility_summary(returns, periods_per_year=-1)
    with pytest.raises(ValueError, match=r"lacks columns \['log_return'\]"):
        analysis.realized_volatility(returns.drop("log_return"))


def test_volatility_summary_annualises_the_standard_deviation() -> None:
    """Annualised volatility is the sample std of the returns times sqrt(periods per year)."""
    values = [0.01, -0.02, 0.03]
    returns = returns_frame({"AAPL": [(T0 + i * MINUTE, v) for i, v in enumerate(values)]})
    summary = analysis.volatility_summary(returns, periods_per_year=400.0)
    assert summary["returns"].to_list() == [3]
    assert summary["total_log_return"][0] == pytest.approx(0.02)
    assert summary["annualized_vol"][0] == pytest.approx(float(np.std(values, ddof=1)) * 20)


# ------------------------------------------------------------------ data quality


def test_coverage_counts_expected_missing_and_revised(con: duckdb.DuckDBPyConnection) -> None:
    """Missing periods come from candle_gaps; coverage is stored over expected candles."""
    rows = {(r["symbol"], r["period"]): r for r in analysis.coverage(con).iter_rows(named=True)}
    aapl = rows[("AAPL", "1m")]
    assert (aapl["candles"], aapl["gaps"], aapl["missing"], aapl["revised"]) == (5, 1, 3, 1)
    assert aapl["coverage"] == pytest.approx(5 / 8)
    assert (aapl["first"], aapl["last"]) == (T0, T0 + 7 * MINUTE)
    assert rows[("SPY", "1m")]["coverage"] == 1.0
    ticks = rows[("AAPL", "100t")]
    assert (ticks["candles"], ticks["missing"], ticks["coverage"]) == (2, 0, None)


def test_gaps_largest_first_and_filtered(con: duckdb.DuckDBPyConnection) -> None:
    """gaps() lists candle_gaps rows by size; min_missing drops the small ones."""
    holes = analysis.gaps(con)
    assert holes.rows() == [("AAPL", "1m", T0 + 3 * MINUTE, T0 + 6 * MINUTE, 3)]
    assert analysis.gaps(con, min_missing=4).height == 0
    with pytest.raises(ValueError, match="min_missing must be at least 1"):
        analysis.gaps(con, min_missing=0)


def test_revisions_list_revised_candles_with_delay(con: duckdb.DuckDBPyConnection) -> None:
    """A revised candle is listed by its key (sequence too), revision and delay after its end."""
    revised = analysis.revisions(con)
    time = T0 + REVISED_MINUTE * MINUTE
    assert revised.rows() == [
        ("AAPL", "1m", time, 0, 2, REVISED_AT, REVISED_AT - (time + MINUTE)),
    ]


def test_ingestion_lag_is_time_after_the_candle_ended(con: duckdb.DuckDBPyConnection) -> None:
    """Lag = ingested_at - (time + period); null for tick candles; since filters by time."""
    lag = analysis.ingestion_lag(con)
    by_series = lag.group_by("symbol", "period").agg(pl.col("lag").unique())
    lags = {(s, p): set(v) for s, p, v in by_series.iter_rows()}
    assert lags[("SPY", "1m")] == {FLUSH_LAG}
    assert lags[("AAPL", "5m")] == {FLUSH_LAG}
    assert lags[("AAPL", "1m")] == {FLUSH_LAG, REVISED_AT - (T0 + 7 * MINUTE)}
    assert lags[("AAPL", "100t")] == {None}
    later = analysis.ingestion_lag(con, since=T0 + 6 * MINUTE)
    assert later.select("symbol", "period", "time").rows() == [
        ("AAPL", "100t", T0 + 7 * MINUTE),
        ("AAPL", "1m", T0 + 6 * MINUTE),
        ("AAPL", "1m", T0 + 7 * MINUTE),
    ]


def test_lag_summary_in_seconds(con: duckdb.DuckDBPyConnection) -> None:
    """Median, 95th percentile and maximum lag per series, in seconds."""
    summary = analysis.lag_summary(analysis.ingestion_lag(con))
    aapl = summary.filter(pl.col("symbol") == "AAPL", pl.col("period") == "1m").row(0)
    revised_s = (REVISED_AT - (T0 + 7 * MINUTE)).total_seconds()
    assert aapl[:4] == ("AAPL", "1m", 5, 5.0)
    assert aapl[4] == pytest.approx(5.0 + 0.8 * (revised_s - 5.0))
    assert aapl[5] == revised_s


# ------------------------------------------------------------------ figures


def body_rectangles(fig: Figure) -> list[Rectangle]:
    price_ax = fig.axes[0]
    return [p for p in price_ax.patches if isinstance(p, Rectangle)]


def test_plot_candles_draws_a_body_per_candle(
    con: duckdb.DuckDBPyConnection, figures: None
) -> None:
    """Every candle gets a body from open to close, coloured by direction, and a volume bar."""
    candles = analysis.load_candles(con, "AAPL", "1m").with_columns(
        pl.col("close").shift(1).fill_null(100.0).alias("open")
    )
    fig = analysis.plot_candles(candles)
    bodies = body_rectangles(fig)
    assert len(bodies) == candles.height
    assert len(fig.axes[1].patches) == candles.height
    up, down = to_rgba(analysis.UP_COLOR), to_rgba(analysis.DOWN_COLOR)
    expected = [up if c >= o else down for o, c in candles.select("open", "close").rows()]
    assert [body.get_facecolor() for body in bodies] == expected
    tallest = max(bodies, key=lambda body: body.get_height())
    assert tallest.get_height() == pytest.approx(11.0)  # 99 -> 110
    assert fig.axes[0].get_title() == "AAPL 1m"


def test_plot_candles_refuses_several_series(con: duckdb.DuckDBPyConnection, figures: None) -> None:
    """A frame with two series is refused with the series named and a filter example."""
    with pytest.raises(ValueError, match=r"one series; the frame holds AAPL 1m, SPY 1m"):
        analysis.plot_candles(analysis.load_candles(con, None, "1m"))
    with pytest.raises(ValueError, match="none"):
        analysis.plot_candles(analysis.load_candles(con, "AAPL", "1m").clear())


def test_plot_volatility_one_line_per_series(figures: None) -> None:
    """Each series is one line; an empty window is a break (NaN), not a joined segment."""
    hour = timedelta(hours=1)
    returns = returns_frame({"AAPL": [(T0, 0.03), (T0 + 2 * hour, 0.01)], "SPY": [(T0, 0.02)]})
    fig = analysis.plot_volatility(analysis.realized_volatility(returns, every=hour))
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["AAPL 1m", "SPY 1m"]
    assert np.isnan(np.asarray(lines[0].get_ydata(), dtype=float)).tolist() == [
        False,
        True,
        False,
    ]


def test_plot_coverage_panel_per_period_with_gaps(
    con: duckdb.DuckDBPyConnection, figures: None
) -> None:
    """One panel per period; the AAPL 1m gap is drawn in the gap colour on its row."""
    fig = analysis.plot_coverage(analysis.coverage(con), analysis.gaps(con))
    assert [ax.get_ylabel() for ax in fig.axes] == ["100t", "1m", "5m"]
    minute_panel = fig.axes[1]
    assert [t.get_text() for t in minute_panel.get_yticklabels()] == ["SPY", "AAPL"]
    gap_colour = to_rgba(analysis.DOWN_COLOR)
    drawn = [c for c in minute_panel.collections if len(c.get_paths())]
    gap_bars = [c for c in drawn if np.allclose(c.get_facecolor()[0], gap_colour)]
    assert len(gap_bars) == 1 and len(gap_bars[0].get_paths()) == 1
    labels = [t.get_text() for t in minute_panel.texts]
    assert labels == ["100.0%", "62.5%"]


def test_plot_ingestion_lag_marks_revisions(con: duckdb.DuckDBPyConnection, figures: None) -> None:
    """Lag is on a symmetric log axis; revised candles are their own series in the legend."""
    fig = analysis.plot_ingestion_lag(analysis.ingestion_lag(con))
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog"
    labels = [c.get_label() for c in ax.collections if isinstance(c, PathCollection)]
    assert labels == ["1m", "1m revised", "5m"]


def test_save_figure_writes_a_png_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: None
) -> None:
    """With CANDLES_FIGURES set the figure becomes <folder>/<safe name>.png; unset, nothing."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    monkeypatch.delenv("CANDLES_FIGURES", raising=False)
    assert analysis.save_figure(fig, "unused") is None
    monkeypatch.setenv("CANDLES_FIGURES", str(tmp_path / "figs"))
    path = analysis.save_figure(fig, "candles_/ESZ25:XCME_5m")
    assert path == tmp_path / "figs" / "candles_ESZ25_XCME_5m.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    explicit = analysis.save_figure(fig, "x", folder=tmp_path / "other")
    assert explicit == tmp_path / "other" / "x.png" and explicit.is_file()
