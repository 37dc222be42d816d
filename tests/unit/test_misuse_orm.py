"""Misuse through the ORM: every wrong value ends as a ValidationError (or JobStateError) naming
the field, nothing is written, and no secret reaches a message."""

from __future__ import annotations

import math
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from container_manager.exceptions import JobStateError
from container_manager.models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost

pytestmark = pytest.mark.django_db


def _job(**kwargs: Any) -> ContainerJob:
    values: dict[str, Any] = {"image": "busybox", "command": "true"}
    values.update(kwargs)
    return ContainerJob.objects.create(**values)


def _refused(field: str, **kwargs: Any) -> str:
    """Create a job with ``kwargs``: it must be refused on ``field``, and nothing written."""
    before = ContainerJob.objects.count()
    with pytest.raises(ValidationError) as info:
        _job(**kwargs)
    assert field in info.value.message_dict, info.value.message_dict
    assert ContainerJob.objects.count() == before
    return " ".join(info.value.message_dict[field])


# Wrong types and non-finite numbers (finding 9) ------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("memory_limit", "abc"),
        ("memory_limit", math.inf),
        ("memory_limit", 1e400),
        ("memory_limit", math.nan),
        ("memory_limit", 10**400),
        ("memory_limit", [256]),
        ("memory_limit", {}),
        ("memory_limit", True),
        ("cpu_limit", math.nan),
        ("cpu_limit", math.inf),
        ("cpu_limit", "lots"),
        ("cpu_limit", 10**400),
        ("timeout_seconds", math.inf),
        ("timeout_seconds", 1.5),
        ("max_retries", "three"),
        ("max_retries", math.nan),
        ("max_retries", []),
        ("retry_backoff_seconds", math.nan),
        ("retry_backoff_seconds", -math.inf),
        ("retry_backoff_max_seconds", math.inf),
        ("priority", 1e400),
        ("priority", 10**30),
        ("priority", "high"),
        ("command", {"argv": ["echo"]}),
        ("command", 42),
        ("command", ["echo", 1]),
        ("command", ["echo", "a\x00b"]),
        ("image", {"name": "busybox"}),
        ("image", 3.5),
        ("name", ["a"]),
        ("name", "nul\x00byte"),
        ("name", "\ud800"),
        ("override_environment", 12),
        ("override_environment", {"1BAD": "x"}),
        ("retry_on", 5),
        ("run_after", 12345),
        ("run_after", {}),
        ("run_after", "2024-13-45T00:00:00"),
        ("docker_host_id", math.inf),
        ("docker_host_id", 10**30),
        ("docker_host_id", "abc"),
        ("environment_template_id", -1),
        ("created_by", {"who": "me"}),
    ],
    ids=repr,
)
def test_wrong_types_are_refused_naming_the_field(field: str, value: Any) -> None:
    name = field.removesuffix("_id")
    _refused(name, **{field: value})


@pytest.mark.parametrize("field", ["name", "override_environment", "created_by", "secret_keys"])
def test_none_for_a_text_field_means_its_default_not_an_integrity_error(field: str) -> None:
    job = _job(**{field: None})
    assert getattr(ContainerJob.objects.get(pk=job.pk), field) == ""


def test_none_for_defaulted_numbers_means_the_default() -> None:
    job = _job(max_retries=None, retry_backoff_seconds=None, priority=None)
    row = ContainerJob.objects.get(pk=job.pk)
    assert (row.max_retries, row.retry_backoff_seconds, row.priority) == (0, 5.0, 0)


def test_numeric_text_is_accepted_as_forms_and_json_send_it() -> None:
    job = _job(memory_limit="256", cpu_limit="0.5", priority="-3", retry_backoff_seconds="2")
    row = ContainerJob.objects.get(pk=job.pk)
    assert (row.memory_limit, row.cpu_limit, row.priority, row.retry_backoff_seconds) == (256, 0.5, -3, 2.0)


def test_convenient_types_are_normalised() -> None:
    template = EnvironmentVariableTemplate.objects.create(name="t", environment_variables_text="A=1")
    job = _job(
        command=("echo", "a b"),
        override_environment={"B": "two words", "C": 'q"uote'},
        retry_on=["oom", "lost"],
        secret_keys=["B"],
        environment_template=template,
    )
    row = ContainerJob.objects.get(pk=job.pk)
    assert row.argv == ("echo", "a b")
    assert row.get_all_environment_variables() == {"A": "1", "B": "two words", "C": 'q"uote'}
    assert (row.retry_on, row.secret_keys) == ("oom,lost", "B")


# Bounds the code can compute with (findings 4 and 10) -----------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("retry_backoff_seconds", 1e12, "between 0 and 604800"),
        ("retry_backoff_max_seconds", 1e12, "between 0 and 604800"),
        ("memory_limit", 5, "between 6 and"),
        ("memory_limit", 4, "between 6 and"),
        ("max_retries", 5000, "between 0 and 20"),
        ("priority", 32768, "between -32768 and 32767"),
        ("cpu_limit", 0.001, "between 0.01 and"),
    ],
)
def test_numbers_outside_their_bounds_are_refused(field: str, value: Any, rule: str) -> None:
    assert rule in _refused(field, **{field: value})


def test_memory_minimum_is_dockers_six_megabytes() -> None:
    assert _job(memory_limit=6).memory_limit == 6


@pytest.mark.parametrize(
    "image",
    [
        "busybox:\uff11\uff12",
        "busybox:latest٣",
        "busybox:ταγ",
        "busybox:tag\u00e9",
        "registry:\uff15000/x",
        "busybox:ok\u200b",
    ],
)
def test_image_references_are_ascii_as_docker_requires(image: str) -> None:
    _refused("image", image=image)


def test_an_environment_string_over_the_linux_limit_is_refused_naming_the_variable() -> None:
    message = _refused("override_environment", override_environment="BIG=" + "x" * (128 * 1024))
    assert "BIG" in message and "128 KiB" in message and "xxxx" not in message
    _job(override_environment="FITS=" + "x" * (128 * 1024 - 7))  # KEY=VALUE plus its NUL: 128 KiB


def test_the_whole_environment_is_bounded() -> None:
    text = "\n".join(f"V{i}={'y' * 100_000}" for i in range(12))
    message = _refused("override_environment", override_environment=text)
    assert "1024 KiB" in message


def test_environment_limits_also_apply_to_templates() -> None:
    with pytest.raises(ValidationError) as info:
        EnvironmentVariableTemplate.objects.create(
            name="big", environment_variables_text="BIG=" + "x" * (130 * 1024)
        )
    assert "BIG" in info.value.message_dict["environment_variables_text"][0]
    assert not EnvironmentVariableTemplate.objects.exists()


def test_pinned_jobs_are_checked_against_the_backend(mock_host: ExecutorHost) -> None:
    docker = ExecutorHost.objects.create(name="d", executor_type="docker", connection_string="unix:///x.sock")
    job = _job(docker_host=docker, override_environment="A=1")
    assert job.docker_host == docker


# Machine-owned fields (finding 11 and "Correctness") ------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("attempts", 3),
        ("exit_code", 0),
        ("started_at", timezone.now()),
        ("finished_at", timezone.now()),
        ("failure_reason", "oom"),
        ("status_message", "done"),
        ("cancel_requested_at", timezone.now()),
        ("status", "completed"),
        ("attempts", math.inf),
        ("exit_code", "abc"),
    ],
    ids=repr,
)
def test_machine_fields_cannot_be_set_on_insert(field: str, value: Any) -> None:
    assert "reconciler" in _refused(field, **{field: value})


def test_ids_are_given_by_the_database() -> None:
    existing = _job(name="original")
    _refused("id", id=existing.pk, name="impostor")
    assert ContainerJob.objects.get(pk=existing.pk).name == "original"
    _refused("id", id=existing.pk + 1000)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "completed"),
        ("started_at", timezone.now()),
        ("finished_at", timezone.now()),
        ("attempts", 2),
        ("exit_code", 0),
        ("failure_reason", "oom"),
        ("status_message", "hi"),
        ("cancel_requested_at", timezone.now()),
        ("created_by", "someone else"),
        ("created_at", timezone.now()),
    ],
)
def test_changing_a_machine_field_then_saving_raises_instead_of_silently_writing_nothing(
    field: str, value: Any
) -> None:
    job = ContainerJob.objects.get(pk=_job().pk)
    before = ContainerJob.objects.filter(pk=job.pk).values().get()
    setattr(job, field, value)
    with pytest.raises(JobStateError, match=field):
        job.save()
    assert ContainerJob.objects.filter(pk=job.pk).values().get() == before


def test_update_fields_naming_a_machine_field_is_refused() -> None:
    job = _job()
    with pytest.raises(JobStateError, match="status"):
        job.save(update_fields=["status"])


def test_update_fields_may_name_a_foreign_key_by_its_column(mock_host: ExecutorHost) -> None:
    job = _job()
    job.docker_host = mock_host
    job.save(update_fields=["docker_host_id"])
    assert ContainerJob.objects.get(pk=job.pk).docker_host_id == mock_host.pk


def test_saving_after_the_reconciler_moved_on_and_a_refresh_is_fine() -> None:
    job = _job()
    ContainerJob.objects.filter(pk=job.pk).update(priority=3)
    job.refresh_from_db()
    job.name = "renamed"
    job.save()
    assert ContainerJob.objects.get(pk=job.pk).name == "renamed"
    job.name = "again"
    job.save()  # the object's own updated_at moved with the row
    assert ContainerJob.objects.get(pk=job.pk).name == "again"


# Hosts: types, duplicates, backend configuration (findings 6, 9) ------------------------------


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"max_concurrent_jobs": math.inf}, "max_concurrent_jobs"),
        ({"max_concurrent_jobs": "many"}, "max_concurrent_jobs"),
        ({"max_concurrent_jobs": 101}, "max_concurrent_jobs"),
        ({"is_active": None}, "name"),  # None = the default; a second error keys the test
        ({"is_active": []}, "is_active"),
        ({"executor_config": {"latency": math.nan}}, "executor_config"),
        ({"executor_config": {"nested": {1, 2}}}, "executor_config"),
        ({"executor_config": "{}"}, "executor_config"),
        ({"connection_string": {"url": "x"}}, "connection_string"),
        ({"executor_type": ["mock"]}, "executor_type"),
    ],
    ids=repr,
)
def test_host_fields_refuse_wrong_types(values: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {"name": "h", "executor_type": "mock"}
    base.update(values)
    if field == "name":
        base["name"] = ""
    with pytest.raises(ValidationError) as info:
        ExecutorHost.objects.create(**base)
    assert field in info.value.message_dict
    assert not ExecutorHost.objects.exists()


def test_a_duplicate_host_or_template_name_is_a_validation_error_not_an_integrity_error() -> None:
    ExecutorHost.objects.create(name="h", executor_type="mock")
    with pytest.raises(ValidationError) as info:
        ExecutorHost.objects.create(name="h", executor_type="mock")
    assert "name" in info.value.message_dict
    EnvironmentVariableTemplate.objects.create(name="t")
    with pytest.raises(ValidationError):
        EnvironmentVariableTemplate.objects.create(name="t")


@pytest.mark.parametrize(
    ("connection_string", "config", "field", "fragment"),
    [
        ("", {"network": "host"}, "executor_config", "refused"),
        ("", {"network": "container:db"}, "executor_config", "refused"),
        ("", {"netwrok": "none"}, "executor_config", "netwrok"),
        ("", {"api_timeout": "soon"}, "executor_config", "api_timeout"),
        ("", {"api_timeout": 1e300}, "executor_config", "api_timeout"),
        ("", {"allow_pull": "perhaps"}, "executor_config", "allow_pull"),
        ("unix:///var/run/docker.sock", {"tls_verify": True}, "executor_config", "tcp://"),
        ("tcp://h:2376", {"tls_client_cert": "/etc/cert.pem"}, "executor_config", "together"),
        ("tcp://h:2376", {"tls_ca_cert": "relative/ca.pem"}, "executor_config", "absolute"),
        ("", {"use_ssh_client": True}, "executor_config", "ssh"),
        ("tcp://", {}, "connection_string", "tcp://"),
    ],
)
def test_docker_host_configuration_is_checked_at_save(
    connection_string: str, config: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(ValidationError) as info:
        ExecutorHost.objects.create(
            name="d", executor_type="docker", connection_string=connection_string, executor_config=config
        )
    assert fragment in " ".join(info.value.message_dict[field])
    assert not ExecutorHost.objects.exists()


def test_mock_host_configuration_is_checked_at_save() -> None:
    with pytest.raises(ValidationError) as info:
        ExecutorHost.objects.create(name="m", executor_type="mock", executor_config={"latency": "slow"})
    assert "latency" in info.value.message_dict["executor_config"][0]


# env: references (finding 1) --------------------------------------------------------------------


def test_env_references_are_refused_unless_allow_listed(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://app:s3cr3t@db/prod")
    with pytest.raises(ValidationError) as info:
        ExecutorHost.objects.create(
            name="d",
            executor_type="docker",
            connection_string="tcp://h:2376",
            executor_config={"tls_ca_cert": "env:DATABASE_URL"},
        )
    message = " ".join(info.value.message_dict["executor_config"])
    assert "DATABASE_URL" in message and "CONFIG_ENV_ALLOWLIST" in message
    assert "s3cr3t" not in message and "postgres://" not in message
    settings.CONTAINER_MANAGER = {"CONFIG_ENV_ALLOWLIST": ["DOCKER_CA_PATH"]}
    host = ExecutorHost.objects.create(
        name="d",
        executor_type="docker",
        connection_string="tcp://h:2376",
        executor_config={"tls_ca_cert": "env:DOCKER_CA_PATH"},
    )
    assert host.pk is not None


def test_a_row_changed_by_sql_to_read_the_environment_is_refused_before_the_executor_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from executors.exceptions import ConfigurationError

    monkeypatch.setenv("DATABASE_URL", "postgres://app:s3cr3t@db/prod")
    host = ExecutorHost.objects.create(name="d", executor_type="docker", connection_string="tcp://h:2376")
    ExecutorHost.objects.filter(pk=host.pk).update(executor_config={"tls_ca_cert": "env:DATABASE_URL"})
    host.refresh_from_db()
    with pytest.raises(ConfigurationError, match="CONFIG_ENV_ALLOWLIST"):
        host.get_executor()
    report = host.health_check(timeout=0.5)
    assert not report.healthy and "DATABASE_URL" in report.message
    row = ExecutorHost.objects.get(pk=host.pk)
    assert "s3cr3t" not in row.health_message and "postgres" not in row.health_message


def test_an_allowed_reference_to_a_secret_is_never_quoted(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """Even an allow-listed variable that holds no file path never reaches the health message."""
    settings.CONTAINER_MANAGER = {"CONFIG_ENV_ALLOWLIST": ["DOCKER_CA_PATH"]}
    monkeypatch.setenv("DOCKER_CA_PATH", "postgres://app:s3cr3t@db/prod")
    host = ExecutorHost.objects.create(
        name="d",
        executor_type="docker",
        connection_string="tcp://h:2376",
        executor_config={"tls_ca_cert": "env:DOCKER_CA_PATH"},
    )
    report = host.health_check(timeout=0.5)
    assert not report.healthy and "DOCKER_CA_PATH" in report.message
    assert "s3cr3t" not in report.message and "postgres" not in report.message
    assert "s3cr3t" not in ExecutorHost.objects.get(pk=host.pk).health_message


# Secrets (finding 3) -----------------------------------------------------------------------------


def test_secret_masking_covers_more_names_urls_and_marked_keys() -> None:
    template = EnvironmentVariableTemplate.objects.create(
        name="t", environment_variables_text="SHARED=plain\nLICENSE=abc-123", secret_keys="LICENSE"
    )
    job = _job(
        environment_template=template,
        override_environment=(
            "DB_PASS=hunter2\nSMTP_PASSWD=hunter3\nDATABASE_URL=postgres://u:pw9@h/db\n"
            "MY_CODE=4711\nLOG_LEVEL=info"
        ),
        secret_keys="MY_CODE",
    )
    shown = job.get_safe_environment_variables()
    assert shown == {
        "SHARED": "plain",
        "LICENSE": "********",
        "DB_PASS": "********",
        "SMTP_PASSWD": "********",
        "DATABASE_URL": "postgres://u:********@h/db",
        "MY_CODE": "********",
        "LOG_LEVEL": "info",
    }
    assert job.get_secret_keys() == {"LICENSE", "DB_PASS", "SMTP_PASSWD", "DATABASE_URL", "MY_CODE"}


def test_secret_keys_must_name_variables_of_the_environment() -> None:
    assert "MY_PASWORD" in _refused(
        "secret_keys", override_environment="MY_PASSWORD=x", secret_keys="MY_PASWORD"
    )
    assert "not a variable name" in _refused("secret_keys", secret_keys="A B-C")
    with pytest.raises(ValidationError) as info:
        EnvironmentVariableTemplate.objects.create(
            name="t", environment_variables_text="A=1", secret_keys="B"
        )
    assert "secret_keys" in info.value.message_dict


def test_reprs_and_errors_never_show_marked_values() -> None:
    job = _job(override_environment="LICENSE=abc-123-xyz", secret_keys="LICENSE")
    job.override_environment = "LICENSE='abc-123-xyz"
    with pytest.raises(ValidationError) as info:
        job.save()
    assert "abc-123-xyz" not in str(info.value) and "abc-123-xyz" not in repr(job)


# Rows the database holds but validation would refuse (finding 5) -------------------------------


def test_text_in_a_number_column_is_refused_or_answered_with_a_validation_error() -> None:
    """PostgreSQL refuses the text; SQLite stores it (past the CHECKs here), and the launch-time
    check answers with a ValidationError rather than ValueError."""
    from django.db import DatabaseError, transaction

    from container_manager.conf import get_policy
    from container_manager.jobrules import launch_settings

    job = _job()
    update = (
        "UPDATE container_manager_containerjob SET memory_limit = 'abc', cpu_limit = 'x', "
        "retry_backoff_seconds = 'soon' WHERE id = %s"
    )
    if connection.vendor == "postgresql":
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(update, [job.pk])
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA ignore_check_constraints = 1")
        try:
            cursor.execute(update, [job.pk])
        finally:
            cursor.execute("PRAGMA ignore_check_constraints = 0")
    job = ContainerJob.objects.get(pk=job.pk)
    assert job.memory_limit == "abc"
    with pytest.raises(ValidationError) as info:
        launch_settings(job, get_policy())
    assert {"memory_limit", "cpu_limit", "retry_backoff_seconds"} <= set(info.value.message_dict)


@pytest.mark.parametrize(
    ("attribute", "value", "field"),
    [
        ("memory_limit", "abc", "memory_limit"),
        ("memory_limit", 3.7, "memory_limit"),
        ("cpu_limit", math.nan, "cpu_limit"),
        ("timeout_seconds", math.inf, "timeout_seconds"),
        ("max_retries", None, "max_retries"),
        ("retry_backoff_seconds", 1e12, "retry_backoff_seconds"),
        ("priority", "x", "priority"),
        ("image", None, "image"),
        ("command", None, None),
        ("command", "echo 'x", "command"),
        ("retry_on", "sometimes", "retry_on"),
        ("override_environment", "no equals", "override_environment"),
        ("override_environment", 5, "override_environment"),
        ("secret_keys", 5, None),
    ],
    ids=repr,
)
def test_launch_settings_answer_any_stored_value_with_a_validation_error(
    attribute: str, value: Any, field: str | None
) -> None:
    from container_manager.conf import get_policy
    from container_manager.jobrules import launch_settings

    job = ContainerJob.objects.get(pk=_job(memory_limit=None).pk)
    setattr(job, attribute, value)
    if field is None:
        launch_settings(job, get_policy())
        return
    with pytest.raises(ValidationError) as info:
        launch_settings(job, get_policy())
    assert field in info.value.message_dict


def test_launch_settings_of_a_good_row() -> None:
    from container_manager.conf import get_policy
    from container_manager.jobrules import launch_settings

    job = _job(
        command="echo hi",
        memory_limit=None,
        override_environment="API_TOKEN=t\nURL=https://u:p@h/x\nA=1",
        retry_on="oom",
    )
    job.memory_limit = None  # as a row inserted by SQL without one
    settings = launch_settings(job, get_policy())
    assert settings.argv == ("echo", "hi") and settings.memory_mb == get_policy().default_memory_mb
    assert settings.secret_keys == {"API_TOKEN", "URL"}
    assert settings.retry_on == {"oom"} and settings.env["A"] == "1"
