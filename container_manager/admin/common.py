"""What every page of the admin shares: who acts, how errors read, masked environments."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from container_manager.envparse import mask_env_text
from container_manager.models import EnvironmentVariableTemplate

#: The admin's own stylesheet and script, added to every page of this app's models.
ASSETS = {"css": {"all": ("container_manager/admin.css",)}, "js": ("container_manager/admin.js",)}


def actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def errors_text(exc: ValidationError) -> str:
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
