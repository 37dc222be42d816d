"""One executor contract, three backends: every test here runs against the mock, real Docker and
the Cloud Run backend (the real ``google-cloud-run`` client against the suite's fake of the Run
Admin API)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from executors.base import Executor
from executors.cloudrun import CloudRunExecutor
from executors.mock import MockExecutor
from executors.types import Observed
from tests.fakes.cloudrun import FakeCloudRun
from tests.integration.docker.support import cleanup, docker_session, new_instance

__all__ = ["docker_session"]


@dataclass
class Backend:
    executor: Executor
    instance: str
    kind: str
    #: Seconds a listing may lag behind a write (Cloud Run's lists do; see ``listing``).
    list_lag: float = 0.0


def listing(backend: Backend, instance: str, expected: list[str]) -> list[Observed]:
    """``list_managed(instance)``, asked again while it may lag behind writes and differs from ``expected``.

    The mock and Docker list what exists at once (``list_lag`` 0: one call, compared as it is);
    Cloud Run's lists are eventually consistent, so only there is a late listing waited for.
    """
    deadline = time.monotonic() + backend.list_lag
    while True:
        listed = backend.executor.list_managed(instance)
        if sorted(o.name for o in listed) == sorted(expected) or time.monotonic() > deadline:
            return listed
        time.sleep(0.05)


@pytest.fixture(
    params=["mock", pytest.param("docker", marks=pytest.mark.docker), "cloudrun"],
)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    instance = new_instance()
    if request.param == "cloudrun":
        with FakeCloudRun() as fake:
            executor = CloudRunExecutor.from_config(
                fake.connection_string,
                fake.executor_config(use_cloud_logging=True, poll_interval=0.1),
                "contract-cloudrun",
            )
            try:
                yield Backend(executor, instance, "cloudrun", list_lag=fake.list_delay + 2.0)
            finally:
                executor.close()
        return
    if request.param == "mock":
        executor: Executor = MockExecutor(name="contract-mock")
    else:
        executor = request.getfixturevalue("docker_session")
    try:
        yield Backend(executor, instance, request.param)
    finally:
        cleanup(executor, instance)
