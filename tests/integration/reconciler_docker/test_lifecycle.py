"""Jobs driven through the real reconciler step on a real Docker daemon, one outcome per test.

These use the model methods (``job.launch()``, ``job.get_status()``, ``job.cancel()``), which
run ``Reconciler.reconcile`` in this process exactly as a daemon worker would, in real time:
what the unit tests show against the mock, shown here against ``dockerd`` itself (real exit
codes, real OOM kills, real stop signals, real log streams, real ``docker inspect``).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from container_manager.conf import get_policy
from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost
from executors.types import LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_JOB, LABEL_MANAGED
from tests.integration.reconciler_docker.support import (
    MIB,
    containers_of,
    docker_api,
    drive,
    make_job,
    transitions,
    wait_until,
)

pytestmark = pytest.mark.docker


def only_execution(job: ContainerJob) -> ContainerExecution:
    return job.executions.get()


def test_success_records_output_history_and_removes_the_container(
    docker_host: ExecutorHost, instance: str
) -> None:
    job = make_job(docker_host, "sh -c 'echo hello from docker; stderr a warning; sleep 0.5; echo bye'")
    assert job.launch() in ("launching", "running")
    drive(job)
    assert (job.status, job.exit_code, job.failure_reason) == ("completed", 0, "")
    execution = only_execution(job)
    assert execution.stdout == "hello from docker\nbye\n"
    assert execution.stderr == "a warning\n"
    assert (execution.stdout_truncated, execution.stderr_truncated) == (False, False)
    assert execution.container_name == f"cm-{instance}-{job.pk}-1"
    assert len(execution.container_id) == 64  # Docker's id, recorded at launch
    # The container's own start and finish times, as Docker reported them.
    assert execution.started_at is not None and execution.finished_at is not None
    run = (execution.finished_at - execution.started_at).total_seconds()
    assert 0.4 <= run < 10, run
    assert execution.cleaned_up and containers_of(instance) == []
    moves = transitions(job)
    assert moves[0] == ("pending", "launching") and moves[-1][1] == "completed"
    assert ("launching", "running") in moves
    assert job.get_logs() == "hello from docker\nbye\na warning\n"


def test_non_zero_exit_fails_with_its_exit_code_and_stderr(docker_host: ExecutorHost, instance: str) -> None:
    job = make_job(docker_host, "sh -c 'echo about to fail; echo it broke >&2; exit 3'", max_retries=0)
    job.launch()
    drive(job)
    assert (job.status, job.exit_code, job.failure_reason) == ("failed", 3, "exit_code")
    execution = only_execution(job)
    assert (execution.status, execution.reason, execution.exit_code) == ("failed", "exit_code", 3)
    assert execution.stdout == "about to fail\n" and execution.stderr == "it broke\n"
    assert execution.oom_killed is False
    assert containers_of(instance) == []


def test_oom_kill_is_recorded_as_oom(docker_host: ExecutorHost, instance: str) -> None:
    job = make_job(docker_host, "sh -c 'echo allocating; oom'", memory_limit=16, max_retries=0)
    job.launch()
    drive(job, timeout=60)
    assert (job.status, job.failure_reason, job.exit_code) == ("failed", "oom", 137)
    execution = only_execution(job)
    assert execution.oom_killed is True and execution.reason == "oom"
    assert execution.stdout == "allocating\n"
    assert containers_of(instance) == []


def test_timeout_stops_the_container_and_keeps_its_logs(docker_host: ExecutorHost, instance: str) -> None:
    # ``sleep`` as PID 1 ignores SIGTERM: the stop has to escalate to SIGKILL after the grace.
    job = make_job(docker_host, "sh -c 'echo started; stderr still going; exec sleep 60'", timeout_seconds=1)
    job.launch()
    started = time.monotonic()
    drive(job, timeout=30)
    assert time.monotonic() - started < 15
    assert (job.status, job.failure_reason) == ("timeout", "timeout")
    execution = only_execution(job)
    assert (execution.status, execution.reason) == ("timeout", "timeout")
    assert execution.stdout == "started\n" and execution.stderr == "still going\n"
    assert execution.exit_code == 137  # killed after the grace period, as Docker recorded it
    assert execution.started_at is not None and execution.finished_at is not None
    assert (execution.finished_at - execution.started_at).total_seconds() >= 1
    assert execution.cleaned_up and containers_of(instance) == []


def test_cancel_of_a_running_job_stops_it_and_keeps_its_logs(
    docker_host: ExecutorHost, instance: str
) -> None:
    job = make_job(docker_host, "sh -c 'echo working; exec hang'")
    job.launch()
    drive(job, until="running")
    wait_until(lambda: "working" in job.get_logs(), 10, "the job's first output")
    assert job.cancel(actor="tester") is True
    assert job.status == "running"  # a request: the reconciler does the stopping
    drive(job, timeout=30)
    assert (job.status, job.failure_reason) == ("cancelled", "cancelled")
    execution = only_execution(job)
    assert execution.status == "cancelled" and execution.stdout == "working\n"
    assert execution.exit_code in (137, 143)
    assert containers_of(instance) == []
    history = list(job.events.order_by("at", "id").values_list("to_status", "actor", "reason"))
    assert ("", "tester", "cancelled") in history  # the request, then the reconciler's transition
    assert history[-1][0] == "cancelled"


def test_retry_with_backoff_then_success(docker_host: ExecutorHost, instance: str) -> None:
    # The command fails until a wall-clock second comes: attempt 1 surely runs before it, and
    # the backoff (1.5-3 s per retry) brings a later attempt past it.
    succeed_from = int(time.time()) + 3
    command = f"sh -c 'if [ $(date +%s) -lt {succeed_from} ]; then echo too early >&2; exit 1; fi; echo ok'"
    job = make_job(
        docker_host, command, max_retries=4, retry_backoff_seconds=3.0, retry_backoff_max_seconds=3.0
    )
    job.launch()
    drive(job, timeout=40)
    assert (job.status, job.exit_code) == ("completed", 0)
    executions = list(job.executions.order_by("attempt"))
    assert 2 <= len(executions) == job.attempts <= 5
    *failed, last = executions
    assert all((e.status, e.exit_code, e.stderr) == ("failed", 1, "too early\n") for e in failed)
    assert (last.status, last.stdout) == ("completed", "ok\n")
    for before, after in itertools.pairwise(executions):
        assert before.finished_at is not None
        gap = (after.created_at - before.finished_at).total_seconds()
        assert gap >= 1.5 - 0.1, f"attempt {after.attempt} started {gap:.2f}s after the previous one"
    moves = transitions(job)
    assert moves.count(("running", "retrying")) + moves.count(("launching", "retrying")) == len(failed)
    assert moves.count(("retrying", "launching")) == len(failed)
    assert all(e.cleaned_up for e in executions) and containers_of(instance) == []


def test_limits_and_hardening_are_visible_in_docker_inspect(docker_host: ExecutorHost, instance: str) -> None:
    job = make_job(docker_host, "hang", memory_limit=48, cpu_limit=0.25)
    job.launch()
    drive(job, until="running")
    execution = only_execution(job)
    api = docker_api()
    try:
        data = api.inspect_container(execution.container_name)
    finally:
        api.close()
    host = data["HostConfig"]
    assert host["Memory"] == 48 * MIB and host["MemorySwap"] == 48 * MIB
    assert host["NanoCpus"] == 250_000_000
    assert host["PidsLimit"] == get_policy().pids_limit
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Privileged"] is False and host["NetworkMode"] != "host"
    assert not host.get("Binds")
    assert data["Config"]["User"] == get_policy().default_user
    assert data["Id"] == execution.container_id
    labels = data["Config"]["Labels"]
    assert labels[LABEL_MANAGED] == "true" and labels[LABEL_INSTANCE] == instance
    assert (labels[LABEL_JOB], labels[LABEL_ATTEMPT]) == (str(job.pk), "1")
    # The job row records the limits in force for this attempt.
    assert (job.memory_limit, job.cpu_limit) == (48, 0.25)
    job.cancel()
    drive(job)
    assert job.status == "cancelled" and containers_of(instance) == []


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def test_a_big_log_is_recorded_as_a_bounded_tail(
    docker_host: ExecutorHost, instance: str, settings: Any
) -> None:
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "LOG_TAIL_BYTES": 16 * 1024}
    from reconciler import api

    api.reset()
    total = 20 * MIB
    line = "0123456789abcdef" * 8  # 128-byte lines (+ newline)
    job = make_job(docker_host, f"sh -c 'yes {line} | head -c {total}; echo the end >&2'")
    job.launch()
    wait_until(
        lambda: not [c for c in containers_of(instance) if c["State"] == "running"],
        60,
        "the log writer to exit",
    )
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak RSS to the current RSS
    before = _vm_kib("VmRSS")
    drive(job, timeout=60)  # reads the 20 MB log while recording the attempt
    grown = _vm_kib("VmHWM") - before
    assert job.status == "completed"
    execution = only_execution(job)
    assert len(execution.stdout) == 16 * 1024 and execution.stdout_truncated is True
    expected = ((line + "\n") * (total // (len(line) + 1) + 1))[:total]
    assert execution.stdout == expected[-16 * 1024 :]
    assert execution.stderr == "the end\n" and execution.stderr_truncated is False
    assert grown < 40 * 1024, f"recording a {total // MIB} MB log grew this process by {grown} KiB"


def test_a_container_removed_behind_our_back_is_recorded_as_lost(
    docker_host: ExecutorHost, instance: str
) -> None:
    job = make_job(docker_host, "hang", max_retries=0)
    job.launch()
    drive(job, until="running")
    execution = only_execution(job)
    api = docker_api()
    try:
        api.remove_container(execution.container_name, force=True)
    finally:
        api.close()
    drive(job, timeout=20)
    assert (job.status, job.failure_reason) == ("failed", "lost")
    execution.refresh_from_db()
    assert (execution.status, execution.reason) == ("failed", "lost")
    assert "disappeared" in execution.message
    assert job.attempts == 1  # never created again under the same attempt


def test_a_lost_container_is_retried_as_a_new_attempt(docker_host: ExecutorHost, instance: str) -> None:
    job = make_job(docker_host, "sh -c 'sleep 2; echo second try'", max_retries=1, retry_backoff_seconds=0.5)
    job.launch()
    drive(job, until="running")
    api = docker_api()
    try:
        api.remove_container(only_execution(job).container_name, force=True)
    finally:
        api.close()
    drive(job, timeout=30)
    assert job.status == "completed" and job.attempts == 2
    first, second = job.executions.order_by("attempt")
    assert (first.status, first.reason) == ("failed", "lost")
    assert (second.status, second.stdout) == ("completed", "second try\n")
    assert second.container_name == f"cm-{instance}-{job.pk}-2"
    assert containers_of(instance) == []
