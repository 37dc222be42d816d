"""Dependency cycles written with plain SQL: found, cancelled with the cycle named, never a wedge."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from container_manager.models import ContainerJob, ExecutorHost
from container_manager.states import JobStatus
from reconciler.daemon import Daemon, DaemonOptions
from reconciler.waits import cancel_stuck, stuck_jobs
from tests.unit.metrics_support import sample

pytestmark = pytest.mark.django_db(transaction=True)


def jobs(n: int) -> list[int]:
    return [ContainerJob.objects.create(image="busybox", command="true").pk for _ in range(n)]


def edges(*pairs: tuple[int, int]) -> None:
    """ "job depends on dep" rows written as SQL writes them: no validation on the way."""
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO container_manager_jobdependency (job_id, depends_on_id) VALUES (%s, %s)", list(pairs)
        )


def status(pk: int) -> str:
    return str(ContainerJob.objects.get(pk=pk).status)


# Each case: the edges between jobs 0..5 (all pending unless the case says otherwise), and which
# of them can never start, with the cycle each one waits on (as positions).
CASES = [
    ("no edges", [], {}),
    ("a chain can finish", [(0, 1), (1, 2)], {}),
    ("a diamond can finish", [(0, 1), (0, 2), (1, 3), (2, 3)], {}),
    ("two jobs wait for each other", [(0, 1), (1, 0)], {0: [0, 1, 0], 1: [0, 1, 0]}),
    (
        "a job waiting on a cycle is stuck too, one the cycle waits on is not",
        [(0, 1), (1, 2), (2, 0), (3, 0), (0, 4)],
        {0: [0, 1, 2, 0], 1: [0, 1, 2, 0], 2: [0, 1, 2, 0], 3: [0, 1, 2, 0]},
    ),
    (
        "two cycles, each job with its own",
        [(0, 1), (1, 0), (3, 2), (2, 3), (4, 3)],
        {0: [0, 1, 0], 1: [0, 1, 0], 2: [2, 3, 2], 3: [2, 3, 2], 4: [2, 3, 2]},
    ),
    (
        "a job waiting on a cycle and on a free job",
        [(0, 1), (1, 0), (2, 0), (2, 3)],
        {0: [0, 1, 0], 1: [0, 1, 0], 2: [0, 1, 0]},
    ),
]


@pytest.mark.parametrize(("case", "pairs", "stuck"), CASES, ids=[c[0] for c in CASES])
def test_which_jobs_can_never_start(
    case: str, pairs: list[tuple[int, int]], stuck: dict[int, list[int]]
) -> None:
    pks = jobs(6)
    edges(*[(pks[a], pks[b]) for a, b in pairs])
    found = stuck_jobs()
    assert {pk: cycle for pk, (_, cycle) in found.items()} == {
        pks[a]: [pks[i] for i in cycle] for a, cycle in stuck.items()
    }


def test_a_dependency_on_a_job_that_is_not_waiting_is_no_cycle() -> None:
    a, b = jobs(2)
    edges((a, b), (b, a))
    ContainerJob.objects.filter(pk=b).update(status=JobStatus.RUNNING.value)  # e.g. the edge came later
    assert stuck_jobs() == {}


def test_stuck_jobs_are_cancelled_once_with_the_cycle_named_and_the_rest_untouched() -> None:
    a, b, c, free = jobs(4)
    edges((a, b), (b, a), (c, a))
    (retrying,) = jobs(1)
    ContainerJob.objects.filter(pk=retrying).update(status=JobStatus.RETRYING.value)
    edges((retrying, b))
    finished = {"status": "cancelled", "reason": "dependency_failed"}
    before = sample("container_manager_jobs_finished_total", finished)
    assert cancel_stuck(actor="test") == [a, b, c, retrying]
    assert cancel_stuck(actor="test") == [], "nothing is cancelled twice"
    assert sample("container_manager_jobs_finished_total", finished) == before + 4
    for pk in (a, b, c, retrying):
        job = ContainerJob.objects.get(pk=pk)
        assert (job.status, job.failure_reason) == ("cancelled", "dependency_failed")
        assert f"({a} -> {b} -> {a})" in job.status_message, "the cycle reads the same from every job"
    assert "is part of a dependency cycle" in ContainerJob.objects.get(pk=a).status_message
    assert "waits on a dependency cycle" in ContainerJob.objects.get(pk=c).status_message
    assert status(free) == "pending"
    history = ContainerJob.objects.get(pk=a).events.order_by("pk").last()
    assert history is not None and (history.to_status, history.reason) == ("cancelled", "dependency_failed")


def test_the_daemon_cancels_a_cycle_written_by_sql_and_until_idle_exits() -> None:
    ExecutorHost.objects.create(name="mock-w", executor_type="mock", max_concurrent_jobs=4)
    a, b, after_cycle, first, second = jobs(5)
    edges((a, b), (b, a), (after_cycle, a), (second, first))
    daemon = Daemon(DaemonOptions(until_idle=True, workers=2, poll_seconds=0.05, resync_seconds=0.5))
    thread = threading.Thread(target=daemon.run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "--until-idle must exit: the cycle is cancelled, not waited on"
    assert [status(pk) for pk in (a, b, after_cycle)] == ["cancelled"] * 3
    assert [status(pk) for pk in (first, second)] == ["completed", "completed"]
