"""The Django admin: pages render, user text is escaped, secrets stay hidden, actions need permissions."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from container_manager.models import (
    ContainerExecution,
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    JobEvent,
)
from tests.adminforms import job_form

pytestmark = pytest.mark.django_db

XSS = "<script>alert(1)</script>"


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    """admin_client and _staff() hash a password per test: use a cheap hasher."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def url(model: str, view: str, *args: Any) -> str:
    return reverse(f"admin:container_manager_{model}_{view}", args=args)


def _job(**kwargs: Any) -> ContainerJob:
    values: dict[str, Any] = {"image": "busybox", "command": "true"}
    values.update(kwargs)
    return ContainerJob.objects.create(**values)


def _finished(job: ContainerJob, status: str = "completed") -> ContainerJob:
    ContainerJob.objects.filter(pk=job.pk).update(status=status, finished_at=timezone.now())
    job.refresh_from_db()
    return job


def _staff(client: Client, *codenames: str) -> User:
    user = User.objects.create_user("staff", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return user


@pytest.fixture
def world(mock_host: ExecutorHost) -> dict[str, Any]:
    template = EnvironmentVariableTemplate.objects.create(
        name="prod-env", environment_variables_text="SECRET_TOKEN=hunter2\nLOG_LEVEL=verbose-value"
    )
    job = _job(name="first-job", environment_template=template, docker_host=mock_host)
    execution = ContainerExecution.objects.create(
        job=job, attempt=1, executor_host=mock_host, host_name="mock-1", container_name="cm-t-1-1"
    )
    return {"host": mock_host, "template": template, "job": job, "execution": execution}


# Pages render -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["containerjob", "executorhost", "environmentvariabletemplate", "containerexecution"]
)
def test_changelists_render(admin_client: Client, world: dict[str, Any], model: str) -> None:
    assert admin_client.get(url(model, "changelist")).status_code == 200


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("containerjob", "job"),
        ("executorhost", "host"),
        ("environmentvariabletemplate", "template"),
        ("containerexecution", "execution"),
    ],
)
def test_change_pages_render(admin_client: Client, world: dict[str, Any], model: str, key: str) -> None:
    assert admin_client.get(url(model, "change", world[key].pk)).status_code == 200


@pytest.mark.parametrize("model", ["containerjob", "executorhost", "environmentvariabletemplate"])
def test_add_pages_render(admin_client: Client, model: str) -> None:
    assert admin_client.get(url(model, "add")).status_code == 200


def test_job_page_shows_attempts_and_history(admin_client: Client, world: dict[str, Any]) -> None:
    JobEvent.objects.create(job=world["job"], actor="daemon:x", message="note-for-history")
    body = admin_client.get(url("containerjob", "change", world["job"].pk)).content.decode()
    assert "cm-t-1-1" in body and "note-for-history" in body


# Search and filters -------------------------------------------------------------------------


def test_search_and_filters(admin_client: Client) -> None:
    needle = _job(name="needle-job", image="ghcr.io/org/needle:1")
    hay = _finished(_job(name="hay-job"), "failed")
    changelist = url("containerjob", "changelist")

    def shown(query: dict[str, Any]) -> set[int]:
        response = admin_client.get(changelist, query)
        assert response.status_code == 200
        return {row.pk for row in response.context["cl"].result_list}

    assert shown({"q": "needle"}) == {needle.pk}
    assert shown({"q": "org/needle"}) == {needle.pk}
    assert shown({"q": str(hay.pk)}) == {hay.pk}
    assert shown({"status__exact": "failed"}) == {hay.pk}
    assert shown({"status__exact": "pending"}) == {needle.pk}
    assert shown({"q": "nothing-matches"}) == set()


def test_host_and_execution_filters(admin_client: Client, world: dict[str, Any]) -> None:
    ExecutorHost.objects.create(name="dock", executor_type="docker")
    response = admin_client.get(url("executorhost", "changelist"), {"executor_type__exact": "mock"})
    assert [h.name for h in response.context["cl"].result_list] == ["mock-1"]
    response = admin_client.get(url("containerexecution", "changelist"), {"q": "cm-t-1-1"})
    assert [e.pk for e in response.context["cl"].result_list] == [world["execution"].pk]


# Escaping and secrets -----------------------------------------------------------------------


def test_user_text_is_escaped(admin_client: Client) -> None:
    job = _job(name=XSS, command=f"echo '{XSS}'")
    for page in (url("containerjob", "changelist"), url("containerjob", "change", job.pk)):
        body = admin_client.get(page).content.decode()
        assert XSS not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_escaped_in_read_only_pages_too(admin_client: Client) -> None:
    job = _finished(_job(name=XSS))
    ContainerJob.objects.filter(pk=job.pk).update(status_message=XSS)
    body = admin_client.get(url("containerjob", "change", job.pk)).content.decode()
    assert XSS not in body


def test_template_list_never_shows_values(admin_client: Client, world: dict[str, Any]) -> None:
    body = admin_client.get(url("environmentvariabletemplate", "changelist")).content.decode()
    assert "SECRET_TOKEN" in body and "LOG_LEVEL" in body
    assert "hunter2" not in body and "verbose-value" not in body


def test_job_list_never_shows_environment_values(admin_client: Client, world: dict[str, Any]) -> None:
    _job(override_environment="API_KEY=hunter3")
    body = admin_client.get(url("containerjob", "changelist")).content.decode()
    assert "hunter2" not in body and "hunter3" not in body


# Executions are machine-owned ---------------------------------------------------------------


def test_executions_are_read_only(admin_client: Client, world: dict[str, Any]) -> None:
    execution = world["execution"]
    assert admin_client.get(url("containerexecution", "add")).status_code == 403
    response = admin_client.post(
        url("containerexecution", "change", execution.pk), {"status": "completed", "exit_code": "0"}
    )
    assert response.status_code == 403
    assert (
        admin_client.post(url("containerexecution", "delete", execution.pk), {"post": "yes"}).status_code
        == 403
    )
    execution.refresh_from_db()
    assert (execution.status, execution.exit_code) == ("launching", None)
    body = admin_client.get(url("containerexecution", "change", execution.pk)).content.decode()
    assert 'name="status"' not in body and 'name="_save"' not in body


# Actions ------------------------------------------------------------------------------------


def _actions(client: Client, model: str) -> set[str]:
    response = client.get(url(model, "changelist"))
    assert response.status_code == 200
    form = response.context["action_form"]
    return {name for name, _ in form.fields["action"].choices if name} if form else set()


def _run_action(client: Client, model: str, action: str, *pks: int) -> Any:
    return client.post(
        url(model, "changelist"), {"action": action, "_selected_action": [str(pk) for pk in pks]}, follow=True
    )


def test_cancel_needs_its_permission(client: Client) -> None:
    job = _job()
    _staff(client, "view_containerjob", "change_containerjob")
    assert "cancel_jobs" not in _actions(client, "containerjob")
    _run_action(client, "containerjob", "cancel_jobs", job.pk)
    assert ContainerJob.objects.get(pk=job.pk).status == "pending"


def test_cancel_with_permission(client: Client) -> None:
    job, done = _job(), _finished(_job())
    _staff(client, "view_containerjob", "cancel_containerjob")
    assert "cancel_jobs" in _actions(client, "containerjob")
    response = _run_action(client, "containerjob", "cancel_jobs", job.pk, done.pk)
    assert "Cancellation requested for 1 job(s); 1 already finished." in response.content.decode()
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert job.events.get().actor == "admin:staff"


def test_rerun_needs_its_permission(client: Client) -> None:
    done = _finished(_job(), "failed")
    _staff(client, "view_containerjob", "change_containerjob")
    assert "rerun_jobs" not in _actions(client, "containerjob")
    _run_action(client, "containerjob", "rerun_jobs", done.pk)
    assert ContainerJob.objects.count() == 1


def test_rerun_with_permission(client: Client) -> None:
    done, running = _finished(_job(), "failed"), _job()
    ContainerJob.objects.filter(pk=running.pk).update(status="running")
    _staff(client, "view_containerjob", "rerun_containerjob")
    response = _run_action(client, "containerjob", "rerun_jobs", done.pk, running.pk)
    new = ContainerJob.objects.get(rerun_of=done)
    assert (new.status, new.created_by) == ("pending", "admin:staff")
    assert not ContainerJob.objects.filter(rerun_of=running).exists()
    assert f"Not finished yet, not re-run: {running.pk}" in response.content.decode()


def test_health_check_needs_its_permission(client: Client, mock_host: ExecutorHost) -> None:
    _staff(client, "view_executorhost", "change_executorhost")
    assert "run_health_check" not in _actions(client, "executorhost")
    _run_action(client, "executorhost", "run_health_check", mock_host.pk)
    assert ExecutorHost.objects.get(pk=mock_host.pk).last_health_check is None


def test_health_check_with_permission(client: Client, mock_host: ExecutorHost) -> None:
    down = ExecutorHost.objects.create(name="down", executor_type="mock", executor_config={"healthy": False})
    _staff(client, "view_executorhost", "check_executorhost")
    response = _run_action(client, "executorhost", "run_health_check", mock_host.pk, down.pk)
    body = response.content.decode().lower()  # messages are shown capitalised
    assert "mock-1: healthy" in body and "down: unhealthy" in body
    assert ExecutorHost.objects.get(pk=mock_host.pk).health_status == "healthy"
    assert ExecutorHost.objects.get(pk=down.pk).health_status == "unhealthy"


def test_view_only_user_cannot_change_a_job(client: Client) -> None:
    job = _job(name="keep")
    _staff(client, "view_containerjob")
    assert client.get(url("containerjob", "change", job.pk)).status_code == 200
    response = client.post(url("containerjob", "change", job.pk), {"name": "changed", "image": "busybox"})
    assert response.status_code == 403
    assert ContainerJob.objects.get(pk=job.pk).name == "keep"


# Add and edit forms -------------------------------------------------------------------------


def test_add_job_through_the_admin(admin_client: Client, mock_host: ExecutorHost) -> None:
    response = admin_client.post(
        url("containerjob", "add"), job_form(name="via-admin", docker_host=str(mock_host.pk))
    )
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    job = ContainerJob.objects.get()
    assert (job.name, job.status, job.created_by, job.memory_limit) == (
        "via-admin",
        "pending",
        "admin:admin",
        512,
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"image": "Not A Valid Image"}, "image"),
        ({"memory_limit": "99999"}, "memory_limit"),
        ({"command": "echo 'unbalanced"}, "command"),
        ({"retry_on": "bogus"}, "retry_on"),
        ({"override_environment": "NOT A PAIR"}, "override_environment"),
    ],
)
def test_invalid_add_shows_the_field_error_and_creates_nothing(
    admin_client: Client, fields: dict[str, str], field: str
) -> None:
    response = admin_client.post(url("containerjob", "add"), job_form(**fields))
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert field in form.errors
    assert 'class="errorlist' in response.content.decode()
    assert ContainerJob.objects.count() == 0


def test_status_is_not_a_form_field(admin_client: Client) -> None:
    job = _job(name="a")
    response = admin_client.post(
        url("containerjob", "change", job.pk), job_form(name="b", status="completed", attempts="9")
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert (job.name, job.status, job.attempts) == ("b", "pending", 0)


def test_running_job_is_read_only_in_the_admin(admin_client: Client) -> None:
    job = _job(name="running-job", memory_limit=256)
    ContainerJob.objects.filter(pk=job.pk).update(status="running", attempts=1)
    page = admin_client.get(url("containerjob", "change", job.pk)).content.decode()
    assert 'name="image"' not in page and 'name="memory_limit"' not in page
    before = ContainerJob.objects.filter(pk=job.pk).values().get()
    response = admin_client.post(
        url("containerjob", "change", job.pk),
        job_form(name="hijacked", image="evil", memory_limit="1024", status="completed"),
        follow=True,
    )
    assert response.status_code == 200
    assert "only pending jobs can be edited" in response.content.decode()
    after = ContainerJob.objects.filter(pk=job.pk).values().get()
    assert after == before


def test_job_claimed_while_the_form_was_open_is_not_overwritten(admin_client: Client) -> None:
    job = _job(name="a")
    assert admin_client.get(url("containerjob", "change", job.pk)).status_code == 200
    # The daemon claims it before the admin presses save.
    ContainerJob.objects.filter(pk=job.pk).update(status="launching", attempts=1)
    admin_client.post(url("containerjob", "change", job.pk), job_form(name="b"))
    job.refresh_from_db()
    assert (job.name, job.status, job.attempts) == ("a", "launching", 1)
