"""Where the throughput benchmark's containers run: the default Docker daemon, or N remote hosts.

With ``--tls-hosts N`` the benchmark starts N extra ``dockerd`` processes on this machine (the
test harness ``tests.support.dockerd``: a network namespace each, reached on 127.0.0.1 over
mutual TLS) and loads the test image into each (``docker save | docker load``). Both phases
then use all of them: the raw loop runs C threads per host, each with its own TLS client; the
reconciler gets one host row per daemon, written as a user writes a remote host
(``tcp://127.0.0.1:PORT`` and the TLS file paths), each with C slots, and unpinned jobs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.utils import kwargs_from_env

from executors.types import LABEL_INSTANCE

#: requests lets these replace a Docker client's own CA (docker-py#2433): a TLS host then fails
#: verification. The benchmark measures throughput, not that, so it drops them for its run.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@dataclass(frozen=True)
class Target:
    """One Docker daemon: how the raw loop connects to it, and the host row the reconciler gets."""

    name: str
    connect: Callable[[], docker.APIClient]
    connection_string: str = ""
    executor_config: dict[str, Any] = field(default_factory=dict)


def local() -> list[Target]:
    """The default daemon (``DOCKER_HOST`` or the local socket), as the benchmark has always used."""
    return [Target(name="bench-docker", connect=lambda: docker.APIClient(**kwargs_from_env()))]


@contextmanager
def tls_hosts(count: int, image: str) -> Iterator[list[Target]]:
    """``count`` harness daemons over mutual TLS with ``image`` loaded; all removed afterwards."""
    from tests.support.dockerd import DockerdFleet, missing_requirements, sweep_leftovers

    missing = missing_requirements()
    if missing:
        raise SystemExit(f"bench: --tls-hosts needs {', '.join(missing)}")
    for variable in CA_BUNDLE_VARIABLES:
        os.environ.pop(variable, None)
    sweep_leftovers()
    fleet = DockerdFleet.start(count, image=image)
    try:
        yield [
            Target(
                name=f"bench-tls-{host.name}",
                connect=host.api,
                connection_string=host.base_url,
                executor_config=host.executor_config(),
            )
            for host in fleet.hosts
        ]
    finally:
        fleet.destroy()


def remove_leftovers(targets: list[Target], instance: str) -> int:
    """Force-remove every container of ``instance`` on every target; how many there were."""
    removed = 0
    for target in targets:
        api = target.connect()
        try:
            items = api.containers(all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"})
            for item in items:
                api.remove_container(item["Id"], force=True)
            removed += len(items)
        finally:
            api.close()
    return removed
