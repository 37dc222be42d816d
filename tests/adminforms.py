"""What the admin's job form posts: shared by the admin tests."""

from __future__ import annotations

from typing import Any

#: The management forms of the job page's inlines (dependencies, attempts, history), all empty.
INLINES = {
    f"{prefix}-{key}": value
    for prefix in ("dependencies", "executions", "events")
    for key, value in (
        ("TOTAL_FORMS", "0"),
        ("INITIAL_FORMS", "0"),
        ("MIN_NUM_FORMS", "0"),
        ("MAX_NUM_FORMS", "0"),
    )
}


def job_form(**fields: Any) -> dict[str, Any]:
    """A valid add/change form of a job, with ``fields`` replacing or adding values."""
    data = {
        "name": "",
        "image": "busybox",
        "command": "echo hi",
        "override_environment": "",
        "secret_keys": "",
        "max_retries": "0",
        "retry_backoff_seconds": "5",
        "retry_backoff_max_seconds": "300",
        "retry_on": "exit_code",
        "priority": "0",
        **INLINES,
    }
    data.update(fields)
    return data


def admin_url(model: str, view: str, *args: Any) -> str:
    """The admin URL of ``view`` (changelist, change, add, ...) of one of this app's models."""
    from django.urls import reverse

    return reverse(f"admin:container_manager_{model}_{view}", args=args)


def log_in_with(client: Any, username: str, *codenames: str) -> Any:
    """A staff user with exactly these permissions, logged in on ``client``."""
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(username, password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return user
