"""Rebuilding (or repairing) a store from a recording, in one process, without sockets.

``candles rebuild --from-recording FILES --store DIR`` feeds the recorded *server* frames of
every connection through the same path live ingest uses: a fresh
:class:`~pipeline.dxlink.ClientProtocol` per recorded connection (decode, snapshot flags),
one :class:`~pipeline.candles.CandleDataManager` (assembly, completion, revisions) and the
:class:`~pipeline.store.CandleStore` upsert, so the store ends up as the recorded run's did.

How it mirrors :class:`~pipeline.ingest.IngestService`:

* **time**: each record's ``t`` is the client's clock when the frame arrived (the source's
  clock: the wall clock against tastytrade, the simulator's own in a simulator run); the
  manager's clock is ``max(t, newest candle time seen)``, exactly the service's ``now_ms``, and
  the last record's ``t`` (the connection's closing) completes what the run's final flush did.
  A run that had no source clock (a simulator at a URL) completed candles by the newest
  candle time alone; its header says so (``completion_clock: stream``) and ``t`` is ignored;
* **flushes**: every :data:`FLUSH_BATCH_EVENTS` events, written in a thread while decoding
  goes on (one at a time), and once at the end; the manager's back-pressure waits for them;
* **completion**: the manager's grace is the recorded run's (each file's header says it), so
  the same candles count as complete; recordings that do not say use ``manager.grace_seconds``;
* **channels**: the protocol opens each channel with the number the recording shows (from
  the server's CHANNEL_OPENED), so no frame is rewritten; the client's own frames are not
  needed, and the AUTH token (redacted in the file) is never used.

Damage in the recording (:mod:`pipeline.recording.stream`) ends the connection it hits, as a
dropped connection would: nothing after it from that connection reaches the store, and every
such cut is in :attr:`RebuildReport.problems`. The store is opened as ingest opens it (object
storage, a PostgreSQL catalog) under the same one-writer guard (the folder's lock, or the
catalog's lease for the whole lake), so a rebuild never runs beside an ingest of that store.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from pipeline.candles import BackpressureError, Batch, CandleDataManager
from pipeline.config import Config
from pipeline.dxlink import (
    AUTHORIZED,
    Candle,
    CandleBlock,
    CandlesReceived,
    ClientProtocol,
    Contract,
    UsageError,
)
from pipeline.ingest.service import FLUSH_BATCH_EVENTS
from pipeline.recording import (
    CLOSED,
    OPENED,
    RECEIVED,
    Record,
    Recording,
    usable_records,
)
from pipeline.sharding import SINGLE
from pipeline.store import (
    CandleStore,
    CatalogLease,
    S3Options,
    UpsertResult,
    WriterLock,
    parse_catalog,
)

__all__ = ["RebuildReport", "rebuild"]

logger = logging.getLogger(__name__)

_time_of = operator.attrgetter("time")
_event_time_of = operator.attrgetter("event_time")
_CHANNEL_OPENED = "CHANNEL_OPENED"
_PLACEHOLDER_TOKEN = "recording"  # what the protocol answers AUTH_STATE with; never sent


@dataclass(slots=True)
class RebuildReport:
    """What a rebuild read and wrote."""

    files: int = 0
    sessions: int = 0
    connections: int = 0
    frames: int = 0
    """Server frames fed to the protocol."""
    candles_received: int = 0
    """Candle events decoded (revisions and replayed snapshots included)."""
    candles_stored: int = 0
    """Completed candles handed to the store (what ``candles_completed_total`` counts)."""
    candles_deleted: int = 0
    flushes: int = 0
    grace_seconds: float = 0.0
    """The completion grace used: the recorded run's, else ``manager.grace_seconds``."""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    """Every part of the recording that was not used, and why (file and byte offset)."""

    @property
    def rate(self) -> float:
        """Completed candles stored per second of the whole rebuild."""
        return self.candles_stored / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for the command line."""
        return (
            f"rebuilt from {self.files} files ({self.sessions} sessions, {self.connections} "
            f"connections, {self.frames:,} server frames): {self.candles_received:,} candle "
            f"events, {self.candles_stored:,} completed candles stored, "
            f"{self.candles_deleted:,} deleted, in {self.seconds:.2f} s "
            f"({self.rate:,.0f} candles/s; grace {self.grace_seconds:g} s)"
        )


def rebuild(
    recording: Recording,
    config: Config,
    *,
    store: CandleStore | None = None,
    on_problem: Callable[[str], None] | None = None,
) -> RebuildReport:
    """Feed ``recording`` through protocol, manager and store (see the module docstring).

    Args:
        recording: The recording to rebuild from (damaged and unusable files included: their
            problems are reported, their intact parts used).
        config: ``store`` (path, catalog, data path) and ``manager`` (bounds, grace) settings.
        store: An open store to write (tests); by default the config's, under its writer lock.
        on_problem: Called with each problem as it is found (also in the report).

    Raises:
        StoreBusy: another process writes the store.
        StoreError: the store could not be opened or written (nothing is half-applied: the
            upsert is one transaction per flush).
    """
    report = RebuildReport(files=len(recording.files), sessions=len(recording.sessions))

    def problem(text: str) -> None:
        report.problems.append(text)
        if on_problem is not None:
            on_problem(text)

    for damage in recording.unusable:
        problem(f"{damage}; the file is not used")
    report.grace_seconds = _grace_seconds(recording, config)
    if store is not None:
        _Rebuild(recording, store, config, report).run(problem)
        return report
    with _own_store(config) as opened:
        _Rebuild(recording, opened, config, report).run(problem)
    return report


@contextlib.contextmanager
def _own_store(config: Config) -> Iterator[CandleStore]:
    """The config's store, opened as ingest opens it, under the same one-writer guard: the
    folder's lock for a SQLite catalog, the lease in a PostgreSQL one (whole lake: shard 1/1,
    so no ingest shard runs beside it)."""
    cfg = config.store
    lock: WriterLock | None = None
    lease: CatalogLease | None = None
    if parse_catalog(cfg.catalog, Path(cfg.path)).kind == "postgres":
        lease = CatalogLease(parse_catalog(cfg.catalog, Path(cfg.path)).target, SINGLE)
        lease.acquire()
    else:
        lock = WriterLock(cfg.path, SINGLE)
        lock.acquire()
    try:
        store = CandleStore(
            cfg.path,
            catalog=cfg.catalog,
            data_path=cfg.data_path,
            recycle_after=cfg.recycle_after,
            s3=S3Options(**cfg.s3.model_dump()),
            application_name=lease.application_name if lease else None,
            before_commit=lease.check if lease else None,
        )
        try:
            yield store
        finally:
            store.close()
    finally:
        if lock is not None:
            lock.release()
        if lease is not None:
            lease.release()


def _grace_seconds(recording: Recording, config: Config) -> float:
    """The recorded runs' grace when their headers agree on one, else the config's."""
    recorded = {f.header.meta.get("grace_seconds") for f in recording.files} - {None}
    if len(recorded) == 1:
        (grace,) = recorded
        if isinstance(grace, int | float) and grace >= 0:
            return float(grace)
    if len(recorded) > 1:
        logger.warning(
            "the recorded runs used different manager.grace_seconds (%s); using %g",
            ", ".join(sorted(map(str, recorded))), config.manager.grace_seconds,
        )  # fmt: skip
    return config.manager.grace_seconds


class _Rebuild:
    """One rebuild's state: the manager, the open protocols, the flush in flight."""

    def __init__(
        self, recording: Recording, store: CandleStore, config: Config, report: RebuildReport
    ) -> None:
        settings = config.manager
        self.recording = recording
        self.store = store
        self.report = report
        self.manager = CandleDataManager(
            max_series=settings.max_series,
            max_historical_candles=settings.max_historical_candles,
            max_pinned_candles=settings.max_unstored,
            grace_ms=int(report.grace_seconds * 1000),
        )
        self.protocols: dict[tuple[str, int], ClientProtocol] = {}
        self.by_stream = {
            f.header.session
            for f in recording.files
            if f.header.meta.get("completion_clock") == "stream"
        }
        """Sessions whose run completed candles by the stream's time alone."""
        self.stream_time_ms = 0
        self.clock_ms = 0
        self.unflushed = 0
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="rebuild-store")
        self.in_flight: tuple[Batch, Future[UpsertResult]] | None = None

    def now_ms(self) -> int:
        return max(self.clock_ms, self.stream_time_ms)

    def run(self, problem: Callable[[str], None]) -> None:
        started = time.perf_counter()
        by_stream = self.by_stream
        try:
            for _, session, record in usable_records(
                self.recording.entries(), lambda p: problem(str(p))
            ):
                if record.t > self.clock_ms and session not in by_stream:
                    self.clock_ms = record.t
                kind = record.d
                if kind == RECEIVED:
                    self._received(session, record)
                elif kind == OPENED:
                    self._opened(session, record)
                elif kind == CLOSED:
                    self.protocols.pop((session, record.c), None)
            self._settle()
            self._flush()
            self._settle()
        finally:
            self.writer.shutdown(wait=True)
            self.report.seconds = time.perf_counter() - started

    # ------------------------------------------------------------------ records

    def _opened(self, session: str, record: Record) -> None:
        protocol = ClientProtocol(token=_PLACEHOLDER_TOKEN)
        protocol.start(record.m / 1e9)
        protocol.messages_to_send()  # a recording is read, not answered
        self.protocols[(session, record.c)] = protocol
        self.report.connections += 1

    def _received(self, session: str, record: Record) -> None:
        protocol = self.protocols[(session, record.c)]
        frame = record.f
        if _CHANNEL_OPENED in frame:
            self._open_channel(protocol, frame, record.m / 1e9)
        protocol.receive_message(frame, record.m / 1e9)
        protocol.messages_to_send()
        self.report.frames += 1
        for event in protocol.events_received():
            if isinstance(event, CandlesReceived):
                self._apply(event.candles)

    @staticmethod
    def _open_channel(protocol: ClientProtocol, frame: str, now: float) -> None:
        """Open the channel a CHANNEL_OPENED confirms, with its number and contract."""
        try:
            message = orjson.loads(frame)
            number, parameters = message["channel"], message.get("parameters") or {}
            if message.get("type") != _CHANNEL_OPENED or protocol.state is not AUTHORIZED:
                return
            if protocol.channel_state(number) is not None:
                return  # opened already
            contract = parameters.get("contract", Contract.AUTO)
            protocol.open_channel(contract, message.get("service", "FEED"), number=number, now=now)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, UsageError):
            return  # the protocol reports what is wrong with the frame itself
        finally:
            protocol.messages_to_send()

    def _apply(self, candles: Sequence[Candle]) -> None:
        report = self.report
        report.candles_received += len(candles)
        if isinstance(candles, CandleBlock):
            newest = candles.newest_time()
        elif candles:
            newest = max(max(map(_time_of, candles)), max(map(_event_time_of, candles)))
        else:
            return
        if newest > self.stream_time_ms:
            self.stream_time_ms = newest
        while True:
            try:
                self.manager.update(candles, self.now_ms())
                break
            except BackpressureError:
                # Too many completed candles wait for the store: write them before more.
                self._settle()
                self._flush()
                self._settle()
        self.unflushed += len(candles)
        if self.in_flight is not None and self.in_flight[1].done():
            self._settle()
        if self.unflushed >= FLUSH_BATCH_EVENTS and self.in_flight is None:
            self._flush()

    # ------------------------------------------------------------------ store

    def _flush(self) -> None:
        """Hand the completed candles to the store's thread (one flush in flight at most)."""
        self.unflushed = 0
        self.manager.advance(self.now_ms())
        batch = self.manager.take_completed()
        if batch.empty:
            return
        self.in_flight = (batch, self.writer.submit(self._write, batch))

    def _write(self, batch: Batch) -> UpsertResult:
        return self.store.upsert(batch.frame, batch.deletions)

    def _settle(self) -> None:
        """Wait for the flush in flight; commit it (or release it and raise its error)."""
        if self.in_flight is None:
            return
        batch, future = self.in_flight
        self.in_flight = None
        try:
            future.result()
        except BaseException:
            self.manager.release(batch)
            raise
        self.manager.commit(batch)
        self.report.flushes += 1
        self.report.candles_stored += batch.rows
        self.report.candles_deleted += batch.deletions.height
