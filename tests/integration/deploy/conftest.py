"""Fixtures of the deployment tests: the image (built once per session by ``scripts/build-image``,
removed at the end), a PostgreSQL cluster of the session's own on 127.0.0.1, and per test a
fresh database and a unique instance label, so that no other suite's orphan sweep on the shared
Docker daemon ever touches these tests' containers, nor theirs ours.

The Debian bases that ``scripts/debian-base`` makes stay on the machine on purpose: they are
cached by a tag that names their recipe, and making one takes about a minute.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.components import docker_available, require, throwaway_postgres
from tests.integration.deploy.support import ROOT, Site, docker
from tests.integration.ha.support import remove_containers

#: scripts/build-image may make a Debian base first (about a minute), then the wheels and the image.
BUILD_TIMEOUT = 900


def _run_script(*args: str, timeout: float = BUILD_TIMEOUT) -> str:
    """Run one of the repository's scripts; the last line it prints (scripts print a tag there)."""
    result = subprocess.run(
        [str(ROOT / "scripts" / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/{' '.join(args)} failed:\n{result.stderr[-4000:]}", pytrace=False)
    lines = result.stdout.strip().splitlines()
    assert lines, f"scripts/{args[0]} printed nothing"
    return lines[-1]


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    """The product's image, as ``scripts/build-image`` builds it, under a tag of this session's."""
    require(docker_available(), "Docker")
    tag = f"container-manager-test:{uuid.uuid4().hex[:12]}"
    try:
        assert _run_script("build-image", "--tag", tag) == tag, "the tag is the last line"
        yield tag
    finally:
        docker("rmi", "--force", tag, check=False)


@pytest.fixture(scope="session")
def wheels(image: str) -> Path:
    """The wheelhouse ``scripts/build-image`` left for the image (the systemd install uses it)."""
    path = ROOT / "dist" / "image-wheels"
    assert any(path.glob("django_container_manager-*.whl")), "build-image leaves its wheels"
    return path


@pytest.fixture(scope="session")
def systemd_base() -> str:
    require(docker_available(), "Docker")
    return _run_script("debian-base", "--include", "systemd,systemd-sysv,dbus")


@pytest.fixture(scope="session")
def busybox() -> str:
    require(docker_available(), "Docker")
    from tests.support.images import ensure_busybox_image

    return ensure_busybox_image()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with throwaway_postgres() as url:
        yield url


@contextmanager
def _site(pg_url: str) -> Iterator[Site]:
    """A fresh database and instance label; drops the database and the instance's containers."""
    suffix = uuid.uuid4().hex[:10]
    name, instance = f"deploy_{suffix}", f"deploy-{suffix}"
    home = Path(tempfile.mkdtemp(prefix="cm-deploy-home."))
    with psycopg.connect(f"{pg_url}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield Site(f"{pg_url}/{name}", instance, home)
    finally:
        if docker_available():
            remove_containers(instance)
        with psycopg.connect(f"{pg_url}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def site(pg_url: str) -> Iterator[Site]:
    with _site(pg_url) as made:
        yield made


@pytest.fixture(scope="module")
def module_site(pg_url: str) -> Iterator[Site]:
    with _site(pg_url) as made:
        yield made
