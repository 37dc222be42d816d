"""The daemon's sources, workers and modes, on the mock executor (threads, real time)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError, connection

from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost
from container_manager.states import JobStatus
from executors.mock import MockExecutor
from executors.types import LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_JOB, LABEL_MANAGED, ContainerSpec
from reconciler.daemon import Daemon, DaemonOptions
from reconciler.outcome import RequeueAfter
from tests.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TERMINAL = ["completed", "failed", "timeout", "cancelled"]


def job(command: str, **kw: Any) -> ContainerJob:
    return ContainerJob.objects.create(image="busybox", command=command, memory_limit=64, cpu_limit=0.5, **kw)


@contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    """The daemon runs in a thread for the block, and is stopped (and joined) after it."""
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    assert daemon.ready.wait(5)
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(10)


@pytest.fixture
def host() -> ExecutorHost:
    return ExecutorHost.objects.create(name="mock-d", executor_type="mock", max_concurrent_jobs=20)


def test_until_idle_runs_every_job_to_the_end_and_exits(host: ExecutorHost) -> None:
    jobs = [job("sh -c 'echo one; sleep 0.2'") for _ in range(6)] + [job("exit 2"), job("oom")]
    daemon = Daemon(DaemonOptions(workers=3, until_idle=True, poll_seconds=0.05, resync_seconds=1))
    thread = threading.Thread(target=daemon.run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "--until-idle must exit once nothing is unfinished"
    statuses = {j.pk: ContainerJob.objects.get(pk=j.pk).status for j in jobs}
    assert list(statuses.values()).count("completed") == 6
    assert sorted(ContainerJob.objects.filter(status="failed").values_list("failure_reason", flat=True)) == [
        "exit_code",
        "oom",
    ]
    assert ContainerExecution.objects.filter(cleaned_up=False).count() == 0


def test_once_does_one_pass_and_leaves_long_jobs_running(host: ExecutorHost) -> None:
    quick, slow = job("echo quick"), job("sleep 30")
    assert Daemon(DaemonOptions(once=True)).run() == 0
    assert ContainerJob.objects.get(pk=quick.pk).status == JobStatus.COMPLETED
    assert ContainerJob.objects.get(pk=slow.pk).status == JobStatus.RUNNING


def test_rows_inserted_by_sql_are_picked_up_while_running(host: ExecutorHost) -> None:
    daemon = Daemon(DaemonOptions(workers=2, poll_seconds=0.05, resync_seconds=60))
    with running(daemon):
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO container_manager_containerjob (image, command) VALUES (%s, %s)",
                ["busybox", "echo sql"],
            )
        assert wait_until(lambda: ContainerJob.objects.filter(status="completed").count() == 1)
        assert ContainerExecution.objects.get().stdout == "sql\n"


def test_events_finish_jobs_long_before_the_resync(host: ExecutorHost) -> None:
    """The mock pushes 'die' events; with a 60 s resync only events can explain a fast finish."""
    daemon = Daemon(DaemonOptions(workers=2, poll_seconds=0.05, resync_seconds=60))
    with running(daemon):
        j = job("sleep 0.5")
        assert wait_until(lambda: ContainerJob.objects.get(pk=j.pk).status == "running")
        assert wait_until(lambda: ContainerJob.objects.get(pk=j.pk).status == "completed", timeout=5)


def test_lost_events_still_converge_through_resync(host: ExecutorHost) -> None:
    mock = host.get_executor()
    assert isinstance(mock, MockExecutor)
    mock.drop_events = True
    daemon = Daemon(DaemonOptions(workers=2, poll_seconds=0.05, resync_seconds=0.5))
    with running(daemon):
        j = job("sleep 0.3", timeout_seconds=3600)
        assert wait_until(lambda: ContainerJob.objects.get(pk=j.pk).status == "completed", timeout=10)


def test_cancel_request_reaches_a_running_job(host: ExecutorHost) -> None:
    daemon = Daemon(DaemonOptions(workers=2, poll_seconds=0.05, resync_seconds=60))
    with running(daemon):
        j = job("hang")
        assert wait_until(lambda: ContainerJob.objects.get(pk=j.pk).status == "running")
        ContainerJob.objects.get(pk=j.pk).cancel(actor="test")
        assert wait_until(lambda: ContainerJob.objects.get(pk=j.pk).status == "cancelled")


def test_orphans_are_removed_after_the_grace_period(host: ExecutorHost, settings: Any) -> None:
    settings.CONTAINER_MANAGER = {"ORPHAN_GRACE_SECONDS": 0.2}
    mock = host.get_executor()
    labels = {LABEL_MANAGED: "true", LABEL_INSTANCE: "default", LABEL_JOB: "999", LABEL_ATTEMPT: "1"}
    mock.launch(
        ContainerSpec(
            name="cm-default-999-1", image="busybox", command=("hang",), labels=tuple(labels.items())
        )
    )
    foreign = {**labels, LABEL_INSTANCE: "someone-else"}
    mock.launch(
        ContainerSpec(name="cm-other-1-1", image="busybox", command=("hang",), labels=tuple(foreign.items()))
    )
    daemon = Daemon(DaemonOptions(once=True))
    waiting = daemon.hosts.reconcile(host.pk)
    assert {c.name for c in mock.list_managed("default")} == {"cm-default-999-1"}, "grace first"
    assert isinstance(waiting, RequeueAfter) and 0 < waiting.seconds <= 0.2, "the host step comes back for it"
    time.sleep(0.25)
    daemon.hosts.reconcile(host.pk)
    assert mock.list_managed("default") == []
    assert [c.name for c in mock.list_managed("someone-else")] == ["cm-other-1-1"], "not ours: untouched"


def test_the_census_hands_a_left_container_back_to_a_job_the_daemon_finished(host: ExecutorHost) -> None:
    """A finished attempt whose container is still there (its removal was lost) goes back to its
    job from a fresh read, even when this daemon finished the job itself and kept it as finished."""
    daemon = Daemon(DaemonOptions(workers=1, resync_seconds=3600))
    j = job("echo done")
    daemon.reconciler.claim()
    daemon.reconciler.reconcile(j.pk)  # launched; the mock's 'echo' has exited by the next look
    daemon.reconciler.reconcile(j.pk)
    daemon.cleaner.run()
    execution = ContainerExecution.objects.get(job=j)
    assert ContainerJob.objects.get(pk=j.pk).status == "completed" and execution.cleaned_up
    # The container comes back, as if its removal had been lost.
    ContainerExecution.objects.filter(pk=execution.pk).update(cleaned_up=False)
    labels = {LABEL_MANAGED: "true", LABEL_INSTANCE: "default", LABEL_JOB: str(j.pk), LABEL_ATTEMPT: "1"}
    mock = host.get_executor()
    mock.launch(
        ContainerSpec(
            name=execution.container_name, image="busybox", command=("hang",), labels=tuple(labels.items())
        )
    )
    daemon.hosts.reconcile(host.pk)
    while (key := daemon.queue.get(timeout=1.0)) is not None:  # the cleanup key comes after a delay
        daemon._process(key)
        daemon.queue.done(key)
    assert ContainerExecution.objects.get(pk=execution.pk).cleaned_up
    assert mock.list_managed("default") == []


def test_live_attempts_are_never_treated_as_orphans(host: ExecutorHost, settings: Any) -> None:
    settings.CONTAINER_MANAGER = {"ORPHAN_GRACE_SECONDS": 0}
    j = job("hang")
    Daemon(DaemonOptions(once=True)).run()
    assert ContainerJob.objects.get(pk=j.pk).status == "running"
    daemon = Daemon(DaemonOptions(once=True))
    daemon.hosts.reconcile(host.pk)
    daemon.hosts.reconcile(host.pk)
    assert len(host.get_executor().list_managed("default")) == 1


def test_host_filter_leaves_other_hosts_jobs_alone(host: ExecutorHost) -> None:
    other = ExecutorHost.objects.create(name="mock-other", executor_type="mock")
    mine, theirs = job("echo a", docker_host=host), job("echo b", docker_host=other)
    Daemon(DaemonOptions(once=True, host_names=("mock-d",))).run()
    assert ContainerJob.objects.get(pk=mine.pk).status == "completed"
    assert ContainerJob.objects.get(pk=theirs.pk).status == "pending"


def test_a_failing_step_is_retried_with_backoff_and_does_not_kill_the_daemon(
    host: ExecutorHost, monkeypatch: Any
) -> None:
    daemon = Daemon(DaemonOptions(workers=1, poll_seconds=0.05, resync_seconds=60))
    calls: list[int] = []
    original = daemon.reconciler.reconcile

    def flaky(job_id: int) -> float | None:
        calls.append(job_id)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return original(job_id)

    monkeypatch.setattr(daemon.reconciler, "reconcile", flaky)
    with running(daemon):
        j = job("echo survive")
        assert wait_until(lambda: ContainerJob.objects.get(pk=j.pk).status == "completed", timeout=10)
    assert calls[0] == j.pk and len(calls) >= 2


def test_a_lost_database_session_is_one_warning_line_and_a_bug_keeps_its_traceback(
    host: ExecutorHost, monkeypatch: Any
) -> None:
    """A paused replica whose session the server ended must not fill its log with tracebacks."""
    from reconciler import daemon as daemon_module

    daemon = Daemon(DaemonOptions(workers=1, poll_seconds=0.05, resync_seconds=60))
    raised: list[Exception] = [
        OperationalError("terminating connection due to idle-in-transaction timeout"),
        RuntimeError("a bug"),
    ]
    original = daemon.reconciler.reconcile

    def failing_twice(job_id: int) -> Any:
        if raised:
            raise raised.pop(0)
        return original(job_id)

    monkeypatch.setattr(daemon.reconciler, "reconcile", failing_twice)
    calls: list[tuple[str, str, dict[str, Any]]] = []

    class Recorder:  # the daemon's logger, whatever structlog's configuration at this point
        def __getattr__(self, level: str) -> Any:
            return lambda event, **kw: calls.append((level, event, kw))

    monkeypatch.setattr(daemon_module, "log", Recorder())
    with running(daemon):
        j = job("echo survive")
        assert wait_until(lambda: ContainerJob.objects.get(pk=j.pk).status == "completed", timeout=10)
    failed = [(level, event, kw) for level, event, kw in calls if event.startswith("reconcile failed")]
    # ``exception`` logs the traceback; ``warning`` logs only the error's text.
    assert [(level, event) for level, event, _ in failed] == [
        ("warning", "reconcile failed: database unavailable"),
        ("exception", "reconcile failed"),
    ]
    assert "idle-in-transaction" in failed[0][2]["error"]


def test_a_job_whose_step_keeps_failing_is_failed_and_the_others_go_on(
    host: ExecutorHost, monkeypatch: Any
) -> None:
    from reconciler import daemon as daemon_module

    monkeypatch.setattr(daemon_module, "STEP_RETRY_BASE_SECONDS", 0.01)
    daemon = Daemon(DaemonOptions(workers=2, poll_seconds=0.05, resync_seconds=60))
    cursed = job("hang")
    original = daemon.reconciler.reconcile

    def broken_for_one(job_id: int) -> Any:
        if job_id == cursed.pk and ContainerJob.objects.get(pk=job_id).status == "running":
            raise RuntimeError("a bug that only this job meets")
        return original(job_id)

    monkeypatch.setattr(daemon.reconciler, "reconcile", broken_for_one)
    with running(daemon):
        fine = job("echo fine")
        assert wait_until(lambda: ContainerJob.objects.get(pk=fine.pk).status == "completed", timeout=10)
        assert wait_until(lambda: ContainerJob.objects.get(pk=cursed.pk).status == "running", timeout=10)
        daemon.enqueue([cursed.pk])  # as an event or the resync would
        assert wait_until(lambda: ContainerJob.objects.get(pk=cursed.pk).status == "failed", timeout=30)
        assert wait_until(lambda: ContainerExecution.objects.get(job_id=cursed.pk).cleaned_up, timeout=10)
    cursed.refresh_from_db()
    assert cursed.failure_reason == "reconcile_error"
    assert "RuntimeError" in cursed.status_message and "5 times" in cursed.status_message
    assert host.get_executor().list_managed("default") == [], "its container was removed"


def test_until_idle_leaves_jobs_scheduled_for_later(host: ExecutorHost) -> None:
    from datetime import timedelta

    from django.utils import timezone

    now_job = job("echo now")
    later = job("echo tomorrow", run_after=timezone.now() + timedelta(days=1))
    daemon = Daemon(DaemonOptions(workers=1, until_idle=True, poll_seconds=0.05, resync_seconds=1))
    thread = threading.Thread(target=daemon.run)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "a job due tomorrow must not keep --until-idle running"
    assert ContainerJob.objects.get(pk=now_job.pk).status == "completed"
    assert ContainerJob.objects.get(pk=later.pk).status == "pending"


def _subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        CONTAINER_MANAGER_HOME=str(tmp_path),
        PYTHONUNBUFFERED="1",
    )
    return env


def _cli(tmp_path: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "container_manager.cli", *args],
        env=_subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


@pytest.fixture
def file_db(tmp_path: Path) -> Path:
    assert _cli(tmp_path, "migrate", "-v0").returncode == 0
    script = (
        "from container_manager.models import ExecutorHost, ContainerJob\n"
        "ExecutorHost.objects.create(name='m', executor_type='mock')\n"
        "ContainerJob.objects.create(image='busybox', command='hang', memory_limit=64)\n"
    )
    done = _cli(tmp_path, "shell", "-c", script)
    assert done.returncode == 0, done.stderr
    return tmp_path


def test_sigterm_drains_and_exits_cleanly(file_db: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "container_manager.cli",
            "process_jobs",
            "--metrics-port",
            "0",
            "--poll-interval",
            "0.1",
            "--log-format",
            "json",
        ],
        env=_subprocess_env(file_db),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        status: list[str] = []
        while time.monotonic() < deadline and status != ["running"]:
            status = (
                _cli(
                    file_db,
                    "shell",
                    "-c",
                    "from container_manager.models import ContainerJob;"
                    "print(ContainerJob.objects.get().status)",
                )
                .stdout.strip()
                .splitlines()[-1:]
            )
            time.sleep(0.2)
        assert status == ["running"]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "daemon stopped" in stderr
    assert "Traceback" not in stderr


def test_second_signal_forces_exit(file_db: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal, sys, time\n"
            "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'container_manager.settings')\n"
            "import django; django.setup()\n"
            "from reconciler.wiring import install_signal_handlers\n"
            "class Stuck:\n"
            "    def request_stop(self): pass\n"
            "install_signal_handlers(Stuck())\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n",
        ],
        env=_subprocess_env(file_db),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert proc.poll() is None, "the first signal only asks for a graceful stop"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 128 + signal.SIGTERM


class NoTransactionMock(MockExecutor):
    """Fails any executor call made while the calling thread holds a database transaction."""

    violations: list[str]

    def _call(self, verb: str, name: str) -> None:
        from django.db import connection as thread_connection

        if thread_connection.in_atomic_block:
            self.violations.append(verb)
        super()._call(verb, name)


def test_no_transaction_is_held_across_executor_calls(host: ExecutorHost) -> None:
    spy = NoTransactionMock("spy")
    spy.violations = []
    jobs = [
        job("echo a"),
        job("exit 3", max_retries=1, retry_backoff_seconds=0.05),
        job("hang", timeout_seconds=1),
        job("oom"),
    ]
    daemon = Daemon(
        DaemonOptions(workers=2, until_idle=True, poll_seconds=0.05, resync_seconds=0.5),
        executor_for=lambda h: spy,
    )
    thread = threading.Thread(target=daemon.run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert all(ContainerJob.objects.get(pk=j.pk).is_terminal_status for j in jobs)
    assert {verb for verb, _ in spy.calls} >= {"launch", "inspect", "logs", "remove", "stop"}
    assert spy.violations == []


def test_the_transaction_check_can_fail(host: ExecutorHost) -> None:
    from django.db import transaction

    spy = NoTransactionMock("spy")
    spy.violations = []
    with transaction.atomic():
        spy.inspect("anything")
    assert spy.violations == ["inspect"]


def test_a_database_error_in_the_poller_does_not_stop_pickup(host: ExecutorHost, monkeypatch: Any) -> None:
    from django.db import OperationalError

    from container_manager.querysets import ContainerJobQuerySet

    original = ContainerJobQuerySet.due
    failures = {"left": 2}

    def flaky_due(self: Any, now: Any = None) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("server closed the connection unexpectedly")
        return original(self, now)

    monkeypatch.setattr(ContainerJobQuerySet, "due", flaky_due)
    daemon = Daemon(DaemonOptions(workers=1, poll_seconds=0.05, resync_seconds=60))
    with running(daemon):
        assert wait_until(lambda: failures["left"] == 0, timeout=5), "the poller keeps polling after errors"
        time.sleep(0.2)  # the start-up resync has passed: only the poller can pick the next job up
        j = job("echo after the outage")
        assert wait_until(lambda: ContainerJob.objects.get(pk=j.pk).status == "completed", timeout=10)
        assert not daemon.stop_event.is_set()


def test_a_crashed_thread_stops_the_daemon_with_a_failure_code(host: ExecutorHost) -> None:
    daemon = Daemon(DaemonOptions(workers=1, poll_seconds=0.05, resync_seconds=60))

    def broken_worker() -> None:
        raise RuntimeError("worker bug")

    daemon._worker_loop = broken_worker  # type: ignore[method-assign]
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()))
    thread.start()
    thread.join(20)
    assert result == [1]


def test_claim_takes_only_what_free_slots_can_run_in_a_few_statements(host: ExecutorHost) -> None:
    from django.test.utils import CaptureQueriesContext

    from reconciler.keys import CLAIM

    ExecutorHost.objects.filter(pk=host.pk).update(max_concurrent_jobs=2)
    full = ExecutorHost.objects.create(name="full", executor_type="mock", max_concurrent_jobs=1)
    busy = job("hang", docker_host=full)
    Daemon(DaemonOptions(once=True)).run()
    assert ContainerJob.objects.get(pk=busy.pk).status == "running"
    pinned_to_full = [job("echo p", docker_host=full, priority=10) for _ in range(3)]
    unpinned = [job("echo u") for _ in range(5)]
    daemon = Daemon(DaemonOptions(workers=1))
    daemon.poll()
    assert daemon.queue.get(timeout=0) == CLAIM, "polling asks for a claim; it reads no job itself"
    with CaptureQueriesContext(connection) as claim:
        outcome = daemon._process(CLAIM)
    daemon.queue.done(CLAIM)
    assert not isinstance(outcome, RequeueAfter), "every free slot is taken: the next one to free asks again"
    queued = []
    while (key := daemon.queue.get(timeout=0)) is not None:
        queued.append(key)
    assert not set(queued) & {j.pk for j in pinned_to_full}, "a full host's jobs wait without costing steps"
    assert queued == [j.pk for j in unpinned[:2]], "as many as the free slots, oldest first"
    launching = ContainerJob.objects.filter(status="launching").values_list("pk", flat=True)
    assert sorted(launching) == [j.pk for j in unpinned[:2]]
    # Lock the hosts, pick the due jobs, one UPDATE, one history INSERT, one attempt INSERT; SQLite
    # also lists its BEGIN IMMEDIATE and COMMIT.
    statements = [q["sql"][:50] for q in claim.captured_queries]
    assert len(statements) <= 7, "\n".join(statements)
    # A batch bounded by its size, not by the free slots: more may be claimable at once.
    ExecutorHost.objects.filter(pk=host.pk).update(max_concurrent_jobs=10)
    claimed = daemon.reconciler.claim(limit=2)
    assert len(claimed.snapshots) == 2 and claimed.more
