"""The app's settings: one ``CONTAINER_MANAGER`` dict in Django settings, merged over defaults.

The safety limits of the policy live here, so that validation (at save time) and the
reconciler (again at launch time, for rows written by SQL) read the same numbers.
"""

from __future__ import annotations

import math
import re
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
    #: A running attempt whose host has answered nothing for this long is lost (and retried
    #: elsewhere when the job allows).
    host_lost_seconds: float = 120.0
    #: Distinguishes this installation's containers from others' on a shared Docker host.
    instance: str = "default"
    #: Environment variables of this process that host rows (``executor_config``) may name with
    #: ``env:NAME``. Empty: ``env:`` references are refused, since anyone who may edit a host
    #: row could otherwise make the backend read any variable of the web or daemon process.
    config_env_allowlist: tuple[str, ...] = ()
    #: Most jobs one array may have (``create_array``, ``manage_jobs submit --array``).
    max_array_size: int = 10_000


#: What the code can compute with, whatever the settings say: the settings must stay inside
#: these, and the database refuses values outside them (CHECK constraints), so a row written
#: by plain SQL cannot make a deadline or a backoff overflow.
ABSOLUTE_MIN_MEMORY_MB = 6  # Docker refuses a memory limit below 6 MB
ABSOLUTE_MAX_MEMORY_MB = 2**31 - 1
ABSOLUTE_MIN_CPU = 0.01
ABSOLUTE_MAX_CPU = 1024.0
ABSOLUTE_MAX_SECONDS = 2**31 - 1  # ~68 years: now + this is still a valid date-time
ABSOLUTE_MAX_RETRIES = 1000
ABSOLUTE_MAX_CONCURRENT_JOBS = 10_000
ABSOLUTE_MAX_ARRAY_SIZE = 1_000_000
PRIORITY_RANGE = (-32768, 32767)

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


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
    _check_bounds(policy)
    return policy


def _check_bounds(policy: Policy) -> None:
    bounds: list[tuple[str, float, float, float]] = [
        ("MAX_MEMORY_MB", policy.max_memory_mb, ABSOLUTE_MIN_MEMORY_MB, ABSOLUTE_MAX_MEMORY_MB),
        ("DEFAULT_MEMORY_MB", policy.default_memory_mb, ABSOLUTE_MIN_MEMORY_MB, policy.max_memory_mb),
        ("MAX_CPU", policy.max_cpu, ABSOLUTE_MIN_CPU, ABSOLUTE_MAX_CPU),
        ("DEFAULT_CPU", policy.default_cpu, ABSOLUTE_MIN_CPU, policy.max_cpu),
        ("MAX_TIMEOUT_SECONDS", policy.max_timeout_seconds, 1, ABSOLUTE_MAX_SECONDS),
        ("DEFAULT_TIMEOUT_SECONDS", policy.default_timeout_seconds, 1, policy.max_timeout_seconds),
        ("MAX_RETRIES_CAP", policy.max_retries_cap, 0, ABSOLUTE_MAX_RETRIES),
        ("MAX_CONCURRENT_JOBS_CAP", policy.max_concurrent_jobs_cap, 1, ABSOLUTE_MAX_CONCURRENT_JOBS),
        ("MAX_ARRAY_SIZE", policy.max_array_size, 1, ABSOLUTE_MAX_ARRAY_SIZE),
        (
            "DEFAULT_MAX_CONCURRENT_JOBS",
            policy.default_max_concurrent_jobs,
            1,
            policy.max_concurrent_jobs_cap,
        ),
    ]
    for name, value, low, high in bounds:
        if not (math.isfinite(value) and low <= value <= high):
            raise ImproperlyConfigured(f"CONTAINER_MANAGER[{name!r}] must be between {low} and {high}")
    bad = [n for n in policy.config_env_allowlist if not (isinstance(n, str) and _ENV_NAME_RE.match(n))]
    if bad:
        raise ImproperlyConfigured(
            f"CONTAINER_MANAGER['CONFIG_ENV_ALLOWLIST'] holds names of environment variables; not {bad!r}"
        )
