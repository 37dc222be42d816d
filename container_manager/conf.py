"""The app's settings: one ``CONTAINER_MANAGER`` dict in Django settings, merged over defaults.

The safety limits of the policy live here, so that validation (at save time) and the
reconciler (again at launch time, for rows written by SQL) read the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class Policy:
    #: Memory given to a job that does not say (MB).
    default_memory_mb: int = 512
    #: Largest memory limit a job may ask for (MB).
    max_memory_mb: int = 2048
    default_cpu: float = 1.0
    max_cpu: float = 4.0
    default_timeout_seconds: int = 3600
    max_timeout_seconds: int = 7 * 24 * 3600
    #: Default and cap of ``ExecutorHost.max_concurrent_jobs``.
    default_max_concurrent_jobs: int = 10
    max_concurrent_jobs_cap: int = 100
    max_retries_cap: int = 20
    #: "uid:gid" every container runs as; an empty string keeps the image's own user.
    default_user: str = "65534:65534"
    pids_limit: int = 256
    #: fnmatch patterns; empty means any syntactically valid image is allowed.
    allowed_images: tuple[str, ...] = ()
    #: Bytes kept of each of stdout and stderr per attempt.
    log_tail_bytes: int = 64 * 1024
    #: Seconds a stopped container gets between SIGTERM and SIGKILL.
    stop_grace_seconds: float = 10.0
    #: Labelled containers with no live attempt are removed after this many seconds.
    orphan_grace_seconds: float = 60.0
    #: Seconds between full resyncs of all active jobs.
    resync_seconds: float = 30.0
    #: Seconds between polls for new rows (the PostgreSQL NOTIFY path makes this a fallback).
    poll_seconds: float = 0.5
    #: An attempt still "launching" after this long (launch kept failing transiently) fails.
    launch_deadline_seconds: float = 300.0
    #: Distinguishes this installation's containers from others' on a shared Docker host.
    instance: str = "default"


def _coerce(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple):
            raise ImproperlyConfigured(f"CONTAINER_MANAGER[{name.upper()!r}] must be a list")
        return tuple(value)
    if isinstance(default, bool) or default is None:
        return value
    try:
        return type(default)(value)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(
            f"CONTAINER_MANAGER[{name.upper()!r}] must be a {type(default).__name__}"
        ) from exc


def get_policy() -> Policy:
    """The policy in force, read from ``settings.CONTAINER_MANAGER`` (keys upper or lower case)."""
    raw = getattr(settings, "CONTAINER_MANAGER", {}) or {}
    known = {f.name: f for f in fields(Policy)}
    values = {}
    for key, value in raw.items():
        name = key.lower()
        if name not in known:
            raise ImproperlyConfigured(
                f"unknown CONTAINER_MANAGER setting {key!r}; known: {sorted(k.upper() for k in known)}"
            )
        values[name] = _coerce(name, value, known[name].default)
    policy = Policy(**values)
    if policy.default_memory_mb > policy.max_memory_mb:
        raise ImproperlyConfigured("CONTAINER_MANAGER: DEFAULT_MEMORY_MB exceeds MAX_MEMORY_MB")
    if policy.default_cpu > policy.max_cpu:
        raise ImproperlyConfigured("CONTAINER_MANAGER: DEFAULT_CPU exceeds MAX_CPU")
    return policy
