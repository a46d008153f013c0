"""Security properties of the pipeline as a whole (issue 7).

* Secrets (OAuth client secret, refresh token, access and quote tokens) never appear in what
  ingest writes: logs at DEBUG, /metrics, /health, or any file under the store or temp dir.
* wss:// certificate verification is on: a self-signed server is refused.
* ``candles query`` cannot modify the store.

Related properties tested elsewhere (not repeated here): ws:// only to loopback
(test_tastytrade ``test_validate_dxlink_url``, ``test_insecure_dxlink_url_from_server_is_refused``);
secret-free reprs and exceptions of the token source (test_tastytrade
``test_secrets_never_reach_reprs_exceptions_or_logs``); the metrics server on 127.0.0.1 by
default (test_metrics ``test_for_service_follows_the_config``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from websockets.asyncio.server import ServerConnection, serve

from pipeline.cli import cli
from pipeline.dxlink.client import DXLinkManager
from pipeline.ingest import SimulatorTokenSource
from pipeline.simulator import SimulatorClock
from pipeline.store import LAKE, CandleStore, QueryError, QueryRefused, connect, run_query
from tests.helpers.fake_tastytrade import FakeTastytrade, IssuedTokenSimulator
from tests.helpers.service import eventually
from tests.helpers.store import MINUTE, T0, candle_frame

CLIENT_SECRET = "cs-SECRET-7f3a9c-client"
REFRESH_TOKEN = "rt-SECRET-41d2e8-refresh"
MINUTE_S = 60


def _secrets(rest: FakeTastytrade) -> list[str]:
    return [CLIENT_SECRET, REFRESH_TOKEN, *rest.access_tokens, *rest.quote_tokens]


def _leaks(blob: bytes, secrets: list[str], where: str) -> list[str]:
    return [f"{where} holds {s[:6]}..." for s in secrets if s.encode() in blob]


def _files(root: Path) -> Iterator[Path]:
    return (path for path in root.rglob("*") if path.is_file())


def _start_ingest(environ: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``candles ingest`` as a process configured by ``environ``; stderr goes to ``log``."""
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", "ingest"],
            stdout=subprocess.DEVNULL, stderr=stderr, env=environ, cwd=log.parent,
        )  # fmt: skip


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            body: bytes = reply.read()
            return body
    except urllib.error.HTTPError as exc:  # /health answers 503 while unhealthy: keep it
        return exc.read()


async def test_ingest_at_debug_reveals_no_secret(tmp_path: Path) -> None:
    """candles ingest at DEBUG with token refreshes: no secret in logs, metrics, health, files."""
    store = tmp_path / "store"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    now_ms = int(time.time() * 1000) // 60_000 * 60_000
    # Access tokens live 2 s: every reconnect after that refreshes one (more tokens in play).
    rest = FakeTastytrade(
        client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, clock=time.time,
        access_lifetime=2,
    )  # fmt: skip
    clock = SimulatorClock.manual(now_ms)
    with rest:
        async with IssuedTokenSimulator(rest, seed=9, clock=clock) as sim:
            rest.dxlink_url = sim.url
            environ = {k: v for k, v in os.environ.items() if not k.startswith("CANDLES_")}
            environ |= {
                "TMPDIR": str(scratch),
                "TASTYTRADE_CLIENT_SECRET": CLIENT_SECRET,
                "TASTYTRADE_REFRESH_TOKEN": REFRESH_TOKEN,
                "CANDLES_SOURCE__KIND": "tastytrade",
                "CANDLES_SOURCE__TASTYTRADE__API_URL": rest.url,
                "CANDLES_SUBSCRIPTIONS__SYMBOLS": '["AAPL", "SPY"]',
                "CANDLES_SUBSCRIPTIONS__INTERVALS": '["1m"]',
                "CANDLES_SUBSCRIPTIONS__FROM_TIME": datetime.fromtimestamp(
                    now_ms / 1000 - 3600, UTC
                ).isoformat(),
                "CANDLES_STORE__PATH": str(store),
                "CANDLES_SCHEDULE__FLUSH_INTERVAL": "0.2",
                "CANDLES_CLIENT__BACKOFF_INITIAL": "0.05",
                "CANDLES_CLIENT__BACKOFF_MAX": "0.2",
                "CANDLES_METRICS__PORT": "0",
                "CANDLES_LOGGING__LEVEL": "DEBUG",
            }
            log = tmp_path / "ingest.log"
            process = _start_ingest(environ, log)
            try:
                async with asyncio.timeout(60):
                    await sim.wait_for_subscriptions(2)
                    await sim.advance(MINUTE_S)
                    # Token trouble: the server says UNAUTHORIZED, the client must fetch anew.
                    connects = sim.connect_count
                    await sim.send_error("UNAUTHORIZED", "token expired (test)")
                    await sim.wait_for(lambda: sim.connect_count > connects)
                    await sim.wait_for_subscriptions(2)
                    await sim.drop_connections()
                    await sim.wait_for_subscriptions(2)
                    await sim.advance(MINUTE_S)
                await eventually(lambda: any(store.rglob("*.parquet")), within=60, what="a flush")
                await eventually(
                    lambda: b"/metrics" in log.read_bytes(), within=30, what="metrics URL"
                )
                match = re.search(
                    rb"serving metrics at (http://[\d.:\[\]]+)/metrics", log.read_bytes()
                )
                assert match is not None, log.read_text()[-3000:]
                base = match.group(1).decode()
                metrics = await asyncio.to_thread(_get, base + "/metrics")
                health = await asyncio.to_thread(_get, base + "/health")
            finally:
                process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(process.wait, 60)
            assert code == 0, log.read_text()[-3000:]

    secrets = _secrets(rest)
    text = log.read_bytes()
    assert len(rest.quote_tokens) >= 2, "the test never made the client refresh its token"
    assert b" DEBUG " in text and b"candles_" in metrics and health, "nothing was captured"
    assert base.startswith("http://127.0.0.1:"), f"metrics not on loopback by default: {base}"
    leaks = _leaks(text, secrets, "the log") + _leaks(metrics, secrets, "/metrics")
    leaks += _leaks(health, secrets, "/health")
    scanned = sorted(_files(tmp_path))
    for path in scanned:
        leaks += _leaks(path.read_bytes(), secrets, str(path.relative_to(tmp_path)))
    names = {path.name for path in scanned}
    assert "catalog.sqlite" in names and any(n.endswith(".parquet") for n in names), names
    assert leaks == []


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed; cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_wss_certificates_are_verified(tmp_path: Path) -> None:
    """The client refuses a wss:// server whose certificate no trusted CA signed."""
    cert, key = _self_signed(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    handled: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        handled.append(ws)
        await ws.close()

    async with serve(handler, "127.0.0.1", 0, ssl=server_tls) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"wss://127.0.0.1:{port}/"
        # Control: a client that trusts this certificate gets through, so the server works.
        trusting = ssl.create_default_context(cafile=str(cert))
        from websockets.asyncio.client import connect

        async with connect(url, ssl=trusting) as ws:
            await ws.wait_closed()
        assert len(handled) == 1

        client = DXLinkManager(
            SimulatorTokenSource(url, "never-sent-token"),
            backoff_initial=0.01, backoff_max=0.05, max_attempts=2,
        )  # fmt: skip
        await client.start()
        with pytest.raises(ConnectionError) as failure:
            async with asyncio.timeout(30):
                async for _ in client.candles():
                    pass
        await client.aclose()
    assert len(handled) == 1, "the client completed a handshake with an untrusted server"
    chain: list[BaseException] = []
    error: BaseException | None = failure.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in chain), chain
    assert "never-sent-token" not in str(failure.value)


@pytest.fixture(scope="module")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "data"
    with CandleStore(path, verify_extensions=False) as store:
        store.upsert(candle_frame(n=5))
        store.upsert(candle_frame(n=8))
        # Two batches large enough for data files of their own: adjacent files to merge.
        store.upsert(candle_frame("SPY", n=1_500))
        store.upsert(candle_frame("SPY", n=1_500, start=T0 + 1_500 * MINUTE))
    return path


@pytest.fixture
def filled_store(store_template: Path, tmp_path: Path) -> Path:
    """A copy of the template store (a copied store folder keeps working)."""
    return Path(shutil.copytree(store_template, tmp_path / "data"))


def _state(store: Path) -> tuple[int, list[tuple[object, ...]], dict[str, bytes]]:
    con = connect(store, verify_extensions=False)
    try:
        rows = con.sql("SELECT count(*) FROM candles").fetchall()[0][0]
        snapshots = con.sql(f"SELECT snapshot_id FROM ducklake_snapshots('{LAKE}')").fetchall()
    finally:
        con.close()
    files = {str(p.relative_to(store)): p.read_bytes() for p in _files(store)}
    return rows, snapshots, files


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM ducklake_expire_snapshots('lake', older_than => now())",
        "SELECT * FROM ducklake_cleanup_old_files('lake', cleanup_all => true)",
        "SELECT * FROM ducklake_merge_adjacent_files('lake')",
        "SELECT * FROM DuckLake_Rewrite_Data_Files ('lake', 'candles')",
        "SELECT * FROM query('SELECT * FROM ducklake_merge_adjacent_files(''lake'')')",
        "EXPLAIN ANALYZE DELETE FROM candles",
        "EXPLAIN ANALYZE INSERT INTO candles SELECT * FROM candles",
        "WITH doomed AS (DELETE FROM candles RETURNING *) SELECT * FROM doomed",
        # Quoting, comments, case, schemas and wrappers cannot hide a name (issue 14, item 5).
        "SELECT * FROM \"ducklake_merge_adjacent_files\"('lake')",
        "SELECT * FROM ducklake_merge_adjacent_files/**/('lake')",
        "SELECT * FROM \"DuckLake_Merge_Adjacent_Files\"('lake')",
        "SELECT * FROM system.main.ducklake_merge_adjacent_files('lake')",
        "SELECT * FROM (SELECT 'lake' AS l) t, LATERAL ducklake_merge_adjacent_files(t.l)",
        "SUMMARIZE SELECT * FROM ducklake_rewrite_data_files('lake', 'candles')",
        "/* hi */ EXPLAIN ANALYZE SELECT * FROM ducklake_merge_adjacent_files('lake')",
        "EXPLAIN (FORMAT json) ANALYZE SELECT * FROM ducklake_merge_adjacent_files('lake')",
        "SELECT * FROM ducklake_flush_inlined_data('lake')",
        "SELECT * FROM \"query\"('SELECT * FROM ducklake_merge_adjacent_files(''lake'')')",
        "SELECT 1; SELECT * FROM ducklake_merge_adjacent_files('lake')",
    ],
)
def test_query_cannot_modify_the_store_through_select_or_explain(
    filled_store: Path, sql: str
) -> None:
    """Maintenance functions in a SELECT and EXPLAIN ANALYZE of a write leave the store as is."""
    before = _state(filled_store)
    with contextlib.suppress(QueryError, QueryRefused):
        run_query(sql, path=filled_store)  # refused or failed: nothing may have changed
    assert _state(filled_store) == before


def test_query_cannot_write_files_through_explain_analyze(filled_store: Path) -> None:
    """`candles query "EXPLAIN ANALYZE COPY ... TO <catalog>"` is refused; the store still opens."""
    target = filled_store / "catalog.sqlite"
    before = _state(filled_store)
    result = CliRunner().invoke(
        cli,
        ["query", "--store", str(filled_store),
         f"EXPLAIN ANALYZE COPY (SELECT 'junk' AS x) TO '{target}' (FORMAT csv)"],
    )  # fmt: skip
    assert result.exit_code != 0 and "read-only" in result.output
    assert _state(filled_store) == before


def test_query_names_a_refused_maintenance_function_and_keeps_reading_ones(
    filled_store: Path,
) -> None:
    """A maintenance function is refused by name; DuckLake's reading functions still work."""
    with pytest.raises(QueryRefused, match=r"ducklake_merge_adjacent_files\(\) is not allowed"):
        run_query("SELECT * FROM ducklake_merge_adjacent_files('lake')", path=filled_store)
    snapshots = run_query(
        f"SELECT count(*) AS n FROM ducklake_snapshots('{LAKE}')", path=filled_store
    )
    assert snapshots["n"][0] >= 4


_MERGE = "ducklake_merge_adjacent_files"


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        ('SELECT * FROM "ducklake_merge_adjacent_files"(\'lake\')', _MERGE),
        ("SELECT * FROM ducklake_merge_adjacent_files/**/('lake')", _MERGE),
        ('SELECT * FROM "query"(\'SELECT 1\')', "query"),
        ('SELECT * FROM "query_table"(\'candles\')', "query_table"),
        ("FROM Query_Table('candles')", "query_table"),
        ("SELECT * FROM ducklake_set_option('lake', 'parquet_compression', 'gzip')",
         "ducklake_set_option"),
        ("SELECT * FROM ducklake_add_data_files('lake', 'candles', 'x.parquet')",
         "ducklake_add_data_files"),
        ("SELECT (SELECT count(*) FROM ducklake_cleanup_old_files('lake', cleanup_all => true))",
         "ducklake_cleanup_old_files"),
        ("EXPLAIN SELECT * FROM ducklake_expire_snapshots('lake', older_than => now())",
         "ducklake_expire_snapshots"),
    ],
)  # fmt: skip
def test_query_guard_reads_the_parsed_statement(filled_store: Path, sql: str, name: str) -> None:
    """The guard finds a refused function however it is written, and names it."""
    with pytest.raises(QueryRefused, match=rf"{name}\(\) is not allowed"):
        run_query(sql, path=filled_store)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) AS n FROM ducklake_snapshots('lake')",
        "SELECT count(*) AS n FROM ducklake_table_info('lake')",
        "SELECT count(*) AS n FROM ducklake_list_files('lake', 'candles')",
        "SELECT count(*) AS n FROM ducklake_table_insertions('lake', 'main', 'candles', 0, 3)",
        "SELECT count(*) AS n FROM candles WHERE symbol = 'query' OR symbol = 'ducklake_merge'",
        "WITH query AS (SELECT 1 AS n) SELECT n FROM query",
        "EXPLAIN SELECT count(*) AS n FROM candles",
        "DESCRIBE candles",
    ],
)
def test_query_guard_lets_reading_sql_through(filled_store: Path, sql: str) -> None:
    """DuckLake's reading functions, names in strings and CTEs named like a function still run."""
    assert run_query(sql, path=filled_store).height >= 1


@pytest.mark.parametrize(
    ("sql", "word"),
    [("INSTALL httpfs", "INSTALL"), ("FORCE INSTALL httpfs", "INSTALL"), ("LOAD httpfs", "LOAD")],
)
def test_query_names_install_and_load(filled_store: Path, sql: str, word: str) -> None:
    """INSTALL is refused as INSTALL, not as LOAD, with what to do instead."""
    with pytest.raises(QueryRefused) as refused:
        run_query(sql, path=filled_store)
    message = str(refused.value)
    assert message.startswith(f"{word} statements are not allowed"), message
    assert "\n" not in message and "read-only" in message
