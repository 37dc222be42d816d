"""Job and host gauges read from the database at scrape time.

Counting rows when Prometheus asks, rather than keeping gauges up to date from every code
path that changes a status, means the numbers are right even for rows written by the admin,
by SQL, or by another daemon. The cost is fixed: two aggregate queries (jobs grouped by
status with the due and dependency figures, active hosts with their live attempts counted),
whatever the number of rows, both
answered from indexes, so a scrape stays cheap with 100k finished jobs (about 20 ms on
SQLite, most of it counting the status index). Every status and every active host is always
present (zero-filled), so dashboards and alerts never see a series appear or vanish.

If the database cannot be read the scrape still succeeds: the daemon's own metrics are
served and ``container_manager_jobs_collector_up`` says 0.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from container_manager.states import LIVE_EXECUTION_VALUES, JobStatus

log = structlog.get_logger("metrics.collector")

JOBS = "container_manager_jobs"
OLDEST_DUE = "container_manager_jobs_oldest_due_age_seconds"
WAITING_ON_DEPENDENCIES = "container_manager_jobs_waiting_on_dependencies"
HOST_RUNNING = "container_manager_host_running_attempts"
HOST_CAPACITY = "container_manager_host_max_concurrent_attempts"
COLLECTOR_UP = "container_manager_jobs_collector_up"
COLLECTOR_DURATION = "container_manager_jobs_collector_duration_seconds"

_WAITING = (JobStatus.PENDING.value, JobStatus.RETRYING.value)


def _families() -> dict[str, GaugeMetricFamily]:
    return {
        JOBS: GaugeMetricFamily(JOBS, "Jobs in the database, by status.", labels=["status"]),
        OLDEST_DUE: GaugeMetricFamily(
            OLDEST_DUE,
            "Seconds the longest-waiting due job (pending or retrying, run_after passed, no unfinished "
            "dependency) has waited; 0 when none is due.",
        ),
        WAITING_ON_DEPENDENCIES: GaugeMetricFamily(
            WAITING_ON_DEPENDENCIES, "Pending jobs that wait for a job they depend on to finish."
        ),
        HOST_RUNNING: GaugeMetricFamily(
            HOST_RUNNING, "Live (launching or running) attempts on each active host.", labels=["host"]
        ),
        HOST_CAPACITY: GaugeMetricFamily(
            HOST_CAPACITY, "max_concurrent_jobs of each active host.", labels=["host"]
        ),
        COLLECTOR_UP: GaugeMetricFamily(
            COLLECTOR_UP, "1 when the scrape-time database queries succeeded, else 0."
        ),
        COLLECTOR_DURATION: GaugeMetricFamily(
            COLLECTOR_DURATION, "Time the scrape-time database queries took."
        ),
    }


def _model(name: str) -> Any:
    """A model class from the app registry: metrics only read rows, at run time."""
    from django.apps import apps

    return apps.get_model("container_manager", name)


def _job_rows(now: datetime) -> tuple[dict[str, int], float, int]:
    """Query 1: ``SELECT status, COUNT(*), (SELECT MIN(due) ... waiting), (SELECT COUNT(*) ...
    blocked) ... GROUP BY status``.

    The count is answered from the status index alone; the oldest due time and the number of
    jobs waiting on a dependency are uncorrelated scalar subqueries over the waiting rows only
    (found through the same index, each with an index probe of its dependencies), evaluated
    once. Folding ``MIN(due)`` into the grouped scan would read all 100k finished rows (5x slower).
    """
    from django.db.models import Count, F, IntegerField, Subquery
    from django.db.models.functions import Coalesce, Greatest

    from container_manager.querysets import unfinished_dependencies

    job = _model("ContainerJob")
    # When a waiting job became due: the later of creation and run_after. Greatest() yields
    # NULL on SQLite (and ignores NULL on PostgreSQL) when run_after is NULL, hence Coalesce.
    due = Coalesce(Greatest(F("run_after"), F("created_at")), F("created_at"))
    waiting = job.objects.filter(status__in=_WAITING)
    oldest_due = (
        waiting.exclude(unfinished_dependencies()).annotate(due=due).order_by("due").values("due")[:1]
    )
    blocked = (
        job.objects.waiting_on_dependencies().order_by().values("status").annotate(n=Count("pk")).values("n")
    )
    rows = (
        job.objects.order_by()
        .values("status")
        .annotate(
            n=Count("pk"),
            oldest=Subquery(oldest_due),
            blocked=Subquery(blocked, output_field=IntegerField()),
        )
    )
    counts = {status.value: 0 for status in JobStatus}
    oldest_age = 0.0
    blocked_count = 0
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + row["n"]
        blocked_count = row["blocked"] or 0
        oldest = row["oldest"]
        if oldest is not None:
            if isinstance(oldest, str):  # SQLite may hand back the raw text of an expression
                oldest = datetime.fromisoformat(oldest)
            oldest_age = max(oldest_age, (now - oldest).total_seconds())
    return counts, oldest_age, blocked_count


def _host_rows(host_names: Iterable[str] | None) -> list[tuple[str, int, int]]:
    """Query 2: active hosts, each with a correlated count of its live attempts.

    The count reads only the index ``cm_execution_host_status_idx``, however many finished
    attempts the table holds; a LEFT JOIN + GROUP BY would walk every attempt of every host.
    """
    from django.db.models import Count, F, IntegerField, OuterRef, Subquery, Value
    from django.db.models.functions import Coalesce, Least

    from container_manager.conf import get_policy

    live = (
        _model("ContainerExecution")
        .objects.filter(_in_constants("status", LIVE_EXECUTION_VALUES), executor_host=OuterRef("pk"))
        .order_by()
        .values("executor_host")
        .annotate(n=Count("pk"))
        .values("n")
    )
    hosts = _model("ExecutorHost").objects.filter(is_active=True)
    if host_names:
        hosts = hosts.filter(name__in=list(host_names))
    cap = get_policy().max_concurrent_jobs_cap
    rows = (
        hosts.order_by("name")
        .annotate(
            running=Coalesce(Subquery(live, output_field=IntegerField()), 0),
            # The limit the scheduler applies (ExecutorHost.effective_max_concurrent_jobs).
            capacity=Least(F("max_concurrent_jobs"), Value(cap)),
        )
        .values_list("name", "running", "capacity")
    )
    return [(name, int(running), int(capacity)) for name, running, capacity in rows]


def _in_constants(column: str, values: tuple[str, ...]) -> Any:
    """``column IN ('a', 'b')`` with the constants written into the SQL, not bound.

    SQLite uses a partial index only when the query repeats the index's condition literally,
    and a bound parameter is not a literal. The values are our own status names (checked).
    """
    from django.db.models import BooleanField, F, Func

    for value in values:
        if not re.fullmatch(r"[a-z_]+", value):
            raise ValueError(f"not a status constant: {value!r}")
    constants = ", ".join(f"'{value}'" for value in values)

    class InConstants(Func):
        output_field = BooleanField()
        template = f"%(expressions)s IN ({constants})"

    return InConstants(F(column))


class JobsCollector(Collector):
    """A ``prometheus_client`` custom collector: job counts by status, live attempts by host."""

    def __init__(
        self,
        *,
        host_names: Iterable[str] | None = None,
        clock: Callable[[], datetime] | None = None,
        enabled: Callable[[], bool] | None = None,
    ) -> None:
        #: only these hosts (the daemon's ``--host`` filter); None = every active host.
        self.host_names = tuple(host_names) if host_names else None
        self._clock = clock
        #: with several replicas only the leader reads the job table (the same numbers from every
        #: replica would be counted once per replica): the others export none of these families.
        self.enabled = enabled

    def describe(self) -> Iterable[Metric]:
        # Lets the registry check names at registration without running the queries.
        return list(_families().values())

    def collect(self) -> Iterator[Metric]:
        if self.enabled is not None and not self.enabled():
            return
        families = _families()
        started = time.perf_counter()
        try:
            now = self._clock() if self._clock else _now()
            counts, oldest_age, blocked = _job_rows(now)
            hosts = _host_rows(self.host_names)
        except Exception as exc:  # the database is down: serve the rest of the scrape
            log.warning("job metrics unavailable", error=f"{type(exc).__name__}: {exc}")
            families[COLLECTOR_UP].add_metric([], 0.0)
        else:
            for status, count in sorted(counts.items()):
                families[JOBS].add_metric([status], float(count))
            families[OLDEST_DUE].add_metric([], max(0.0, oldest_age))
            families[WAITING_ON_DEPENDENCIES].add_metric([], float(blocked))
            for name, running, capacity in hosts:
                families[HOST_RUNNING].add_metric([name], float(running))
                families[HOST_CAPACITY].add_metric([name], float(capacity))
            families[COLLECTOR_UP].add_metric([], 1.0)
        families[COLLECTOR_DURATION].add_metric([], time.perf_counter() - started)
        yield from families.values()


def _now() -> datetime:
    from django.utils import timezone

    return timezone.now()


_registered: weakref.WeakKeyDictionary[CollectorRegistry, JobsCollector] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def register(registry: CollectorRegistry, **kwargs: Any) -> JobsCollector:
    """Register one ``JobsCollector`` on ``registry`` (idempotent: later calls return the first)."""
    with _lock:
        existing = _registered.get(registry)
        if existing is not None:
            if "host_names" in kwargs:
                existing.host_names = tuple(kwargs["host_names"]) if kwargs["host_names"] else None
            if "enabled" in kwargs:
                existing.enabled = kwargs["enabled"]
            return existing
        collector = JobsCollector(**kwargs)
        registry.register(collector)
        _registered[registry] = collector
        return collector
