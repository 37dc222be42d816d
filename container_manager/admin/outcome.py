"""The Outcome block and the output of a job's latest attempt, as the job page shows them.

The same fragment is rendered into the page and returned by the page's ``live/`` endpoint,
which the browser polls while the job is unfinished: the state and the output then follow
the job without a reload, and what is shown is bounded (a tail of each stream, cut on a line
boundary) however much the container writes. Live output comes from the models' read-only
methods (``job.get_logs()``), which read a bounded tail from the executor.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html

from container_manager.admin.display import human_duration, status_badge, tail_on_line, when
from container_manager.conf import get_policy
from container_manager.models import ContainerExecution, ContainerJob
from container_manager.models.choices import REASON_CHOICES

_REASON_LABELS = dict(REASON_CHOICES)
#: How often the page asks for news while the job is unfinished (milliseconds).
POLL_MILLISECONDS = 2000


def reason_label(reason: str) -> str:
    """A failure reason for people: blank when there is none (never "None")."""
    return _REASON_LABELS.get(reason, reason) if reason else ""


def attempt_output(job: ContainerJob, execution: ContainerExecution) -> list[tuple[str, Any]]:
    """(stream, Shown) for stdout and stderr of ``execution``, the job's latest attempt."""
    shown = []
    for stream in ("stdout", "stderr"):
        if execution.is_live:
            text = job.get_logs(stream=stream)
            cut = len(text.encode()) >= get_policy().log_tail_bytes
        else:
            text = getattr(execution, stream)
            cut = bool(getattr(execution, f"{stream}_truncated"))
        shown.append((stream, tail_on_line(text, cut_before=cut)))
    return shown


def outcome_rows(job: ContainerJob, execution: ContainerExecution | None) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("Status", status_badge(job.status)),
        ("Exit code", "" if job.exit_code is None else job.exit_code),
        ("Reason", reason_label(job.failure_reason)),
        ("Message", job.status_message),
        ("Duration", human_duration(job.runtime_duration)),
        ("Ran on", execution.host_name if execution else ""),
        ("Attempts", f"{job.attempts} of {job.max_retries + 1}"),
        ("Created", when(job.created_at)),
        ("Started", when(job.started_at)),
        ("Finished", when(job.finished_at)),
    ]
    if job.cancel_requested_at:
        rows.append(("Cancel requested", when(job.cancel_requested_at)))
    if job.rerun_of_id:
        link = reverse("admin:container_manager_containerjob_change", args=[job.rerun_of_id])
        rows.append(("Re-run of", format_html('<a href="{}">job {}</a>', link, job.rerun_of_id)))
    return rows


def render_outcome(request: HttpRequest, job: ContainerJob, *, can_cancel: bool, can_rerun: bool) -> str:
    """The HTML of the Outcome block, the output box and the Cancel / Re-run buttons."""
    execution = job.latest_execution
    context = {
        "job": job,
        "rows": outcome_rows(job, execution),
        "execution": execution,
        "output": attempt_output(job, execution) if execution else [],
        "show_cancel": can_cancel and not job.is_terminal_status,
        "show_rerun": can_rerun and job.is_terminal_status,
    }
    return render_to_string("container_manager/admin/job_outcome.html", context, request=request)
