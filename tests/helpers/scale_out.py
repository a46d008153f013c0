"""What the scale-out tests share: the series three shards split, a reader process, a probe.

Used by ``tests/test_scale_out.py`` (a PostgreSQL catalog with a shared data folder) and
``tests/test_scale_out_s3.py`` (the same catalog with the data in S3, hosts sharing no disk).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from pipeline.dxlink import CandleSymbol
from pipeline.store import S3Options, StoreError, connect
from tests.helpers.service import START_MS

__all__ = [
    "FROM_MS",
    "INTERVALS",
    "MINUTE",
    "READER",
    "SERIES",
    "SHARDS",
    "SYMBOLS",
    "newest_stored",
    "start_reader",
]

MINUTE = 60_000
SHARDS = 3
SYMBOLS = ["AAPL", "SPY", "QQQ", "MSFT", "TSLA", "NVDA"]
INTERVALS = ["1m", "5m"]
SERIES = [CandleSymbol.of(s, i).normalized for s in SYMBOLS for i in INTERVALS]
FROM_MS = START_MS - 3600_000

# A reader like a notebook (on a machine of its own): one connection held open, queried over
# and over while the shards write; it stops when the test creates the stop file and prints
# what it saw as JSON.
READER = """
import json, sys, time
from pathlib import Path
from pipeline.store import connect
catalog, data_path, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
con = connect(Path(stop).parent, catalog=catalog, data_path=data_path,
              verify_extensions=False)
ok, errors, counts = 0, [], []
while not stop.exists():
    try:
        counts.append(con.execute("SELECT count(*) FROM candles").fetchone()[0])
        con.execute("SELECT count(*), max(close) FROM latest_candles").fetchone()
        ok += 1
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:300])
    time.sleep(0.05)  # pacing of the reader's own loop, not synchronisation
con.close()
print(json.dumps({"ok": ok, "errors": errors, "counts": counts}))
"""


def start_reader(
    catalog: str, data: str, stop: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """:data:`READER` in a process of its own, in ``stop``'s folder (``env``: its whole
    environment, ``None``: this one's)."""
    return subprocess.Popen(
        [sys.executable, "-c", READER, catalog, data, str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=None if env is None else dict(env),
        cwd=stop.parent,
    )


def newest_stored(
    catalog: str, data: str, root: Path, s3: S3Options | None = None
) -> dict[str, int]:
    """Newest stored candle (ms) per series ({} before the first flush created the table)."""
    try:
        con = connect(root, catalog=catalog, data_path=data, verify_extensions=False, s3=s3)
    except StoreError:
        return {}
    try:
        rows = con.execute(
            "SELECT symbol, period, epoch_ms(max(time)) FROM candles GROUP BY ALL"
        ).fetchall()
    finally:
        con.close()
    return {CandleSymbol.parse(f"{s}{{={p}}}").normalized: int(t) for s, p, t in rows}
