"""Jobs that depend on jobs: validation of the edges, the claim's waiting, the cancellation chain."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from container_manager.models import ContainerJob, ExecutorHost, JobDependency, JobEvent
from container_manager.services import request_cancel
from container_manager.states import JobStatus, Reason
from tests.mockworld import MockWorld

pytestmark = pytest.mark.django_db


def make(command: str = "echo hi", **kw: Any) -> ContainerJob:
    return ContainerJob.objects.create(image="busybox", command=command, memory_limit=64, cpu_limit=0.5, **kw)


def status(job: ContainerJob) -> str:
    job.refresh_from_db()
    return job.status


# The claim ------------------------------------------------------------------------------------


def test_a_job_waits_until_every_dependency_completed(mock_world: MockWorld, mock_host: ExecutorHost) -> None:
    first, second = make("sleep 5"), make("sleep 8")
    last = make(depends_on=[first, second])
    assert set(last.depends_on.all()) == {first, second}
    assert set(first.dependents.all()) == {last}
    assert mock_world.claimed() == [first.pk, second.pk]
    assert list(ContainerJob.objects.waiting_on_dependencies()) == [last]
    assert last not in ContainerJob.objects.due(mock_world.clock())
    mock_world.finish(first, second, seconds=6)
    assert (status(first), status(second)) == ("completed", "running")
    assert mock_world.claimed() == [], "one dependency is still running"
    mock_world.finish(second, seconds=3)
    assert mock_world.claimed() == [last.pk]
    assert status(last) == "completed"
    assert not ContainerJob.objects.waiting_on_dependencies().exists()


def test_a_dependency_that_fails_cancels_its_dependents_down_the_chain(
    mock_world: MockWorld, mock_host: ExecutorHost
) -> None:
    root = make("exit 3")
    child = make(depends_on=[root])
    grandchild = make(depends_on=[child])
    other_branch = make(depends_on=[grandchild, make("echo fine")])
    unrelated = make("sleep 100")
    mock_world.claimed()
    mock_world.finish(root)
    assert status(root) == "failed"
    claimed = mock_world.reconciler.claim()
    assert claimed.settled == [child.pk] and claimed.more, "the dependents of a cancelled job may be due now"
    child.refresh_from_db()
    assert (child.status, child.failure_reason) == (JobStatus.CANCELLED, Reason.DEPENDENCY_FAILED)
    assert child.status_message == f"job {root.pk}, which this job depends on, ended failed"
    assert child.attempts == 0 and not child.executions.exists()
    assert mock_world.reconciler.claim().settled == [grandchild.pk]
    assert mock_world.reconciler.claim().settled == [other_branch.pk]
    assert mock_world.reconciler.claim().settled == []
    other_branch.refresh_from_db()
    assert other_branch.status_message == f"job {grandchild.pk}, which this job depends on, ended cancelled"
    event = JobEvent.objects.get(job=child, to_status="cancelled")
    assert (event.from_status, event.reason) == ("pending", "dependency_failed")
    assert status(unrelated) == "running"


@pytest.mark.parametrize("ending", ["failed", "timeout", "cancelled"])
def test_any_end_but_completed_cancels_the_dependents(
    mock_world: MockWorld, mock_host: ExecutorHost, ending: str
) -> None:
    dependency = make()
    dependent = make(depends_on=[dependency])
    if ending == "cancelled":
        assert request_cancel(dependency.pk, actor="test")
    else:  # as written by another process, or by SQL
        ContainerJob.objects.filter(pk=dependency.pk).update(status=ending, finished_at=mock_world.clock())
    assert mock_world.reconciler.claim().settled == [dependent.pk]
    dependent.refresh_from_db()
    assert dependent.failure_reason == "dependency_failed" and dependent.status_message.endswith(ending)


def test_dependents_are_cancelled_even_when_no_slot_is_free(
    mock_world: MockWorld, mock_host: ExecutorHost
) -> None:
    ExecutorHost.objects.filter(pk=mock_host.pk).update(max_concurrent_jobs=1)
    failed = make("exit 1")
    mock_world.claimed()
    mock_world.finish(failed)
    blocker = make("hang")
    assert mock_world.claimed() == [blocker.pk], "the only slot is taken"
    dependent = make(depends_on=[failed])
    waiting = make()
    claimed = mock_world.reconciler.claim()
    assert claimed.settled == [dependent.pk] and not claimed.snapshots
    assert status(waiting) == "pending"
    # With no usable host at all, too.
    ExecutorHost.objects.filter(pk=mock_host.pk).update(is_active=False)
    late = make(depends_on=[failed])
    assert mock_world.reconciler.claim().settled == [late.pk]


def test_a_pinned_job_on_a_full_host_is_cancelled_all_the_same(
    mock_world: MockWorld, mock_host: ExecutorHost
) -> None:
    full = ExecutorHost.objects.create(name="full", executor_type="mock", max_concurrent_jobs=1)
    make("hang", docker_host=full)
    failed = make("exit 1")
    mock_world.claimed()
    mock_world.finish(failed)
    pinned = make(docker_host=full, depends_on=[failed])
    assert mock_world.reconciler.claim().settled == [pinned.pk]


def test_the_claim_costs_the_same_statements_with_dependencies(
    mock_world: MockWorld, mock_host: ExecutorHost
) -> None:
    done = make()
    mock_world.claimed()
    mock_world.finish(done)
    roots = [make("hang") for _ in range(3)]
    for index in range(10):
        make(depends_on=[roots[index % 3], done])
    ready = [make(depends_on=[done]) for _ in range(4)]
    with CaptureQueriesContext(connection) as queries:
        claimed = mock_world.reconciler.claim()
    assert sorted(s.job.pk for s in claimed.snapshots) == sorted(
        [*(r.pk for r in roots), *(r.pk for r in ready)]
    )
    # Lock the hosts, read the due jobs (dependencies included), one UPDATE, two INSERTs (and
    # SQLite's BEGIN/COMMIT): however many edges there are.
    assert len(queries.captured_queries) <= 7, [q["sql"][:60] for q in queries.captured_queries]


def test_launch_of_a_waiting_job_leaves_it_pending(mock_world: MockWorld, mock_host: ExecutorHost) -> None:
    dependency = make("sleep 5")
    dependent = make(depends_on=[dependency])
    mock_world.reconciler.reconcile(dependent.pk)
    assert status(dependent) == "pending" and status(dependency) == "pending"
    mock_world.reconciler.reconcile(dependency.pk)
    mock_world.finish(dependency)
    mock_world.reconciler.reconcile(dependent.pk)
    assert status(dependent) == "completed"


def test_deleting_a_dependency_frees_its_dependents(mock_world: MockWorld, mock_host: ExecutorHost) -> None:
    dependency = make()
    dependent = make(depends_on=[dependency])
    dependency.delete()
    assert not JobDependency.objects.exists()
    assert mock_world.claimed() == [dependent.pk]


# Validation -----------------------------------------------------------------------------------


def test_unknown_dependencies_are_refused_and_nothing_is_saved(mock_host: ExecutorHost) -> None:
    before = ContainerJob.objects.count()
    with pytest.raises(ValidationError) as caught:
        make(depends_on=[987654])
    assert caught.value.message_dict == {"depends_on": ["depends_on: there is no job 987654"]}
    assert ContainerJob.objects.count() == before


def test_every_error_is_reported_at_once(mock_host: ExecutorHost) -> None:
    with pytest.raises(ValidationError) as caught:
        ContainerJob.objects.create(image="busybox", memory_limit=10**6, depends_on=[987654])
    assert set(caught.value.message_dict) == {"memory_limit", "depends_on"}
    assert not ContainerJob.objects.exists()


@pytest.mark.parametrize("value", [["1"], [1.5], [True], [None]])
def test_dependencies_must_be_jobs_or_ids(mock_host: ExecutorHost, value: list[Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        make(depends_on=value)
    assert list(caught.value.message_dict) == ["depends_on"]
    assert "must list jobs or job ids" in caught.value.message_dict["depends_on"][0]


def test_an_unsaved_job_is_not_a_dependency(mock_host: ExecutorHost) -> None:
    with pytest.raises(ValidationError, match="save job"):
        make(depends_on=[ContainerJob(image="busybox")])


def refused(match: str) -> Any:
    """The error, with the statement's transaction rolled back (``add()`` writes without a savepoint)."""
    return pytest.raises(ValidationError, match=match)


def test_cycles_are_refused_in_either_direction(mock_host: ExecutorHost) -> None:
    a = make()
    b = make(depends_on=[a])
    c = make(depends_on=[b])
    with pytest.raises(ValidationError) as caught, transaction.atomic():
        a.depends_on.add(c)
    assert caught.value.message_dict["depends_on"] == [
        f"this would make a cycle ({a.pk} -> {c.pk} -> {b.pk} -> {a.pk}): jobs would wait forever"
    ]
    with refused("cycle"), transaction.atomic():
        c.dependents.add(a)  # the same edge, written from the other end
    with refused("cannot depend on itself"), transaction.atomic():
        a.depends_on.add(a)
    with refused("cycle"), transaction.atomic():
        JobDependency.objects.create(job=a, depends_on=b)
    assert JobDependency.objects.count() == 2
    a.depends_on.add(make())  # no cycle: fine
    assert a.depends_on.count() == 1


def test_only_a_pending_job_may_gain_a_dependency(mock_world: MockWorld, mock_host: ExecutorHost) -> None:
    running = make("hang")
    mock_world.claimed()
    extra = make()
    with pytest.raises(ValidationError) as caught, transaction.atomic():
        running.depends_on.add(extra)
    assert caught.value.message_dict["depends_on"] == [
        f"job {running.pk} is running: dependencies can be added only to pending jobs"
    ]
    # A finished job may still be depended upon: completed counts as done, anything else cancels.
    make(depends_on=[running])


def test_the_edges_survive_only_with_their_jobs(mock_host: ExecutorHost) -> None:
    a = make()
    b = make(depends_on=[a])
    b.delete()
    assert not JobDependency.objects.exists()
    assert a.dependents.count() == 0


# The daemon ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_daemon_runs_a_chain_in_order() -> None:
    from reconciler.daemon import Daemon, DaemonOptions

    ExecutorHost.objects.create(name="mock-d", executor_type="mock", max_concurrent_jobs=10)
    first = make("sleep 0.2")
    second = make("sleep 0.1", depends_on=[first])
    third = make(depends_on=[second])
    failing = make("exit 1")
    doomed = make(depends_on=[failing, third])
    Daemon(DaemonOptions(workers=2, until_idle=True, poll_seconds=0.05, resync_seconds=1)).run()
    for job in (first, second, third, failing, doomed):
        job.refresh_from_db()
    assert [first.status, second.status, third.status] == ["completed"] * 3
    assert first.finished_at is not None and second.started_at is not None and third.started_at is not None
    assert first.finished_at <= second.started_at and second.finished_at <= third.started_at
    assert (doomed.status, doomed.failure_reason) == ("cancelled", "dependency_failed")
