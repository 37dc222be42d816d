"""A Cloud Run host row's settings, checked without the network, and its credentials.

``parse_config`` makes every check that the connection string and the config keys need and
returns a frozen ``Settings``; it loads no credentials and builds no client, so a host row can
be validated when it is saved. ``load_credentials`` is the only place that reads a key file or
an environment variable, and no message it raises carries what it read: it names the key or
the variable instead.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from executors.exceptions import ConfigurationError

#: ``projects/PROJECT/locations/REGION``; PROJECT may be an id or a number.
CONNECTION_RE = re.compile(
    r"\Aprojects/(?P<project>[a-z0-9][a-z0-9.:_-]*)/locations/(?P<location>[a-z0-9-]+)\Z"
)
#: ``env:NAME`` in ``credentials_file``: the variable holds a key file path or the key's JSON.
ENV_REF_RE = re.compile(r"\Aenv:(?P<name>[A-Za-z_][A-Za-z0-9_]*)\Z")

CONFIG_KEYS = frozenset(
    {
        "service_account",
        "vpc_connector",
        "vpc_egress",
        "labels",
        "credentials_file",
        "api_endpoint",
        "logging_endpoint",
        "anonymous",
        "transport",
        "call_timeout",
        "operation_timeout",
        "poll_interval",
        "task_count",
        "use_cloud_logging",
        "retry_attempts",
        "retry_backoff",
        "retry_backoff_max",
        "list_page_size",
    }
)
#: Keys that existed once and are refused with an explanation rather than as unknown.
REMOVED_KEYS = {
    "retain_jobs": (
        "retain_jobs is not supported: a region holds at most 1000 Cloud Run jobs, so each attempt's "
        "job is deleted once its outcome and logs are recorded; remove the key"
    ),
}
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def valid_label(key: str, value: str) -> bool:
    """Cloud Run's label rules (keys start with a letter; ``[a-z0-9_-]``, 63 characters at most)."""
    return bool(
        re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key)
        and re.fullmatch(r"[a-z0-9_-]{0,63}", value)
        and not key.startswith(("run.googleapis.com", "cloud.googleapis.com"))
    )


@dataclass(frozen=True)
class Settings:
    """A host row's Cloud Run settings, validated (see API.md for each key's meaning)."""

    project: str
    location: str
    service_account: str | None = None
    vpc_connector: str | None = None
    #: ``ALL_TRAFFIC`` or ``PRIVATE_RANGES_ONLY`` (the enum names), or None.
    vpc_egress: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    credentials_file: str | None = None
    api_endpoint: str | None = None
    logging_endpoint: str | None = None
    anonymous: bool = False
    transport: str = "rest"
    call_timeout: float = 30.0
    operation_timeout: float = 120.0
    poll_interval: float = 5.0
    task_count: int = 1
    use_cloud_logging: bool = False
    retry_attempts: int = 4
    retry_backoff: float = 0.5
    retry_backoff_max: float = 4.0
    list_page_size: int = 500


def parse_config(connection_string: str, config: Mapping[str, Any] | None) -> Settings:
    """Validate a host row's connection string and config; raise ``ConfigurationError`` naming the key."""
    match = CONNECTION_RE.match(connection_string or "")
    if not match:
        raise ConfigurationError(
            "Cloud Run connection string must be projects/PROJECT_ID/locations/REGION, "
            f"got {connection_string!r}",
            field="connection_string",
        )
    if config is not None and not isinstance(config, Mapping):
        raise ConfigurationError("Cloud Run executor config must be an object")
    config = dict(config or {})
    for key, why in REMOVED_KEYS.items():
        if key in config:
            raise ConfigurationError(why)
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ConfigurationError(
            f"unknown Cloud Run executor config keys: {unknown}; known keys: {sorted(CONFIG_KEYS)}"
        )

    def number(key: str, default: float, minimum: float = 0.0) -> float:
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ConfigurationError(f"Cloud Run config {key!r} must be a number >= {minimum}, got {value!r}")
        return float(value)

    def integer(key: str, default: int, minimum: int, maximum: int) -> int:
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise ConfigurationError(
                f"Cloud Run config {key!r} must be an integer in [{minimum}, {maximum}], got {value!r}"
            )
        return value

    def flag(key: str, default: bool) -> bool:
        value = config.get(key, default)
        if not isinstance(value, bool):
            raise ConfigurationError(f"Cloud Run config {key!r} must be true or false, got {value!r}")
        return value

    def text(key: str) -> str | None:
        value = config.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigurationError(f"Cloud Run config {key!r} must be a non-empty string")
        return value

    labels = config.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        raise ConfigurationError("Cloud Run config 'labels' must be an object of strings")
    bad = [f"{k}={v}" for k, v in labels.items() if not valid_label(str(k), v)]
    if bad:
        raise ConfigurationError(
            f"invalid Cloud Run labels {bad}: keys start with a lowercase letter; keys and values "
            "use only lowercase letters, digits, '_' and '-', at most 63 characters"
        )
    egress = text("vpc_egress")
    if egress is not None:
        egress = egress.upper().replace("-", "_")
        if egress not in ("ALL_TRAFFIC", "PRIVATE_RANGES_ONLY"):
            raise ConfigurationError(
                f"vpc_egress must be 'all-traffic' or 'private-ranges-only', got {config['vpc_egress']!r}"
            )
    transport = config.get("transport", "rest")
    if transport not in ("rest", "grpc"):
        raise ConfigurationError(f"transport must be 'rest' or 'grpc', got {transport!r}")
    credentials_file = text("credentials_file")
    if (
        credentials_file is not None
        and credentials_file.startswith("env:")
        and not ENV_REF_RE.match(credentials_file)
    ):
        raise ConfigurationError(
            "Cloud Run config 'credentials_file' must be a path or env:NAME with NAME a valid "
            "environment variable name"
        )
    return Settings(
        project=match["project"],
        location=match["location"],
        service_account=text("service_account"),
        vpc_connector=text("vpc_connector"),
        vpc_egress=egress,
        labels={str(k): v for k, v in labels.items()},
        credentials_file=credentials_file,
        api_endpoint=text("api_endpoint"),
        logging_endpoint=text("logging_endpoint"),
        anonymous=flag("anonymous", False),
        transport=transport,
        call_timeout=number("call_timeout", 30.0, 0.001),
        operation_timeout=number("operation_timeout", 120.0, 0.001),
        poll_interval=number("poll_interval", 5.0),
        task_count=integer("task_count", 1, 1, 10000),
        use_cloud_logging=flag("use_cloud_logging", False),
        retry_attempts=integer("retry_attempts", 4, 1, 20),
        retry_backoff=number("retry_backoff", 0.5),
        retry_backoff_max=number("retry_backoff_max", 4.0),
        list_page_size=integer("list_page_size", 500, 1, 1000),
    )


def load_credentials(settings: Settings) -> Any:
    """Anonymous (emulators), a service-account key (file, or ``env:NAME``), or ADC.

    Errors name ``credentials_file`` or the variable, and carry only the failure's type: a
    key's content or a value read from the environment never reaches a message or a cause.
    """
    if settings.anonymous:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    source = settings.credentials_file
    if not source:
        try:
            import google.auth

            credentials, _project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        except Exception as exc:
            raise ConfigurationError(
                f"cannot load Google application default credentials ({type(exc).__name__}); "
                "set credentials_file or configure ADC on this machine"
            ) from None
        return credentials
    from google.oauth2 import service_account

    env = ENV_REF_RE.match(source)
    if env is not None:
        name = env["name"]
        value = os.environ.get(name, "")
        if not value:
            raise ConfigurationError(f"environment variable {name} (credentials_file) is not set")
        try:
            if value.lstrip().startswith("{"):
                return service_account.Credentials.from_service_account_info(
                    json.loads(value), scopes=[CLOUD_PLATFORM_SCOPE]
                )
            return service_account.Credentials.from_service_account_file(value, scopes=[CLOUD_PLATFORM_SCOPE])
        except Exception as exc:
            raise ConfigurationError(
                f"cannot load Google credentials from environment variable {name} (credentials_file): "
                f"{type(exc).__name__}; it must hold a service-account key file's path or its JSON"
            ) from None
    try:
        return service_account.Credentials.from_service_account_file(source, scopes=[CLOUD_PLATFORM_SCOPE])
    except Exception as exc:
        raise ConfigurationError(
            f"cannot load Google credentials from credentials_file {source!r}: {type(exc).__name__}; "
            "it must be a readable service-account key file"
        ) from None
