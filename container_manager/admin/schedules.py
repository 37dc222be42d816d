"""The schedule pages: everything a job has, plus the cron and its policies, with secrets masked."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from container_manager.admin.common import MaskedEnvironmentMixin
from container_manager.admin.workflows import ScheduleAdminBase
from container_manager.models import JobSchedule


@admin.register(JobSchedule)
class JobScheduleAdmin(MaskedEnvironmentMixin, ScheduleAdminBase):
    env_field = "override_environment"
    shown_field = "environment"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*super().get_readonly_fields(request, obj), "environment"]
