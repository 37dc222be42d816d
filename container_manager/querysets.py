"""Querysets named after states, so callers say what they mean (``ContainerJob.objects.pending()``)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import models, transaction
from django.db.models import Exists, F, OuterRef, Q, Subquery, Value
from django.db.models.functions import Least
from django.utils import timezone

from container_manager.states import ACTIVE, LIVE, LIVE_EXECUTION_VALUES, TERMINAL, JobStatus

if TYPE_CHECKING:
    from container_manager.models import ContainerJob, ExecutorHost, JobArray

_ACTIVE_VALUES = [s.value for s in ACTIVE]
#: Terminal statuses other than ``completed``: a dependency that ends in one of them cancels its dependents.
_UNSUCCESSFUL_VALUES = [s.value for s in TERMINAL if s is not JobStatus.COMPLETED]


def _dependencies(statuses: list[str]) -> Any:
    """The edges of the outer job whose other end is in one of ``statuses`` (a correlated subquery)."""
    from container_manager.models import JobDependency

    return JobDependency.objects.filter(job_id=OuterRef("pk"), depends_on__status__in=statuses)


def unfinished_dependencies() -> Exists:
    """True for a job with a dependency that has not finished yet (it is not due)."""
    return Exists(_dependencies(_ACTIVE_VALUES))


def failed_dependency_annotations() -> dict[str, Any]:
    """``failed_dependency`` (id) and ``failed_dependency_status`` of one dependency that ended
    other than ``completed``, both None when there is none: the fact the claim gives ``decide()``."""
    failed = _dependencies(_UNSUCCESSFUL_VALUES).order_by("depends_on_id")
    return {
        "failed_dependency": Subquery(failed.values("depends_on_id")[:1]),
        "failed_dependency_status": Subquery(failed.values("depends_on__status")[:1]),
    }


class ExecutorHostQuerySet(models.QuerySet["ExecutorHost"]):
    def available(self) -> ExecutorHostQuerySet:
        """Active hosts not known to be unhealthy (a never-checked host counts as available)."""
        return self.filter(is_active=True).exclude(health_status="unhealthy")

    def by_type(self, executor_type: str) -> ExecutorHostQuerySet:
        return self.filter(executor_type=executor_type)

    def with_running_count(self) -> ExecutorHostQuerySet:
        """Annotate ``running_jobs`` (live attempts on each host) and ``capacity`` (the host's
        ``effective_max_concurrent_jobs``: its limit within the settings' cap), in the same query."""
        from container_manager.conf import get_policy

        return self.annotate(
            running_jobs=models.Count("executions", filter=Q(executions__status__in=LIVE_EXECUTION_VALUES)),
            capacity=Least(F("max_concurrent_jobs"), Value(get_policy().max_concurrent_jobs_cap)),
        )


class ContainerJobQuerySet(models.QuerySet["ContainerJob"]):
    def pending(self) -> ContainerJobQuerySet:
        """Jobs waiting for their first attempt."""
        return self.filter(status=JobStatus.PENDING)

    def active(self) -> ContainerJobQuerySet:
        """Jobs whose container is being started or is running."""
        return self.filter(status__in=[s.value for s in LIVE])

    def unfinished(self) -> ContainerJobQuerySet:
        """Jobs the reconciler still has work for: pending, launching, running or retrying."""
        return self.filter(status__in=[s.value for s in ACTIVE])

    def retrying(self) -> ContainerJobQuerySet:
        return self.filter(status=JobStatus.RETRYING)

    def terminal(self) -> ContainerJobQuerySet:
        return self.filter(status__in=[s.value for s in TERMINAL])

    def completed(self) -> ContainerJobQuerySet:
        return self.filter(status=JobStatus.COMPLETED)

    def failed(self) -> ContainerJobQuerySet:
        """Jobs that ended in failure: ``failed`` (non-zero exit, OOM, lost, launch error) or ``timeout``."""
        return self.filter(status__in=[JobStatus.FAILED.value, JobStatus.TIMEOUT.value])

    def cancelled(self) -> ContainerJobQuerySet:
        return self.filter(status=JobStatus.CANCELLED)

    def recent(self, hours: float = 24) -> ContainerJobQuerySet:
        """Jobs created in the last ``hours`` hours."""
        return self.filter(created_at__gte=timezone.now() - timedelta(hours=hours))

    def by_host(self, host: ExecutorHost | int | str) -> ContainerJobQuerySet:
        """Jobs pinned to ``host`` or with an attempt that ran on it (a host object, pk or name)."""
        from container_manager.models import ExecutorHost

        if isinstance(host, str):
            host = ExecutorHost.objects.get(name=host)
        pk = host.pk if isinstance(host, ExecutorHost) else host
        from container_manager.models import ContainerExecution

        ran_there = ContainerExecution.objects.filter(executor_host_id=pk)
        return self.filter(Q(docker_host_id=pk) | Q(pk__in=ran_there.values("job_id")))

    def due(self, now: Any = None) -> ContainerJobQuerySet:
        """Pending or retrying jobs whose ``run_after`` has passed and whose dependencies have all
        finished, in claim order (a job whose dependency did not complete is due: to be cancelled)."""
        now = now or timezone.now()
        return (
            self.filter(status__in=[JobStatus.PENDING.value, JobStatus.RETRYING.value])
            .filter(Q(run_after__isnull=True) | Q(run_after__lte=now))
            .exclude(unfinished_dependencies())
            .order_by("-priority", "created_at", "id")
        )

    def waiting_on_dependencies(self) -> ContainerJobQuerySet:
        """Pending jobs that wait for a dependency to finish."""
        return self.filter(status=JobStatus.PENDING).filter(unfinished_dependencies())

    def create(self, **kwargs: Any) -> ContainerJob:
        """``create()``, also with ``depends_on=[jobs or ids]``: the job and its dependencies are
        written in one transaction (never claimable without them). All errors are raised at once."""
        if "depends_on" not in kwargs:
            return super().create(**kwargs)
        from container_manager.models.workflow import create_with_dependencies

        return create_with_dependencies(self, kwargs)

    def create_array(
        self,
        size: int,
        *,
        parallelism: int | None = None,
        depends_on: Any = (),
        **fields: Any,
    ) -> JobArray:
        """Create ``size`` jobs from ``fields`` (as for ``create()``), with ``array_index`` 0..size-1
        and ``array_size`` = size, in one ``JobArray`` whose ``parallelism`` caps how many run at
        once. Every job depends on ``depends_on``. All or nothing; returns the array."""
        from container_manager.models.workflow import create_array

        return create_array(self, size, parallelism=parallelism, depends_on=depends_on, fields=fields)

    def create_many(self, jobs: list[ContainerJob], *, batch_size: int = 500) -> list[ContainerJob]:
        """Validate every job, then insert them all in one transaction (all or nothing).

        Unlike this, Django's ``bulk_create()`` (like ``update()``) skips validation, as SQL
        does: only the database's CHECK constraints and the launch-time check apply.
        """
        from django.core.exceptions import ValidationError

        errors: dict[str, Any] = {}
        for index, job in enumerate(jobs):
            try:
                job.prepare_for_insert()
            except ValidationError as exc:
                # ValidationError cannot nest dicts: flatten to "field: message" strings.
                errors[f"job {index + 1}"] = (
                    [f"{field}: {msg}" for field, msgs in exc.message_dict.items() for msg in msgs]
                    if hasattr(exc, "error_dict")
                    else exc.messages
                )
        if errors:
            raise ValidationError(errors)
        with transaction.atomic():
            created = self.bulk_create(jobs, batch_size=batch_size)
        for job in created:
            job._remember_fixed()
        return created


class ContainerExecutionQuerySet(models.QuerySet[Any]):
    def live(self) -> ContainerExecutionQuerySet:
        return self.filter(status__in=LIVE_EXECUTION_VALUES)

    def finished(self) -> ContainerExecutionQuerySet:
        return self.exclude(status__in=LIVE_EXECUTION_VALUES)
