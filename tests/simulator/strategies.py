"""Hypothesis strategies for the simulator's trade aggregates (a plain helper module)."""

from __future__ import annotations

from hypothesis import strategies as st

from pipeline.simulator.bars import Bar, check_bar

__all__ = ["bars"]


@st.composite
def bars(draw: st.DrawFn, max_trades: int = 100_000) -> Bar:
    """Any Bar that satisfies ``check_bar``."""
    trades = draw(st.integers(1, max_trades))
    if trades == 1:
        price = draw(st.integers(1, 100_000))
        volume = draw(st.integers(1, 10_000))
        bid = draw(st.integers(0, volume))
        return Bar(price, price, price, price, 1, volume, volume * price, bid, volume - bid)
    open_ = draw(st.integers(1_000, 100_000))
    close = draw(st.integers(1_000, 100_000))
    high = max(open_, close) + draw(st.integers(0, 500))
    low = max(1, min(open_, close) - draw(st.integers(0, 500)))
    if trades == 2:
        high, low = max(open_, close), min(open_, close)
    if trades == 3 and high not in (open_, close) and low not in (open_, close):
        high = max(open_, close)
    volume = draw(st.integers(max(trades, 2), trades * 1_000))
    spread = high - low
    if spread == 0:
        turnover = volume * low
    else:
        turnover = draw(st.integers(volume * low + spread, volume * high - spread))
    bid = draw(st.integers(0, volume))
    ask = draw(st.integers(0, volume - bid))
    bar = Bar(open_, high, low, close, trades, volume, turnover, bid, ask)
    check_bar(bar)
    return bar
