"""Jobs that wait for each other in a circle: found and cancelled, so that no row can wedge.

The ORM, the admin and the CLI refuse a dependency that would close a cycle
(``container_manager.models.workflow.check_dependencies``), but a row written with plain SQL is
not checked, and the jobs of a cycle would wait for each other forever: none of them is ever
due, so the claim never looks at them, and ``--until-idle`` would never exit. This pass reads
the edges between waiting jobs (pending or retrying) in one query, peels off every job whose
dependencies can all still finish (Kahn's algorithm), and cancels what is left with
``dependency_failed``: the members of a cycle and the jobs that wait on one, each with the cycle
named. Each cancel is a compare-and-swap from the status read, so a job that moved meanwhile is
left as it is. It runs as a work-queue key of its own, at the resync's pace, on every replica
(a job is cancelled once: the compare-and-swap decides).
"""

from __future__ import annotations

from collections import defaultdict

import structlog
from django.utils import timezone

from container_manager.models import JobDependency
from container_manager.states import JobStatus, Reason
from container_manager.transitions import transition
from metrics import definitions as m
from reconciler.outcome import Outcome, RequeueAfter

log = structlog.get_logger("reconciler")

#: the statuses of a job that waits to be claimed: only these can wait for each other forever.
WAITING = (JobStatus.PENDING.value, JobStatus.RETRYING.value)
#: at most this many job ids of a cycle are named in a message.
SHOWN = 10


def stuck_jobs() -> dict[int, tuple[str, list[int]]]:
    """Waiting jobs that can never become due: job id -> (its status, the cycle it waits on)."""
    edges = JobDependency.objects.filter(job__status__in=WAITING, depends_on__status__in=WAITING).values_list(
        "job_id", "job__status", "depends_on_id"
    )
    deps: dict[int, set[int]] = defaultdict(set)
    dependents: dict[int, set[int]] = defaultdict(set)
    status: dict[int, str] = {}
    for job_id, job_status, dep in edges:
        deps[job_id].add(dep)
        dependents[dep].add(job_id)
        status[job_id] = job_status
    free = [job for job in list(dependents) if not deps.get(job)]
    while free:
        job = free.pop()
        for dependent in dependents.get(job, ()):
            deps[dependent].discard(job)
            if not deps[dependent]:
                free.append(dependent)
    stuck = {job: left for job, left in deps.items() if left}
    return {job: (status[job], cycle) for job, cycle in _cycles(stuck).items()}


def _cycles(stuck: dict[int, set[int]]) -> dict[int, list[int]]:
    """The cycle each stuck job waits on, found by following its waits (every stuck job waits on
    another, so a walk always ends in a cycle). Each job is walked once: a walk that meets a job
    already placed takes that job's cycle."""
    found: dict[int, list[int]] = {}
    for start in stuck:
        path: list[int] = []
        on_path: dict[int, int] = {}
        job = start
        while job not in found and job not in on_path:
            on_path[job] = len(path)
            path.append(job)
            job = min(stuck[job])
        cycle = found[job] if job in found else _from_lowest(path[on_path[job] :])
        for member in path:
            found[member] = cycle
    return found


def _from_lowest(ring: list[int]) -> list[int]:
    """A cycle written from its lowest job id and back to it, so that it reads the same from any job."""
    first = ring.index(min(ring))
    ring = ring[first:] + ring[:first]
    return [*ring, ring[0]]


def _message(job: int, cycle: list[int]) -> str:
    chain = " -> ".join(str(pk) for pk in cycle[:SHOWN]) + (" -> ..." if len(cycle) > SHOWN else "")
    where = "is part of" if job in cycle else "waits on"
    return f"this job {where} a dependency cycle ({chain}), so it could never start: cancelled"


def cancel_stuck(*, actor: str) -> list[int]:
    """Cancel every job that can never become due; returns their ids."""
    now = timezone.now()
    cancelled = []
    for job, (status, cycle) in sorted(stuck_jobs().items()):
        message = _message(job, cycle)
        reason = Reason.DEPENDENCY_FAILED.value
        fields = {"failure_reason": reason, "status_message": message}
        if transition(
            job,
            status,
            JobStatus.CANCELLED,
            actor=actor,
            reason=reason,
            message=message,
            fields=fields,
            now=now,
        ):
            cancelled.append(job)
            # Counted like every terminal status the daemon writes (the step's, the claim's).
            m.JOBS_FINISHED.labels(JobStatus.CANCELLED.value, reason).inc()
    if cancelled:
        log.warning("jobs in a dependency cycle cancelled", jobs=cancelled[:SHOWN], count=len(cancelled))
    return cancelled


def step(*, actor: str, every: float) -> Outcome:
    """The daemon's work-queue key for this pass: run it, and again ``every`` seconds."""
    cancel_stuck(actor=actor)
    return RequeueAfter(every, "the next look for dependency cycles")
