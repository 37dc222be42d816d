"""The one-job step against the mock executor, on a clock the tests move."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection

from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost, JobEvent
from container_manager.signals import job_finished, job_launched
from container_manager.states import ExecutionStatus, JobStatus, Reason
from container_manager.transitions import Fenced, set_fence
from executors.mock import Fault, MockExecutor
from executors.types import LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_JOB, LABEL_MANAGED, ContainerSpec
from reconciler.outcome import Outcome, RequeueAfter
from reconciler.step import Reconciler

pytestmark = pytest.mark.django_db


def wait_of(outcome: Outcome) -> float | None:
    """Seconds until the step wants to look again; None when it waits for a hint."""
    return outcome.seconds if isinstance(outcome, RequeueAfter) else None


class World:
    """A mock "Docker host" per host row, sharing the test's clock with the reconciler."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.executors: dict[int, MockExecutor] = {}

    def executor_for(self, host: ExecutorHost) -> MockExecutor:
        if host.pk not in self.executors:
            self.executors[host.pk] = MockExecutor(host.name, clock=self.clock)
        return self.executors[host.pk]

    def reconciler(self, actor: str = "daemon:test") -> Reconciler:
        return Reconciler(actor=actor, executor_for=self.executor_for, clock=self.clock)


@pytest.fixture
def world(clock: Any) -> World:
    return World(clock)


@pytest.fixture
def host(db: Any) -> ExecutorHost:
    return ExecutorHost.objects.create(name="mock-a", executor_type="mock", max_concurrent_jobs=10)


def make_job(host: ExecutorHost | None = None, command: str = "echo hi", **kw: Any) -> ContainerJob:
    return ContainerJob.objects.create(
        image="busybox:latest", command=command, docker_host=host, memory_limit=64, cpu_limit=0.5, **kw
    )


def reload(job: ContainerJob) -> ContainerJob:
    job.refresh_from_db()
    return job


def test_success_runs_records_output_and_removes_container(
    world: World, host: ExecutorHost, clock: Any
) -> None:
    job = make_job(host, "sh -c 'echo hello; stderr oops; sleep 5'")
    r = world.reconciler()
    delay = wait_of(r.reconcile(job.pk))
    assert reload(job).status == JobStatus.RUNNING
    assert delay is not None and 0 < delay <= 30
    mock = world.executors[host.pk]
    assert mock.created == [f"cm-default-{job.pk}-1"]
    clock.advance(6)
    r.reconcile(job.pk)
    job = reload(job)
    assert (job.status, job.exit_code, job.failure_reason) == (JobStatus.COMPLETED, 0, "")
    assert job.started_at is not None and job.finished_at is not None
    execution = job.executions.get()
    assert (execution.stdout, execution.stderr) == ("hello\n", "oops\n")
    assert execution.cleaned_up and mock.list_managed("default") == []
    moves = list(job.events.exclude(to_status="").values_list("from_status", "to_status"))
    assert moves == [("pending", "launching"), ("launching", "running"), ("running", "completed")]
    assert job.runtime_duration == timedelta(seconds=6)


@pytest.mark.parametrize(
    ("command", "status", "reason", "exit_code"),
    [
        ("exit 3", JobStatus.FAILED, Reason.EXIT_CODE, 3),
        ("oom", JobStatus.FAILED, Reason.OOM, 137),
        ("false", JobStatus.FAILED, Reason.EXIT_CODE, 1),
    ],
)
def test_failures_are_recorded_with_their_reason(
    world: World, host: ExecutorHost, command: str, status: JobStatus, reason: Reason, exit_code: int
) -> None:
    job = make_job(host, command)
    world.reconciler().reconcile(job.pk)
    job = reload(job)
    assert (job.status, job.failure_reason, job.exit_code) == (status, reason, exit_code)
    execution = job.executions.get()
    assert execution.oom_killed == (reason is Reason.OOM)
    assert execution.reason == reason


def test_timeout_stops_keeps_logs_and_is_not_retried(world: World, host: ExecutorHost, clock: Any) -> None:
    job = make_job(host, "sh -c 'echo started; hang'", timeout_seconds=10, max_retries=3)
    r = world.reconciler()
    r.reconcile(job.pk)
    clock.advance(5)
    assert wait_of(r.reconcile(job.pk)) == pytest.approx(5)
    clock.advance(6)
    r.reconcile(job.pk)
    job = reload(job)
    assert (job.status, job.failure_reason, job.attempts) == (JobStatus.TIMEOUT, Reason.TIMEOUT, 1)
    execution = job.executions.get()
    assert execution.stdout == "started\n"
    assert ("stop", execution.container_name) in world.executors[host.pk].calls
    assert execution.cleaned_up


def test_cancel_running_job_stops_container(world: World, host: ExecutorHost) -> None:
    job = make_job(host, "hang")
    r = world.reconciler()
    r.reconcile(job.pk)
    assert job.cancel(actor="test") is True
    r.reconcile(job.pk)
    job = reload(job)
    assert (job.status, job.failure_reason) == (JobStatus.CANCELLED, Reason.CANCELLED)
    assert job.executions.get().status == ExecutionStatus.CANCELLED
    assert job.cancel() is False, "a finished job cannot be cancelled again"


def test_cancel_pending_job_never_starts_a_container(world: World, host: ExecutorHost) -> None:
    job = make_job(host)
    assert job.cancel() is True
    assert job.status == JobStatus.CANCELLED
    world.reconciler().reconcile(job.pk)
    assert world.executors.get(host.pk) is None or world.executors[host.pk].created == []
    assert not job.executions.exists()


def test_retry_with_backoff_then_success(world: World, host: ExecutorHost, clock: Any) -> None:
    job = make_job(host, "echo ok", max_retries=2, retry_backoff_seconds=10, retry_backoff_max_seconds=100)
    mock = world.executor_for(host)
    mock.inject(Fault.EXIT, match="*-1", exit_code=2)
    r = world.reconciler()
    delay = wait_of(r.reconcile(job.pk))
    job = reload(job)
    assert (job.status, job.attempts, job.exit_code) == (JobStatus.RETRYING, 1, 2)
    assert delay is not None and 5 <= delay <= 10
    assert job.run_after == clock() + timedelta(seconds=delay)
    r.reconcile(job.pk)  # too early: nothing happens
    assert reload(job).attempts == 1
    clock.advance(delay)
    r.reconcile(job.pk)
    job = reload(job)
    assert (job.status, job.attempts, job.exit_code) == (JobStatus.COMPLETED, 2, 0)
    assert list(job.executions.values_list("attempt", "status")) == [(1, "failed"), (2, "completed")]
    assert mock.created == [f"cm-default-{job.pk}-1", f"cm-default-{job.pk}-2"]


def test_vanished_container_is_lost_not_success(world: World, host: ExecutorHost) -> None:
    job = make_job(host, "hang")
    r = world.reconciler()
    r.reconcile(job.pk)
    world.executors[host.pk].vanish(f"cm-default-{job.pk}-1")
    r.reconcile(job.pk)
    job = reload(job)
    assert (job.status, job.failure_reason) == (JobStatus.FAILED, Reason.LOST)


def test_transient_launch_error_retries_the_same_attempt(world: World, host: ExecutorHost) -> None:
    job = make_job(host)
    mock = world.executor_for(host)
    mock.inject(Fault.LAUNCH_UNAVAILABLE)
    r = world.reconciler()
    assert wait_of(r.reconcile(job.pk)) == 2.0
    assert reload(job).status == JobStatus.LAUNCHING
    r.reconcile(job.pk)
    job = reload(job)
    assert (job.status, job.attempts) == (JobStatus.COMPLETED, 1)
    assert len(mock.created) == 1


def test_permanent_launch_error_fails_at_once_without_burning_retries(
    world: World, host: ExecutorHost
) -> None:
    job = make_job(host, max_retries=3)
    mock = world.executor_for(host)
    mock.inject(Fault.LAUNCH_INVALID, times=None)
    world.reconciler().reconcile(job.pk)
    job = reload(job)
    assert (job.status, job.failure_reason, job.attempts) == (JobStatus.FAILED, Reason.LAUNCH_REFUSED, 1)
    assert job.status_message.startswith("launch refused: ")


def test_permanent_launch_error_is_retried_when_asked(world: World, host: ExecutorHost, clock: Any) -> None:
    job = make_job(host, max_retries=1, retry_on="launch_refused", retry_backoff_seconds=1)
    world.executor_for(host).inject(Fault.LAUNCH_INVALID)
    r = world.reconciler()
    r.reconcile(job.pk)
    assert reload(job).status == JobStatus.RETRYING
    clock.advance(2)
    r.reconcile(job.pk)
    job = reload(job)
    assert (job.status, job.attempts) == (JobStatus.COMPLETED, 2)


def test_launch_keeps_failing_until_deadline(world: World, host: ExecutorHost, clock: Any) -> None:
    job = make_job(host)
    world.executor_for(host).inject(Fault.LAUNCH_UNAVAILABLE, times=None)
    r = world.reconciler()
    r.reconcile(job.pk)
    clock.advance(r.policy.launch_deadline_seconds + 1)
    r.reconcile(job.pk)
    assert reload(job).failure_reason == Reason.LAUNCH_ERROR


def test_attempt_row_is_written_before_the_executor_is_called(world: World, host: ExecutorHost) -> None:
    job = make_job(host)
    mock = world.executor_for(host)
    seen: list[tuple[str, bool]] = []
    original = mock.launch

    def spy(spec: ContainerSpec) -> Any:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM container_manager_containerexecution WHERE container_name = %s",
                [spec.name],
            )
            seen.append((spec.name, cursor.fetchone()[0] == 1))
        return original(spec)

    mock.launch = spy  # type: ignore[method-assign]
    world.reconciler().reconcile(job.pk)
    assert seen == [(f"cm-default-{job.pk}-1", True)]


def test_interrupted_launch_is_completed_not_duplicated(world: World, host: ExecutorHost) -> None:
    job = make_job(host)
    mock = world.executor_for(host)
    mock.inject(Fault.CREATE_ONLY)
    r = world.reconciler()
    r.reconcile(job.pk)
    r.reconcile(job.pk)
    assert reload(job).status == JobStatus.COMPLETED
    assert mock.created == [f"cm-default-{job.pk}-1"]


def test_restarted_daemon_adopts_running_container(world: World, host: ExecutorHost, clock: Any) -> None:
    job = make_job(host, "sleep 30")
    world.reconciler(actor="daemon:first").reconcile(job.pk)
    assert reload(job).status == JobStatus.RUNNING
    clock.advance(31)
    world.reconciler(actor="daemon:second").reconcile(job.pk)
    job = reload(job)
    assert job.status == JobStatus.COMPLETED
    assert world.executors[host.pk].created == [f"cm-default-{job.pk}-1"]
    assert job.events.filter(to_status="completed", actor="daemon:second").exists()


def test_capacity_is_respected_per_host(world: World, clock: Any) -> None:
    small = ExecutorHost.objects.create(name="small", executor_type="mock", max_concurrent_jobs=2)
    jobs = [make_job(None, "sleep 10") for _ in range(3)]
    r = world.reconciler()
    for job in jobs:
        r.reconcile(job.pk)
    statuses = sorted(reload(j).status for j in jobs)
    assert statuses == ["pending", "running", "running"]
    assert small.get_capacity() == {"max_concurrent_jobs": 2, "running": 2, "available": 0}
    clock.advance(11)
    for job in jobs:
        r.reconcile(job.pk)
    for job in jobs:
        r.reconcile(job.pk)
    assert all(reload(j).status != "pending" for j in jobs)


def test_unpinned_jobs_go_to_the_least_loaded_healthy_host(world: World) -> None:
    a = ExecutorHost.objects.create(name="a", executor_type="mock")
    b = ExecutorHost.objects.create(name="b", executor_type="mock")
    ExecutorHost.objects.create(name="c", executor_type="mock", health_status="unhealthy")
    ExecutorHost.objects.create(name="d", executor_type="mock", is_active=False)
    r = world.reconciler()
    for _ in range(4):
        r.reconcile(make_job(None, "sleep 100").pk)
    hosts = sorted(ContainerExecution.objects.values_list("host_name", flat=True))
    assert hosts == ["a", "a", "b", "b"]
    assert a.get_capacity()["running"] == 2 and b.get_capacity()["running"] == 2


def test_pinned_job_waits_for_its_inactive_host(world: World, host: ExecutorHost) -> None:
    job = make_job(host)
    ExecutorHost.objects.filter(pk=host.pk).update(is_active=False)
    ExecutorHost.objects.create(name="other", executor_type="mock")
    assert wait_of(world.reconciler().reconcile(job.pk)) == 5.0
    assert reload(job).status == JobStatus.PENDING


def test_row_inserted_by_sql_is_validated_at_launch(world: World, host: ExecutorHost) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO container_manager_containerjob (image, command, memory_limit) VALUES (%s, %s, %s)",
            ["busybox", "echo hi", 999999],
        )
    job = ContainerJob.objects.get()
    world.reconciler().reconcile(job.pk)
    job = reload(job)
    assert (job.status, job.failure_reason) == (JobStatus.FAILED, Reason.INVALID_SPEC)
    assert "memory_limit" in job.status_message


def test_row_inserted_by_sql_runs_with_default_limits(world: World, host: ExecutorHost) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO container_manager_containerjob (image, command) VALUES (%s, %s)",
            ["busybox", "echo from sql"],
        )
    job = ContainerJob.objects.get()
    assert job.memory_limit is None
    world.reconciler().reconcile(job.pk)
    job = reload(job)
    assert job.status == JobStatus.COMPLETED
    assert (job.memory_limit, job.cpu_limit, job.timeout_seconds) == (512, 1.0, 3600)
    assert job.executions.get().stdout == "from sql\n"


def test_terminal_job_with_leftover_container_is_cleaned(world: World, host: ExecutorHost) -> None:
    job = make_job(host)
    mock = world.executor_for(host)
    r = world.reconciler()
    r.reconcile(job.pk)
    execution = reload(job).executions.get()
    # Pretend removal never happened (daemon killed right after recording).
    spec = ContainerSpec(name=execution.container_name, image="busybox", command=("echo", "x"))
    mock.launch(spec)
    ContainerExecution.objects.filter(pk=execution.pk).update(cleaned_up=False)
    r.reconcile(job.pk)
    assert ContainerExecution.objects.get(pk=execution.pk).cleaned_up
    assert mock.inspect(execution.container_name).exists is False


def test_signals_are_sent_after_commit(
    world: World, host: ExecutorHost, django_capture_on_commit_callbacks: Any
) -> None:
    received: list[tuple[str, dict[str, Any]]] = []

    def launched(sender: Any, **kw: Any) -> None:
        received.append(("launched", kw))

    def finished(sender: Any, **kw: Any) -> None:
        received.append(("finished", kw))

    job_launched.connect(launched)
    job_finished.connect(finished)
    try:
        job = make_job(host, "sh -c 'sleep 1; exit 4'")
        with django_capture_on_commit_callbacks(execute=True):
            r = world.reconciler()
            r.reconcile(job.pk)
            world.clock.advance(2)
            r.reconcile(job.pk)
    finally:
        job_launched.disconnect(launched)
        job_finished.disconnect(finished)
    assert [name for name, _ in received] == ["launched", "finished"]
    assert received[0][1]["attempt"] == 1 and received[0][1]["host"] == "mock-a"
    assert received[1][1] == {
        "signal": job_finished,
        "job_id": job.pk,
        "status": "failed",
        "reason": "exit_code",
        "exit_code": 4,
    }


def test_fenced_writer_changes_nothing(world: World, host: ExecutorHost) -> None:
    job = make_job(host)
    asked: list[tuple[int, ...]] = []
    set_fence(lambda hosts: asked.append(hosts) or False)
    try:
        with pytest.raises(Fenced):
            world.reconciler().reconcile(job.pk)
    finally:
        set_fence(None)
    assert reload(job).status == JobStatus.PENDING
    assert not ContainerExecution.objects.exists()
    assert world.executors.get(host.pk) is None or world.executors[host.pk].created == []
    assert asked == [(host.pk,)], "the claim is fenced by the leases of the hosts it locked"


def test_draining_reconciler_claims_nothing_but_finishes_running(
    world: World, host: ExecutorHost, clock: Any
) -> None:
    running = make_job(host, "sleep 5")
    r = world.reconciler()
    r.reconcile(running.pk)
    waiting = make_job(host)
    r.draining = True
    r.reconcile(waiting.pk)
    clock.advance(6)
    r.reconcile(running.pk)
    assert reload(waiting).status == JobStatus.PENDING
    assert reload(running).status == JobStatus.COMPLETED


def test_history_records_actor_for_every_change(world: World, host: ExecutorHost) -> None:
    job = make_job(host, "exit 1", max_retries=1, retry_backoff_seconds=0, retry_backoff_max_seconds=0)
    world.reconciler(actor="daemon:x").reconcile(job.pk)
    world.reconciler(actor="daemon:x").reconcile(job.pk)
    events = JobEvent.objects.filter(job=job).exclude(to_status="")
    assert set(events.values_list("actor", flat=True)) == {"daemon:x"}
    assert list(events.values_list("to_status", flat=True)) == [
        "launching",
        "retrying",
        "launching",
        "failed",
    ]


def test_labels_identify_instance_job_and_attempt(world: World, host: ExecutorHost) -> None:
    job = make_job(host, "hang", override_environment="API_TOKEN=s3cret\nMODE=fast")
    world.reconciler().reconcile(job.pk)
    (observed,) = world.executors[host.pk].list_managed("default")
    assert observed.labels == {
        LABEL_MANAGED: "true",
        LABEL_INSTANCE: "default",
        LABEL_JOB: str(job.pk),
        LABEL_ATTEMPT: "1",
    }
    spec = world.executors[host.pk]._containers[observed.name].spec
    assert spec.env_dict == {
        "API_TOKEN": "s3cret",
        "MODE": "fast",
        "CM_JOB_ID": str(job.pk),
        "CM_ATTEMPT": "1",
    }
    assert spec.secret_keys == frozenset({"API_TOKEN"})
    assert "s3cret" not in repr(spec)
    assert spec.user == "65534:65534" and spec.memory_mb == 64 and spec.cpu == 0.5


def test_query_count_of_a_step_does_not_grow_with_history(
    world: World, host: ExecutorHost, clock: Any
) -> None:
    def run_one() -> tuple[int, int]:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        job = make_job(host, "sleep 5")
        r = world.reconciler()
        with CaptureQueriesContext(connection) as launch:
            r.reconcile(job.pk)
        with CaptureQueriesContext(connection) as observe:
            r.reconcile(job.pk)
        clock.advance(6)
        r.reconcile(job.pk)
        return len(launch.captured_queries), len(observe.captured_queries)

    before = run_one()
    for _ in range(60):
        run_one()
    assert run_one() == before
    assert before[1] == 1, "observing a running job reads the job row with its attempt: one query"


class PolledMock(MockExecutor):
    """A backend without events (like Cloud Run): the reconciler must poll it."""

    supports_events = False
    poll_interval = 2.0


def test_backends_without_events_are_polled(host: ExecutorHost, clock: Any) -> None:
    polled = PolledMock("polled", clock=clock)
    r = Reconciler(actor="test", executor_for=lambda h: polled, clock=clock)
    job = make_job(host, "sleep 100", timeout_seconds=3600)
    assert wait_of(r.reconcile(job.pk)) == 2.0
    pushing = World(clock)
    job2 = make_job(host, "sleep 100", timeout_seconds=3600)
    assert wait_of(pushing.reconciler().reconcile(job2.pk)) == 30.0, (
        "with events, the resync interval is enough"
    )


def test_log_context_carries_attempt_and_host_during_the_step_only(host: ExecutorHost, clock: Any) -> None:
    import structlog

    seen: list[dict[str, Any]] = []

    class ContextSpy(MockExecutor):
        def inspect(self, name: str) -> Any:
            seen.append(dict(structlog.contextvars.get_contextvars()))
            return super().inspect(name)

    spy = ContextSpy("spy", clock=clock)
    r = Reconciler(actor="test", executor_for=lambda h: spy, clock=clock)
    job = make_job(host, "sleep 10")
    r.reconcile(job.pk)
    r.reconcile(job.pk)
    assert seen and seen[-1]["attempt"] == 1 and seen[-1]["host"] == "mock-a"
    assert "attempt" not in structlog.contextvars.get_contextvars()


def test_a_host_capacity_raised_by_sql_is_still_capped(world: World, settings: Any) -> None:
    settings.CONTAINER_MANAGER = {"MAX_CONCURRENT_JOBS_CAP": 2, "DEFAULT_MAX_CONCURRENT_JOBS": 2}
    big = ExecutorHost.objects.create(name="big", executor_type="mock", max_concurrent_jobs=2)
    ExecutorHost.objects.filter(pk=big.pk).update(max_concurrent_jobs=1000)
    jobs = [make_job(None, "sleep 10") for _ in range(4)]
    r = world.reconciler()
    for job in jobs:
        r.reconcile(job.pk)
    assert sorted(reload(j).status for j in jobs) == ["pending", "pending", "running", "running"]


def test_a_pinned_job_waits_while_its_host_is_unhealthy(world: World, host: ExecutorHost) -> None:
    job = make_job(host)
    ExecutorHost.objects.filter(pk=host.pk).update(health_status="unhealthy")
    r = world.reconciler()
    assert wait_of(r.reconcile(job.pk)) == 5.0
    assert reload(job).status == JobStatus.PENDING, "no attempt is used up on a broken host"
    ExecutorHost.objects.filter(pk=host.pk).update(health_status="healthy")
    r.reconcile(job.pk)
    assert (reload(job).status, reload(job).attempts) == (JobStatus.COMPLETED, 1)


def test_a_launching_job_on_a_host_gone_down_fails_at_the_launch_deadline(
    world: World, host: ExecutorHost, clock: Any
) -> None:
    """Nothing answers, so nothing can be inspected: the deadline is still enforced."""
    job = make_job(host, max_retries=0)
    mock = world.executor_for(host)
    mock.healthy = False
    r = world.reconciler()
    assert wait_of(r.reconcile(job.pk)) == 2.0
    assert reload(job).status == JobStatus.LAUNCHING
    clock.advance(r.policy.launch_deadline_seconds + 1)
    r.reconcile(job.pk)
    job = reload(job)
    assert (job.status, job.failure_reason) == (JobStatus.FAILED, Reason.LAUNCH_ERROR)
    assert "mock host mock-a is down" in job.status_message
