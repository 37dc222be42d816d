"""Validation rules: every one refuses bad data with a field-named error and writes nothing."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from hypothesis import given
from hypothesis import strategies as st

from container_manager.conf import Policy, get_policy
from container_manager.models import (
    ContainerExecution,
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    JobEvent,
)
from container_manager.validation import join_command, parse_retry_on, split_command, validate_image

DIGEST = "sha256:" + "0123456789abcdef" * 4


# Image references ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "python:3.12-slim",
        "library/python:3.12",
        "ghcr.io/org/app:1.0",
        "ghcr.io/org/team/app",
        "localhost:5000/x",
        "localhost:5000/x:tag",
        "registry.example.com:443/a/b_c__d:v1.2.3",
        f"busybox@{DIGEST}",
        f"ghcr.io/org/app:1.0@{DIGEST}",
        "my-app.v2",
    ],
)
def test_valid_images(image: str) -> None:
    validate_image(image, Policy())


@pytest.mark.parametrize(
    "image",
    [
        "",
        "   ",
        ":tag",
        "Python:3.12",
        "ghcr.io/Org/app",
        "UPPER",
        "python 3.12",
        "python:3.12 ",
        "-leading-dash",
        "trailing:",
        "app@sha256:abc",
        "app@" + DIGEST[:20],
        "a/../b",
        "x:" + "t" * 200,
        "a" * 256,
        "python;rm -rf /",
    ],
)
def test_invalid_images(image: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_image(image, Policy())
    assert list(info.value.message_dict) == ["image"]


def test_image_allow_list() -> None:
    policy = Policy(allowed_images=("ghcr.io/org/*", "busybox:*"))
    validate_image("ghcr.io/org/app:1", policy)
    validate_image("busybox:1.36", policy)
    with pytest.raises(ValidationError, match="allowed image list"):
        validate_image("python:3.12", policy)


# Commands -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("", ()),
        ("echo hi", ("echo", "hi")),
        ("echo 'two words'", ("echo", "two words")),
        ("python -c \"print('Hello World')\"", ("python", "-c", "print('Hello World')")),
        ("echo a;b | c $HOME *", ("echo", "a;b", "|", "c", "$HOME", "*")),
        ("sh -c 'echo $HOME; exit 3'", ("sh", "-c", "echo $HOME; exit 3")),
        ('printf "a\\"b"', ("printf", 'a"b')),
    ],
)
def test_split_command(command: str, argv: tuple[str, ...]) -> None:
    assert split_command(command) == argv


@pytest.mark.parametrize("command", ["echo 'unbalanced", 'echo "unbalanced', "echo \\", "a\x00b"])
def test_bad_commands_name_the_field(command: str) -> None:
    with pytest.raises(ValidationError) as info:
        split_command(command)
    assert list(info.value.message_dict) == ["command"]


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))))
def test_join_then_split_round_trips(argv: list[str]) -> None:
    joined = join_command(argv)
    assert joined == shlex.join(argv)
    assert split_command(joined) == tuple(argv)


def test_join_refuses_non_strings() -> None:
    with pytest.raises(ValidationError) as info:
        join_command(["echo", 3])  # type: ignore[list-item]
    assert list(info.value.message_dict) == ["command"]


@pytest.mark.django_db
def test_list_command_is_stored_as_a_safely_quoted_string() -> None:
    argv = ["sh", "-c", "echo 'it''s'; rm -rf / # not run by a shell of ours"]
    job = ContainerJob.objects.create(image="busybox", command=argv)
    job.refresh_from_db()
    assert job.command == shlex.join(argv)
    assert job.argv == tuple(argv)


@pytest.mark.parametrize(
    ("value", "reasons"),
    [
        ("", set()),
        ("exit_code", {"exit_code"}),
        (" oom , lost ,timeout,", {"oom", "lost", "timeout"}),
        ("exit_code,oom,lost,launch_error", {"exit_code", "oom", "lost", "launch_error"}),
    ],
)
def test_retry_on_tokens(value: str, reasons: set[str]) -> None:
    assert {r.value for r in parse_retry_on(value)} == reasons


@pytest.mark.parametrize("value", ["bogus", "oom,cancelled", "exit_code;oom", "invalid_spec"])
def test_retry_on_refuses_unknown_tokens(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_retry_on(value)
    assert list(info.value.message_dict) == ["retry_on"]


# Every rule on the model: full_clean() and create() -----------------------------------------


def _inactive_host() -> ExecutorHost:
    return ExecutorHost.objects.create(name="off", executor_type="mock", is_active=False)


JOB_RULES: list[tuple[dict[str, Any], str]] = [
    ({"image": ""}, "image"),
    ({"image": "Not Valid"}, "image"),
    ({"command": "echo 'unbalanced"}, "command"),
    ({"memory_limit": 1}, "memory_limit"),
    ({"memory_limit": 2049}, "memory_limit"),
    ({"cpu_limit": 0.0}, "cpu_limit"),
    ({"cpu_limit": 4.5}, "cpu_limit"),
    ({"cpu_limit": -1.0}, "cpu_limit"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"timeout_seconds": 8 * 24 * 3600}, "timeout_seconds"),
    ({"max_retries": 21}, "max_retries"),
    ({"retry_on": "exit_code,bogus"}, "retry_on"),
    ({"retry_backoff_seconds": -1.0}, "retry_backoff_seconds"),
    ({"retry_backoff_seconds": 10.0, "retry_backoff_max_seconds": 5.0}, "retry_backoff_max_seconds"),
    ({"override_environment": "NOT A PAIR"}, "override_environment"),
    ({"override_environment": "A=1\nA=2"}, "override_environment"),
    ({"status": "running"}, "status"),
    ({"status": "completed"}, "status"),
    ({"status": "bogus"}, "status"),
    ({"name": "n" * 201}, "name"),
    ({"priority": 40000}, "priority"),
    ({"docker_host": _inactive_host}, "docker_host"),
]


def _job_kwargs(overrides: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {"image": "busybox", "command": "true"}
    for key, value in overrides.items():
        values[key] = value() if callable(value) else value
    return values


def _counts() -> tuple[int, ...]:
    return (
        ContainerJob.objects.count(),
        ContainerExecution.objects.count(),
        JobEvent.objects.count(),
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field"), JOB_RULES, ids=[f"{f}-{i}" for i, (_, f) in enumerate(JOB_RULES)]
)
def test_job_rule_full_clean_names_the_field(overrides: dict[str, Any], field: str) -> None:
    job = ContainerJob(**_job_kwargs(overrides))
    with pytest.raises(ValidationError) as info:
        job.full_clean()
    assert field in info.value.message_dict


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field"), JOB_RULES, ids=[f"{f}-{i}" for i, (_, f) in enumerate(JOB_RULES)]
)
def test_job_rule_create_writes_nothing(overrides: dict[str, Any], field: str) -> None:
    kwargs = _job_kwargs(overrides)
    before = _counts()
    with pytest.raises(ValidationError) as info:
        ContainerJob.objects.create(**kwargs)
    assert field in info.value.message_dict
    assert _counts() == before


@pytest.mark.django_db
def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as info:
        ContainerJob.objects.create(image="", command="'", memory_limit=99999, retry_on="x")
    assert {"image", "command", "memory_limit", "retry_on"} <= set(info.value.message_dict)
    assert ContainerJob.objects.count() == 0


@pytest.mark.django_db
def test_create_many_is_all_or_nothing() -> None:
    good = ContainerJob(image="busybox", command="true")
    bad = ContainerJob(image="busybox", memory_limit=1)
    with pytest.raises(ValidationError) as info:
        ContainerJob.objects.create_many([good, bad])
    assert "job 2" in info.value.message_dict
    assert ContainerJob.objects.count() == 0
    created = ContainerJob.objects.create_many([good, ContainerJob(image="alpine")])
    assert [j.image for j in created] == ["busybox", "alpine"]
    assert ContainerJob.objects.count() == 2


# Limits and defaults come from settings -----------------------------------------------------


@pytest.mark.django_db
def test_defaults_filled_from_settings_at_create() -> None:
    policy = get_policy()
    job = ContainerJob.objects.create(image="busybox")
    job.refresh_from_db()
    assert (job.memory_limit, job.cpu_limit, job.timeout_seconds) == (
        policy.default_memory_mb,
        policy.default_cpu,
        policy.default_timeout_seconds,
    )
    assert (job.status, job.attempts, job.max_retries, job.priority) == ("pending", 0, 0, 0)


@pytest.mark.django_db
def test_settings_change_defaults_and_caps(settings: Any) -> None:
    settings.CONTAINER_MANAGER = {
        "DEFAULT_MEMORY_MB": 256,
        "MAX_MEMORY_MB": 4096,
        "max_cpu": 8,
        "DEFAULT_CPU": 0.5,
    }
    job = ContainerJob.objects.create(image="busybox")
    assert (job.memory_limit, job.cpu_limit) == (256, 0.5)
    big = ContainerJob.objects.create(image="busybox", memory_limit=4096, cpu_limit=8)
    assert (big.memory_limit, big.cpu_limit) == (4096, 8)
    with pytest.raises(ValidationError) as info:
        ContainerJob.objects.create(image="busybox", memory_limit=4097)
    assert "4096" in info.value.message_dict["memory_limit"][0]


@pytest.mark.django_db
def test_memory_cap_is_2048_by_default() -> None:
    ContainerJob.objects.create(
        image="busybox", memory_limit=2048, cpu_limit=4, timeout_seconds=7 * 24 * 3600
    )
    with pytest.raises(ValidationError, match="2048"):
        ContainerJob.objects.create(image="busybox", memory_limit=2049)


@pytest.mark.django_db
def test_lower_cap_in_settings_refuses_what_the_default_allowed(settings: Any) -> None:
    settings.CONTAINER_MANAGER = {"MAX_MEMORY_MB": 1024, "DEFAULT_MEMORY_MB": 256, "MAX_RETRIES_CAP": 2}
    with pytest.raises(ValidationError) as info:
        ContainerJob.objects.create(image="busybox", memory_limit=2048, max_retries=3)
    assert {"memory_limit", "max_retries"} <= set(info.value.message_dict)


def test_unknown_or_inconsistent_settings_are_configuration_errors(settings: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    settings.CONTAINER_MANAGER = {"MAX_MEMROY_MB": 1}
    with pytest.raises(ImproperlyConfigured, match="MAX_MEMROY_MB"):
        get_policy()
    settings.CONTAINER_MANAGER = {"DEFAULT_MEMORY_MB": 4096}
    with pytest.raises(ImproperlyConfigured, match="DEFAULT_MEMORY_MB"):
        get_policy()
    settings.CONTAINER_MANAGER = {"MAX_CPU": "lots"}
    with pytest.raises(ImproperlyConfigured, match="MAX_CPU"):
        get_policy()


# Executor hosts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("executor_type", "connection_string"),
    [
        ("docker", ""),
        ("docker", "unix:///var/run/docker.sock"),
        ("docker", "tcp://10.0.0.5:2376"),
        ("docker", "tcp://docker.internal"),
        ("docker", "ssh://deploy@build-1"),
        ("cloudrun", "projects/my-project/locations/us-central1"),
        ("mock", ""),
        ("mock", "anything goes"),
    ],
)
@pytest.mark.django_db
def test_valid_connection_strings(executor_type: str, connection_string: str) -> None:
    host = ExecutorHost.objects.create(
        name="h", executor_type=executor_type, connection_string=connection_string
    )
    assert ExecutorHost.objects.filter(pk=host.pk).exists()


HOST_RULES: list[tuple[dict[str, Any], str]] = [
    ({"executor_type": "docker", "connection_string": "http://docker:2375"}, "connection_string"),
    ({"executor_type": "docker", "connection_string": "/var/run/docker.sock"}, "connection_string"),
    ({"executor_type": "docker", "connection_string": "tcp://bad host:1"}, "connection_string"),
    ({"executor_type": "cloudrun", "connection_string": ""}, "connection_string"),
    ({"executor_type": "cloudrun", "connection_string": "projects/P/locations/R"}, "connection_string"),
    ({"executor_type": "cloudrun", "connection_string": "us-central1"}, "connection_string"),
    ({"executor_type": "bogus"}, "executor_type"),
    ({"executor_config": {"password": "hunter2"}}, "executor_config"),
    ({"executor_config": {"api_token": "hunter2"}}, "executor_config"),
    ({"executor_config": {"tls_client_key": "hunter2"}}, "executor_config"),
    ({"executor_config": {"credentials": {"private_key": "hunter2"}}}, "executor_config"),
    ({"executor_config": ["not", "an", "object"]}, "executor_config"),
    ({"max_concurrent_jobs": 0}, "max_concurrent_jobs"),
    ({"max_concurrent_jobs": 101}, "max_concurrent_jobs"),
    ({"name": ""}, "name"),
    ({"health_status": "so-so"}, "health_status"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("overrides", "field"), HOST_RULES)
def test_host_rules(overrides: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"name": "h", "executor_type": "mock"} | overrides
    with pytest.raises(ValidationError) as info:
        ExecutorHost(**values).full_clean()
    assert field in info.value.message_dict
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValidationError):
        ExecutorHost.objects.create(**values)
    assert ExecutorHost.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "config",
    [
        {"tls_client_key": "/etc/docker/key.pem", "tls_client_cert": "/etc/docker/cert.pem"},
        {"tls_ca_cert": "env:DOCKER_CA_PATH"},
        {"api_timeout": 30, "tls_verify": True},
    ],
)
def test_credentials_as_paths_or_allowed_env_references_are_accepted(
    config: dict[str, Any], settings: Any
) -> None:
    settings.CONTAINER_MANAGER = {"CONFIG_ENV_ALLOWLIST": ["DOCKER_CA_PATH"]}
    host = ExecutorHost.objects.create(
        name="h",
        executor_type="docker",
        connection_string="tcp://docker.internal:2376",
        executor_config=config,
    )
    host.refresh_from_db()
    assert host.executor_config == config


@pytest.mark.django_db
def test_host_capacity_cap_is_configurable(settings: Any) -> None:
    settings.CONTAINER_MANAGER = {"MAX_CONCURRENT_JOBS_CAP": 500}
    assert ExecutorHost.objects.create(name="big", executor_type="mock", max_concurrent_jobs=500).pk
    with pytest.raises(ValidationError, match="500"):
        ExecutorHost.objects.create(name="bigger", executor_type="mock", max_concurrent_jobs=501)


@pytest.mark.django_db
def test_host_defaults() -> None:
    host = ExecutorHost.objects.create(name="h", executor_type="mock")
    host.refresh_from_db()
    assert (host.is_active, host.health_status, host.max_concurrent_jobs, host.last_health_check) == (
        True,
        "unknown",
        10,
        None,
    )


@pytest.mark.django_db
def test_template_with_malformed_text_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        EnvironmentVariableTemplate.objects.create(name="t", environment_variables_text="OK=1\nbroken line")
    assert "line 2" in info.value.message_dict["environment_variables_text"][0]
    assert EnvironmentVariableTemplate.objects.count() == 0
