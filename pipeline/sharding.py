"""Ingest shards: which process captures which series, and which one compacts.

Scale-out (docs/scaling.md) runs ``N`` ingest processes against one shared lake. Each is
started with ``--shard K/N`` (or ``ingest.shard = "K/N"``) and captures exactly the series
whose key hashes to ``K``; the shards never write each other's series, so two shards never
write the same candle and a restarted shard resumes its series from the shared store.

The assignment is a pure function of the series key and ``N``: a stable 64-bit BLAKE2b hash
(not Python's ``hash()``, which is salted per process), so every process, on every machine
and every Python version, agrees without talking to the others.

On a SQLite catalog (one host) compaction runs in exactly one place: the shard ``1/N``
(:attr:`ShardSpec.runs_compaction`). The rule needs no coordination and no lock; if shard 1 is
down, compaction merely waits for it (files accumulate, nothing is lost). A lake written by one
unsharded process is shard 1/1. On a PostgreSQL catalog the shard lease hands the maintenance
turn to one shard per interval instead (:mod:`pipeline.store.lease`), so it goes on while any
shard is up.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from pipeline.dxlink import CandleSymbol

__all__ = ["SINGLE", "ShardSpec", "shard_of"]

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
_MAX_SHARDS = 4096
_S = TypeVar("_S", str, CandleSymbol)


def shard_of(series: str | CandleSymbol, count: int) -> int:
    """The shard (1-based) that owns a series among ``count`` shards.

    Args:
        series: A series key or symbol; keys are normalised first, so two spellings of
            one series (``AAPL{=d}``, ``AAPL{=1d}``) land on the same shard.
        count: The number of shards, >= 1.

    Raises:
        ValueError: ``count`` is not positive, or the key is not a candle symbol.
    """
    if count < 1:
        raise ValueError(f"the shard count must be >= 1, got {count}")
    symbol = series if isinstance(series, CandleSymbol) else CandleSymbol.parse(series)
    digest = hashlib.blake2b(symbol.normalized.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count + 1


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (both 1-based: ``1/3``, ``2/3``, ``3/3``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= _MAX_SHARDS:
            raise ValueError(f"the shard count must be 1..{_MAX_SHARDS}, got {self.count}")
        if not 1 <= self.index <= self.count:
            raise ValueError(
                f"shard {self.index}/{self.count} does not exist: K in K/N runs from 1 to "
                f"{self.count}"
            )

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """Parse ``K/N`` (e.g. ``2/4``).

        Raises:
            ValueError: naming the text and the expected form.
        """
        match = _SPEC.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f"shard {text!r} is not K/N; write the shard number and the shard count, "
                "e.g. '1/3' for the first of three shards"
            )
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def runs_compaction(self) -> bool:
        """Only shard 1 compacts a SQLite-catalog lake (see the module docstring)."""
        return self.index == 1

    def owns(self, series: str | CandleSymbol) -> bool:
        """Whether this shard captures ``series``."""
        return self.count == 1 or shard_of(series, self.count) == self.index

    def select(self, series: Iterable[_S]) -> tuple[_S, ...]:
        """The members of ``series`` this shard owns, in their order."""
        return tuple(s for s in series if self.owns(s))


SINGLE = ShardSpec(1, 1)
"""An unsharded ingest: it owns every series and compacts."""
