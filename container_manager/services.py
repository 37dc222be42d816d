"""Operations on jobs that are not reconcile steps: cancellation requests and re-runs.

Shared by the model methods, the admin actions and the ``manage_jobs`` command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from container_manager.exceptions import JobStateError
from container_manager.states import TERMINAL, JobStatus, Reason
from container_manager.transitions import note, transition

if TYPE_CHECKING:
    from container_manager.models import ContainerJob


def request_cancel(job_id: int, *, actor: str, message: str = "") -> bool:
    """Ask for job ``job_id`` to be cancelled; True if the request was recorded.

    A job that has no container yet (pending, retrying) is cancelled at once; otherwise the
    reconciler stops the container, captures its logs and records ``cancelled``.
    """
    from container_manager.models import ContainerJob

    now = timezone.now()
    for source in (JobStatus.PENDING, JobStatus.RETRYING):
        if transition(
            job_id,
            source,
            JobStatus.CANCELLED,
            actor=actor,
            reason=Reason.CANCELLED,
            message=message or "cancelled before a container was running",
            fields={"cancel_requested_at": now, "failure_reason": Reason.CANCELLED.value},
            now=now,
        ):
            return True
    with transaction.atomic():
        changed = (
            ContainerJob.objects.filter(pk=job_id, cancel_requested_at__isnull=True)
            .exclude(status__in=[s.value for s in TERMINAL])
            .update(cancel_requested_at=now, updated_at=now)
        )
        if changed:
            note(job_id, actor=actor, reason=Reason.CANCELLED, message=message or "cancellation requested")
    # On PostgreSQL a trigger on cancel_requested_at wakes the daemon at commit (see notify).
    return bool(changed)


def rerun_job(job: ContainerJob, *, actor: str) -> ContainerJob:
    """A new pending job with ``job``'s desired state, linked through ``rerun_of``."""
    from container_manager.models import USER_EDITABLE_FIELDS, ContainerJob

    if not job.is_terminal_status:
        raise JobStateError(f"job {job.pk} is {job.status}; only finished jobs can be re-run")
    values = {name: getattr(job, name) for name in USER_EDITABLE_FIELDS}
    values["run_after"] = None
    # An array element runs again with its index (the container's CM_ARRAY_INDEX), outside the
    # array: its dependencies and the array's parallelism were for the first run.
    values.update(array_index=job.array_index, array_size=job.array_size)
    new = ContainerJob(**values, rerun_of=job, created_by=actor)
    new.save()
    note(job.pk, actor=actor, message=f"re-run as job {new.pk}")
    return new
