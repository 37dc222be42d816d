"""The admin as people use it: the job page's Outcome and bounded output, its live endpoint,
Cancel / Re-run buttons behind their permissions, list columns, hosts' capacity and health
button, and static files served with DEBUG off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from container_manager.admin.display import age, human_duration, status_badge, tail_on_line
from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost
from tests.adminforms import admin_url, log_in_with

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


url = admin_url


def _staff(client: Client, *codenames: str) -> User:
    return log_in_with(client, "staff", *codenames)


def _finished_job(
    host: ExecutorHost, stdout: str = "", status: str = "failed", **execution: Any
) -> ContainerJob:
    job = ContainerJob.objects.create(image="busybox", command="x", docker_host=host)
    now = timezone.now()
    ContainerJob.objects.filter(pk=job.pk).update(
        status=status,
        exit_code=3,
        failure_reason="exit_code" if status == "failed" else "",
        status_message="exited with 3",
        attempts=1,
        started_at=now - timedelta(seconds=75),
        finished_at=now,
    )
    ContainerExecution.objects.create(
        job=job,
        attempt=1,
        executor_host=host,
        host_name=host.name,
        container_name=f"cm-p-{job.pk}-1",
        status=status,
        exit_code=3,
        stdout=stdout,
        started_at=now - timedelta(seconds=75),
        finished_at=now,
        **execution,
    )
    job.refresh_from_db()
    return job


# Pure display helpers ---------------------------------------------------------------------------


def test_tail_is_cut_on_a_line_boundary_and_says_what_was_dropped() -> None:
    text = "".join(f"line {i:05d}\n" for i in range(10_000))  # 110,000 bytes
    shown = tail_on_line(text, max_bytes=1000)
    assert shown.text.startswith("line ") and shown.text.endswith("line 09999\n")
    assert len(shown.text.encode()) <= 1000
    assert shown.dropped_bytes == len(text) - len(shown.text)
    assert shown.banner.startswith(f"first {shown.dropped_bytes // 1024} KiB dropped")
    assert tail_on_line("short\n", 1000).banner == ""


def test_a_tail_without_newlines_is_cut_on_a_character_boundary() -> None:
    shown = tail_on_line("é" * 1000, max_bytes=101)
    assert shown.text == "é" * 50 and shown.dropped_bytes == 2000 - 100


def test_output_cut_by_the_recorder_says_so() -> None:
    assert "not kept" in tail_on_line("tail\n", cut_before=True).banner


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5, "5 s ago"),
        (125, "2 min ago"),
        (3 * 3600 + 300, "3 h 5 min ago"),
        (2 * 86400, "2 d ago"),
        (-9, "in 9 s"),
    ],
)
def test_age(seconds: int, text: str) -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert age(now - timedelta(seconds=seconds), now) == text


def test_durations_read_like_durations() -> None:
    assert human_duration(None) == ""
    assert human_duration(timedelta(milliseconds=250)) == "250 ms"
    assert human_duration(timedelta(seconds=75)) == "1 min 15 s"
    assert human_duration(timedelta(hours=2, minutes=4)) == "2 h 04 min"


def test_badges_use_theme_classes_not_fixed_colours() -> None:
    badge = status_badge("running")
    assert 'class="cm-badge cm-live"' in badge and 'data-terminal="false"' in badge
    assert "color:" not in badge and 'data-terminal="true"' in status_badge("failed")


# The job page ------------------------------------------------------------------------------------


def test_job_page_opens_with_the_outcome_then_output_then_spec(
    admin_client: Client, mock_host: ExecutorHost
) -> None:
    job = _finished_job(mock_host, stdout="hello from the job\n")
    body = admin_client.get(url("containerjob", "change", job.pk)).content.decode()
    outcome, output, spec = body.index(">Outcome<"), body.index("Output of attempt 1"), body.index(">Spec<")
    assert outcome < output < spec
    block = body[outcome:spec]
    assert "exited with 3" in block and "Exit Code" in block and "mock-1" in block
    assert "1 min 15 s" in block and "UTC" in block and "ago)" in block
    assert '<pre class="cm-output" data-stream="stdout">hello from the job\n</pre>' in block


def test_long_output_is_bounded_with_a_banner(admin_client: Client, mock_host: ExecutorHost) -> None:
    stdout = "".join(f"row {i:06d}\n" for i in range(6000))  # 66,000 bytes
    job = _finished_job(mock_host, stdout=stdout, stdout_truncated=True)
    body = admin_client.get(url("containerjob", "change", job.pk)).content.decode()
    assert "row 005999" in body and "row 000000" not in body
    assert "KiB dropped; showing the last" in body and "earlier output was not kept" in body
    shown = body.split('data-stream="stdout">', 1)[1].split("</pre>", 1)[0]
    assert shown.startswith("row ") and len(shown) <= 32 * 1024


def test_live_endpoint_redraws_the_outcome(admin_client: Client, mock_host: ExecutorHost) -> None:
    job = ContainerJob.objects.create(
        image="busybox", command="sh -c 'echo live-line; sleep 30'", docker_host=mock_host
    )
    data = admin_client.get(url("containerjob", "live", job.pk)).json()
    assert (data["status"], data["terminal"]) == ("pending", False)
    assert job.launch() == "running"
    data = admin_client.get(url("containerjob", "live", job.pk)).json()
    assert data["status"] == "running" and "live-line" in data["html"] and "(live" in data["html"]
    job.cancel()
    job.get_status()
    data = admin_client.get(url("containerjob", "live", job.pk)).json()
    assert (data["status"], data["terminal"]) == ("cancelled", True)


def test_live_endpoint_needs_view_permission(client: Client, mock_host: ExecutorHost) -> None:
    job = ContainerJob.objects.create(image="busybox", docker_host=mock_host)
    _staff(client, "view_executorhost")
    assert client.get(url("containerjob", "live", job.pk)).status_code == 403
    assert client.get(url("containerjob", "live", 999999)).status_code in (403, 404)


def test_failure_reason_is_blank_not_none_and_ran_on_is_listed(
    admin_client: Client, mock_host: ExecutorHost
) -> None:
    _finished_job(mock_host, status="completed")
    body = admin_client.get(url("containerjob", "changelist")).content.decode()
    start = body.index('id="result_list"')
    rows = body[start : body.index("</table>", start)]
    assert '<td class="field-reason">-</td>' in rows and "None" not in rows  # the admin's blank
    assert '<td class="field-ran_on">mock-1</td>' in body
    assert "Auto-refresh" in body and "container_manager/admin.js" in body


@pytest.mark.parametrize("button", ["cancel", "rerun"])
def test_buttons_need_their_permission(client: Client, mock_host: ExecutorHost, button: str) -> None:
    if button == "rerun":
        job = _finished_job(mock_host)
    else:
        job = ContainerJob.objects.create(image="busybox", docker_host=mock_host)
    _staff(client, "view_containerjob", "change_containerjob")
    page = client.get(url("containerjob", "change", job.pk)).content.decode()
    assert f'form="cm-{button}-form"' not in page
    assert client.post(url("containerjob", button, job.pk)).status_code == 403
    job.refresh_from_db()
    assert job.status in ("pending", "failed") and ContainerJob.objects.count() == 1


def test_cancel_button_cancels(client: Client, mock_host: ExecutorHost) -> None:
    job = ContainerJob.objects.create(image="busybox", docker_host=mock_host)
    _staff(client, "view_containerjob", "cancel_containerjob")
    page = client.get(url("containerjob", "change", job.pk)).content.decode()
    assert 'form="cm-cancel-form"' in page and 'form="cm-rerun-form"' not in page
    assert client.get(url("containerjob", "cancel", job.pk)).status_code == 405  # POST only
    response = client.post(url("containerjob", "cancel", job.pk), follow=True)
    assert f"Cancellation requested for job {job.pk}." in response.content.decode()
    job.refresh_from_db()
    assert job.status == "cancelled" and job.events.get().actor == "admin:staff"


def test_rerun_button_creates_a_job_and_opens_it(client: Client, mock_host: ExecutorHost) -> None:
    done = _finished_job(mock_host)
    _staff(client, "view_containerjob", "rerun_containerjob")
    response = client.post(url("containerjob", "rerun", done.pk))
    new = ContainerJob.objects.get(rerun_of=done)
    assert response.status_code == 302 and response["Location"] == url("containerjob", "change", new.pk)
    running = ContainerJob.objects.create(image="busybox", docker_host=mock_host)
    response = client.post(url("containerjob", "rerun", running.pk), follow=True)
    assert "only finished jobs can be re-run" in response.content.decode()
    assert not ContainerJob.objects.filter(rerun_of=running).exists()


def test_attempt_page_shows_output_bounded_in_monospace(
    admin_client: Client, mock_host: ExecutorHost
) -> None:
    job = _finished_job(mock_host, stdout="x" * 40_000 + "\nlast line\n")
    execution = job.executions.get()
    body = admin_client.get(url("containerexecution", "change", execution.pk)).content.decode()
    assert '<pre class="cm-output" data-stream="stdout">last line\n</pre>' in body
    assert "KiB dropped" in body


# Hosts ------------------------------------------------------------------------------------------------


def test_host_page_shows_capacity_live_jobs_and_a_health_button(
    client: Client, mock_host: ExecutorHost
) -> None:
    job = ContainerJob.objects.create(
        image="busybox", command="sleep 60", docker_host=mock_host, name="long-one"
    )
    assert job.launch() == "running"
    _staff(client, "view_executorhost", "check_executorhost")
    body = client.get(url("executorhost", "change", mock_host.pk)).content.decode()
    assert 'aria-valuenow="1"' in body and "1/10" in body
    assert "Live jobs on this host (1)" in body and f"job {job.pk} (long-one)" in body
    assert 'id="cm-health-check"' in body
    response = client.post(url("executorhost", "health_check", mock_host.pk), follow=True)
    assert "mock-1: healthy" in response.content.decode().lower()  # messages are capitalised
    assert ExecutorHost.objects.get(pk=mock_host.pk).health_status == "healthy"
    listing = client.get(url("executorhost", "changelist")).content.decode()
    assert 'class="cm-bar"' in listing and "1/10" in listing


def test_health_button_needs_its_permission(client: Client, mock_host: ExecutorHost) -> None:
    _staff(client, "view_executorhost", "change_executorhost")
    assert (
        'id="cm-health-check"' not in client.get(url("executorhost", "change", mock_host.pk)).content.decode()
    )
    assert client.post(url("executorhost", "health_check", mock_host.pk)).status_code == 403
    assert ExecutorHost.objects.get(pk=mock_host.pk).last_health_check is None


# Static files --------------------------------------------------------------------------------------


def test_static_files_are_served_with_debug_off(client: Client, settings: Any) -> None:
    assert settings.DEBUG is False
    for path in ("/static/admin/css/base.css", "/static/container_manager/admin.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert b"".join(response.streaming_content)  # type: ignore[attr-defined]
