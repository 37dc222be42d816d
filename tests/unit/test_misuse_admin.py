"""Misuse through the admin, as a superuser and as a view-only user: no secret value on any page
that does not edit it, bad input refused with a field error (never a 500), actions that explain."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from container_manager.models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost
from tests.adminforms import job_form

pytestmark = pytest.mark.django_db

SECRETS = ("hunter2", "s3cr3t-url-pw", "lic-4711", "hunter3")


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def url(model: str, view: str, *args: Any) -> str:
    return reverse(f"admin:container_manager_{model}_{view}", args=args)


def _viewer(client: Client, *codenames: str) -> User:
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return user


@pytest.fixture
def secret_job(mock_host: ExecutorHost) -> ContainerJob:
    template = EnvironmentVariableTemplate.objects.create(
        name="prod",
        environment_variables_text="DB_PASS=hunter2\nLICENSE=lic-4711\nPLAIN=visible-value",
        secret_keys="LICENSE",
    )
    return ContainerJob.objects.create(
        image="busybox",
        docker_host=mock_host,
        environment_template=template,
        override_environment="DATABASE_URL=postgres://app:s3cr3t-url-pw@db/prod\nAPI_TOKEN=hunter3\nMODE=fast",
    )


def _body(client: Client, page: str) -> str:
    response = client.get(page)
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def _no_secret(body: str) -> None:
    for secret in SECRETS:
        assert secret not in body, secret


# Finding 2: secret values on read-only pages ----------------------------------------------------


def test_a_view_only_user_sees_job_environments_masked(client: Client, secret_job: ContainerJob) -> None:
    _viewer(client, "view_containerjob")
    body = _body(client, url("containerjob", "change", secret_job.pk))
    _no_secret(body)
    assert "API_TOKEN=********" in body and "MODE=fast" in body
    assert "postgres://app:********@db/prod" in body


def test_a_view_only_user_sees_template_values_masked(client: Client, secret_job: ContainerJob) -> None:
    _viewer(client, "view_environmentvariabletemplate")
    template = secret_job.environment_template
    assert template is not None
    body = _body(client, url("environmentvariabletemplate", "change", template.pk))
    _no_secret(body)
    assert "DB_PASS=********" in body and "LICENSE=********" in body and "PLAIN=visible-value" in body


def test_read_only_job_pages_mask_for_superusers_too(admin_client: Client, secret_job: ContainerJob) -> None:
    ContainerJob.objects.filter(pk=secret_job.pk).update(status="completed", finished_at=timezone.now())
    body = _body(admin_client, url("containerjob", "change", secret_job.pk))
    _no_secret(body)
    assert "API_TOKEN=********" in body


def test_an_editor_of_a_pending_job_edits_the_real_text(
    admin_client: Client, secret_job: ContainerJob
) -> None:
    body = _body(admin_client, url("containerjob", "change", secret_job.pk))
    assert 'name="override_environment"' in body and "hunter3" in body


@pytest.mark.parametrize("who", ["superuser", "viewer"])
def test_history_delete_and_list_pages_never_show_values(
    admin_client: Client, client: Client, secret_job: ContainerJob, who: str
) -> None:
    if who == "viewer":
        _viewer(client, "view_containerjob", "view_environmentvariabletemplate")
        admin_client = client
    template = secret_job.environment_template
    assert template is not None
    pages = [
        url("containerjob", "history", secret_job.pk),
        url("containerjob", "changelist"),
        url("environmentvariabletemplate", "history", template.pk),
        url("environmentvariabletemplate", "changelist"),
    ]
    if who == "superuser":
        pages.append(url("containerjob", "delete", secret_job.pk))
    for page in pages:
        _no_secret(_body(admin_client, page))


def test_a_view_only_user_gets_no_form_to_post(client: Client, secret_job: ContainerJob) -> None:
    _viewer(client, "view_containerjob")
    response = client.post(
        url("containerjob", "change", secret_job.pk), {"image": "busybox", "override_environment": "A=1"}
    )
    assert response.status_code == 403
    assert ContainerJob.objects.get(pk=secret_job.pk).override_environment.startswith("DATABASE_URL")


# Finding 8: re-run when the host is now inactive -------------------------------------------------


@pytest.mark.parametrize("who", ["superuser", "rerunner"])
def test_rerun_of_a_job_whose_host_is_inactive_explains_instead_of_500(
    admin_client: Client, client: Client, mock_host: ExecutorHost, who: str
) -> None:
    job = ContainerJob.objects.create(image="busybox", docker_host=mock_host)
    ContainerJob.objects.filter(pk=job.pk).update(status="failed", finished_at=timezone.now())
    ExecutorHost.objects.filter(pk=mock_host.pk).update(is_active=False)
    if who == "rerunner":
        _viewer(client, "view_containerjob", "rerun_containerjob")
        admin_client = client
    response = admin_client.post(
        url("containerjob", "changelist"),
        {"action": "rerun_jobs", "_selected_action": [str(job.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert f"job {job.pk}: docker_host" in body and "is not active" in body
    assert ContainerJob.objects.count() == 1


# Finding 9: bad input in the add forms -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cpu_limit": "nan"}, "cpu_limit"),
        ({"cpu_limit": "inf"}, "cpu_limit"),
        ({"memory_limit": "1e400"}, "memory_limit"),
        ({"memory_limit": "5"}, "memory_limit"),
        ({"retry_backoff_seconds": "1e12"}, "retry_backoff_seconds"),
        ({"retry_backoff_max_seconds": "Infinity"}, "retry_backoff_max_seconds"),
        ({"priority": "99999999999999999999"}, "priority"),
        ({"max_retries": "-1"}, "max_retries"),
        ({"image": "busybox:ταγ"}, "image"),
        ({"override_environment": "A=1\nA=2"}, "override_environment"),
        ({"override_environment": "BIG=" + "x" * 140_000}, "override_environment"),
        ({"secret_keys": "NOT_THERE"}, "secret_keys"),
        ({"run_after_0": "2024-13-45", "run_after_1": "10:00"}, "run_after"),
    ],
    ids=repr,
)
def test_bad_job_input_is_a_field_error(admin_client: Client, fields: dict[str, str], field: str) -> None:
    response = admin_client.post(url("containerjob", "add"), job_form(**fields))
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert ContainerJob.objects.count() == 0


def _host_form(**fields: Any) -> dict[str, Any]:
    data = {
        "name": "h",
        "executor_type": "docker",
        "connection_string": "",
        "executor_config": "{}",
        "is_active": "on",
        "max_concurrent_jobs": "10",
        "description": "",
    }
    data.update(fields)
    return data


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"executor_config": '{"network": "host"}'}, "executor_config"),
        ({"executor_config": '{"bogus": 1}'}, "executor_config"),
        ({"executor_config": '{"api_timeout": NaN}'}, "executor_config"),
        (
            {"executor_config": '{"tls_ca_cert": "env:DATABASE_URL"}', "connection_string": "tcp://h:1"},
            "executor_config",
        ),
        ({"executor_config": "[1, 2]"}, "executor_config"),
        ({"max_concurrent_jobs": "1000"}, "max_concurrent_jobs"),
        ({"connection_string": "tcp://"}, "connection_string"),
    ],
    ids=repr,
)
def test_bad_host_input_is_a_field_error(admin_client: Client, fields: dict[str, str], field: str) -> None:
    response = admin_client.post(url("executorhost", "add"), _host_form(**fields))
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not ExecutorHost.objects.exists()


def test_health_messages_in_the_admin_never_quote_the_environment(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.CONTAINER_MANAGER = {"CONFIG_ENV_ALLOWLIST": ["DOCKER_CERT_FILE"]}
    monkeypatch.setenv("DOCKER_CERT_FILE", "postgres://app:s3cr3t-url-pw@db/prod")
    host = ExecutorHost.objects.create(
        name="remote",
        executor_type="docker",
        connection_string="tcp://127.0.0.1:9",
        executor_config={"tls_ca_cert": "env:DOCKER_CERT_FILE"},
    )
    response = admin_client.post(
        url("executorhost", "changelist"),
        {"action": "run_health_check", "_selected_action": [str(host.pk)]},
        follow=True,
    )
    body = response.content.decode()
    assert "DOCKER_CERT_FILE" in body
    _no_secret(body)
    _no_secret(_body(admin_client, url("executorhost", "change", host.pk)))
