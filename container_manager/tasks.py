"""A Django tasks backend (Django 6's ``django.tasks``) that runs every task in a container.

``task.enqueue(...)`` creates a ``ContainerJob``: the configured image (one with the project's
code and settings) runs ``container_manager.taskrunner``, which calls the task and prints its
outcome. The job has this project's limits, retries and safety policy, and the reconciler
drives it like any other; ``get_result(id)`` (the id is the job's) maps the job back:

============================  =========================================================
job status                    task result
============================  =========================================================
pending, retrying             ``READY`` (waiting for its first or its next attempt)
launching, running            ``RUNNING``
completed                     ``SUCCESSFUL``; ``return_value`` from the runner's report
failed, timeout, cancelled    ``FAILED``
============================  =========================================================

``errors`` has one entry per failed attempt (the task's own exception when the runner reported
it, else ``ContainerTaskError`` saying how the container ended), also when a later attempt
succeeded; ``worker_ids`` names each attempt's container, so ``attempts`` counts them.

On Django 5.2 (no ``django.tasks``) the module imports, and building the backend raises
``ImproperlyConfigured`` saying so.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import django
from django.core.exceptions import ImproperlyConfigured

from container_manager import taskrunner

if TYPE_CHECKING:
    from container_manager.models import ContainerExecution, ContainerJob

_Base: Any
try:
    from django.tasks import Task, TaskResult, TaskResultStatus  # type: ignore[import-not-found,attr-defined,unused-ignore]
    from django.tasks.backends.base import BaseTaskBackend as _Base  # type: ignore[import-not-found,no-redef,unused-ignore]
    from django.tasks.base import TaskError  # type: ignore[import-not-found,unused-ignore]
    from django.tasks.exceptions import TaskResultDoesNotExist  # type: ignore[import-not-found,unused-ignore]
    from django.tasks.signals import task_enqueued  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # Django < 6.0
    HAS_DJANGO_TASKS = False
    _Base = object
else:
    HAS_DJANGO_TASKS = True

#: The jobs of tasks are named ``task:<import path>``.
NAME_PREFIX = "task:"
DEFAULT_COMMAND = ("python3", "-m", "container_manager.taskrunner")
#: OPTIONS keys, with what each sets on the job.
OPTIONS = {
    "IMAGE": "image (required): an image with the project's code, its settings and Django 6",
    "COMMAND": "command running the task runner (default: python3 -m container_manager.taskrunner)",
    "HOST": "name of the ExecutorHost to run on (default: the scheduler chooses)",
    "ENVIRONMENT": "variables of the container (a dict), e.g. DJANGO_SETTINGS_MODULE",
    "ENVIRONMENT_TEMPLATE": "name of an EnvironmentVariableTemplate",
    "SECRET_KEYS": "names of variables whose values are secret",
    "MEMORY_LIMIT": "MB",
    "CPU_LIMIT": "cores",
    "TIMEOUT_SECONDS": "per attempt",
    "MAX_RETRIES": "extra attempts after a retryable failure",
    "RETRY_ON": "failure reasons retried (default: exit_code,oom,lost,launch_error)",
    "RETRY_BACKOFF_SECONDS": "backoff base",
    "RETRY_BACKOFF_MAX_SECONDS": "backoff cap",
}

_FAILED_ATTEMPT = ("failed", "timeout", "cancelled")
#: OPTIONS copied as they are to the job field of the same name, in lower case.
JOB_OPTIONS = (
    "MEMORY_LIMIT",
    "CPU_LIMIT",
    "TIMEOUT_SECONDS",
    "MAX_RETRIES",
    "RETRY_ON",
    "RETRY_BACKOFF_SECONDS",
    "RETRY_BACKOFF_MAX_SECONDS",
    "SECRET_KEYS",
)


class ContainerTaskError(Exception):
    """The task's container ended without the task's own report (a timeout, an OOM kill, a
    cancellation, a launch refused, a dependency that failed...): the traceback says which."""


class ContainerTaskBackend(_Base):  # type: ignore[misc]
    """Runs Django tasks as container jobs. Capabilities: ``run_after``, async tasks, priorities
    (-100..100, higher first, as the jobs' ``priority``) and ``get_result`` from any process."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        if not HAS_DJANGO_TASKS:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]: ContainerTaskBackend needs django.tasks (Django 6.0 or later); "
                f"this is Django {django.get_version()}"
            )
        super().__init__(alias, params)
        options = {str(k).upper(): v for k, v in (self.options or {}).items()}
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']: unknown key(s) {unknown}; known: {sorted(OPTIONS)}"
            )
        if not isinstance(options.get("IMAGE"), str) or not options["IMAGE"]:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['IMAGE'] is required: an image with the project's code"
            )
        environment = options.get("ENVIRONMENT", {})
        if not isinstance(environment, dict) or taskrunner.PAYLOAD_VARIABLE in environment:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['ENVIRONMENT'] must be a dict of variables "
                f"(without {taskrunner.PAYLOAD_VARIABLE}, which carries the task)"
            )
        self.job_options = options

    # Enqueueing ----------------------------------------------------------------------------

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Create the task's job (in the caller's transaction) and return its ``READY`` result."""
        from container_manager.models import ContainerJob

        self.validate_task(task)
        job = ContainerJob.objects.create(**self._job_fields(task, list(args), dict(kwargs)))
        result = self._result(job, task, [])
        task_enqueued.send(type(self), task_result=result)
        return result

    def _job_fields(self, task: Any, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        from container_manager.conf import get_policy
        from container_manager.models import EnvironmentVariableTemplate, ExecutorHost

        options = self.job_options
        payload = {
            "task": task.module_path,
            "args": args,
            "kwargs": kwargs,
            "takes_context": task.takes_context,
            "queue_name": task.queue_name,
            "priority": task.priority,
            # Half the kept stdout tail: the report line always fits whole.
            "result_limit": get_policy().log_tail_bytes // 2,
        }
        try:
            text = json.dumps(payload, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"the arguments of task {task.module_path} must be JSON: {exc}") from None
        fields: dict[str, Any] = {
            "name": f"{NAME_PREFIX}{task.module_path}"[:200],
            "image": options["IMAGE"],
            "command": list(options.get("COMMAND") or DEFAULT_COMMAND),
            "override_environment": {**options.get("ENVIRONMENT", {}), taskrunner.PAYLOAD_VARIABLE: text},
            "priority": task.priority,
            "run_after": task.run_after,
            "created_by": f"tasks:{self.alias}",
        }
        for key in JOB_OPTIONS:
            if options.get(key) is not None:
                fields[key.lower()] = options[key]
        lookups = (
            ("HOST", "docker_host", ExecutorHost),
            ("ENVIRONMENT_TEMPLATE", "environment_template", EnvironmentVariableTemplate),
        )
        for key, field, model in lookups:
            if options.get(key):
                row = model.objects.filter(name=options[key]).first()
                if row is None:
                    raise ImproperlyConfigured(
                        f"TASKS[{self.alias!r}]['OPTIONS'][{key!r}]: there is no {field} named {options[key]!r}"
                    )
                fields[field] = row
        return fields

    # Results -------------------------------------------------------------------------------

    def get_result(self, result_id: Any) -> Any:
        """The result of the task whose job is ``result_id``; ``TaskResultDoesNotExist`` otherwise."""
        from container_manager.models import ContainerJob

        text = str(result_id)
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            raise TaskResultDoesNotExist(result_id)
        job = (
            ContainerJob.objects.filter(pk=int(text), name__startswith=NAME_PREFIX)
            .prefetch_related("executions")
            .first()
        )
        payload = _payload(job) if job is not None else None
        if job is None or payload is None:
            raise TaskResultDoesNotExist(result_id)
        return self._result(job, self._task(payload), list(job.executions.all()), payload)

    def _task(self, payload: dict[str, Any]) -> Any:
        """The ``Task`` the job runs, as enqueued (priority, queue), bound to this backend."""
        from django.utils.module_loading import import_string

        path = payload["task"]
        try:
            target = import_string(path)
        except ImportError as exc:
            raise TaskResultDoesNotExist(f"task {path} cannot be imported here: {exc}") from None
        changes = {"backend": self.alias, "priority": payload.get("priority", 0)}
        changes["queue_name"] = payload.get("queue_name") or "default"
        if isinstance(target, Task):
            return target.using(**changes)
        return self.task_class(func=target, takes_context=bool(payload.get("takes_context")), **changes)

    def _result(
        self,
        job: ContainerJob,
        task: Any,
        executions: list[ContainerExecution],
        payload: dict[str, Any] | None = None,
    ) -> Any:
        payload = payload if payload is not None else _payload(job) or {}
        status, value = _status(job), None
        executions = sorted(executions, key=lambda e: e.attempt)
        # One error per attempt that failed, also when a later attempt succeeded.
        errors = [_error(job, e) for e in executions if e.status in _FAILED_ATTEMPT]
        if status == TaskResultStatus.FAILED and not errors:
            errors = [_error(job, None)]  # it never ran: cancelled while waiting, or a dependency failed
        if status == TaskResultStatus.SUCCESSFUL and executions:
            outcome = taskrunner.read_outcome(executions[-1].stdout)
            value = outcome.return_value if outcome is not None and outcome.ok else None
        latest = executions[-1] if executions else None
        result = TaskResult(
            task=task,
            id=str(job.pk),
            status=status,
            enqueued_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            last_attempted_at=(latest.started_at or latest.created_at) if latest else None,
            args=payload.get("args", []),
            kwargs=payload.get("kwargs", {}),
            backend=self.alias,
            errors=errors,
            worker_ids=[e.container_name for e in executions],
        )
        object.__setattr__(result, "_return_value", value)
        return result

    def check(self, **kwargs: Any) -> list[Any]:
        return []


def _payload(job: ContainerJob) -> dict[str, Any] | None:
    from container_manager.envparse import EnvParseError, parse_env

    try:
        raw = parse_env(job.override_environment or "").get(taskrunner.PAYLOAD_VARIABLE)
        payload = json.loads(raw) if raw else None
    except (EnvParseError, ValueError):
        return None
    return payload if isinstance(payload, dict) and isinstance(payload.get("task"), str) else None


def _status(job: ContainerJob) -> Any:
    return {
        "pending": TaskResultStatus.READY,
        "retrying": TaskResultStatus.READY,
        "launching": TaskResultStatus.RUNNING,
        "running": TaskResultStatus.RUNNING,
        "completed": TaskResultStatus.SUCCESSFUL,
    }.get(job.status, TaskResultStatus.FAILED)


def _error(job: ContainerJob, execution: ContainerExecution | None) -> Any:
    """The error of one failed attempt: the task's own exception when the runner reported one."""
    if execution is not None:
        outcome = taskrunner.read_outcome(execution.stdout)
        if outcome is not None and not outcome.ok:
            return TaskError(exception_class_path=outcome.exception_class_path, traceback=outcome.traceback)
        reason, message = execution.reason, execution.message
        where = f"attempt {execution.attempt} ({execution.container_name})"
    else:
        reason, message, where = job.failure_reason, job.status_message, "the job never ran"
    kind = ContainerTaskError
    return TaskError(
        exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
        traceback=f"{where}: {reason or job.status}: {message}".rstrip(": "),
    )
