"""Django admin: list, search and filter jobs, hosts and templates; act on them safely.

Machine-owned data (status, attempts, executions, history) is read-only. Actions require
their own permissions (``cancel_containerjob``, ``rerun_containerjob``, ``check_executorhost``)
and go through the same services as the CLI. User-supplied text is only rendered through
Django's auto-escaping (``format_html``). Environment values are shown in clear only in the
form of someone editing them: list pages never show them, and every read-only page (a user
with view permission only, a job that already started) shows them with secrets masked.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from container_manager.admin_workflows import JobDependencyInline, ScheduleAdminBase, WorkflowFieldsMixin
from container_manager.envparse import mask_env_text, parse_name_list
from container_manager.exceptions import JobStateError
from container_manager.models import (
    MACHINE_FIELDS,
    ContainerExecution,
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    JobEvent,
    JobSchedule,
)
from container_manager.services import request_cancel, rerun_job


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def _errors(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
    return " ".join(exc.messages)


class MaskedEnvironmentMixin:
    """Shows an environment field masked (``shown_field``) wherever it is not being edited."""

    env_field: str
    shown_field: str

    def environment_is_read_only(self, request: HttpRequest, obj: Any) -> bool:
        return obj is not None and not self.has_change_permission(request, obj)  # type: ignore[attr-defined]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = [f for f in super().get_fields(request, obj) if f != self.shown_field]  # type: ignore[misc]
        if self.environment_is_read_only(request, obj) and self.env_field in fields:
            fields[fields.index(self.env_field)] = self.shown_field
        return fields


@admin.register(ExecutorHost)
class ExecutorHostAdmin(admin.ModelAdmin):
    list_display = ("name", "executor_type", "is_active", "health_status", "last_health_check", "load")
    list_filter = ("executor_type", "is_active", "health_status")
    search_fields = ("name", "connection_string", "description")
    readonly_fields = ("last_health_check", "health_status", "health_message", "created_at")
    actions = ["run_health_check"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ExecutorHost]:
        return super().get_queryset(request).with_running_count()  # type: ignore[attr-defined]

    @admin.display(description="Load")
    def load(self, host: Any) -> str:
        return f"{getattr(host, 'running_jobs', 0)}/{host.effective_max_concurrent_jobs}"

    def has_check_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("container_manager.check_executorhost")

    @admin.action(description="Run a health check", permissions=["check"])
    def run_health_check(self, request: HttpRequest, queryset: QuerySet[ExecutorHost]) -> None:
        for host in queryset:
            report = host.health_check()
            level = messages.SUCCESS if report.healthy else messages.WARNING
            self.message_user(
                request,
                f"{host.name}: {'healthy' if report.healthy else 'unhealthy'} ({report.message})",
                level,
            )


@admin.register(EnvironmentVariableTemplate)
class EnvironmentVariableTemplateAdmin(MaskedEnvironmentMixin, admin.ModelAdmin):
    list_display = ("name", "description", "variable_names")
    search_fields = ("name", "description")
    env_field = "environment_variables_text"
    shown_field = "variables"
    readonly_fields = ("variables",)

    @admin.display(description="Environment variables (secrets masked)")
    def variables(self, template: EnvironmentVariableTemplate) -> str:
        return mask_env_text(template.environment_variables_text, template.marked_secret_keys())

    @admin.display(description="Variables")
    def variable_names(self, template: EnvironmentVariableTemplate) -> str:
        # Names only: values may be secrets.
        return ", ".join(template.safe_variables())


class ContainerExecutionInline(admin.TabularInline):
    model = ContainerExecution
    extra = 0
    can_delete = False
    show_change_link = True
    fields = (
        "attempt",
        "status",
        "host_name",
        "container_name",
        "exit_code",
        "oom_killed",
        "reason",
        "started_at",
        "finished_at",
        "message",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    fields = ("at", "from_status", "to_status", "actor", "reason", "message")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ContainerJob)
class ContainerJobAdmin(MaskedEnvironmentMixin, WorkflowFieldsMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "image",
        "status_badge",
        "docker_host",
        "attempts",
        "exit_code",
        "failure_reason",
        "created_at",
        "duration",
    )
    list_filter = ("status", "failure_reason", "docker_host", "created_at")
    search_fields = ("=id", "name", "image", "command")
    list_select_related = ("docker_host",)
    inlines = [JobDependencyInline, ContainerExecutionInline, JobEventInline]
    actions = ["cancel_jobs", "rerun_jobs"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    env_field = "override_environment"
    shown_field = "environment"

    def environment_is_read_only(self, request: HttpRequest, obj: Any) -> bool:
        return obj is not None and (obj.status != "pending" or not self.has_change_permission(request, obj))

    def get_readonly_fields(self, request: HttpRequest, obj: ContainerJob | None = None) -> Any:
        if obj is not None and obj.status != "pending":
            return [
                *(f.name for f in ContainerJob._meta.fields if f.name != "id"),
                "environment",
                *self.workflow_fields,
            ]
        return [*MACHINE_FIELDS, "environment", *self.workflow_fields]

    @admin.display(description="Override environment (secrets masked)")
    def environment(self, job: ContainerJob) -> str:
        from container_manager.jobrules import job_marked_keys

        try:
            marked = job_marked_keys(job)
        except ValidationError:
            marked = parse_name_list(job.secret_keys) if isinstance(job.secret_keys, str) else []
        return mask_env_text(job.override_environment, marked)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, job: ContainerJob) -> str:
        colour = {
            "completed": "green",
            "failed": "red",
            "timeout": "orange",
            "cancelled": "gray",
            "running": "blue",
            "launching": "blue",
            "retrying": "orange",
        }.get(job.status, "black")
        return format_html('<b style="color:{}">{}</b>', colour, job.status)

    @admin.display(description="Duration")
    def duration(self, job: ContainerJob) -> str:
        runtime = job.runtime_duration
        return "" if runtime is None else str(runtime).split(".")[0]

    def save_model(self, request: HttpRequest, obj: ContainerJob, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = _actor(request)
        try:
            super().save_model(request, obj, form, change)
        except JobStateError as exc:
            self.message_user(request, str(exc), messages.ERROR)

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("container_manager.cancel_containerjob")

    def has_rerun_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("container_manager.rerun_containerjob")

    @admin.action(description="Cancel selected jobs", permissions=["cancel"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[ContainerJob]) -> None:
        changed = sum(
            request_cancel(pk, actor=_actor(request)) for pk in queryset.values_list("pk", flat=True)
        )
        skipped = queryset.count() - changed
        self.message_user(
            request, f"Cancellation requested for {changed} job(s); {skipped} already finished."
        )

    @admin.action(description="Re-run selected jobs as new jobs", permissions=["rerun"])
    def rerun_jobs(self, request: HttpRequest, queryset: QuerySet[ContainerJob]) -> None:
        created, refused = [], []
        invalid: list[str] = []
        for job in queryset:
            try:
                created.append(rerun_job(job, actor=_actor(request)).pk)
            except JobStateError:
                refused.append(job.pk)
            except ValidationError as exc:
                # E.g. its host was deactivated, or its template changed since: say why, per job.
                invalid.append(f"job {job.pk}: {_errors(exc)}")
        if created:
            self.message_user(request, f"Created job(s) {', '.join(map(str, created))}.")
        if refused:
            self.message_user(
                request, f"Not finished yet, not re-run: {', '.join(map(str, refused))}.", messages.WARNING
            )
        for message in invalid:
            self.message_user(request, f"Not re-run, it would be refused: {message}", messages.ERROR)


@admin.register(ContainerExecution)
class ContainerExecutionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "job",
        "attempt",
        "status",
        "host_name",
        "exit_code",
        "oom_killed",
        "reason",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "reason", "oom_killed", "host_name")
    search_fields = ("=job__id", "container_name", "container_id")
    list_select_related = ("job",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [f.name for f in ContainerExecution._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # View permission alone gives Django's read-only page, without Save buttons that would 403.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(JobSchedule)
class JobScheduleAdmin(MaskedEnvironmentMixin, ScheduleAdminBase):
    env_field = "override_environment"
    shown_field = "environment"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*super().get_readonly_fields(request, obj), "environment"]
