"""The four models of the public API, the append-only job history and the daemons' lease,
and the workflow models: dependencies between jobs, job arrays and cron schedules.

A ``ContainerJob`` row is desired state (image, command, limits, retry policy) plus a summary
of observed state that only the reconciler writes, through compare-and-swap updates in
``container_manager.transitions``. ``save()`` therefore validates everything and, on an
existing row, writes only user-editable fields and only while the job is still pending: a
stale object saved from the admin can never overwrite what the daemon recorded.

One module per model family; everything is importable from here, as Django expects.
"""

from __future__ import annotations

from container_manager.models.choices import (
    EXECUTION_STATUS_CHOICES,
    JOB_STATUS_CHOICES,
    REASON_CHOICES,
    ExecutorType,
    HealthStatus,
)
from container_manager.models.host import ExecutorHost, _default_max_concurrent_jobs, _protect_live_jobs
from container_manager.models.job import MACHINE_FIELDS, USER_EDITABLE_FIELDS, ContainerJob
from container_manager.models.records import ContainerExecution, JobEvent, LeaderLease
from container_manager.models.schedule import ConcurrencyPolicy, JobSchedule
from container_manager.models.template import EnvironmentVariableTemplate
from container_manager.models.workflow import JobArray, JobDependency

__all__ = [
    "EXECUTION_STATUS_CHOICES",
    "JOB_STATUS_CHOICES",
    "MACHINE_FIELDS",
    "REASON_CHOICES",
    "USER_EDITABLE_FIELDS",
    "ConcurrencyPolicy",
    "ContainerExecution",
    "ContainerJob",
    "EnvironmentVariableTemplate",
    "ExecutorHost",
    "ExecutorType",
    "HealthStatus",
    "JobArray",
    "JobDependency",
    "JobEvent",
    "JobSchedule",
    "LeaderLease",
    "_default_max_concurrent_jobs",
    "_protect_live_jobs",
]
