"""From Cloud Run's Execution and Tasks to an ``Observed``: the truth is in the Tasks API.

Pure functions, no calls. Why it reads tasks:

* An Execution's ``Completed`` condition is a human-readable message that often carries no exit
  code ("Task x-task0 failed with message: The container exited with an error.") and that
  may quote a misleading one for a task the system killed. The exit code is read from
  ``Task.last_attempt_result`` instead (``TaskAttemptResult``: ``exit_code`` "may be unset if
  the container was unable to exit cleanly", ``term_signal`` "set to non-zero if the container
  is terminated by the system"; "at most one of exit_code or term_signal will be set"), and
  success from its ``status`` ("If the status code is OK, then the attempt succeeded").
  Over JSON an ``exit_code`` of 0 is indistinguishable from an unset one, so a zero is never
  taken as success: a failed task reports ``128 + term_signal`` when killed by a signal (the
  shell's convention, as Docker reports 137 for SIGKILL), its exit code when non-zero, and
  otherwise ``exit_code=None`` with the service's message in ``error``.
* A timeout is recognised from the task's messages or from its run time reaching
  ``Task.timeout`` ("Max allowed time duration the Task may be active before the system will
  actively try to mark it failed and kill associated containers"), so it does not depend on
  the wording. Its ``started_at`` is the task's own ``start_time``: provisioning is not
  charged to the job.
* A memory-limit kill is recognised from the platform's message, "Memory limit of N MiB
  exceeded with M MiB used" (https://cloud.google.com/run/docs/configuring/jobs/memory-limits;
  the same text Cloud Run writes to ``varlog/system``), in the task's attempt status or
  conditions: a SIGKILL alone (137) is also what a timeout gives, so it is not enough.
* While an execution has no ``start_time`` it is still provisioning: ``Observed.state`` is
  ``RUNNING`` with ``started_at=None`` ("accepted, not started").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from google.cloud import run_v2

from executors.types import ContainerState, Observed

#: Exit code reported for a task killed by signal N (128 + N), as a shell and Docker do.
SIGNAL_EXIT_BASE = 128
_TIMEOUT_RE = re.compile(r"\btime(?:d)?[\s-]?out\b|\btimeout\b|deadline exceeded", re.IGNORECASE)
_OOM_RE = re.compile(r"memory limit of .{1,40} exceeded|out of memory|\bOOM\b", re.IGNORECASE)

_FAILED = run_v2.Condition.State.CONDITION_FAILED
_SUCCEEDED = run_v2.Condition.State.CONDITION_SUCCEEDED
_CANCEL_REASONS = (
    run_v2.Condition.ExecutionReason.CANCELLED,
    run_v2.Condition.ExecutionReason.CANCELLING,
)


def plain(value: Any) -> datetime | None:
    """A plain aware ``datetime`` from proto-plus's ``DatetimeWithNanoseconds`` (or None)."""
    if value is None:
        return None
    return datetime.fromtimestamp(value.timestamp(), UTC)


def _seconds(value: Any) -> float | None:
    return float(value.total_seconds()) if value is not None and hasattr(value, "total_seconds") else None


def _condition(conditions: Sequence[run_v2.Condition], kind: str) -> run_v2.Condition | None:
    for condition in conditions:
        if condition.type_ == kind:
            return condition
    return None


def execution_done(execution: run_v2.Execution) -> bool:
    if execution.completion_time is not None:
        return True
    condition = _condition(execution.conditions, "Completed")
    return condition is not None and condition.state in (_SUCCEEDED, _FAILED)


def execution_succeeded(execution: run_v2.Execution) -> bool:
    condition = _condition(execution.conditions, "Completed")
    tasks = execution.task_count or 1
    return (
        execution.failed_count == 0
        and execution.cancelled_count == 0
        and (execution.succeeded_count >= tasks or (condition is not None and condition.state == _SUCCEEDED))
    )


def execution_cancelled(execution: run_v2.Execution) -> bool:
    condition = _condition(execution.conditions, "Completed")
    reason = condition.execution_reason if condition is not None else None
    return execution.cancelled_count > 0 or reason in _CANCEL_REASONS


class TaskResult:
    """What one finished task says about itself."""

    def __init__(self, task: run_v2.Task, default_timeout: float | None) -> None:
        self.index = task.index
        self.retried = task.retried
        self.started_at = plain(task.start_time)
        self.finished_at = plain(task.completion_time)
        result = task.last_attempt_result if "last_attempt_result" in task else None
        status = result.status if result is not None and "status" in result else None
        self.signal = result.term_signal if result is not None else 0
        self.code = result.exit_code if result is not None else 0
        completed = _condition(task.conditions, "Completed")
        self.messages = [
            m for m in [status.message if status else ""] + [c.message for c in task.conditions] if m
        ]
        status_ok = status is not None and status.code == 0
        if completed is not None and completed.state in (_SUCCEEDED, _FAILED):
            self.ok: bool | None = completed.state == _SUCCEEDED and (status is None or status_ok)
        elif status is not None:
            self.ok = status_ok
        else:
            self.ok = None  # not finished, or never ran
        limit = _seconds(task.timeout) or default_timeout
        ran = (
            (self.finished_at - self.started_at).total_seconds()
            if self.started_at and self.finished_at
            else None
        )
        text = " ".join(self.messages)
        self.timed_out = bool(_TIMEOUT_RE.search(text)) or bool(limit and ran is not None and ran >= limit)
        self.oom = bool(_OOM_RE.search(text))

    @property
    def exit_code(self) -> int | None:
        """The failed attempt's exit code; None when Cloud Run gives none (never an invented 0)."""
        if self.signal:
            return SIGNAL_EXIT_BASE + self.signal
        return self.code or None

    def describe(self) -> str:
        text = "; ".join(dict.fromkeys(self.messages)) or "no message"
        retries = f" after {self.retried} retries" if self.retried else ""
        return f"task {self.index}{retries}: {text}"


def observe_execution(
    name: str,
    execution: run_v2.Execution,
    tasks: Sequence[run_v2.Task] | None,
    labels: Mapping[str, str],
) -> Observed:
    """The ``Observed`` for our container ``name`` run as ``execution`` (``tasks`` when it is done)."""
    base: dict[str, Any] = {"name": name, "container_id": execution.name, "labels": dict(labels)}
    if not execution_done(execution):
        return Observed(state=ContainerState.RUNNING, started_at=plain(execution.start_time), **base)
    default_timeout = _seconds(execution.template.timeout) if execution.template else None
    results = sorted((TaskResult(t, default_timeout) for t in tasks or ()), key=lambda r: r.index)
    starts = [r.started_at for r in results if r.started_at is not None]
    ends = [r.finished_at for r in results if r.finished_at is not None]
    exited = {
        "state": ContainerState.EXITED,
        "started_at": min(starts) if starts else plain(execution.start_time),
        "finished_at": plain(execution.completion_time) or (max(ends) if ends else None),
        **base,
    }
    condition = _condition(execution.conditions, "Completed")
    summary = condition.message if condition is not None else ""
    failed = [r for r in results if r.ok is False]
    if execution_cancelled(execution):
        codes = [r.exit_code for r in failed if r.exit_code is not None]
        return Observed(
            exit_code=codes[0] if codes else None,
            reason_hint="cancelled",
            error=summary or "the execution was cancelled",
            **exited,
        )
    if not failed and execution_succeeded(execution) and all(r.ok is not False for r in results):
        return Observed(exit_code=0, **exited)
    if not failed:
        # Failed by the execution's account, but no task says how: report no exit code.
        return Observed(
            exit_code=None,
            error=f"Cloud Run reported the execution failed without a task exit code: {summary or 'no message'}",
            **exited,
        )
    first = failed[0]
    hint = "timeout" if first.timed_out else ("oom" if first.oom else "")
    detail = first.describe()
    if first.exit_code is None:
        detail = f"failed without an exit code ({detail})"
    return Observed(
        exit_code=first.exit_code,
        oom_killed=first.oom,
        reason_hint=hint,
        error=detail if not summary or summary in detail else f"{detail} | {summary}",
        **exited,
    )
