"""The status machine: its table (states.py) and the only writer of status (transitions.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from container_manager import signals
from container_manager.exceptions import InvalidTransition
from container_manager.models import ContainerJob, JobEvent
from container_manager.states import (
    ACTIVE,
    LIVE,
    TERMINAL,
    TRANSITIONS,
    ExecutionStatus,
    JobStatus,
    can_transition,
    execution_status_to_job,
    sources_of,
)
from container_manager.transitions import Fenced, fenced_for, note, set_fence, transition

ALL = list(JobStatus)


# The table ----------------------------------------------------------------------------------


def test_every_status_has_a_row() -> None:
    assert set(TRANSITIONS) == set(JobStatus)


def test_terminal_states_are_final() -> None:
    for status in TERMINAL:
        assert TRANSITIONS[status] == frozenset()
        assert status.is_terminal
    assert {s for s in JobStatus if s.is_terminal} == TERMINAL


def test_the_documented_happy_path_and_retry_loop() -> None:
    path = ["pending", "launching", "running", "retrying", "launching", "running", "completed"]
    for source, target in itertools.pairwise(path):
        assert can_transition(source, target), (source, target)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("pending", "running"),
        ("pending", "completed"),
        ("pending", "retrying"),
        ("retrying", "running"),
        ("running", "launching"),
        ("running", "pending"),
        ("completed", "pending"),
        ("failed", "retrying"),
        ("cancelled", "running"),
        ("pending", "pending"),
        ("pending", "bogus"),
        ("bogus", "pending"),
    ],
)
def test_forbidden_moves(source: str, target: str) -> None:
    assert not can_transition(source, target)


def test_every_non_terminal_status_can_be_cancelled_and_reach_an_end() -> None:
    for status in ACTIVE:
        assert JobStatus.CANCELLED in TRANSITIONS[status]
        assert TRANSITIONS[status] & TERMINAL
    assert set(JobStatus) == ACTIVE | TERMINAL
    assert not ACTIVE & TERMINAL
    assert LIVE <= ACTIVE


def test_sources_of_is_the_inverse_of_the_table() -> None:
    for target in JobStatus:
        assert sources_of(target) == {s for s in JobStatus if target in TRANSITIONS[s]}
    assert sources_of(JobStatus.PENDING) == frozenset()


def test_execution_status_maps_to_job_status() -> None:
    for status in ExecutionStatus:
        if status.is_terminal:
            assert execution_status_to_job(status).value == status.value
            assert execution_status_to_job(status) in TERMINAL
        else:
            with pytest.raises(KeyError):
                execution_status_to_job(status)


# transition() on a real row -----------------------------------------------------------------


def _new_job() -> ContainerJob:
    return ContainerJob.objects.create(image="busybox", command="true")


def _snapshot(job_id: int) -> dict[str, Any]:
    return ContainerJob.objects.filter(pk=job_id).values().get()


@pytest.mark.django_db
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(st.booleans(), st.sampled_from(ALL), st.sampled_from(ALL)), min_size=1, max_size=14
    )
)
def test_random_walk(steps: list[tuple[bool, JobStatus, JobStatus]]) -> None:
    """Each step names a target and a source (the true current status, or any other);
    the row must follow the table exactly."""
    job = _new_job()
    current = JobStatus.PENDING
    events = 0
    for from_current, other, target in steps:
        source = current if from_current else other
        before = _snapshot(job.pk)
        if not can_transition(source, target):
            with pytest.raises(InvalidTransition):
                transition(job.pk, source, target, actor="walk")
            assert _snapshot(job.pk) == before
        elif source != current:
            # Someone else moved the job first: the compare-and-swap loses, nothing changes.
            assert transition(job.pk, source, target, actor="walk") is False
            assert _snapshot(job.pk) == before
        else:
            assert transition(job.pk, source, target, actor="walk", reason="r", attempt=3) is True
            current = target
            events += 1
            after = _snapshot(job.pk)
            assert after["status"] == target.value
            assert after["updated_at"] >= before["updated_at"]
            last = JobEvent.objects.filter(job_id=job.pk).latest("id")
            assert (last.from_status, last.to_status, last.actor, last.reason, last.attempt) == (
                source.value,
                target.value,
                "walk",
                "r",
                3,
            )
            if target in TERMINAL:
                assert after["finished_at"] is not None
            else:
                assert after["finished_at"] is None
        assert JobEvent.objects.filter(job_id=job.pk).count() == events
        if current in TERMINAL:
            # Nothing leaves a terminal state, whatever the caller claims the source is.
            for any_target in ALL:
                with pytest.raises(InvalidTransition):
                    transition(job.pk, current, any_target, actor="walk")
    assert ContainerJob.objects.get(pk=job.pk).status == current.value


@pytest.mark.django_db
def test_fields_and_where_are_part_of_the_compare_and_swap() -> None:
    job = _new_job()
    assert not transition(job.pk, "pending", "launching", actor="t", where=_q(attempts=5))
    assert _snapshot(job.pk)["status"] == "pending"
    assert transition(job.pk, "pending", "launching", actor="t", where=_q(attempts=0), fields={"attempts": 1})
    row = _snapshot(job.pk)
    assert (row["status"], row["attempts"]) == ("launching", 1)


def _q(**kwargs: Any) -> Any:
    from django.db.models import Q

    return Q(**kwargs)


@pytest.mark.django_db
def test_terminal_sets_finished_at_to_now_unless_given() -> None:
    from datetime import UTC, datetime

    when = datetime(2030, 5, 1, tzinfo=UTC)
    job = _new_job()
    assert transition(job.pk, "pending", "failed", actor="t", now=when)
    job.refresh_from_db()
    assert job.finished_at == when
    assert job.is_terminal_status


@pytest.mark.django_db
def test_missing_job_is_a_lost_race_not_an_error() -> None:
    assert transition(987654, "pending", "launching", actor="t") is False
    assert JobEvent.objects.count() == 0


@pytest.mark.django_db
def test_long_message_is_cut_in_history() -> None:
    job = _new_job()
    transition(job.pk, "pending", "cancelled", actor="t", message="m" * 10000)
    assert len(JobEvent.objects.get(job=job).message) == 4000


@pytest.mark.django_db
def test_note_adds_history_without_changing_status() -> None:
    job = _new_job()
    note(job.pk, actor="cli", message="looked at it")
    event = JobEvent.objects.get(job=job)
    assert (event.from_status, event.to_status, event.actor) == ("", "", "cli")
    assert _snapshot(job.pk)["status"] == "pending"


# Signals ------------------------------------------------------------------------------------


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def on_change(sender: Any, **kwargs: Any) -> None:
        calls.append(("changed", kwargs))

    def on_finish(sender: Any, **kwargs: Any) -> None:
        calls.append(("finished", kwargs))

    signals.job_status_changed.connect(on_change, dispatch_uid="test-changed")
    signals.job_finished.connect(on_finish, dispatch_uid="test-finished")
    yield calls
    signals.job_status_changed.disconnect(dispatch_uid="test-changed")
    signals.job_finished.disconnect(dispatch_uid="test-finished")


@pytest.mark.django_db
def test_signals_are_sent_after_commit(
    received: list[tuple[str, dict[str, Any]]], django_capture_on_commit_callbacks: Any
) -> None:
    job = _new_job()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert transition(job.pk, "pending", "launching", actor="a", attempt=1)
        # Nothing is sent before the transaction commits.
        assert received == []
    assert len(callbacks) == 1
    assert received == [
        (
            "changed",
            {
                "signal": signals.job_status_changed,
                "job_id": job.pk,
                "old_status": "pending",
                "new_status": "launching",
                "reason": "",
                "attempt": 1,
                "actor": "a",
            },
        )
    ]


@pytest.mark.django_db
def test_terminal_move_also_sends_job_finished(
    received: list[tuple[str, dict[str, Any]]], django_capture_on_commit_callbacks: Any
) -> None:
    job = _new_job()
    transition(job.pk, "pending", "launching", actor="a")
    transition(job.pk, "launching", "running", actor="a")
    received.clear()
    with django_capture_on_commit_callbacks(execute=True):
        transition(job.pk, "running", "failed", actor="a", reason="exit_code", fields={"exit_code": 3})
    kinds = [kind for kind, _ in received]
    assert kinds == ["changed", "finished"]
    finished = received[1][1]
    assert (finished["job_id"], finished["status"], finished["reason"], finished["exit_code"]) == (
        job.pk,
        "failed",
        "exit_code",
        3,
    )


@pytest.mark.django_db
def test_no_signal_when_the_race_is_lost(
    received: list[tuple[str, dict[str, Any]]], django_capture_on_commit_callbacks: Any
) -> None:
    job = _new_job()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert not transition(job.pk, "running", "completed", actor="a")
    assert callbacks == []
    assert received == []


@pytest.mark.django_db
def test_a_failing_receiver_does_not_break_the_transition(django_capture_on_commit_callbacks: Any) -> None:
    def boom(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.job_status_changed.connect(boom, dispatch_uid="test-boom")
    try:
        job = _new_job()
        with django_capture_on_commit_callbacks(execute=True):
            assert transition(job.pk, "pending", "cancelled", actor="a")
    finally:
        signals.job_status_changed.disconnect(dispatch_uid="test-boom")
    assert _snapshot(job.pk)["status"] == "cancelled"


# Fencing ------------------------------------------------------------------------------------


@pytest.fixture
def fence() -> Iterator[Any]:
    yield set_fence
    set_fence(None)


@pytest.mark.django_db
def test_fenced_transition_changes_nothing(
    fence: Any, received: list[tuple[str, dict[str, Any]]], django_capture_on_commit_callbacks: Any
) -> None:
    job = _new_job()
    before = _snapshot(job.pk)
    fence(lambda hosts: False)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(Fenced):
        transition(job.pk, "pending", "launching", actor="old-leader")
    assert _snapshot(job.pk) == before
    assert JobEvent.objects.count() == 0
    assert received == []


@pytest.mark.django_db
def test_fence_that_holds_lets_writes_through(fence: Any) -> None:
    job = _new_job()
    calls: list[tuple[int, ...]] = []
    fence(lambda hosts: calls.append(hosts) or True)
    assert transition(job.pk, "pending", "launching", actor="leader")
    with fenced_for(7, None, 9):
        assert transition(job.pk, "launching", "running", actor="leader")
    assert calls == [(), (7, 9)], "the fence is told which hosts the write concerns"
    fence(None)
    assert transition(job.pk, "running", "completed", actor="anyone")
