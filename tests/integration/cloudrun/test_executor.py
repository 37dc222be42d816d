"""CloudRunExecutor end to end: real google-cloud-run client (REST, anonymous) -> local fake API."""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Callable
from typing import Any

import pytest

from executors.cloudrun import CloudRunExecutor, job_id_for
from executors.exceptions import InvalidSpec, QuotaExceeded, Unavailable
from executors.types import LABEL_INSTANCE, LABEL_JOB, ContainerState
from tests.fakes.cloudrun_api import FakeCloudRun

from .helpers import INSTANCE, make_spec, wait_exited

MakeExecutor = Callable[..., CloudRunExecutor]


# Lifecycle ---------------------------------------------------------------------------


def test_success_runs_to_exit_code_zero(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    spec = make_spec(command=("sh", "-c", "sleep 1"))
    launched = executor.launch(spec)
    assert launched.state is ContainerState.RUNNING
    assert launched.container_id and launched.container_id.startswith(
        f"{executor.parent}/jobs/{job_id_for(spec.name)}/executions/"
    )
    assert launched.labels[LABEL_JOB] == "1"

    done = wait_exited(executor, spec.name)
    assert done.exit_code == 0
    assert done.reason_hint == ""
    assert done.container_id == launched.container_id
    assert done.started_at is not None and done.finished_at is not None
    assert done.finished_at >= done.started_at
    assert dict(done.labels) == spec.labels_dict


def test_failure_reports_the_exit_code(executor: CloudRunExecutor) -> None:
    spec = make_spec(command=("sh", "-c", "sleep 0.5; exit 3"))
    executor.launch(spec)
    done = wait_exited(executor, spec.name)
    assert done.exit_code == 3
    assert "exit(3)" in done.error
    assert done.reason_hint == ""


def test_behaviour_from_env_script(executor: CloudRunExecutor) -> None:
    spec = make_spec(command=(), env=(("FAKE_BEHAVIOUR", "start=0.1;sleep=0.3;exit=7"),))
    executor.launch(spec)
    assert wait_exited(executor, spec.name).exit_code == 7


def test_timeout_is_enforced_by_cloud_run(executor: CloudRunExecutor) -> None:
    spec = make_spec(command=("sh", "-c", "sleep 100"), timeout_seconds=1)
    executor.launch(spec)
    done = wait_exited(executor, spec.name)
    assert done.reason_hint == "timeout"
    assert "timeout" in done.error


def test_stop_cancels_the_execution(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    spec = make_spec(command=("hang",))
    executor.launch(spec)
    time.sleep(0.1)
    assert executor.inspect(spec.name).state is ContainerState.RUNNING
    executor.stop(spec.name, grace_seconds=1)
    assert fake_cloudrun.calls["CancelExecution"] == 1
    done = wait_exited(executor, spec.name)
    assert done.reason_hint == "cancelled"
    # Stopping a finished or absent container is fine and costs no cancel call.
    executor.stop(spec.name)
    executor.stop("cm-never-launched")
    assert fake_cloudrun.calls["CancelExecution"] == 1


def test_remove_deletes_the_job(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    executor.launch(spec)
    wait_exited(executor, spec.name)
    executor.remove(spec.name)
    assert fake_cloudrun.job(job_id_for(spec.name)) is None
    assert fake_cloudrun.executions_of(job_id_for(spec.name)) == []
    assert executor.inspect(spec.name).state is ContainerState.NOT_FOUND
    executor.remove(spec.name)  # absent is fine


def test_logs_point_at_the_execution_log_uri(executor: CloudRunExecutor) -> None:
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    launched = executor.launch(spec)
    tail = executor.logs(spec.name)
    assert tail.stdout.startswith("logs: https://console.cloud.google.com/logs/")
    assert job_id_for(spec.name) in tail.stdout
    assert launched.container_id in executor.log_uris
    assert executor.logs("cm-never-launched").stdout == ""


def test_logs_from_cloud_logging_are_bounded(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With use_cloud_logging, entries are read newest first and only max_bytes are kept."""
    seen: dict[str, Any] = {}

    class Entry:
        def __init__(self, text: str, stream: str) -> None:
            self.payload = text
            self.log_name = f"projects/p/logs/run.googleapis.com%2F{stream}"

    class Client:
        def __init__(self, **kwargs: Any) -> None:
            pass

        def list_entries(self, **kwargs: Any) -> Any:
            seen.update(kwargs)
            newest_first = [Entry(f"line {i}", "stdout") for i in range(99, -1, -1)]
            return iter([*newest_first, Entry("boom", "stderr")])

    stub = types.ModuleType("google.cloud.logging")
    stub.Client = Client  # type: ignore[attr-defined]
    stub.DESCENDING = "timestamp desc"  # type: ignore[attr-defined]
    import google.cloud

    monkeypatch.setitem(sys.modules, "google.cloud.logging", stub)
    monkeypatch.setattr(google.cloud, "logging", stub, raising=False)
    executor = make_executor(use_cloud_logging=True)
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    executor.launch(spec)
    tail = executor.logs(spec.name, max_bytes=40)
    assert tail.stdout.endswith("line 98\nline 99\n")
    assert len(tail.stdout.encode()) <= 40
    assert tail.stdout_truncated
    assert tail.stderr == "boom\n"
    assert f'resource.labels.job_name="{job_id_for(spec.name)}"' in seen["filter_"]


# Idempotency -------------------------------------------------------------------------


def test_launch_twice_adopts(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    spec = make_spec(command=("sh", "-c", "sleep 1"))
    first = executor.launch(spec)
    second = executor.launch(spec)
    assert second.container_id == first.container_id
    assert len(fake_cloudrun.executions_of(job_id_for(spec.name))) == 1
    assert fake_cloudrun.calls["RunJob"] == 1


def test_launch_after_restart_adopts(make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun) -> None:
    spec = make_spec(command=("sh", "-c", "sleep 1"))
    first = make_executor().launch(spec)
    # A new process: no memory of the first launch.
    again = make_executor().launch(spec)
    assert again.container_id == first.container_id
    assert len(fake_cloudrun.executions_of(job_id_for(spec.name))) == 1


def test_interrupted_launch_is_completed_once(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    """The job was created but run_job never got through: inspect says CREATED, launch runs it once."""
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    fake_cloudrun.inject("RunJob", 503, times=executor.retry_attempts)
    with pytest.raises(Unavailable):
        executor.launch(spec)
    assert executor.inspect(spec.name).state is ContainerState.CREATED
    executor.launch(spec)
    executor.launch(spec)
    assert len(fake_cloudrun.executions_of(job_id_for(spec.name))) == 1
    assert wait_exited(executor, spec.name).exit_code == 0


def test_create_operation_is_waited_for(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    """A CreateJob operation that is not done at once is polled (GetOperation) before RunJob."""
    fake_cloudrun.operation_delay = 0.3
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    assert executor.launch(spec).state is ContainerState.RUNNING
    assert executor.api_calls_by_method["get_operation"] >= 1
    assert fake_cloudrun.calls["GetOperation"] == executor.api_calls_by_method["get_operation"]


def test_relaunch_waits_for_a_job_still_being_created(
    make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    """A launch gave up waiting for CreateJob; the retry adopts the job, waits until ready, runs it once."""
    fake_cloudrun.operation_delay = 0.4
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    with pytest.raises(Unavailable, match="not done"):
        make_executor(operation_timeout=0.1).launch(spec)
    assert fake_cloudrun.calls["RunJob"] == 0
    executor = make_executor()
    assert executor.launch(spec).state is ContainerState.RUNNING
    assert executor.api_calls_by_method["get_job"] >= 2  # polled while reconciling
    assert len(fake_cloudrun.executions_of(job_id_for(spec.name))) == 1


# Errors ------------------------------------------------------------------------------


def test_transient_errors_are_retried(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    fake_cloudrun.inject("CreateJob", 503, times=2)
    fake_cloudrun.inject("RunJob", 500, times=1)
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    assert executor.launch(spec).state is ContainerState.RUNNING
    assert fake_cloudrun.calls["CreateJob"] == 3
    assert fake_cloudrun.calls["RunJob"] == 2
    assert executor.api_retries == 3
    assert executor.api_errors_by_method == {"create_job": 2, "run_job": 1}
    assert len(fake_cloudrun.executions_of(job_id_for(spec.name))) == 1


def test_slow_answers_hit_the_call_timeout_and_are_retried(
    make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    executor = make_executor(call_timeout=0.3)
    fake_cloudrun.inject("ListExecutions", status=None, delay=1.0, times=1)
    assert executor.inspect("cm-never-launched").state is ContainerState.NOT_FOUND
    assert executor.api_retries == 1


def test_quota_errors_back_off_longer_then_succeed(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    sleeps: list[float] = []
    executor._sleep = sleeps.append
    fake_cloudrun.inject("RunJob", 429, times=2)
    spec = make_spec(command=("sh", "-c", "sleep 0.2"))
    assert executor.launch(spec).state is ContainerState.RUNNING
    assert fake_cloudrun.calls["RunJob"] == 3
    assert len(sleeps) == 2
    # Quota waits are QUOTA_BACKOFF_FACTOR (4) times the ordinary ones, with jitter down to half.
    assert all(s >= executor.retry_backoff * 4 / 2 for s in sleeps)

    sleeps.clear()
    fake_cloudrun.inject("ListExecutions", 503, times=1)
    executor.inspect(spec.name)
    assert sleeps and sleeps[0] <= executor.retry_backoff


def test_persistent_quota_errors_raise_quota_exceeded(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.inject("CreateJob", 429, times=100)
    with pytest.raises(QuotaExceeded) as caught:
        executor.launch(make_spec())
    assert caught.value.transient
    assert fake_cloudrun.calls["CreateJob"] == executor.retry_attempts == 4


def test_invalid_spec_is_permanent(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    with pytest.raises(InvalidSpec, match="Invalid image"):
        executor.launch(make_spec(image="Not A Valid/Image"))
    assert fake_cloudrun.calls["CreateJob"] == 1  # not retried
    assert executor.api_retries == 0


@pytest.mark.parametrize("status", [400, 403])
def test_injected_client_errors_are_permanent(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun, status: int
) -> None:
    fake_cloudrun.inject("RunJob", status, times=1)
    with pytest.raises(InvalidSpec):
        executor.launch(make_spec())
    assert fake_cloudrun.calls["RunJob"] == 1


def test_the_executor_refuses_what_cloud_run_cannot_run(executor: CloudRunExecutor) -> None:
    with pytest.raises(InvalidSpec, match="at most 8"):
        executor.launch(make_spec(cpu=16))
    with pytest.raises(InvalidSpec, match="image is empty"):
        executor.launch(make_spec(image=""))
    assert executor.api_calls == 0


# Bounded API cost of a poll ----------------------------------------------------------


def test_one_list_call_covers_a_poll_of_30_jobs(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    specs = [make_spec(f"cm-test-{i}-1", ("hang",), job=i) for i in range(30)]
    for spec in specs:
        executor.launch(spec)
    # A job of another instance is in the region but not ours.
    executor.launch(make_spec("cm-other-1-1", instance="other"))
    fake_cloudrun.reset_counts()
    before = executor.api_calls

    managed = executor.list_managed(INSTANCE)
    observed = [executor.inspect(spec.name) for spec in specs]

    assert sorted(o.name for o in managed) == sorted(s.name for s in specs)
    assert all(o.labels[LABEL_INSTANCE] == INSTANCE for o in managed)
    assert all(o.state is ContainerState.RUNNING for o in observed)
    assert fake_cloudrun.calls == {"ListExecutions": 1}
    assert executor.api_calls - before == 1
    assert fake_cloudrun.log[0][2].endswith("/jobs/-/executions")


def test_listing_follows_pages(make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun) -> None:
    fake_cloudrun.max_page_size = 10
    executor = make_executor()
    for i in range(25):
        executor.launch(make_spec(f"cm-test-{i}-1", ("sh", "-c", "sleep 0.2"), job=i))
    fake_cloudrun.reset_counts()
    assert len(executor.list_managed(INSTANCE)) == 25
    assert fake_cloudrun.calls == {"ListExecutions": 3}


def test_snapshot_expires_after_poll_interval(
    make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    executor = make_executor(poll_interval=0.2)
    spec = make_spec(command=("sh", "-c", "sleep 0.1"))
    executor.launch(spec)
    executor.list_managed(INSTANCE)
    fake_cloudrun.reset_counts()
    executor.inspect(spec.name)
    assert fake_cloudrun.calls == {}
    time.sleep(0.25)
    assert executor.inspect(spec.name).state is ContainerState.EXITED
    assert fake_cloudrun.calls == {"ListExecutions": 1}


def test_acting_on_a_job_drops_it_from_the_snapshot(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    spec = make_spec(command=("hang",))
    executor.launch(spec)
    executor.list_managed(INSTANCE)
    executor.stop(spec.name)
    assert wait_exited(executor, spec.name, timeout=3).reason_hint == "cancelled"


# Health ------------------------------------------------------------------------------


def test_health_check(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    report = executor.health_check(timeout=2)
    assert report.healthy, report.message
    assert fake_cloudrun.calls["ListJobs"] == 1

    fake_cloudrun.inject("ListJobs", 503, times=1)
    report = executor.health_check(timeout=2)
    assert not report.healthy
    assert fake_cloudrun.calls["ListJobs"] == 2  # a probe is not retried

    fake_cloudrun.stop()
    report = executor.health_check(timeout=1)
    assert not report.healthy


def test_registry_builds_it_from_a_host_row(fake_cloudrun: FakeCloudRun) -> None:
    from types import SimpleNamespace

    from executors import registry

    host = SimpleNamespace(
        pk="cloudrun-registry-test",
        name="cloud",
        executor_type="cloudrun",
        connection_string=fake_cloudrun.connection_string,
        executor_config=fake_cloudrun.executor_config(retain_jobs=True),
    )
    try:
        executor = registry.get_executor(host)
        assert isinstance(executor, CloudRunExecutor) and executor.retain_jobs
        assert registry.get_executor(host) is executor
        assert executor.health_check(timeout=2).healthy
    finally:
        registry.forget(host.pk)
