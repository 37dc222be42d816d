"""Choices shared by the models (and their CHECK constraints), derived from ``states``."""

from __future__ import annotations

from typing import Any

from django.db import models

from container_manager.states import ExecutionStatus, JobStatus, Reason


class ExecutorType(models.TextChoices):
    DOCKER = "docker", "Docker"
    CLOUDRUN = "cloudrun", "Google Cloud Run"
    MOCK = "mock", "Mock (in-memory, for tests)"


class HealthStatus(models.TextChoices):
    UNKNOWN = "unknown", "Unknown"
    HEALTHY = "healthy", "Healthy"
    UNHEALTHY = "unhealthy", "Unhealthy"


def _choices(members: Any) -> list[tuple[str, str]]:
    return [(m.value, m.name.replace("_", " ").title()) for m in members]


JOB_STATUS_CHOICES = _choices(JobStatus)
EXECUTION_STATUS_CHOICES = _choices(ExecutionStatus)
REASON_CHOICES = _choices(Reason)
