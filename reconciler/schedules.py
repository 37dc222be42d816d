"""Cron schedules, materialised: each due tick of an enabled schedule becomes one job, once.

``run_due(now=..., actor=...)`` handles every schedule whose ``next_run_at`` has passed and
returns how long to wait before it should run again (the next tick, or sooner so that new and
edited schedules are seen). The daemon runs it as a key of its own in its work queue.

A tick is handled in one transaction, under a lock on the schedule row: apply the missed-run
policy (``starting_deadline_seconds``) and the ``concurrency_policy`` (as in Kubernetes CronJob:
``allow`` overlapping runs, ``forbid`` a run while one is unfinished, or ``replace`` it by
cancelling the unfinished ones), create the job with its tick in ``scheduled_for``, then
advance ``next_run_at``. A crash anywhere inside rolls all of it back, so the tick is still due
and is handled again, not lost. Two replicas that race on the same tick (or a replica that
lost its lease mid-way) cannot both create its job: (schedule, scheduled_for) is unique, and the
loser's insert fails and counts as "already created".

After downtime only the latest missed tick runs (the earlier ones are counted as missed), and
only if it is within ``starting_deadline_seconds`` when that is set: a schedule never floods
the queue with the runs it missed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Min
from django.utils import timezone

from container_manager.models import ConcurrencyPolicy, JobSchedule
from container_manager.services import request_cancel
from container_manager.transitions import Fenced, check_fence
from metrics import definitions as m
from reconciler.outcome import Outcome, RequeueAfter
from reconciler.spec import describe_validation_error

log = structlog.get_logger("reconciler.schedules")

#: Longest wait between two looks at the schedules: a schedule created or edited meanwhile
#: (no notification reaches the daemon) has its first tick handled at most this late.
RESCAN_SECONDS = 5.0
#: Schedules handled per call; more due ones are handled by the next call, at once.
BATCH = 100
#: Missed ticks counted one by one after downtime, at most (the count only feeds a metric).
MAX_COUNTED_MISSES = 1000


@dataclass(frozen=True)
class Tick:
    """What one due tick of one schedule came to."""

    schedule: str
    at: datetime
    #: one of ``metrics.definitions.TICK_OUTCOMES``: created, duplicate (another replica created
    #: it), forbidden, missed, invalid (the job would be refused), error.
    outcome: str
    job_id: int | None = None
    message: str = ""


def run_due(*, now: datetime, actor: str) -> tuple[list[Tick], float]:
    """Handle the due ticks of every enabled schedule; return them and the seconds until the next call."""
    due = list(
        JobSchedule.objects.filter(enabled=True, next_run_at__lte=now)
        .order_by("next_run_at", "pk")
        .values_list("pk", flat=True)[:BATCH]
    )
    ticks = []
    for pk in due:
        try:
            tick = materialize(pk, now=now, actor=actor)
        except (Fenced, DatabaseError):
            raise  # not ours to write, or the database is away: the tick stays due
        except Exception as exc:
            # A bug must not stop this schedule for good, nor the others: skip the tick, say why.
            log.exception("schedule tick failed", schedule_id=pk)
            tick = _skip_after_error(pk, now, exc)
        if tick is not None:
            ticks.append(tick)
    if len(due) == BATCH:
        return ticks, 0.0
    upcoming = JobSchedule.objects.filter(enabled=True).aggregate(at=Min("next_run_at"))["at"]
    wait = RESCAN_SECONDS if upcoming is None else (upcoming - now).total_seconds()
    return ticks, min(max(wait, 0.0), RESCAN_SECONDS)


def step(*, actor: str, clock: Callable[[], datetime] = timezone.now) -> Outcome:
    """The daemon's work-queue key for schedules: handle the due ticks, look again when the next is due."""
    _, wait = run_due(now=clock(), actor=actor)
    return RequeueAfter(wait, "the next schedule tick")


def materialize(schedule_id: int, *, now: datetime, actor: str) -> Tick | None:
    """Handle the due tick of one schedule, exactly once; None when it is not due (any more)."""
    with transaction.atomic():
        check_fence()
        rows = JobSchedule.objects.filter(pk=schedule_id, enabled=True, next_run_at__lte=now)
        if connection.features.has_select_for_update:
            # Another replica handling this schedule holds the row: it is not ours to do.
            rows = rows.select_for_update(skip_locked=connection.features.has_select_for_update_skip_locked)
        schedule = rows.first()
        if schedule is None:
            return None
        tick = _handle(schedule, now=now, actor=actor)
        JobSchedule.objects.filter(pk=schedule.pk).update(
            next_run_at=_next_run(schedule, now),
            last_scheduled_at=tick.at if tick.job_id is not None else schedule.last_scheduled_at,
            last_error=tick.message,
        )
    m.SCHEDULE_TICKS.labels(tick.outcome).inc()
    return tick


def _handle(schedule: JobSchedule, *, now: datetime, actor: str) -> Tick:
    due = schedule.next_run_at
    assert due is not None
    try:
        latest = schedule.latest_tick(now)
    except ValidationError as exc:  # a time zone or cron changed by SQL
        return Tick(schedule.name, due, "invalid", message=describe_validation_error(exc))
    tick = max(latest, due)
    _count_misses(schedule, due, tick)
    late = (now - tick).total_seconds()
    deadline = schedule.starting_deadline_seconds
    if deadline is not None and late > deadline:
        message = (
            f"tick {tick.isoformat()} missed: {late:.0f} s late, past starting_deadline_seconds={deadline}"
        )
        log.warning("schedule tick missed", schedule=schedule.name, tick=tick.isoformat(), late=late)
        return Tick(schedule.name, tick, "missed", message=message)
    unfinished = list(schedule.unfinished_jobs().values_list("pk", flat=True)[:100])
    if unfinished and schedule.concurrency_policy == ConcurrencyPolicy.FORBID:
        message = (
            f"tick {tick.isoformat()} skipped: job(s) {', '.join(map(str, unfinished))} of an earlier "
            "run are unfinished (concurrency_policy=forbid)"
        )
        return Tick(schedule.name, tick, "forbidden", message=message)
    if unfinished and schedule.concurrency_policy == ConcurrencyPolicy.REPLACE:
        for job_id in unfinished:
            request_cancel(job_id, actor=actor, message=f"replaced by the run of {tick.isoformat()}")
    job = schedule.make_job(tick)
    try:
        with transaction.atomic():
            job.save()
    except ValidationError as exc:
        # The settings or the host changed since the schedule was saved: skip, say why, go on.
        message = f"tick {tick.isoformat()} created no job: {describe_validation_error(exc)}"
        log.warning("schedule tick refused", schedule=schedule.name, error=message)
        return Tick(schedule.name, tick, "invalid", message=message)
    except IntegrityError:
        # (schedule, scheduled_for) is unique: the tick's job exists already, created by another
        # replica that read the schedule before this one advanced it. Advance it, create nothing.
        existing = schedule.jobs.filter(scheduled_for=tick).values_list("pk", flat=True).first()  # type: ignore[attr-defined]
        if existing is None:
            raise
        log.info("schedule tick already materialised", schedule=schedule.name, tick=tick.isoformat())
        return Tick(schedule.name, tick, "duplicate", job_id=existing)
    m.SCHEDULE_LAG.observe(max(0.0, (job.created_at - tick).total_seconds()))
    log.info("schedule tick materialised", schedule=schedule.name, tick=tick.isoformat(), job_id=job.pk)
    return Tick(schedule.name, tick, "created", job_id=job.pk)


def _skip_after_error(schedule_id: int, now: datetime, exc: Exception) -> Tick | None:
    schedule = JobSchedule.objects.filter(pk=schedule_id).first()
    if schedule is None or schedule.next_run_at is None:
        return None
    message = f"tick {schedule.next_run_at.isoformat()} failed: {type(exc).__name__}: {exc}"[:4000]
    JobSchedule.objects.filter(pk=schedule_id, next_run_at=schedule.next_run_at).update(
        next_run_at=_next_run(schedule, now), last_error=message
    )
    m.SCHEDULE_TICKS.labels("error").inc()
    return Tick(schedule.name, schedule.next_run_at, "error", message=message)


def _count_misses(schedule: JobSchedule, due: datetime, tick: datetime) -> None:
    """Ticks from ``due`` up to (not including) ``tick`` that will never run: count them."""
    missed, at = 0, due
    while at < tick and missed < MAX_COUNTED_MISSES:
        missed += 1
        at = schedule.tick_after(at)
    if missed:
        m.SCHEDULE_TICKS.labels("missed").inc(missed)
        log.warning("schedule ticks missed while nothing ran them", schedule=schedule.name, missed=missed)


def _next_run(schedule: JobSchedule, now: datetime) -> datetime | None:
    try:
        return schedule.tick_after(now)
    except ValidationError:
        return None  # a cron or time zone broken by SQL: the schedule stops until it is saved again
