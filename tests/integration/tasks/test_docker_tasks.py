"""Django tasks run in real containers on real Docker, driven by the real daemon (Django 6 only).

The image is a Debian base made here (``DEBIAN_SUITE=trixie scripts/debian-base``: its
Python 3.13 runs Django 6) with this Django, asgiref and sqlparse, this project's
``container_manager`` package and the tests' task module copied in, as a project's image would
hold its own code. Tasks are enqueued here, the daemon runs them, and the results are read back
through ``django.tasks``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.test import override_settings

from container_manager.models import ExecutorHost
from reconciler import api
from tests.components import docker_available, require
from tests.integration.reconciler_docker.support import remove_containers

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        django.VERSION < (6, 0),
        reason=f"django.tasks needs Django 6.0 or later; this is Django {django.get_version()}",
    ),
]

ROOT = Path(__file__).resolve().parents[3]
#: debootstrap (about a minute and a half the first time; the base is cached by tag), then a build.
BUILD_TIMEOUT = 900


def _debian_base() -> str:
    done = subprocess.run(
        [str(ROOT / "scripts" / "debian-base")],
        env={**os.environ, "DEBIAN_SUITE": "trixie"},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/debian-base failed:\n{done.stderr[-4000:]}", pytrace=False)
    return done.stdout.strip().splitlines()[-1]


def _copy_package(name: str, into: Path) -> None:
    module = __import__(name)
    source = Path(module.__file__).parent  # type: ignore[arg-type]
    shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


@pytest.fixture(scope="session")
def task_image() -> Iterator[str]:
    require(docker_available(), "Docker daemon")
    base = _debian_base()
    with tempfile.TemporaryDirectory() as context:
        lib = Path(context) / "lib"
        lib.mkdir()
        for name in ("django", "asgiref", "sqlparse", "container_manager"):
            _copy_package(name, lib)
        (lib / "tests").mkdir()
        for name in ("__init__.py", "tasks_sample.py", "tasks_container_settings.py"):
            shutil.copy(ROOT / "tests" / name, lib / "tests" / name)
        (Path(context) / "Dockerfile").write_text(
            f"FROM {base}\nCOPY lib /opt/project\nENV PYTHONPATH=/opt/project\n"
        )
        digest = hashlib.sha256(str(sorted(p.stat().st_size for p in lib.rglob("*.py"))).encode()).hexdigest()
        tag = f"cm-test/tasks:{digest[:12]}-{uuid.uuid4().hex[:6]}"
        done = subprocess.run(
            ["docker", "build", "-q", "-t", tag, context],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
        if done.returncode != 0:
            pytest.fail(f"docker build failed:\n{done.stderr[-4000:]}", pytrace=False)
    try:
        yield tag
    finally:
        subprocess.run(["docker", "rmi", "--force", tag], capture_output=True, timeout=120)


@pytest.fixture
def instance(settings: Any) -> Iterator[str]:
    value = f"t{uuid.uuid4().hex[:8]}"
    settings.CONTAINER_MANAGER = {"INSTANCE": value, "RESYNC_SECONDS": 2, "POLL_SECONDS": 0.1}
    api.reset()
    try:
        yield value
    finally:
        remove_containers(value)


def run_until_idle(timeout: float = 240) -> None:
    from reconciler.daemon import Daemon, DaemonOptions

    daemon = Daemon(DaemonOptions(workers=3, until_idle=True, poll_seconds=0.1, resync_seconds=2))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        daemon.request_stop()
        thread.join(30)
        pytest.fail("the daemon did not finish the tasks in time")


def test_tasks_run_in_containers_and_their_results_come_back(task_image: str, instance: str) -> None:
    from django.tasks import TaskResultStatus

    from container_manager.tasks import ContainerTaskError
    from tests import tasks_sample

    ExecutorHost.objects.create(
        name="local-docker",
        executor_type="docker",
        connection_string="",
        executor_config={"network": "none"},
        max_concurrent_jobs=4,
    )
    options = {
        "IMAGE": task_image,
        "HOST": "local-docker",
        "ENVIRONMENT": {"DJANGO_SETTINGS_MODULE": "tests.tasks_container_settings"},
        "MEMORY_LIMIT": 128,
        "TIMEOUT_SECONDS": 60,
    }
    backend = "container_manager.tasks.ContainerTaskBackend"
    tasks_setting = {
        "default": {"BACKEND": backend, "OPTIONS": options},
        "retrying": {
            "BACKEND": backend,
            "OPTIONS": {**options, "MAX_RETRIES": 2, "RETRY_BACKOFF_SECONDS": 0},
        },
    }
    with override_settings(TASKS=tasks_setting):
        added = tasks_sample.add.enqueue(2, b=3)
        failed = tasks_sample.fail.enqueue("boom")
        retried = tasks_sample.succeed_on_attempt.using(backend="retrying").enqueue(3)
        shouted = tasks_sample.shout.enqueue("hello")
        who = tasks_sample.whoami.enqueue()
        big = tasks_sample.too_big.enqueue()
        assert added.status == TaskResultStatus.READY
        run_until_idle()
        for result in (added, failed, retried, shouted, who, big):
            result.refresh()

        assert added.status == TaskResultStatus.SUCCESSFUL and added.return_value == 5
        assert added.attempts == 1 and added.errors == []

        assert failed.status == TaskResultStatus.FAILED
        (error,) = failed.errors
        assert error.exception_class is ValueError and "ValueError: boom" in error.traceback

        assert retried.status == TaskResultStatus.SUCCESSFUL and retried.attempts == 3
        assert retried.return_value == {"attempt": 3, "result_id": retried.id}
        assert [e.exception_class for e in retried.errors] == [RuntimeError, RuntimeError]
        assert "attempt 1 fails on purpose" in retried.errors[0].traceback

        assert shouted.return_value == "HELLO!", "an async task ran in its own event loop"
        assert who.return_value == {"uid": 65534, "job": who.id, "attempt": "1"}, "not root; knows its job"

        assert big.status == TaskResultStatus.FAILED
        assert big.errors[0].exception_class is ValueError and "at most" in big.errors[0].traceback
        assert all(
            e.exception_class is not ContainerTaskError for r in (failed, retried, big) for e in r.errors
        )
