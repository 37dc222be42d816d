"""Django admin: list, search and filter jobs, hosts and templates; act on them safely.

One module per page family (``jobs``, ``hosts``, ``records``, ``common`` for templates),
with the display helpers they share in ``display``. Machine-owned data (status, attempts,
executions, history) is read-only. Actions and buttons require their own permissions
(``cancel_containerjob``, ``rerun_containerjob``, ``check_executorhost``) and go through the
same services as the CLI. User-supplied text is only rendered through Django's
auto-escaping. Environment values are shown in clear only in the form of someone editing
them: list pages never show them, and every read-only page (a user with view permission
only, a job that already started) shows them with secrets masked.
"""

from __future__ import annotations

from container_manager.admin.common import EnvironmentVariableTemplateAdmin
from container_manager.admin.hosts import ExecutorHostAdmin
from container_manager.admin.jobs import ContainerJobAdmin
from container_manager.admin.records import ContainerExecutionAdmin
from container_manager.admin.schedules import JobScheduleAdmin
from container_manager.admin.workflows import JobArrayAdmin

__all__ = [
    "ContainerExecutionAdmin",
    "ContainerJobAdmin",
    "EnvironmentVariableTemplateAdmin",
    "ExecutorHostAdmin",
    "JobArrayAdmin",
    "JobScheduleAdmin",
]
