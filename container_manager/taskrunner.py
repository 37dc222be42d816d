"""Runs one Django task inside its container: ``python3 -m container_manager.taskrunner``.

``ContainerTaskBackend`` creates a job whose container runs this module, with the task in the
``CM_TASK`` variable (JSON: the task's import path, its arguments, whether it takes a context).
The runner sets Django up (when ``DJANGO_SETTINGS_MODULE`` is set), calls the task, and
reports on the last line of its standard output, which the reconciler keeps with the attempt:

* ``CM_TASK_RESULT {"return_value": ...}`` and exit status 0, or
* ``CM_TASK_ERROR {"exception_class_path": ..., "traceback": ...}`` and exit status 1.

The backend reads that line back (``read_outcome``) to answer ``get_result()``. Nothing here
needs the database, so the container needs only the project's code and its settings. The
protocol is in this one module, both ends of it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PAYLOAD_VARIABLE = "CM_TASK"
RESULT_PREFIX = "CM_TASK_RESULT "
ERROR_PREFIX = "CM_TASK_ERROR "
#: The result line must fit in the stdout tail the reconciler keeps (``LOG_TAIL_BYTES``).
DEFAULT_RESULT_LIMIT = 32 * 1024


@dataclass(frozen=True)
class Outcome:
    """What a runner reported: a return value, or an exception (its class path and traceback)."""

    ok: bool
    return_value: Any = None
    exception_class_path: str = ""
    traceback: str = ""


def result_line(value: Any, limit: int = DEFAULT_RESULT_LIMIT) -> str:
    """The success line for ``value``; ``ValueError`` when it is not JSON or longer than ``limit``."""
    try:
        text = json.dumps({"return_value": value}, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the task's return value is not JSON: {exc}") from None
    if len(text) > limit:
        raise ValueError(f"the task's return value is {len(text)} bytes as JSON; at most {limit} are kept")
    return RESULT_PREFIX + text


def error_line(exc: BaseException) -> str:
    kind = type(exc)
    tb = "".join(traceback.format_exception(exc))[-8000:]
    return ERROR_PREFIX + json.dumps(
        {"exception_class_path": f"{kind.__module__}.{kind.__qualname__}", "traceback": tb}
    )


def read_outcome(stdout: str) -> Outcome | None:
    """The outcome a runner printed on its last report line; None when it printed none."""
    for line in reversed(stdout.splitlines()):
        for prefix in (RESULT_PREFIX, ERROR_PREFIX):
            if not line.startswith(prefix):
                continue
            try:
                data = json.loads(line[len(prefix) :])
            except ValueError:
                return None  # cut, or not ours: no outcome rather than a wrong one
            if not isinstance(data, dict):
                return None
            if prefix == RESULT_PREFIX:
                return Outcome(True, return_value=data.get("return_value"))
            return Outcome(
                False,
                exception_class_path=str(data.get("exception_class_path", "")),
                traceback=str(data.get("traceback", "")),
            )
    return None


def _import(path: str) -> Any:
    from importlib import import_module

    module_path, _, name = path.rpartition(".")
    target: Any = import_module(module_path)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def _context(task: Any, payload: dict[str, Any]) -> Any:
    """The ``TaskContext`` a ``takes_context`` task gets: its result id is the job's id."""
    from django.tasks import TaskContext, TaskResult, TaskResultStatus
    from django.utils import timezone

    attempt = int(os.environ.get("CM_ATTEMPT", "1") or 1)
    now = timezone.now()
    result = TaskResult(
        task=task,
        id=os.environ.get("CM_JOB_ID", ""),
        status=TaskResultStatus.RUNNING,
        enqueued_at=None,
        started_at=now,
        finished_at=None,
        last_attempted_at=now,
        args=payload.get("args", []),
        kwargs=payload.get("kwargs", {}),
        backend=task.backend,
        errors=[],
        worker_ids=[f"attempt-{n}" for n in range(1, attempt + 1)],
    )
    return TaskContext(task_result=result)


def run(payload: dict[str, Any]) -> str:
    """Call the task described by ``payload``; the report line (never raises for the task's errors)."""
    try:
        target = _import(str(payload["task"]))
        args, kwargs = list(payload.get("args", [])), dict(payload.get("kwargs", {}))
        func: Callable[..., Any] = getattr(target, "func", target)  # a django.tasks Task, or a function
        if payload.get("takes_context"):
            args.insert(0, _context(target, payload))
        value = func(*args, **kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_awaited(value))
        return result_line(value, int(payload.get("result_limit", DEFAULT_RESULT_LIMIT)))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the task's own failure, whatever it is, is its outcome
        return error_line(exc)


async def _awaited(value: Any) -> Any:
    return await value


def main() -> int:
    raw = os.environ.get(PAYLOAD_VARIABLE)
    if not raw:
        print(
            f"taskrunner: {PAYLOAD_VARIABLE} is not set: this runs tasks enqueued by ContainerTaskBackend",
            file=sys.stderr,
        )
        return 2
    try:
        payload = json.loads(raw)
        if not isinstance(payload, dict) or not isinstance(payload.get("task"), str):
            raise ValueError("not a task")
    except ValueError as exc:
        print(f"taskrunner: {PAYLOAD_VARIABLE} is not a task description: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        import django

        django.setup()
    line = run(payload)
    sys.stdout.flush()
    print(line, flush=True)
    return 0 if line.startswith(RESULT_PREFIX) else 1


if __name__ == "__main__":
    sys.exit(main())
