"""The database cost of a job's whole lifecycle in the daemon, pinned so it cannot creep back.

DESIGN.md section 8 sets at most 8 statements per job from claim to cleanup. The daemon's work
is driven here key by key in the test's thread (the mock's event watcher runs as in production)
and every statement the daemon issues while processing a key is counted; transaction control
(BEGIN, SAVEPOINT) is left out, since only SQLite lists it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost
from reconciler.daemon import Daemon, DaemonOptions
from reconciler.keys import CLAIM, CLEANUP
from reconciler.outcome import RequeueAfter

pytestmark = pytest.mark.django_db(transaction=True)

BUDGET_PER_JOB = 8


class Counter:
    """Statements executed while the daemon processed a key, by kind of key."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[int]] = {"job": [], "claim": [], "cleanup": []}
        self.current: list[str] | None = None

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if self.current is not None and not sql.lstrip().upper().startswith(
            ("BEGIN", "SAVEPOINT", "RELEASE")
        ):
            self.current.append(sql)
        return execute(sql, params, many, context)

    def total(self) -> int:
        return sum(sum(runs) for runs in self.by_kind.values())


def drive(daemon: Daemon, job_ids: list[int], counter: Counter, timeout: float = 30.0) -> None:
    """Process the daemon's keys until every job is finished and cleaned up."""
    deadline = time.monotonic() + timeout
    daemon._request_claim()
    while time.monotonic() < deadline:
        key = daemon.queue.get(timeout=0.05)
        if key is not None:
            counter.current = []
            try:
                outcome = daemon._process(key)
            finally:
                kind = key if key in (CLAIM, CLEANUP) else "job"
                counter.by_kind[kind].append(len(counter.current))
                counter.current = None
                daemon.queue.done(key)
            if isinstance(outcome, RequeueAfter):
                daemon.queue.add_after(key, outcome.seconds)
            continue
        cleaned = ContainerExecution.objects.filter(job_id__in=job_ids, cleaned_up=True).count()
        if cleaned == len(job_ids) and not ContainerJob.objects.filter(pk__in=job_ids).unfinished().exists():
            return
    raise AssertionError("the jobs did not finish in time")


def statements(daemon: Daemon, key: Any) -> list[str]:
    """The statements processing ``key`` once costs."""
    counter = Counter()
    counter.current = []
    with connection.execute_wrapper(counter):
        daemon._process(key)
    return counter.current


def run_batch(
    command: str, count: int, then: Callable[[Daemon, list[int]], None] | None = None
) -> tuple[Counter, list[int]]:
    host = ExecutorHost.objects.create(name="budget", executor_type="mock", max_concurrent_jobs=10)
    jobs = ContainerJob.objects.create_many(
        [ContainerJob(image="busybox", command=command, memory_limit=64, cpu_limit=0.5) for _ in range(count)]
    )
    job_ids = [job.pk for job in jobs]
    daemon = Daemon(DaemonOptions(workers=1, resync_seconds=3600))
    counter = Counter()
    try:
        daemon.hosts.reconcile(host.pk)  # starts the event watcher: exits arrive as events, as in production
        with connection.execute_wrapper(counter):
            drive(daemon, job_ids, counter)
        if then is not None:
            then(daemon, job_ids)
    finally:
        daemon.stop_event.set()
        daemon.hosts.close()
    assert set(ContainerJob.objects.filter(pk__in=job_ids).values_list("status", flat=True)) == {"completed"}
    assert ContainerExecution.objects.filter(job_id__in=job_ids).count() == count, "one attempt each"
    return counter, job_ids


def test_a_job_costs_at_most_eight_statements_from_claim_to_cleanup() -> None:
    """The control-plane benchmark's case: a batch of short jobs."""
    counter, job_ids = run_batch("true", 60)
    per_job = counter.total() / len(job_ids)
    assert per_job <= BUDGET_PER_JOB, f"{per_job:.1f} statements per job: {counter.by_kind}"


def test_each_kind_of_work_has_a_fixed_cost() -> None:
    """Whatever the batching: a claim, a job's own steps and a cleanup each cost a bounded number."""
    counter, job_ids = run_batch("sleep 0.05", 20)
    # Lock the hosts, read the due jobs, then one UPDATE and two INSERTs for the whole batch.
    assert max(counter.by_kind["claim"]) <= 5, counter.by_kind["claim"]
    # Running (job UPDATE, history INSERT, attempt UPDATE) and finished (the same three).
    assert sum(counter.by_kind["job"]) <= 6 * len(job_ids), counter.by_kind["job"]
    # One UPDATE marks every removed container of the batch.
    assert max(counter.by_kind["cleanup"]) <= 1, counter.by_kind["cleanup"]


def test_a_late_hint_for_a_job_the_daemon_finished_reads_nothing() -> None:
    """A container's exit event is often queued while the step is recording that very exit.
    Terminal states are final, so its key costs no statement; a hint that says the row may have
    changed outside (a notification, the resync: ``forget``) reads it again."""

    def hint_again(daemon: Daemon, job_ids: list[int]) -> None:
        for job_id in job_ids:
            assert statements(daemon, job_id) == []
        daemon.reconciler.forget(job_ids[0])
        assert statements(daemon, job_ids[0]), "a forgotten job is read again"

    run_batch("true", 3, then=hint_again)
