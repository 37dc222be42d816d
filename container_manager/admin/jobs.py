"""The job pages: a list to scan, and a job page built for debugging.

The job page opens with its Outcome (status, exit code, reason, message, duration, where it
ran), then the latest attempt's output in a bounded box, then the spec, limits and retry
policy. While the job is unfinished the browser polls ``live/`` and redraws that part in
place. Cancel and Re-run are buttons on the page behind the same permissions as the list's
actions (``cancel_containerjob``, ``rerun_containerjob``), and they go through the same
services as the CLI. Machine-owned data (status, attempts, history) is read-only.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST

from container_manager.admin.common import ASSETS, actor, errors_text
from container_manager.admin.display import human_duration, status_badge, when
from container_manager.admin.outcome import POLL_MILLISECONDS, reason_label, render_outcome
from container_manager.admin.workflows import JobDependencyInline, WorkflowFieldsMixin
from container_manager.envparse import mask_env_text, parse_name_list
from container_manager.exceptions import JobStateError
from container_manager.models import MACHINE_FIELDS, ContainerExecution, ContainerJob, JobEvent
from container_manager.services import request_cancel, rerun_job


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
class ContainerJobAdmin(WorkflowFieldsMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "image",
        "status_badge",
        "ran_on",
        "attempts",
        "exit_code",
        "reason",
        "created",
        "duration",
    )
    list_filter = ("status", "failure_reason", "docker_host", "created_at")
    search_fields = ("=id", "name", "image", "command")
    list_select_related = ("docker_host",)
    inlines = [JobDependencyInline, ContainerExecutionInline, JobEventInline]
    actions = ["cancel_jobs", "rerun_jobs"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    change_form_template = "container_manager/admin/job_change_form.html"
    change_list_template = "container_manager/admin/job_change_list.html"

    class Media:
        css = ASSETS["css"]
        js = ASSETS["js"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ContainerJob]:
        latest = ContainerExecution.objects.filter(job=OuterRef("pk")).order_by("-attempt")
        return super().get_queryset(request).annotate(last_host=Subquery(latest.values("host_name")[:1]))

    # The page's layout -------------------------------------------------------------------

    def environment_is_read_only(self, request: HttpRequest, obj: ContainerJob | None) -> bool:
        return obj is not None and (obj.status != "pending" or not self.has_change_permission(request, obj))

    def get_fieldsets(self, request: HttpRequest, obj: ContainerJob | None = None) -> Any:
        # Environments are shown masked wherever they are not being edited.
        env = "environment" if self.environment_is_read_only(request, obj) else "override_environment"
        fieldsets: list[tuple[str, dict[str, Any]]] = [
            (
                "Spec",
                {
                    "fields": (
                        "name",
                        "image",
                        "command",
                        "docker_host",
                        "environment_template",
                        env,
                        "secret_keys",
                    )
                },
            ),
            ("Limits", {"fields": ("memory_limit", "cpu_limit", "timeout_seconds")}),
            (
                "Retry and scheduling",
                {
                    "fields": (
                        "max_retries",
                        "retry_backoff_seconds",
                        "retry_backoff_max_seconds",
                        "retry_on",
                        "priority",
                        "run_after",
                    )
                },
            ),
        ]
        if obj is not None:
            fieldsets.append(("Workflow", {"fields": self.workflow_fields}))
            record = ("created_by", "rerun_of", "cancel_requested_at", "updated_at")
            fieldsets.append(("Record", {"classes": ("collapse",), "fields": record}))
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: ContainerJob | None = None) -> Any:
        if obj is not None and obj.status != "pending":
            fields = [f.name for f in ContainerJob._meta.fields if f.name != "id"]
            return [*fields, "environment", *self.workflow_fields]
        return [*MACHINE_FIELDS, "environment", *self.workflow_fields]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        job = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if job is not None and self.has_view_or_change_permission(request, job):
            extra["cm_outcome"] = self._outcome(request, job)
            extra["cm_terminal"] = job.is_terminal_status
            extra["cm_live_url"] = reverse("admin:container_manager_containerjob_live", args=[job.pk])
            extra["cm_poll_ms"] = POLL_MILLISECONDS
            extra["cm_cancel_url"] = reverse("admin:container_manager_containerjob_cancel", args=[job.pk])
            extra["cm_rerun_url"] = reverse("admin:container_manager_containerjob_rerun", args=[job.pk])
            extra["cm_can_cancel"] = self.has_cancel_permission(request)
            extra["cm_can_rerun"] = self.has_rerun_permission(request)
        return super().change_view(request, object_id, form_url, extra)

    def _outcome(self, request: HttpRequest, job: ContainerJob) -> str:
        return render_outcome(
            request,
            job,
            can_cancel=self.has_cancel_permission(request),
            can_rerun=self.has_rerun_permission(request),
        )

    # List columns --------------------------------------------------------------------------

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
        return status_badge(job.status)

    @admin.display(description="Ran on")
    def ran_on(self, job: ContainerJob) -> str:
        return getattr(job, "last_host", None) or ""

    @admin.display(description="Reason", ordering="failure_reason")
    def reason(self, job: ContainerJob) -> str:
        return reason_label(job.failure_reason)

    @admin.display(description="Created", ordering="created_at")
    def created(self, job: ContainerJob) -> Any:
        return when(job.created_at)

    @admin.display(description="Duration")
    def duration(self, job: ContainerJob) -> str:
        return human_duration(job.runtime_duration)

    # Saving --------------------------------------------------------------------------------

    def save_model(self, request: HttpRequest, obj: ContainerJob, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = actor(request)
        try:
            super().save_model(request, obj, form, change)
        except JobStateError as exc:
            self.message_user(request, str(exc), messages.ERROR)

    # Permissions of the actions and buttons ------------------------------------------------

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("container_manager.cancel_containerjob")

    def has_rerun_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("container_manager.rerun_containerjob")

    # The job page's own views ----------------------------------------------------------------

    def get_urls(self) -> list[Any]:
        def view(name: str, function: Any) -> Any:
            return path(
                f"<path:object_id>/{name}/",
                self.admin_site.admin_view(function),
                name=f"container_manager_containerjob_{name}",
            )

        return [
            view("live", self.live_view),
            view("cancel", self.cancel_view),
            view("rerun", self.rerun_view),
            *super().get_urls(),
        ]

    def _job_or_404(self, request: HttpRequest, object_id: str) -> ContainerJob:
        job = self.get_object(request, object_id)
        if job is None:
            raise Http404(f"no job with id {object_id}")
        if not self.has_view_or_change_permission(request, job):
            raise PermissionDenied
        return job

    def live_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """What the job page polls: the Outcome block and output, redrawn in place."""
        return require_GET(self._live)(request, object_id)

    def _live(self, request: HttpRequest, object_id: str) -> HttpResponse:
        job = self._job_or_404(request, object_id)
        return JsonResponse(
            {"status": job.status, "terminal": job.is_terminal_status, "html": self._outcome(request, job)},
            headers={"Cache-Control": "no-store"},
        )

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return require_POST(self._cancel)(request, object_id)

    def _cancel(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_cancel_permission(request):
            raise PermissionDenied
        job = self._job_or_404(request, object_id)
        if request_cancel(job.pk, actor=actor(request)):
            self.message_user(request, f"Cancellation requested for job {job.pk}.")
        else:
            self.message_user(request, f"Job {job.pk} has already finished.", messages.WARNING)
        return HttpResponseRedirect(reverse("admin:container_manager_containerjob_change", args=[job.pk]))

    def rerun_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return require_POST(self._rerun)(request, object_id)

    def _rerun(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_rerun_permission(request):
            raise PermissionDenied
        job = self._job_or_404(request, object_id)
        here = reverse("admin:container_manager_containerjob_change", args=[job.pk])
        try:
            new = rerun_job(job, actor=actor(request))
        except JobStateError as exc:
            self.message_user(request, str(exc), messages.WARNING)
            return HttpResponseRedirect(here)
        except ValidationError as exc:
            self.message_user(request, f"Not re-run, it would be refused: {errors_text(exc)}", messages.ERROR)
            return HttpResponseRedirect(here)
        self.message_user(request, f"Job {job.pk} re-run as job {new.pk}.")
        return HttpResponseRedirect(reverse("admin:container_manager_containerjob_change", args=[new.pk]))

    # List actions --------------------------------------------------------------------------

    @admin.action(description="Cancel selected jobs", permissions=["cancel"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[ContainerJob]) -> None:
        changed = sum(
            request_cancel(pk, actor=actor(request)) for pk in queryset.values_list("pk", flat=True)
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
                created.append(rerun_job(job, actor=actor(request)).pk)
            except JobStateError:
                refused.append(job.pk)
            except ValidationError as exc:
                # E.g. its host was deactivated, or its template changed since: say why, per job.
                invalid.append(f"job {job.pk}: {errors_text(exc)}")
        if created:
            self.message_user(request, f"Created job(s) {', '.join(map(str, created))}.")
        if refused:
            self.message_user(
                request, f"Not finished yet, not re-run: {', '.join(map(str, refused))}.", messages.WARNING
            )
        for message in invalid:
            self.message_user(request, f"Not re-run, it would be refused: {message}", messages.ERROR)
