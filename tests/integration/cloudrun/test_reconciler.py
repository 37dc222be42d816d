"""Jobs on Cloud Run driven by the real reconciler, against the local fake of the Run Admin API."""

from __future__ import annotations

import time
from typing import Any

import pytest

from container_manager.models import ContainerJob, ExecutorHost
from executors import registry
from executors.cloudrun import job_id_for
from reconciler import api
from tests.fakes.cloudrun import FakeCloudRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def host(fake_cloudrun: FakeCloudRun) -> ExecutorHost:
    return ExecutorHost.objects.create(
        name="cloudrun-fake",
        executor_type="cloudrun",
        connection_string=fake_cloudrun.connection_string,
        executor_config=fake_cloudrun.executor_config(poll_interval=0.1),
    )


def make_job(host: ExecutorHost, command: str, **kw: Any) -> ContainerJob:
    return ContainerJob.objects.create(
        image="us-docker.pkg.dev/demo/app:1",
        command=command,
        docker_host=host,
        memory_limit=512,
        cpu_limit=1,
        **kw,
    )


def run_to_end(job: ContainerJob, timeout: float = 30) -> ContainerJob:
    job.launch()
    deadline = time.monotonic() + timeout
    while not job.is_terminal_status and time.monotonic() < deadline:
        time.sleep(0.05)
        job.get_status()
    assert job.is_terminal_status, f"job stuck in {job.status}"
    return job


def executions(fake: FakeCloudRun, job: ContainerJob, attempt: int) -> list[dict[str, Any]]:
    return fake.executions_of(job_id_for(f"cm-default-{job.pk}-{attempt}"))


def test_success_through_the_reconciler(host: ExecutorHost, fake_cloudrun: FakeCloudRun) -> None:
    job = run_to_end(make_job(host, "sh -c 'sleep 1; exit 0'"))
    assert (job.status, job.exit_code) == ("completed", 0)
    execution = job.executions.get()
    assert execution.container_id.startswith(host.connection_string)
    assert execution.cleaned_up
    assert fake_cloudrun.job(job_id_for(execution.container_name)) is None, "the Cloud Run job is deleted"


def test_failure_is_retried_by_the_reconciler(host: ExecutorHost, fake_cloudrun: FakeCloudRun) -> None:
    job = run_to_end(
        make_job(
            host,
            "sh -c 'sleep 0.5; exit 3'",
            max_retries=1,
            retry_backoff_seconds=0.1,
            retry_backoff_max_seconds=0.2,
        )
    )
    assert (job.status, job.failure_reason, job.exit_code, job.attempts) == ("failed", "exit_code", 3, 2)
    assert list(job.executions.values_list("attempt", "reason")) == [(1, "exit_code"), (2, "exit_code")]


def test_timeout_is_recorded_as_timeout(host: ExecutorHost) -> None:
    job = run_to_end(make_job(host, "hang", timeout_seconds=2))
    assert (job.status, job.failure_reason) == ("timeout", "timeout")


def test_cancel_cancels_the_execution(host: ExecutorHost, fake_cloudrun: FakeCloudRun) -> None:
    job = make_job(host, "hang")
    job.launch()
    assert job.status in ("launching", "running")
    job.cancel(actor="test")
    job = run_to_end(job)
    assert (job.status, job.failure_reason) == ("cancelled", "cancelled")


def test_restart_mid_execution_adopts_without_a_second_execution(
    host: ExecutorHost, fake_cloudrun: FakeCloudRun
) -> None:
    job = make_job(host, "sh -c 'sleep 2; exit 0'")
    job.launch()
    assert len(executions(fake_cloudrun, job, 1)) == 1
    # A new process: no cached executor, no cached reconciler.
    registry.forget()
    api.reset()
    job = run_to_end(job)
    assert job.status == "completed"
    assert fake_cloudrun.calls["RunJob"] == 1, "the restarted reconciler adopted the running execution"


def test_a_memory_kill_quoted_as_exit_code_0_fails_the_job_as_oom(
    host: ExecutorHost, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.message_style = "quoted"  # the condition message says "exit code: 0"
    job = run_to_end(make_job(host, "oom"))
    assert (job.status, job.failure_reason, job.exit_code) == ("failed", "oom", 137)
    assert job.executions.get().oom_killed


def test_permission_denied_keeps_the_job_waiting_with_a_clear_message(
    host: ExecutorHost, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.inject("CreateJob", 403, times=1000)
    job = make_job(host, "sh -c 'exit 0'")
    for _ in range(4):
        job.launch() if job.status == "pending" else job.get_status()
    job.refresh_from_db()
    assert not job.is_terminal_status, job.status  # a host problem: the job waits
    assert "iam.serviceAccounts.actAs" in job.executions.get().message
    fake_cloudrun.clear_injections()
    job = run_to_end(job)
    assert (job.status, job.exit_code) == ("completed", 0)


def test_provisioning_is_not_charged_to_the_timeout(host: ExecutorHost) -> None:
    """The task provisions for 4 s (20 fake seconds) and then runs 0.2 s, with a 3 s timeout.

    Counted from the launch, the reconciler would stop it while it provisions; counted from the
    task's start, as Cloud Run's own task timeout is, it completes.
    """
    job = make_job(host, "true", timeout_seconds=3, override_environment="FAKE_BEHAVIOUR=start=20;sleep=1")
    job = run_to_end(job, timeout=60)
    assert (job.status, job.exit_code) == ("completed", 0)
    attempt = job.executions.get()
    assert attempt.started_at is not None and job.started_at == attempt.started_at
    assert (attempt.started_at - attempt.created_at).total_seconds() >= 3.5, "started when the task did"
