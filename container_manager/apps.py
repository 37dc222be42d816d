"""Django app configuration."""

from __future__ import annotations

from django.apps import AppConfig


class ContainerManagerConfig(AppConfig):
    name = "container_manager"
    verbose_name = "Container jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Fail at start-up, not at the first job, when CONTAINER_MANAGER is misconfigured.
        from container_manager.conf import get_policy

        get_policy()
