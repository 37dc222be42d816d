"""Container jobs: desired state written by users, observed state written by the reconciler.

``save()`` validates everything (``container_manager.jobrules``). On a new row the
reconciler's fields must keep their defaults; on an existing row only the user-editable
fields are written, and only while the job is pending (``UPDATE ... WHERE status =
'pending'``), so a stale object saved from the admin can never overwrite what the daemon
recorded. Changing a reconciler-owned attribute and saving raises ``JobStateError`` instead
of being silently ignored.

Methods that drive execution (``launch``, ``get_status``, ``harvest``) call the reconciler's
one-job step lazily, so there is one code path whether or not the daemon runs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone

from container_manager import conf
from container_manager.conf import get_policy
from container_manager.envparse import mask_env
from container_manager.inputs import clean_fields_checked
from container_manager.jobrules import CONVERTERS, RECONCILER_FIELDS, changed_fixed_fields, clean_job
from container_manager.models.choices import JOB_STATUS_CHOICES, REASON_CHOICES
from container_manager.models.host import ExecutorHost, _protect_live_jobs
from container_manager.models.template import SECRET_KEYS_HELP, EnvironmentVariableTemplate
from container_manager.querysets import ContainerJobQuerySet
from container_manager.states import TERMINAL, JobStatus, Reason
from container_manager.validation import split_command

if TYPE_CHECKING:
    from container_manager.models.records import ContainerExecution

_TERMINAL_VALUES = sorted(s.value for s in TERMINAL)

#: Fields a user may change on a pending job; everything else belongs to the reconciler.
USER_EDITABLE_FIELDS = (
    "name",
    "image",
    "command",
    "docker_host",
    "environment_template",
    "override_environment",
    "secret_keys",
    "memory_limit",
    "cpu_limit",
    "timeout_seconds",
    "max_retries",
    "retry_backoff_seconds",
    "retry_backoff_max_seconds",
    "retry_on",
    "priority",
    "run_after",
)
#: Fields shown read-only everywhere: written by the reconciler, or fixed when the job is created.
MACHINE_FIELDS = (
    *RECONCILER_FIELDS,
    "created_at",
    "updated_at",
    "rerun_of",
    "created_by",
    "array",
    "array_index",
    "array_size",
    "schedule",
    "scheduled_for",
)


class ContainerJob(models.Model):
    """Represents a containerized job execution request.

    Core model for managing container jobs with full lifecycle tracking: the desired state is
    written by users, the observed state (status, timestamps, exit code, attempts) by the
    reconciler only.
    """

    name = models.CharField(max_length=200, blank=True, default="", db_default="")
    image = models.CharField(max_length=500, help_text="Image reference, e.g. python:3.12-slim.")
    command = models.TextField(
        blank=True,
        default="",
        db_default="",
        help_text="Arguments split with shell quoting rules and run without a shell; empty = image default.",
    )
    status = models.CharField(
        max_length=16,
        choices=JOB_STATUS_CHOICES,
        default=JobStatus.PENDING.value,
        db_default=JobStatus.PENDING.value,
        editable=False,
    )
    docker_host = models.ForeignKey(
        ExecutorHost,
        null=True,
        blank=True,
        on_delete=_protect_live_jobs,
        related_name="jobs",
        help_text="Pin the job to this host; empty lets the scheduler choose.",
    )
    environment_template = models.ForeignKey(
        EnvironmentVariableTemplate, null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    override_environment = models.TextField(
        blank=True, default="", db_default="", help_text="KEY=value lines applied over the template."
    )
    secret_keys = models.CharField(
        max_length=2000, blank=True, default="", db_default="", help_text=SECRET_KEYS_HELP
    )
    memory_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="MB; empty = settings default."
    )
    cpu_limit = models.FloatField(null=True, blank=True, help_text="Cores; empty = settings default.")
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True, help_text="Per attempt.")
    max_retries = models.PositiveSmallIntegerField(default=0, db_default=0)
    retry_backoff_seconds = models.FloatField(default=5.0, db_default=5.0)
    retry_backoff_max_seconds = models.FloatField(default=300.0, db_default=300.0)
    retry_on = models.CharField(
        max_length=200,
        blank=True,
        default="exit_code,oom,lost,launch_error",
        db_default="exit_code,oom,lost,launch_error",
        help_text="Comma-separated failure reasons that are retried.",
    )
    priority = models.SmallIntegerField(default=0, db_default=0, help_text="Higher runs first.")
    run_after = models.DateTimeField(null=True, blank=True, help_text="Do not start before this time.")

    created_at = models.DateTimeField(default=timezone.now, db_default=Now(), editable=False)
    updated_at = models.DateTimeField(default=timezone.now, db_default=Now(), editable=False)
    started_at = models.DateTimeField(null=True, blank=True, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    exit_code = models.IntegerField(null=True, blank=True, editable=False)
    failure_reason = models.CharField(
        max_length=32, choices=REASON_CHOICES, blank=True, default="", db_default="", editable=False
    )
    status_message = models.TextField(blank=True, default="", db_default="", editable=False)
    attempts = models.PositiveSmallIntegerField(default=0, db_default=0, editable=False)
    cancel_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    rerun_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reruns", editable=False
    )
    created_by = models.CharField(max_length=150, blank=True, default="", db_default="")

    # Workflows: fixed when the job is created (``depends_on`` may still grow while it is pending).
    depends_on = models.ManyToManyField(
        "self",
        symmetrical=False,
        through="container_manager.JobDependency",
        through_fields=("job", "depends_on"),
        related_name="dependents",
        blank=True,
        help_text="Start only after all of these jobs completed; if one ends otherwise, this one is "
        "cancelled (dependency_failed).",
    )
    array = models.ForeignKey(
        "container_manager.JobArray",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        editable=False,
        db_index=False,  # the (array, array_index) constraint's index serves lookups
    )
    array_index = models.PositiveIntegerField(
        null=True, blank=True, editable=False, help_text="0..array_size-1; the container's CM_ARRAY_INDEX."
    )
    array_size = models.PositiveIntegerField(
        null=True, blank=True, editable=False, help_text="Jobs in the array; the container's CM_ARRAY_SIZE."
    )
    schedule = models.ForeignKey(
        "container_manager.JobSchedule",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        editable=False,
        db_index=False,  # the (schedule, scheduled_for) constraint's index serves lookups
    )
    scheduled_for = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="The schedule's tick this job was created for."
    )

    objects = ContainerJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("cancel_containerjob", "Can cancel container jobs"),
            ("rerun_containerjob", "Can re-run container jobs"),
        ]
        indexes = [
            models.Index(
                fields=["-priority", "created_at"],
                name="cm_job_claim_idx",
                condition=Q(status__in=["pending", "retrying"]),
            ),
            models.Index(fields=["status"], name="cm_job_status_idx"),
            models.Index(fields=["created_at"], name="cm_job_created_idx"),
            models.Index(fields=["finished_at"], name="cm_job_finished_idx"),
            # How many of an array run (its parallelism), which jobs of a schedule are unfinished.
            models.Index(
                fields=["array", "status"], name="cm_job_array_status_idx", condition=Q(array__isnull=False)
            ),
            models.Index(
                fields=["schedule", "status"],
                name="cm_job_schedule_status_idx",
                condition=Q(schedule__isnull=False),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=[s.value for s in JobStatus]), name="cm_job_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(failure_reason__in=[r.value for r in Reason]), name="cm_job_reason_valid"
            ),
            models.CheckConstraint(condition=~Q(image=""), name="cm_job_image_not_empty"),
            # Bounds of what the code can compute with (conf.ABSOLUTE_*), whatever the settings say.
            # Upper bounds also refuse text that SQLite would store in a numeric column.
            models.CheckConstraint(
                condition=Q(memory_limit__isnull=True)
                | Q(
                    memory_limit__gte=conf.ABSOLUTE_MIN_MEMORY_MB,
                    memory_limit__lte=conf.ABSOLUTE_MAX_MEMORY_MB,
                ),
                name="cm_job_memory_range",
            ),
            models.CheckConstraint(
                condition=Q(cpu_limit__isnull=True)
                | Q(cpu_limit__gte=conf.ABSOLUTE_MIN_CPU, cpu_limit__lte=conf.ABSOLUTE_MAX_CPU),
                name="cm_job_cpu_range",
            ),
            models.CheckConstraint(
                condition=Q(timeout_seconds__isnull=True)
                | Q(timeout_seconds__gte=1, timeout_seconds__lte=conf.ABSOLUTE_MAX_SECONDS),
                name="cm_job_timeout_range",
            ),
            models.CheckConstraint(
                condition=Q(max_retries__gte=0, max_retries__lte=conf.ABSOLUTE_MAX_RETRIES),
                name="cm_job_retries_range",
            ),
            # On PostgreSQL NaN compares greater than every number, so the upper bounds refuse it too.
            models.CheckConstraint(
                condition=Q(
                    retry_backoff_seconds__gte=0, retry_backoff_seconds__lte=conf.ABSOLUTE_MAX_SECONDS
                )
                & Q(
                    retry_backoff_max_seconds__gte=0, retry_backoff_max_seconds__lte=conf.ABSOLUTE_MAX_SECONDS
                ),
                name="cm_job_backoff_range",
            ),
            models.CheckConstraint(
                condition=Q(priority__gte=conf.PRIORITY_RANGE[0], priority__lte=conf.PRIORITY_RANGE[1]),
                name="cm_job_priority_range",
            ),
            models.CheckConstraint(
                condition=~Q(status__in=_TERMINAL_VALUES) | Q(finished_at__isnull=False),
                name="cm_job_terminal_has_finished_at",
            ),
            # One job per array index, and one per schedule tick: the tick's "exactly once".
            models.UniqueConstraint(fields=["array", "array_index"], name="cm_job_array_index_unique"),
            models.UniqueConstraint(fields=["schedule", "scheduled_for"], name="cm_job_schedule_tick_unique"),
            models.CheckConstraint(
                condition=Q(array_index__isnull=True, array_size__isnull=True, array__isnull=True)
                | Q(array_index__isnull=False, array_size__gte=1, array_index__lt=F("array_size")),
                name="cm_job_array_index_range",
            ),
        ]

    def __str__(self) -> str:
        label = self.name or self.image
        return f"job {self.pk} ({label}) [{self.status}]"

    def __repr__(self) -> str:
        return f"<ContainerJob id={self.pk} image={self.image!r} status={self.status!r}>"

    # Validation and saving -------------------------------------------------------------

    @classmethod
    def from_db(cls, db: Any, field_names: Any, values: Any, **kwargs: Any) -> ContainerJob:
        # **kwargs: Django 6.1 passes fetch_mode; 5.2 passes nothing more.
        job = super().from_db(db, field_names, values, **kwargs)
        job._remember_fixed()
        return job

    def refresh_from_db(self, *args: Any, **kwargs: Any) -> None:
        super().refresh_from_db(*args, **kwargs)
        self._remember_fixed()

    def _remember_fixed(self) -> None:
        """Note the values of the fields ``save()`` never writes, to refuse changes to them."""
        self._fixed = {
            f.attname: self.__dict__[f.attname]
            for f in self._meta.concrete_fields
            if f.name not in USER_EDITABLE_FIELDS and not f.primary_key and f.attname in self.__dict__
        }

    def clean_fields(self, exclude: Any = None) -> None:
        clean_fields_checked(
            self,
            exclude,
            get_policy(),
            super().clean_fields,
            converters=CONVERTERS,
            skip=set(RECONCILER_FIELDS),
        )

    def clean(self) -> None:
        clean_job(self, get_policy())

    def prepare_for_insert(self) -> None:
        """Validate and fill defaults from settings, as ``save()`` does before an INSERT."""
        policy = get_policy()
        if self.memory_limit is None:
            self.memory_limit = policy.default_memory_mb
        if self.cpu_limit is None:
            self.cpu_limit = policy.default_cpu
        if self.timeout_seconds is None:
            self.timeout_seconds = policy.default_timeout_seconds
        self.full_clean(validate_unique=False, validate_constraints=False)

    def save(self, *args: Any, **kwargs: Any) -> None:
        from container_manager.exceptions import JobStateError

        if self._state.adding:
            self.prepare_for_insert()
            # Never Django's "UPDATE if the pk exists": a new job is an INSERT or nothing.
            kwargs["force_insert"] = True
            super().save(*args, **kwargs)
            self._remember_fixed()
            return
        update_fields = kwargs.get("update_fields")
        changed = changed_fixed_fields(self, getattr(self, "_fixed", {}), update_fields)
        if changed:
            raise JobStateError(
                f"{', '.join(changed)}: written only by the reconciler or fixed when the job was created, "
                "so save() cannot change it; nothing was saved (use cancel(), rerun() or launch())"
            )
        self.full_clean(validate_unique=False, validate_constraints=False)
        values = {}
        for name in USER_EDITABLE_FIELDS:
            attname = getattr(self._meta.get_field(name), "attname", name)
            if update_fields is None or name in update_fields or attname in update_fields:
                values[attname] = getattr(self, attname)
        now = timezone.now()
        values["updated_at"] = now
        updated = type(self).objects.filter(pk=self.pk, status=JobStatus.PENDING).update(**values)
        if not updated:
            current = type(self).objects.filter(pk=self.pk).values_list("status", flat=True).first()
            raise JobStateError(
                f"job {self.pk} is {current or 'deleted'}; only pending jobs can be edited (use rerun())"
            )
        self.updated_at = now
        self._remember_fixed()

    # Desired state, resolved -------------------------------------------------------------

    def get_all_environment_variables(self) -> dict[str, str]:
        """The template's variables with this job's overrides applied on top."""
        from container_manager.jobrules import job_environment

        return job_environment(self)

    def get_secret_keys(self) -> frozenset[str]:
        """Names of this job's variables whose values must never be shown or logged: names that
        look secret, names marked in ``secret_keys`` (the job's or its template's), and
        variables holding a password inside a URL. Raises ``ValidationError`` like
        ``get_all_environment_variables()``."""
        from container_manager.jobrules import job_secret_keys

        return job_secret_keys(self)

    def get_safe_environment_variables(self) -> dict[str, str]:
        """``get_all_environment_variables()`` with secret values masked (see ``get_secret_keys``);
        in a URL, only the password is masked."""
        from container_manager.jobrules import job_marked_keys

        return mask_env(self.get_all_environment_variables(), job_marked_keys(self))

    @property
    def argv(self) -> tuple[str, ...]:
        return split_command(self.command or "")

    # Observed state ----------------------------------------------------------------------

    @property
    def is_terminal_status(self) -> bool:
        """True once the job is completed, failed, timed out or cancelled: it will not change again."""
        return self.status in _TERMINAL_VALUES

    @property
    def runtime_duration(self) -> timedelta | None:
        """Time from the first container start to the end (or to now while it runs)."""
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return end - self.started_at

    @property
    def resource_utilization(self) -> dict[str, Any]:
        """Memory and CPU use: a live sample while running, else what the last attempt recorded."""
        from container_manager.observe import resource_utilization

        return resource_utilization(self)

    @property
    def latest_execution(self) -> ContainerExecution | None:
        return self.executions.order_by("-attempt").first()

    # Driving the job (one code path with the daemon) -------------------------------------

    def launch(self) -> str:
        """Start the job now (claim, pick a host, start the container); returns the new status.

        Safe to call while the daemon runs: claiming is a compare-and-swap and container names
        are deterministic, so a job is never launched twice.
        """
        from container_manager import driving

        return driving.launch(self)

    def get_status(self) -> str:
        """Observe the container, record any change, refresh this object, return the status."""
        from container_manager import driving

        return driving.observe(self)

    def harvest(self) -> ContainerExecution | None:
        """Finish a done attempt (record exit code and logs, clean up) and return it."""
        from container_manager import driving

        return driving.harvest(self)

    def cancel(self, *, actor: str = "api", message: str = "") -> bool:
        """Request cancellation; True if the request was recorded (False once terminal)."""
        from container_manager.services import request_cancel

        changed = request_cancel(self.pk, actor=actor, message=message)
        self.refresh_from_db()
        return changed

    def rerun(self, *, actor: str = "api") -> ContainerJob:
        """Create and return a new pending job with the same desired state, linked to this one."""
        from container_manager.services import rerun_job

        return rerun_job(self, actor=actor)

    def get_logs(self, stream: str = "all", tail: int | None = None) -> str:
        """Output of the latest attempt: live from the executor while it runs, else as recorded."""
        from container_manager.observe import job_logs

        return job_logs(self, stream=stream, tail=tail)
