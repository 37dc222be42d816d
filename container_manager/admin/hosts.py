"""The host pages: health, capacity as a bar, the jobs running there, a health-check button.

Running a health check needs ``check_executorhost``, from the list's action as from the
button on the host's page. Health messages come from ``ExecutorHost.health_check()``, which
never quotes the environment.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from container_manager.admin.common import ASSETS
from container_manager.admin.display import status_badge, when
from container_manager.models import ContainerExecution, ExecutorHost
from container_manager.states import LIVE_EXECUTION_VALUES

#: Live attempts listed on a host's page; the rest are counted.
LIVE_JOBS_SHOWN = 50


def capacity_bar(running: int, limit: int) -> str:
    """``[#####     ] 5/10``: a bar in the admin's colours, red when the host is full."""
    share = 100 if limit <= 0 else min(100, round(100 * running / limit))
    full = " cm-full" if running >= limit else ""
    return format_html(
        '<span class="cm-bar{}" role="meter" aria-valuemin="0" aria-valuemax="{}" aria-valuenow="{}">'
        '<span style="width: {}%"></span></span>{}/{}',
        full,
        limit,
        running,
        share,
        running,
        limit,
    )


def health_badge(host: ExecutorHost) -> str:
    tone = {"healthy": "ok", "unhealthy": "bad"}.get(host.health_status, "quiet")
    return format_html('<span class="cm-badge cm-{}">{}</span>', tone, host.health_status)


@admin.register(ExecutorHost)
class ExecutorHostAdmin(admin.ModelAdmin):
    list_display = ("name", "executor_type", "is_active", "health", "checked", "capacity")
    list_filter = ("executor_type", "is_active", "health_status")
    search_fields = ("name", "connection_string", "description")
    readonly_fields = ("last_health_check", "health_status", "health_message", "created_at")
    actions = ["run_health_check"]
    change_form_template = "container_manager/admin/host_change_form.html"

    class Media:
        css = ASSETS["css"]
        js = ASSETS["js"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ExecutorHost]:
        return super().get_queryset(request).with_running_count()  # type: ignore[attr-defined]

    @admin.display(description="Health", ordering="health_status")
    def health(self, host: ExecutorHost) -> str:
        return health_badge(host)

    @admin.display(description="Last checked", ordering="last_health_check")
    def checked(self, host: ExecutorHost) -> Any:
        return when(host.last_health_check)

    @admin.display(description="Capacity")
    def capacity(self, host: Any) -> str:
        return capacity_bar(getattr(host, "running_jobs", 0), host.effective_max_concurrent_jobs)

    def has_check_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("container_manager.check_executorhost")

    def _check(self, request: HttpRequest, host: ExecutorHost) -> None:
        report = host.health_check()
        level = messages.SUCCESS if report.healthy else messages.WARNING
        state = "healthy" if report.healthy else "unhealthy"
        self.message_user(request, f"{host.name}: {state} ({report.message})", level)

    @admin.action(description="Run a health check", permissions=["check"])
    def run_health_check(self, request: HttpRequest, queryset: QuerySet[ExecutorHost]) -> None:
        for host in queryset:
            self._check(request, host)

    # The host's page ---------------------------------------------------------------------

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        host = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if host is not None and self.has_view_or_change_permission(request, host):
            live = (
                ContainerExecution.objects.filter(executor_host=host, status__in=LIVE_EXECUTION_VALUES)
                .select_related("job")
                .order_by("started_at", "id")
            )
            rows = [
                {
                    "url": reverse("admin:container_manager_containerjob_change", args=[e.job_id]),
                    "label": f"job {e.job_id}" + (f" ({e.job.name})" if e.job.name else ""),
                    "attempt": e.attempt,
                    "badge": status_badge(e.status),
                    "image": e.job.image,
                    "started": when(e.started_at),
                }
                for e in live[:LIVE_JOBS_SHOWN]
            ]
            count = live.count() if len(rows) == LIVE_JOBS_SHOWN else len(rows)
            capacity = host.get_capacity()
            extra.update(
                cm_host=host,
                cm_health=format_html(
                    "{} {}", health_badge(host), when(host.last_health_check) or "never checked"
                ),
                cm_capacity=capacity_bar(capacity["running"], capacity["max_concurrent_jobs"]),
                cm_live_jobs=rows,
                cm_live_count=count,
                cm_live_more=count - len(rows),
                cm_can_check=self.has_check_permission(request),
                cm_health_url=reverse("admin:container_manager_executorhost_health_check", args=[host.pk]),
            )
        return super().change_view(request, object_id, form_url, extra)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<path:object_id>/health-check/",
                self.admin_site.admin_view(require_POST(self.health_check_view)),
                name="container_manager_executorhost_health_check",
            ),
            *super().get_urls(),
        ]

    def health_check_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_check_permission(request):
            raise PermissionDenied
        host = self.get_object(request, object_id)
        if host is None:
            raise Http404(f"no executor host with id {object_id}")
        self._check(request, host)
        return HttpResponseRedirect(reverse("admin:container_manager_executorhost_change", args=[host.pk]))
