"""Finding containers that carry our labels but belong to no live attempt.

Write-ahead makes this safe: an attempt row always exists before its container, so a
labelled container without a live row is left over (its job was deleted, or its attempt
finished and removal failed). The daemon removes such containers after a grace period;
``manage_jobs cleanup`` removes them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from container_manager.conf import get_policy
from container_manager.models import ContainerExecution, ExecutorHost
from container_manager.states import LIVE_EXECUTION_VALUES
from executors.base import Executor
from executors.exceptions import ExecutorError
from executors.registry import get_executor


@dataclass(frozen=True)
class Census:
    #: containers that belong to no attempt that needs them.
    orphans: tuple[str, ...] = ()
    #: jobs whose finished attempt still has its container: the normal cleanup path handles them.
    jobs_to_clean: tuple[int, ...] = field(default_factory=tuple)


def census(executor: Executor, instance: str) -> Census:
    """Classify every labelled container on one host. Raises ``ExecutorError``."""
    containers = executor.list_managed(instance)
    names = [c.name for c in containers]
    rows = {
        row["container_name"]: row
        for row in ContainerExecution.objects.filter(container_name__in=names).values(
            "container_name", "status", "cleaned_up", "job_id"
        )
    }
    orphans, jobs = [], []
    for container in containers:
        row = rows.get(container.name)
        if row is None or row["cleaned_up"]:
            orphans.append(container.name)
        elif row["status"] not in LIVE_EXECUTION_VALUES:
            jobs.append(row["job_id"])
    return Census(tuple(orphans), tuple(jobs))


def remove_orphans(
    *,
    host_names: Collection[str] = (),
    dry_run: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    executor_for: Callable[[ExecutorHost], Executor] = get_executor,
) -> list[tuple[str, str]]:
    """Remove every orphan now, on all active hosts (or the named ones); returns (host, name) pairs."""
    instance = get_policy().instance
    hosts = ExecutorHost.objects.filter(is_active=True)
    if host_names:
        hosts = hosts.filter(name__in=host_names)
    removed: list[tuple[str, str]] = []
    host_list = list(hosts)
    for index, host in enumerate(host_list, start=1):
        try:
            executor = executor_for(host)
            for name in census(executor, instance).orphans:
                if not dry_run:
                    executor.remove(name)
                removed.append((host.name, name))
        except ExecutorError:
            continue
        if progress:
            progress(index, len(host_list), "hosts")
    return removed
