"""The admin of workflows: dependencies both ways, arrays, schedules with run now, pause and resume."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from container_manager.models import ContainerJob, ExecutorHost, JobDependency, JobSchedule
from tests.adminforms import job_form

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def url(model: str, view: str, *args: Any) -> str:
    return reverse(f"admin:container_manager_{model}_{view}", args=args)


def make(**kw: Any) -> ContainerJob:
    return ContainerJob.objects.create(image="busybox", command="true", **kw)


def with_dependencies(*ids: int, **fields: Any) -> dict[str, Any]:
    """The job form with one dependency row per id."""
    data = job_form(**fields)
    data["dependencies-TOTAL_FORMS"] = str(len(ids))
    for index, pk in enumerate(ids):
        data[f"dependencies-{index}-depends_on"] = str(pk)
    return data


def test_a_job_added_in_the_admin_waits_for_its_dependencies(
    admin_client: Client, mock_host: ExecutorHost
) -> None:
    first, second = make(), make()
    response = admin_client.post(
        url("containerjob", "add"), with_dependencies(first.pk, second.pk, name="after")
    )
    assert response.status_code == 302, response.context["errors"] if response.context else response
    job = ContainerJob.objects.get(name="after")
    assert set(job.depends_on.all()) == {first, second}
    page = admin_client.get(url("containerjob", "change", first.pk)).content.decode()
    assert "Dependents (jobs that wait for this one)" in page
    assert f'{url("containerjob", "change", job.pk)}">{job.pk}</a> (pending)' in page


@pytest.mark.parametrize("bad", ["987654", "self", "cycle"])
def test_a_bad_dependency_is_a_form_error_and_nothing_changes(admin_client: Client, bad: str) -> None:
    base = make(name="base")
    job = make(name="job")
    waiting = make(name="waiting", depends_on=[job])
    target = {"987654": 987654, "self": job.pk, "cycle": waiting.pk}[bad]
    edges = JobDependency.objects.count()
    response = admin_client.post(url("containerjob", "change", job.pk), with_dependencies(target, name="job"))
    assert response.status_code == 200, "the form comes back with the error"
    text = response.content.decode()
    expected = {
        "987654": "Select a valid choice",  # the form's own check of the raw id
        "self": "cannot depend on itself",
        "cycle": "make a cycle",
    }
    assert expected[bad] in text
    assert JobDependency.objects.count() == edges and not base.dependents.exists()


def test_a_started_job_shows_its_dependencies_read_only(admin_client: Client) -> None:
    first = make()
    job = make(depends_on=[first])
    ContainerJob.objects.filter(pk=job.pk).update(status="running")
    page = admin_client.get(url("containerjob", "change", job.pk)).content.decode()
    assert "depends on (this job starts only after all of these completed)" in page.lower()
    assert 'name="dependencies-0-depends_on"' not in page, "not editable once the job started"


def test_an_array_job_links_to_its_array(admin_client: Client, mock_host: ExecutorHost) -> None:
    array = ContainerJob.objects.create_array(3, parallelism=2, name="shard", image="busybox")
    job = array.jobs.get(array_index=1)  # type: ignore[attr-defined]
    page = admin_client.get(url("containerjob", "change", job.pk)).content.decode()
    assert f'index 1 of 3: <a href="{url("containerjob", "changelist")}?array__id__exact={array.pk}">' in page
    listing = admin_client.get(url("containerjob", "changelist") + f"?array__id__exact={array.pk}")
    assert listing.status_code == 200 and listing.context["cl"].result_count == 3
    assert admin_client.get(url("jobarray", "changelist")).status_code == 200
    detail = admin_client.get(url("jobarray", "change", array.pk)).content.decode()
    assert "at most 2 at once: 3 pending" in detail
    assert admin_client.get(url("jobarray", "add")).status_code == 403


def test_schedules_in_the_admin(admin_client: Client, mock_host: ExecutorHost) -> None:
    data = {
        "name": "nightly",
        "cron": "30 2 * * *",
        "timezone": "Europe/Paris",
        "enabled": "on",
        "concurrency_policy": "forbid",
        "image": "busybox",
        "command": "echo tick",
        "docker_host": str(mock_host.pk),
        "override_environment": "API_TOKEN=hunter2",
        "secret_keys": "",
        "max_retries": "0",
        "retry_backoff_seconds": "5",
        "retry_backoff_max_seconds": "300",
        "retry_on": "exit_code",
        "priority": "0",
    }
    bad = admin_client.post(url("jobschedule", "add"), {**data, "cron": "30 2 * *", "memory_limit": "999999"})
    assert bad.status_code == 200 and "cron needs five fields" in bad.content.decode()
    assert "memory_limit is in MB" in bad.content.decode() and not JobSchedule.objects.exists()
    assert admin_client.post(url("jobschedule", "add"), data).status_code == 302
    schedule = JobSchedule.objects.get()
    assert schedule.created_by == "admin:admin" and schedule.next_run_at is not None
    assert admin_client.get(url("jobschedule", "changelist")).status_code == 200

    response = admin_client.post(
        url("jobschedule", "changelist"),
        {"action": "run_now", "_selected_action": [schedule.pk]},
        follow=True,
    )
    job = ContainerJob.objects.get()
    assert f"ightly: created job {job.pk}" in response.content.decode()  # the admin capitalises messages
    assert (job.schedule, job.scheduled_for, job.created_by) == (schedule, None, "admin:admin")
    page = admin_client.get(url("containerjob", "change", job.pk)).content.decode()
    assert f'{url("jobschedule", "change", schedule.pk)}">nightly</a> (run now)' in page

    admin_client.post(
        url("jobschedule", "changelist"), {"action": "pause_schedules", "_selected_action": [schedule.pk]}
    )
    schedule.refresh_from_db()
    assert not schedule.enabled and schedule.next_run_at is None
    admin_client.post(
        url("jobschedule", "changelist"), {"action": "resume_schedules", "_selected_action": [schedule.pk]}
    )
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.next_run_at is not None


def test_a_view_only_user_sees_no_secret_of_a_schedule(client: Client, mock_host: ExecutorHost) -> None:
    schedule = JobSchedule.objects.create(
        name="s", cron="* * * * *", image="busybox", override_environment="API_TOKEN=hunter2\nMODE=fast"
    )
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_jobschedule"]))
    client.force_login(user)
    page = client.get(url("jobschedule", "change", schedule.pk)).content.decode()
    assert "hunter2" not in page and "MODE=fast" in page
    response = client.post(
        url("jobschedule", "changelist"), {"action": "run_now", "_selected_action": [schedule.pk]}
    )
    assert not ContainerJob.objects.exists(), "run now needs change_jobschedule and add_containerjob"
    assert response.status_code in (200, 302, 403)
