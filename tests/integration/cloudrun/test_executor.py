"""CloudRunExecutor end to end: real google-cloud-run client (REST, anonymous) -> local fake API.

Lifecycle and outcomes: exit codes come from the Tasks API, never from condition messages.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from executors.cloudrun import CloudRunExecutor, job_id_for
from executors.types import LABEL_JOB, ContainerState
from tests.fakes.cloudrun import FakeCloudRun

from .helpers import make_spec, wait_exited

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
    assert (done.exit_code, done.reason_hint, done.oom_killed) == (0, "", False)
    assert done.container_id == launched.container_id
    assert done.started_at is not None and done.finished_at is not None
    assert done.finished_at >= done.started_at
    assert dict(done.labels) == spec.labels_dict
    assert fake_cloudrun.calls["ListTasks"] == 1  # the outcome is read from the task


@pytest.mark.parametrize("style", ["plain", "quoted"])
def test_failure_exit_code_comes_from_the_task(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun, style: str
) -> None:
    """Whether or not the execution's condition message quotes an exit code, the task's is reported."""
    fake_cloudrun.message_style = style
    spec = make_spec(command=("sh", "-c", "sleep 0.5; exit 3"))
    executor.launch(spec)
    done = wait_exited(executor, spec.name)
    assert (done.exit_code, done.reason_hint, done.oom_killed) == (3, "", False)
    assert "The container exited with an error" in done.error


def test_a_kill_quoted_as_exit_code_0_is_not_a_success(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    """Condition messages say "exit code: 0" for a task the system killed; the task says SIGKILL."""
    fake_cloudrun.message_style = "quoted"
    spec = make_spec(command=(), env=(("FAKE_BEHAVIOUR", "sleep=0.3;oom"),), memory_mb=512)
    executor.launch(spec)
    done = wait_exited(executor, spec.name)
    execution = fake_cloudrun.executions_of(job_id_for(spec.name))[0]
    assert "exit code: 0" in execution["conditions"][-1]["message"]
    assert done.exit_code == 137  # 128 + SIGKILL, never 0
    assert done.oom_killed and done.reason_hint == "oom"
    assert "Memory limit of 512 MiB exceeded" in done.error


def test_a_task_without_exit_code_reports_none_with_the_reason(executor: CloudRunExecutor) -> None:
    spec = make_spec(command=("crash",))
    executor.launch(spec)
    done = wait_exited(executor, spec.name)
    assert done.exit_code is None
    assert "failed without an exit code" in done.error and "terminated" in done.error


def test_behaviour_from_env_script(executor: CloudRunExecutor) -> None:
    spec = make_spec(command=(), env=(("FAKE_BEHAVIOUR", "start=0.1;sleep=0.3;exit=7"),))
    executor.launch(spec)
    assert wait_exited(executor, spec.name).exit_code == 7


def test_timeout_is_enforced_by_cloud_run_from_the_task_start(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    """Provisioning (start=2 s) is not charged: the task runs its whole timeout (1 s) after it."""
    spec = make_spec(command=(), env=(("FAKE_BEHAVIOUR", "start=2;hang"),), timeout_seconds=1)
    launched = executor.launch(spec)
    assert launched.state is ContainerState.RUNNING and launched.started_at is None  # provisioning
    done = wait_exited(executor, spec.name)
    assert done.reason_hint == "timeout"
    assert done.exit_code == 137
    assert done.started_at is not None and done.finished_at is not None
    ran = done.finished_at - done.started_at
    assert timedelta(seconds=0.19) <= ran < timedelta(seconds=0.3)  # 1 s x time_scale 0.2
    execution = fake_cloudrun.executions_of(job_id_for(spec.name))[0]
    assert execution["startTime"] > execution["createTime"]


def test_a_running_execution_reports_its_start(executor: CloudRunExecutor) -> None:
    spec = make_spec(command=("hang",))
    executor.launch(spec)
    deadline = time.monotonic() + 5
    while (observed := executor.inspect(spec.name)).started_at is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert observed.state is ContainerState.RUNNING
    calls = executor.counters()["get_execution"].calls
    executor.inspect(spec.name)  # the start time is known: no further GetExecution
    assert executor.counters()["get_execution"].calls == calls


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


# The command replaces the image's ENTRYPOINT ------------------------------------------


def test_command_is_sent_as_entrypoint_and_args(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    spec = make_spec(command=("python", "-m", "worker", "--fast"))
    executor.launch(spec)
    received = fake_cloudrun.job(job_id_for(spec.name))
    assert received is not None
    container = received["template"]["template"]["containers"][0]
    assert (container["command"], container["args"]) == (["python"], ["-m", "worker", "--fast"])

    bare = make_spec("cm-test-2-1", command=(), job=2)
    executor.launch(bare)
    received = fake_cloudrun.job(job_id_for(bare.name))
    assert received is not None
    container = received["template"]["template"]["containers"][0]
    assert "command" not in container and "args" not in container  # the image's ENTRYPOINT and CMD
