"""Validation of executor host rows, the guard run before an executor is built, the health probe.

Credentials never live in the database in clear: a config key that looks secret must hold a
file path (or an ``env:NAME`` reference). ``env:NAME`` makes the backend read a variable of
the web or daemon process, so anyone who may edit a host row could read any of them (a
database URL, a cloud key) through the errors the backend reports. Host rows may therefore
name only the variables listed in ``CONTAINER_MANAGER['CONFIG_ENV_ALLOWLIST']`` (none by
default). This is checked when a row is saved and again before an executor is built from a
row (rows changed by SQL skip ``save()``); messages name variables, never their values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.utils import timezone

from container_manager.conf import Policy, get_policy
from container_manager.envparse import is_secret_key

if TYPE_CHECKING:
    from container_manager.models import ExecutorHost
    from executors.registry import HostLike
    from executors.types import HealthReport

DOCKER_URL_RE = re.compile(
    r"\A(unix://(/[^\s]*)|tcp://[A-Za-z0-9.\-\[\]:]+(:\d+)?|ssh://[^\s@]+@?[^\s]*)\Z", re.ASCII
)
CLOUDRUN_RE = re.compile(r"\Aprojects/[a-z][a-z0-9\-]{1,62}/locations/[a-z0-9\-]+\Z")
ENV_PREFIX = "env:"


def env_references(config: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every ``env:NAME`` string in a host's config, at any depth, as (key path, NAME)."""
    if isinstance(config, str):
        if config.startswith(ENV_PREFIX):
            yield path, config[len(ENV_PREFIX) :]
    elif isinstance(config, dict):
        for key, value in config.items():
            yield from env_references(value, f"{path}.{key}" if path else str(key))
    elif isinstance(config, list):
        for index, value in enumerate(config):
            yield from env_references(value, f"{path}[{index}]")


def refused_env_references(config: Any, policy: Policy) -> list[str]:
    """One message per ``env:`` reference the settings do not allow (names only, never values)."""
    allowed = set(policy.config_env_allowlist)
    return [
        f"{path or 'executor_config'} refers to the environment variable {name[:100]!r}, which is not in "
        "CONTAINER_MANAGER['CONFIG_ENV_ALLOWLIST']: host rows may read only the variables listed there "
        "(use a file path instead, or add the name to the list)"
        for path, name in env_references(config)
        if name not in allowed
    ]


def check_host_for_build(host: HostLike) -> None:
    """Raise ``ConfigurationError`` before an executor is built from a row the settings refuse.

    Installed into ``executors.registry`` when the app starts, so every path that builds an
    executor (the daemon, the admin, the CLI, the metrics server) runs it.
    """
    from executors.exceptions import ConfigurationError

    refused = refused_env_references(host.executor_config, get_policy())
    if refused:
        raise ConfigurationError(f"host {host.name!r}: {refused[0]}", field="executor_config")


def validate_host(host: ExecutorHost, policy: Policy) -> None:
    errors: dict[str, list[str]] = {}
    conn = host.connection_string if isinstance(host.connection_string, str) else ""
    if host.executor_type == "docker" and conn and not DOCKER_URL_RE.match(conn):
        errors["connection_string"] = [
            "a Docker connection string is unix:///path/to/docker.sock, tcp://host:port or ssh://user@host "
            "(empty = DOCKER_HOST or the local socket)"
        ]
    elif host.executor_type == "cloudrun" and not CLOUDRUN_RE.match(conn):
        errors["connection_string"] = [
            "a Cloud Run connection string is projects/PROJECT_ID/locations/REGION"
        ]
    config = host.executor_config
    if not isinstance(config, dict):
        errors["executor_config"] = ["executor_config must be a JSON object"]
    else:
        for key, value in config.items():
            if is_secret_key(key) and not (
                isinstance(value, str) and (value.startswith("/") or value.startswith(ENV_PREFIX))
            ):
                errors.setdefault("executor_config", []).append(
                    f"{key} looks like a credential: store the absolute path of a file holding it, "
                    "never the secret itself"
                )
        for message in refused_env_references(config, policy):
            errors.setdefault("executor_config", []).append(message)
    if not errors and host.executor_type in ("docker", "cloudrun", "mock"):
        _backend_check(host, conn, config, errors)
    if errors:
        raise ValidationError(errors)


def _backend_check(
    host: ExecutorHost, conn: str, config: dict[str, Any], errors: dict[str, list[str]]
) -> None:
    """The backend's own checks of its settings (no network, no credentials)."""
    from executors.exceptions import ConfigurationError
    from executors.registry import backend_class

    try:
        backend_class(host.executor_type).check_config(conn, config)
    except ConfigurationError as exc:
        field = exc.field if exc.field in ("connection_string", "executor_config") else "executor_config"
        errors.setdefault(field, []).append(str(exc))
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # A backend's check that trips over an unexpected type: still the user's input at fault.
        errors.setdefault("executor_config", []).append(
            f"the {host.executor_type} backend cannot read this configuration ({type(exc).__name__})"
        )


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
