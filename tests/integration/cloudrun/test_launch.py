"""Launching on Cloud Run: idempotent create, RunJob never re-sent blindly, errors, limits, 403."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from executors.cloudrun import CloudRunExecutor, job_id_for
from executors.exceptions import HostMisconfigured, InvalidSpec, QuotaExceeded, Unavailable
from executors.types import ContainerState
from tests.fakes.cloudrun import FakeCloudRun

from .helpers import make_spec, total_calls, wait_exited

MakeExecutor = Callable[..., CloudRunExecutor]


def executions(fake: FakeCloudRun, name: str) -> int:
    return len(fake.executions_of(job_id_for(name)))


# Idempotency -------------------------------------------------------------------------


def test_launch_twice_adopts(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    spec = make_spec(command=("sh", "-c", "sleep 1"))
    first = executor.launch(spec)
    second = executor.launch(spec)
    assert second.container_id == first.container_id
    assert executions(fake_cloudrun, spec.name) == 1
    assert fake_cloudrun.calls["RunJob"] == 1


def test_launch_after_restart_adopts(make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun) -> None:
    spec = make_spec(command=("sh", "-c", "sleep 1"))
    first = make_executor().launch(spec)
    again = make_executor().launch(spec)  # a new process: no memory of the first launch
    assert again.container_id == first.container_id
    assert executions(fake_cloudrun, spec.name) == 1


@pytest.mark.parametrize("status", [503, 500, 504])
def test_a_run_whose_answer_is_lost_gives_exactly_one_execution(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun, status: int
) -> None:
    """RunJob is carried out, then answered with an error: the job's executions are read, not re-run."""
    spec = make_spec(command=("sh", "-c", "sleep 0.3"))
    fake_cloudrun.inject("RunJob", status, times=1, apply=True)
    launched = executor.launch(spec)
    assert launched.state is ContainerState.RUNNING
    assert fake_cloudrun.calls["RunJob"] == 1
    assert executions(fake_cloudrun, spec.name) == 1
    assert launched.container_id == fake_cloudrun.executions_of(job_id_for(spec.name))[0]["name"]
    assert wait_exited(executor, spec.name).exit_code == 0


def test_a_run_that_times_out_on_the_client_is_not_sent_again(
    make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    """The server is still working when the client gives up: launches wait until its execution shows."""
    executor = make_executor(call_timeout=0.3)
    spec = make_spec(command=("sh", "-c", "sleep 0.3"))
    fake_cloudrun.inject("RunJob", None, times=1, delay=1.0)  # served 1 s late
    refused = 0
    deadline = time.monotonic() + 5
    while True:
        try:
            observed = executor.launch(spec)
            break
        except Unavailable as exc:
            assert "no answer" in str(exc)
            refused += 1
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert refused >= 2  # the first launch, and those while the request was still being served
    assert observed.state in (ContainerState.RUNNING, ContainerState.EXITED)
    assert fake_cloudrun.calls["RunJob"] == 1
    assert executions(fake_cloudrun, spec.name) == 1


def test_a_create_whose_answer_is_lost_is_adopted(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.inject("CreateJob", 503, times=1, apply=True)
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    assert executor.launch(spec).state is ContainerState.RUNNING
    assert fake_cloudrun.calls["CreateJob"] == 2  # the retry met ALREADY_EXISTS and adopted the job
    assert executions(fake_cloudrun, spec.name) == 1


def test_run_errors_before_the_server_acted_are_re_sent_after_a_look(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.inject("RunJob", 503, times=2)
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    assert executor.launch(spec).state is ContainerState.RUNNING
    assert fake_cloudrun.calls["RunJob"] == 3
    assert fake_cloudrun.calls["GetJob"] >= 2  # looked at the job before each re-send
    assert executions(fake_cloudrun, spec.name) == 1


def test_interrupted_launch_is_completed_once(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    """The job was created but RunJob never got through: inspect says CREATED, launch runs it once."""
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    fake_cloudrun.inject("RunJob", 503, times=executor.retry_attempts)
    with pytest.raises(Unavailable):
        executor.launch(spec)
    assert executor.inspect(spec.name).state is ContainerState.CREATED
    executor.launch(spec)
    executor.launch(spec)
    assert executions(fake_cloudrun, spec.name) == 1
    assert wait_exited(executor, spec.name).exit_code == 0


def test_create_operation_is_waited_for(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    """A CreateJob operation that is not done at once is polled (GetOperation) before RunJob."""
    fake_cloudrun.operation_delay = 0.3
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    assert executor.launch(spec).state is ContainerState.RUNNING
    assert executor.counters()["get_operation"].calls >= 1
    assert fake_cloudrun.calls["GetOperation"] == executor.counters()["get_operation"].calls


def test_relaunch_waits_for_a_job_still_being_created(
    make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.operation_delay = 0.4
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    with pytest.raises(Unavailable, match="not done"):
        make_executor(operation_timeout=0.1).launch(spec)
    assert fake_cloudrun.calls["RunJob"] == 0
    executor = make_executor()
    assert executor.launch(spec).state is ContainerState.RUNNING
    assert executor.counters()["get_job"].calls >= 2  # polled while reconciling
    assert executions(fake_cloudrun, spec.name) == 1


# Errors, quotas and limits ---------------------------------------------------------------


def test_transient_create_errors_are_retried(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    fake_cloudrun.inject("CreateJob", 503, times=2)
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    assert executor.launch(spec).state is ContainerState.RUNNING
    assert fake_cloudrun.calls["CreateJob"] == 3
    assert {verb: c.retries for verb, c in executor.counters().items() if c.retries} == {"create_job": 2}
    assert {verb: c.errors for verb, c in executor.counters().items() if c.errors} == {"create_job": 2}


def test_quota_errors_back_off_longer(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    sleeps: list[float] = []
    executor.calls.sleep = sleeps.append
    fake_cloudrun.inject("CreateJob", 429, times=2)
    assert executor.launch(make_spec(command=("sh", "-c", "sleep 0.2"))).state is ContainerState.RUNNING
    assert len(sleeps) >= 2  # then the pauses of waiting for the create operation
    sleeps = sleeps[:2]
    # Quota waits are QUOTA_BACKOFF_FACTOR (4) times the ordinary ones, with jitter down to half.
    assert all(s >= executor.settings.retry_backoff * 4 / 2 for s in sleeps)


def test_the_jobs_per_region_limit_is_a_quota_error(
    make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.max_jobs = 2
    executor = make_executor(retry_attempts=1)
    fake_cloudrun.add_foreign_job("someone-elses")
    executor.launch(make_spec("cm-test-1-1", ("sh", "-c", "sleep 0.2"), job=1))
    with pytest.raises(QuotaExceeded, match="at most 2 jobs") as caught:
        executor.launch(make_spec("cm-test-2-1", ("sh", "-c", "sleep 0.2"), job=2))
    assert caught.value.transient  # the job waits; nothing is failed for it
    executor.remove("cm-test-1-1")
    assert executor.launch(make_spec("cm-test-2-1", ("sh", "-c", "sleep 0.2"), job=2)).exists


def test_the_running_executions_limit_is_a_quota_error(
    make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.max_running_executions = 1
    executor = make_executor(retry_attempts=1)
    executor.launch(make_spec("cm-test-1-1", ("hang",), job=1))
    second = make_spec("cm-test-2-1", ("sh", "-c", "sleep 0.2"), job=2)
    with pytest.raises(QuotaExceeded, match="running executions"):
        executor.launch(second)
    assert executor.inspect(second.name).state is ContainerState.CREATED  # launched again later, once
    executor.stop("cm-test-1-1")
    wait_exited(executor, "cm-test-1-1")
    assert executor.launch(second).exists
    assert executions(fake_cloudrun, second.name) == 1


def test_permission_denied_is_the_hosts_problem(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    """403 (no actAs on the service account, API disabled): transient for the job, not retried here."""
    fake_cloudrun.inject("CreateJob", 403, times=10)
    with pytest.raises(HostMisconfigured, match=r"iam\.serviceAccounts\.actAs") as caught:
        executor.launch(make_spec())
    assert caught.value.transient and isinstance(caught.value, Unavailable)
    assert fake_cloudrun.calls["CreateJob"] == 1
    fake_cloudrun.inject(
        "ListJobs", 403, times=1, message="Cloud Run Admin API has not been used in project p"
    )
    report = executor.health_check(timeout=2)
    assert not report.healthy and "Cloud Run Admin API" in report.message


def test_invalid_spec_is_permanent(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    with pytest.raises(InvalidSpec, match="Invalid image"):
        executor.launch(make_spec(image="Not A Valid/Image"))
    assert fake_cloudrun.calls["CreateJob"] == 1  # not retried
    assert all(c.retries == 0 for c in executor.counters().values())


def test_the_executor_refuses_what_cloud_run_cannot_run(executor: CloudRunExecutor) -> None:
    with pytest.raises(InvalidSpec, match="at most 8"):
        executor.launch(make_spec(cpu=16))
    with pytest.raises(InvalidSpec, match="image is empty"):
        executor.launch(make_spec(image=""))
    with pytest.raises(InvalidSpec, match="PORT is reserved") as caught:
        executor.launch(make_spec(env=(("PORT", "8080-secret-ish"),)))
    assert "8080-secret-ish" not in str(caught.value)
    with pytest.raises(InvalidSpec, match="32768 bytes"):
        executor.launch(make_spec(env=(("BIG", "x" * 40000),)))
    assert total_calls(executor) == 0


def test_check_environment_names_the_variable_and_the_rule_never_the_value() -> None:
    env = {
        "PORT": "v1",
        "CLOUD_RUN_TASK_INDEX": "v2",
        "CLOUD_RUN_ANYTHING": "v3",
        "X_GOOGLE_THING": "v4",
        "K_SERVICE": "v5",
        "HUGE": "s" * 32769,
        "OK": "fine",
    }
    problems = CloudRunExecutor.check_environment(env)
    assert len(problems) == 6
    for name in ("PORT", "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_ANYTHING", "X_GOOGLE_THING", "K_SERVICE", "HUGE"):
        assert any(name in p for p in problems), name
    assert not any(value in p for p in problems for value in ("v1", "v2", "v3", "v4", "v5", "s" * 100))
    many = {f"V{i}": "x" for i in range(1001)}
    assert CloudRunExecutor.check_environment(many) == [
        "1001 environment variables: Cloud Run allows at most 1000 per container"
    ]
    assert CloudRunExecutor.check_environment({"A": "1", "B": "x" * 32768}) == []
