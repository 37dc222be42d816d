"""The pure decision core: what to do next for one job, given what is true now.

``decide(job, attempt, observed, now, policy)`` reads a snapshot of the job row, its current
attempt row and what the executor reports about that attempt's container, and returns a
``Plan``: actions to carry out in order, and when to look at the job again. It has no Django,
no clock and no I/O, so every (status x observation) pair is tested in a table.

The plan is level-triggered: the same inputs always give the same plan, and carrying out a
plan twice is harmless (every action is idempotent or a compare-and-swap), so a daemon killed
between any two actions converges when it starts again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from container_manager.states import (
    LIVE,
    TERMINAL,
    ExecutionStatus,
    JobStatus,
    Reason,
    execution_status_to_job,
)
from executors.types import ContainerState, Observed


@dataclass(frozen=True)
class JobView:
    """The fields of a job row that decisions depend on."""

    id: int
    status: JobStatus
    #: number of attempts started so far (the current attempt's number).
    attempts: int
    max_retries: int
    timeout_seconds: int
    retry_backoff_seconds: float = 5.0
    retry_backoff_max_seconds: float = 300.0
    retry_on: frozenset[Reason] = frozenset()
    run_after: datetime | None = None
    cancel_requested: bool = False


@dataclass(frozen=True)
class AttemptView:
    """The fields of the current attempt's row."""

    attempt: int
    status: ExecutionStatus
    container_name: str
    created_at: datetime
    started_at: datetime | None = None
    reason: Reason = Reason.NONE
    exit_code: int | None = None
    cleaned_up: bool = False
    message: str = ""
    #: the executor accepted the launch (its container id is recorded): from then on a
    #: missing container is lost, never created again.
    launched: bool = False


@dataclass(frozen=True)
class DecidePolicy:
    stop_grace_seconds: float = 10.0
    #: longest time between two looks at a running job when no event arrives.
    resync_seconds: float = 30.0
    #: an attempt that has not started after this long fails with ``launch_error``.
    launch_deadline_seconds: float = 300.0


# Actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartAttempt:
    """Claim the job for attempt ``attempt``: pick a host and write the attempt row (write-ahead)."""

    attempt: int


@dataclass(frozen=True)
class Launch:
    """Create and start the attempt's container (idempotent: an existing one is adopted)."""


@dataclass(frozen=True)
class MarkRunning:
    started_at: datetime


@dataclass(frozen=True)
class Stop:
    grace_seconds: float


@dataclass(frozen=True)
class FinishAttempt:
    """Record the attempt's end; logs are read first when the container may still have them."""

    status: ExecutionStatus
    reason: Reason
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    capture_logs: bool = True
    message: str = ""


@dataclass(frozen=True)
class Cleanup:
    """Remove the current attempt's container and mark the attempt cleaned up."""


@dataclass(frozen=True)
class ScheduleRetry:
    retry_at: datetime
    reason: Reason
    exit_code: int | None = None
    message: str = ""


@dataclass(frozen=True)
class FinishJob:
    status: JobStatus
    reason: Reason = Reason.NONE
    exit_code: int | None = None
    message: str = ""


Action = StartAttempt | Launch | MarkRunning | Stop | FinishAttempt | Cleanup | ScheduleRetry | FinishJob


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = field(default_factory=tuple)
    #: seconds until the job should be looked at again: 0 = right after these actions,
    #: None = only when an event or the periodic resync says so.
    requeue_after: float | None = None


# Decisions ----------------------------------------------------------------------------


def needs_observation(job: JobView, attempt: AttemptView | None) -> bool:
    """Whether ``decide`` needs the executor's view of the current attempt's container."""
    return (
        job.status in LIVE
        and attempt is not None
        and attempt.attempt == job.attempts
        and not attempt.status.is_terminal
    )


def backoff_seconds(job_id: int, attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with "equal jitter", deterministic per (job, attempt).

    The delay after attempt n is uniform in [d/2, d] with d = min(cap, base * 2**(n-1)), so
    jobs failing together spread out, yet a given job's schedule is reproducible.
    """
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    jitter = random.Random(f"{job_id}:{attempt}").random()
    return ceiling * (0.5 + 0.5 * jitter)


def decide(
    job: JobView,
    attempt: AttemptView | None,
    observed: Observed | None,
    now: datetime,
    policy: DecidePolicy,
) -> Plan:
    if job.status in TERMINAL:
        if attempt is not None and not attempt.cleaned_up:
            return Plan((Cleanup(),))
        return Plan()

    if job.status in (JobStatus.PENDING, JobStatus.RETRYING):
        return _decide_waiting(job, attempt, now)

    if attempt is None or attempt.attempt != job.attempts:
        # Cannot happen while the claim and the attempt row are written in one transaction.
        return Plan(
            (FinishJob(JobStatus.FAILED, Reason.LOST, message="the current attempt's row is missing"),)
        )
    if attempt.status.is_terminal:
        return _decide_outcome(job, attempt, now)
    if observed is None:
        raise ValueError("decide() needs the observed container for a live attempt")
    return _decide_live(job, attempt, observed, now, policy)


def _decide_waiting(job: JobView, attempt: AttemptView | None, now: datetime) -> Plan:
    cleanup: tuple[Action, ...] = ()
    if attempt is not None and not attempt.cleaned_up:
        cleanup = (Cleanup(),)
    if job.cancel_requested:
        return Plan((*cleanup, FinishJob(JobStatus.CANCELLED, Reason.CANCELLED, message="cancelled")))
    if job.run_after is not None and now < job.run_after:
        return Plan(cleanup, requeue_after=(job.run_after - now).total_seconds())
    if job.attempts >= job.max_retries + 1:
        return Plan((*cleanup, FinishJob(JobStatus.FAILED, Reason.LAUNCH_ERROR, message="no attempts left")))
    return Plan((*cleanup, StartAttempt(job.attempts + 1)), requeue_after=0)


def _decide_outcome(job: JobView, attempt: AttemptView, now: datetime) -> Plan:
    """The attempt is over and the job is not: finish the job or schedule the next attempt."""
    cleanup: tuple[Action, ...] = () if attempt.cleaned_up else (Cleanup(),)
    if attempt.status is ExecutionStatus.COMPLETED:
        return Plan((FinishJob(JobStatus.COMPLETED, Reason.NONE, attempt.exit_code), *cleanup))
    if attempt.status is ExecutionStatus.CANCELLED or job.cancel_requested:
        return Plan(
            (FinishJob(JobStatus.CANCELLED, Reason.CANCELLED, attempt.exit_code, "cancelled"), *cleanup)
        )
    if attempt.reason in job.retry_on and job.attempts < job.max_retries + 1:
        delay = backoff_seconds(
            job.id, attempt.attempt, job.retry_backoff_seconds, job.retry_backoff_max_seconds
        )
        retry = ScheduleRetry(
            now + timedelta(seconds=delay), attempt.reason, attempt.exit_code, attempt.message
        )
        return Plan((retry, *cleanup), requeue_after=delay)
    return Plan(
        (
            FinishJob(
                execution_status_to_job(attempt.status), attempt.reason, attempt.exit_code, attempt.message
            ),
            *cleanup,
        )
    )


def _decide_live(
    job: JobView, attempt: AttemptView, observed: Observed, now: datetime, policy: DecidePolicy
) -> Plan:
    state = observed.state
    if state is ContainerState.NOT_FOUND:
        if attempt.status is ExecutionStatus.RUNNING or attempt.launched:
            return Plan(
                (
                    FinishAttempt(
                        ExecutionStatus.FAILED,
                        Reason.LOST,
                        capture_logs=False,
                        message="the container disappeared while running",
                    ),
                ),
                requeue_after=0,
            )
        if job.cancel_requested:
            return Plan(
                (
                    FinishAttempt(
                        ExecutionStatus.CANCELLED,
                        Reason.CANCELLED,
                        capture_logs=False,
                        message="cancelled before the container started",
                    ),
                ),
                requeue_after=0,
            )
        if (now - attempt.created_at).total_seconds() > policy.launch_deadline_seconds:
            return Plan(
                (
                    FinishAttempt(
                        ExecutionStatus.FAILED,
                        Reason.LAUNCH_ERROR,
                        capture_logs=False,
                        message=attempt.message or "the container could not be started in time",
                    ),
                ),
                requeue_after=0,
            )
        return Plan((Launch(),), requeue_after=0)

    if state is ContainerState.CREATED:
        if job.cancel_requested:
            return Plan(
                (FinishAttempt(ExecutionStatus.CANCELLED, Reason.CANCELLED, capture_logs=False),),
                requeue_after=0,
            )
        return Plan((Launch(),), requeue_after=0)

    started = attempt.started_at or observed.started_at or now
    deadline = started + timedelta(seconds=job.timeout_seconds)

    if state is ContainerState.RUNNING:
        if job.cancel_requested:
            return Plan(
                (
                    Stop(policy.stop_grace_seconds),
                    FinishAttempt(
                        ExecutionStatus.CANCELLED,
                        Reason.CANCELLED,
                        started_at=started,
                        message="cancelled while running",
                    ),
                ),
                requeue_after=0,
            )
        if now >= deadline:
            return Plan(
                (
                    Stop(policy.stop_grace_seconds),
                    FinishAttempt(
                        ExecutionStatus.TIMEOUT,
                        Reason.TIMEOUT,
                        started_at=started,
                        message=f"ran longer than timeout_seconds={job.timeout_seconds}",
                    ),
                ),
                requeue_after=0,
            )
        actions: tuple[Action, ...] = ()
        if attempt.status is ExecutionStatus.LAUNCHING:
            actions = (MarkRunning(started),)
        wait = min((deadline - now).total_seconds(), policy.resync_seconds)
        return Plan(actions, requeue_after=max(wait, 0.0))

    # EXITED: classify, read the logs, record, remove.
    finish = _classify_exit(job, observed, started, deadline)
    # The container is removed after the job's outcome is recorded (next round), so the
    # removal's latency never delays the terminal status.
    return Plan((finish,), requeue_after=0)


def _classify_exit(job: JobView, observed: Observed, started: datetime, deadline: datetime) -> FinishAttempt:
    code = observed.exit_code
    finished = observed.finished_at
    common = dict(exit_code=code, started_at=started, finished_at=finished, oom_killed=observed.oom_killed)
    if observed.reason_hint == "cancelled" or (job.cancel_requested and code != 0):
        return FinishAttempt(ExecutionStatus.CANCELLED, Reason.CANCELLED, message="cancelled", **common)  # type: ignore[arg-type]
    if observed.reason_hint == "timeout" or (code != 0 and finished is not None and finished >= deadline):
        return FinishAttempt(
            ExecutionStatus.TIMEOUT,
            Reason.TIMEOUT,
            message=f"ran longer than timeout_seconds={job.timeout_seconds}",
            **common,  # type: ignore[arg-type]
        )
    if observed.oom_killed:
        return FinishAttempt(
            ExecutionStatus.FAILED,
            Reason.OOM,
            message="killed for exceeding its memory limit",
            **common,  # type: ignore[arg-type]
        )
    if code == 0:
        return FinishAttempt(ExecutionStatus.COMPLETED, Reason.NONE, **common)  # type: ignore[arg-type]
    message = f"exited with code {code}" + (f": {observed.error}" if observed.error else "")
    return FinishAttempt(ExecutionStatus.FAILED, Reason.EXIT_CODE, message=message, **common)  # type: ignore[arg-type]
