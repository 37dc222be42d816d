"""One executor contract, two backends: every test here runs against the mock and real Docker."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from executors.base import Executor
from executors.mock import MockExecutor
from tests.integration.docker.support import cleanup, docker_session, new_instance

__all__ = ["docker_session"]


@dataclass
class Backend:
    executor: Executor
    instance: str
    kind: str


@pytest.fixture(params=["mock", pytest.param("docker", marks=pytest.mark.docker)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "mock":
        executor: Executor = MockExecutor(name="contract-mock")
    else:
        executor = request.getfixturevalue("docker_session")
    instance = new_instance()
    try:
        yield Backend(executor, instance, request.param)
    finally:
        cleanup(executor, instance)
