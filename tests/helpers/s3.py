"""A throwaway S3 server for tests of a lake on object storage (docs/scaling.md).

:func:`running_s3` starts ``moto_server`` (moto's S3, speaking the real S3 HTTP API; the
``moto[server]`` dev dependency) as a separate process on a free loopback port, behind a small
TCP relay on the port the tests use. The relay is the "network": :meth:`S3Server.stop` makes the
endpoint refuse connections (and cuts the open ones) while moto keeps the bucket's contents,
:meth:`S3Server.start` brings it back on the same port; moto holds its state in memory, so
stopping *its* process would lose the objects a real outage keeps.

Request counts come from moto's own request log (:meth:`S3Server.requests`). The credentials
are random per server (:attr:`S3Server.key_id`, :attr:`S3Server.secret`), so a test can grep
every output for them.

Without moto the tests are skipped with the reason, except under ``CI=true``, where they fail:
the dev dependencies install it (pyproject.toml), and CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.timing import TIMEOUT

__all__ = ["S3Object", "S3Server", "running_s3"]

_REQUEST = re.compile(r'"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/[\d.]+"\s+(\d{3})')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class S3Object:
    """One object in a bucket."""

    key: str
    size: int
    last_modified: float
    """Unix seconds (the server's clock)."""


class _Relay:
    """A TCP relay 127.0.0.1:port -> 127.0.0.1:target that can be switched off and on."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = _free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._accepting: threading.Thread | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._accepting is not None:
            self._accepting.join(TIMEOUT)
        with self._lock:
            open_sockets, self._sockets = self._sockets, set()
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=TIMEOUT)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.discard(source)


@dataclass
class S3Server:
    """A running moto S3 server behind a relay on ``127.0.0.1:port``."""

    port: int
    log: Path
    relay: _Relay = field(repr=False)
    key_id: str = field(repr=False, default_factory=lambda: "AKIA" + secrets.token_hex(8).upper())
    secret: str = field(repr=False, default_factory=lambda: secrets.token_urlsafe(30))
    region: str = _REGION

    @property
    def endpoint(self) -> str:
        """``host:port`` of the S3 endpoint (``store.s3.endpoint``)."""
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The ``AWS_*`` variables a process needs to use this server (keys included)."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": f"http://{self.endpoint}",
        }

    def client(self) -> Any:
        """A boto3 S3 client on this server (straight to moto: works while stopped)."""
        import boto3  # type: ignore[import-untyped]  # moto's dependency; ships no stubs

        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.relay.target}",
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )

    def create_bucket(self, name: str) -> str:
        """Create a bucket; returns its ``s3://name/`` URL."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}/"

    def objects(self, bucket: str, prefix: str = "") -> list[S3Object]:
        """Every object under ``prefix``, by key."""
        found: list[S3Object] = []
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        for page in pages:
            for item in page.get("Contents", []):
                found.append(
                    S3Object(item["Key"], int(item["Size"]), item["LastModified"].timestamp())
                )
        return sorted(found, key=lambda o: o.key)

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        """Write one object directly (e.g. a file a killed writer left behind)."""
        self.client().put_object(Bucket=bucket, Key=key, Body=body)

    def requests(self) -> Counter[str]:
        """Requests moto served so far, by kind: GET, PUT, POST, DELETE, HEAD and LIST
        (a GET of a bucket with ``list-type``), from moto's own request log."""
        counts: Counter[str] = Counter()
        for line in _ANSI.sub("", self.log.read_text(errors="replace")).splitlines():
            match = _REQUEST.search(line)
            if match is None or match[2].startswith("/moto-api"):
                continue
            method, target = match[1], match[2]
            if method == "GET" and ("list-type" in target or target.rstrip("/").count("/") <= 1):
                method = "LIST"
            counts[method] += 1
        return counts

    def stop(self) -> None:
        """Make the endpoint unreachable: new connections are refused, open ones cut."""
        self.relay.stop()

    def start(self) -> None:
        """Make the endpoint reachable again, on the same port."""
        self.relay.start()


def find_moto_server() -> str | None:
    """The ``moto_server`` executable next to this Python, or on the PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.is_file():
        return str(beside)
    return shutil.which("moto_server")


@contextlib.contextmanager
def running_s3() -> Iterator[S3Server]:
    """Start a throwaway S3 server; skip (or fail under ``CI=true``) without moto.

    Yields:
        The running server; it is stopped and its log deleted on exit.
    """
    executable = find_moto_server()
    if executable is None:
        reason = (
            "moto_server is not installed; install the dev dependencies "
            "(pip install -e '.[dev]', which brings moto[server]) to run the object-storage tests"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires these tests to run: {reason}")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="candles-s3-"))
    log = root / "moto.log"
    process: subprocess.Popen[bytes] | None = None
    relay: _Relay | None = None
    try:
        port = _free_port()
        with log.open("wb") as out:
            process = subprocess.Popen(
                [executable, "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=root,
            )
        _wait_ready(port, process, log)
        relay = _Relay(port)
        relay.start()
        yield S3Server(relay.port, log, relay)
    finally:
        if relay is not None:
            relay.stop()
        if process is not None:
            process.terminate()
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited ({process.returncode}): {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/data.json", timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # polling a starting process: no event to wait on
    raise RuntimeError(f"moto_server did not answer within {TIMEOUT}s: {log.read_text()}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
