"""The four models of the public API plus the append-only job history.

A ``ContainerJob`` row is desired state (image, command, limits, retry policy) plus a summary
of observed state that only the reconciler writes, through compare-and-swap updates in
``container_manager.transitions``. ``save()`` therefore validates everything and, on an
existing row, writes only user-editable fields and only while the job is still pending: a
stale object saved from the admin can never overwrite what the daemon recorded.

Methods that drive execution (``launch``, ``get_status``, ``harvest``) call the reconciler's
one-job step lazily, so there is one code path whether or not the daemon runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from container_manager.conf import get_policy
from container_manager.envparse import EnvParseError, mask_env, parse_env
from container_manager.querysets import (
    ContainerExecutionQuerySet,
    ContainerJobQuerySet,
    ExecutorHostQuerySet,
)
from container_manager.states import LIVE_EXECUTION_VALUES, TERMINAL, ExecutionStatus, JobStatus, Reason
from container_manager.validation import (
    join_command,
    parse_retry_on,
    split_command,
    validate_image,
    validate_limits,
)

if TYPE_CHECKING:
    from executors.base import Executor
    from executors.types import HealthReport

_TERMINAL_VALUES = sorted(s.value for s in TERMINAL)


class ExecutorType(models.TextChoices):
    DOCKER = "docker", "Docker"
    CLOUDRUN = "cloudrun", "Google Cloud Run"
    MOCK = "mock", "Mock (in-memory, for tests)"


class HealthStatus(models.TextChoices):
    UNKNOWN = "unknown", "Unknown"
    HEALTHY = "healthy", "Healthy"
    UNHEALTHY = "unhealthy", "Unhealthy"


def _choices(members: Any) -> list[tuple[str, str]]:
    return [(m.value, m.name.replace("_", " ").title()) for m in members]


JOB_STATUS_CHOICES = _choices(JobStatus)
EXECUTION_STATUS_CHOICES = _choices(ExecutionStatus)
REASON_CHOICES = _choices(Reason)


def _protect_live_jobs(collector: Any, field: Any, sub_objs: Any, using: str) -> None:
    """on_delete: refuse to delete a host that unfinished work depends on; else keep history, unlinked."""
    rows = list(sub_objs)
    live = [
        row
        for row in rows
        if (
            row.status in LIVE_EXECUTION_VALUES
            if isinstance(row, ContainerExecution)
            else not row.is_terminal_status
        )
    ]
    if live:
        raise models.ProtectedError(
            f"cannot delete this host: {len(live)} unfinished job(s) or attempt(s) still use it", set(live)
        )
    models.SET_NULL(collector, field, sub_objs, using)


def _default_max_concurrent_jobs() -> int:
    return get_policy().default_max_concurrent_jobs


class ExecutorHost(models.Model):
    """Represents an execution environment (Docker daemon, Cloud Run region, or the mock).

    Holds connection details, health and a concurrency limit for job execution.
    """

    name = models.CharField(max_length=100, unique=True, help_text="Human-readable identifier.")
    executor_type = models.CharField(
        max_length=16, choices=ExecutorType.choices, default=ExecutorType.DOCKER, db_default="docker"
    )
    connection_string = models.CharField(
        max_length=500,
        blank=True,
        default="",
        db_default="",
        help_text="unix:///var/run/docker.sock, tcp://host:2376, ssh://user@host, or projects/P/locations/R.",
    )
    executor_config = models.JSONField(
        default=dict, blank=True, help_text="Backend options (TLS file paths, Cloud Run service account...)."
    )
    is_active = models.BooleanField(default=True, db_default=True)
    last_health_check = models.DateTimeField(null=True, blank=True)
    health_status = models.CharField(
        max_length=16, choices=HealthStatus.choices, default=HealthStatus.UNKNOWN, db_default="unknown"
    )
    health_message = models.TextField(blank=True, default="", db_default="")
    max_concurrent_jobs = models.PositiveIntegerField(
        default=_default_max_concurrent_jobs,
        db_default=10,
        help_text="Attempts allowed to run at once on this host (default: settings).",
    )
    description = models.TextField(blank=True, default="", db_default="")
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())

    objects = ExecutorHostQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        permissions = [("check_executorhost", "Can run executor host health checks")]
        constraints = [
            models.CheckConstraint(
                condition=Q(executor_type__in=[c.value for c in ExecutorType]), name="cm_host_type_valid"
            ),
            models.CheckConstraint(condition=Q(max_concurrent_jobs__gte=1), name="cm_host_capacity_positive"),
            models.CheckConstraint(condition=~Q(name=""), name="cm_host_name_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from container_manager.hostconfig import validate_host

        validate_host(self, get_policy())

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.full_clean(validate_unique=False, validate_constraints=False)
        super().save(*args, **kwargs)

    def get_executor(self) -> Executor:
        """The executor instance for this host (cached per host and configuration)."""
        from executors.registry import get_executor

        return get_executor(self)

    def health_check(self, timeout: float = 5.0) -> HealthReport:
        """Probe the host, record the result, and return it (truthy when healthy)."""
        from container_manager.hostconfig import run_health_check

        return run_health_check(self, timeout)

    def get_capacity(self) -> dict[str, int]:
        """Concurrency limit, live attempts, and free slots on this host."""
        running = self.executions.filter(status__in=LIVE_EXECUTION_VALUES).count()
        return {
            "max_concurrent_jobs": self.max_concurrent_jobs,
            "running": running,
            "available": max(0, self.max_concurrent_jobs - running),
        }


class EnvironmentVariableTemplate(models.Model):
    """Template for environment variable sets used across multiple jobs.

    Provides reusable environment configurations for consistent job execution.
    """

    name = models.CharField(max_length=100, unique=True)
    environment_variables_text = models.TextField(
        blank=True,
        default="",
        db_default="",
        help_text="KEY=value per line; # comments, blank lines, quotes and 'export' allowed.",
    )
    description = models.TextField(blank=True, default="", db_default="")
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<EnvironmentVariableTemplate {self.name!r} keys={list(self.safe_variables())}>"

    def get_environment_variables_dict(self) -> dict[str, str]:
        """Parsed variables; raises ``ValidationError`` naming the bad line."""
        try:
            return parse_env(self.environment_variables_text)
        except EnvParseError as exc:
            raise ValidationError({"environment_variables_text": str(exc)}) from None

    def validate_format(self) -> list[str]:
        """Error messages for the text, each naming its line; empty when the text is valid."""
        try:
            parse_env(self.environment_variables_text)
        except EnvParseError as exc:
            return [str(exc)]
        return []

    def safe_variables(self) -> dict[str, str]:
        """Variables with secret-looking values masked, for display and logs."""
        try:
            return mask_env(parse_env(self.environment_variables_text))
        except EnvParseError:
            return {}

    def clean(self) -> None:
        errors = self.validate_format()
        if errors:
            raise ValidationError({"environment_variables_text": errors})

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.full_clean(validate_unique=False, validate_constraints=False)
        super().save(*args, **kwargs)


#: Fields a user may change on a pending job; everything else belongs to the reconciler.
USER_EDITABLE_FIELDS = (
    "name",
    "image",
    "command",
    "docker_host",
    "environment_template",
    "override_environment",
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
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=[s.value for s in JobStatus]), name="cm_job_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(failure_reason__in=[r.value for r in Reason]), name="cm_job_reason_valid"
            ),
            models.CheckConstraint(condition=~Q(image=""), name="cm_job_image_not_empty"),
            models.CheckConstraint(
                condition=Q(memory_limit__isnull=True) | Q(memory_limit__gte=4), name="cm_job_memory_min"
            ),
            models.CheckConstraint(
                condition=Q(cpu_limit__isnull=True) | Q(cpu_limit__gt=0), name="cm_job_cpu_positive"
            ),
            models.CheckConstraint(
                condition=Q(timeout_seconds__isnull=True) | Q(timeout_seconds__gte=1),
                name="cm_job_timeout_min",
            ),
            models.CheckConstraint(
                condition=Q(retry_backoff_seconds__gte=0) & Q(retry_backoff_max_seconds__gte=0),
                name="cm_job_backoff_nonnegative",
            ),
            models.CheckConstraint(
                condition=~Q(status__in=_TERMINAL_VALUES) | Q(finished_at__isnull=False),
                name="cm_job_terminal_has_finished_at",
            ),
        ]

    def __str__(self) -> str:
        label = self.name or self.image
        return f"job {self.pk} ({label}) [{self.status}]"

    def __repr__(self) -> str:
        return f"<ContainerJob id={self.pk} image={self.image!r} status={self.status!r}>"

    # Validation ------------------------------------------------------------------------

    def _normalize(self) -> None:
        if isinstance(self.command, list | tuple):
            self.command = join_command(self.command)
        if self.command is None:
            self.command = ""

    def clean(self) -> None:
        self._normalize()
        policy = get_policy()
        errors: dict[str, list[str]] = {}

        def collect(fn: Any, *args: Any, **kwargs: Any) -> None:
            try:
                fn(*args, **kwargs)
            except ValidationError as exc:
                for field, messages in exc.message_dict.items():
                    errors.setdefault(field, []).extend(messages)

        collect(validate_image, self.image or "", policy)
        collect(split_command, self.command)
        collect(
            validate_limits,
            memory_limit=self.memory_limit,
            cpu_limit=self.cpu_limit,
            timeout_seconds=self.timeout_seconds,
            max_retries=self.max_retries,
            policy=policy,
        )
        collect(parse_retry_on, self.retry_on)
        if self.retry_backoff_seconds is not None and self.retry_backoff_seconds < 0:
            errors.setdefault("retry_backoff_seconds", []).append("retry_backoff_seconds must be >= 0")
        if (
            self.retry_backoff_max_seconds is not None
            and self.retry_backoff_seconds is not None
            and self.retry_backoff_max_seconds < self.retry_backoff_seconds
        ):
            errors.setdefault("retry_backoff_max_seconds", []).append(
                "retry_backoff_max_seconds must be >= retry_backoff_seconds"
            )
        if self.priority is not None and not -32768 <= self.priority <= 32767:
            # SQLite does not bound a SmallIntegerField, PostgreSQL does: refuse it the same way on both.
            errors.setdefault("priority", []).append("priority must be between -32768 and 32767")
        try:
            parse_env(self.override_environment)
        except EnvParseError as exc:
            errors.setdefault("override_environment", []).append(str(exc))
        if (
            self.docker_host_id is not None
            and self.docker_host is not None
            and not self.docker_host.is_active
        ):
            errors.setdefault("docker_host", []).append(f"host {self.docker_host.name!r} is not active")
        if self._state.adding and self.status != JobStatus.PENDING:
            errors.setdefault("status", []).append(
                "new jobs start as 'pending'; status is changed only by the reconciler"
            )
        if errors:
            raise ValidationError(errors)

    def prepare_for_insert(self) -> None:
        """Validate and fill defaults from settings, as ``save()`` does before an INSERT."""
        self._normalize()
        policy = get_policy()
        if self.memory_limit is None:
            self.memory_limit = policy.default_memory_mb
        if self.cpu_limit is None:
            self.cpu_limit = policy.default_cpu
        if self.timeout_seconds is None:
            self.timeout_seconds = policy.default_timeout_seconds
        self.full_clean(validate_unique=False, validate_constraints=False)

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self._state.adding:
            self.prepare_for_insert()
            super().save(*args, **kwargs)
            return
        self._normalize()
        self.full_clean(validate_unique=False, validate_constraints=False)
        from container_manager.exceptions import JobStateError

        update_fields = kwargs.get("update_fields")
        names = [f for f in USER_EDITABLE_FIELDS if update_fields is None or f in update_fields]
        values = {}
        for name in names:
            field = self._meta.get_field(name)
            attname = getattr(field, "attname", name)
            values[attname] = getattr(self, attname)
        values["updated_at"] = timezone.now()
        updated = type(self).objects.filter(pk=self.pk, status=JobStatus.PENDING).update(**values)
        if not updated:
            current = type(self).objects.filter(pk=self.pk).values_list("status", flat=True).first()
            raise JobStateError(
                f"job {self.pk} is {current or 'deleted'}; only pending jobs can be edited (use rerun())"
            )

    # Desired state, resolved -------------------------------------------------------------

    def get_all_environment_variables(self) -> dict[str, str]:
        """The template's variables with this job's overrides applied on top."""
        env: dict[str, str] = {}
        if self.environment_template_id:
            env.update(self.environment_template.get_environment_variables_dict())  # type: ignore[union-attr]
        try:
            env.update(parse_env(self.override_environment))
        except EnvParseError as exc:
            raise ValidationError({"override_environment": str(exc)}) from None
        return env

    def get_safe_environment_variables(self) -> dict[str, str]:
        """``get_all_environment_variables()`` with secret-looking values masked."""
        return mask_env(self.get_all_environment_variables())

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
        from reconciler.api import resource_utilization

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
        from reconciler.api import launch_job

        return launch_job(self)

    def get_status(self) -> str:
        """Observe the container, record any change, refresh this object, return the status."""
        from reconciler.api import observe_job

        return observe_job(self)

    def harvest(self) -> ContainerExecution | None:
        """Finish a done attempt (record exit code and logs, clean up) and return it."""
        from reconciler.api import harvest_job

        return harvest_job(self)

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
        from reconciler.api import job_logs

        return job_logs(self, stream=stream, tail=tail)


class ContainerExecution(models.Model):
    """Tracks individual execution attempts for a ContainerJob.

    One row per attempt, written before the container is created (write-ahead) and owned by
    the reconciler; it keeps bounded tails of stdout and stderr for debugging.
    """

    job = models.ForeignKey(ContainerJob, on_delete=models.CASCADE, related_name="executions")
    attempt = models.PositiveSmallIntegerField()
    executor_host = models.ForeignKey(
        ExecutorHost, null=True, blank=True, on_delete=_protect_live_jobs, related_name="executions"
    )
    host_name = models.CharField(max_length=100, blank=True, default="")
    executor_type = models.CharField(max_length=16, blank=True, default="")
    container_name = models.CharField(max_length=200, unique=True)
    container_id = models.CharField(max_length=300, blank=True, default="")
    status = models.CharField(
        max_length=16, choices=EXECUTION_STATUS_CHOICES, default=ExecutionStatus.LAUNCHING.value
    )
    exit_code = models.IntegerField(null=True, blank=True)
    oom_killed = models.BooleanField(default=False)
    reason = models.CharField(max_length=32, choices=REASON_CHOICES, blank=True, default="")
    message = models.TextField(blank=True, default="")
    stdout = models.TextField(blank=True, default="")
    stderr = models.TextField(blank=True, default="")
    stdout_truncated = models.BooleanField(default=False)
    stderr_truncated = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True)
    cpu_seconds = models.FloatField(null=True, blank=True)
    cleaned_up = models.BooleanField(default=False)

    objects = ContainerExecutionQuerySet.as_manager()

    class Meta:
        ordering = ["job_id", "attempt"]
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt"], name="cm_execution_job_attempt_unique"),
            models.CheckConstraint(condition=Q(attempt__gte=1), name="cm_execution_attempt_positive"),
            models.CheckConstraint(
                condition=Q(status__in=[s.value for s in ExecutionStatus]), name="cm_execution_status_valid"
            ),
        ]
        indexes = [
            # Not partial: SQLite uses a partial index only for literal values, not bound parameters.
            models.Index(fields=["executor_host", "status"], name="cm_execution_host_status_idx"),
            models.Index(fields=["cleaned_up"], name="cm_execution_dirty_idx", condition=Q(cleaned_up=False)),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} attempt {self.attempt} [{self.status}]"

    @property
    def logs(self) -> str:
        """Captured output: stdout, then stderr."""
        return self.stdout + self.stderr

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_EXECUTION_VALUES

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        end: datetime = self.finished_at or timezone.now()
        return end - self.started_at

    def get_container_info(self) -> dict[str, Any]:
        """What the executor reports about this attempt's container now, plus what was recorded."""
        from reconciler.api import container_info

        return container_info(self)

    def stream_logs(self, follow: bool = False) -> Any:
        """Yield (stream, text) chunks: live from the executor while running, else the stored tails."""
        from reconciler.api import stream_execution_logs

        return stream_execution_logs(self, follow=follow)


class JobEvent(models.Model):
    """Append-only history of a job: every status change and request, who made it, and why."""

    job = models.ForeignKey(ContainerJob, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    attempt = models.PositiveSmallIntegerField(null=True, blank=True)
    from_status = models.CharField(max_length=16, blank=True, default="")
    to_status = models.CharField(max_length=16, blank=True, default="")
    #: "daemon:<id>", "api", "admin:<username>", "cli", ...
    actor = models.CharField(max_length=150, blank=True, default="")
    reason = models.CharField(max_length=32, blank=True, default="")
    message = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["job_id", "at", "id"]
        indexes = [models.Index(fields=["job", "at"], name="cm_event_job_idx")]

    def __str__(self) -> str:
        arrow = f"{self.from_status or '-'} -> {self.to_status}" if self.to_status else "note"
        return f"job {self.job_id}: {arrow} by {self.actor}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            from container_manager.exceptions import HistoryIsAppendOnly

            raise HistoryIsAppendOnly()
        super().save(*args, **kwargs)


class LeaderLease(models.Model):
    """Who leads the reconciler replicas that share this database (PostgreSQL only).

    One row per lease ``name``. The leader renews ``expires_at`` (database clock) every
    ~TTL/5; a standby takes the row over with a compare-and-swap when the lease has expired
    or the leader's database session is gone, and bumps ``epoch``, the fencing token. Every
    status-changing transaction of the daemon re-reads this row (``FOR SHARE``) and aborts
    unless it still names this process and epoch, so a paused former leader cannot write.
    Written only by ``reconciler.leader``; SQLite deployments run one replica and never use it.
    """

    name = models.CharField(max_length=100, primary_key=True)
    #: unique per daemon process: "daemon:<hostname>:<pid>:<random>".
    holder = models.CharField(max_length=200)
    #: incremented at every change of holder; the fencing token.
    epoch = models.BigIntegerField(default=1)
    #: ``pg_backend_pid()`` of the leader's election session: when it is gone, so is the leader.
    backend_pid = models.IntegerField(null=True, blank=True)
    acquired_at = models.DateTimeField()
    renewed_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        verbose_name = "leader lease"

    def __str__(self) -> str:
        return f"{self.name}: {self.holder} (epoch {self.epoch})"
