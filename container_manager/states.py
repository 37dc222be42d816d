"""The job status machine, in one place, with no Django import.

Both the models (for choices and CHECK constraints) and the pure reconciler core
(``reconciler.decide``) read it, so the rules can never disagree.

::

    pending -> launching -> running -> completed | failed | timeout | cancelled
                   |           |
                   +-----------+--> retrying --> launching   (next attempt, after a backoff)

A job may be cancelled from any live state (a pending one also when a job it depends on did not
complete), and a pending or retrying job may fail without a new attempt (an invalid row
inserted by SQL, or an unknown pinned host). Terminal states are final.
"""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    LAUNCHING = "launching"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


class ExecutionStatus(enum.StrEnum):
    """Status of one attempt (one container)."""

    LAUNCHING = "launching"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self not in (ExecutionStatus.LAUNCHING, ExecutionStatus.RUNNING)


class Reason(enum.StrEnum):
    """Why an attempt or a job ended the way it did (``failure_reason``)."""

    NONE = ""
    #: the container exited with a non-zero code.
    EXIT_CODE = "exit_code"
    #: the kernel killed the container for exceeding its memory limit.
    OOM = "oom"
    #: the attempt ran past ``timeout_seconds`` and was stopped.
    TIMEOUT = "timeout"
    #: cancellation was requested and the container stopped.
    CANCELLED = "cancelled"
    #: the container vanished while the attempt was live (removed behind our back, host lost).
    LOST = "lost"
    #: the container could not be started (the executor kept failing until the launch deadline).
    LAUNCH_ERROR = "launch_error"
    #: the executor refused the container for good (a missing image, a program that does not exist):
    #: trying again cannot help, so it is retried only when ``retry_on`` names it.
    LAUNCH_REFUSED = "launch_refused"
    #: the row itself is invalid (e.g. inserted by SQL past the safety limits).
    INVALID_SPEC = "invalid_spec"
    #: the pinned host does not exist or is not usable.
    NO_HOST = "no_host"
    #: the reconciler failed on this job again and again (an internal error, named in the message).
    RECONCILE_ERROR = "reconcile_error"
    #: a job this one depends on ended other than ``completed``, so this one never ran (``cancelled``).
    DEPENDENCY_FAILED = "dependency_failed"


#: Execution statuses in which the attempt's container may exist (as plain values, for queries).
LIVE_EXECUTION_VALUES: tuple[str, ...] = (ExecutionStatus.LAUNCHING.value, ExecutionStatus.RUNNING.value)

TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED}
)
#: Statuses in which a container may exist for the job's current attempt.
LIVE: frozenset[JobStatus] = frozenset({JobStatus.LAUNCHING, JobStatus.RUNNING})
#: Statuses the reconciler still has work for.
ACTIVE: frozenset[JobStatus] = frozenset(
    {JobStatus.PENDING, JobStatus.LAUNCHING, JobStatus.RUNNING, JobStatus.RETRYING}
)

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.LAUNCHING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.LAUNCHING: frozenset(
        {
            JobStatus.RUNNING,
            JobStatus.RETRYING,
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.TIMEOUT,
            JobStatus.CANCELLED,
        }
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.RETRYING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED}
    ),
    JobStatus.RETRYING: frozenset({JobStatus.LAUNCHING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.TIMEOUT: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

#: Reasons a failed attempt is retried for when the job does not say otherwise.
DEFAULT_RETRY_ON: tuple[Reason, ...] = (Reason.EXIT_CODE, Reason.OOM, Reason.LOST, Reason.LAUNCH_ERROR)
#: Reasons a job may list in ``retry_on``.
RETRYABLE_REASONS: frozenset[Reason] = frozenset(
    {Reason.EXIT_CODE, Reason.OOM, Reason.LOST, Reason.LAUNCH_ERROR, Reason.LAUNCH_REFUSED, Reason.TIMEOUT}
)


def can_transition(source: str, target: str) -> bool:
    try:
        return JobStatus(target) in TRANSITIONS[JobStatus(source)]
    except ValueError:
        return False


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every status from which ``target`` may be entered."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def execution_status_to_job(status: ExecutionStatus) -> JobStatus:
    """The job's terminal status when its last attempt ended with ``status``."""
    return {
        ExecutionStatus.COMPLETED: JobStatus.COMPLETED,
        ExecutionStatus.FAILED: JobStatus.FAILED,
        ExecutionStatus.TIMEOUT: JobStatus.TIMEOUT,
        ExecutionStatus.CANCELLED: JobStatus.CANCELLED,
    }[status]
