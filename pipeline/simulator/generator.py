"""Top-down generation of trades: split one ``Bar`` into the bars of its sub-periods.

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
   VWAP, and clamped to ``[low, high]``; its first trade repeats the previous child's last
   price. A child's high/low may reach further inside the parent's range when it has trades
   to spare.
4. Turnover: each child aims at the mean of its own open, high, low and close, pulled towards
   the parent's VWAP within a band away from its extremes; what is still missing is spread
   first within those bands, then within the ``Bar`` bounds, tilting volume towards dear or
   cheap children if needed. Bid/ask volumes are apportioned under each child's volume.

In the rare case the constraints cannot be met, the whole parent goes into one child: still
exact, just lumpy. Deterministic: a split depends only on the parent and the ``Random`` given.
The code is written as flat loops over lists because it is the simulator's hot path (one split
per 60 candles of history). No I/O, no clock.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from random import Random

from pipeline.simulator.bars import Bar

__all__ = ["apportion", "split_bar"]

# Share of a child's range at either end that its VWAP stays out of when it can (see _targets).
_MARGIN = 0.1
# Largest exponential tilt of the volume split: the dearest child gets at most e**3 (~20)
# times its even share relative to the cheapest.
_MAX_TILT = 3.0
# Half-width of a zero-mean, unit-variance uniform distribution: cheap price noise.
_UNIFORM_HALF_WIDTH = math.sqrt(3.0)


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` into integer parts proportional to ``weights``; the parts add up exactly.

    Cumulative rounding: part ``i`` is ``floor(total * W_i / W) - floor(total * W_(i-1) / W)``
    where ``W_i`` is the running sum of the weights. Every part is within one unit of its exact
    share, so when ``total <= sum(weights)`` no part exceeds its weight and weights can double
    as capacities.

    Raises:
        ValueError: a weight is negative, or all are zero while ``total`` is not.
    """
    if min(weights, default=0) < 0:
        raise ValueError(f"weights must not be negative, got {list(weights)}")
    weight_sum = sum(weights)
    if weight_sum == 0:
        if total:
            raise ValueError(f"cannot apportion {total} over weights that are all zero")
        return [0] * len(weights)
    cuts = [total * running // weight_sum for running in accumulate(weights)]
    return [b - a for a, b in zip([0, *cuts], cuts)]  # noqa: B905 (lengths differ by design)


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
    children = None if parent.trades == 1 else _try_split(parent, slots, rng, quiet_fraction)
    if children is None:
        children = [None] * slots
        children[rng.randrange(slots)] = parent
    return children


def _trade_counts(count: int, slots: int, rng: Random, quiet_fraction: float) -> list[int]:
    rnd = rng.random
    if quiet_fraction:
        weights = [0 if rnd() < quiet_fraction else 200 + int(rnd() * 800) for _ in range(slots)]
        if not any(weights):
            weights[rng.randrange(slots)] = 1
    else:
        weights = [200 + int(rnd() * 800) for _ in range(slots)]
    return apportion(count, weights)


def _key_trades(parent: Bar, rng: Random) -> list[tuple[int, int]]:
    """``(ordinal, price)`` of the trades the split must keep, in time order."""
    last = parent.trades - 1
    inside = [p for p in (parent.high, parent.low) if p != parent.open and p != parent.close]
    keys = [(0, parent.open), (last, parent.close)]
    if inside:
        first = 1 + rng.randrange(last - 1)
        keys.append((first, inside[0]))
        if len(inside) == 2:
            # A distinct second ordinal: invariant says there are at least two inside.
            second = 1 + rng.randrange(last - 2)
            keys.append((second + (second >= first), inside[1]))
        keys.sort()
    return keys


def _bridge(
    points: list[int], keys: list[tuple[int, int]], sigma: float, rng: Random
) -> tuple[list[float], list[float]]:
    """A random walk at the ascending trade ordinals ``points``, pinned to ``keys``.

    Sampled in one pass as a Brownian bridge: each point is drawn given the previous point and
    the next key trade, so the walk lands exactly on every key price.

    Returns:
        The walk at each point, and a bump at each point: ``4(x-a)(b-x)/(b-a)**2`` between
        the key trades ``a`` and ``b`` around it, 0 on a key trade and 1 half-way. Adding a
        multiple of the bumps moves the path up or down without moving a key trade.
    """
    rnd = rng.random
    scale = sigma * 2.0 * _UNIFORM_HALF_WIDTH
    values = [0.0] * len(points)
    bumps = [0.0] * len(points)
    next_key = 1
    prev_ordinal, key_start = keys[0]
    prev_value = float(key_start)
    segment_start = prev_ordinal
    key_ordinal, key_price = keys[1]
    for i, ordinal in enumerate(points):
        while key_ordinal < ordinal:
            prev_ordinal, prev_value, segment_start = key_ordinal, float(key_price), key_ordinal
            next_key += 1
            key_ordinal, key_price = keys[next_key]
        if ordinal == key_ordinal:
            value = float(key_price)
        else:
            span = key_ordinal - prev_ordinal
            gap = ordinal - prev_ordinal
            value = (
                prev_value
                + (key_price - prev_value) * gap / span
                + scale * math.sqrt(gap * (key_ordinal - ordinal) / span) * (rnd() - 0.5)
            )
            width = key_ordinal - segment_start
            bumps[i] = 4.0 * (ordinal - segment_start) * (key_ordinal - ordinal) / (width * width)
        values[i] = value
        prev_ordinal, prev_value = ordinal, value
    return values, bumps


def _closes(parent: Bar, volumes: list[int], values: list[float], bumps: list[float]) -> list[int]:
    """Children's last prices: the walk, lifted or lowered by a multiple of the bumps so that
    the path's volume-weighted average meets the parent's VWAP, rounded into [low, high].

    Without this, a parent's VWAP and its children's prices would drift apart and the
    turnovers could only be made to add up by pushing children's VWAPs to their extremes.
    """
    low, high = parent.low, parent.high
    level = bump = 0.0
    previous_value, previous_bump = float(parent.open), 0.0
    for volume, value, lift in zip(volumes, values, bumps, strict=True):
        level += volume * (previous_value + value)
        bump += volume * (previous_bump + lift)
        previous_value, previous_bump = value, lift
    shift = 0.0
    if bump > 0:
        shift = (2.0 * parent.turnover - level) / bump
    closes = []
    for value, lift in zip(values, bumps, strict=True):
        price = round(value + shift * lift)
        closes.append(low if price < low else high if price > high else price)
    return closes


def _try_split(
    parent: Bar, slots: int, rng: Random, quiet_fraction: float
) -> list[Bar | None] | None:
    p_open, p_high, p_low, _, p_count, _, p_turnover, p_bid, p_ask = parent
    rnd = rng.random
    counts = _trade_counts(p_count, slots, rng, quiet_fraction)
    slot_of = [i for i, k in enumerate(counts) if k]
    sizes = [counts[i] for i in slot_of]
    ends = list(accumulate(sizes))  # exclusive end ordinal of every child
    keys = _key_trades(parent, rng)
    key_price = dict(keys)

    # Every child's last trade lies on the bridge; its first trade repeats the previous
    # child's last price (a gapless path) unless it is a single trade or a key trade.
    sigma = (p_high - p_low) / (2.0 * math.sqrt(p_count))
    volumes = _spread_volume(parent, sizes, rng)
    values, bumps = _bridge([end - 1 for end in ends], keys, sigma, rng)
    closes = _closes(parent, volumes, values, bumps)
    n = len(sizes)
    opens = [0] * n
    highs = [0] * n
    lows = [0] * n
    previous = p_open
    for j, size in enumerate(sizes):
        close = closes[j]
        first = close if size == 1 else key_price.get(ends[j] - size, previous)
        opens[j] = first
        high, low = (first, close) if first > close else (close, first)
        if size >= 3:
            # A trade strictly inside the child may set a new high, another a new low.
            reach = sigma * math.sqrt(size)
            high += int(rnd() * reach)
            if high > p_high:
                high = p_high
            if size >= 4:
                low -= int(rnd() * reach)
                if low < p_low:
                    low = p_low
        highs[j], lows[j] = high, low
        previous = close
    # Key trades strictly inside a child set its high/low; redo that child without extensions.
    for ordinal, _ in keys[1:-1]:
        j = bisect_right(ends, ordinal)
        first_ordinal = ends[j] - sizes[j]
        if first_ordinal < ordinal < ends[j] - 1:
            inside = [p for o, p in keys if first_ordinal < o < ends[j] - 1]
            highs[j] = max(opens[j], closes[j], *inside)
            lows[j] = min(opens[j], closes[j], *inside)

    prices = (opens, highs, lows, closes)
    targets, bands = _targets(parent, prices, volumes, _margin(parent), rng)
    turnovers = _spread_turnover(p_turnover, sizes, volumes, highs, lows, targets, bands)
    if turnovers is None:
        volumes = _tilt_volume(parent, sizes, volumes, targets)
        turnovers = _spread_turnover(p_turnover, sizes, volumes, highs, lows, targets, bands)
        if turnovers is None:
            return None
    bids = apportion(p_bid, volumes)
    asks = apportion(p_ask, [v - b for v, b in zip(volumes, bids, strict=True)])
    result: list[Bar | None] = [None] * slots
    new = tuple.__new__  # skips Bar.__new__'s Python frame: this loop runs per child
    for j in range(n):
        result[slot_of[j]] = new(Bar, (
            opens[j], highs[j], lows[j], closes[j],
            sizes[j], volumes[j], turnovers[j], bids[j], asks[j],
        ))  # fmt: skip
    return result


def _spread_volume(parent: Bar, sizes: list[int], rng: Random) -> list[int]:
    """Every child's volume: one share per trade plus a random part of the rest."""
    spare = parent.volume - parent.trades
    if spare <= 0:
        return list(sizes)
    rnd = rng.random
    shares = apportion(spare, [s * (500 + int(rnd() * 1000)) for s in sizes])
    return [size + share for size, share in zip(sizes, shares, strict=True)]


def _margin(parent: Bar) -> float:
    """How far (share of its range) a child's VWAP should stay from its high and low.

    A tenth, or half of the parent's own distance from its edges if that is smaller: a parent
    trading near its high needs children trading near theirs, and each level down keeps some
    room for the next.
    """
    spread = parent.high - parent.low
    if spread == 0:
        return _MARGIN
    place = (parent.turnover / parent.volume - parent.low) / spread
    return min(_MARGIN, 0.5 * min(place, 1.0 - place))


def _targets(
    parent: Bar,
    prices: tuple[list[int], list[int], list[int], list[int]],
    volumes: list[int],
    margin: float,
    rng: Random,
) -> tuple[list[float], list[tuple[float, float]]]:
    """Each child's intended VWAP (ticks), and the band it should stay in.

    A child's natural VWAP is the mean of its open, high, low and close (where its trades
    mostly happen), jittered by a twentieth of its range. Its band is a quarter of its range
    either side of that, but never within ``margin`` of its high or low: a VWAP at an extreme,
    or far from where the child's prices are, would leave its own split nothing to work with.
    Where the children do not average out to the parent's VWAP, every target is pulled by the
    same fraction towards the parent's VWAP, within its band.
    """
    rnd = rng.random
    vwap = parent.turnover / parent.volume
    own: list[float] = []
    pulled: list[float] = []
    bands: list[tuple[float, float]] = []
    for open_, high, low, close in zip(*prices, strict=True):
        spread = high - low
        natural = (open_ + high + low + close) * 0.25
        floor = max(low + spread * margin, natural - 0.25 * spread)
        ceiling = min(high - spread * margin, natural + 0.25 * spread)
        if floor > ceiling:
            floor = ceiling = (floor + ceiling) * 0.5
        mine = natural + (rnd() - 0.5) * 0.1 * spread
        own.append(floor if mine < floor else ceiling if mine > ceiling else mine)
        pulled.append(floor if vwap < floor else ceiling if vwap > ceiling else vwap)
        bands.append((floor, ceiling))
    own_total = sum(v * t for v, t in zip(volumes, own, strict=True))
    pulled_total = sum(v * t for v, t in zip(volumes, pulled, strict=True))
    if pulled_total == own_total:
        return own, bands
    pull = (parent.turnover - own_total) / (pulled_total - own_total)
    pull = 0.0 if pull < 0.0 else 1.0 if pull > 1.0 else pull
    return [t + (p - t) * pull for t, p in zip(own, pulled, strict=True)], bands


def _tilt_volume(
    parent: Bar, sizes: list[int], volumes: list[int], targets: list[float]
) -> list[int]:
    """Re-weight the spare volume towards dear (or cheap) children so that the
    volume-weighted targets move towards the parent's VWAP.

    An exponential tilt, at most ``_MAX_TILT`` from even, solved by bisection: busy dear
    minutes rather than one minute holding all the volume.
    """
    spare = [v - s for v, s in zip(volumes, sizes, strict=True)]
    total = sum(spare)
    low, high = min(targets), max(targets)
    if total <= 0 or high == low:
        return volumes
    wanted = parent.turnover - sum(s * t for s, t in zip(sizes, targets, strict=True))
    scaled = [(t - low) / (high - low) for t in targets]

    def weights(theta: float) -> list[float]:
        return [s * math.exp(theta * x) for s, x in zip(spare, scaled, strict=True)]

    def reached(theta: float) -> float:
        w = weights(theta)
        return total * sum(wi * t for wi, t in zip(w, targets, strict=True)) / sum(w)

    below, above = -_MAX_TILT, _MAX_TILT
    for _ in range(20):
        middle = (below + above) / 2
        if reached(middle) < wanted:
            below = middle
        else:
            above = middle
    tilted = weights((below + above) / 2)
    scale = 1e9 / max(tilted)
    shares = apportion(total, [round(w * scale) for w in tilted])
    return [size + share for size, share in zip(sizes, shares, strict=True)]


def _spread_turnover(
    turnover: int,
    sizes: list[int],
    volumes: list[int],
    highs: list[int],
    lows: list[int],
    targets: list[float],
    bands: list[tuple[float, float]],
) -> list[int] | None:
    """Every child's turnover, within its ``Bar`` bounds and adding up to ``turnover``.

    What the targets miss is spread first within every child's band (see ``_targets``), and
    only then up to its high or low. Returns None when no such turnovers exist.
    """
    hard: list[tuple[int, int]] = []
    soft: list[tuple[int, int]] = []
    result: list[int] = []
    for v, hi, lo, t, (band_low, band_high) in zip(
        volumes, highs, lows, targets, bands, strict=True
    ):
        spread = hi - lo
        floor, ceiling = v * lo + spread, v * hi - spread
        inner_floor, inner_ceiling = math.ceil(v * band_low), math.floor(v * band_high)
        if inner_floor < floor:
            inner_floor = floor
        if inner_ceiling > ceiling:
            inner_ceiling = ceiling
        if inner_floor > inner_ceiling:
            inner_floor = inner_ceiling = min(max(round(v * t), floor), ceiling)
        hard.append((floor, ceiling))
        soft.append((inner_floor, inner_ceiling))
        x = round(v * t)
        result.append(inner_floor if x < inner_floor else inner_ceiling if x > inner_ceiling else x)
    missing = turnover - sum(result)
    for bounds in (soft, hard):
        if missing == 0:
            return result
        if missing > 0:
            room = [max(0, hi - x) for x, (_, hi) in zip(result, bounds, strict=True)]
        else:
            room = [max(0, x - lo) for x, (lo, _) in zip(result, bounds, strict=True)]
        absorbed = min(abs(missing), sum(room))
        sign = 1 if missing > 0 else -1
        if absorbed:
            for j, extra in enumerate(apportion(absorbed, room)):
                result[j] += sign * extra
        missing -= sign * absorbed
    if missing and not _move_shares(missing, sizes, volumes, highs, lows, result):
        return None
    return result


def _move_shares(
    missing: int,
    sizes: list[int],
    volumes: list[int],
    highs: list[int],
    lows: list[int],
    turnovers: list[int],
) -> bool:
    """Make up a turnover shortfall by moving shares between single-price children, in place.

    A single-price child's turnover is volume x price, so moving one share from a child at
    price ``a`` to one at price ``b`` changes the total by ``b - a``. Greedy, largest useful
    step first. Returns True when nothing is missing any more.
    """
    flat = [j for j in range(len(sizes)) if highs[j] == lows[j]]
    for _ in range(16):
        best: tuple[int, int, int] | None = None
        for giver in flat:
            if volumes[giver] <= sizes[giver]:
                continue
            for taker in flat:
                step = lows[taker] - lows[giver]
                useful = step and (step > 0) == (missing > 0) and abs(step) <= abs(missing)
                if useful and (best is None or abs(step) > abs(best[0])):
                    best = (step, giver, taker)
        if best is None:
            return False
        step, giver, taker = best
        shares = min(missing // step, volumes[giver] - sizes[giver])
        volumes[giver] -= shares
        volumes[taker] += shares
        turnovers[giver] = volumes[giver] * lows[giver]
        turnovers[taker] = volumes[taker] * lows[taker]
        missing -= shares * step
        if missing == 0:
            return True
    return False
