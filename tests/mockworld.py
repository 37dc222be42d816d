"""A reconciler on mock hosts and the test's clock, driven by the test (no daemon, no threads)."""

from __future__ import annotations

from typing import Any

from container_manager.models import ContainerJob, ExecutorHost
from executors.mock import MockExecutor
from reconciler.step import Reconciler


class MockWorld:
    """One mock "Docker host" per host row, sharing the test's clock with the reconciler."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.executors: dict[int, MockExecutor] = {}
        self.reconciler = Reconciler(actor="daemon:test", executor_for=self.executor_for, clock=clock)

    def executor_for(self, host: ExecutorHost) -> MockExecutor:
        if host.pk not in self.executors:
            self.executors[host.pk] = MockExecutor(host.name, clock=self.clock)
        return self.executors[host.pk]

    def claimed(self) -> list[int]:
        """Claim what is due, as the daemon's claim key does, and step the claimed jobs once."""
        claimed = self.reconciler.claim()
        for snap in claimed.snapshots:
            self.reconciler.reconcile(snap.job.pk)
        return [snap.job.pk for snap in claimed.snapshots]

    def finish(self, *jobs: ContainerJob, seconds: float = 10) -> None:
        """Let ``seconds`` pass, then step ``jobs`` (their containers' programs end meanwhile)."""
        self.clock.advance(seconds)
        for job in jobs:
            self.reconciler.reconcile(job.pk)

    def env_of(self, job: ContainerJob) -> dict[str, str]:
        """The environment the job's (only) container was started with."""
        execution = job.executions.get()
        assert execution.executor_host is not None
        executor = self.executors[execution.executor_host.pk]
        return executor._containers[execution.container_name].spec.env_dict
