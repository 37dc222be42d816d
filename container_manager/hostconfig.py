"""Validation of executor host rows and the health probe that records its result.

Credentials never live in the database in clear: a config key that looks secret must hold a
file path or an ``env:NAME`` reference, resolved by the backend at connection time.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.utils import timezone

from container_manager.conf import Policy
from container_manager.envparse import is_secret_key

if TYPE_CHECKING:
    from container_manager.models import ExecutorHost
    from executors.types import HealthReport

DOCKER_URL_RE = re.compile(r"\A(unix://(/[^\s]*)|tcp://[A-Za-z0-9.\-\[\]:]+(:\d+)?|ssh://[^\s@]+@?[^\s]*)\Z")
CLOUDRUN_RE = re.compile(r"\Aprojects/[a-z][a-z0-9\-]{1,62}/locations/[a-z0-9\-]+\Z")


def validate_host(host: ExecutorHost, policy: Policy) -> None:
    errors: dict[str, str] = {}
    conn = host.connection_string or ""
    if host.executor_type == "docker" and conn and not DOCKER_URL_RE.match(conn):
        errors["connection_string"] = (
            "a Docker connection string is unix:///path/to/docker.sock, tcp://host:port or ssh://user@host "
            "(empty = DOCKER_HOST or the local socket)"
        )
    elif host.executor_type == "cloudrun" and not CLOUDRUN_RE.match(conn):
        errors["connection_string"] = "a Cloud Run connection string is projects/PROJECT_ID/locations/REGION"
    config = host.executor_config
    if not isinstance(config, dict):
        errors["executor_config"] = "executor_config must be a JSON object"
    else:
        for key, value in config.items():
            if is_secret_key(key) and not (
                isinstance(value, str) and (value.startswith("/") or value.startswith("env:"))
            ):
                errors["executor_config"] = (
                    f"{key} looks like a credential: store a file path or 'env:VARIABLE', never the secret itself"
                )
    cap = policy.max_concurrent_jobs_cap
    if host.max_concurrent_jobs is not None and not (1 <= host.max_concurrent_jobs <= cap):
        errors["max_concurrent_jobs"] = (
            f"max_concurrent_jobs must be between 1 and {cap} (CONTAINER_MANAGER['MAX_CONCURRENT_JOBS_CAP'])"
        )
    if errors:
        raise ValidationError(errors)


def run_health_check(host: ExecutorHost, timeout: float) -> HealthReport:
    """Probe ``host`` through its executor and record the outcome on the row; never raises."""
    from container_manager.models import ExecutorHost, HealthStatus
    from executors.exceptions import ExecutorError
    from executors.types import HealthReport

    try:
        report = host.get_executor().health_check(timeout=timeout)
    except ExecutorError as exc:
        report = HealthReport(healthy=False, message=str(exc))
    now = timezone.now()
    status = HealthStatus.HEALTHY if report.healthy else HealthStatus.UNHEALTHY
    ExecutorHost.objects.filter(pk=host.pk).update(
        last_health_check=now, health_status=status, health_message=report.message[:2000]
    )
    host.last_health_check, host.health_status, host.health_message = now, status, report.message[:2000]
    return report
