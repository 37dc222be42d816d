"""Helpers of the multi-host tests: host rows as users write them, and looks behind the reconciler."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from container_manager.models import ContainerExecution, ExecutorHost
from executors.types import LABEL_INSTANCE
from tests.support.dockerd import DockerdHost
from tests.support.tlscerts import KeyPair


def host_row(
    host: DockerdHost,
    *,
    name: str | None = None,
    capacity: int = 4,
    client: KeyPair | None = None,
    ca: Path | None = None,
    **config: Any,
) -> ExecutorHost:
    """The ``ExecutorHost`` a user would write for ``host``: its tcp:// URL and TLS file paths.

    ``client`` / ``ca`` swap in other certificates (the refusal tests); ``config`` adds keys;
    the row is named after the host unless ``name`` says otherwise.
    """
    return ExecutorHost.objects.create(
        name=name or host.name,
        executor_type="docker",
        connection_string=host.base_url,
        executor_config={**host.executor_config(client=client, ca=ca), **config},
        max_concurrent_jobs=capacity,
    )


def containers_on(host: DockerdHost, instance: str, *, running: bool = False) -> list[dict[str, Any]]:
    """The containers of ``instance`` on ``host``'s dockerd, asked directly (not through the executor)."""
    api = host.api()
    try:
        return list(api.containers(all=not running, filters={"label": f"{LABEL_INSTANCE}={instance}"}))
    finally:
        api.close()


def attempts_per_host(**filters: Any) -> Counter[str]:
    """How many attempts (matching ``filters``) each host name has in the database."""
    rows = ContainerExecution.objects.filter(**filters).values_list("host_name", flat=True)
    return Counter(rows)
