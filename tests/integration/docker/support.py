"""Shared pieces of the Docker integration and contract tests: the executor, specs, waiting, cleanup."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from uuid import uuid4

import pytest

from executors.base import Executor
from executors.docker import DockerExecutor
from executors.types import (
    LABEL_ATTEMPT,
    LABEL_INSTANCE,
    LABEL_JOB,
    LABEL_MANAGED,
    ContainerSpec,
    ContainerState,
    Observed,
)
from tests.components import docker_available, require
from tests.support.images import DEFAULT_TAG, ensure_busybox_image

IMAGE = DEFAULT_TAG


def new_instance() -> str:
    """A label value no other test run shares, so listings and events only see this test."""
    return f"test-{uuid4().hex[:8]}"


def make_spec(
    instance: str,
    command: tuple[str, ...] | str,
    *,
    job: int = 1,
    attempt: int = 1,
    image: str = IMAGE,
    **overrides: object,
) -> ContainerSpec:
    """A spec named and labelled the way the reconciler does it (``cm-<instance>-<job>-<attempt>``)."""
    argv = ("sh", "-c", command) if isinstance(command, str) else command
    labels = (
        (LABEL_ATTEMPT, str(attempt)),
        (LABEL_INSTANCE, instance),
        (LABEL_JOB, str(job)),
        (LABEL_MANAGED, "true"),
    )
    fields: dict[str, object] = dict(
        name=f"cm-{instance}-{job}-{attempt}",
        image=image,
        command=argv,
        labels=labels,
        memory_mb=64,
        cpu=0.5,
    )
    fields.update(overrides)
    return ContainerSpec(**fields)  # type: ignore[arg-type]


def wait_for(
    executor: Executor,
    name: str,
    predicate: Callable[[Observed], bool] = lambda o: o.state is ContainerState.EXITED,
    timeout: float = 20.0,
) -> Observed:
    deadline = time.monotonic() + timeout
    while True:
        observed = executor.inspect(name)
        if predicate(observed):
            return observed
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not reach the expected state in {timeout}s: {observed}")
        time.sleep(0.05)


def cleanup(executor: Executor, instance: str) -> None:
    """Remove every container of ``instance`` (each test uses its own instance label)."""
    for observed in executor.list_managed(instance):
        executor.remove(observed.name)


def docker_session_executor() -> Iterator[DockerExecutor]:
    """Body of the session fixtures: a real executor on the local daemon and the test image."""
    require(docker_available(), "Docker daemon")
    executor = DockerExecutor(name="test-docker")
    ensure_busybox_image(executor)
    try:
        yield executor
    finally:
        executor.close()


@pytest.fixture(scope="session")
def docker_session() -> Iterator[DockerExecutor]:
    yield from docker_session_executor()
