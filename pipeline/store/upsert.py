"""The upsert core of :class:`pipeline.store.CandleStore`: batch checks and one transaction.

DuckLake has no primary key, so uniqueness of (symbol, period, time, sequence) is kept here:
the batch is deduplicated, the stored versions of its keys are fetched, rows stored with equal
values are dropped, and the rest is written as delete + insert in one transaction.

The stored versions are looked up by *ranges*, one per series and UTC day of the batch,
rather than by joining the batch's keys: the join's build side is then tens of rows instead
of the whole batch (``bench_store``, revised upsert), and DuckLake still skips every file whose
min/max statistics miss the ranges. A range can return stored rows the batch does not hold;
:func:`_classify` joins on the exact keys, so those are ignored.

Most rows need no lookup at all: a backfill and live ingest write candles newer than anything
stored for their series. :class:`NewestStored` keeps, per writer connection, a *ceiling* on
each series' newest stored time; rows above it are new by construction and skip the lookup,
a large share of a backfill flush (``bench_store``, next 100,000 of a stored series).

The rows to write go into one Parquet file that the writer writes itself
(:func:`pipeline.store.lake.write_data_file`) and registers in the same transaction
(``ducklake_add_data_files``), instead of a DuckLake ``INSERT``, most of whose time is DuckDB's
Parquet writer (``bench_store``, upsert against a plain append). Small batches too (a live
flush of a few hundred rows costs ~5 ms more than an ``INSERT``): DuckLake inlines a small
``INSERT`` into the catalog, and a file keeps every row of a local store in Parquet, where
compaction merges it, and the catalog free of inlined rows. Only a data path on object
storage, which the writer cannot write files into itself, goes through ``INSERT``.

Neither path piles up memory. An earlier reading that DuckDB 1.5.5 kept ~300 bytes of Python
objects for every scan of a batch was its caches filling over the first few thousand scans:
measured in rounds of 400 live-sized upserts (50 new candles each), the ``INSERT`` path's
traced heap grew 16, 8, 2, 2, 3, 1, 2, 1, 1, 0, -1, 0 bytes per upsert, the file path's
16, 7, 6, 3, 2, 1 (benchmarks/README.md, "Second pass").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from pipeline.dxlink import SEQUENCE_MASK
from pipeline.schema import CANDLE_COLUMNS, CANDLE_SCHEMA, KEY_COLUMNS, VALUE_COLUMNS
from pipeline.store.lake import TABLE, add_data_file, registered, rollback, write_data_file

__all__ = [
    "FILE_MIN_ROWS",
    "NewestStored",
    "UpsertResult",
    "count",
    "fetch",
    "prepare_batch",
    "prepare_keys",
    "series_spans",
    "to_frame_schema",
    "upsert_once",
    "validate",
]

_KEY_MATCH = (
    "c.symbol = b.symbol AND c.period = b.period AND c.time = b.time AND c.sequence = b.sequence"
)
_TIME_RANGE = "c.time BETWEEN epoch_ms(?::BIGINT)::TIMESTAMPTZ AND epoch_ms(?::BIGINT)::TIMESTAMPTZ"
_COLUMN_LIST = ", ".join(CANDLE_COLUMNS)
_PARAMETER = "candles_parameter_"  # fetch's session variables: _0, _1, ...
_SEQUENCE = "sequence"
_MAX_SEQUENCE = SEQUENCE_MASK  # §4.2: 22 bits
# NOT NULL in schema.sql besides the key and ingested_at (which prepare_batch fills): DuckLake
# does not check a data file the writer registers itself, so it is checked here.
_REQUIRED = ("revision",)
_SERIES = ["symbol", "period"]
_NEWEST_QUERY_CHUNK = 1_000  # symbols per lookup of newest stored times

FILE_MIN_ROWS = 1
"""Batches with at least this many rows to write go into a data file the writer writes
itself (every batch: see the module doc); smaller ones through DuckLake's ``INSERT`` (tests
raise it to exercise that path, which a data path on object storage always takes)."""


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


class NewestStored:
    """A ceiling on each series' newest stored ``time``, for one writer connection.

    The ceiling is never below the truth: it is read from the lake the first time a series
    is seen on the connection, and raised to a batch's newest time *before* that batch
    commits, so a commit whose outcome is unknown (a failed ``COMMIT``) leaves it high, not
    low. Deletions only lower the truth. A row above its series' ceiling is therefore not
    stored, whatever else happened. This holds as long as no other process writes the same
    series, which sharding guarantees (docs/scaling.md: a series belongs to one shard); a
    new connection (:meth:`pipeline.store.CandleStore` recycles them) starts empty and
    reads again.
    """

    __slots__ = ("_ceiling",)

    def __init__(self) -> None:
        # (symbol, period) -> newest stored time in µs since the epoch, None for no row
        self._ceiling: dict[tuple[str, str], int | None] = {}

    def __len__(self) -> int:
        return len(self._ceiling)

    def ceiling(self, symbol: str, period: str) -> int | None:
        """The known ceiling (µs since the epoch) of one series; ``None`` if none is stored
        or the series was not looked up yet on this connection."""
        return self._ceiling.get((symbol, period))

    def split(
        self, con: duckdb.DuckDBPyConnection, batch: pl.DataFrame, spans: pl.DataFrame
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Split a :func:`prepare_batch` result into (rows not stored, rows that may be).

        Series first seen here are looked up in one query, pruned to their files by the
        ``symbol`` statistics. When every row is new, the first frame is ``batch`` itself.

        Args:
            con: The writer's connection.
            batch: The rows.
            spans: :func:`series_spans` of ``batch``.
        """
        keys = list(spans.select(_SERIES).iter_rows())
        unknown = [key for key in keys if key not in self._ceiling]
        if unknown:
            self._load(con, unknown)
        ceilings = [self._ceiling[key] for key in keys]
        lows, highs = spans["low"].to_list(), spans["high"].to_list()
        if all(top is None or low > top for low, top in zip(lows, ceilings, strict=True)):
            return batch, batch.clear()
        if all(top is not None and high <= top for high, top in zip(highs, ceilings, strict=True)):
            return batch.clear(), batch  # a re-send or a revision: no row-wise split needed
        known = spans.select(_SERIES).with_columns(pl.Series("_ceiling", ceilings, dtype=pl.Int64))
        above = pl.col("_ceiling").is_null() | (pl.col("time").dt.epoch("us") > pl.col("_ceiling"))
        flagged = batch.join(known, on=_SERIES, how="left").with_columns(above.alias("_new"))
        fresh = flagged.filter(pl.col("_new")).select(batch.columns)
        maybe = flagged.filter(~pl.col("_new")).select(batch.columns)
        return fresh, maybe

    def raise_to(self, spans: pl.DataFrame) -> None:
        """Raise the ceilings to the newest times of :func:`series_spans` (before COMMIT)."""
        for symbol, period, top in spans.select(*_SERIES, "high").iter_rows():
            current = self._ceiling.get((symbol, period))
            self._ceiling[(symbol, period)] = top if current is None else max(current, top)

    def _load(self, con: duckdb.DuckDBPyConnection, series: Iterable[tuple[str, str]]) -> None:
        wanted = set(series)
        symbols = sorted({symbol for symbol, _ in wanted})
        for start in range(0, len(symbols), _NEWEST_QUERY_CHUNK):
            chunk = symbols[start : start + _NEWEST_QUERY_CHUNK]
            # An IN list of literals lets DuckLake skip every file whose symbol range misses
            # it; a join would read them all (bench_store, first upsert of a new series).
            rows = con.execute(
                f"SELECT symbol, period, epoch_us(max(time)) FROM {TABLE} "
                f"WHERE symbol IN ({', '.join(['?'] * len(chunk))}) GROUP BY ALL",
                chunk,
            ).fetchall()
            for symbol, period, top in rows:
                if (symbol, period) in wanted:
                    self._ceiling[(symbol, period)] = int(top)
        for key in wanted:
            self._ceiling.setdefault(key, None)


def series_spans(batch: pl.DataFrame) -> pl.DataFrame:
    """(symbol, period, low, high): each series' first and last ``time`` in µs since the epoch."""
    epoch = pl.col("time").dt.epoch("us")
    return batch.group_by(_SERIES).agg(epoch.min().alias("low"), epoch.max().alias("high"))


def prepare_batch(frame: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """Check a candle batch and deduplicate it (newest ``revision`` wins, then the last row).

    Args:
        frame: Exactly the columns of :data:`pipeline.candles.CANDLE_SCHEMA`; ``sequence``
            may be missing or null, meaning 0 (time-based candles, §4.2).
        now: Fills a null ``ingested_at``.

    Raises:
        ValueError: Missing/extra columns, wrong types or null keys.
    """
    batch = validate(frame, CANDLE_COLUMNS, "candle batch").with_columns(
        pl.col("time").dt.cast_time_unit("us"),
        pl.col("ingested_at")
        .fill_null(pl.lit(now, dtype=CANDLE_SCHEMA["ingested_at"]))
        .dt.cast_time_unit("us"),
    )
    # Sorted by key as DuckLake sorts its own files (SET SORTED BY, schema.sql), so that the
    # data file's statistics prune by series and time. Repeats of a key then sit together,
    # ordered by revision and, stably, by position: spotting them is one comparison with the
    # previous row, less work than counting distinct keys.
    batch = batch.sort([*KEY_COLUMNS, "revision"], maintain_order=True)
    repeated = pl.all_horizontal(pl.col(c) == pl.col(c).shift(1) for c in KEY_COLUMNS).any()
    if batch.select(repeated).item():
        # Newest revision wins; for equal revisions the later row.
        batch = batch.unique(subset=list(KEY_COLUMNS), keep="last", maintain_order=True)
    return batch


def prepare_keys(deletions: pl.DataFrame) -> pl.DataFrame:
    """Check deletion keys and drop repeats.

    Raises:
        ValueError: The frame is not exactly (symbol, period, time[, sequence]) with set
            values (a missing or null ``sequence`` means 0).
    """
    keys = validate(deletions, KEY_COLUMNS, "deletions")
    return keys.unique(maintain_order=True).with_columns(pl.col("time").dt.cast_time_unit("us"))


def upsert_once(
    con: duckdb.DuckDBPyConnection,
    batch: pl.DataFrame,
    deletions: pl.DataFrame | None,
    *,
    newest: NewestStored,
    data_folder: Path | None,
    before_commit: Callable[[], None] | None = None,
) -> UpsertResult:
    """One attempt: deletions, classification, delete + write, commit (or nothing to do).

    Args:
        con: The writer's connection (on its in-memory database, the lake attached).
        batch: A :func:`prepare_batch` result.
        deletions: A :func:`prepare_keys` result, or ``None``.
        newest: The connection's :class:`NewestStored`.
        data_folder: Where the table's Parquet files live (:func:`~.lake.table_folder`);
            ``None`` (object storage) writes through DuckLake's ``INSERT``.
        before_commit: Runs right before ``COMMIT``; raising rolls the transaction back
            (the shard lease's last check, :class:`~pipeline.store.CatalogLease`).
    """
    written: Path | None = None
    committing = False
    deleting = deletions if deletions is not None and deletions.height else None
    with registered(con, deletion_keys=deleting):
        con.execute("BEGIN")
        try:
            deleted = 0
            if deleting is not None:
                deleted = count(
                    con,
                    f"DELETE FROM {TABLE} c USING deletion_keys b WHERE {_KEY_MATCH} "
                    f"AND {_TIME_RANGE}",
                    *_time_range(deleting),
                )
            spans = series_spans(batch)
            fresh, maybe_stored = newest.split(con, batch, spans)
            revised, replaced = _classify(maybe_stored, _stored_versions(con, maybe_stored))
            changed = fresh
            if maybe_stored.height:
                # The split and the classification join may reorder; data files are sorted.
                changed = pl.concat([fresh, revised]).sort(KEY_COLUMNS)
            if changed.height == 0 and deleted == 0:
                rollback(con)
                return UpsertResult(0, 0, batch.height, 0)
            if replaced.height:
                with registered(con, replaced_keys=replaced):
                    con.execute(
                        f"DELETE FROM {TABLE} c USING replaced_keys b WHERE {_KEY_MATCH} "
                        f"AND {_TIME_RANGE}",
                        _time_range(replaced),
                    )
            if changed.height >= FILE_MIN_ROWS and data_folder is not None:
                written = write_data_file(con, data_folder, changed)
                add_data_file(con, written)
            elif changed.height:
                _insert(con, changed)
            if before_commit is not None:
                before_commit()
            newest.raise_to(spans)  # before COMMIT: see NewestStored
            committing = True
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            # A failed COMMIT may still have committed (a lost reply from a PostgreSQL
            # catalog): its file then stays, and is removed by compaction's orphan cleanup
            # if nothing references it.
            if written is not None and not committing:
                written.unlink(missing_ok=True)
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
    unset = [c for c in _REQUIRED if c in columns and out[c].null_count()]
    if unset:
        raise ValueError(
            f"{what} has null values in {unset}; the store needs them set "
            "(revision: 0 for a candle not revised yet)"
        )
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


def fetch(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[object]) -> pl.DataFrame:
    """Run a query with ``?`` parameters into a polars frame, without pyarrow.

    The query runs as a relation, which polars takes through the Arrow C stream interface as
    fast as the ``to_arrow_table`` route. ``con.sql(query, params=...)`` would bind the
    parameters itself but builds its result a far slower way (duckdb 1.5.5; ``bench_store``,
    revised upsert), so they are bound here: an ``int`` as its literal, anything else as a
    session variable (``SET VARIABLE``, typed by DuckDB as ``execute`` types a parameter)
    read with ``getvariable``. Every ``?`` of ``query`` is a parameter (the store's own
    queries hold none in literals).
    """
    parts = query.split("?")
    if len(parts) != len(params) + 1:
        raise ValueError(f"{len(parts) - 1} placeholders for {len(params)} parameters: {query}")
    bound = [parts[0]]
    for index, (value, part) in enumerate(zip(params, parts[1:], strict=True)):
        if type(value) is int:  # not bool, a subclass; an int's literal cannot inject SQL
            bound.append(str(value))
        else:
            con.execute(f"SET VARIABLE {_PARAMETER}{index} = ?", [value])
            bound.append(f"getvariable('{_PARAMETER}{index}')")
        bound.append(part)
    return pl.DataFrame(con.sql("".join(bound)))


def count(con: duckdb.DuckDBPyConnection, query: str, *params: object) -> int:
    """The first column of the first row as an int (0 for no row or NULL)."""
    row = con.execute(query, list(params)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _stored_versions(con: duckdb.DuckDBPyConnection, batch: pl.DataFrame) -> pl.DataFrame:
    """The stored rows in the batch's (series, UTC day) time ranges (see the module doc)."""
    if batch.height == 0:
        return batch.drop("ingested_at")
    with registered(con, batch_ranges=_day_ranges(batch)):
        return fetch(
            con,
            f"SELECT c.* EXCLUDE (ingested_at) FROM {TABLE} c JOIN batch_ranges r "
            "ON c.symbol = r.symbol AND c.period = r.period "
            f"AND c.time BETWEEN r.low AND r.high WHERE {_TIME_RANGE}",
            _time_range(batch),
        )


def _insert(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> None:
    """INSERT through DuckLake (a data path on object storage: see the module doc)."""
    with registered(con, changed_rows=rows):
        con.execute(f"INSERT INTO {TABLE} ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM changed_rows")


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
    # The values decide "unchanged", not the revision: a restart that counts revisions from 0
    # again does not rewrite candles whose values are already stored.
    same = pl.all_horizontal(pl.col(c).eq_missing(pl.col(f"{c}_stored")) for c in VALUE_COLUMNS)
    flagged = joined.with_columns(existed.alias("_existed"), (existed & same).alias("_same"))
    changed = flagged.filter(~pl.col("_same"))
    replaced = changed.filter(pl.col("_existed")).select(KEY_COLUMNS)
    return changed.select(CANDLE_COLUMNS), replaced


def _join_key(*frames: pl.DataFrame) -> list[str]:
    """The key columns to match ``frames`` on: without ``sequence`` when it is 0 throughout.

    Time-based candles (nearly every batch) all have sequence 0, and hashing a fourth key
    column makes the classification join slower for nothing (``bench_store``, revised
    upsert).
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
