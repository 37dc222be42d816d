"""Fixtures of the high-availability tests: a throwaway PostgreSQL, a migrated template database,
a fresh database per test, a unique instance label per test, and the busybox image.

The PostgreSQL cluster belongs to this test session (``scripts/pg-throwaway``), on a free port, so
these tests never touch the database pytest-django gives the rest of the suite.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.components import docker_available, require
from tests.integration.ha.support import ROOT, cli, cli_env, free_port, remove_containers

TEMPLATE = "ha_template"


def _postgres_installed() -> bool:
    return bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """``postgres://postgres@127.0.0.1:PORT`` of a cluster that lives for this session."""
    require(_postgres_installed(), "PostgreSQL server binaries (initdb, pg_ctl)")
    directory = tempfile.mkdtemp(prefix="cm-ha-pg.")
    script = str(ROOT / "scripts" / "pg-throwaway")
    started = subprocess.run(
        [script, "start", directory, str(free_port())], capture_output=True, text=True, timeout=120
    )
    if started.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.fail(f"cannot start PostgreSQL: {started.stderr}", pytrace=False)
    url = started.stdout.strip().rsplit("/", 1)[0]
    try:
        yield url
    finally:
        subprocess.run([script, "stop", directory], capture_output=True, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def ha_template(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database with one Docker executor host (the local socket), copied per test."""
    with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    env = cli_env(f"{pg_server}/{TEMPLATE}", tmp_path_factory.mktemp("ha-home"))
    cli(env, "migrate", "-v0")
    cli(
        env,
        "shell",
        "-c",
        "from container_manager.models import ExecutorHost\n"
        "ExecutorHost.objects.create(name='docker-local', executor_type='docker', connection_string='',"
        " max_concurrent_jobs=30)\n",
    )
    return TEMPLATE


@pytest.fixture
def ha_database(pg_server: str, ha_template: str) -> Iterator[str]:
    """DATABASE_URL of a fresh copy of the template, dropped after the test."""
    name = f"ha_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {ha_template}")
    try:
        yield f"{pg_server}/{name}"
    finally:
        with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def instance() -> Iterator[str]:
    """A unique CONTAINER_MANAGER_INSTANCE; its containers are removed after the test."""
    value = f"ha-{uuid.uuid4().hex[:8]}"
    yield value
    if docker_available():
        remove_containers(value)


@pytest.fixture(scope="session")
def busybox() -> str:
    require(docker_available(), "Docker")
    from executors.testimages import ensure_busybox_image

    return ensure_busybox_image()


@pytest.fixture
def home() -> Iterator[Path]:
    """CONTAINER_MANAGER_HOME and log directory of the replicas (kept only while the test runs)."""
    directory = Path(tempfile.mkdtemp(prefix="cm-ha-home."))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
