"""Django app configuration."""

from __future__ import annotations

from django.apps import AppConfig


class ContainerManagerConfig(AppConfig):
    name = "container_manager"
    verbose_name = "Container jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Fail at start-up, not at the first job, when CONTAINER_MANAGER is misconfigured.
        from django.db.models.signals import m2m_changed

        from container_manager.conf import get_policy
        from container_manager.hostconfig import check_host_for_build
        from container_manager.models import ContainerJob
        from container_manager.models.workflow import check_new_edges
        from executors.registry import set_host_check

        get_policy()
        # Every executor built from a host row (daemon, admin, CLI, metrics) passes the settings' checks.
        set_host_check(check_host_for_build)
        # Dependencies added through job.depends_on.add() are checked like those given at creation.
        m2m_changed.connect(
            check_new_edges, sender=ContainerJob.depends_on.through, dispatch_uid="cm-check-dependencies"
        )
