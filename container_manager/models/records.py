"""Rows the reconciler writes: attempts, the append-only job history, the leader lease."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import models
from django.db.models import Q
from django.utils import timezone

from container_manager.models.choices import EXECUTION_STATUS_CHOICES, REASON_CHOICES
from container_manager.models.host import ExecutorHost, _protect_live_jobs
from container_manager.querysets import ContainerExecutionQuerySet
from container_manager.states import LIVE_EXECUTION_VALUES, ExecutionStatus


class ContainerExecution(models.Model):
    """Tracks individual execution attempts for a ContainerJob.

    One row per attempt, written before the container is created (write-ahead) and owned by
    the reconciler; it keeps bounded tails of stdout and stderr for debugging.
    """

    job = models.ForeignKey(
        "container_manager.ContainerJob", on_delete=models.CASCADE, related_name="executions"
    )
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
        from container_manager.observe import container_info

        return container_info(self)

    def stream_logs(self, follow: bool = False) -> Any:
        """Yield (stream, text) chunks: live from the executor while running, else the stored tails."""
        from container_manager.observe import stream_execution_logs

        return stream_execution_logs(self, follow=follow)


class JobEvent(models.Model):
    """Append-only history of a job: every status change and request, who made it, and why."""

    job = models.ForeignKey("container_manager.ContainerJob", on_delete=models.CASCADE, related_name="events")
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
