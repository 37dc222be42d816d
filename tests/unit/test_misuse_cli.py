"""Misuse through ``manage_jobs`` (and ``process_jobs`` options): one-line errors, nothing created,
no secret in the output."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from container_manager.models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def refused(*args: str) -> str:
    with pytest.raises(CommandError) as info:
        run(*args)
    assert ContainerJob.objects.count() == 0
    message = str(info.value)
    assert "Traceback" not in message
    return message


def _jsonl(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# Finding 11: a variable given twice -------------------------------------------------------------


def test_env_given_twice_is_refused() -> None:
    message = refused("manage_jobs", "submit", "--image", "busybox", "--env", "A=1", "--env", "A=2")
    assert "A is given twice" in message


def test_env_given_as_plain_and_secret_is_refused() -> None:
    message = refused("manage_jobs", "submit", "--image", "busybox", "--env", "A=1", "--secret-env", "A=2")
    assert "A is given twice" in message


def test_jsonl_objects_with_a_key_given_twice_are_refused(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, '{"image": "busybox", "env": {"A": "1", "A": "2"}}')
    assert "line 1: A is given twice" in refused("manage_jobs", "submit", "--file", path)
    path = _jsonl(tmp_path, '{"image": "busybox", "priority": 1, "priority": 9}')
    assert "priority is given twice" in refused("manage_jobs", "submit", "--file", path)


# Finding 9: wrong types, non-finite numbers --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--cpu", "nan"], "cpu_limit"),
        (["--cpu", "inf"], "cpu_limit"),
        (["--cpu", "1e400"], "cpu_limit"),
        (["--memory", "5"], "memory_limit"),
        (["--image", "busybox:١٢"], "image"),
        (["--env", "BIG=" + "x" * 140_000], "BIG"),
    ],
)
def test_submit_flags_refuse_what_no_container_could_run(args: list[str], fragment: str) -> None:
    base = ["--image", "busybox"] if "--image" not in args else []
    assert fragment in refused("manage_jobs", "submit", *base, *args)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"image": "busybox", "command": {"argv": ["echo"]}}', "command"),
        ('{"image": "busybox", "memory_limit": "abc"}', "memory_limit"),
        ('{"image": "busybox", "memory_limit": 1e400}', "memory_limit"),
        ('{"image": "busybox", "cpu_limit": NaN}', "NaN"),
        ('{"image": "busybox", "cpu_limit": -Infinity}', "Infinity"),
        ('{"image": "busybox", "priority": 100000000000000000000000}', "priority"),
        ('{"image": "busybox", "retry_backoff_seconds": 1e12}', "retry_backoff_seconds"),
        ('{"image": "busybox", "max_retries": true}', "max_retries"),
        ('{"image": "busybox", "name": ["a"]}', "name"),
        ('{"image": ["busybox"]}', "image"),
        ('{"image": "busybox", "run_after": "2024-13-45T10:00:00"}', "run_after"),
        ('{"image": "busybox", "run_after": 1700000000}', "run_after"),
        ('{"image": "busybox", "host": {"name": "x"}}', "host"),
        ('{"image": "busybox", "template": 7}', "template"),
        ('{"image": "busybox", "env": {"1BAD": "x"}}', "1BAD"),
        ('{"image": "busybox", "env": {"A": 1}}', "env"),
        ('{"image": "busybox", "secret_keys": {"A": true}}', "secret_keys"),
        ('{"image": "busybox", "attempts": 3}', "unknown fields"),
        ("[" * 100_000, "not valid JSON"),
    ],
    ids=lambda v: v[:60] if isinstance(v, str) else v,
)
def test_jsonl_lines_of_any_shape_are_refused_with_their_line(
    tmp_path: Path, line: str, fragment: str
) -> None:
    path = _jsonl(tmp_path, '{"image": "busybox"}', line)
    message = refused("manage_jobs", "submit", "--file", path)
    assert fragment in message
    assert "line 2" in message


def test_secret_env_is_marked_and_masked_by_show() -> None:
    run(
        "manage_jobs",
        "submit",
        "--image",
        "busybox",
        "--secret-env",
        "LICENSE=lic-4711",
        "--env",
        "MODE=fast",
    )
    job = ContainerJob.objects.get()
    assert job.secret_keys == "LICENSE"
    shown = run("manage_jobs", "show", str(job.pk))
    assert "LICENSE=********" in shown and "MODE=fast" in shown and "lic-4711" not in shown


# Finding 3: show masks more ------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True])
def test_show_masks_passwords_by_any_name_and_inside_urls(as_json: bool) -> None:
    template = EnvironmentVariableTemplate.objects.create(
        name="t", environment_variables_text="CUSTOM=lic-4711", secret_keys="CUSTOM"
    )
    job = ContainerJob.objects.create(
        image="busybox",
        environment_template=template,
        override_environment="DB_PASS=hunter2\nMYSQL_PASSWD=hunter3\nDATABASE_URL=postgres://u:pw-in-url@db/x",
    )
    output = run("manage_jobs", "show", str(job.pk), *(["--json"] if as_json else []))
    for secret in ("hunter2", "hunter3", "pw-in-url", "lic-4711"):
        assert secret not in output
    assert "postgres://u:********@db/x" in output


def test_show_of_a_row_whose_environment_no_longer_parses_still_shows_the_job() -> None:
    job = ContainerJob.objects.create(image="busybox", override_environment="A=1")
    ContainerJob.objects.filter(pk=job.pk).update(override_environment="TOKEN='hunter2")
    output = run("manage_jobs", "show", str(job.pk))
    assert "not shown" in output and "line 1" in output and "hunter2" not in output


# Finding 8 at the CLI, and the other sub-commands -----------------------------------------------


def test_rerun_of_a_job_whose_host_is_inactive_is_a_one_line_error(mock_host: ExecutorHost) -> None:
    job = ContainerJob.objects.create(image="busybox", docker_host=mock_host)
    ContainerJob.objects.filter(pk=job.pk).update(status="failed", finished_at=timezone.now())
    ExecutorHost.objects.filter(pk=mock_host.pk).update(is_active=False)
    with pytest.raises(CommandError, match=r"docker_host: .*is not active"):
        run("manage_jobs", "rerun", str(job.pk))
    assert ContainerJob.objects.count() == 1


def test_submit_to_an_inactive_host_is_refused_at_once(mock_host: ExecutorHost) -> None:
    ExecutorHost.objects.filter(pk=mock_host.pk).update(is_active=False)
    assert "is not active" in refused("manage_jobs", "submit", "--image", "busybox", "--host", "mock-1")


@pytest.mark.parametrize("job_id", ["٣", "1e3", "-1", "99999999999999999999999"])
def test_job_ids_must_be_plain_positive_numbers(job_id: str) -> None:
    with pytest.raises(CommandError):
        run("manage_jobs", "cancel", job_id)


def test_hosts_show_the_capacity_in_force_and_never_the_environment(
    mock_host: ExecutorHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://app:s3cr3t@db/prod")
    ExecutorHost.objects.filter(pk=mock_host.pk).update(max_concurrent_jobs=1000)
    docker = ExecutorHost.objects.create(
        name="d", executor_type="docker", connection_string="tcp://127.0.0.1:9"
    )
    ExecutorHost.objects.filter(pk=docker.pk).update(executor_config={"tls_ca_cert": "env:DATABASE_URL"})
    rows = {row["name"]: row for row in json.loads(run("manage_jobs", "hosts", "--check", "--json"))}
    assert rows["mock-1"]["max_concurrent_jobs"] == 100
    assert "CONFIG_ENV_ALLOWLIST" in rows["d"]["message"] and "s3cr3t" not in rows["d"]["message"]
    assert "s3cr3t" not in run("manage_jobs", "hosts")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0"])
def test_process_jobs_refuses_non_finite_intervals(value: str) -> None:
    with pytest.raises(CommandError, match=r"--poll-interval.*(finite|greater than 0)"):
        call_command("process_jobs", "--once", f"--poll-interval={value}", stdout=io.StringIO())
