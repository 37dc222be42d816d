"""``scripts/demo``, the README's first command, run as a user would run it.

It must take a fresh ``CONTAINER_MANAGER_HOME`` to a finished job with its output shown, and,
when no Docker daemon answers, print one clear paragraph and exit 1, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from tests.integration.reconciler_docker.support import REPO, containers_of

# No Django test database here (subprocesses on their own SQLite files): the PostgreSQL pass skips it.
pytestmark = [pytest.mark.docker, pytest.mark.no_db]

DEMO = REPO / "scripts" / "demo"


def run_demo(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    environ.update(CONTAINER_MANAGER_HOME=str(home), **env)
    return subprocess.run(
        [str(DEMO), *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_demo_runs_a_job_through_its_lifecycle(
    tmp_path: Path, busybox_image: str, cleanup_instances: Any
) -> None:
    instance = f"demo{uuid4().hex[:8]}"
    cleanup_instances(instance, None)
    done = run_demo(tmp_path, CONTAINER_MANAGER_INSTANCE=instance)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output
    assert "created job 1" in done.stdout
    assert "status: completed" in done.stdout
    assert "attempts: 1" in done.stdout and "exit_code: 0" in done.stdout
    for step in ("pending -> launching", "launching -> running", "running -> completed"):
        assert step in done.stdout, step
    assert "hello from the demo\ndone\n" in done.stdout
    assert (tmp_path / "db.sqlite3").exists()
    assert containers_of(instance) == []

    # Run again on the same home: the host is reused, a second job runs.
    again = run_demo(tmp_path, "--no-setup", CONTAINER_MANAGER_INSTANCE=instance)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "found host local-docker" in again.stdout and "created job 2" in again.stdout


def test_demo_without_docker_explains_what_is_missing(tmp_path: Path, busybox_image: str) -> None:
    done = run_demo(tmp_path, "--no-setup", DOCKER_HOST="unix:///nonexistent.sock")
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert "no Docker daemon answers at unix:///nonexistent.sock" in done.stderr
    assert "apt-get install docker.io" in done.stderr and "DOCKER_HOST" in done.stderr


def test_demo_help() -> None:
    done = subprocess.run([str(DEMO), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: scripts/demo")
    assert "Docker daemon" in done.stdout and "--no-setup" in done.stdout
    bad = subprocess.run([str(DEMO), "--bogus"], capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr
