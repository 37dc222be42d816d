"""The pure decision core: what to do next for one job, given what is true now.

``decide(job, attempt, facts, now, policy)`` reads a snapshot of the job row, its current
attempt row and what the step found out (``Facts``: what the executor reports about the
attempt's container, whether the row can run at all, how the last launch or stop went), and
returns ONE action to carry out, or a wait (``Done`` / ``RequeueAfter``). No Django, no clock, no
I/O, so every (status x attempt x facts) case is a row of a table test.

Level-triggered: the same inputs always give the same decision, and carrying out an action
twice is harmless (each is idempotent or a compare-and-swap), so a daemon killed between any
two actions converges when it starts again.

Removing a container is not a decision on the job's path: ``needs_cleanup()`` says when an
attempt's container is no longer needed (its outcome and logs are recorded), and the step hands
it to a cleaner that removes it without holding up the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from container_manager.states import (
    LIVE,
    TERMINAL,
    ExecutionStatus,
    JobStatus,
    Reason,
    execution_status_to_job,
)
from executors.backoff import backoff_seconds
from executors.types import ContainerState, Observed
from reconciler.outcome import DONE, Done, RequeueAfter


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
    #: the last executor error met while launching it (for the launch-deadline message).
    message: str = ""
    #: the executor accepted the launch (its container id is recorded): from then on a
    #: missing container is lost, never created again.
    launched: bool = False


@dataclass(frozen=True)
class Facts:
    """What the step found out before deciding; each field is empty when it was not looked at."""

    #: the executor's view of the current attempt's container.
    observed: Observed | None = None
    #: the executor could not be asked (a transient error): why.
    observe_error: str = ""
    #: seconds the attempt's host has failed every call in a row (0: it answers).
    host_down_seconds: float = 0.0
    #: why the job row cannot run as it is (it breaks a validation rule).
    spec_problem: str = ""
    #: which job this one depends on ended other than ``completed``, and how.
    dependency_failed: str = ""
    #: the last launch failed with a transient error: why.
    launch_error: str = ""
    #: the executor refused the launch for good (missing image, bad program): why.
    launch_refused: str = ""
    #: this step stopped the container, for this reason; ``observed`` is what the stop left.
    stopped_for: Reason | None = None
    #: a backend without events is looked at this often (seconds) while its container runs.
    poll_interval: float | None = None
    #: the backend stops a container at its timeout itself: ours is only the backstop.
    backend_enforces_timeout: bool = False


@dataclass(frozen=True)
class DecidePolicy:
    stop_grace_seconds: float = 10.0
    #: longest time between two looks at a running job when no event arrives.
    resync_seconds: float = 30.0
    #: an attempt that has not started after this long fails with ``launch_error``.
    launch_deadline_seconds: float = 300.0
    #: wait after a transient executor error before trying again.
    transient_retry_seconds: float = 2.0
    #: a launched container whose host has answered nothing for this long is lost.
    host_lost_seconds: float = 120.0
    #: a backend that enforces the timeout itself gets this long past it before we stop the
    #: container ourselves (its own stop, and the report of it, come first).
    enforced_timeout_slack_seconds: float = 60.0


# Actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobOutcome:
    """The job's next status: a terminal one, or ``retrying`` until ``retry_at``."""

    status: JobStatus
    reason: Reason = Reason.NONE
    exit_code: int | None = None
    message: str = ""
    retry_at: datetime | None = None


@dataclass(frozen=True)
class StartAttempt:
    """Claim the job for attempt ``attempt``: choose a host, write the attempt row (write-ahead)."""

    attempt: int


@dataclass(frozen=True)
class Launch:
    """Create and start the attempt's container (idempotent: an existing one is adopted)."""


@dataclass(frozen=True)
class MarkRunning:
    """Record that the container runs (and, with it, the launch marker)."""

    started_at: datetime


@dataclass(frozen=True)
class Stop:
    """Stop the container (SIGTERM, SIGKILL after the grace period) because of ``reason``."""

    grace_seconds: float
    reason: Reason


@dataclass(frozen=True)
class FinishAttempt:
    """Record the attempt's end and the job's outcome in one write; logs are read first if asked."""

    status: ExecutionStatus
    reason: Reason
    job: JobOutcome
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    capture_logs: bool = True
    message: str = ""


@dataclass(frozen=True)
class SettleJob:
    """Move the job to ``outcome`` when there is no live attempt to record."""

    outcome: JobOutcome


Action = StartAttempt | Launch | MarkRunning | Stop | FinishAttempt | SettleJob
Decision = Action | Done | RequeueAfter


# Helpers the step uses ----------------------------------------------------------------


def needs_observation(job: JobView, attempt: AttemptView | None) -> bool:
    """Whether ``decide`` needs the executor's view of the current attempt's container.

    An attempt whose launch was never accepted needs none: ``Launch`` adopts whatever an
    interrupted launch left behind, so the executor is not asked twice.
    """
    return (
        job.status in LIVE
        and attempt is not None
        and attempt.attempt == job.attempts
        and not attempt.status.is_terminal
        and attempt.launched
    )


def needs_cleanup(attempt: AttemptView | None) -> bool:
    """The attempt is over and recorded, and its container (if any) has not been removed yet."""
    return attempt is not None and attempt.status.is_terminal and not attempt.cleaned_up


def job_outcome(
    job: JobView, status: ExecutionStatus, reason: Reason, exit_code: int | None, message: str, now: datetime
) -> JobOutcome:
    """What the job becomes when its current attempt ended with ``status`` / ``reason``."""
    if status is ExecutionStatus.COMPLETED:
        return JobOutcome(JobStatus.COMPLETED, Reason.NONE, exit_code)
    if status is ExecutionStatus.CANCELLED or job.cancel_requested:
        return JobOutcome(JobStatus.CANCELLED, Reason.CANCELLED, exit_code, "cancelled")
    if reason in job.retry_on and job.attempts < job.max_retries + 1:
        delay = backoff_seconds(
            job.id, job.attempts, job.retry_backoff_seconds, job.retry_backoff_max_seconds
        )
        return JobOutcome(JobStatus.RETRYING, reason, exit_code, message, now + timedelta(seconds=delay))
    return JobOutcome(execution_status_to_job(status), reason, exit_code, message)


# Decisions ----------------------------------------------------------------------------


def decide(
    job: JobView,
    attempt: AttemptView | None,
    facts: Facts,
    now: datetime,
    policy: DecidePolicy,
) -> Decision:
    if job.status in TERMINAL:
        return DONE
    if job.status in (JobStatus.PENDING, JobStatus.RETRYING):
        return _decide_waiting(job, facts, now)
    if attempt is None or attempt.attempt != job.attempts:
        # Cannot happen while the claim and the attempt row are written in one transaction.
        return SettleJob(
            JobOutcome(JobStatus.FAILED, Reason.LOST, message="the current attempt's row is missing")
        )
    if attempt.status.is_terminal:
        # The attempt was recorded but the job was not moved with it (rows from an older version).
        return SettleJob(
            job_outcome(job, attempt.status, attempt.reason, attempt.exit_code, attempt.message, now)
        )
    observed = facts.observed
    if observed is None:
        if attempt.launched:
            if not facts.observe_error:
                raise ValueError("decide() needs the observed container of a launched attempt")
            return _decide_unreachable(job, attempt, facts, now, policy)
        return _decide_unlaunched(job, attempt, facts, now, policy)
    return _decide_live(job, attempt, facts, observed, now, policy)


def _decide_waiting(job: JobView, facts: Facts, now: datetime) -> Decision:
    if job.cancel_requested:
        return SettleJob(JobOutcome(JobStatus.CANCELLED, Reason.CANCELLED, message="cancelled"))
    if facts.dependency_failed:
        # Its own dependents see a job that did not complete in turn: the chain ends pass by pass.
        return SettleJob(
            JobOutcome(JobStatus.CANCELLED, Reason.DEPENDENCY_FAILED, message=facts.dependency_failed)
        )
    if facts.spec_problem:
        return SettleJob(JobOutcome(JobStatus.FAILED, Reason.INVALID_SPEC, message=facts.spec_problem))
    if job.run_after is not None and now < job.run_after:
        return RequeueAfter((job.run_after - now).total_seconds(), "not due yet")
    if job.attempts >= job.max_retries + 1:
        return SettleJob(JobOutcome(JobStatus.FAILED, Reason.LAUNCH_ERROR, message="no attempts left"))
    return StartAttempt(job.attempts + 1)


def _unlaunched_end(
    job: JobView, status: ExecutionStatus, reason: Reason, message: str, now: datetime
) -> FinishAttempt:
    """The end of an attempt whose container never ran: there are no logs to read."""
    return FinishAttempt(
        status,
        reason,
        job_outcome(job, status, reason, None, message, now),
        capture_logs=False,
        message=message,
    )


def _decide_unlaunched(
    job: JobView, attempt: AttemptView, facts: Facts, now: datetime, policy: DecidePolicy
) -> Decision:
    if facts.launch_refused:
        return _unlaunched_end(
            job, ExecutionStatus.FAILED, Reason.LAUNCH_REFUSED, f"launch refused: {facts.launch_refused}", now
        )
    if job.cancel_requested:
        return _unlaunched_end(
            job, ExecutionStatus.CANCELLED, Reason.CANCELLED, "cancelled before the container started", now
        )
    if (now - attempt.created_at).total_seconds() > policy.launch_deadline_seconds:
        message = facts.launch_error or attempt.message or "the container could not be started in time"
        return _unlaunched_end(job, ExecutionStatus.FAILED, Reason.LAUNCH_ERROR, message, now)
    if facts.launch_error:
        return RequeueAfter(policy.transient_retry_seconds, f"launch failed: {facts.launch_error}")
    return Launch()


def _decide_unreachable(
    job: JobView, attempt: AttemptView, facts: Facts, now: datetime, policy: DecidePolicy
) -> Decision:
    """The executor cannot be asked about a launched container: wait, but not forever.

    Its host down for ``host_lost_seconds`` (a dead Docker daemon), or unreachable past the
    attempt's own deadline (plus the launch deadline as slack: nothing could have been enforced on
    it any more): the attempt is lost, and retried elsewhere if the job allows.
    """
    started = attempt.started_at or attempt.created_at
    give_up = started + timedelta(seconds=job.timeout_seconds + policy.launch_deadline_seconds)
    if facts.host_down_seconds >= policy.host_lost_seconds:
        message = f"the host has not answered for {facts.host_down_seconds:.0f} s: {facts.observe_error}"
        return _unlaunched_end(job, ExecutionStatus.FAILED, Reason.LOST, message, now)
    if now >= give_up:
        message = f"the host could not be reached until past the attempt's deadline: {facts.observe_error}"
        return _unlaunched_end(job, ExecutionStatus.FAILED, Reason.LOST, message, now)
    return RequeueAfter(policy.transient_retry_seconds, f"cannot look: {facts.observe_error}")


def _decide_live(
    job: JobView, attempt: AttemptView, facts: Facts, observed: Observed, now: datetime, policy: DecidePolicy
) -> Decision:
    state = observed.state
    if state is ContainerState.NOT_FOUND:
        message = "the container disappeared while running"
        return _unlaunched_end(job, ExecutionStatus.FAILED, Reason.LOST, message, now)
    if state is ContainerState.CREATED:
        if job.cancel_requested:
            return _unlaunched_end(job, ExecutionStatus.CANCELLED, Reason.CANCELLED, "cancelled", now)
        return Launch()

    if state is ContainerState.RUNNING and attempt.started_at is None and observed.started_at is None:
        return _decide_not_started(job, attempt, facts, now, policy)
    started = attempt.started_at or observed.started_at or now
    deadline = started + timedelta(seconds=job.timeout_seconds)
    if state is ContainerState.RUNNING:
        stop_at = deadline
        if facts.backend_enforces_timeout:
            stop_at += timedelta(seconds=policy.enforced_timeout_slack_seconds)
        if facts.stopped_for is not None:
            return RequeueAfter(policy.transient_retry_seconds, "the container is still stopping")
        if job.cancel_requested:
            return Stop(policy.stop_grace_seconds, Reason.CANCELLED)
        if now >= stop_at:
            return Stop(policy.stop_grace_seconds, Reason.TIMEOUT)
        if attempt.status is ExecutionStatus.LAUNCHING:
            return MarkRunning(started)
        wait = min((stop_at - now).total_seconds(), policy.resync_seconds)
        if facts.poll_interval is not None:
            wait = min(wait, facts.poll_interval)
        return RequeueAfter(max(wait, 0.0), "running")
    return _classify_exit(job, facts, observed, started, deadline, now)


def _decide_not_started(
    job: JobView, attempt: AttemptView, facts: Facts, now: datetime, policy: DecidePolicy
) -> Decision:
    """The backend accepted the container but has not started it (Cloud Run provisioning).

    Provisioning is not charged to the job: its timeout counts from the real start. The
    launch deadline bounds the wait instead.
    """
    if facts.stopped_for is not None:
        return RequeueAfter(policy.transient_retry_seconds, "the container is still stopping")
    if job.cancel_requested:
        return Stop(policy.stop_grace_seconds, Reason.CANCELLED)
    waited = (now - attempt.created_at).total_seconds()
    if waited > policy.launch_deadline_seconds:
        return Stop(policy.stop_grace_seconds, Reason.LAUNCH_ERROR)
    wait = min(policy.launch_deadline_seconds - waited, policy.resync_seconds)
    if facts.poll_interval is not None:
        wait = min(wait, facts.poll_interval)
    return RequeueAfter(max(wait, 0.0), "accepted, not started yet")


def _classify_exit(
    job: JobView, facts: Facts, observed: Observed, started: datetime, deadline: datetime, now: datetime
) -> FinishAttempt:
    code, finished = observed.exit_code, observed.finished_at
    status, reason = ExecutionStatus.FAILED, Reason.EXIT_CODE
    if (
        facts.stopped_for is Reason.CANCELLED
        or observed.reason_hint == "cancelled"
        or (job.cancel_requested and code != 0)
    ):
        status, reason, message = ExecutionStatus.CANCELLED, Reason.CANCELLED, "cancelled"
    elif facts.stopped_for is Reason.LAUNCH_ERROR:
        reason, message = Reason.LAUNCH_ERROR, "the container did not start before the launch deadline"
    elif (
        facts.stopped_for is Reason.TIMEOUT
        or observed.reason_hint == "timeout"
        or (code != 0 and finished is not None and finished >= deadline)
    ):
        status, reason = ExecutionStatus.TIMEOUT, Reason.TIMEOUT
        message = f"ran longer than timeout_seconds={job.timeout_seconds}"
    elif observed.oom_killed or observed.reason_hint == "oom":
        reason, message = Reason.OOM, "killed for exceeding its memory limit"
    elif code == 0:
        status, reason, message = ExecutionStatus.COMPLETED, Reason.NONE, ""
    elif code is None:
        message = "failed without an exit code"
    else:
        message = f"exited with code {code}"
    if observed.error and status is ExecutionStatus.FAILED:
        message = f"{message}: {observed.error}"
    return FinishAttempt(
        status,
        reason,
        job_outcome(job, status, reason, code, message, now),
        exit_code=code,
        oom_killed=observed.oom_killed or observed.reason_hint == "oom",
        started_at=started,
        finished_at=finished,
        message=message,
    )
