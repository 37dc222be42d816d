"""Fixtures for driving jobs through the real reconciler on a real Docker daemon.

Every test gets its own instance label (``CONTAINER_MANAGER['INSTANCE']``), so container
names, listings and events never mix with another test or another run on the same daemon,
and a finalizer removes every container carrying that label whatever the test did. Without a
Docker daemon the tests skip on a laptop and fail in CI (``tests.components.require``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from uuid import uuid4

import pytest

from reconciler import api
from tests.components import docker_available, require
from tests.integration.reconciler_docker.support import remove_containers
from tests.support.images import ensure_busybox_image

#: Short waits, so timeouts, cancels and missed events resolve in seconds, not minutes.
FAST_POLICY: dict[str, Any] = {
    "STOP_GRACE_SECONDS": 1,
    "RESYNC_SECONDS": 2,
    "POLL_SECONDS": 0.1,
    "ORPHAN_GRACE_SECONDS": 1,
}


@pytest.fixture(scope="session")
def busybox_image() -> str:
    """The local test image on the default Docker daemon (built once, never pulled)."""
    require(docker_available(), "Docker daemon")
    return ensure_busybox_image()


@pytest.fixture
def cleanup_instances() -> Iterator[Callable[[str, str | None], None]]:
    """Register (instance, base_url) pairs whose containers are all removed after the test."""
    registered: list[tuple[str, str | None]] = []

    def register(instance: str, base_url: str | None = None) -> None:
        registered.append((instance, base_url))

    yield register
    for instance, base_url in registered:
        try:
            remove_containers(instance, base_url)
        except Exception:  # the daemon may be gone (a test that restarts one); nothing to clean there
            if base_url is None:
                raise


@pytest.fixture
def instance(busybox_image: str, settings: Any, cleanup_instances: Callable[[str, str | None], None]) -> str:
    """A fresh instance label for this test, in force for the in-process reconciler."""
    value = f"t{uuid4().hex[:8]}"
    settings.CONTAINER_MANAGER = {"INSTANCE": value, **FAST_POLICY}
    api.reset()  # the model methods' reconciler reads the policy when first built
    cleanup_instances(value, None)
    return value


@pytest.fixture
def docker_host(db: Any, instance: str) -> Any:
    """An ``ExecutorHost`` row for the local Docker daemon (``DOCKER_HOST`` or the default socket)."""
    from container_manager.models import ExecutorHost

    return ExecutorHost.objects.create(
        name=f"docker-{instance}", executor_type="docker", connection_string="", max_concurrent_jobs=10
    )
