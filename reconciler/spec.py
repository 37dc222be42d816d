"""Turns a job row and its attempt into the executor's ``ContainerSpec``, applying the policy.

This is the launch-time re-check of the safety policy: a row inserted by plain SQL skipped
model validation, so its limits, image and command are validated again here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

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


def effective_limits(job: ContainerJob, policy: Policy) -> dict[str, int | float]:
    """Limits to record at claim time: the job's own, or the settings defaults when NULL."""
    return {
        "memory_limit": job.memory_limit if job.memory_limit is not None else policy.default_memory_mb,
        "cpu_limit": job.cpu_limit if job.cpu_limit is not None else policy.default_cpu,
        "timeout_seconds": job.timeout_seconds
        if job.timeout_seconds is not None
        else policy.default_timeout_seconds,
    }


def check_job(job: ContainerJob, policy: Policy) -> None:
    """Raise ``ValidationError`` if the row breaks a rule (rows written by SQL skip ``save()``)."""
    validate_image(job.image or "", policy)
    split_command(job.command or "")
    limits = effective_limits(job, policy)
    validate_limits(
        memory_limit=int(limits["memory_limit"]),
        cpu_limit=float(limits["cpu_limit"]),
        timeout_seconds=int(limits["timeout_seconds"]),
        max_retries=job.max_retries,
        policy=policy,
    )
    parse_retry_on(job.retry_on)
    job.get_all_environment_variables()


def describe_validation_error(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
    return " ".join(exc.messages)


def build_spec(job: ContainerJob, attempt: int, name: str, policy: Policy) -> ContainerSpec:
    env = job.get_all_environment_variables()
    labels = {
        LABEL_MANAGED: "true",
        LABEL_INSTANCE: policy.instance,
        LABEL_JOB: str(job.pk),
        LABEL_ATTEMPT: str(attempt),
    }
    limits = effective_limits(job, policy)
    return ContainerSpec(
        name=name,
        image=job.image,
        command=split_command(job.command or ""),
        env=tuple(sorted(env.items())),
        labels=tuple(sorted(labels.items())),
        memory_mb=int(limits["memory_limit"]),
        cpu=float(limits["cpu_limit"]),
        timeout_seconds=int(limits["timeout_seconds"]),
        user=policy.default_user or None,
        pids_limit=policy.pids_limit,
        secret_keys=frozenset(k for k in env if is_secret_key(k)),
    )
