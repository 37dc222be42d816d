"""The mock executor's own behaviour: it stands in for Docker in every other unit test."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from executors.exceptions import ConfigurationError, InvalidSpec, Unavailable
from executors.mock import OOM_EXIT_CODE, STOP_EXIT_CODE, Fault, MockExecutor
from executors.types import (
    LABEL_ATTEMPT,
    LABEL_INSTANCE,
    LABEL_JOB,
    ContainerSpec,
    ContainerState,
    EventKind,
    ExecutorEvent,
)
from tests.conftest import FakeClock


def spec(
    name: str = "cm-default-1-1", *command: str, instance: str = "default", **kwargs: Any
) -> ContainerSpec:
    labels = {LABEL_INSTANCE: instance, LABEL_JOB: "1", LABEL_ATTEMPT: "1"}
    return ContainerSpec(
        name=name, image="busybox", command=tuple(command), labels=tuple(sorted(labels.items())), **kwargs
    )


@pytest.fixture
def mock(clock: FakeClock) -> MockExecutor:
    return MockExecutor(clock=clock)


# Lifecycle on a controlled clock -----------------------------------------------------------


def test_a_container_runs_for_its_sleep_on_the_clock(mock: MockExecutor, clock: FakeClock) -> None:
    start = clock()
    observed = mock.launch(spec("c", "sh", "-c", "echo hi; sleep 5; exit 3"))
    assert observed.state is ContainerState.RUNNING and observed.started_at == start
    assert observed.container_id and observed.labels[LABEL_JOB] == "1"
    clock.advance(4.9)
    assert mock.inspect("c").state is ContainerState.RUNNING
    clock.advance(0.1)
    done = mock.inspect("c")
    assert (done.state, done.exit_code, done.oom_killed) == (ContainerState.EXITED, 3, False)
    assert done.finished_at == clock() and done.started_at == start
    assert mock.logs("c").stdout == "hi\n"


def test_an_instant_program_has_exited_at_launch(mock: MockExecutor) -> None:
    observed = mock.launch(spec("c", "echo", "hi"))
    assert (observed.state, observed.exit_code) == (ContainerState.EXITED, 0)


def test_launch_is_idempotent(mock: MockExecutor, clock: FakeClock) -> None:
    first = mock.launch(spec("c", "sleep", "10"))
    clock.advance(3)
    second = mock.launch(spec("c", "sleep", "10"))
    assert second.container_id == first.container_id
    assert second.started_at == first.started_at  # adopted, not restarted
    assert mock.created == ["c"]
    assert [verb for verb, _ in mock.calls] == ["launch", "launch"]


def test_launch_refuses_an_empty_image(mock: MockExecutor) -> None:
    with pytest.raises(InvalidSpec):
        mock.launch(ContainerSpec(name="c", image=""))
    assert mock.created == []


def test_inspect_missing_and_remove(mock: MockExecutor) -> None:
    assert mock.inspect("nope").state is ContainerState.NOT_FOUND
    assert not mock.inspect("nope").exists
    mock.launch(spec("c", "hang"))
    mock.remove("c")
    mock.remove("c")  # absent is fine
    assert mock.inspect("c").state is ContainerState.NOT_FOUND


def test_stop_during_run_exits_143(mock: MockExecutor, clock: FakeClock) -> None:
    mock.launch(spec("c", "sleep", "100"))
    clock.advance(2)
    stopped_at = clock()
    mock.stop("c", grace_seconds=1)
    clock.advance(200)
    observed = mock.inspect("c")
    assert (observed.state, observed.exit_code, observed.finished_at) == (
        ContainerState.EXITED,
        STOP_EXIT_CODE,
        stopped_at,
    )


def test_stop_a_hanging_container_and_after_the_end(mock: MockExecutor) -> None:
    mock.launch(spec("hung", "hang"))
    mock.stop("hung")
    assert mock.inspect("hung").exit_code == STOP_EXIT_CODE
    mock.launch(spec("done", "exit", "5"))
    mock.stop("done")
    assert mock.inspect("done").exit_code == 5  # already exited: its own code stays
    mock.stop("missing")  # absent is fine


def test_vanish_by_hand(mock: MockExecutor) -> None:
    mock.launch(spec("c", "hang"))
    mock.vanish("c")
    assert mock.inspect("c").state is ContainerState.NOT_FOUND


def test_vanish_script_disappears_when_done(mock: MockExecutor, clock: FakeClock) -> None:
    mock.launch(spec("c", "sh", "-c", "sleep 1; vanish"))
    assert mock.inspect("c").state is ContainerState.RUNNING
    clock.advance(1)
    assert mock.inspect("c").state is ContainerState.NOT_FOUND
    assert mock.list_managed("default") == []


# Fault injection ----------------------------------------------------------------------------


def test_launch_unavailable_then_recovers(mock: MockExecutor) -> None:
    mock.inject(Fault.LAUNCH_UNAVAILABLE)
    with pytest.raises(Unavailable):
        mock.launch(spec("c", "echo", "hi"))
    assert mock.created == []
    assert mock.launch(spec("c", "echo", "hi")).exit_code == 0
    assert mock.created == ["c"]


def test_launch_invalid(mock: MockExecutor) -> None:
    mock.inject("launch_invalid")
    with pytest.raises(InvalidSpec):
        mock.launch(spec("c"))
    assert mock.inspect("c").state is ContainerState.NOT_FOUND


def test_exit_fault(mock: MockExecutor) -> None:
    mock.inject(Fault.EXIT, exit_code=42)
    assert mock.launch(spec("c", "echo", "fine")).exit_code == 42


def test_oom_fault(mock: MockExecutor) -> None:
    mock.inject(Fault.OOM)
    observed = mock.launch(spec("c", "echo", "fine"))
    assert (observed.state, observed.exit_code, observed.oom_killed) == (
        ContainerState.EXITED,
        OOM_EXIT_CODE,
        True,
    )
    assert mock.launch(spec("d", "oom")).oom_killed


def test_hang_fault(mock: MockExecutor, clock: FakeClock) -> None:
    mock.inject(Fault.HANG)
    mock.launch(spec("c", "echo", "fine"))
    clock.advance(10**6)
    assert mock.inspect("c").state is ContainerState.RUNNING


def test_vanish_fault(mock: MockExecutor) -> None:
    mock.inject(Fault.VANISH)
    assert mock.launch(spec("c", "true")).state is ContainerState.NOT_FOUND
    assert mock.created == ["c"]


def test_create_only_leaves_a_created_container(mock: MockExecutor) -> None:
    mock.inject(Fault.CREATE_ONLY)
    with pytest.raises(Unavailable):
        mock.launch(spec("c", "sleep", "5"))
    created = mock.inspect("c")
    assert created.state is ContainerState.CREATED and created.started_at is None
    assert [o.state for o in mock.list_managed("default")] == [ContainerState.CREATED]
    assert mock.logs("c").stdout == ""
    # The retried launch adopts and starts it: still one container.
    started = mock.launch(spec("c", "sleep", "5"))
    assert started.state is ContainerState.RUNNING and started.container_id == created.container_id
    assert mock.created == ["c"]


def test_times_counts_matching_launches(mock: MockExecutor) -> None:
    mock.inject(Fault.EXIT, times=2, exit_code=7)
    codes = [mock.launch(spec(f"c{i}", "true")).exit_code for i in range(4)]
    assert codes == [7, 7, 0, 0]


def test_times_none_is_forever_until_cleared(mock: MockExecutor) -> None:
    mock.inject(Fault.EXIT, times=None, exit_code=9)
    assert [mock.launch(spec(f"c{i}", "true")).exit_code for i in range(3)] == [9, 9, 9]
    mock.clear_faults()
    assert mock.launch(spec("after", "true")).exit_code == 0


def test_match_patterns_pick_launches(mock: MockExecutor) -> None:
    mock.inject(Fault.LAUNCH_UNAVAILABLE, match="cm-default-7-*", times=None)
    mock.inject(Fault.OOM, match="cm-default-8-2")
    assert mock.launch(spec("cm-default-8-1", "true")).exit_code == 0
    assert mock.launch(spec("cm-default-8-2", "true")).oom_killed
    for attempt in (1, 2):
        with pytest.raises(Unavailable):
            mock.launch(spec(f"cm-default-7-{attempt}", "true"))
    # A non-matching launch does not use up an injection.
    mock.inject(Fault.EXIT, match="zzz", exit_code=5)
    assert mock.launch(spec("other", "true")).exit_code == 0
    assert mock.launch(spec("zzz", "true")).exit_code == 5


def test_injections_apply_to_new_containers_not_adopted_ones(mock: MockExecutor) -> None:
    mock.launch(spec("c", "hang"))
    mock.inject(Fault.LAUNCH_UNAVAILABLE)
    assert mock.launch(spec("c", "hang")).state is ContainerState.RUNNING
    with pytest.raises(Unavailable):
        mock.launch(spec("d", "hang"))


# Logs, listing, stats -----------------------------------------------------------------------


def test_logs_are_bounded_tails(mock: MockExecutor) -> None:
    mock.launch(spec("c", "sh", "-c", "spew 100; stderr oops"))
    tail = mock.logs("c", max_bytes=10)
    assert (tail.stdout, tail.stdout_truncated) == ("x" * 10, True)
    assert (tail.stderr, tail.stderr_truncated) == ("oops\n", False)
    full = mock.logs("c")
    assert len(full.stdout) == 100 and not full.stdout_truncated
    assert mock.logs("missing").stdout == ""


def test_stream_logs(mock: MockExecutor) -> None:
    mock.launch(spec("c", "sh", "-c", "echo out; stderr err"))
    assert list(mock.stream_logs("c")) == [("stdout", b"out\n"), ("stderr", b"err\n")]
    assert list(mock.stream_logs("missing")) == []


def test_list_managed_filters_by_instance(mock: MockExecutor) -> None:
    mock.launch(spec("a", "hang", instance="default"))
    mock.launch(spec("b", "true", instance="default"))
    mock.launch(spec("c", "hang", instance="other"))
    mock.launch(ContainerSpec(name="unlabelled", image="busybox"))
    assert sorted(o.name for o in mock.list_managed("default")) == ["a", "b"]
    assert [o.name for o in mock.list_managed("other")] == ["c"]
    assert mock.list_managed("nobody") == []


def test_stats(mock: MockExecutor) -> None:
    mock.launch(spec("small", "hang", memory_mb=16))
    mock.launch(spec("big", "hang", memory_mb=512))
    small, big = mock.stats("small"), mock.stats("big")
    assert (small.memory_bytes, small.memory_limit_bytes, small.memory_percent) == (16 << 20, 16 << 20, 100.0)
    assert (big.memory_bytes, big.memory_percent, big.cpu_percent) == (32 << 20, 6.25, 12.5)


# Events -------------------------------------------------------------------------------------


def _collect(mock: MockExecutor, seconds: float = 0.15, instance: str = "default") -> list[ExecutorEvent]:
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        return list(mock.watch(instance, stop))
    finally:
        timer.cancel()


def test_watch_reports_start_and_die_once(mock: MockExecutor, clock: FakeClock) -> None:
    mock.launch(spec("cm-default-1-1", "sleep", "5"))
    mock.launch(spec("elsewhere", "true", instance="other"))
    events = _collect(mock)
    assert [(e.kind, e.name, e.job_id, e.attempt) for e in events] == [
        (EventKind.STARTED, "cm-default-1-1", 1, 1)
    ]
    clock.advance(5)
    assert [e.kind for e in _collect(mock)] == [EventKind.DIED]
    assert _collect(mock, 0.05) == []


def test_watch_reports_oom_before_die(mock: MockExecutor) -> None:
    mock.launch(spec("c", "oom"))
    assert [e.kind for e in _collect(mock)] == [EventKind.STARTED, EventKind.OOM, EventKind.DIED]


def test_dropped_events_are_lost_for_good(mock: MockExecutor, clock: FakeClock) -> None:
    mock.drop_events = True
    mock.launch(spec("c", "sleep", "1"))
    assert _collect(mock) == []
    clock.advance(1)
    assert _collect(mock) == []
    mock.drop_events = False
    assert _collect(mock) == []  # the truth is still there for inspect
    assert mock.inspect("c").state is ContainerState.EXITED


def test_created_only_container_has_no_start_event(mock: MockExecutor) -> None:
    mock.inject(Fault.CREATE_ONLY)
    with pytest.raises(Unavailable):
        mock.launch(spec("c", "hang"))
    assert _collect(mock) == []


# Health and configuration -------------------------------------------------------------------


def test_unhealthy_mock_refuses_every_call() -> None:
    mock = MockExecutor(healthy=False)
    report = mock.health_check()
    assert not report and "down" in report.message
    for call in (
        lambda: mock.launch(spec("c")),
        lambda: mock.inspect("c"),
        lambda: mock.list_managed("default"),
    ):
        with pytest.raises(Unavailable):
            call()
    mock.healthy = True
    assert mock.health_check() and mock.launch(spec("c")).exists


def test_from_config() -> None:
    mock = MockExecutor.from_config("", {"healthy": False, "latency": 0.01}, "m")
    assert (mock.name, mock.healthy, mock.latency) == ("m", False, 0.01)
    with pytest.raises(ConfigurationError, match="bogus"):
        MockExecutor.from_config("", {"bogus": 1}, "m")


def test_capabilities() -> None:
    assert MockExecutor.supports_events and MockExecutor.supports_stats and MockExecutor.kind == "mock"
