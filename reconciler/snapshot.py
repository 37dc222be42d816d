"""What the job step knows about one job: its row and its current attempt's row, read in one query.

``read()`` joins the job to the attempt whose number is the job's ``attempts`` counter (the
current one: the claim writes both in one transaction), with the hosts and the environment
template, so a step costs one read. The frozen views ``decide()`` takes are built from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db.models import F, FilteredRelation, Q

from container_manager.conf import Policy
from container_manager.models import ContainerExecution, ContainerJob
from container_manager.states import ExecutionStatus, JobStatus, Reason
from container_manager.validation import parse_retry_on
from executors.types import ContainerSpec
from reconciler import decide as d


@dataclass
class Snapshot:
    """One job row and its current attempt row, as this step last read or wrote them.

    The model instances belong to the step that holds the snapshot (the work queue hands a job
    to one worker at a time); the writes in ``reconciler.record`` update them in place. ``spec``
    is the attempt's container spec, built once when the attempt was claimed.
    """

    job: ContainerJob
    execution: ContainerExecution | None
    spec: ContainerSpec | None = None


def read(job_id: int) -> Snapshot | None:
    """The job and its current attempt (with hosts and template), in one query; None if deleted."""
    job = (
        ContainerJob.objects.annotate(
            current=FilteredRelation("executions", condition=Q(executions__attempt=F("attempts")))
        )
        # The stubs do not know FilteredRelation aliases; Django joins them like any relation.
        .select_related(  # type: ignore[misc]
            "docker_host", "environment_template", "current", "current__executor_host"
        )
        .filter(pk=job_id)
        .first()
    )
    if job is None:
        return None
    return Snapshot(job, getattr(job, "current", None))


def job_view(job: ContainerJob, policy: Policy) -> d.JobView:
    try:
        retry_on = parse_retry_on(job.retry_on)
    except ValidationError:
        retry_on = frozenset()
    # Written at the claim (the settings' default when the row had none), so set for every
    # live attempt; a waiting job's timeout is not read.
    timeout = job.timeout_seconds if isinstance(job.timeout_seconds, int) else policy.default_timeout_seconds
    return d.JobView(
        id=job.pk,
        status=JobStatus(job.status),
        attempts=job.attempts,
        max_retries=job.max_retries,
        timeout_seconds=timeout,
        retry_backoff_seconds=job.retry_backoff_seconds,
        retry_backoff_max_seconds=job.retry_backoff_max_seconds,
        retry_on=retry_on,
        run_after=job.run_after,
        cancel_requested=job.cancel_requested_at is not None,
    )


def attempt_view(execution: ContainerExecution | None) -> d.AttemptView | None:
    if execution is None:
        return None
    return d.AttemptView(
        attempt=execution.attempt,
        status=ExecutionStatus(execution.status),
        container_name=execution.container_name,
        created_at=execution.created_at,
        started_at=execution.started_at,
        reason=Reason(execution.reason),
        exit_code=execution.exit_code,
        cleaned_up=execution.cleaned_up,
        message=execution.message,
        launched=bool(execution.container_id),
    )
