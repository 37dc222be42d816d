"""Table-driven tests of the pure decision core: every job status x attempt x facts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from container_manager.states import DEFAULT_RETRY_ON, ExecutionStatus, JobStatus, Reason
from executors.types import ContainerState, Observed
from reconciler import decide as d
from reconciler.outcome import Done, RequeueAfter

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = d.DecidePolicy(
    stop_grace_seconds=7,
    resync_seconds=30,
    launch_deadline_seconds=300,
    transient_retry_seconds=2,
    host_lost_seconds=120,
)
NAME = "cm-test-1-1"
J, X, R = JobStatus, ExecutionStatus, Reason


def job(status: JobStatus, **kw: object) -> d.JobView:
    base = d.JobView(
        id=1,
        status=status,
        attempts=1 if status in (J.LAUNCHING, J.RUNNING) else 0,
        max_retries=0,
        timeout_seconds=60,
        retry_backoff_seconds=5,
        retry_backoff_max_seconds=300,
        retry_on=frozenset(DEFAULT_RETRY_ON),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def attempt(status: ExecutionStatus = X.RUNNING, **kw: object) -> d.AttemptView:
    base = d.AttemptView(
        attempt=1,
        status=status,
        container_name=NAME,
        created_at=NOW - timedelta(seconds=10),
        started_at=NOW - timedelta(seconds=10) if status is not X.LAUNCHING else None,
        launched=status is not X.LAUNCHING,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def seen(state: ContainerState, **kw: object) -> d.Facts:
    return d.Facts(observed=Observed(name=NAME, state=state, **kw))  # type: ignore[arg-type]


RUNNING = seen(ContainerState.RUNNING, started_at=NOW - timedelta(seconds=10))


def exited(code: int | None, **kw: object) -> d.Facts:
    return seen(
        ContainerState.EXITED,
        exit_code=code,
        started_at=NOW - timedelta(seconds=10),
        finished_at=NOW - timedelta(seconds=1),
        **kw,
    )


NO_FACTS = d.Facts()
LAUNCHING_FRESH = attempt(X.LAUNCHING)


def shape(decision: d.Decision) -> tuple[object, ...]:
    """What a case asserts: the decision's kind and its essential fields."""
    if isinstance(decision, RequeueAfter):
        return (RequeueAfter, round(decision.seconds, 3))
    if isinstance(decision, d.FinishAttempt):
        return (d.FinishAttempt, decision.status, decision.reason, decision.job.status)
    if isinstance(decision, d.SettleJob):
        return (d.SettleJob, decision.outcome.status, decision.outcome.reason)
    if isinstance(decision, d.Stop):
        return (d.Stop, decision.reason)
    if isinstance(decision, d.StartAttempt):
        return (d.StartAttempt, decision.attempt)
    return (type(decision),)


# (case id, job, attempt, facts, expected shape)
CASES: list[tuple[str, d.JobView, d.AttemptView | None, d.Facts, tuple[object, ...]]] = [
    # waiting jobs
    ("pending starts attempt 1", job(J.PENDING), None, NO_FACTS, (d.StartAttempt, 1)),
    (
        "pending cancel",
        job(J.PENDING, cancel_requested=True),
        None,
        NO_FACTS,
        (d.SettleJob, J.CANCELLED, R.CANCELLED),
    ),
    (
        "pending, the row breaks a rule: invalid spec",
        job(J.PENDING),
        None,
        d.Facts(spec_problem="memory_limit: too big"),
        (d.SettleJob, J.FAILED, R.INVALID_SPEC),
    ),
    (
        "pending not yet due",
        job(J.PENDING, run_after=NOW + timedelta(seconds=42)),
        None,
        NO_FACTS,
        (RequeueAfter, 42.0),
    ),
    (
        "retrying due starts the next attempt",
        job(J.RETRYING, attempts=1, max_retries=2, run_after=NOW - timedelta(seconds=1)),
        attempt(X.FAILED, reason=R.EXIT_CODE),
        NO_FACTS,
        (d.StartAttempt, 2),
    ),
    (
        "retrying not due",
        job(J.RETRYING, attempts=1, max_retries=2, run_after=NOW + timedelta(seconds=5)),
        attempt(X.FAILED, reason=R.EXIT_CODE, cleaned_up=True),
        NO_FACTS,
        (RequeueAfter, 5.0),
    ),
    (
        "retrying cancelled",
        job(J.RETRYING, attempts=1, max_retries=2, cancel_requested=True),
        attempt(X.FAILED, reason=R.EXIT_CODE, cleaned_up=True),
        NO_FACTS,
        (d.SettleJob, J.CANCELLED, R.CANCELLED),
    ),
    # dependencies (the claim's fact: a job this one depends on ended other than completed)
    (
        "a dependency failed: cancelled, never started",
        job(J.PENDING),
        None,
        d.Facts(dependency_failed="job 7, which this job depends on, ended failed"),
        (d.SettleJob, J.CANCELLED, R.DEPENDENCY_FAILED),
    ),
    (
        "a dependency failed, not yet due: cancelled at once anyway",
        job(J.PENDING, run_after=NOW + timedelta(hours=1)),
        None,
        d.Facts(dependency_failed="job 7, which this job depends on, ended timeout"),
        (d.SettleJob, J.CANCELLED, R.DEPENDENCY_FAILED),
    ),
    (
        "a dependency failed and the row is invalid: the dependency is the reason",
        job(J.PENDING),
        None,
        d.Facts(dependency_failed="job 7 ... ended cancelled", spec_problem="memory_limit: too big"),
        (d.SettleJob, J.CANCELLED, R.DEPENDENCY_FAILED),
    ),
    (
        "a dependency failed after a cancel request: cancelled as requested",
        job(J.PENDING, cancel_requested=True),
        None,
        d.Facts(dependency_failed="job 7 ... ended failed"),
        (d.SettleJob, J.CANCELLED, R.CANCELLED),
    ),
    (
        "a dependency failed, no attempts left: the dependency is the reason",
        job(J.PENDING, attempts=1, max_retries=0),
        None,
        d.Facts(dependency_failed="job 7 ... ended failed"),
        (d.SettleJob, J.CANCELLED, R.DEPENDENCY_FAILED),
    ),
    (
        "a running job ignores the fact (its dependencies completed before it started)",
        job(J.RUNNING),
        attempt(X.RUNNING),
        replace(RUNNING, dependency_failed="job 7 ... ended failed"),
        (RequeueAfter, 30.0),
    ),
    (
        "never more attempts than allowed",
        job(J.RETRYING, attempts=3, max_retries=2),
        attempt(X.FAILED, attempt=3, cleaned_up=True),
        NO_FACTS,
        (d.SettleJob, J.FAILED, R.LAUNCH_ERROR),
    ),
    # launching, container never launched (no inspect needed)
    ("claimed, not launched yet: launch", job(J.LAUNCHING), LAUNCHING_FRESH, NO_FACTS, (d.Launch,)),
    (
        "launch failed transiently: try again shortly",
        job(J.LAUNCHING),
        LAUNCHING_FRESH,
        d.Facts(launch_error="daemon unreachable"),
        (RequeueAfter, 2.0),
    ),
    (
        "launch refused for good: launch_refused, not retried by default",
        job(J.LAUNCHING, max_retries=3),
        LAUNCHING_FRESH,
        d.Facts(launch_refused="no such image"),
        (d.FinishAttempt, X.FAILED, R.LAUNCH_REFUSED, J.FAILED),
    ),
    (
        "launch refused, retried when retry_on names it",
        job(J.LAUNCHING, max_retries=3, retry_on=frozenset({R.LAUNCH_REFUSED})),
        LAUNCHING_FRESH,
        d.Facts(launch_refused="no such image"),
        (d.FinishAttempt, X.FAILED, R.LAUNCH_REFUSED, J.RETRYING),
    ),
    (
        "launching past deadline: launch error, even while the host fails",
        job(J.LAUNCHING),
        attempt(X.LAUNCHING, created_at=NOW - timedelta(seconds=301)),
        d.Facts(launch_error="daemon unreachable"),
        (d.FinishAttempt, X.FAILED, R.LAUNCH_ERROR, J.FAILED),
    ),
    (
        "launching cancelled before start",
        job(J.LAUNCHING, cancel_requested=True),
        LAUNCHING_FRESH,
        NO_FACTS,
        (d.FinishAttempt, X.CANCELLED, R.CANCELLED, J.CANCELLED),
    ),
    # launching, after the launch answered
    (
        "launched, created but not started: launch again (adopt)",
        job(J.LAUNCHING),
        LAUNCHING_FRESH,
        seen(ContainerState.CREATED),
        (d.Launch,),
    ),
    (
        "created, cancel requested",
        job(J.LAUNCHING, cancel_requested=True),
        attempt(X.LAUNCHING, launched=True),
        seen(ContainerState.CREATED),
        (d.FinishAttempt, X.CANCELLED, R.CANCELLED, J.CANCELLED),
    ),
    ("launched and running: mark running", job(J.LAUNCHING), LAUNCHING_FRESH, RUNNING, (d.MarkRunning,)),
    (
        "launched container vanished before being seen: lost (retried), never created again",
        job(J.LAUNCHING, max_retries=1),
        attempt(X.LAUNCHING, launched=True),
        seen(ContainerState.NOT_FOUND),
        (d.FinishAttempt, X.FAILED, R.LOST, J.RETRYING),
    ),
    (
        "exited before it was seen running",
        job(J.LAUNCHING),
        LAUNCHING_FRESH,
        exited(0),
        (d.FinishAttempt, X.COMPLETED, R.NONE, J.COMPLETED),
    ),
    # running
    ("running, fine: look again at the resync", job(J.RUNNING), attempt(), RUNNING, (RequeueAfter, 30.0)),
    (
        "running near deadline: wake at the deadline",
        job(J.RUNNING, timeout_seconds=15),
        attempt(),
        RUNNING,
        (RequeueAfter, 5.0),
    ),
    (
        "running on a backend without events: look at its poll interval",
        job(J.RUNNING),
        attempt(),
        replace(RUNNING, poll_interval=3.0),
        (RequeueAfter, 3.0),
    ),
    (
        "running past timeout: stop",
        job(J.RUNNING, timeout_seconds=5),
        attempt(),
        RUNNING,
        (d.Stop, R.TIMEOUT),
    ),
    (
        "running, cancel requested: stop",
        job(J.RUNNING, cancel_requested=True),
        attempt(),
        RUNNING,
        (d.Stop, R.CANCELLED),
    ),
    (
        "stopped but still running: wait for it",
        job(J.RUNNING, cancel_requested=True),
        attempt(),
        replace(RUNNING, stopped_for=R.CANCELLED),
        (RequeueAfter, 2.0),
    ),
    (
        "running, container vanished: lost",
        job(J.RUNNING),
        attempt(),
        seen(ContainerState.NOT_FOUND),
        (d.FinishAttempt, X.FAILED, R.LOST, J.FAILED),
    ),
    (
        "running, created state (impossible but safe): start",
        job(J.RUNNING),
        attempt(),
        seen(ContainerState.CREATED),
        (d.Launch,),
    ),
    (
        "running, host unreachable: wait",
        job(J.RUNNING),
        attempt(),
        d.Facts(observe_error="connection refused"),
        (RequeueAfter, 2.0),
    ),
    (
        "running, its host down for the host-lost time: lost (retried elsewhere)",
        job(J.RUNNING, max_retries=1),
        attempt(),
        d.Facts(observe_error="connection refused", host_down_seconds=120.0),
        (d.FinishAttempt, X.FAILED, R.LOST, J.RETRYING),
    ),
    (
        "running, its host down for a while only: wait",
        job(J.RUNNING),
        attempt(),
        d.Facts(observe_error="connection refused", host_down_seconds=119.0),
        (RequeueAfter, 2.0),
    ),
    (
        "running, host unreachable past the deadline: lost",
        job(J.RUNNING, timeout_seconds=60),
        attempt(started_at=NOW - timedelta(seconds=400)),
        d.Facts(observe_error="connection refused"),
        (d.FinishAttempt, X.FAILED, R.LOST, J.FAILED),
    ),
    # a backend that provisions before it starts, and enforces the timeout itself (Cloud Run)
    (
        "accepted, not started: the timeout does not run yet",
        job(J.LAUNCHING, timeout_seconds=5),
        attempt(X.LAUNCHING, launched=True, created_at=NOW - timedelta(seconds=100)),
        seen(ContainerState.RUNNING),
        (RequeueAfter, 30.0),
    ),
    (
        "accepted, not started, polled backend",
        job(J.LAUNCHING),
        attempt(X.LAUNCHING, launched=True),
        replace(seen(ContainerState.RUNNING), poll_interval=5.0),
        (RequeueAfter, 5.0),
    ),
    (
        "accepted, not started past the launch deadline: stop it",
        job(J.LAUNCHING),
        attempt(X.LAUNCHING, launched=True, created_at=NOW - timedelta(seconds=301)),
        seen(ContainerState.RUNNING),
        (d.Stop, R.LAUNCH_ERROR),
    ),
    (
        "accepted, not started, cancel requested: stop it",
        job(J.LAUNCHING, cancel_requested=True),
        attempt(X.LAUNCHING, launched=True),
        seen(ContainerState.RUNNING),
        (d.Stop, R.CANCELLED),
    ),
    (
        "stopped because it never started: launch error",
        job(J.LAUNCHING),
        attempt(X.LAUNCHING, launched=True, created_at=NOW - timedelta(seconds=301)),
        replace(exited(None), stopped_for=R.LAUNCH_ERROR),
        (d.FinishAttempt, X.FAILED, R.LAUNCH_ERROR, J.FAILED),
    ),
    (
        "the backend enforces the timeout: ours is a backstop after the slack",
        job(J.RUNNING, timeout_seconds=5),
        attempt(),
        replace(RUNNING, backend_enforces_timeout=True),
        (RequeueAfter, 30.0),
    ),
    (
        "the backend enforces the timeout, past the slack: stop",
        job(J.RUNNING, timeout_seconds=5),
        attempt(started_at=NOW - timedelta(seconds=70)),
        replace(RUNNING, backend_enforces_timeout=True),
        (d.Stop, R.TIMEOUT),
    ),
    (
        "the backend enforces the timeout, within the slack: wait for its report",
        job(J.RUNNING, timeout_seconds=5),
        attempt(started_at=NOW - timedelta(seconds=50)),
        replace(RUNNING, backend_enforces_timeout=True),
        (RequeueAfter, 15.0),
    ),
    # exits
    ("exit 0", job(J.RUNNING), attempt(), exited(0), (d.FinishAttempt, X.COMPLETED, R.NONE, J.COMPLETED)),
    ("exit 3", job(J.RUNNING), attempt(), exited(3), (d.FinishAttempt, X.FAILED, R.EXIT_CODE, J.FAILED)),
    (
        "exit 3 with retries left",
        job(J.RUNNING, max_retries=1),
        attempt(),
        exited(3),
        (d.FinishAttempt, X.FAILED, R.EXIT_CODE, J.RETRYING),
    ),
    (
        "exit without a code (a backend that reports none): failed, never completed",
        job(J.RUNNING),
        attempt(),
        exited(None, error="the task failed"),
        (d.FinishAttempt, X.FAILED, R.EXIT_CODE, J.FAILED),
    ),
    (
        "OOM kill",
        job(J.RUNNING),
        attempt(),
        exited(137, oom_killed=True),
        (d.FinishAttempt, X.FAILED, R.OOM, J.FAILED),
    ),
    (
        "OOM reported as a hint",
        job(J.RUNNING),
        attempt(),
        exited(137, reason_hint="oom"),
        (d.FinishAttempt, X.FAILED, R.OOM, J.FAILED),
    ),
    (
        "timeout hint from the backend",
        job(J.RUNNING, max_retries=3),
        attempt(),
        exited(1, reason_hint="timeout"),
        (d.FinishAttempt, X.TIMEOUT, R.TIMEOUT, J.TIMEOUT),
    ),
    (
        "stopped for the timeout: timeout even with exit 0",
        job(J.RUNNING),
        attempt(),
        replace(exited(0), stopped_for=R.TIMEOUT),
        (d.FinishAttempt, X.TIMEOUT, R.TIMEOUT, J.TIMEOUT),
    ),
    (
        "stopped for a cancel: cancelled, never retried",
        job(J.RUNNING, cancel_requested=True, max_retries=3),
        attempt(),
        replace(exited(143), stopped_for=R.CANCELLED),
        (d.FinishAttempt, X.CANCELLED, R.CANCELLED, J.CANCELLED),
    ),
    (
        "timeout retried when asked",
        job(J.RUNNING, max_retries=3, retry_on=frozenset({R.TIMEOUT})),
        attempt(),
        replace(exited(143), stopped_for=R.TIMEOUT),
        (d.FinishAttempt, X.TIMEOUT, R.TIMEOUT, J.RETRYING),
    ),
    (
        "failed for a reason not retried",
        job(J.RUNNING, max_retries=3, retry_on=frozenset({R.OOM})),
        attempt(),
        exited(3),
        (d.FinishAttempt, X.FAILED, R.EXIT_CODE, J.FAILED),
    ),
    # attempt recorded, job not moved with it (rows of an older version)
    (
        "attempt completed: job completed",
        job(J.RUNNING),
        attempt(X.COMPLETED, exit_code=0),
        NO_FACTS,
        (d.SettleJob, J.COMPLETED, R.NONE),
    ),
    (
        "attempt failed, retries left: retrying",
        job(J.RUNNING, max_retries=1),
        attempt(X.FAILED, reason=R.EXIT_CODE, exit_code=3),
        NO_FACTS,
        (d.SettleJob, J.RETRYING, R.EXIT_CODE),
    ),
    ("missing attempt row for a live job", job(J.RUNNING), None, NO_FACTS, (d.SettleJob, J.FAILED, R.LOST)),
    # terminal
    ("terminal: nothing", job(J.COMPLETED), attempt(X.COMPLETED, cleaned_up=True), NO_FACTS, (Done,)),
    (
        "terminal, container left: nothing on the job's path",
        job(J.FAILED),
        attempt(X.FAILED),
        NO_FACTS,
        (Done,),
    ),
    ("cancelled before any attempt", job(J.CANCELLED), None, NO_FACTS, (Done,)),
]


@pytest.mark.parametrize(("case", "j", "a", "facts", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decide_table(
    case: str, j: d.JobView, a: d.AttemptView | None, facts: d.Facts, expected: tuple[object, ...]
) -> None:
    assert shape(d.decide(j, a, facts, NOW, POLICY)) == expected


def finish(decision: d.Decision) -> d.FinishAttempt:
    assert isinstance(decision, d.FinishAttempt), decision
    return decision


@pytest.mark.parametrize(
    ("facts", "status", "reason"),
    [
        (exited(0), X.COMPLETED, R.NONE),
        (exited(3), X.FAILED, R.EXIT_CODE),
        (exited(137, oom_killed=True), X.FAILED, R.OOM),
        (exited(1, reason_hint="timeout"), X.TIMEOUT, R.TIMEOUT),
        (exited(1, reason_hint="cancelled"), X.CANCELLED, R.CANCELLED),
    ],
)
def test_exit_classification_keeps_the_facts(facts: d.Facts, status: ExecutionStatus, reason: Reason) -> None:
    end = finish(d.decide(job(J.RUNNING), attempt(), facts, NOW, POLICY))
    assert facts.observed is not None
    assert (end.status, end.reason, end.exit_code) == (status, reason, facts.observed.exit_code)
    assert end.capture_logs, "logs must be read before the container is removed"
    assert end.finished_at == facts.observed.finished_at
    assert end.started_at == NOW - timedelta(seconds=10)


def test_exit_after_deadline_with_error_is_a_timeout() -> None:
    """A daemon killed between Stop and recording still records the timeout on restart."""
    late = seen(
        ContainerState.EXITED,
        exit_code=143,
        started_at=NOW - timedelta(seconds=100),
        finished_at=NOW - timedelta(seconds=30),
    )
    j = job(J.RUNNING, timeout_seconds=60)
    a = attempt(started_at=NOW - timedelta(seconds=100))
    assert finish(d.decide(j, a, late, NOW, POLICY)).reason is R.TIMEOUT


def test_exit_after_cancel_request_is_cancelled_unless_it_succeeded() -> None:
    j = job(J.RUNNING, cancel_requested=True)
    assert finish(d.decide(j, attempt(), exited(143), NOW, POLICY)).status is X.CANCELLED
    assert finish(d.decide(j, attempt(), exited(0), NOW, POLICY)).status is X.COMPLETED


def test_messages_say_what_happened() -> None:
    assert finish(d.decide(job(J.RUNNING), attempt(), exited(3), NOW, POLICY)).message == "exited with code 3"
    no_code = finish(d.decide(job(J.RUNNING), attempt(), exited(None, error="task failed"), NOW, POLICY))
    assert no_code.message == "failed without an exit code: task failed"
    refused = finish(
        d.decide(job(J.LAUNCHING), LAUNCHING_FRESH, d.Facts(launch_refused="no image"), NOW, POLICY)
    )
    assert refused.message == "launch refused: no image" and not refused.capture_logs


def test_stop_uses_policy_grace() -> None:
    stop = d.decide(job(J.RUNNING, cancel_requested=True), attempt(), RUNNING, NOW, POLICY)
    assert isinstance(stop, d.Stop) and stop.grace_seconds == 7


def test_lost_container_keeps_no_logs() -> None:
    end = finish(d.decide(job(J.RUNNING), attempt(), seen(ContainerState.NOT_FOUND), NOW, POLICY))
    assert (end.status, end.reason, end.capture_logs) == (X.FAILED, R.LOST, False)


def test_retry_time_is_backoff_from_now() -> None:
    j = job(J.RUNNING, max_retries=3, retry_backoff_seconds=10, retry_backoff_max_seconds=1000)
    end = finish(d.decide(j, attempt(), exited(137, oom_killed=True), NOW, POLICY))
    assert end.job.status is J.RETRYING and end.job.retry_at is not None
    assert 5 <= (end.job.retry_at - NOW).total_seconds() <= 10


def test_live_attempt_without_observation_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        d.decide(job(J.RUNNING), attempt(), NO_FACTS, NOW, POLICY)


@pytest.mark.parametrize("status", list(JobStatus))
def test_needs_observation_only_for_launched_live_attempts(status: JobStatus) -> None:
    j = job(status, attempts=1)
    assert d.needs_observation(j, attempt(X.RUNNING)) == (status in (J.LAUNCHING, J.RUNNING))
    assert not d.needs_observation(j, attempt(X.COMPLETED))
    assert not d.needs_observation(j, attempt(X.LAUNCHING)), (
        "an unlaunched attempt is launched, not inspected"
    )


@pytest.mark.parametrize(
    ("a", "expected"),
    [
        (None, False),
        (attempt(X.RUNNING), False),
        (attempt(X.LAUNCHING), False),
        (attempt(X.COMPLETED), True),
        (attempt(X.FAILED, cleaned_up=True), False),
    ],
)
def test_needs_cleanup_once_the_attempt_is_recorded(a: d.AttemptView | None, expected: bool) -> None:
    assert d.needs_cleanup(a) is expected


def test_decide_is_pure_same_inputs_same_decision() -> None:
    args = (job(J.RUNNING, max_retries=2), attempt(), exited(3), NOW, POLICY)
    assert d.decide(*args) == d.decide(*args)  # type: ignore[arg-type]


def test_a_failed_dependency_is_named_in_the_outcome() -> None:
    message = "job 7, which this job depends on, ended timeout"
    decision = d.decide(job(J.PENDING), None, d.Facts(dependency_failed=message), NOW, POLICY)
    assert isinstance(decision, d.SettleJob)
    assert decision.outcome.message == message and decision.outcome.retry_at is None
