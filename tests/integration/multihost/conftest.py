"""Fixtures of the multi-host tests: three real ``dockerd`` hosts over mutual TLS, per session.

The fleet (``tests.support.dockerd``) starts once per test session, after a sweep of what a
crashed earlier run may have left, and is destroyed at the end of the session whatever
happened. A test that kills or stops a host gets it back running before the next test
(``tls_hosts``), and every container of the test's instance label is removed from every host
afterwards. Without root or the tools the tests skip on a laptop and fail in CI.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest

from executors.types import LABEL_INSTANCE
from reconciler import api
from tests.components import docker_available, require
from tests.support.dockerd import DockerdFleet, DockerdHost, missing_requirements, sweep_leftovers
from tests.support.images import ensure_busybox_image

#: Short waits, so that host failures and recoveries are seen in seconds.
FAST_POLICY: dict[str, Any] = {
    "STOP_GRACE_SECONDS": 1,
    "RESYNC_SECONDS": 1,
    "POLL_SECONDS": 0.1,
    "ORPHAN_GRACE_SECONDS": 1,
    "LAUNCH_DEADLINE_SECONDS": 10,
    "HOST_LOST_SECONDS": 5,
}
FLEET_SIZE = 3


@pytest.fixture(scope="session")
def dockerd_fleet() -> Iterator[DockerdFleet]:
    """Three harness daemons with the busybox test image loaded (``docker save | docker load``)."""
    require(docker_available(), "Docker daemon")
    missing = missing_requirements()
    require(not missing, f"what extra dockerd hosts need ({', '.join(missing)})")
    sweep_leftovers()
    fleet = DockerdFleet.start(FLEET_SIZE, image=ensure_busybox_image())
    try:
        yield fleet
    finally:
        fleet.destroy()


@pytest.fixture(autouse=True)
def _no_ca_bundle_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets these variables replace the CA a Docker client was given (docker-py#2433);
    ``test_tls_executor`` has the test of that, the others run without them."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


@pytest.fixture
def instance(settings: Any) -> str:
    """A fresh instance label for this test, in force for the in-process reconciler."""
    value = f"t{uuid4().hex[:8]}"
    settings.CONTAINER_MANAGER = {"INSTANCE": value, **FAST_POLICY}
    api.reset()  # the model methods' reconciler reads the policy when first built
    return value


@pytest.fixture
def tls_hosts(dockerd_fleet: DockerdFleet, instance: str) -> Iterator[list[DockerdHost]]:
    """The fleet's hosts, all running; afterwards restarted if killed, and rid of this test's containers."""
    dockerd_fleet.ensure_running()
    yield dockerd_fleet.hosts
    dockerd_fleet.ensure_running()
    dockerd_fleet.remove_containers(f"{LABEL_INSTANCE}={instance}")
