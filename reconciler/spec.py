"""Turns a job row into the executor's ``ContainerSpec``, once per attempt.

This is also the launch-time re-check of the safety policy: a row written by plain SQL skipped
model validation, so ``container_manager.jobrules.launch_settings`` checks it again and types its
values; whatever the row holds, a refusal is a ``ValidationError`` naming the field, which the
claim records as ``invalid_spec`` instead of wedging the job.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError

from container_manager.conf import Policy
from container_manager.jobrules import launch_settings
from executors.types import LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_JOB, LABEL_MANAGED, ContainerSpec

if TYPE_CHECKING:
    from container_manager.models import ContainerJob


def container_name(instance: str, job_id: int, attempt: int) -> str:
    """Deterministic, unique per (instance, job, attempt): the idempotency key of a launch."""
    safe = re.sub(r"[^a-z0-9-]+", "-", instance.lower()).strip("-") or "default"
    return f"cm-{safe}-{job_id}-{attempt}"


def describe_validation_error(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
    return " ".join(exc.messages)


def job_identity_env(job: ContainerJob, attempt: int) -> dict[str, str]:
    """What the container is told about itself: its job, its attempt and its place in an array.

    Set over the job's own variables of the same names, so a container can rely on them.
    """
    env = {"CM_JOB_ID": str(job.pk), "CM_ATTEMPT": str(attempt)}
    if job.array_index is not None and job.array_size is not None:
        env["CM_ARRAY_INDEX"] = str(job.array_index)
        env["CM_ARRAY_SIZE"] = str(job.array_size)
    return env


def build_spec(job: ContainerJob, attempt: int, policy: Policy) -> ContainerSpec:
    """Check the row and build attempt ``attempt``'s spec; raises ``ValidationError`` naming the field."""
    settings = launch_settings(job, policy)
    env = {**settings.env, **job_identity_env(job, attempt)}
    labels = {
        LABEL_MANAGED: "true",
        LABEL_INSTANCE: policy.instance,
        LABEL_JOB: str(job.pk),
        LABEL_ATTEMPT: str(attempt),
    }
    return ContainerSpec(
        name=container_name(policy.instance, job.pk, attempt),
        image=settings.image,
        command=settings.argv,
        env=tuple(sorted(env.items())),
        labels=tuple(sorted(labels.items())),
        memory_mb=settings.memory_mb,
        cpu=settings.cpu,
        timeout_seconds=settings.timeout_seconds,
        user=policy.default_user or None,
        pids_limit=policy.pids_limit,
        secret_keys=settings.secret_keys,
    )


def spec_or_problem(job: ContainerJob, attempt: int, policy: Policy) -> tuple[ContainerSpec | None, str]:
    """``build_spec``, with a refusal turned into the message ``decide()`` takes as a fact."""
    try:
        return build_spec(job, attempt, policy), ""
    except ValidationError as exc:
        return None, describe_validation_error(exc)
