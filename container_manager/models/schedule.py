"""Cron schedules that create container jobs: the desired state of recurring work.

A ``JobSchedule`` holds a five-field cron expression in a time zone and the fields of the jobs
it creates. The daemon (``reconciler.schedules``) creates one job per due tick, exactly once:
each job records its tick in ``scheduled_for``, and (schedule, scheduled_for) is unique in the
database. ``next_run_at`` and ``last_scheduled_at`` are the daemon's; ``save()`` never writes
a stale copy of them: it recomputes ``next_run_at`` only when the timing changed (cron, time
zone, or the schedule being enabled), from the current row, under a lock.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone as django_timezone

from container_manager import crontab
from container_manager.conf import get_policy
from container_manager.inputs import clean_fields_checked
from container_manager.jobrules import CONVERTERS
from container_manager.models.host import ExecutorHost
from container_manager.models.job import USER_EDITABLE_FIELDS, ContainerJob
from container_manager.models.template import EnvironmentVariableTemplate
from container_manager.states import ACTIVE

if TYPE_CHECKING:
    from container_manager.querysets import ContainerJobQuerySet

#: The job fields a schedule holds, defined once on ``ContainerJob`` (copied here, not shared):
#: the desired state of a job, but for its name, its relations and its start time.
JOB_FIELDS = tuple(
    name
    for name in USER_EDITABLE_FIELDS
    if name not in ("name", "docker_host", "environment_template", "run_after")
)
#: What a schedule's own form may change; the rest is the daemon's.
SCHEDULE_FIELDS = (
    "name",
    "cron",
    "timezone",
    "enabled",
    "concurrency_policy",
    "starting_deadline_seconds",
    "docker_host",
    "environment_template",
    *JOB_FIELDS,
)
#: Longest ``starting_deadline_seconds`` (a year): later than that a tick is no longer "late".
MAX_STARTING_DEADLINE = 366 * 24 * 3600


def _job_field(name: str) -> Any:
    return ContainerJob._meta.get_field(name).clone()  # type: ignore[union-attr]


class ConcurrencyPolicy(models.TextChoices):
    """What a tick does while jobs of earlier ticks are unfinished (Kubernetes CronJob's names)."""

    #: create the job anyway: runs may overlap.
    ALLOW = "allow", "Allow (runs may overlap)"
    #: skip the tick.
    FORBID = "forbid", "Forbid (skip the tick)"
    #: cancel the unfinished jobs, then create the new one.
    REPLACE = "replace", "Replace (cancel the running job)"


class JobSchedule(models.Model):
    """Creates a ``ContainerJob`` at every tick of a cron expression."""

    name = models.CharField(max_length=100, unique=True)
    cron = models.CharField(
        max_length=crontab.MAX_CRON_LENGTH,
        help_text="Five fields: minute hour day-of-month month day-of-week, e.g. '30 2 * * *'.",
    )
    timezone = models.CharField(
        max_length=64, default="UTC", db_default="UTC", help_text="IANA time zone the cron is read in."
    )
    enabled = models.BooleanField(default=True, db_default=True)
    concurrency_policy = models.CharField(
        max_length=8,
        choices=ConcurrencyPolicy.choices,
        default=ConcurrencyPolicy.ALLOW,
        db_default=ConcurrencyPolicy.ALLOW.value,
    )
    starting_deadline_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="A tick not run within this many seconds (the daemon was down) is skipped; empty = run it late.",
    )

    image = _job_field("image")
    command = _job_field("command")
    docker_host = models.ForeignKey(
        ExecutorHost,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="schedules",
        help_text="Pin the jobs to this host; empty lets the scheduler choose.",
    )
    environment_template = models.ForeignKey(
        EnvironmentVariableTemplate,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="schedules",
    )
    override_environment = _job_field("override_environment")
    secret_keys = _job_field("secret_keys")
    memory_limit = _job_field("memory_limit")
    cpu_limit = _job_field("cpu_limit")
    timeout_seconds = _job_field("timeout_seconds")
    max_retries = _job_field("max_retries")
    retry_backoff_seconds = _job_field("retry_backoff_seconds")
    retry_backoff_max_seconds = _job_field("retry_backoff_max_seconds")
    retry_on = _job_field("retry_on")
    priority = _job_field("priority")

    next_run_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="The next tick; empty while disabled."
    )
    last_scheduled_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="The last tick that created a job."
    )
    last_error = models.TextField(
        blank=True, default="", db_default="", editable=False, help_text="Why the last tick created no job."
    )
    created_at = models.DateTimeField(default=django_timezone.now, editable=False)
    updated_at = models.DateTimeField(default=django_timezone.now, editable=False)
    created_by = models.CharField(max_length=150, blank=True, default="", db_default="")

    class Meta:
        ordering = ["name"]
        indexes = [
            models.Index(fields=["next_run_at"], name="cm_schedule_due_idx", condition=Q(enabled=True)),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(concurrency_policy__in=[p.value for p in ConcurrencyPolicy]),
                name="cm_schedule_policy_valid",
            ),
            models.CheckConstraint(
                condition=Q(starting_deadline_seconds__isnull=True)
                | Q(starting_deadline_seconds__gte=1, starting_deadline_seconds__lte=MAX_STARTING_DEADLINE),
                name="cm_schedule_deadline_range",
            ),
            models.CheckConstraint(condition=~Q(image=""), name="cm_schedule_image_not_empty"),
        ]

    def __str__(self) -> str:
        return f"schedule {self.name} ({self.cron} {self.timezone})"

    # Validation and saving ---------------------------------------------------------------

    def clean_fields(self, exclude: Any = None) -> None:
        clean_fields_checked(self, exclude, get_policy(), super().clean_fields, converters=CONVERTERS)

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        for check, field in ((crontab.check_cron, "cron"), (crontab.check_timezone, "timezone")):
            try:
                value = check(getattr(self, field))
            except ValidationError as exc:
                errors.setdefault(field, []).extend(exc.message_dict[field])
            else:
                if field == "cron":
                    self.cron = value  # type: ignore[assignment]
        deadline = self.starting_deadline_seconds
        if isinstance(deadline, int) and not 1 <= deadline <= MAX_STARTING_DEADLINE:
            errors.setdefault("starting_deadline_seconds", []).append(
                f"starting_deadline_seconds must be between 1 and {MAX_STARTING_DEADLINE} (or empty)"
            )
        # The jobs it creates must pass the jobs' own rules: check one now, not at every tick.
        try:
            self.make_job(None).full_clean(validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                errors.setdefault(field, []).extend(messages)
        if errors:
            raise ValidationError(errors)

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.full_clean(validate_constraints=False)
        now = django_timezone.now()
        with transaction.atomic():
            if not self._state.adding:
                self._keep_daemon_fields(now)
            elif self.enabled:
                self.next_run_at = self.tick_after(now)
            else:
                self.next_run_at = None
            self.updated_at = now
            super().save(*args, **kwargs)

    def _keep_daemon_fields(self, now: datetime) -> None:
        """Take the daemon's fields from the locked row; a new ``next_run_at`` only if the timing changed."""
        current = JobSchedule.objects.select_for_update().filter(pk=self.pk).first()
        if current is None:
            raise ValidationError({"name": f"schedule {self.pk} no longer exists"})
        self.last_scheduled_at = current.last_scheduled_at
        self.last_error = current.last_error
        timing_changed = (current.cron, current.timezone) != (self.cron, self.timezone)
        if not self.enabled:
            self.next_run_at = None
        elif timing_changed or not current.enabled or current.next_run_at is None:
            self.next_run_at = self.tick_after(now)
        else:
            self.next_run_at = current.next_run_at

    # Times --------------------------------------------------------------------------------

    def _timing(self) -> tuple[str, Any]:
        """The cron and the zone, checked again: a row written by SQL gives a ``ValidationError``."""
        return crontab.check_cron(self.cron), crontab.check_timezone(self.timezone)

    def tick_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""
        return crontab.next_tick(*self._timing(), moment)

    def latest_tick(self, moment: datetime) -> datetime:
        """The last tick at or before ``moment``."""
        return crontab.latest_tick(*self._timing(), moment)

    # Jobs ----------------------------------------------------------------------------------

    def make_job(self, tick: datetime | None, *, actor: str = "") -> ContainerJob:
        """The (unsaved) job of ``tick``; ``tick`` None for a run outside the schedule ("run now")."""
        values = {name: getattr(self, name) for name in JOB_FIELDS}
        return ContainerJob(
            name=self.name,
            docker_host_id=self.docker_host_id,
            environment_template_id=self.environment_template_id,
            schedule=self if self.pk is not None else None,
            scheduled_for=tick,
            created_by=actor or f"schedule:{self.name}",
            **values,
        )

    def unfinished_jobs(self) -> ContainerJobQuerySet:
        return self.jobs.filter(status__in=[s.value for s in ACTIVE])  # type: ignore[attr-defined,no-any-return]

    def run_now(self, *, actor: str = "api") -> ContainerJob:
        """Create one job now, outside the schedule (no tick, no concurrency policy), and return it."""
        if self.pk is None:
            raise ValidationError({"name": "save the schedule before running it"})
        job = self.make_job(None, actor=actor)
        job.save()
        return job

    def pause(self) -> None:
        """Stop creating jobs (ticks while paused are skipped, not caught up)."""
        self.enabled = False
        self.save()

    def resume(self) -> None:
        """Create jobs again, from the next tick after now."""
        self.enabled = True
        self.save()
