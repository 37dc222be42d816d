"""The executor contract: what the reconciler relies on, checked on the mock, on real Docker and on
Cloud Run (its real client against the suite's fake of the Run Admin API).

Commands are written in the script language of ``executors.script``, which the mock and the
Cloud Run fake read and the busybox test image speaks (``echo``, ``sleep``, ``exit``, plus the
image's ``stderr`` and ``oom`` helpers), so one command means the same thing on every backend.
Differences that are real are stated where they occur: a stopped busybox exits 137 because
PID 1 ignores SIGTERM, the mock and a cancelled Cloud Run task report 143; Cloud Run's lists
lag behind its writes (``listing`` waits for them there); Cloud Run pushes no events.
"""

from __future__ import annotations

import threading
import time

import pytest

from executors.exceptions import InvalidSpec
from executors.types import ContainerState, EventKind, ExecutorEvent
from tests.contract.conftest import Backend, listing
from tests.integration.docker.support import make_spec, wait_for


def test_launch_runs_to_completion_and_captures_stdout(backend: Backend) -> None:
    ex = backend.executor
    spec = make_spec(backend.instance, "echo hello contract")
    launched = ex.launch(spec)
    assert launched.exists and launched.container_id
    assert launched.state in (ContainerState.RUNNING, ContainerState.EXITED)

    done = wait_for(ex, spec.name)
    assert done.exit_code == 0
    assert done.oom_killed is False
    assert done.container_id == launched.container_id
    assert done.started_at is not None and done.finished_at is not None
    assert done.finished_at >= done.started_at
    assert done.labels["container_manager.instance"] == backend.instance

    tail = ex.logs(spec.name)
    assert tail.stdout == "hello contract\n"
    assert tail.stderr == ""
    assert not tail.stdout_truncated and not tail.stderr_truncated


def test_nonzero_exit_code_and_separate_stderr(backend: Backend) -> None:
    ex = backend.executor
    spec = make_spec(backend.instance, "echo out; stderr something failed; sleep 0.2; exit 3")
    ex.launch(spec)
    done = wait_for(ex, spec.name)
    assert done.state is ContainerState.EXITED
    assert done.exit_code == 3
    tail = ex.logs(spec.name)
    assert tail.stdout == "out\n"
    assert tail.stderr == "something failed\n"


def test_launch_is_idempotent(backend: Backend) -> None:
    ex = backend.executor
    spec = make_spec(backend.instance, "sleep 1")
    first = ex.launch(spec)
    second = ex.launch(spec)
    assert second.container_id == first.container_id
    assert [o.name for o in listing(backend, backend.instance, [spec.name])] == [spec.name]

    # A launch retried after the container finished adopts it; it is not run a second time.
    done = wait_for(ex, spec.name)
    third = ex.launch(spec)
    assert third.container_id == first.container_id
    assert third.state is ContainerState.EXITED
    assert third.started_at == done.started_at
    assert len(listing(backend, backend.instance, [spec.name])) == 1


def test_stop_running_container_with_grace(backend: Backend) -> None:
    ex = backend.executor
    spec = make_spec(backend.instance, "sleep 30")
    ex.launch(spec)
    # Running means the program started (a Cloud Run execution may still be provisioning).
    wait_for(ex, spec.name, lambda o: o.state is ContainerState.RUNNING and o.started_at is not None)
    started = time.monotonic()
    ex.stop(spec.name, grace_seconds=1)
    done = wait_for(ex, spec.name, timeout=10)
    assert time.monotonic() - started < 8
    assert done.state is ContainerState.EXITED
    assert done.exit_code in (137, 143)  # SIGKILL after the grace period, or SIGTERM honoured
    assert done.oom_killed is False
    ex.stop(spec.name, grace_seconds=1)  # stopping a stopped container is fine


def test_remove_then_inspect_is_not_found(backend: Backend) -> None:
    ex = backend.executor
    spec = make_spec(backend.instance, "echo bye")
    ex.launch(spec)
    wait_for(ex, spec.name)
    ex.remove(spec.name)
    gone = ex.inspect(spec.name)
    assert gone.state is ContainerState.NOT_FOUND
    assert not gone.exists
    # Absent containers are not errors for the cleanup verbs.
    ex.remove(spec.name)
    ex.stop(spec.name, grace_seconds=0)
    assert ex.logs(spec.name).stdout == ""
    assert listing(backend, backend.instance, []) == []


def test_remove_running_container(backend: Backend) -> None:
    ex = backend.executor
    spec = make_spec(backend.instance, "sleep 30")
    ex.launch(spec)
    ex.remove(spec.name)
    assert ex.inspect(spec.name).state is ContainerState.NOT_FOUND


def test_list_managed_filters_by_instance(backend: Backend) -> None:
    ex = backend.executor
    other = backend.instance + "-other"
    mine = [make_spec(backend.instance, "sleep 0.3", job=job) for job in (1, 2)]
    theirs = make_spec(other, "sleep 0.3", job=3)
    try:
        for spec in [*mine, theirs]:
            ex.launch(spec)
        listed = listing(backend, backend.instance, [s.name for s in mine])
        assert sorted(o.name for o in listed) == sorted(s.name for s in mine)
        assert all(o.labels["container_manager.instance"] == backend.instance for o in listed)
        assert all(o.container_id for o in listed)
        assert [o.name for o in listing(backend, other, [theirs.name])] == [theirs.name]
        for spec in mine:
            wait_for(ex, spec.name)
        assert {o.state for o in ex.list_managed(backend.instance)} == {ContainerState.EXITED}
    finally:
        ex.remove(theirs.name)


def test_logs_tail_truncation_flags(backend: Backend) -> None:
    ex = backend.executor
    spec = make_spec(backend.instance, "echo 0123456789abcdef; stderr err")
    ex.launch(spec)
    wait_for(ex, spec.name)
    tail = ex.logs(spec.name, max_bytes=8)
    assert tail.stdout == "9abcdef\n"
    assert tail.stdout_truncated is True
    assert tail.stderr == "err\n"
    assert tail.stderr_truncated is False
    exact = ex.logs(spec.name, max_bytes=17)
    assert exact.stdout == "0123456789abcdef\n"
    assert exact.stdout_truncated is False


def test_oom_kill_is_reported(backend: Backend) -> None:
    ex = backend.executor
    spec = make_spec(backend.instance, ("oom",), memory_mb=16)
    ex.launch(spec)
    done = wait_for(ex, spec.name, timeout=30)
    assert done.exit_code == 137
    assert done.oom_killed is True


def test_inspect_unknown_name_is_not_found(backend: Backend) -> None:
    observed = backend.executor.inspect(f"cm-{backend.instance}-nonexistent")
    assert observed.state is ContainerState.NOT_FOUND


def test_empty_image_is_invalid(backend: Backend) -> None:
    with pytest.raises(InvalidSpec) as info:
        backend.executor.launch(make_spec(backend.instance, "true", image=""))
    assert not info.value.transient


def test_watch_reports_start_and_die(backend: Backend) -> None:
    ex = backend.executor
    if backend.kind == "cloudrun":
        # Cloud Run has no event stream (the reconciler polls ``list_managed`` instead): the
        # backend says so, and ``watch`` refuses rather than yielding nothing forever.
        assert not ex.supports_events
        with pytest.raises(NotImplementedError):
            next(iter(ex.watch(backend.instance, threading.Event())))
        return
    assert ex.supports_events
    stop = threading.Event()
    events: list[ExecutorEvent] = []

    def consume() -> None:
        for event in ex.watch(backend.instance, stop):
            events.append(event)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # let the watcher subscribe
        spec = make_spec(backend.instance, "sleep 0.2", job=42, attempt=2)
        ex.launch(spec)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kinds = {e.kind for e in events if e.name == spec.name}
            if {EventKind.STARTED, EventKind.DIED} <= kinds:
                break
            time.sleep(0.02)
        mine = [e for e in events if e.name == spec.name]
        assert [e.kind for e in mine][:2] == [EventKind.STARTED, EventKind.DIED]
        assert all(e.job_id == 42 and e.attempt == 2 for e in mine)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
