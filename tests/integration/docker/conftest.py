from __future__ import annotations

from collections.abc import Iterator

import pytest

from executors.docker import DockerExecutor
from tests.integration.docker.support import cleanup, docker_session, new_instance

__all__ = ["docker_session"]


@pytest.fixture
def docker_executor(docker_session: DockerExecutor) -> DockerExecutor:
    """The shared executor on the local daemon (the test fails in CI, skips elsewhere, without one)."""
    return docker_session


@pytest.fixture
def instance(docker_session: DockerExecutor) -> Iterator[str]:
    """A fresh instance label; every container carrying it is removed after the test."""
    value = new_instance()
    try:
        yield value
    finally:
        cleanup(docker_session, value)
