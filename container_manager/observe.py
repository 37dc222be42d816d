"""What a job's containers say right now: output, resource use, container details. Read-only.

These read the executor directly (never through the reconciler's step: they change nothing) and
fall back to what the attempt recorded when the container is gone or its host cannot be reached.
The model methods ``job.get_logs()``, ``job.resource_utilization``,
``execution.get_container_info()`` and ``execution.stream_logs()`` are built on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from container_manager.conf import get_policy
from executors.exceptions import ExecutorError

if TYPE_CHECKING:
    from container_manager.models import ContainerExecution, ContainerJob


def _live_executor(execution: ContainerExecution) -> Any:
    if not execution.is_live or execution.executor_host is None:
        return None
    try:
        return execution.executor_host.get_executor()
    except ExecutorError:
        return None


def job_logs(job: ContainerJob, stream: str = "all", tail: int | None = None) -> str:
    if stream not in ("all", "stdout", "stderr"):
        raise ValueError("stream must be 'all', 'stdout' or 'stderr'")
    execution = job.latest_execution
    if execution is None:
        return ""
    stdout, stderr = execution.stdout, execution.stderr
    executor = _live_executor(execution)
    if executor is not None:
        try:
            live = executor.logs(execution.container_name, get_policy().log_tail_bytes)
            stdout, stderr = live.stdout, live.stderr
        except ExecutorError:
            pass
    text = {"all": stdout + stderr, "stdout": stdout, "stderr": stderr}[stream]
    if tail is not None:
        text = "\n".join(text.splitlines()[-tail:]) + ("\n" if text.endswith("\n") and tail else "")
    return text


def resource_utilization(job: ContainerJob) -> dict[str, Any]:
    """``memory_percent`` and ``cpu_percent`` (plus raw figures) for the job's latest attempt."""
    limit = (job.memory_limit or 0) * 1024 * 1024
    result: dict[str, Any] = {
        "memory_bytes": None,
        "memory_limit_bytes": limit or None,
        "memory_percent": None,
        "cpu_percent": None,
        "cpu_limit": job.cpu_limit,
        "source": "none",
    }
    execution = job.latest_execution
    if execution is None:
        return result
    executor = _live_executor(execution)
    if executor is not None and executor.supports_stats:
        try:
            usage = executor.stats(execution.container_name)
        except (ExecutorError, NotImplementedError):
            usage = None
        if usage is not None:
            result.update(
                memory_bytes=usage.memory_bytes,
                memory_limit_bytes=usage.memory_limit_bytes or limit or None,
                memory_percent=usage.memory_percent,
                cpu_percent=usage.cpu_percent,
                source="live",
            )
            return result
    if execution.peak_memory_bytes is not None:
        result.update(
            memory_bytes=execution.peak_memory_bytes,
            memory_percent=round(100.0 * execution.peak_memory_bytes / limit, 2) if limit else None,
            source="recorded",
        )
    if execution.cpu_seconds is not None and execution.duration:
        seconds = execution.duration.total_seconds()
        result["cpu_percent"] = round(100.0 * execution.cpu_seconds / seconds, 2) if seconds else None
        result["source"] = "recorded"
    return result


def container_info(execution: ContainerExecution) -> dict[str, Any]:
    info: dict[str, Any] = {
        "container_name": execution.container_name,
        "container_id": execution.container_id,
        "host": execution.host_name,
        "executor_type": execution.executor_type,
        "status": execution.status,
        "exit_code": execution.exit_code,
        "oom_killed": execution.oom_killed,
        "reason": execution.reason,
        "started_at": execution.started_at,
        "finished_at": execution.finished_at,
        "live": None,
    }
    executor = None
    if execution.executor_host is not None and not execution.cleaned_up:
        try:
            executor = execution.executor_host.get_executor()
        except ExecutorError:
            executor = None
    if executor is not None:
        try:
            observed = executor.inspect(execution.container_name)
            info["live"] = {
                "state": observed.state.value,
                "exit_code": observed.exit_code,
                "oom_killed": observed.oom_killed,
                "started_at": observed.started_at,
                "finished_at": observed.finished_at,
            }
        except ExecutorError as exc:
            info["live"] = {"error": str(exc)}
    return info


def stream_execution_logs(execution: ContainerExecution, follow: bool = False) -> Iterator[tuple[str, str]]:
    executor = _live_executor(execution)
    if executor is not None:
        try:
            for stream, chunk in executor.stream_logs(execution.container_name, follow=follow):
                yield stream, chunk.decode("utf-8", errors="replace")
            return
        except ExecutorError:
            execution.refresh_from_db()
    if execution.stdout:
        yield "stdout", execution.stdout
    if execution.stderr:
        yield "stderr", execution.stderr
