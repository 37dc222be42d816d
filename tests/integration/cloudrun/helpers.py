"""Helpers shared by the Cloud Run tests."""

from __future__ import annotations

import time
from typing import Any

from executors.cloudrun import CloudRunExecutor
from executors.types import (
    LABEL_ATTEMPT,
    LABEL_INSTANCE,
    LABEL_JOB,
    LABEL_MANAGED,
    ContainerSpec,
    ContainerState,
    Observed,
)

INSTANCE = "test"


def make_spec(
    name: str = "cm-test-1-1",
    command: tuple[str, ...] = ("sh", "-c", "sleep 0.5"),
    *,
    job: int = 1,
    attempt: int = 1,
    instance: str = INSTANCE,
    **kwargs: Any,
) -> ContainerSpec:
    labels = {
        LABEL_MANAGED: "true",
        LABEL_INSTANCE: instance,
        LABEL_JOB: str(job),
        LABEL_ATTEMPT: str(attempt),
    }
    return ContainerSpec(
        name=name,
        image=kwargs.pop("image", "registry.example.com/team/worker:1.0"),
        command=command,
        labels=tuple(sorted(labels.items())),
        **kwargs,
    )


def wait_exited(executor: CloudRunExecutor, name: str, timeout: float = 10.0) -> Observed:
    deadline = time.monotonic() + timeout
    while True:
        observed = executor.inspect(name)
        if observed.state is ContainerState.EXITED:
            return observed
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} still {observed.state} after {timeout} s")
        time.sleep(0.05)


def total_calls(executor: CloudRunExecutor) -> int:
    """Google requests the executor has sent, all methods together."""
    return sum(counts.calls for counts in executor.counters().values())
