"""Access to the real components tests need (Docker, PostgreSQL, Prometheus).

On a developer's laptop a missing component skips the tests that need it; in CI
(``CI`` set in the environment) it fails them, so a broken install can never pass as green.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def require(available: bool, what: str) -> None:
    """Skip (laptop) or fail (CI) the calling test when ``what`` is not available."""
    if available:
        return
    message = f"{what} is not available"
    if in_ci():
        pytest.fail(message + " (required in CI)", pytrace=False)
    pytest.skip(message)


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
        return True
    except Exception:
        return False


def binary_available(name: str) -> bool:
    return shutil.which(name) is not None


def postgres_installed() -> bool:
    return bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def throwaway_postgres(prefix: str = "cm-test-pg.") -> Iterator[str]:
    """A PostgreSQL cluster of its own on 127.0.0.1 (``scripts/pg-throwaway``), on a free port.

    Yields ``postgres://postgres@127.0.0.1:PORT`` (append ``/DBNAME``); stops and deletes the
    cluster afterwards. Skips (fails in CI) without the server binaries.
    """
    require(postgres_installed(), "PostgreSQL server binaries (initdb, pg_ctl)")
    directory = tempfile.mkdtemp(prefix=prefix)
    script = str(Path(__file__).resolve().parents[1] / "scripts" / "pg-throwaway")
    started = subprocess.run(
        [script, "start", directory, str(free_port())], capture_output=True, text=True, timeout=120
    )
    try:
        if started.returncode != 0:
            pytest.fail(f"cannot start PostgreSQL: {started.stderr}", pytrace=False)
        yield started.stdout.strip().rsplit("/", 1)[0]
    finally:
        subprocess.run([script, "stop", directory], capture_output=True, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)
