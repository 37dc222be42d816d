"""Helpers shared by the metrics tests: samples of the registry, jobs, per-host mock executors."""

from __future__ import annotations

from typing import Any

from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost
from executors.mock import MockExecutor
from metrics import definitions as m
from reconciler.step import Reconciler


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    value = m.REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def make_job(host: ExecutorHost | None, command: str, **kw: Any) -> ContainerJob:
    return ContainerJob.objects.create(
        image="busybox:latest", command=command, docker_host=host, memory_limit=64, cpu_limit=0.5, **kw
    )


def run_to_end(
    job: ContainerJob, reconciler: Reconciler, clock: Any = None, rounds: int = 20
) -> ContainerJob:
    for _ in range(rounds):
        job.refresh_from_db()
        if (
            job.is_terminal_status
            and not ContainerExecution.objects.filter(job=job, cleaned_up=False).exists()
        ):
            return job
        reconciler.reconcile(job.pk)
        if clock is not None:
            clock.advance(1)
    job.refresh_from_db()
    return job


class Mocks:
    """One mock executor per host row, on the test's clock."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.executors: dict[int, MockExecutor] = {}

    def __call__(self, host: ExecutorHost) -> MockExecutor:
        if host.pk not in self.executors:
            self.executors[host.pk] = MockExecutor(host.name, clock=self.clock)
        return self.executors[host.pk]
