"""Table-driven tests of the pure decision core: every job status x attempt x observation."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from container_manager.states import DEFAULT_RETRY_ON, ExecutionStatus, JobStatus, Reason
from executors.types import ContainerState, Observed
from reconciler import decide as d

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = d.DecidePolicy(stop_grace_seconds=7, resync_seconds=30, launch_deadline_seconds=300)
NAME = "cm-test-1-1"


def job(status: JobStatus, **kw: object) -> d.JobView:
    base = d.JobView(
        id=1,
        status=status,
        attempts=1 if status in (JobStatus.LAUNCHING, JobStatus.RUNNING) else 0,
        max_retries=0,
        timeout_seconds=60,
        retry_backoff_seconds=5,
        retry_backoff_max_seconds=300,
        retry_on=frozenset(DEFAULT_RETRY_ON),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def attempt(status: ExecutionStatus = ExecutionStatus.RUNNING, **kw: object) -> d.AttemptView:
    base = d.AttemptView(
        attempt=1,
        status=status,
        container_name=NAME,
        created_at=NOW - timedelta(seconds=10),
        started_at=NOW - timedelta(seconds=10) if status is not ExecutionStatus.LAUNCHING else None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def seen(state: ContainerState, **kw: object) -> Observed:
    return Observed(name=NAME, state=state, **kw)  # type: ignore[arg-type]


def kinds(plan: d.Plan) -> list[type]:
    return [type(a) for a in plan.actions]


RUNNING_OBS = seen(ContainerState.RUNNING, started_at=NOW - timedelta(seconds=10))


def exited(code: int, **kw: object) -> Observed:
    return seen(
        ContainerState.EXITED,
        exit_code=code,
        started_at=NOW - timedelta(seconds=10),
        finished_at=NOW - timedelta(seconds=1),
        **kw,
    )


# (case id, job, attempt, observed, expected action types, expected requeue)
CASES = [
    # waiting jobs
    ("pending starts attempt 1", job(JobStatus.PENDING), None, None, [d.StartAttempt], 0),
    ("pending cancel", job(JobStatus.PENDING, cancel_requested=True), None, None, [d.FinishJob], None),
    (
        "pending not yet due",
        job(JobStatus.PENDING, run_after=NOW + timedelta(seconds=42)),
        None,
        None,
        [],
        42,
    ),
    (
        "retrying due starts next attempt and cleans the last",
        job(JobStatus.RETRYING, attempts=1, max_retries=2, run_after=NOW - timedelta(seconds=1)),
        attempt(ExecutionStatus.FAILED, reason=Reason.EXIT_CODE),
        None,
        [d.Cleanup, d.StartAttempt],
        0,
    ),
    (
        "retrying not due",
        job(JobStatus.RETRYING, attempts=1, max_retries=2, run_after=NOW + timedelta(seconds=5)),
        attempt(ExecutionStatus.FAILED, reason=Reason.EXIT_CODE, cleaned_up=True),
        None,
        [],
        5,
    ),
    (
        "retrying cancelled",
        job(JobStatus.RETRYING, attempts=1, max_retries=2, cancel_requested=True),
        attempt(ExecutionStatus.FAILED, reason=Reason.EXIT_CODE, cleaned_up=True),
        None,
        [d.FinishJob],
        None,
    ),
    # launching, container not there yet
    (
        "launching, nothing yet: launch",
        job(JobStatus.LAUNCHING),
        attempt(ExecutionStatus.LAUNCHING),
        seen(ContainerState.NOT_FOUND),
        [d.Launch],
        0,
    ),
    (
        "launched container vanished before being seen: lost, never created again",
        job(JobStatus.LAUNCHING),
        attempt(ExecutionStatus.LAUNCHING, launched=True),
        seen(ContainerState.NOT_FOUND),
        [d.FinishAttempt],
        0,
    ),
    (
        "launching past deadline: launch error",
        job(JobStatus.LAUNCHING),
        attempt(ExecutionStatus.LAUNCHING, created_at=NOW - timedelta(seconds=301)),
        seen(ContainerState.NOT_FOUND),
        [d.FinishAttempt],
        0,
    ),
    (
        "launching cancelled before start",
        job(JobStatus.LAUNCHING, cancel_requested=True),
        attempt(ExecutionStatus.LAUNCHING),
        seen(ContainerState.NOT_FOUND),
        [d.FinishAttempt],
        0,
    ),
    (
        "created but not started: launch again (adopt)",
        job(JobStatus.LAUNCHING),
        attempt(ExecutionStatus.LAUNCHING),
        seen(ContainerState.CREATED),
        [d.Launch],
        0,
    ),
    (
        "created, cancel requested",
        job(JobStatus.LAUNCHING, cancel_requested=True),
        attempt(ExecutionStatus.LAUNCHING),
        seen(ContainerState.CREATED),
        [d.FinishAttempt],
        0,
    ),
    (
        "launching and observed running: mark running",
        job(JobStatus.LAUNCHING),
        attempt(ExecutionStatus.LAUNCHING),
        RUNNING_OBS,
        [d.MarkRunning],
        30,
    ),
    # running
    ("running, fine: wait", job(JobStatus.RUNNING), attempt(), RUNNING_OBS, [], 30),
    (
        "running near deadline: wake at deadline",
        job(JobStatus.RUNNING, timeout_seconds=15),
        attempt(),
        RUNNING_OBS,
        [],
        5,
    ),
    (
        "running past timeout: stop, record timeout (removal follows the outcome)",
        job(JobStatus.RUNNING, timeout_seconds=5),
        attempt(),
        RUNNING_OBS,
        [d.Stop, d.FinishAttempt],
        0,
    ),
    (
        "running, cancel requested: stop, record cancelled",
        job(JobStatus.RUNNING, cancel_requested=True),
        attempt(),
        RUNNING_OBS,
        [d.Stop, d.FinishAttempt],
        0,
    ),
    (
        "running, container vanished: lost",
        job(JobStatus.RUNNING),
        attempt(),
        seen(ContainerState.NOT_FOUND),
        [d.FinishAttempt],
        0,
    ),
    (
        "running, created state (impossible but safe): start",
        job(JobStatus.RUNNING),
        attempt(),
        seen(ContainerState.CREATED),
        [d.Launch],
        0,
    ),
    (
        "exit 0: finish attempt",
        job(JobStatus.RUNNING),
        attempt(),
        exited(0),
        [d.FinishAttempt],
        0,
    ),
    ("exit 3", job(JobStatus.RUNNING), attempt(), exited(3), [d.FinishAttempt], 0),
    (
        "exit while still launching",
        job(JobStatus.LAUNCHING),
        attempt(ExecutionStatus.LAUNCHING),
        exited(0),
        [d.FinishAttempt],
        0,
    ),
    # attempt over, job live: outcome
    (
        "attempt completed: job completed",
        job(JobStatus.RUNNING),
        attempt(ExecutionStatus.COMPLETED, exit_code=0, cleaned_up=True),
        None,
        [d.FinishJob],
        None,
    ),
    (
        "attempt failed, retries left: schedule retry",
        job(JobStatus.RUNNING, max_retries=1),
        attempt(ExecutionStatus.FAILED, reason=Reason.EXIT_CODE, exit_code=3, cleaned_up=True),
        None,
        [d.ScheduleRetry],
        "backoff",
    ),
    (
        "attempt failed, no retries left: job failed",
        job(JobStatus.RUNNING, max_retries=0),
        attempt(ExecutionStatus.FAILED, reason=Reason.EXIT_CODE, exit_code=3, cleaned_up=True),
        None,
        [d.FinishJob],
        None,
    ),
    (
        "attempt failed for a reason not retried",
        job(JobStatus.RUNNING, max_retries=3, retry_on=frozenset({Reason.OOM})),
        attempt(ExecutionStatus.FAILED, reason=Reason.EXIT_CODE, cleaned_up=True),
        None,
        [d.FinishJob],
        None,
    ),
    (
        "timeout is not retried by default",
        job(JobStatus.RUNNING, max_retries=3),
        attempt(ExecutionStatus.TIMEOUT, reason=Reason.TIMEOUT, cleaned_up=True),
        None,
        [d.FinishJob],
        None,
    ),
    (
        "timeout retried when asked",
        job(JobStatus.RUNNING, max_retries=3, retry_on=frozenset({Reason.TIMEOUT})),
        attempt(ExecutionStatus.TIMEOUT, reason=Reason.TIMEOUT, cleaned_up=True),
        None,
        [d.ScheduleRetry],
        "backoff",
    ),
    (
        "attempt cancelled: job cancelled, never retried",
        job(JobStatus.RUNNING, max_retries=3),
        attempt(ExecutionStatus.CANCELLED, reason=Reason.CANCELLED, cleaned_up=True),
        None,
        [d.FinishJob],
        None,
    ),
    (
        "attempt over, container not removed: record the outcome, then remove",
        job(JobStatus.RUNNING),
        attempt(ExecutionStatus.COMPLETED, exit_code=0),
        None,
        [d.FinishJob, d.Cleanup],
        None,
    ),
    (
        "missing attempt row for a live job",
        job(JobStatus.RUNNING),
        None,
        None,
        [d.FinishJob],
        None,
    ),
    # terminal
    (
        "terminal and clean: nothing",
        job(JobStatus.COMPLETED),
        attempt(ExecutionStatus.COMPLETED, cleaned_up=True),
        None,
        [],
        None,
    ),
    (
        "terminal, container left: cleanup",
        job(JobStatus.FAILED),
        attempt(ExecutionStatus.FAILED),
        None,
        [d.Cleanup],
        None,
    ),
    ("cancelled before any attempt", job(JobStatus.CANCELLED), None, None, [], None),
]


@pytest.mark.parametrize(("case", "j", "a", "o", "expected", "requeue"), CASES, ids=[c[0] for c in CASES])
def test_decide_table(
    case: str,
    j: d.JobView,
    a: d.AttemptView | None,
    o: Observed | None,
    expected: list[type],
    requeue: object,
) -> None:
    plan = d.decide(j, a, o, NOW, POLICY)
    assert kinds(plan) == expected
    if requeue == "backoff":
        assert plan.requeue_after is not None and plan.requeue_after > 0
    else:
        assert plan.requeue_after == requeue


def only(plan: d.Plan, kind: type) -> object:
    matches = [a for a in plan.actions if isinstance(a, kind)]
    assert len(matches) == 1
    return matches[0]


@pytest.mark.parametrize(
    ("observed", "status", "reason"),
    [
        (exited(0), ExecutionStatus.COMPLETED, Reason.NONE),
        (exited(3), ExecutionStatus.FAILED, Reason.EXIT_CODE),
        (exited(137, oom_killed=True), ExecutionStatus.FAILED, Reason.OOM),
        (exited(1, reason_hint="timeout"), ExecutionStatus.TIMEOUT, Reason.TIMEOUT),
        (exited(1, reason_hint="cancelled"), ExecutionStatus.CANCELLED, Reason.CANCELLED),
    ],
)
def test_exit_classification(observed: Observed, status: ExecutionStatus, reason: Reason) -> None:
    finish = only(d.decide(job(JobStatus.RUNNING), attempt(), observed, NOW, POLICY), d.FinishAttempt)
    assert isinstance(finish, d.FinishAttempt)
    assert (finish.status, finish.reason, finish.exit_code) == (status, reason, observed.exit_code)
    assert finish.capture_logs, "logs must be read before the container is removed"
    assert finish.finished_at == observed.finished_at


def test_exit_after_deadline_with_error_is_a_timeout() -> None:
    """A daemon killed between Stop and FinishAttempt still records the timeout on restart."""
    late = seen(
        ContainerState.EXITED,
        exit_code=143,
        started_at=NOW - timedelta(seconds=100),
        finished_at=NOW - timedelta(seconds=30),
    )
    j = job(JobStatus.RUNNING, timeout_seconds=60)
    a = attempt(started_at=NOW - timedelta(seconds=100))
    finish = only(d.decide(j, a, late, NOW, POLICY), d.FinishAttempt)
    assert isinstance(finish, d.FinishAttempt)
    assert finish.reason is Reason.TIMEOUT


def test_exit_after_cancel_request_is_cancelled_unless_it_succeeded() -> None:
    j = job(JobStatus.RUNNING, cancel_requested=True)
    stopped = only(d.decide(j, attempt(), exited(143), NOW, POLICY), d.FinishAttempt)
    finished = only(d.decide(j, attempt(), exited(0), NOW, POLICY), d.FinishAttempt)
    assert isinstance(stopped, d.FinishAttempt) and isinstance(finished, d.FinishAttempt)
    assert stopped.status is ExecutionStatus.CANCELLED
    assert finished.status is ExecutionStatus.COMPLETED


def test_stop_uses_policy_grace() -> None:
    plan = d.decide(job(JobStatus.RUNNING, cancel_requested=True), attempt(), RUNNING_OBS, NOW, POLICY)
    stop = only(plan, d.Stop)
    assert isinstance(stop, d.Stop) and stop.grace_seconds == 7


def test_lost_container_is_not_success() -> None:
    finish = only(
        d.decide(job(JobStatus.RUNNING), attempt(), seen(ContainerState.NOT_FOUND), NOW, POLICY),
        d.FinishAttempt,
    )
    assert isinstance(finish, d.FinishAttempt)
    assert (finish.status, finish.reason) == (ExecutionStatus.FAILED, Reason.LOST)
    assert not finish.capture_logs


def test_start_attempt_numbers_follow_attempts() -> None:
    plan = d.decide(
        job(JobStatus.RETRYING, attempts=2, max_retries=5),
        attempt(ExecutionStatus.FAILED, attempt=2, cleaned_up=True),
        None,
        NOW,
        POLICY,
    )
    start = only(plan, d.StartAttempt)
    assert isinstance(start, d.StartAttempt) and start.attempt == 3


def test_never_more_attempts_than_allowed() -> None:
    plan = d.decide(
        job(JobStatus.RETRYING, attempts=3, max_retries=2),
        attempt(ExecutionStatus.FAILED, attempt=3, cleaned_up=True),
        None,
        NOW,
        POLICY,
    )
    assert kinds(plan) == [d.FinishJob]


def test_retry_time_is_backoff_from_now() -> None:
    j = job(JobStatus.RUNNING, max_retries=3, retry_backoff_seconds=10, retry_backoff_max_seconds=1000)
    plan = d.decide(
        j, attempt(ExecutionStatus.FAILED, reason=Reason.OOM, attempt=1, cleaned_up=True), None, NOW, POLICY
    )
    retry = only(plan, d.ScheduleRetry)
    assert isinstance(retry, d.ScheduleRetry)
    delay = (retry.retry_at - NOW).total_seconds()
    assert 5 <= delay <= 10
    assert plan.requeue_after == pytest.approx(delay)


def test_backoff_grows_is_capped_and_deterministic() -> None:
    delays = [d.backoff_seconds(7, n, 2.0, 60.0) for n in range(1, 10)]
    assert delays == [d.backoff_seconds(7, n, 2.0, 60.0) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2.0 * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 60.0
    assert len({round(d.backoff_seconds(job_id, 1, 2.0, 60.0), 6) for job_id in range(50)}) > 40, (
        "jitter spreads"
    )


def test_live_attempt_without_observation_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        d.decide(job(JobStatus.RUNNING), attempt(), None, NOW, POLICY)


@pytest.mark.parametrize("status", list(JobStatus))
def test_needs_observation_only_for_live_attempts(status: JobStatus) -> None:
    a = attempt(ExecutionStatus.RUNNING)
    j = job(status, attempts=1)
    assert d.needs_observation(j, a) == (status in (JobStatus.LAUNCHING, JobStatus.RUNNING))
    assert not d.needs_observation(j, attempt(ExecutionStatus.COMPLETED))


def test_decide_is_pure_same_inputs_same_plan() -> None:
    args = (
        job(JobStatus.RUNNING, max_retries=2),
        attempt(ExecutionStatus.FAILED, reason=Reason.LOST, cleaned_up=True),
        None,
        NOW,
        POLICY,
    )
    assert d.decide(*args) == d.decide(*args)
