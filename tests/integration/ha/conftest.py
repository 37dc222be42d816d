"""Fixtures of the high-availability tests: a throwaway PostgreSQL, a migrated template database,
a fresh database per test, a unique instance label per test, and the busybox image.

The PostgreSQL cluster belongs to this test session (``scripts/pg-throwaway``), on a free port, so
these tests never touch the database pytest-django gives the rest of the suite.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.components import docker_available, require, throwaway_postgres
from tests.integration.ha.support import cli, cli_env, remove_containers

TEMPLATE = "ha_template"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """``postgres://postgres@127.0.0.1:PORT`` of a cluster that lives for this session."""
    with throwaway_postgres("cm-ha-pg.") as url:
        yield url


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
    from tests.support.images import ensure_busybox_image

    return ensure_busybox_image()


@pytest.fixture
def home() -> Iterator[Path]:
    """CONTAINER_MANAGER_HOME and log directory of the replicas (kept only while the test runs)."""
    directory = Path(tempfile.mkdtemp(prefix="cm-ha-home."))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
