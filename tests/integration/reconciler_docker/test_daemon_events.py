"""The whole daemon (sources, queue, workers) in a thread, with its event stream broken or silent.

Docker events are only hints (DESIGN.md invariant 5): a stream cut mid-run, or one that never
delivers anything, may slow the daemon down to its resync and requeue timers but must never
leave a job unfinished. The daemon threads need a database they can share, hence
``transactional_db`` (on SQLite the test database is a file, so threads wait for the write
lock instead of failing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from container_manager.models import ContainerJob, ExecutorHost
from executors.docker import DockerExecutor
from executors.types import ExecutorEvent
from tests.integration.reconciler_docker.support import (
    containers_of,
    make_job,
    running_daemon,
    wait_until,
)

pytestmark = pytest.mark.docker


def all_finished(jobs: list[ContainerJob]) -> bool:
    return not ContainerJob.objects.filter(pk__in=[j.pk for j in jobs]).unfinished().exists()


def statuses(jobs: list[ContainerJob]) -> list[str]:
    return list(ContainerJob.objects.filter(pk__in=[j.pk for j in jobs]).values_list("status", flat=True))


def test_jobs_converge_while_the_event_stream_keeps_being_cut(
    transactional_db: Any, docker_host: ExecutorHost, instance: str
) -> None:
    jobs = [make_job(docker_host, f"sh -c 'sleep 1; echo job {i}'") for i in range(6)]
    executor = docker_host.get_executor()  # the cached instance the daemon's watcher uses
    assert isinstance(executor, DockerExecutor)
    reconnects_before = executor.counters()["events"].retries
    cuts = 0
    with running_daemon(workers=3) as daemon:
        deadline = time.monotonic() + 40
        while not all_finished(jobs) and time.monotonic() < deadline:
            cuts += executor._drop_event_streams()
            time.sleep(0.25)
        assert daemon.ready.is_set()
    assert all_finished(jobs), f"jobs did not finish: {statuses(jobs)}"
    assert statuses(jobs) == ["completed"] * 6
    for job in jobs:
        job.refresh_from_db()
        assert job.executions.get().stdout.startswith("job ")
    assert cuts >= 2, "the test never cut an open event stream"
    assert executor.counters()["events"].retries > reconnects_before
    assert containers_of(instance) == []


@pytest.fixture
def deaf_executor(docker_host: ExecutorHost, monkeypatch: pytest.MonkeyPatch) -> Iterator[DockerExecutor]:
    """The host's executor with an event stream that never delivers a single event."""
    executor = docker_host.get_executor()
    assert isinstance(executor, DockerExecutor)
    calls: list[int] = []

    def watch(instance: str, stop: threading.Event) -> Iterator[ExecutorEvent]:
        calls.append(1)
        stop.wait()
        return
        yield  # a generator that yields nothing

    monkeypatch.setattr(executor, "watch", watch)
    yield executor
    assert calls, "the daemon never subscribed to events"


def test_jobs_converge_when_every_event_is_lost(
    transactional_db: Any, docker_host: ExecutorHost, instance: str, deaf_executor: DockerExecutor
) -> None:
    jobs = [make_job(docker_host, f"sh -c 'sleep 0.5; echo job {i}'") for i in range(4)]
    with running_daemon(workers=2):
        wait_until(lambda: all_finished(jobs), 30, "jobs to finish without any Docker event")
    assert statuses(jobs) == ["completed"] * 4
    assert containers_of(instance) == []
