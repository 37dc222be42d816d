"""The seed's Active-Record methods, driven through the one-job step against the mock executor."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from container_manager.exceptions import JobStateError
from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost, JobEvent
from executors.mock import MockExecutor
from tests.conftest import FakeClock

pytestmark = pytest.mark.django_db


def _job(host: ExecutorHost, command: str, **kwargs: Any) -> ContainerJob:
    return ContainerJob.objects.create(image="busybox", command=command, docker_host=host, **kwargs)


@pytest.fixture
def fake_time(mock_executor: MockExecutor) -> FakeClock:
    """The mock's containers run on a clock the test moves (started at the real now)."""
    clock = FakeClock(timezone.now())
    mock_executor.clock = clock
    return clock


# Hosts --------------------------------------------------------------------------------------


def test_get_executor_is_cached_per_host(mock_host: ExecutorHost) -> None:
    executor = mock_host.get_executor()
    assert isinstance(executor, MockExecutor)
    assert ExecutorHost.objects.get(pk=mock_host.pk).get_executor() is executor


def test_health_check_records_the_result(mock_host: ExecutorHost) -> None:
    before = timezone.now()
    report = mock_host.health_check()
    assert report and report.healthy
    row = ExecutorHost.objects.get(pk=mock_host.pk)
    assert row.health_status == "healthy"
    assert row.last_health_check is not None and row.last_health_check >= before
    assert mock_host.health_status == "healthy"


def test_unhealthy_mock_is_recorded_unhealthy_and_leaves_available() -> None:
    host = ExecutorHost.objects.create(name="down", executor_type="mock", executor_config={"healthy": False})
    report = host.health_check()
    assert not report
    row = ExecutorHost.objects.get(pk=host.pk)
    assert (row.health_status, row.last_health_check is not None) == ("unhealthy", True)
    assert "down" in row.health_message
    assert host not in ExecutorHost.objects.available()


def test_health_check_of_a_misconfigured_host_never_raises() -> None:
    host = ExecutorHost.objects.create(name="odd", executor_type="mock")
    # save() refuses such a config; a row changed past the ORM still gets a clean answer.
    ExecutorHost.objects.filter(pk=host.pk).update(executor_config={"bogus": 1})
    host.refresh_from_db()
    assert not host.health_check()
    assert ExecutorHost.objects.get(pk=host.pk).health_status == "unhealthy"


def test_get_capacity(mock_host: ExecutorHost) -> None:
    assert mock_host.get_capacity() == {"max_concurrent_jobs": 10, "running": 0, "available": 10}
    _job(mock_host, "hang").launch()
    assert mock_host.get_capacity() == {"max_concurrent_jobs": 10, "running": 1, "available": 9}


# launch / get_status / harvest --------------------------------------------------------------


def test_launch_runs_a_quick_job_to_completion(mock_host: ExecutorHost, mock_executor: MockExecutor) -> None:
    job = _job(mock_host, "echo hi")
    assert job.launch() == "completed"
    assert (job.status, job.exit_code, job.attempts, job.is_terminal_status) == ("completed", 0, 1, True)
    assert job.started_at is not None and job.finished_at is not None
    assert job.runtime_duration is not None
    assert job.get_logs() == "hi\n"
    assert len(mock_executor.created) == 1


def test_launch_of_a_long_job_returns_running(mock_host: ExecutorHost, mock_executor: MockExecutor) -> None:
    job = _job(mock_host, "hang")
    assert job.launch() == "running"
    assert job.get_status() == "running"
    # Launching again never makes a second container.
    assert job.launch() == "running"
    assert mock_executor.created == [job.latest_execution.container_name]  # type: ignore[union-attr]


def test_launch_of_a_finished_job_is_refused(mock_host: ExecutorHost) -> None:
    job = _job(mock_host, "echo hi")
    job.launch()
    with pytest.raises(JobStateError, match="rerun"):
        job.launch()
    assert job.executions.count() == 1


def test_launch_of_an_unsaved_job_is_refused() -> None:
    with pytest.raises(JobStateError):
        ContainerJob(image="busybox").launch()


def test_get_status_and_harvest_follow_the_container(
    mock_host: ExecutorHost, mock_executor: MockExecutor, fake_time: FakeClock
) -> None:
    job = _job(mock_host, "sh -c 'echo working; stderr warn; sleep 5; exit 3'")
    assert job.launch() == "running"
    assert job.get_status() == "running"
    fake_time.advance(6)
    execution = job.harvest()
    assert isinstance(execution, ContainerExecution)
    assert (execution.status, execution.exit_code, execution.cleaned_up) == ("failed", 3, True)
    assert (execution.stdout, execution.stderr) == ("working\n", "warn\n")
    assert job.status == "failed" and job.failure_reason == "exit_code" and job.exit_code == 3
    assert mock_executor.list_managed("default") == []  # removed after harvesting


def test_harvest_before_any_attempt(mock_host: ExecutorHost) -> None:
    ExecutorHost.objects.filter(pk=mock_host.pk).update(is_active=False)
    job = ContainerJob.objects.create(image="busybox")
    assert job.harvest() is None


def test_resource_utilization_live_while_running(mock_host: ExecutorHost) -> None:
    job = _job(mock_host, "hang", memory_limit=64)
    job.launch()
    usage = job.resource_utilization
    assert usage["source"] == "live"
    assert isinstance(usage["memory_percent"], float) and isinstance(usage["cpu_percent"], float)
    assert usage["memory_limit_bytes"] == 64 * 1024 * 1024
    assert 0 < usage["memory_percent"] <= 100


# Logs ---------------------------------------------------------------------------------------


def test_get_logs_streams_and_tail(mock_host: ExecutorHost) -> None:
    job = _job(mock_host, "sh -c 'echo one; echo two; echo three; stderr oops'")
    job.launch()
    assert job.get_logs() == "one\ntwo\nthree\noops\n"
    assert job.get_logs(stream="stdout") == "one\ntwo\nthree\n"
    assert job.get_logs(stream="stderr") == "oops\n"
    assert job.get_logs(stream="stdout", tail=2) == "two\nthree\n"
    with pytest.raises(ValueError):
        job.get_logs(stream="both")


def test_get_logs_live_while_running(mock_host: ExecutorHost) -> None:
    job = _job(mock_host, "sh -c 'echo started; hang'")
    job.launch()
    assert job.status == "running"
    assert job.get_logs() == "started\n"
    assert job.latest_execution.stdout == ""  # type: ignore[union-attr]  # not recorded until the end


def test_get_logs_before_launch_is_empty(mock_host: ExecutorHost) -> None:
    assert _job(mock_host, "echo hi").get_logs() == ""


def test_execution_logs_info_and_stream(mock_host: ExecutorHost, mock_executor: MockExecutor) -> None:
    job = _job(mock_host, "sh -c 'echo out; stderr err; hang'")
    job.launch()
    execution = job.latest_execution
    assert execution is not None
    info = execution.get_container_info()
    assert info["container_name"] == execution.container_name
    assert (info["host"], info["executor_type"], info["status"]) == ("mock-1", "mock", "running")
    assert info["live"]["state"] == "running"
    assert list(execution.stream_logs()) == [("stdout", "out\n"), ("stderr", "err\n")]
    # Once finished and cleaned up: what was recorded, no live part.
    job.cancel()
    job.get_status()
    execution.refresh_from_db()
    assert execution.status == "cancelled" and execution.cleaned_up
    assert execution.logs == "out\nerr\n"
    assert list(execution.stream_logs()) == [("stdout", "out\n"), ("stderr", "err\n")]
    info = execution.get_container_info()
    assert info["live"] is None and info["status"] == "cancelled"


# cancel / rerun -----------------------------------------------------------------------------


def test_cancel_a_pending_job_is_immediate(mock_host: ExecutorHost) -> None:
    job = _job(mock_host, "echo hi")
    assert job.cancel(actor="tester") is True
    assert (job.status, job.failure_reason) == ("cancelled", "cancelled")
    assert job.cancel_requested_at is not None and job.finished_at is not None
    event = job.events.get()
    assert (event.from_status, event.to_status, event.actor) == ("pending", "cancelled", "tester")
    # Terminal: a second request changes nothing.
    assert job.cancel() is False
    assert job.events.count() == 1


def test_cancel_a_running_job_stops_its_container(
    mock_host: ExecutorHost, mock_executor: MockExecutor
) -> None:
    job = _job(mock_host, "hang")
    job.launch()
    assert job.cancel() is True
    assert job.status == "running" and job.cancel_requested_at is not None
    assert job.cancel() is False  # already requested
    assert job.get_status() == "cancelled"
    assert job.failure_reason == "cancelled"
    execution = job.latest_execution
    assert execution is not None and execution.reason == "cancelled"
    assert ("stop", execution.container_name) in mock_executor.calls
    assert list(job.events.values_list("to_status", flat=True)) == ["launching", "running", "", "cancelled"]


def test_rerun_is_refused_while_unfinished(mock_host: ExecutorHost) -> None:
    job = _job(mock_host, "hang")
    with pytest.raises(JobStateError):
        job.rerun()
    job.launch()
    with pytest.raises(JobStateError):
        job.rerun()
    assert ContainerJob.objects.count() == 1


def test_rerun_creates_a_linked_pending_copy(mock_host: ExecutorHost) -> None:
    job = _job(mock_host, "sh -c 'exit 2'", memory_limit=128, cpu_limit=0.5, max_retries=0, priority=3)
    job.launch()
    assert job.status == "failed"
    new = job.rerun(actor="tester")
    assert new.pk != job.pk and new.rerun_of_id == job.pk
    assert (new.status, new.attempts, new.exit_code, new.created_by) == ("pending", 0, None, "tester")
    fields = ("image", "command", "docker_host_id", "memory_limit", "cpu_limit", "priority")
    assert [getattr(new, f) for f in fields] == [getattr(job, f) for f in fields]
    assert list(job.reruns.all()) == [new]
    assert JobEvent.objects.filter(job=job, message__contains=f"job {new.pk}").exists()
    assert new.launch() == "failed"
