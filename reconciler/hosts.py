"""Where attempts run: host choice, the host rows a claim locks, and the circuit breaker.

``assign`` is pure (a table test covers it): given due jobs in claim order and each host's free
slots, it places every job it can. ``lock_hosts`` reads the usable hosts with their live
attempts counted, locking the rows on PostgreSQL so that two claimers (the daemon and a
``job.launch()`` in another process) can never both take a host's last slot; SQLite serialises
writers anyway. ``peek_hosts`` reads other replicas' hosts the same way without locking them:
a claim only places jobs on them (and leaves those jobs to their replica). ``HostBreaker`` marks a host unhealthy after repeated transient failures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import structlog
from django.db import connection
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce

from container_manager.models import ContainerExecution, ExecutorHost, HealthStatus
from container_manager.states import LIVE_EXECUTION_VALUES
from executors.exceptions import ExecutorError

log = structlog.get_logger("reconciler")


@dataclass(frozen=True)
class HostSlots:
    """A host as host choice sees it."""

    pk: int
    name: str
    #: attempts it may still take now.
    free: int
    #: attempts it may run at once (its effective ``max_concurrent_jobs``).
    capacity: int


def assign(jobs: Sequence[tuple[int, int | None]], hosts: Sequence[HostSlots]) -> dict[int, int]:
    """Place ``(job id, pinned host pk or None)`` pairs, in order, on hosts with free slots.

    A pinned job goes to its own host while it has a free slot; an unpinned one to the least
    loaded host, the one with the largest share of its slots free (ties: more free slots, then
    the name), so a burst spreads over the hosts in proportion to their capacity instead of
    filling the largest one first. A job that cannot be placed now is left out of the result.
    """
    free = {h.pk: h.free for h in hosts}
    capacity = {h.pk: max(1, h.capacity, h.free) for h in hosts}
    unpinned = sorted(hosts, key=lambda h: h.name)
    placed: dict[int, int] = {}
    for job_id, pinned in jobs:
        if pinned is not None:
            if free.get(pinned, 0) > 0:
                placed[job_id] = pinned
                free[pinned] -= 1
            continue
        best = max(unpinned, key=lambda h: (free[h.pk] / capacity[h.pk], free[h.pk]), default=None)
        if best is not None and free[best.pk] > 0:
            placed[job_id] = best.pk
            free[best.pk] -= 1
    return placed


def lock_hosts(scope: Q | None = None) -> list[tuple[ExecutorHost, HostSlots]]:
    """Usable hosts (of ``scope``: the ones this replica drives) with their free slots, locked until
    the transaction ends.

    A host is usable while it is active and not known to be unhealthy: jobs pinned to an
    unhealthy host wait (pending) until the daemon's re-probe finds it healthy again, instead of
    using up their attempts on it.
    """
    return _usable(scope, lock=True)


def peek_hosts(pks: Collection[int]) -> list[HostSlots]:
    """The free slots of these usable hosts (other replicas' ones), read without a lock."""
    if not pks:
        return []
    return [slots for _, slots in _usable(Q(pk__in=sorted(pks)), lock=False)]


def _usable(scope: Q | None, *, lock: bool) -> list[tuple[ExecutorHost, HostSlots]]:
    live = (
        ContainerExecution.objects.filter(executor_host_id=OuterRef("pk"), status__in=LIVE_EXECUTION_VALUES)
        .order_by()
        .values("executor_host_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    hosts = ExecutorHost.objects.available().annotate(
        running=Coalesce(Subquery(live, output_field=IntegerField()), Value(0))
    )
    if scope is not None:
        hosts = hosts.filter(scope)
    if lock and connection.features.has_select_for_update:
        hosts = hosts.select_for_update(of=("self",))
    result = []
    for host in hosts.order_by("pk"):
        capacity = host.effective_max_concurrent_jobs
        free = max(0, capacity - host.running)  # type: ignore[attr-defined]
        result.append((host, HostSlots(host.pk, host.name, free, capacity)))
    return result


class HostBreaker:
    """Marks a host unhealthy after consecutive transient failures, and healthy after a success.

    While a host is unhealthy, unpinned jobs are placed elsewhere; the daemon's resync
    re-probes it with ``health_check()``. One failure alone does not open the circuit.
    """

    threshold = 3

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._failures: dict[int, int] = {}
        #: host pk -> when its current run of failures began.
        self._down_since: dict[int, float] = {}
        self.clock = clock

    def down_for(self, host_id: int | None) -> float:
        """Seconds the host has failed every call in a row (0 while it answers)."""
        since = self._down_since.get(host_id) if host_id is not None else None
        return 0.0 if since is None else self.clock() - since

    def failed(self, host_id: int | None, host_name: str, exc: ExecutorError) -> None:
        if host_id is None:
            return
        self._down_since.setdefault(host_id, self.clock())
        count = self._failures[host_id] = self._failures.get(host_id, 0) + 1
        if count == self.threshold:
            ExecutorHost.objects.filter(pk=host_id).update(
                health_status=HealthStatus.UNHEALTHY, health_message=str(exc)[:2000]
            )
            log.warning("host marked unhealthy", host=host_name, failures=count)

    def succeeded(self, host_id: int | None) -> None:
        if host_id is not None:
            self._down_since.pop(host_id, None)
        if host_id is None or not self._failures.pop(host_id, 0):
            return
        ExecutorHost.objects.filter(pk=host_id, health_status=HealthStatus.UNHEALTHY).update(
            health_status=HealthStatus.HEALTHY, health_message=""
        )
