"""Claiming waiting jobs in batches: a handful of statements for many jobs.

When slots are free, ``claim_due`` locks the candidate hosts (with their live attempts counted),
takes due jobs in claim order (priority, then age; rows other claimers hold are skipped), lets
``decide()`` judge each one (a row that breaks a rule fails with ``invalid_spec``, a cancelled
one ends), places the rest with ``hosts.assign`` and writes every claim at once: one UPDATE of
the jobs, one INSERT of their attempt rows (the write-ahead record, with the container names)
and one INSERT of their history. The daemon runs it as a key of its own in the work queue, so
a burst of new rows costs a few statements instead of a step per row, and the claimed jobs go
to the workers with their snapshots (nothing is read back).

Workflows live in the same query. A job waits (is not due) while a job it depends on is
unfinished; once one ended other than ``completed``, the query says which, and ``decide()``
cancels the job (``dependency_failed``) whether or not a slot is free; its own dependents
follow in the next claim, which is asked for at once. A job of an array whose ``parallelism``
is reached is left out by the query, and a batch never takes more of one array than it has room
for.

With several replicas, an unpinned job is placed over every driven host, not only this
replica's, and claimed by the replica that owns the host chosen for it: the jobs placed on
another replica's host are left pending (``passed_on``), and the daemon wakes the other replicas
once the claim has committed. A burst is so spread over the hosts as one daemon would spread it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from django.db import connection, transaction
from django.db.models import Count, F, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from container_manager.conf import Policy
from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost
from container_manager.querysets import failed_dependency_annotations
from container_manager.states import LIVE, ExecutionStatus, JobStatus
from container_manager.transitions import Move, check_fence, fenced_for, transition_many
from executors.types import ContainerSpec
from metrics import definitions as m
from reconciler import decide as d
from reconciler import record
from reconciler.hosts import HostSlots, assign, lock_hosts, peek_hosts
from reconciler.snapshot import Snapshot, job_view
from reconciler.spec import spec_or_problem

log = structlog.get_logger("reconciler")


@dataclass
class Claimed:
    #: the jobs claimed, each with its new attempt row and spec.
    snapshots: list[Snapshot] = field(default_factory=list)
    #: jobs ended instead of claimed (cancelled, an invalid row, no attempts left).
    settled: list[int] = field(default_factory=list)
    #: more due jobs may be claimable now (the batch size was reached, or some could not be placed).
    more: bool = False
    #: unpinned jobs placed on hosts other replicas drive, left for them to claim.
    passed_on: int = 0


def claim_due(
    *,
    actor: str,
    policy: Policy,
    decide_policy: d.DecidePolicy,
    now: datetime,
    limit: int,
    scope: Q | None = None,
    others: Collection[int] = (),
    job_ids: Collection[int] | None = None,
) -> Claimed:
    """Claim up to ``limit`` due jobs (all, or only ``job_ids``) onto free slots of the hosts in
    ``scope`` (the ones this replica drives), placing unpinned ones over those and the ``others``
    (hosts other replicas drive); the writes are fenced by this replica's hosts' leases."""
    result = Claimed()
    with transaction.atomic():
        hosts = lock_hosts(scope)
        mine = {host.pk for host, _ in hosts}
        elsewhere = peek_hosts([pk for pk in others if pk not in mine])
        with fenced_for(*mine):
            chosen, executions = _claim(
                result, hosts, elsewhere, actor, policy, decide_policy, now, limit, job_ids
            )
    for (job, spec, _host), execution in zip(chosen, executions, strict=True):
        job.status = JobStatus.LAUNCHING.value
        job.attempts += 1
        job.updated_at = now
        job.memory_limit = spec.memory_mb
        job.cpu_limit = spec.cpu
        job.timeout_seconds = spec.timeout_seconds
        result.snapshots.append(Snapshot(job, execution, spec))
        log.info("attempt claimed", job_id=job.pk, attempt=job.attempts, host=execution.host_name)
    return result


def _claim(
    result: Claimed,
    hosts: list[tuple[ExecutorHost, HostSlots]],
    elsewhere: list[HostSlots],
    actor: str,
    policy: Policy,
    decide_policy: d.DecidePolicy,
    now: datetime,
    limit: int,
    job_ids: Collection[int] | None,
) -> tuple[list[tuple[ContainerJob, ContainerSpec, ExecutorHost]], list[ContainerExecution]]:
    """The claim itself, inside its transaction with the hosts locked: (claims, attempt rows)."""
    check_fence()
    slots = [s for _, s in hosts]
    open_hosts = [s.pk for s in slots if s.free > 0]
    ended = Q(failed_dependency__isnull=False)
    due = _due(now, job_ids)
    if open_hosts:
        size = min(limit, sum(s.free for s in [*slots, *elsewhere]))
        due = due.filter(Q(docker_host_id__in=open_hosts) | Q(docker_host__isnull=True) | ended)
    else:
        # No slot: only jobs that end without running can be settled.
        size = limit
        due = due.filter(ended)
    rows = list(due[:size])
    # A full batch means more may be due only when the batch size, not the free slots, bounded
    # it: once every free slot is taken, the next one to free up asks for the next claim.
    result.more = len(rows) == size == limit
    room: dict[int, int] = {}
    candidates: list[tuple[ContainerJob, ContainerSpec]] = []
    for job in rows:
        spec, problem = spec_or_problem(job, job.attempts + 1, policy)
        facts = d.Facts(spec_problem=problem, dependency_failed=_dependency_failure(job))
        decision = d.decide(job_view(job, policy), None, facts, now, decide_policy)
        if isinstance(decision, d.SettleJob):
            if record.settle_job(Snapshot(job, None), decision.outcome, actor=actor, now=now):
                result.settled.append(job.pk)
                m.JOBS_FINISHED.labels(decision.outcome.status.value, decision.outcome.reason.value).inc()
                log.info("job ended before a claim", job_id=job.pk, reason=decision.outcome.reason.value)
                # Jobs that depend on this one may be due now (to be cancelled in turn).
                result.more = True
        elif isinstance(decision, d.StartAttempt) and spec is not None and open_hosts:
            if not _take_array_slot(job, room):
                result.more = True  # the claims of this batch filled the array's room
                continue
            candidates.append((job, spec))
    placed = assign([(job.pk, job.docker_host_id) for job, _ in candidates], [*slots, *elsewhere])
    result.more = result.more or len(placed) < len(candidates)
    by_pk = {host.pk: host for host, _ in hosts}
    chosen = [(job, spec, by_pk[pk]) for job, spec in candidates if (pk := placed.get(job.pk)) in by_pk]
    result.passed_on = sum(1 for pk in placed.values() if pk not in by_pk)
    if not chosen:
        return [], []
    moves = [
        Move(job.pk, JobStatus(job.status), job.attempts + 1, f"attempt {job.attempts + 1} on {host.name}")
        for job, _, host in chosen
    ]
    limits = {
        "attempts": F("attempts") + 1,
        "memory_limit": Coalesce(F("memory_limit"), Value(policy.default_memory_mb)),
        "cpu_limit": Coalesce(F("cpu_limit"), Value(policy.default_cpu)),
        "timeout_seconds": Coalesce(F("timeout_seconds"), Value(policy.default_timeout_seconds)),
    }
    if not transition_many(moves, JobStatus.LAUNCHING, actor=actor, fields=limits, now=now, savepoint=False):
        # Rows are locked (PostgreSQL) or writes serialised (SQLite): only a bug gets here.
        raise RuntimeError("a claimed job changed under its lock")
    executions = ContainerExecution.objects.bulk_create(
        ContainerExecution(
            job_id=job.pk,
            attempt=job.attempts + 1,
            executor_host=host,
            host_name=host.name,
            executor_type=host.executor_type,
            container_name=spec.name,
            status=ExecutionStatus.LAUNCHING.value,
            created_at=now,
        )
        for job, spec, host in chosen
    )
    return chosen, executions


def _due(now: datetime, job_ids: Collection[int] | None) -> QuerySet[ContainerJob]:
    """Due jobs in claim order, with their dependency fact and their array's room, locked as read.

    One statement: correlated subqueries (answered from the dependency table's unique index and
    the partial index on jobs of arrays) say whether a dependency ended other than ``completed``
    and how many of the job's array run; jobs of an array already at its ``parallelism`` are
    left out unless they are to be settled.
    """
    running = (
        ContainerJob.objects.filter(array_id=OuterRef("array_id"), status__in=[s.value for s in LIVE])
        .order_by()
        .values("array_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    due = (
        ContainerJob.objects.due(now)
        .select_related("environment_template", "array")
        .annotate(
            **failed_dependency_annotations(),
            array_running=Coalesce(Subquery(running, output_field=IntegerField()), Value(0)),
        )
        .filter(
            Q(array__isnull=True)
            | Q(array__parallelism__isnull=True)
            | Q(array_running__lt=F("array__parallelism"))
            | Q(failed_dependency__isnull=False)
        )
    )
    if job_ids is not None:
        due = due.filter(pk__in=list(job_ids))
    if connection.features.has_select_for_update_skip_locked:
        due = due.select_for_update(skip_locked=True, of=("self",))
    return due


def _dependency_failure(job: ContainerJob) -> str:
    """The fact ``decide()`` takes: which dependency did not complete, and how it ended."""
    failed = getattr(job, "failed_dependency", None)
    if failed is None:
        return ""
    return f"job {failed}, which this job depends on, ended {getattr(job, 'failed_dependency_status', '')}"


def _take_array_slot(job: ContainerJob, room: dict[int, int]) -> bool:
    """Count a claim against the job's array; False when this batch already filled its room."""
    array = job.array
    if array is None or array.parallelism is None:
        return True
    left = room.setdefault(array.pk, array.parallelism - getattr(job, "array_running", 0))
    if left <= 0:
        return False
    room[array.pk] = left - 1
    return True
