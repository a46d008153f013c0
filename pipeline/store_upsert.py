"""The upsert core of :class:`pipeline.store.CandleStore`: batch checks and one transaction.

DuckLake has no primary key, so uniqueness of (symbol, period, time, sequence) is kept here:
the batch is deduplicated, the stored versions of its keys are fetched, rows stored with equal
values are dropped, and the rest is written as delete + insert in one transaction.

The stored versions are looked up by *ranges*, one per series and UTC day of the batch,
rather than by joining the batch's keys: the join's build side is then tens of rows instead
of the whole batch (100,000 keys took 180-370 ms to probe a 10.5 M-row lake where 70
ranges took 23-45 ms, benchmarks/bench_store), and DuckLake still skips every file whose
min/max statistics miss the ranges. A range can return stored rows the batch does not hold;
:func:`_classify` joins on the exact keys, so those are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import duckdb
import polars as pl
import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no stubs

from pipeline.candles import CANDLE_COLUMNS, CANDLE_SCHEMA, KEY_COLUMNS
from pipeline.lake import TABLE, rollback

__all__ = [
    "UpsertResult",
    "count",
    "fetch",
    "prepare_batch",
    "prepare_keys",
    "rollback",
    "to_frame_schema",
    "upsert_once",
    "validate",
]

# Compared to decide "unchanged"; revision is not, so a restart that counts revisions from 0
# again does not rewrite candles whose values are already stored.
_VALUE_COLUMNS = tuple(
    c for c in CANDLE_COLUMNS if c not in (*KEY_COLUMNS, "revision", "ingested_at")
)
_KEY_MATCH = (
    "c.symbol = b.symbol AND c.period = b.period AND c.time = b.time AND c.sequence = b.sequence"
)
_TIME_RANGE = "c.time BETWEEN epoch_ms(?::BIGINT)::TIMESTAMPTZ AND epoch_ms(?::BIGINT)::TIMESTAMPTZ"
_COLUMN_LIST = ", ".join(CANDLE_COLUMNS)
_SEQUENCE = "sequence"
_MAX_SEQUENCE = 0x3FFFFF  # §4.2: 22 bits


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """Row counts of one :meth:`pipeline.store.CandleStore.upsert`."""

    inserted: int
    """Keys that were not stored before."""
    updated: int
    """Keys whose stored values changed."""
    unchanged: int
    """Keys stored already with the same values: not rewritten."""
    deleted: int
    """Stored rows removed by the batch's deletions."""
    retries: int = 0
    """Transient collisions retried before the transaction committed."""

    @property
    def written(self) -> int:
        """Rows inserted or rewritten."""
        return self.inserted + self.updated


def prepare_batch(frame: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """Check a candle batch and deduplicate it (newest ``revision`` wins, then the last row).

    Args:
        frame: Exactly the columns of :data:`pipeline.candles.CANDLE_SCHEMA`; ``sequence``
            may be missing or null, meaning 0 (time-based candles, §4.2).
        now: Fills a null ``ingested_at``.

    Raises:
        ValueError: Missing/extra columns, wrong types or null keys.
    """
    batch = validate(frame, CANDLE_COLUMNS, "candle batch")
    batch = batch.with_columns(
        pl.col("ingested_at").fill_null(pl.lit(now, dtype=CANDLE_SCHEMA["ingested_at"]))
    )
    # Counting distinct keys costs a third of deduplicating them, and batches from the
    # manager hold each key once: only a batch with repeats pays for the dedupe.
    key = _join_key(batch)
    if batch.select(pl.struct(key).n_unique()).item() != batch.height:
        # Newest revision wins; for equal revisions the later row (stable sort).
        batch = batch.sort("revision", maintain_order=True).unique(
            subset=key, keep="last", maintain_order=True
        )
    return batch.with_columns(
        pl.col("time").dt.cast_time_unit("us"),
        pl.col("ingested_at").dt.cast_time_unit("us"),
    )


def prepare_keys(deletions: pl.DataFrame) -> pl.DataFrame:
    """Check deletion keys and drop repeats.

    Raises:
        ValueError: The frame is not exactly (symbol, period, time[, sequence]) with set
            values (a missing or null ``sequence`` means 0).
    """
    keys = validate(deletions, KEY_COLUMNS, "deletions")
    return keys.unique(maintain_order=True).with_columns(pl.col("time").dt.cast_time_unit("us"))


def upsert_once(
    con: duckdb.DuckDBPyConnection, batch: pl.DataFrame, deletions: pl.DataFrame | None
) -> UpsertResult:
    """One attempt: deletions, classification, delete + insert, commit (or nothing to do).

    Args:
        con: The writer's connection (on its in-memory database, the lake attached).
        batch: A :func:`prepare_batch` result.
        deletions: A :func:`prepare_keys` result, or ``None``.
    """
    with _registered(con, deletion_keys=deletions):
        con.execute("BEGIN")
        try:
            deleted = 0
            if deletions is not None and deletions.height:
                deleted = count(
                    con,
                    f"DELETE FROM {TABLE} c USING deletion_keys b WHERE {_KEY_MATCH} "
                    f"AND {_TIME_RANGE}",
                    *_time_range(deletions),
                )
            with _registered(con, batch_ranges=_day_ranges(batch)):
                stored = fetch(
                    con,
                    f"SELECT c.* EXCLUDE (ingested_at) FROM {TABLE} c JOIN batch_ranges r "
                    "ON c.symbol = r.symbol AND c.period = r.period "
                    f"AND c.time BETWEEN r.low AND r.high WHERE {_TIME_RANGE}",
                    _time_range(batch),
                )
            changed, replaced = _classify(batch, stored)
            if changed.height == 0 and deleted == 0:
                rollback(con)
                return UpsertResult(0, 0, batch.height, 0)
            # As Arrow: DuckDB scans a polars frame through a conversion of its own that cost
            # ~25 ms more CPU per 100,000 rows inserted than polars' to_arrow (~2 ms).
            with _registered(con, changed_rows=changed.to_arrow(), replaced_keys=replaced):
                if replaced.height:
                    con.execute(
                        f"DELETE FROM {TABLE} c USING replaced_keys b WHERE {_KEY_MATCH} "
                        f"AND {_TIME_RANGE}",
                        _time_range(replaced),
                    )
                if changed.height:
                    con.execute(
                        f"INSERT INTO {TABLE} ({_COLUMN_LIST}) "
                        f"SELECT {_COLUMN_LIST} FROM changed_rows"
                    )
                con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise
    return UpsertResult(
        inserted=changed.height - replaced.height,
        updated=replaced.height,
        unchanged=batch.height - changed.height,
        deleted=deleted,
    )


def validate(frame: pl.DataFrame, columns: tuple[str, ...], what: str) -> pl.DataFrame:
    """``frame`` with exactly ``columns`` cast to the candle schema.

    Raises:
        ValueError: Not a polars frame, missing/extra columns, naive or non-UTC times, values
            that do not cast, or null keys; the message names ``what`` and the fix.
    """
    if not isinstance(frame, pl.DataFrame):
        raise ValueError(f"{what} must be a polars DataFrame, got {type(frame).__name__}")
    # Frames of time-based candles built before the column existed (§4.2: sequence 0).
    if _SEQUENCE in columns:
        sequence = pl.col(_SEQUENCE) if _SEQUENCE in frame.columns else pl.lit(0, pl.Int32)
        frame = frame.with_columns(sequence.fill_null(0).alias(_SEQUENCE))
    missing = [c for c in columns if c not in frame.columns]
    extra = [c for c in frame.columns if c not in columns]
    if missing or extra:
        raise ValueError(
            f"{what} has missing columns {missing} and unexpected columns {extra}; "
            f"expected exactly {list(columns)}"
        )
    for column in ("time", "ingested_at"):
        if column in columns:
            dtype = frame.schema[column]
            if not isinstance(dtype, pl.Datetime) or dtype.time_zone != "UTC":
                raise ValueError(
                    f"{what}: column {column!r} is {dtype}, expected Datetime('ms', 'UTC')"
                )
    try:
        out = frame.select(columns).cast({c: CANDLE_SCHEMA[c] for c in columns})
    except pl.exceptions.PolarsError as exc:
        raise ValueError(f"{what} does not fit the candle schema: {exc}") from exc
    nulls = [c for c in columns if c in KEY_COLUMNS and out[c].null_count()]
    if nulls:
        raise ValueError(f"{what} has null key values in {nulls}; keys must be set")
    if _SEQUENCE in columns:
        values = out[_SEQUENCE]
        outside = (values < 0) | (values > _MAX_SEQUENCE)
        if outside.any():
            raise ValueError(
                f"{what}: sequence {values.filter(outside)[0]} is out of range; a candle's "
                f"sequence is 0..{_MAX_SEQUENCE} (the low 22 bits of its index, §4.2)"
            )
    return out


def to_frame_schema(frame: pl.DataFrame) -> pl.DataFrame:
    """Query results in the manager's frame schema (times as Datetime('ms', 'UTC'))."""
    return frame.cast({c: CANDLE_SCHEMA[c] for c in frame.columns if c in CANDLE_SCHEMA})


def fetch(con: duckdb.DuckDBPyConnection, query: str, params: list[object]) -> pl.DataFrame:
    """Run a query into a polars frame.

    Through Arrow from ``execute``: ``con.sql(query, params=...).pl()`` took 2.3 s where
    this takes 40 ms (100k candles, duckdb 1.5.5).
    """
    frame = pl.from_arrow(con.execute(query, params).to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


def count(con: duckdb.DuckDBPyConnection, query: str, *params: object) -> int:
    """The first column of the first row as an int (0 for no row or NULL)."""
    row = con.execute(query, list(params)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _classify(batch: pl.DataFrame, stored: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a batch against its stored versions: (rows to write, keys to replace).

    A row whose key is stored with equal values (NaN equal to NaN) is not written again.
    """
    if stored.height == 0:
        return batch, batch.select(KEY_COLUMNS).clear()
    key = _join_key(batch, stored)
    stored = stored.with_columns(pl.col("time").dt.cast_time_unit("us")).unique(
        subset=key, keep="last"
    )
    joined = batch.join(stored, on=key, how="left", suffix="_stored")
    existed = pl.col("revision_stored").is_not_null()
    same = pl.all_horizontal(pl.col(c).eq_missing(pl.col(f"{c}_stored")) for c in _VALUE_COLUMNS)
    flagged = joined.with_columns(existed.alias("_existed"), (existed & same).alias("_same"))
    changed = flagged.filter(~pl.col("_same"))
    replaced = changed.filter(pl.col("_existed")).select(KEY_COLUMNS)
    return changed.select(CANDLE_COLUMNS), replaced


def _join_key(*frames: pl.DataFrame) -> list[str]:
    """The key columns to match ``frames`` on: without ``sequence`` when it is 0 throughout.

    Time-based candles (nearly every batch) all have sequence 0, and hashing a fourth key
    column made the classification join ~40% slower (47 -> 66 ms per 100,000 rows).
    """
    if all(frame[_SEQUENCE].max() in (0, None) for frame in frames):
        return [c for c in KEY_COLUMNS if c != _SEQUENCE]
    return list(KEY_COLUMNS)


def _day_ranges(batch: pl.DataFrame) -> pl.DataFrame:
    """(symbol, period, low, high): the batch's first and last time per series and UTC day."""
    return (
        batch.group_by("symbol", "period", pl.col("time").dt.truncate("1d").alias("day"))
        .agg(pl.col("time").min().alias("low"), pl.col("time").max().alias("high"))
        .drop("day")
    )


def _time_range(frame: pl.DataFrame) -> list[object]:
    """Parameters for :data:`_TIME_RANGE`: the frame's first and last ``time`` in ms."""
    span = frame.select(
        pl.col("time").min().dt.epoch("ms").alias("low"),
        pl.col("time").max().dt.epoch("ms").alias("high"),
    ).row(0)
    return list(span)


@contextmanager
def _registered(
    con: duckdb.DuckDBPyConnection, **frames: pl.DataFrame | pa.Table | None
) -> Iterator[None]:
    names = [name for name, frame in frames.items() if frame is not None]
    for name in names:
        con.register(name, frames[name])
    try:
        yield
    finally:
        for name in names:
            con.unregister(name)
