"""The attempt pages: machine-owned, read-only, with output in a bounded monospace box."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.loader import render_to_string

from container_manager.admin.common import ASSETS
from container_manager.admin.display import human_duration, status_badge, tail_on_line, when
from container_manager.admin.outcome import reason_label
from container_manager.models import ContainerExecution


@admin.register(ContainerExecution)
class ContainerExecutionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "job",
        "attempt",
        "status_badge",
        "host_name",
        "exit_code",
        "oom_killed",
        "reason_text",
        "started",
        "took",
    )
    list_filter = ("status", "reason", "oom_killed", "host_name")
    search_fields = ("=job__id", "container_name", "container_id")
    list_select_related = ("job",)
    fieldsets = (
        (
            "Outcome",
            {
                "fields": (
                    "job",
                    "attempt",
                    "status_badge",
                    "exit_code",
                    "oom_killed",
                    "reason_text",
                    "message",
                    "started",
                    "finished",
                    "took",
                )
            },
        ),
        ("Output", {"fields": ("output",)}),
        (
            "Container",
            {"fields": ("host_name", "executor_type", "container_name", "container_id", "cleaned_up")},
        ),
        ("Resources", {"fields": ("peak_memory_bytes", "cpu_seconds")}),
    )

    class Media:
        css = ASSETS["css"]
        js = ASSETS["js"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        computed = ("status_badge", "reason_text", "started", "finished", "took", "output")
        return [*(f.name for f in ContainerExecution._meta.fields), *computed]

    @admin.display(description="Status", ordering="status")
    def status_badge(self, execution: ContainerExecution) -> str:
        return status_badge(execution.status)

    @admin.display(description="Reason", ordering="reason")
    def reason_text(self, execution: ContainerExecution) -> str:
        return reason_label(execution.reason)

    @admin.display(description="Started", ordering="started_at")
    def started(self, execution: ContainerExecution) -> Any:
        return when(execution.started_at)

    @admin.display(description="Finished", ordering="finished_at")
    def finished(self, execution: ContainerExecution) -> Any:
        return when(execution.finished_at)

    @admin.display(description="Duration")
    def took(self, execution: ContainerExecution) -> str:
        return human_duration(execution.duration)

    @admin.display(description="Recorded output")
    def output(self, execution: ContainerExecution) -> str:
        shown = [
            (
                stream,
                tail_on_line(
                    getattr(execution, stream), cut_before=getattr(execution, f"{stream}_truncated")
                ),
            )
            for stream in ("stdout", "stderr")
        ]
        return render_to_string("container_manager/admin/attempt_output.html", {"output": shown})

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # View permission alone gives Django's read-only page, without Save buttons that would 403.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
