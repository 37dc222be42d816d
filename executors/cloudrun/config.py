"""A Cloud Run host row's settings, checked without the network, and its credentials.

``parse_config`` makes every check that the connection string and the config keys need (by
the shared rules of ``executors._config``) and returns a frozen ``Settings``; it loads no
credentials and builds no client, so a host row can be validated when it is saved. ``load_credentials`` is the only place that reads a key file or
an environment variable, and no message it raises carries what it read: it names the key or
the variable instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from executors._config import ConfigReader, resolve
from executors.exceptions import ConfigurationError

#: ``projects/PROJECT/locations/REGION``; PROJECT may be an id or a number.
CONNECTION_RE = re.compile(
    r"\Aprojects/(?P<project>[a-z0-9][a-z0-9.:_-]*)/locations/(?P<location>[a-z0-9-]+)\Z"
)

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
    match = CONNECTION_RE.match(connection_string if isinstance(connection_string, str) else "")
    if not match:
        raise ConfigurationError(
            "Cloud Run connection string must be projects/PROJECT_ID/locations/REGION, "
            f"got {connection_string!r}",
            field="connection_string",
        )
    reader = ConfigReader("cloudrun", config, CONFIG_KEYS, removed=REMOVED_KEYS)
    labels = reader.config.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        raise reader.error("labels", "must be an object of strings")
    bad = [f"{k}={v}" for k, v in labels.items() if not valid_label(str(k), v)]
    if bad:
        raise ConfigurationError(
            f"invalid Cloud Run labels {bad}: keys start with a lowercase letter; keys and values "
            "use only lowercase letters, digits, '_' and '-', at most 63 characters"
        )
    egress = reader.text("vpc_egress", rule="must be 'all-traffic' or 'private-ranges-only'")
    if egress is not None:
        egress = egress.upper().replace("-", "_")
        if egress not in ("ALL_TRAFFIC", "PRIVATE_RANGES_ONLY"):
            raise reader.error("vpc_egress", "must be 'all-traffic' or 'private-ranges-only'")
    return Settings(
        project=match["project"],
        location=match["location"],
        service_account=reader.text("service_account"),
        vpc_connector=reader.text("vpc_connector"),
        vpc_egress=egress,
        labels={str(k): v for k, v in labels.items()},
        credentials_file=reader.path("credentials_file"),
        api_endpoint=reader.text("api_endpoint"),
        logging_endpoint=reader.text("logging_endpoint"),
        anonymous=reader.flag("anonymous", False),
        transport=reader.text("transport", "rest", choices=("rest", "grpc")) or "rest",
        call_timeout=reader.number("call_timeout", 30.0, minimum=0.001),
        operation_timeout=reader.number("operation_timeout", 120.0, minimum=0.001),
        poll_interval=reader.number("poll_interval", 5.0),
        task_count=reader.integer("task_count", 1, minimum=1, maximum=10000),
        use_cloud_logging=reader.flag("use_cloud_logging", False),
        retry_attempts=reader.integer("retry_attempts", 4, minimum=1, maximum=20),
        retry_backoff=reader.number("retry_backoff", 0.5),
        retry_backoff_max=reader.number("retry_backoff_max", 4.0),
        list_page_size=reader.integer("list_page_size", 500, minimum=1, maximum=1000),
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

    value, name = resolve("cloudrun", "credentials_file", source)
    try:
        if name is not None and value.lstrip().startswith("{"):
            return service_account.Credentials.from_service_account_info(
                json.loads(value), scopes=[CLOUD_PLATFORM_SCOPE]
            )
        return service_account.Credentials.from_service_account_file(value, scopes=[CLOUD_PLATFORM_SCOPE])
    except Exception as exc:
        failure = type(exc).__name__
    # Raised outside the handler: the library's exception (which may quote what the variable
    # holds) is neither the cause nor the context of ours.
    if name is not None:
        raise ConfigurationError(
            f"cannot load Google credentials from environment variable {name} (credentials_file): "
            f"{failure}; it must hold a service-account key file's path or its JSON"
        )
    raise ConfigurationError(
        f"cannot load Google credentials from credentials_file {source!r}: {failure}; "
        "it must be a readable service-account key file"
    )
