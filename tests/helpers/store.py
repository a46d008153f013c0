"""Stores and candle frames for the store tests, and reader processes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from pipeline.schema import CANDLE_SCHEMA
from pipeline.store import CandleStore, StoreError

T0 = datetime(2025, 8, 27, 13, 30, tzinfo=UTC)

T0_MS = 1_756_301_400_000

MINUTE = timedelta(minutes=1)

INGESTED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def candle_frame(
    symbol: str = "AAPL",
    period: str = "1m",
    n: int = 3,
    *,
    start: datetime = T0,
    step: timedelta = MINUTE,
    close: float = 100.0,
    revision: int = 0,
) -> pl.DataFrame:
    """``n`` candles of one series in the store's schema; close rises by 1 per candle."""
    rows = [
        {
            "symbol": symbol,
            "period": period,
            "time": start + i * step,
            "open": close + i - 0.5,
            "high": close + i + 1.0,
            "low": close + i - 1.0,
            "close": close + i,
            "volume": 1000.0 + i,
            "vwap": close + i - 0.2,
            "count": 10 + i,
            "bid_volume": 400.0,
            "ask_volume": 550.0,
            "imp_volatility": float("nan"),
            "open_interest": float("nan"),
            "revision": revision,
            "ingested_at": None,
            "sequence": 0,
        }
        for i in range(n)
    ]
    return pl.DataFrame(rows, schema=CANDLE_SCHEMA)


def keys(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select("symbol", "period", "time", "sequence")


def open_store(path: Path, **kwargs: object) -> CandleStore:
    """A store with the test clock; extension signatures unchecked (saves ~1.2 s per open)."""
    options: dict[str, object] = {"clock": lambda: INGESTED, "verify_extensions": False}
    options.update(kwargs)
    return CandleStore(path, **options)  # type: ignore[arg-type]


REPO = Path(__file__).resolve().parents[2]

READER = """
import json, sys, threading, time
from pipeline.store import connect
path, mode, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
con = connect(path, verify_extensions=False)
queries, errors, backwards, last = 0, [], 0, -1
print("ready", flush=True)
while not stop.is_set():
    try:
        if mode == "reopen":  # `candles query`: a fresh connection per query
            con.close()
            con = connect(path, verify_extensions=False)
        n = con.execute("SELECT count(*) FROM candles").fetchone()[0]
        con.execute("SELECT count(*), max(missing_periods) FROM candle_gaps").fetchone()
        con.execute("SELECT sum(close) FROM latest_candles").fetchone()
        queries += 1
        backwards += n < last
        if n != last:
            print(json.dumps({"seen": n}), flush=True)
        last = n
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:300])
    if pause:
        time.sleep(pause)
print(json.dumps({"queries": queries, "errors": errors, "backwards": backwards}), flush=True)
"""


def bulk_frame(first: int, n: int, *, symbols: int = 10) -> pl.DataFrame:
    """``n`` one-minute candles spread over ``symbols`` series, keys unique per ``first``."""
    rows = pl.int_range(first, first + n, eager=True).alias("i").to_frame()
    return rows.select(
        symbol=pl.format("S{}", pl.col("i") % symbols),
        period=pl.lit("1m"),
        time=pl.from_epoch(1_756_252_800_000 + (pl.col("i") // symbols) * 60_000, time_unit="ms"),
        open=pl.col("i").cast(pl.Float64),
        high=pl.col("i").cast(pl.Float64) + 1,
        low=pl.col("i").cast(pl.Float64) - 1,
        close=pl.col("i").cast(pl.Float64),
        volume=pl.lit(10.0),
        vwap=pl.col("i").cast(pl.Float64),
        count=pl.lit(3, pl.Int64),
        bid_volume=pl.lit(4.0),
        ask_volume=pl.lit(6.0),
        imp_volatility=pl.lit(float("nan")),
        open_interest=pl.lit(float("nan")),
        revision=pl.lit(0, pl.Int64),
        ingested_at=pl.lit(None, CANDLE_SCHEMA["ingested_at"]),
    ).with_columns(pl.col("time").dt.replace_time_zone("UTC"))


class ReaderProcess:
    """A separate Python process querying the lake in a loop until told to stop."""

    def __init__(self, path: Path, mode: str, *, pause: float = 0.0) -> None:
        """Start it; ``mode`` "hold" keeps one connection, "reopen" opens one per round;
        ``pause`` seconds between rounds (0: back to back)."""
        self.process = subprocess.Popen(
            [sys.executable, "-c", READER, str(path), mode, str(pause)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.line() == "ready"

    def line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def wait_until_seen(self, count: int) -> None:
        """Block until this reader has observed ``count`` rows (it reports every change)."""
        while True:
            line = self.line()
            assert line, "reader process ended early"
            if json.loads(line).get("seen") == count:
                return

    def finish(self) -> dict[str, object]:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        while "queries" not in (report := json.loads(self.line())):
            pass
        self.process.wait()
        assert isinstance(report, dict), f"the reader's report is not a JSON object: {report!r}"
        return report

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def open_and_count(path: str, start: object, results: object) -> None:
    """Child process: wait for the others, open the store (migrating it), report its count."""
    start.wait()  # type: ignore[attr-defined]
    try:
        with CandleStore(path, verify_extensions=False, retry_delay_s=0.01) as store:
            results.put(store.count())  # type: ignore[attr-defined]
    except StoreError as exc:
        results.put(str(exc))  # type: ignore[attr-defined]
