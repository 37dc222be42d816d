"""The admin of workflows: a job's dependencies (both ways), its array and schedule; schedules
with "run now", pause and resume; arrays with their summary.

The job page (``admin.jobs``) and the schedule page (``admin.schedules``) build on these; the
pieces here import nothing else of the admin package.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from container_manager.envparse import mask_env_text, parse_name_list
from container_manager.jobrules import job_marked_keys
from container_manager.models import ContainerJob, JobArray, JobDependency, JobSchedule
from container_manager.models.workflow import check_dependencies

#: Links shown at most in one "dependents" cell; the rest are counted.
MAX_LINKS = 50


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def _job_link(job_id: int, status: str) -> Any:
    url = reverse("admin:container_manager_containerjob_change", args=[job_id])
    return format_html('<a href="{}">{}</a> ({})', url, job_id, status)


class DependencyForm(forms.ModelForm):
    class Meta:
        model = JobDependency
        fields = ["depends_on"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        other = data.get("depends_on")
        if other is not None and self.instance.pk is None:
            job = self.instance.job_id if self.instance.job_id else None
            try:
                # A new job (no id yet) has no dependents: only the other job is checked.
                check_dependencies(job, [other])
            except ValidationError as exc:
                raise ValidationError({"depends_on": exc.messages}) from None
        return data


class DependencyFormSet(forms.BaseInlineFormSet):
    @classmethod
    def get_default_prefix(cls) -> str:
        return "dependencies"  # the edges have no reverse name of their own to take it from


class JobDependencyInline(admin.TabularInline):
    """The jobs this one waits for: editable while it is pending, read-only afterwards."""

    model = JobDependency
    fk_name = "job"
    form = DependencyForm
    formset = DependencyFormSet
    extra = 0
    raw_id_fields = ("depends_on",)
    verbose_name = "dependency (this job starts after it completed)"
    verbose_name_plural = "depends on (this job starts only after all of these completed)"

    def _pending(self, obj: Any) -> bool:
        return obj is None or obj.status == "pending"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._pending(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._pending(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._pending(obj) and super().has_delete_permission(request, obj)


class WorkflowFieldsMixin:
    """Read-only fields of the job page: who waits for the job, its array, its schedule."""

    workflow_fields = ("dependents_links", "array_summary", "schedule_link")

    @admin.display(description="Dependents (jobs that wait for this one)")
    def dependents_links(self, job: ContainerJob) -> Any:
        rows = list(job.dependents.order_by("pk").values_list("pk", "status")[: MAX_LINKS + 1])
        if not rows:
            return "-"
        shown = format_html_join(", ", "{}", ((_job_link(pk, status),) for pk, status in rows[:MAX_LINKS]))
        more = " and more" if len(rows) > MAX_LINKS else ""
        return format_html("{}{}", shown, more)

    @admin.display(description="Array")
    def array_summary(self, job: ContainerJob) -> Any:
        if job.array_index is None:
            return "-"
        where = f"index {job.array_index} of {job.array_size}"
        if job.array_id is None or job.array is None:
            return where
        url = reverse("admin:container_manager_containerjob_changelist") + f"?array__id__exact={job.array_id}"
        return format_html('{}: <a href="{}">{}</a>', where, url, job.array.summary())

    @admin.display(description="Schedule")
    def schedule_link(self, job: ContainerJob) -> Any:
        if job.schedule_id is None or job.schedule is None:
            return "-"
        url = reverse("admin:container_manager_jobschedule_change", args=[job.schedule_id])
        tick = f"tick {job.scheduled_for:%Y-%m-%d %H:%M %Z}" if job.scheduled_for else "run now"
        return format_html('<a href="{}">{}</a> ({})', url, job.schedule.name, tick)


class ScheduleAdminBase(admin.ModelAdmin):
    """Schedules: everything a job has, plus the cron, its time zone and the policies."""

    list_display = (
        "name",
        "cron",
        "timezone",
        "enabled",
        "concurrency_policy",
        "next_run_at",
        "last_scheduled_at",
        "last_error_short",
    )
    list_filter = ("enabled", "concurrency_policy", "docker_host")
    search_fields = ("name", "image", "command")
    readonly_fields = (
        "next_run_at",
        "last_scheduled_at",
        "last_error",
        "created_at",
        "updated_at",
        "created_by",
    )
    actions = ["run_now", "pause_schedules", "resume_schedules"]

    @admin.display(description="Override environment (secrets masked)")
    def environment(self, schedule: JobSchedule) -> str:
        try:
            marked = job_marked_keys(schedule.make_job(None))
        except ValidationError:  # a template broken since: still mask what the schedule marks
            marked = parse_name_list(schedule.secret_keys) if isinstance(schedule.secret_keys, str) else []
        return mask_env_text(schedule.override_environment, marked)

    @admin.display(description="Last error")
    def last_error_short(self, schedule: JobSchedule) -> str:
        return schedule.last_error[:120]

    def save_model(self, request: HttpRequest, obj: JobSchedule, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = _actor(request)
        super().save_model(request, obj, form, change)

    def has_run_permission(self, request: HttpRequest) -> bool:
        user = request.user
        return user.has_perm("container_manager.change_jobschedule") and user.has_perm(
            "container_manager.add_containerjob"
        )

    @admin.action(description="Run now (one job each, outside the schedule)", permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[JobSchedule]) -> None:
        for schedule in queryset:
            try:
                job = schedule.run_now(actor=_actor(request))
            except ValidationError as exc:
                self.message_user(
                    request, f"{schedule.name}: not run: {' '.join(exc.messages)}", messages.ERROR
                )
                continue
            self.message_user(request, f"{schedule.name}: created job {job.pk}")

    @admin.action(description="Pause (create no jobs)", permissions=["change"])
    def pause_schedules(self, request: HttpRequest, queryset: QuerySet[JobSchedule]) -> None:
        self._set_enabled(request, queryset, False)

    @admin.action(description="Resume (from the next tick)", permissions=["change"])
    def resume_schedules(self, request: HttpRequest, queryset: QuerySet[JobSchedule]) -> None:
        self._set_enabled(request, queryset, True)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[JobSchedule], enabled: bool) -> None:
        changed = []
        for schedule in queryset.filter(enabled=not enabled):
            try:
                schedule.resume() if enabled else schedule.pause()
            except ValidationError as exc:
                self.message_user(request, f"{schedule.name}: {' '.join(exc.messages)}", messages.ERROR)
                continue
            changed.append(schedule.name)
        verb = "resumed" if enabled else "paused"
        self.message_user(request, f"{verb}: {', '.join(changed) or 'none (already so)'}")


@admin.register(JobArray)
class JobArrayAdmin(admin.ModelAdmin):
    """Arrays are made with their jobs (``create_array``, ``submit --array``): read-only here."""

    list_display = ("id", "name", "size", "parallelism", "progress", "created_at", "created_by")
    search_fields = ("=id", "name")
    readonly_fields = ("name", "size", "parallelism", "created_at", "created_by", "progress")

    @admin.display(description="Jobs")
    def progress(self, array: JobArray) -> Any:
        url = reverse("admin:container_manager_containerjob_changelist") + f"?array__id__exact={array.pk}"
        return format_html('<a href="{}">{}</a>', url, array.summary())

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
