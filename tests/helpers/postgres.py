"""A throwaway PostgreSQL server for tests of the PostgreSQL-catalog lake (docs/scaling.md).

:func:`running_postgres` finds the PostgreSQL binaries (``initdb`` on the PATH,
``/usr/local/bin`` or ``/usr/lib/postgresql/<version>/bin``), initialises a cluster in a
fresh temporary folder, starts it on a free port on 127.0.0.1 only, and stops it and deletes
the folder afterwards. ``initdb`` refuses to run as root, so under root the cluster belongs
to the ``postgres`` system user (or a ``candles-pg`` user created for the purpose).

Without binaries the tests are skipped with the reason, except under ``CI=true``, where
they fail: CI installs PostgreSQL (``.ci/run``) and must run them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "find_postgres_bin", "running_postgres"]

_SUPERUSER = "postgres"
_FALLBACK_USER = "candles-pg"
_START_ATTEMPTS = 3


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway server: trust authentication, reachable on 127.0.0.1 only."""

    bin_dir: Path
    port: int
    run_as: str | None
    """The system user the server runs as (``None``: the current user)."""
    host: str = "127.0.0.1"

    def conninfo(self, dbname: str) -> str:
        """The libpq connection string of one database."""
        return f"dbname={dbname} host={self.host} port={self.port} user={_SUPERUSER}"

    def catalog_url(self, dbname: str) -> str:
        """The ``store.catalog`` value for a lake whose catalog is database ``dbname``."""
        return f"postgres:{self.conninfo(dbname)}"

    def create_database(self, dbname: str) -> str:
        """Create an empty database; returns its ``store.catalog`` URL."""
        _run(
            [str(self.bin_dir / "createdb"), "-h", self.host, "-p", str(self.port),
             "-U", _SUPERUSER, dbname],
            self.run_as,
        )  # fmt: skip
        return self.catalog_url(dbname)


def find_postgres_bin() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``createdb``, or ``None``."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates.append(Path("/usr/local/bin"))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    candidates.extend(versions)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "createdb")):
            return folder
    return None


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a throwaway server; skip (or fail under ``CI=true``) without PostgreSQL.

    Yields:
        The running server; it is stopped and its files deleted on exit.
    """
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        reason = (
            "PostgreSQL is not installed (no initdb/pg_ctl/createdb on the PATH, in "
            "/usr/local/bin or /usr/lib/postgresql/*/bin); install it with "
            "'apt-get install -y postgresql' to run the scale-out tests"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires these tests to run: {reason}")
        pytest.skip(reason)
    run_as = _unprivileged_user() if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="candles-pg-"))
    try:
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        data = root / "cluster"
        _run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", _SUPERUSER, "--auth=trust",
             "-E", "UTF8", "--no-sync"],
            run_as,
        )  # fmt: skip
        server = _start(bin_dir, data, root, run_as)
        try:
            yield server
        finally:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], run_as)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start(bin_dir: Path, data: Path, root: Path, run_as: str | None) -> PostgresServer:
    """Start on a free port; a port taken between probe and bind is retried with another."""
    problem = ""
    for _ in range(_START_ATTEMPTS):
        port = _free_port()
        # fsync off: a throwaway cluster needs no durability, and the tests run faster.
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        result = subprocess.run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options,
             "-l", str(root / "server.log"), "-w", "-t", "60", "start"],
            capture_output=True, text=True, user=run_as, check=False, cwd="/",
        )  # fmt: skip
        if result.returncode == 0:
            return PostgresServer(bin_dir, port, run_as)
        log = root / "server.log"
        problem = (result.stderr or result.stdout) + (
            log.read_text()[-2000:] if log.exists() else ""
        )
    raise RuntimeError(f"PostgreSQL did not start after {_START_ATTEMPTS} attempts: {problem}")


def _unprivileged_user() -> str:
    """A system user initdb accepts: ``postgres`` if it exists, else a created one."""
    for name in (_SUPERUSER, _FALLBACK_USER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         _FALLBACK_USER],
        check=True, capture_output=True,
    )  # fmt: skip
    return _FALLBACK_USER


def _run(command: list[str], run_as: str | None) -> None:
    result = subprocess.run(
        command, capture_output=True, text=True, user=run_as, check=False, cwd="/"
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} failed ({result.returncode}): {result.stderr.strip()}"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _version_key(path: Path) -> tuple[int, str]:
    name = path.parent.name
    return (int(name), name) if name.isdigit() else (0, name)
