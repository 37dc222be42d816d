"""What the sub-commands share: argument types, output, job lookup, how jobs end in exit codes."""

from __future__ import annotations

import json
import re
import sys
from argparse import ArgumentTypeError
from datetime import timedelta
from typing import Any, TextIO

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from container_manager.humanize import human_duration
from container_manager.states import JobStatus, Reason

_DURATION_RE = re.compile(r"\A(\d+)([smhdw])\Z", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The largest id a job row can have (a 64-bit primary key).
MAX_JOB_ID = 2**63 - 1

#: Exit codes of ``wait`` and ``submit --wait`` for jobs that did not end with an exit code of
#: their own (a job that exited non-zero gives its own code, 1-255).
EXIT_WAIT_TIMEOUT = 123
EXIT_JOB_TIMEOUT = 124
EXIT_NO_EXIT_CODE = 125
EXIT_CANCELLED = 130
EXIT_CODES_HELP = (
    "exit codes: 0 when every job completed; otherwise that of the first job (in the order "
    "given) that did not: its own exit code when it exited non-zero (137 when killed for memory), "
    f"{EXIT_JOB_TIMEOUT} when it timed out, {EXIT_CANCELLED} when it was cancelled, "
    f"{EXIT_NO_EXIT_CODE} when it failed without an exit code (lost, launch error, invalid); "
    f"{EXIT_WAIT_TIMEOUT} when the wait itself timed out (the jobs go on)."
)


def positive_int(value: str) -> int:
    from container_manager.management.commands.process_jobs import positive_int as checked

    return checked(value)


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return number


def duration(value: str) -> timedelta:
    match = _DURATION_RE.match(value.strip())
    if not match:
        raise ArgumentTypeError(f"expected a duration like 30d, 12h, 90m or 45s, got {value!r}")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def job_id(value: str) -> int:
    try:
        if not value.strip().isascii():
            raise ValueError(value)
        number = int(value)
    except ValueError:
        raise ArgumentTypeError(f"a job id is a number, got {value!r}") from None
    if number < 1:
        raise ArgumentTypeError(f"a job id is positive, got {number}")
    if number > MAX_JOB_ID:
        raise ArgumentTypeError(f"no job has an id that large ({value[:30]})")
    return number


def format_errors(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
    return "; ".join(exc.messages)


class Output:
    """Where a sub-command writes: stdout for results, stderr for progress and summaries."""

    def __init__(self, stdout: Any, stderr: Any, tty: TextIO | None = None) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self._tty = tty if tty is not None else sys.stderr

    @property
    def interactive(self) -> bool:
        return self._tty.isatty()

    @property
    def on_terminal(self) -> bool:
        """stdout is a terminal (``list --watch`` then redraws the screen in place)."""
        isatty = getattr(self.stdout, "isatty", None)
        return bool(isatty and isatty())

    def line(self, text: str = "") -> None:
        self.stdout.write(text)

    def note(self, text: str) -> None:
        self.stderr.write(text)

    def emit_json(self, data: Any) -> None:
        self.stdout.write(json.dumps(data, indent=2, default=str))

    def progress(self, done: int, total: int, label: str) -> None:
        """``label: 40/100 (40%)`` on one line of a terminal; nothing when stderr is not one."""
        if total and self.interactive:
            self._tty.write(f"\r{label}: {done}/{total} ({100 * done // total}%)")
            if done >= total:
                self._tty.write("\n")
            self._tty.flush()


def get_job(pk: int) -> Any:
    from container_manager.models import ContainerJob

    try:
        return ContainerJob.objects.select_related("docker_host", "schedule", "array").get(pk=pk)
    except ContainerJob.DoesNotExist:
        raise CommandError(f"no job with id {pk}") from None


def existing_jobs(pks: list[int]) -> list[Any]:
    """Every job named, in the order given; refuses (naming them all) if any does not exist."""
    from container_manager.models import ContainerJob

    found = ContainerJob.objects.select_related("docker_host").in_bulk(pks)
    missing = [str(pk) for pk in dict.fromkeys(pks) if pk not in found]
    if missing:
        raise CommandError(f"no job with id {', '.join(missing)}; nothing was done")
    return [found[pk] for pk in dict.fromkeys(pks)]


def job_dict(job: Any) -> dict[str, Any]:
    from container_manager.management.jobcli.workflow import workflow_fields  # it imports this module

    return {
        "id": job.pk,
        "name": job.name,
        "image": job.image,
        "command": job.command,
        "status": job.status,
        "host": job.docker_host.name if job.docker_host else None,
        "attempts": job.attempts,
        "max_retries": job.max_retries,
        "exit_code": job.exit_code,
        "failure_reason": job.failure_reason,
        "memory_limit": job.memory_limit,
        "cpu_limit": job.cpu_limit,
        "timeout_seconds": job.timeout_seconds,
        "priority": job.priority,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "rerun_of": job.rerun_of_id,
        **workflow_fields(job),
    }


def exit_code_of(job: Any) -> int:
    """The process exit code that stands for a finished job (see ``EXIT_CODES_HELP``)."""
    if job.status == JobStatus.COMPLETED:
        return 0
    if job.status == JobStatus.CANCELLED:
        return EXIT_CANCELLED
    if job.status == JobStatus.TIMEOUT or job.failure_reason == Reason.TIMEOUT:
        return EXIT_JOB_TIMEOUT
    if job.exit_code:
        return max(1, min(255, int(job.exit_code)))
    return EXIT_NO_EXIT_CODE


def ended(job: Any) -> str:
    """``job 7 failed (exit 3, exit_code) after 2 attempts in 1 min 04 s``."""
    detail = [f"exit {job.exit_code}"] if job.exit_code is not None else []
    if job.failure_reason:
        detail.append(job.failure_reason)
    took = human_duration(job.runtime_duration)
    text = f"job {job.pk} {job.status}"
    if detail:
        text += f" ({', '.join(detail)})"
    if job.attempts > 1:
        text += f" after {job.attempts} attempts"
    return text + (f" in {took}" if took else "")
