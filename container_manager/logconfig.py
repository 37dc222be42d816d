"""structlog configuration shared by the daemon and the CLI.

JSON lines when stderr is not a terminal (journald, containers, log shippers), coloured
console output otherwise. Standard-library loggers (Django, docker, google) are routed
through the same renderer. Context bound with ``structlog.contextvars`` (the daemon binds
``job_id`` around each one-job step) is merged into every record, stdlib ones included.

A processor masks secrets before rendering: values of secret-looking keys at any depth (an env
dict, ``(key, value)`` pairs, ``KEY=value`` entries) and passwords in URLs, so a careless
``log.info(..., password=...)`` or ``log.info(..., env=env)`` cannot leak.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog

from container_manager.envparse import MASK, is_secret_key, mask_url_passwords

#: ``KEY=value`` (an env entry as Docker and shells write it).
_ASSIGNMENT_RE = re.compile(r"\A(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)=")
_MAX_DEPTH = 6


def _scrub_text(text: str) -> str:
    match = _ASSIGNMENT_RE.match(text)
    if match and is_secret_key(match.group("key")):
        return f"{match.group('key')}={MASK}"
    return mask_url_passwords(text)


def scrub(value: Any, depth: int = 0) -> Any:
    """``value`` with secrets masked: values of secret-looking keys in mappings and (key, value)
    pairs, ``SECRET=...`` entries, and passwords in URLs, however deeply nested (to a limit)."""
    if isinstance(value, str):
        return _scrub_text(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            k: (MASK if isinstance(k, str) and is_secret_key(k) else scrub(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = [
            (item[0], MASK)
            if isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and is_secret_key(item[0])
            else scrub(item, depth + 1)
            for item in value
        ]
        return items if isinstance(value, list | set | frozenset) else tuple(items)
    return value


def _mask_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in list(event_dict.items()):
        if key == "exc_info":
            continue
        if key != "event" and is_secret_key(key):
            event_dict[key] = MASK
        elif isinstance(value, str | Mapping | list | tuple | set | frozenset):
            event_dict[key] = scrub(value)
    return event_dict


def configure(fmt: str = "auto", level: str = "INFO") -> None:
    """``fmt``: "json", "console" or "auto" (JSON unless stderr is a TTY)."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info
            if fmt == "json"
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Django's default logging config gives the "django" logger a handler of its own; drop it
    # so Django's records reach the root handler (and this formatter) exactly once.
    django_logger = logging.getLogger("django")
    django_logger.handlers[:] = []
    django_logger.propagate = True
    for noisy in ("urllib3", "docker", "google", "django.db.backends"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
