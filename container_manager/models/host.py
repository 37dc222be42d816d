"""Executor hosts: where attempts run (a Docker daemon, a Cloud Run region, the mock)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from container_manager import conf
from container_manager.conf import get_policy
from container_manager.inputs import clean_fields_checked
from container_manager.models.choices import ExecutorType, HealthStatus
from container_manager.querysets import ExecutorHostQuerySet
from container_manager.states import LIVE_EXECUTION_VALUES

if TYPE_CHECKING:
    from executors.base import Executor
    from executors.types import HealthReport


def _protect_live_jobs(collector: Any, field: Any, sub_objs: Any, using: str) -> None:
    """on_delete: refuse to delete a host that unfinished work depends on; else keep history, unlinked."""
    from container_manager.models.records import ContainerExecution

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
            # An upper bound also refuses text stored by SQLite in this integer column.
            models.CheckConstraint(
                condition=Q(max_concurrent_jobs__gte=1)
                & Q(max_concurrent_jobs__lte=conf.ABSOLUTE_MAX_CONCURRENT_JOBS),
                name="cm_host_capacity_range",
            ),
            models.CheckConstraint(condition=~Q(name=""), name="cm_host_name_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean_fields(self, exclude: Any = None) -> None:
        clean_fields_checked(self, exclude, get_policy(), super().clean_fields)

    def clean(self) -> None:
        from container_manager.hostconfig import validate_host

        validate_host(self, get_policy())

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.full_clean(validate_constraints=False)
        super().save(*args, **kwargs)

    def get_executor(self) -> Executor:
        """The executor instance for this host (cached per host and configuration).

        Raises ``executors.exceptions.ConfigurationError`` when the row's configuration is
        refused, e.g. an ``env:`` reference outside ``CONFIG_ENV_ALLOWLIST``.
        """
        from executors.registry import get_executor

        return get_executor(self)

    def health_check(self, timeout: float = 5.0) -> HealthReport:
        """Probe the host, record the result, and return it (truthy when healthy)."""
        from container_manager.hostconfig import run_health_check

        return run_health_check(self, timeout)

    @property
    def effective_max_concurrent_jobs(self) -> int:
        """Attempts the scheduler lets run here: ``max_concurrent_jobs`` within the settings' cap.

        The cap applies even to a row changed by SQL; a value that is not a usable number
        (possible only in rows from before the CHECK constraint) gives no capacity at all.
        """
        value = self.max_concurrent_jobs
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return 0
        return min(value, get_policy().max_concurrent_jobs_cap)

    def get_capacity(self) -> dict[str, int]:
        """Concurrency limit in force, live attempts, and free slots on this host."""
        running = self.executions.filter(status__in=LIVE_EXECUTION_VALUES).count()
        limit = self.effective_max_concurrent_jobs
        return {"max_concurrent_jobs": limit, "running": running, "available": max(0, limit - running)}
