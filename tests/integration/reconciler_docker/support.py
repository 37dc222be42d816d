"""Helpers for the reconciler-on-real-Docker tests: jobs, waiting, the daemon in a thread, cleanup.

Why a module of its own: the executor-level Docker tests call ``DockerExecutor`` directly;
these drive the *reconciler* (the one-job step, or the whole daemon) against a real
``dockerd``, so what they need is different: job rows, loops in real time, and a way to look
at Docker behind the reconciler's back (a plain docker-py client) to check that what the
database says matches what Docker did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
from django.db import connections

from container_manager.models import ContainerJob, ExecutorHost
from executors.types import LABEL_INSTANCE
from reconciler.daemon import Daemon, DaemonOptions
from tests.support.images import DEFAULT_TAG

REPO = Path(__file__).resolve().parents[3]
IMAGE = DEFAULT_TAG
MIB = 1024 * 1024


def docker_api(base_url: str | None = None) -> docker.APIClient:
    """A low-level client on the default daemon (``DOCKER_HOST`` or the local socket), or ``base_url``."""
    if base_url:
        return docker.APIClient(base_url=base_url, timeout=30)
    return docker.APIClient(**docker.utils.kwargs_from_env(), timeout=30)


def containers_of(instance: str, base_url: str | None = None) -> list[dict[str, Any]]:
    """Every container (running or not) carrying ``instance``'s label, as ``docker ps -a`` lists them."""
    api = docker_api(base_url)
    try:
        return list(api.containers(all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}))
    finally:
        api.close()


def remove_containers(instance: str, base_url: str | None = None) -> None:
    """Force-remove every container of ``instance`` (each test has its own instance label)."""
    api = docker_api(base_url)
    try:
        for item in api.containers(all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}):
            try:
                api.remove_container(item["Id"], force=True, v=True)
            except docker.errors.NotFound:
                pass
    finally:
        api.close()


def make_job(host: ExecutorHost | None, command: str, **fields: Any) -> ContainerJob:
    """A job on the busybox test image with small limits (both overridable)."""
    values: dict[str, Any] = {"memory_limit": 64, "cpu_limit": 0.5, "timeout_seconds": 60}
    values.update(fields)
    return ContainerJob.objects.create(image=IMAGE, command=command, docker_host=host, **values)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def drive(job: ContainerJob, timeout: float = 30.0, until: str | None = None) -> ContainerJob:
    """Step ``job`` with ``get_status()`` (the reconciler's one-job step) until it is terminal
    (or reaches status ``until``), in real time, as a program without a daemon would."""

    def reached() -> bool:
        status = job.get_status()
        return status == until if until else job.is_terminal_status

    wait_until(reached, timeout, f"job {job.pk} to become {until or 'terminal'} (now {job.status})")
    return job


def transitions(job: ContainerJob) -> list[tuple[str, str]]:
    """The job's status changes, oldest first (notes without a status change left out)."""
    rows = job.events.exclude(to_status="").order_by("at", "id").values_list("from_status", "to_status")
    return list(rows)


@contextmanager
def running_daemon(**options: Any) -> Iterator[Daemon]:
    """A real ``Daemon`` in a thread of this process (needs the ``transactional_db`` fixture).

    Stopped gracefully on exit; fails the test if the daemon does not stop or crashed.
    """
    daemon = Daemon(DaemonOptions(actor="daemon:test", **options))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            daemon.run()
        except BaseException as exc:  # surfaced in the test, not lost in a thread
            failure.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name="cm-test-daemon", daemon=True)
    thread.start()
    try:
        wait_until(daemon.ready.is_set, 20, "the daemon to start")
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(60)
    assert not thread.is_alive(), "the daemon did not stop within 60 s"
    assert not failure, f"the daemon crashed: {failure[0]!r}"


# Subprocesses -----------------------------------------------------------------------------------


def cli() -> list[str]:
    """The ``container-manager`` console script of this virtualenv."""
    script = Path(sys.executable).with_name("container-manager")
    return [str(script)] if script.exists() else [sys.executable, "-m", "container_manager.cli"]


def cm_env(home: Path, instance: str, **extra: str) -> dict[str, str]:
    """Environment of a ``container-manager`` subprocess on its own SQLite file and instance label."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(
        CONTAINER_MANAGER_HOME=str(home),
        DATABASE_URL=f"sqlite:///{home / 'db.sqlite3'}",
        CONTAINER_MANAGER_INSTANCE=instance,
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


def run_cli(env: dict[str, str], *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run one ``container-manager`` command to completion; fail the test with its output if it fails."""
    done = subprocess.run(
        [*cli(), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"container-manager {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


def kill_process(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL one process we started (and reap it)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
