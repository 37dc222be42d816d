"""Django tasks used by the tests of ``ContainerTaskBackend`` (Django 6 only: ``django.tasks``).

The Docker test copies this module into its image, so the same import path names the same
functions on both sides, as in a real project whose image holds its own code.
"""

from __future__ import annotations

import os
from typing import Any

from django.tasks import task  # type: ignore[import-not-found,unused-ignore]


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
def succeed_on_attempt(context: Any, attempt: int) -> dict[str, Any]:
    """Fails until the given attempt, then reports what it saw."""
    if context.attempt < attempt:
        raise RuntimeError(f"attempt {context.attempt} fails on purpose")
    return {"attempt": context.attempt, "result_id": context.task_result.id}


@task
async def shout(text: str) -> str:
    return text.upper() + "!"


@task(priority=5)
def whoami() -> dict[str, Any]:
    return {"uid": os.getuid(), "job": os.environ.get("CM_JOB_ID"), "attempt": os.environ.get("CM_ATTEMPT")}


@task
def too_big() -> str:
    return "x" * 100_000
