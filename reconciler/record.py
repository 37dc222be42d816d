"""The writes the job step makes: each one short transaction of compare-and-swap UPDATEs.

Every write is conditioned on the state the step decided from (the job's status through
``transitions.transition``, the attempt's status here), so a lost race writes nothing and the
step reads again. On success the step's snapshot is brought up to what the database now holds,
so the next decision needs no read: the rows are read once per step, not once per action.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction

from container_manager.models import ContainerExecution, ContainerJob
from container_manager.signals import job_launched, job_retry_scheduled
from container_manager.states import LIVE_EXECUTION_VALUES, ExecutionStatus, JobStatus, Reason
from container_manager.transitions import fenced_for, send_after_commit, transition
from executors.types import LogTail
from reconciler import decide as d
from reconciler.snapshot import Snapshot

#: Longest text kept in a message column.
MESSAGE_MAX = 4000


class _Undo(Exception):
    """Roll the transaction back: the attempt row was no longer live."""


def _job_fields(snap: Snapshot, outcome: d.JobOutcome) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "failure_reason": outcome.reason.value,
        "status_message": outcome.message[:MESSAGE_MAX],
        "exit_code": outcome.exit_code,
    }
    if outcome.retry_at is not None:
        fields["run_after"] = outcome.retry_at
    execution = snap.execution
    if snap.job.started_at is None and execution is not None and execution.started_at is not None:
        # The attempt ran too briefly to be seen running: the job still started when it did.
        fields["started_at"] = execution.started_at
    return fields


def _message(outcome: d.JobOutcome) -> str:
    if outcome.retry_at is not None:
        return f"retry at {outcome.retry_at.isoformat()}: {outcome.message}"
    return outcome.message


def _apply(instance: Any, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(instance, name, value)


def settle_job(snap: Snapshot, outcome: d.JobOutcome, *, actor: str, now: datetime) -> bool:
    """Move the job alone to ``outcome`` (no live attempt to record); False after a lost race."""
    job = snap.job
    fields = _job_fields(snap, outcome)
    with transaction.atomic():
        if not transition(
            job.pk,
            job.status,
            outcome.status,
            actor=actor,
            reason=outcome.reason.value,
            message=_message(outcome),
            attempt=job.attempts or None,
            fields=fields,
            now=now,
            savepoint=False,
        ):
            return False
        _retry_signal(job, outcome)
    _apply(job, {**fields, "status": outcome.status.value, "updated_at": now})
    if outcome.status.is_terminal:
        job.finished_at = now
    return True


def mark_running(
    snap: Snapshot, started_at: datetime, container_id: str, *, actor: str, now: datetime
) -> bool:
    """Record that the attempt's container runs, with its id: the launch marker."""
    job, execution = snap.job, snap.execution
    assert execution is not None
    job_fields = {"started_at": job.started_at or started_at}
    attempt_fields = {
        "status": ExecutionStatus.RUNNING.value,
        "started_at": started_at,
        "container_id": container_id,
    }
    with transaction.atomic():
        if not transition(
            job.pk,
            JobStatus.LAUNCHING,
            JobStatus.RUNNING,
            actor=actor,
            attempt=execution.attempt,
            fields=job_fields,
            now=now,
            savepoint=False,
        ):
            return False
        ContainerExecution.objects.filter(pk=execution.pk, status=ExecutionStatus.LAUNCHING.value).update(
            **attempt_fields
        )
        send_after_commit(job_launched, job_id=job.pk, attempt=execution.attempt, host=execution.host_name)
    _apply(job, {**job_fields, "status": JobStatus.RUNNING.value, "updated_at": now})
    _apply(execution, attempt_fields)
    return True


def finish_attempt(
    snap: Snapshot,
    action: d.FinishAttempt,
    tail: LogTail,
    container_id: str | None,
    *,
    actor: str,
    now: datetime,
) -> bool:
    """Record the attempt's end (with its output) and the job's outcome in one transaction."""
    job, execution = snap.job, snap.execution
    assert execution is not None
    attempt_fields: dict[str, Any] = {
        "status": action.status.value,
        "reason": action.reason.value,
        "exit_code": action.exit_code,
        "oom_killed": action.oom_killed,
        "message": action.message[:MESSAGE_MAX],
        "finished_at": action.finished_at or now,
        "stdout": tail.stdout,
        "stderr": tail.stderr,
        "stdout_truncated": tail.stdout_truncated,
        "stderr_truncated": tail.stderr_truncated,
    }
    if action.started_at is not None:
        attempt_fields["started_at"] = action.started_at
    if container_id and not execution.container_id:
        attempt_fields["container_id"] = container_id
    outcome = action.job
    _apply(execution, {"started_at": attempt_fields.get("started_at", execution.started_at)})
    job_fields = _job_fields(snap, outcome)
    try:
        with transaction.atomic():
            if not transition(
                job.pk,
                job.status,
                outcome.status,
                actor=actor,
                reason=outcome.reason.value,
                message=_message(outcome),
                attempt=job.attempts,
                fields=job_fields,
                now=now,
                savepoint=False,
            ):
                return False
            updated = ContainerExecution.objects.filter(
                pk=execution.pk, status__in=LIVE_EXECUTION_VALUES
            ).update(**attempt_fields)
            if not updated:
                raise _Undo()
            _retry_signal(job, outcome)
    except _Undo:
        return False
    _apply(job, {**job_fields, "status": outcome.status.value, "updated_at": now})
    if outcome.status.is_terminal:
        job.finished_at = now
    _apply(execution, attempt_fields)
    return True


def _retry_signal(job: ContainerJob, outcome: d.JobOutcome) -> None:
    if outcome.retry_at is not None:
        send_after_commit(
            job_retry_scheduled,
            job_id=job.pk,
            attempt=job.attempts,
            retry_at=outcome.retry_at,
            reason=outcome.reason.value,
        )


def note_attempt_error(execution: ContainerExecution, message: str) -> None:
    """Keep the last executor error on the attempt (shown if the launch deadline passes)."""
    message = message[:MESSAGE_MAX]
    ContainerExecution.objects.filter(pk=execution.pk).update(message=message)
    execution.message = message


def mark_cleaned(execution_ids: list[int]) -> None:
    """The containers of these attempts are gone: one UPDATE for the whole batch."""
    if execution_ids:
        ContainerExecution.objects.filter(pk__in=execution_ids).update(cleaned_up=True)


def give_up(job_id: int, message: str, *, actor: str, now: datetime) -> bool:
    """Fail an unfinished job (and its live attempt) with ``reconcile_error``; False if already finished.

    For a job whose step keeps raising: its attempt ends too, so the cleaner removes its container.
    """
    failed = {
        "failure_reason": Reason.RECONCILE_ERROR.value,
        "status_message": message[:MESSAGE_MAX],
    }
    live = ContainerExecution.objects.filter(job_id=job_id, status__in=LIVE_EXECUTION_VALUES)
    with transaction.atomic(), fenced_for(*live.values_list("executor_host_id", flat=True)):
        status = ContainerJob.objects.filter(pk=job_id).values_list("status", flat=True).first()
        if status is None or JobStatus(status).is_terminal:
            return False
        if not transition(
            job_id,
            status,
            JobStatus.FAILED,
            actor=actor,
            reason=Reason.RECONCILE_ERROR.value,
            message=message,
            fields=failed,
            now=now,
            savepoint=False,
        ):
            return False
        ContainerExecution.objects.filter(job_id=job_id, status__in=LIVE_EXECUTION_VALUES).update(
            status=ExecutionStatus.FAILED.value,
            reason=Reason.RECONCILE_ERROR.value,
            message=message[:MESSAGE_MAX],
            finished_at=now,
        )
    return True
