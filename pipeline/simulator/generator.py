"""Top-down generation of trades: split ``Bar`` aggregates into the bars of their sub-periods.

Why top-down: a 2,000-candle daily history spans five years, far too many trades to draw one
by one. Instead the market draws a week's aggregate first, then splits it into seven days, each
day into 24 hours, each hour into 60 minutes and each minute into 60 seconds, drawing only the
nodes someone asks for. Every split is *exact*: the children combine (``bars.combine``) back
into the parent, trade count, volume, turnover and bid/ask volume included. So a candle of any
period built from any level of the tree is the aggregate of the same trades.

How a split keeps the aggregate exact (and the VWAPs plausible):

1. Trade counts: the parent's trades are apportioned over the slots (some slots get
   none: quiet periods, no candle). Trades are numbered 0..count-1 in time order.
2. Volumes: every trade gets one share; the rest is apportioned at random over the children.
3. Prices: trade 0 is the parent's open, the last trade its close, and when neither reaches the
   parent's high (low) a trade strictly inside is pinned to it ("key trades"). Every child's
   last trade lies on a random walk pinned to the key trades (a Brownian bridge), lifted or
   lowered between key trades so that the path's volume-weighted average meets the parent's
   VWAP; where the lifted path would leave ``[low, high]`` it is folded back inside rather than
   clamped (no runs of closes stuck on an edge). A child's first trade repeats the previous
   child's last price, and its high/low may reach further inside the parent's range when it
   has trades to spare.
4. Turnover: each child aims at the mean of its own open, high, low and close, pulled towards
   the parent's VWAP within a band away from its extremes; what is still missing is spread
   first within those bands, then within the ``Bar`` bounds, then by moving shares between
   single-price children and, failing that, by tilting volume towards dear or cheap children
   (twice at most). Bid/ask volumes are apportioned under each child's volume.

About 1 split in 1,000 still misses after that; it is redone in plain Python (the same steps,
one split at a time, tilting from the tilted volumes; ``split_fallback.py``). If even that
fails (none in 23,000 measured splits) the whole parent goes into one child: still exact,
just lumpy.

Speed: the market asks for hundreds of splits at a time (a 2,000-candle history), so
``split_rows`` does all of them at once with numpy, one row per parent; its random numbers are
a counter-based hash of each row's seed, so a row's children depend only on its parent and seed,
never on the other rows of the batch. No I/O, no clock.
"""

from __future__ import annotations

import math
from random import Random

import numpy as np
from numpy.typing import NDArray

from pipeline.simulator.bars import Bar
from pipeline.simulator.split_fallback import MAX_TILT, TILT_ROUNDS, redo_turnover

__all__ = [
    "FIELDS",
    "Rows",
    "mix64",
    "rows_to_bars",
    "split_bar",
    "split_rows",
    "uniforms",
]

Rows = NDArray[np.int64]
Floats = NDArray[np.float64]

FIELDS = len(Bar._fields)
"""Columns of a bar row: the ``Bar`` fields in order; a row of zeros (0 trades) is no bar."""
_TRADES = Bar._fields.index("trades")

# Share of a child's range at either end that its VWAP stays out of when it can (see _targets).
_MARGIN = 0.1
# Corrections of the lift for what folding the path into the parent's range takes away.
_FOLD_ROUNDS = 2
# Share of the parent's range near an edge that a path beyond that edge is folded into.
_FOLD_BAND = 0.1
# Standard deviation of a uniform draw on [-0.5, 0.5): scales it to unit variance.
_UNIFORM_SD = math.sqrt(1.0 / 12.0)
# splitmix64 constants (Steele, Lea & Flood 2014): a counter-based generator.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# Uniform draws per slot (quiet, weight, volume, walk, high, low, jitter) and per split.
_PER_SLOT = 7
_PER_SPLIT = 4


def mix64(keys: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """The splitmix64 finaliser of every key: a well-mixed 64-bit hash, keys one apart
    included."""
    with np.errstate(over="ignore"):
        z = (keys ^ (keys >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def uniforms(seeds: NDArray[np.uint64], count: int) -> Floats:
    """``count`` uniforms in [0, 1) for every seed, shape ``(len(seeds), count)``.

    splitmix64 of ``seed + k * golden``: each value depends only on its seed and position, so
    a batch gives every row the same numbers it would get alone.
    """
    steps = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
    with np.errstate(over="ignore"):
        z = mix64(seeds[:, None] + steps[None, :])
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def split_bar(
    parent: Bar, slots: int, rng: Random, *, quiet_fraction: float = 0.0
) -> list[Bar | None]:
    """Split ``parent`` into ``slots`` consecutive sub-period bars (None = no trades).

    Args:
        parent: The aggregate to split; must satisfy ``check_bar``.
        slots: The number of sub-periods, e.g. 60 minutes in an hour.
        rng: The random source; the same parent and rng state give the same split.
        quiet_fraction: Probability that a slot is forced quiet (no trades), on top of the
            quiet slots that a low trade count leaves anyway.

    Returns:
        ``slots`` entries in time order whose ``combine`` equals ``parent``.
    """
    rows = np.array([parent], dtype=np.int64)
    seeds = np.array([rng.getrandbits(64)], dtype=np.uint64)
    return rows_to_bars(split_rows(rows, slots, seeds, quiet_fraction=quiet_fraction)[0])


def rows_to_bars(rows: Rows) -> list[Bar | None]:
    """The ``Bar`` (or None for a row of no trades) of every row of an ``(n, FIELDS)`` array."""
    new = tuple.__new__  # skips Bar.__new__'s Python frame: this runs per candle
    return [new(Bar, row) if row[_TRADES] else None for row in rows.tolist()]


def split_rows(
    parents: Rows, slots: int, seeds: NDArray[np.uint64], *, quiet_fraction: float = 0.0
) -> Rows:
    """Split every parent row into ``slots`` child rows at once.

    Args:
        parents: ``(n, FIELDS)`` int64 bar rows, each satisfying ``check_bar``.
        slots: Sub-periods per parent.
        seeds: One 64-bit seed per parent; a row's split depends only on its parent and seed.
        quiet_fraction: Probability that a slot is forced quiet.

    Returns:
        ``(n, slots, FIELDS)`` int64 child rows; rows of zeros are quiet slots.
    """
    count = len(parents)
    out = np.zeros((count, slots, FIELDS), dtype=np.int64)
    if count == 0:
        return out
    u = uniforms(seeds, _PER_SLOT * slots + _PER_SPLIT)
    draws = u[:, : _PER_SLOT * slots].reshape(count, _PER_SLOT, slots)
    extra = u[:, _PER_SLOT * slots :]
    o, h, lo, _, n, v, t, bid, ask = (parents[:, i] for i in range(FIELDS))

    counts = _trade_counts(n, draws[:, 0], draws[:, 1], extra[:, 2], quiet_fraction)
    volumes = counts + _apportion_rows(np.maximum(v - n, 0), counts * (50 + (draws[:, 2] * 100)))
    keys, key_prices = _key_trades(parents, extra)
    sigma = (h - lo) / (2.0 * np.sqrt(n))
    ends = np.cumsum(counts, axis=1)
    firsts_ord = ends - counts
    lasts_ord = np.maximum(ends - 1, 0)
    values, bumps = _bridge(lasts_ord, keys, key_prices, sigma, draws[:, 3])
    closes = _closes(parents, volumes, values, bumps)

    # A child's first trade repeats the previous child's last price (quiet slots repeat it
    # too, so the shift works), unless it is a key trade or the child's only trade.
    previous = np.concatenate([o[:, None], closes[:, :-1]], axis=1)
    opens = np.where(counts == 1, closes, previous)
    for k in (1, 2):
        at_key = (firsts_ord == keys[:, k, None]) & (counts > 1)
        opens = np.where(at_key, key_prices[:, k, None], opens)
    highs = np.maximum(opens, closes)
    lows = np.minimum(opens, closes)
    # A trade strictly inside the child may set a new high, another a new low.
    reach = sigma[:, None] * np.sqrt(counts)
    highs = np.where(counts >= 3, np.minimum(highs + (draws[:, 4] * reach), h[:, None]), highs)
    lows = np.where(counts >= 4, np.maximum(lows - (draws[:, 5] * reach), lo[:, None]), lows)
    highs, lows = highs.astype(np.int64), lows.astype(np.int64)
    # Key trades strictly inside a child set its high/low; that child has no extensions.
    inside = [(firsts_ord < keys[:, k, None]) & (keys[:, k, None] < ends - 1) for k in (1, 2)]
    keyed = inside[0] | inside[1]
    if keyed.any():
        top, bottom = np.maximum(opens, closes), np.minimum(opens, closes)
        for k in (1, 2):
            price = key_prices[:, k, None]
            top = np.where(inside[k - 1], np.maximum(top, price), top)
            bottom = np.where(inside[k - 1], np.minimum(bottom, price), bottom)
        highs = np.where(keyed, top, highs)
        lows = np.where(keyed, bottom, lows)

    targets, band_low, band_high = _targets(
        parents, opens, highs, lows, closes, volumes, draws[:, 6]
    )
    turnovers, missing = _spread_turnover_rows(
        t, volumes, highs, lows, targets, band_low, band_high
    )
    lumpy = n == 1
    _move_shares_rows(
        np.flatnonzero((missing != 0) & ~lumpy), missing, counts, volumes, highs, lows, turnovers
    )
    for _ in range(2):  # a second tilt compounds the first when one is not enough
        tilt = np.flatnonzero((missing != 0) & ~lumpy)
        if len(tilt) == 0:
            break
        volumes[tilt] = _tilt_rows(parents[tilt], counts[tilt], volumes[tilt], targets[tilt])
        turnovers[tilt], missing[tilt] = _spread_turnover_rows(
            t[tilt], volumes[tilt], highs[tilt], lows[tilt],
            targets[tilt], band_low[tilt], band_high[tilt],
        )  # fmt: skip
        _move_shares_rows(tilt, missing, counts, volumes, highs, lows, turnovers)
    for row in np.flatnonzero((missing != 0) & ~lumpy).tolist():
        redone = redo_turnover(parents[row], counts[row], volumes[row], highs[row], lows[row],
                                targets[row], band_low[row], band_high[row])  # fmt: skip
        if redone is None:
            lumpy[row] = True
        else:
            volumes[row], turnovers[row] = redone
    bids = _apportion_rows(bid, volumes)
    asks = _apportion_rows(ask, volumes - bids)
    for i, column in enumerate(
        (opens, highs, lows, closes, counts, volumes, turnovers, bids, asks)
    ):
        out[:, :, i] = column
    out[counts == 0] = 0
    for row in np.flatnonzero(lumpy).tolist():
        out[row] = 0
        out[row, int(extra[row, 3] * slots)] = parents[row]
    return out


def _apportion_rows(totals: Rows, weights: Rows | Floats) -> Rows:
    """``apportion`` of every row's total over that row's weights, exactly, in int64.

    Callers keep ``total * sum(weights)`` well inside int64 (below 2**62).
    """
    running = np.cumsum(weights.astype(np.int64, copy=False), axis=1)
    weight_sums = np.maximum(running[:, -1:], 1)
    parts: Rows = totals[:, None] * running // weight_sums
    parts[:, 1:] -= parts[:, :-1].copy()
    return parts


def _trade_counts(
    trades: Rows, quiet_draws: Floats, weight_draws: Floats, spare: Floats, quiet_fraction: float
) -> Rows:
    weights = 200 + (weight_draws * 800).astype(np.int64)
    if quiet_fraction:
        weights[quiet_draws < quiet_fraction] = 0
        silent = np.flatnonzero(~weights.any(axis=1))
        weights[silent, (spare[silent] * weights.shape[1]).astype(np.int64)] = 1
    return _apportion_rows(trades, weights)


def _key_trades(parents: Rows, extra: Floats) -> tuple[Rows, Rows]:
    """``(ordinals, prices)`` of the four key trades per row, shape ``(n, 4)``, in time order.

    Open at 0, close at the last trade, and the high/low where neither reaches them at ordinals
    strictly inside; a row with fewer inside keys repeats the close in their place.
    """
    o, h, lo, c, n = (parents[:, i] for i in range(5))
    last = n - 1
    high_inside = (h != o) & (h != c)
    low_inside = (lo != o) & (lo != c)
    first = 1 + (extra[:, 0] * np.maximum(n - 2, 1)).astype(np.int64)
    second = 1 + (extra[:, 1] * np.maximum(n - 3, 1)).astype(np.int64)
    second += second >= first
    one = high_inside | low_inside
    both = high_inside & low_inside
    ord1 = np.where(one, first, last)
    price1 = np.where(high_inside, h, np.where(low_inside, lo, c))
    ord2 = np.where(both, second, last)
    price2 = np.where(both, lo, c)
    swap = ord2 < ord1
    ordinals = np.stack([np.zeros_like(n), np.where(swap, ord2, ord1),
                         np.where(swap, ord1, ord2), last], axis=1)  # fmt: skip
    prices = np.stack(
        [o, np.where(swap, price2, price1), np.where(swap, price1, price2), c], axis=1
    )
    return ordinals, prices


def _bridge(
    points: Rows, keys: Rows, key_prices: Rows, sigma: Floats, walk_draws: Floats
) -> tuple[Floats, Floats]:
    """A random walk at each row's ascending trade ordinals ``points``, pinned to its keys.

    The walk's increments have variance ``sigma**2`` per trade; between two key trades ``a``
    and ``b`` the straight line from ``walk(a)`` to ``walk(b)`` is swapped for the one between
    the key prices (a Brownian bridge), so the path lands exactly on every key price.

    Returns:
        The walk at each point, and a bump at each point: ``4(x-a)(b-x)/(b-a)**2`` between
        the key trades ``a`` and ``b`` around it, 0 on a key trade and 1 half-way. Adding a
        multiple of the bumps moves the path up or down without moving a key trade.
    """
    x = points.astype(np.float64)
    gaps = x.copy()
    gaps[:, 1:] -= x[:, :-1]
    row = np.arange(len(x))[:, None]  # fancy indexing per row: cheaper than take_along_axis
    walk = np.cumsum(np.sqrt(gaps) * (walk_draws - 0.5) / _UNIFORM_SD, axis=1)
    # The walk at each key ordinal, interpolated between the points either side of it.
    after = (points[:, None, :] < keys[:, :, None]).sum(axis=2)  # first point at or past
    upper = np.minimum(after, points.shape[1] - 1)
    below = np.maximum(after - 1, 0)
    x_hi, w_hi = x[row, upper], walk[row, upper]
    x_lo = np.where(after > 0, x[row, below], 0.0)
    w_lo = np.where(after > 0, walk[row, below], 0.0)
    span = x_hi - x_lo
    key_walk = np.where(
        span > 0, w_lo + (w_hi - w_lo) * (keys - x_lo) / np.where(span > 0, span, 1.0), w_hi
    )
    # The key segment around every point: (a, b] between consecutive key trades.
    segment = (points > keys[:, 1, None]).astype(np.int64) + (points > keys[:, 2, None])
    after_segment = segment + 1
    a, b = keys[row, segment], keys[row, after_segment]
    pa = key_prices[row, segment].astype(np.float64)
    pb = key_prices[row, after_segment].astype(np.float64)
    wa, wb = key_walk[row, segment], key_walk[row, after_segment]
    width = (b - a).astype(np.float64)
    frac = np.where(width > 0, (x - a) / np.where(width > 0, width, 1.0), 0.0)
    values = pa + (pb - pa) * frac + sigma[:, None] * (walk - wa - (wb - wa) * frac)
    return values, 4.0 * frac * (1.0 - frac)


def _closes(parents: Rows, volumes: Rows, values: Floats, bumps: Floats) -> Rows:
    """Children's last prices: the walk, lifted or lowered by a multiple of the bumps so that
    the path's volume-weighted average meets the parent's VWAP, folded into [low, high].

    Without the lift, a parent's VWAP and its children's prices would drift apart and the
    turnovers could only be made to add up by pushing children's VWAPs to their extremes.
    A child trades between its open (the previous close) and its close, hence the pairs.
    Where the lifted path leaves the range it is reflected back inside (clamping would leave
    a run of closes stuck on the edge), and the lift is corrected for what the folding took
    away, a few times over.
    """
    o, h, lo, t = parents[:, 0], parents[:, 1], parents[:, 2], parents[:, 6]
    weight = volumes.astype(np.float64)
    low, width = lo[:, None].astype(np.float64), (h - lo)[:, None].astype(np.float64)
    first = o[:, None].astype(np.float64)
    bump = _pair_sum(weight, 0.0 * first, bumps)
    lifting = bump > 0
    per_lift = np.where(lifting, bump, np.inf)  # no bump, no lift
    wanted = 2.0 * t
    shift = (wanted - _pair_sum(weight, first, values)) / per_lift
    prices = values + shift[:, None] * bumps
    # Only rows whose lifted path leaves the range need folding (and its correction).
    out = np.flatnonzero(((prices < low) | (prices > low + width)).any(axis=1))
    if len(out):
        weight, first, low, width = weight[out], first[out], low[out], width[out]
        values, bumps, lift = values[out], bumps[out], shift[out]
        for _ in range(_FOLD_ROUNDS):
            folded = _fold(values + lift[:, None] * bumps, low, width)
            lift += (wanted[out] - _pair_sum(weight, first, folded)) / per_lift[out]
        prices[out] = _fold(values + lift[:, None] * bumps, low, width)
    return np.clip(np.rint(prices), lo[:, None], h[:, None]).astype(np.int64)


def _pair_sum(weight: Floats, start: Floats, path: Floats) -> Floats:
    """Per row, the sum of ``weight * (previous + current)`` along ``path`` from ``start``:
    twice the volume-weighted mean of a child's open and close, summed over the children."""
    previous = np.concatenate([start, path[:, :-1]], axis=1)
    total: Floats = (weight * (previous + path)).sum(axis=1)
    return total


def _fold(prices: Floats, low: Floats, width: Floats) -> Floats:
    """``prices`` folded into ``[low, low + width]``: what lies beyond an edge by ``d`` lands
    ``d`` modulo a narrow band (``_FOLD_BAND`` of the range) inside that edge, so the path
    keeps close to the edge without sticking to it."""
    band = np.maximum(width * _FOLD_BAND, 1.0)
    high = low + width
    above = high - np.mod(prices - high, band)
    below = low + np.mod(low - prices, band)
    folded = np.where(prices > high, above, np.where(prices < low, below, prices))
    return np.clip(folded, low, high)


def _margins(parents: Rows) -> Floats:
    """How far (share of its range) a child's VWAP should stay from its high and low.

    A tenth, or half of the parent's own distance from its edges if that is smaller: a parent
    trading near its high needs children trading near theirs, and each level down keeps some
    room for the next.
    """
    spread = (parents[:, 1] - parents[:, 2]).astype(np.float64)
    place = (parents[:, 6] / parents[:, 5] - parents[:, 2]) / np.where(spread > 0, spread, 1.0)
    return np.where(spread > 0, np.minimum(_MARGIN, 0.5 * np.minimum(place, 1.0 - place)), _MARGIN)


def _targets(
    parents: Rows, opens: Rows, highs: Rows, lows: Rows, closes: Rows, volumes: Rows,
    jitter_draws: Floats,
) -> tuple[Floats, Floats, Floats]:  # fmt: skip
    """Each child's intended VWAP (ticks), and the band ``[low, high]`` it should stay in.

    A child's natural VWAP is the mean of its open, high, low and close (where its trades
    mostly happen), jittered by a twentieth of its range. Its band is a quarter of its range
    either side of that, but never within the parent's margin (``_margins``) of its high or
    low: a VWAP at an extreme, or far from where the child's prices are, would leave its own
    split nothing to work with. Where the children do not average out to the parent's VWAP,
    every target is pulled by the same fraction towards the parent's VWAP, within its band.
    """
    turnover, margin = parents[:, 6].astype(np.float64), _margins(parents)[:, None]
    vwap = (turnover / parents[:, 5])[:, None]
    spread = (highs - lows).astype(np.float64)
    natural = (opens + highs + lows + closes) * 0.25
    floor = np.maximum(lows + spread * margin, natural - 0.25 * spread)
    ceiling = np.minimum(highs - spread * margin, natural + 0.25 * spread)
    crossed = floor > ceiling
    middle = (floor + ceiling) * 0.5
    floor, ceiling = np.where(crossed, middle, floor), np.where(crossed, middle, ceiling)
    own = np.clip(natural + (jitter_draws - 0.5) * 0.1 * spread, floor, ceiling)
    pulled = np.clip(vwap, floor, ceiling)
    weight = volumes.astype(np.float64)
    own_total = (weight * own).sum(axis=1)
    pulled_total = (weight * pulled).sum(axis=1)
    apart = pulled_total != own_total
    pull = (turnover - own_total) / np.where(apart, pulled_total - own_total, 1.0)
    pull = np.where(apart, np.clip(pull, 0.0, 1.0), 0.0)[:, None]
    return own + (pulled - own) * pull, floor, ceiling


def _fill(room: Rows, amount: Rows) -> Rows:
    """Per row, ``amount`` (``<= room.sum()``) spread over ``room`` about in proportion, each
    part within its room and the parts adding up to ``amount`` exactly.

    Proportional parts are rounded down (with a hair of slack against float error), and the
    few units left go greedily to the first entries with room to spare.
    """
    total = room.sum(axis=1)
    fraction = amount / np.where(total > 0, total, 1) * (1.0 - 1e-12)
    parts = np.minimum((room * fraction[:, None]).astype(np.int64), room)
    left = amount - parts.sum(axis=1)
    spare = room - parts
    before = np.cumsum(spare, axis=1) - spare
    filled: Rows = parts + np.clip(left[:, None] - before, 0, spare)
    return filled


def _spread_turnover_rows(
    turnover: Rows, volumes: Rows, highs: Rows, lows: Rows,
    targets: Floats, band_low: Floats, band_high: Floats,
) -> tuple[Rows, Rows]:  # fmt: skip
    """Every child's turnover, within its ``Bar`` bounds, and per row how much is still
    missing from the parent's ``turnover`` (0 when they add up).

    What the targets miss is spread first within every child's band (see ``_targets``), and
    only then up to its high or low. Quiet slots (volume 0) get 0.
    """
    spread = highs - lows
    floor = volumes * lows + spread * (volumes > 0)
    ceiling = volumes * highs - spread * (volumes > 0)
    inner_floor = np.maximum(np.ceil(volumes * band_low).astype(np.int64), floor)
    inner_ceiling = np.minimum(np.floor(volumes * band_high).astype(np.int64), ceiling)
    crossed = inner_floor > inner_ceiling
    aim = np.rint(volumes * targets).astype(np.int64)
    fallback = np.clip(aim, floor, ceiling)
    inner_floor = np.where(crossed, fallback, inner_floor)
    inner_ceiling = np.where(crossed, fallback, inner_ceiling)
    result = np.clip(aim, inner_floor, inner_ceiling)
    missing = turnover - result.sum(axis=1)
    for low_bound, high_bound in ((inner_floor, inner_ceiling), (floor, ceiling)):
        up = missing > 0
        room = np.where(up[:, None], high_bound - result, result - low_bound)
        room = np.maximum(room, 0)
        absorbed = np.minimum(np.abs(missing), room.sum(axis=1))
        sign = np.where(up, 1, -1)
        result += sign[:, None] * _fill(room, absorbed)
        missing -= sign * absorbed
    return result, missing


def _move_shares_rows(
    which: NDArray[np.intp],
    missing: Rows,
    counts: Rows,
    volumes: Rows,
    highs: Rows,
    lows: Rows,
    turnovers: Rows,
) -> None:
    """Make up the turnover shortfalls of rows ``which`` by moving shares between their
    single-price children, in place (``missing``, ``volumes``, ``turnovers``).

    A single-price child's turnover is volume x price, so moving one share from a child at
    price ``a`` to one at price ``b`` changes the total by ``b - a``. Greedy, largest useful
    step first, all rows at once.
    """
    which = which[missing[which] != 0]
    if len(which) == 0:
        return
    all_missing, all_volumes, all_turnovers = missing, volumes, turnovers
    missing, volumes, turnovers = missing[which], volumes[which], turnovers[which]
    counts, highs, lows = counts[which], highs[which], lows[which]
    slots = counts.shape[1]
    flat = (highs == lows) & (counts > 0)
    steps = lows[:, None, :] - lows[:, :, None]  # [row, giver, taker]
    # The shortfall never changes sign (a move never overshoots), so neither do useful steps.
    toward = flat[:, :, None] & flat[:, None, :] & (steps * np.sign(missing)[:, None, None] > 0)
    sizes = np.where(toward, np.abs(steps), 0)
    active = np.arange(len(missing))
    for _ in range(16):
        spare = (volumes[active] > counts[active])[:, :, None]
        reach = np.abs(missing[active])[:, None, None]
        score = np.where(spare & (sizes[active] <= reach), sizes[active], 0)
        best = score.reshape(len(active), -1).argmax(axis=1)
        giver, taker = np.divmod(best, slots)
        go = score[np.arange(len(active)), giver, taker] > 0
        active, giver, taker = active[go], giver[go], taker[go]
        if len(active) == 0:
            break
        step = steps[active, giver, taker]
        shares = np.minimum(missing[active] // step, volumes[active, giver] - counts[active, giver])
        volumes[active, giver] -= shares
        volumes[active, taker] += shares
        turnovers[active, giver] = volumes[active, giver] * lows[active, giver]
        turnovers[active, taker] = volumes[active, taker] * lows[active, taker]
        missing[active] -= shares * step
        active = active[missing[active] != 0]
        if len(active) == 0:
            break
    all_missing[which], all_volumes[which], all_turnovers[which] = missing, volumes, turnovers


def _tilt_rows(parents: Rows, counts: Rows, volumes: Rows, targets: Floats) -> Rows:
    """Re-weight every row's spare volume towards dear (or cheap) children so that the
    volume-weighted targets move towards the parent's VWAP.

    An exponential tilt, at most ``MAX_TILT`` from even, solved by bisection (all rows at
    once): busy dear minutes rather than one minute holding all the volume.
    """
    spare = (volumes - counts).astype(np.float64)
    total = (volumes - counts).sum(axis=1)
    active = counts > 0
    low = np.where(active, targets, np.inf).min(axis=1, keepdims=True)
    high = np.where(active, targets, -np.inf).max(axis=1, keepdims=True)
    width = high - low
    flat = (total <= 0) | (width[:, 0] <= 0)
    scaled = np.where(active, (targets - low) / np.where(width > 0, width, 1.0), 0.0)
    aims = np.where(active, targets, 0.0)
    wanted = parents[:, 6] - (counts * aims).sum(axis=1)
    below = np.full(len(parents), -MAX_TILT)
    above = np.full(len(parents), MAX_TILT)
    for _ in range(TILT_ROUNDS):
        middle = (below + above) / 2
        weights = spare * np.exp(middle[:, None] * scaled)
        reached = total * (weights * aims).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-300)
        short = reached < wanted
        below = np.where(short, middle, below)
        above = np.where(short, above, middle)
    tilted = spare * np.exp(((below + above) / 2)[:, None] * scaled)
    # Integer weights of at most 1e6 each keep ``total * sum(weights)`` inside int64.
    scale = 1e6 / np.maximum(tilted.max(axis=1, keepdims=True), 1e-300)
    shares = _apportion_rows(total, np.rint(tilted * scale))
    return np.where(flat[:, None], volumes, counts + shares)
