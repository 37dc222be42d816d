"""Turns a job row into the executor's ``ContainerSpec``, applying the safety policy once per attempt.

This is also the launch-time re-check of the policy: a row written by plain SQL skipped model
validation, so its image, command, limits and environment are validated again here, and a value
of the wrong type (SQLite stores whatever it is given) is a ``ValidationError`` naming the
field, never a ``TypeError`` that would wedge the job.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError

from container_manager.conf import Policy
from container_manager.envparse import is_secret_key
from container_manager.validation import parse_retry_on, split_command, validate_image, validate_limits
from executors.types import LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_JOB, LABEL_MANAGED, ContainerSpec

if TYPE_CHECKING:
    from container_manager.models import ContainerJob


def container_name(instance: str, job_id: int, attempt: int) -> str:
    """Deterministic, unique per (instance, job, attempt): the idempotency key of a launch."""
    safe = re.sub(r"[^a-z0-9-]+", "-", instance.lower()).strip("-") or "default"
    return f"cm-{safe}-{job_id}-{attempt}"


def _number(job: ContainerJob, field: str, default: float, kind: type) -> Any:
    value = getattr(job, field)
    if value is None:
        return kind(default)
    try:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return kind(number) if kind is float else int(number)
    except (TypeError, ValueError, OverflowError):
        raise ValidationError({field: f"{field} must be a finite number; the row holds {value!r}"}) from None


def effective_limits(job: ContainerJob, policy: Policy) -> dict[str, int | float]:
    """The limits an attempt runs with: the job's own, or the settings defaults where NULL."""
    return {
        "memory_limit": _number(job, "memory_limit", policy.default_memory_mb, int),
        "cpu_limit": _number(job, "cpu_limit", policy.default_cpu, float),
        "timeout_seconds": _number(job, "timeout_seconds", policy.default_timeout_seconds, int),
    }


def describe_validation_error(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
    return " ".join(exc.messages)


def build_spec(job: ContainerJob, attempt: int, policy: Policy) -> ContainerSpec:
    """Validate the row and build attempt ``attempt``'s spec; raises ``ValidationError`` naming the field."""
    image = job.image if isinstance(job.image, str) else ""
    validate_image(image, policy)
    if not isinstance(job.command, str):
        raise ValidationError({"command": "command must be a string"})
    argv = split_command(job.command)
    limits = effective_limits(job, policy)
    validate_limits(
        memory_limit=int(limits["memory_limit"]),
        cpu_limit=float(limits["cpu_limit"]),
        timeout_seconds=int(limits["timeout_seconds"]),
        max_retries=_number(job, "max_retries", 0, int),
        policy=policy,
    )
    parse_retry_on(job.retry_on if isinstance(job.retry_on, str) else "")
    env = job.get_all_environment_variables()
    labels = {
        LABEL_MANAGED: "true",
        LABEL_INSTANCE: policy.instance,
        LABEL_JOB: str(job.pk),
        LABEL_ATTEMPT: str(attempt),
    }
    return ContainerSpec(
        name=container_name(policy.instance, job.pk, attempt),
        image=image,
        command=argv,
        env=tuple(sorted(env.items())),
        labels=tuple(sorted(labels.items())),
        memory_mb=int(limits["memory_limit"]),
        cpu=float(limits["cpu_limit"]),
        timeout_seconds=int(limits["timeout_seconds"]),
        user=policy.default_user or None,
        pids_limit=policy.pids_limit,
        secret_keys=frozenset(k for k in env if is_secret_key(k)),
    )


def spec_or_problem(job: ContainerJob, attempt: int, policy: Policy) -> tuple[ContainerSpec | None, str]:
    """``build_spec``, with a refusal turned into the message ``decide()`` takes as a fact."""
    try:
        return build_spec(job, attempt, policy), ""
    except ValidationError as exc:
        return None, describe_validation_error(exc)
    except (TypeError, ValueError, OverflowError) as exc:
        # A field the checks above do not cover holds a value of the wrong type (plain SQL).
        return None, f"the row holds a value this version cannot read ({type(exc).__name__})"
