"""structlog configuration shared by the daemon and the CLI.

JSON lines when stderr is not a terminal (journald, containers, log shippers), coloured
console output otherwise. Standard-library loggers (Django, docker, google) are routed
through the same renderer, and a processor masks values of secret-looking keys, so a
careless ``log.info(..., password=...)`` cannot leak.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from container_manager.envparse import MASK, is_secret_key


def _mask_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in list(event_dict):
        if key != "event" and is_secret_key(key):
            event_dict[key] = MASK
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
    for noisy in ("urllib3", "docker", "google", "django.db.backends"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
