"""``manage_jobs`` and ``process_jobs``: through call_command, and a few times as a real subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from container_manager.models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost, JobEvent
from executors.mock import MockExecutor
from executors.types import LABEL_INSTANCE, LABEL_MANAGED, ContainerSpec

CLI = Path(sys.executable).parent / "container-manager"


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json"))


def _job(**kwargs: Any) -> ContainerJob:
    values: dict[str, Any] = {"image": "busybox", "command": "echo hi"}
    values.update(kwargs)
    return ContainerJob.objects.create(**values)


def _finish(job: ContainerJob, status: str = "completed", age: timedelta = timedelta(0)) -> ContainerJob:
    ContainerJob.objects.filter(pk=job.pk).update(status=status, finished_at=timezone.now() - age)
    job.refresh_from_db()
    return job


# submit -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_submit_one_job_with_flags(mock_host: ExecutorHost) -> None:
    EnvironmentVariableTemplate.objects.create(name="base", environment_variables_text="A=1")
    out = run(
        "manage_jobs", "submit", "--image", "python:3.12-slim", "--command", "python -c 'print(1)'",
        "--name", "flagged", "--host", "mock-1", "--template", "base", "--env", "B=two words",
        "--env", "API_KEY=hunter2", "--memory", "256", "--cpu", "0.5", "--timeout", "60",
        "--max-retries", "2", "--priority", "7",
    )  # fmt: skip
    job = ContainerJob.objects.get()
    assert out.strip() == f"created job {job.pk} (python:3.12-slim)"
    assert (job.name, job.command, job.docker_host, job.environment_template.name) == (  # type: ignore[union-attr]
        "flagged",
        "python -c 'print(1)'",
        mock_host,
        "base",
    )
    assert (job.memory_limit, job.cpu_limit, job.timeout_seconds, job.max_retries, job.priority) == (
        256, 0.5, 60, 2, 7,
    )  # fmt: skip
    assert (job.status, job.created_by) == ("pending", "cli")
    assert job.get_all_environment_variables() == {"A": "1", "B": "two words", "API_KEY": "hunter2"}


@pytest.mark.django_db
def test_submit_json_output_and_defaults() -> None:
    [created] = run_json("manage_jobs", "submit", "--image", "busybox")
    assert created["status"] == "pending" and created["memory_limit"] == 512
    assert ContainerJob.objects.get().pk == created["id"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "Bad Image"], "image:"),
        (["--image", "busybox", "--memory", "4096"], "memory_limit:"),
        (["--image", "busybox", "--command", "echo 'x"], "command:"),
        (["--image", "busybox", "--host", "nosuch"], "no executor host named 'nosuch'"),
        (["--image", "busybox", "--template", "nosuch"], "no environment template named 'nosuch'"),
        (["--image", "busybox", "--env", "NOEQUALS"], "--env: expected KEY=VALUE"),
        (["--image", "busybox", "--env", "1BAD=x"], "--env: '1BAD' is not a variable name"),
        (["--image", "busybox", "--memory", "0"], "must be at least 1"),
        (["--image", "busybox", "--cpu", "lots"], "--cpu"),
        ([], "give --image"),
    ],
)
def test_submit_refuses_bad_input(args: list[str], message: str) -> None:
    with pytest.raises(CommandError) as info:
        run("manage_jobs", "submit", *args)
    assert message in str(info.value)
    assert ContainerJob.objects.count() == 0


def _jsonl(tmp_path: Path, *rows: Any) -> str:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.mark.django_db
def test_submit_from_file(tmp_path: Path, mock_host: ExecutorHost) -> None:
    path = _jsonl(
        tmp_path,
        {"image": "busybox", "command": "echo 1"},
        "",
        "# a comment line",
        {"image": "alpine", "command": ["sh", "-c", "echo 'a b'"], "host": "mock-1", "env": {"X": "y"}},
        {"image": "busybox", "priority": 5, "run_after": "2030-01-01T00:00:00+00:00"},
    )
    created = run_json("manage_jobs", "submit", "--file", path)
    assert [c["image"] for c in created] == ["busybox", "alpine", "busybox"]
    second = ContainerJob.objects.get(pk=created[1]["id"])
    assert second.argv == ("sh", "-c", "echo 'a b'")
    assert second.docker_host == mock_host
    assert second.get_all_environment_variables() == {"X": "y"}
    assert ContainerJob.objects.get(pk=created[2]["id"]).run_after.year == 2030  # type: ignore[union-attr]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("bad_line", "fragments"),
    [
        ({"image": "busybox", "memory_limit": 99999}, ["line 3", "memory_limit"]),
        ({"image": "UPPER"}, ["line 3", "image"]),
        ({"image": "busybox", "colour": "red"}, ["line 3", "unknown fields", "colour"]),
        ({"image": "busybox", "host": "nosuch"}, ["line 3", "host"]),
        ({"image": "busybox", "env": ["not", "a", "dict"]}, ["line 3", "env"]),
        ({"image": "busybox", "run_after": "tomorrow"}, ["line 3", "run_after"]),
        ('{"image": "busybox",', ["line 3", "not valid JSON"]),
        ("[1, 2]", ["line 3", "JSON object"]),
    ],
)
def test_submit_file_is_validated_as_a_whole(tmp_path: Path, bad_line: Any, fragments: list[str]) -> None:
    path = _jsonl(tmp_path, {"image": "busybox"}, {"image": "alpine"}, bad_line, {"image": "busybox"})
    with pytest.raises(CommandError) as info:
        run("manage_jobs", "submit", "--file", path)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert ContainerJob.objects.count() == 0


@pytest.mark.django_db
def test_submit_file_reports_every_bad_line(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, {"image": "Bad"}, {"image": "busybox"}, {"image": "busybox", "cpu_limit": 99})
    with pytest.raises(CommandError) as info:
        run("manage_jobs", "submit", "--file", path)
    message = str(info.value)
    assert "nothing was created" in message
    assert "line 1: image" in message and "line 3: cpu_limit" in message and "line 2" not in message


@pytest.mark.django_db
def test_submit_file_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="cannot read"):
        run("manage_jobs", "submit", "--file", str(tmp_path / "nope.jsonl"))
    with pytest.raises(CommandError, match="no jobs"):
        run("manage_jobs", "submit", "--file", _jsonl(tmp_path, "# nothing"))


# list / show / logs -------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_with_filters(mock_host: ExecutorHost) -> None:
    pinned = _job(name="pinned", docker_host=mock_host)
    failed = _finish(_job(name="failed"), "failed")
    old = _job(name="old")
    ContainerJob.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))

    def ids(*args: str) -> list[int]:
        return [row["id"] for row in run_json("manage_jobs", "list", *args)]

    assert ids() == [failed.pk, pinned.pk, old.pk]
    assert ids("--status", "failed") == [failed.pk]
    assert ids("--status", "failed", "--status", "pending") == [failed.pk, pinned.pk, old.pk]
    assert ids("--host", "mock-1") == [pinned.pk]
    assert ids("--recent", "24h") == [failed.pk, pinned.pk]
    assert ids("--limit", "1") == [failed.pk]
    table = run("manage_jobs", "list")
    header = ["ID", "NAME", "STATUS", "ATT", "EXIT", "HOST", "AGE", "DURATION", "IMAGE"]
    assert table.splitlines()[0].split() == header
    assert len(table.splitlines()) == 4  # every job shown: no footer
    assert table.splitlines()[3].split()[1:3] == ["old", "pending"] and " 3d " in table
    limited = run("manage_jobs", "list", "--limit", "2").splitlines()
    assert len(limited) == 4 and limited[-1] == "2 of 3 jobs (--limit to see more)"
    with pytest.raises(CommandError, match="no executor host named"):
        run("manage_jobs", "list", "--host", "nosuch")
    with pytest.raises(CommandError, match="duration"):
        run("manage_jobs", "list", "--recent", "yesterday")
    with pytest.raises(CommandError):
        run("manage_jobs", "list", "--status", "bogus")


@pytest.mark.django_db
def test_show_attempts_and_history(mock_host: ExecutorHost) -> None:
    job = _job(
        docker_host=mock_host, command="sh -c 'echo hi; exit 4'", override_environment="API_TOKEN=hunter2"
    )
    job.launch()
    data = run_json("manage_jobs", "show", str(job.pk))
    assert (data["id"], data["status"], data["exit_code"], data["attempts"]) == (job.pk, "failed", 4, 1)
    assert [a["attempt"] for a in data["attempts_detail"]] == [1]
    assert data["attempts_detail"][0]["host"] == "mock-1"
    assert [(h["from"], h["to"]) for h in data["history"]][:1] == [("pending", "launching")]
    assert data["history"][-1]["to"] == "failed"
    assert data["environment"] == {"API_TOKEN": "********"}
    text = run("manage_jobs", "show", str(job.pk))
    assert "attempts:" in text and "#1 failed" in text and "pending -> launching" in text
    assert "hunter2" not in text and "hunter2" not in json.dumps(data)
    with pytest.raises(CommandError, match="no job with id 999999"):
        run("manage_jobs", "show", "999999")
    with pytest.raises(CommandError, match="a job id is a number"):
        run("manage_jobs", "show", "abc")


@pytest.mark.django_db
def test_logs(mock_host: ExecutorHost) -> None:
    job = _job(docker_host=mock_host, command="sh -c 'echo one; echo two; stderr bad'")
    job.launch()
    assert run("manage_jobs", "logs", str(job.pk)) == "one\ntwo\nbad\n"
    assert run("manage_jobs", "logs", str(job.pk), "--stream", "stderr") == "bad\n"
    assert run("manage_jobs", "logs", str(job.pk), "--stream", "stdout", "--tail", "1") == "two\n"
    assert run("manage_jobs", "logs", str(job.pk), "--follow", "--stream", "stdout") == "one\ntwo\n"
    assert run("manage_jobs", "logs", str(job.pk), "--attempt", "1", "--stream", "stderr") == "bad\n"
    with pytest.raises(CommandError, match="has no attempt 2"):
        run("manage_jobs", "logs", str(job.pk), "--attempt", "2")


# cancel / rerun -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_cancel() -> None:
    pending, done = _job(), _finish(_job())
    out = run("manage_jobs", "cancel", str(pending.pk), str(done.pk))
    assert out.splitlines() == [
        f"job {pending.pk}: cancellation requested",
        f"job {done.pk}: already finished (completed)",
    ]
    pending.refresh_from_db()
    assert pending.status == "cancelled"
    assert pending.events.get().actor == "cli"
    assert run_json("manage_jobs", "cancel", str(pending.pk)) == {str(pending.pk): False}
    with pytest.raises(CommandError, match="no job with id"):
        run("manage_jobs", "cancel", "424242")


@pytest.mark.django_db
def test_rerun() -> None:
    done = _finish(_job(name="again"), "failed")
    data = run_json("manage_jobs", "rerun", str(done.pk))
    assert (data["rerun_of"], data["status"], data["name"]) == (done.pk, "pending", "again")
    with pytest.raises(CommandError, match="only finished jobs"):
        run("manage_jobs", "rerun", str(data["id"]))
    assert ContainerJob.objects.count() == 2


# cleanup / purge / hosts --------------------------------------------------------------------


def _orphan(executor: MockExecutor, name: str) -> None:
    labels = ((LABEL_INSTANCE, "default"), (LABEL_MANAGED, "true"))
    executor.launch(ContainerSpec(name=name, image="busybox", command=("hang",), labels=labels))


@pytest.mark.django_db
def test_cleanup_removes_orphans_only(mock_host: ExecutorHost, mock_executor: MockExecutor) -> None:
    live = _job(docker_host=mock_host, command="hang")
    live.launch()
    live_name = live.latest_execution.container_name  # type: ignore[union-attr]
    _orphan(mock_executor, "cm-default-999-1")
    # Another installation's container on the same host is not ours to remove.
    mock_executor.launch(ContainerSpec(name="theirs", image="busybox", labels=((LABEL_INSTANCE, "other"),)))

    out = run("manage_jobs", "cleanup", "--dry-run")
    assert "would remove cm-default-999-1 on mock-1" in out
    assert {o.name for o in mock_executor.list_managed("default")} == {live_name, "cm-default-999-1"}

    assert run_json("manage_jobs", "cleanup") == [["mock-1", "cm-default-999-1"]]
    assert {o.name for o in mock_executor.list_managed("default")} == {live_name}
    assert [o.name for o in mock_executor.list_managed("other")] == ["theirs"]
    assert "0 orphan container(s) removed" in run("manage_jobs", "cleanup")
    assert ContainerJob.objects.get(pk=live.pk).status == "running"


@pytest.mark.django_db
def test_cleanup_of_other_hosts_only(mock_host: ExecutorHost, mock_executor: MockExecutor) -> None:
    ExecutorHost.objects.create(name="mock-2", executor_type="mock")
    _orphan(mock_executor, "cm-default-5-1")
    assert run_json("manage_jobs", "cleanup", "--host", "mock-2") == []
    assert len(mock_executor.list_managed("default")) == 1


@pytest.mark.django_db
def test_purge_deletes_only_old_finished_jobs() -> None:
    old_done = _finish(_job(), "completed", age=timedelta(days=40))
    old_failed = _finish(_job(), "failed", age=timedelta(days=40))
    recent_done = _finish(_job(), "completed", age=timedelta(days=1))
    old_pending = _job()
    ContainerJob.objects.filter(pk=old_pending.pk).update(created_at=timezone.now() - timedelta(days=90))
    JobEvent.objects.create(job=old_done, actor="t", message="history")

    dry = run_json("manage_jobs", "purge", "--older-than", "30d", "--dry-run")
    assert dry == {"matched": 2, "deleted": 0, "dry_run": True}
    assert ContainerJob.objects.count() == 4
    assert "2 finished job(s)" in run("manage_jobs", "purge", "--older-than", "30d", "--dry-run")

    assert run_json("manage_jobs", "purge", "--older-than", "30d", "--status", "failed")["deleted"] == 1
    assert not ContainerJob.objects.filter(pk=old_failed.pk).exists()
    out = run("manage_jobs", "purge", "--older-than", "4w", "--batch-size", "1")
    assert out.strip() == "deleted 1 finished job(s) older than 28 days, 0:00:00"
    assert set(ContainerJob.objects.values_list("pk", flat=True)) == {recent_done.pk, old_pending.pk}
    assert JobEvent.objects.count() == 0
    with pytest.raises(CommandError, match="duration"):
        run("manage_jobs", "purge", "--older-than", "30 days")
    with pytest.raises(CommandError, match="required"):
        run("manage_jobs", "purge")


@pytest.mark.django_db
def test_hosts(mock_host: ExecutorHost) -> None:
    ExecutorHost.objects.create(name="down", executor_type="mock", executor_config={"healthy": False})
    ExecutorHost.objects.create(name="off", executor_type="mock", is_active=False)
    rows = {row["name"]: row for row in run_json("manage_jobs", "hosts")}
    assert set(rows) == {"down", "mock-1", "off"}
    assert rows["mock-1"]["health"] == "unknown" and rows["mock-1"]["last_health_check"] is None
    rows = {row["name"]: row for row in run_json("manage_jobs", "hosts", "--check")}
    assert (rows["mock-1"]["health"], rows["down"]["health"], rows["off"]["health"]) == (
        "healthy", "unhealthy", "unknown",
    )  # fmt: skip
    assert rows["mock-1"]["last_health_check"] is not None
    assert (rows["mock-1"]["running"], rows["mock-1"]["max_concurrent_jobs"]) == (0, 10)
    table = run("manage_jobs", "hosts")
    assert "mock-1" in table and "0/10" in table


def test_unknown_action_is_refused() -> None:
    with pytest.raises(CommandError):
        run("manage_jobs", "explode")


# process_jobs -------------------------------------------------------------------------------


# The daemon's step calls close_old_connections(), which closes a connection left inside a
# transaction: run it in autocommit mode, as in production.
@pytest.mark.django_db(transaction=True)
def test_process_jobs_once_completes_a_pending_job(mock_host: ExecutorHost) -> None:
    job = _job(command="echo hi")
    run("process_jobs", "--once", "--log-level", "WARNING")
    job.refresh_from_db()
    assert (job.status, job.exit_code) == ("completed", 0)
    assert job.get_logs() == "hi\n"
    assert job.latest_execution.cleaned_up  # type: ignore[union-attr]


@pytest.mark.django_db(transaction=True)
def test_process_jobs_once_only_for_named_hosts(mock_host: ExecutorHost) -> None:
    other = ExecutorHost.objects.create(name="mock-2", executor_type="mock")
    mine, theirs = _job(docker_host=mock_host), _job(docker_host=other)
    run("process_jobs", "--once", "--host", "mock-1", "--log-level", "WARNING")
    assert ContainerJob.objects.get(pk=mine.pk).status == "completed"
    assert ContainerJob.objects.get(pk=theirs.pk).status == "pending"


def test_process_jobs_help_lists_the_options() -> None:
    from container_manager.management.commands.process_jobs import Command

    text = Command().create_parser("container-manager", "process_jobs").format_help()
    for option in (
        "--once", "--until-idle", "--workers", "--resync-interval", "--poll-interval", "--host",
        "--log-format", "--metrics-port",
    ):  # fmt: skip
        assert option in text


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers: must be at least 1"),
        (["--workers", "many"], "--workers: expected a whole number"),
        (["--host", "nosuch"], "--host: no executor host named nosuch"),
        (["--poll-interval", "0"], "--poll-interval: must be greater than 0"),
        (["--metrics-port", "70000"], "--metrics-port: a port is between 0 and 65535"),
        (["--once", "--until-idle"], "not allowed with argument"),
        (["--log-format", "xml"], "--log-format: invalid choice"),
    ],
)
def test_process_jobs_refuses_bad_options(args: list[str], message: str) -> None:
    _job()
    with pytest.raises(CommandError) as info:
        run("process_jobs", "--once", *args) if "--once" not in args else run("process_jobs", *args)
    assert message in str(info.value)
    assert ContainerJob.objects.get().status == "pending"


# A real subprocess ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A migrated SQLite file database of its own, whatever DATABASE_URL the suite runs with."""
    home = tmp_path_factory.mktemp("cli-home")
    env = dict(os.environ)
    env.update(
        CONTAINER_MANAGER_HOME=str(home),
        DATABASE_URL=f"sqlite:///{home / 'db.sqlite3'}",
        DJANGO_SETTINGS_MODULE="container_manager.settings",
    )
    result = subprocess.run(
        [str(CLI), "migrate", "-v", "0"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    yield env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_submit_list_show(cli_env: dict[str, str]) -> None:
    submitted = cli(cli_env, "manage_jobs", "submit", "--image", "busybox", "--command", "echo hi", "--json")
    assert submitted.returncode == 0, submitted.stderr
    [job] = json.loads(submitted.stdout)
    listed = cli(cli_env, "manage_jobs", "list", "--json")
    assert listed.returncode == 0
    assert job["id"] in [row["id"] for row in json.loads(listed.stdout)]
    shown = cli(cli_env, "manage_jobs", "show", str(job["id"]), "--json")
    assert json.loads(shown.stdout)["status"] == "pending"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["manage_jobs", "show", "999999"], 1, "no job with id 999999"),
        (["manage_jobs", "submit", "--image", "Not Valid"], 1, "image:"),
        (["manage_jobs", "purge", "--older-than", "soon"], 2, "expected a duration"),
        (["process_jobs", "--workers", "0"], 2, "must be at least 1"),
        (["process_jobs", "--once", "--host", "nosuch"], 1, "no executor host named nosuch"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(
    cli_env: dict[str, str], args: list[str], code: int, message: str
) -> None:
    result = cli(cli_env, *args)
    assert result.returncode == code
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    lines = result.stderr.strip().splitlines()
    if code == 1:  # CommandError: exactly one line
        assert lines == [lines[-1]] and lines[0].startswith("CommandError: "), result.stderr
    else:  # argparse: usage, then one error line
        assert [line for line in lines if "error:" in line] == [lines[-1]], result.stderr


def test_cli_process_jobs_help(cli_env: dict[str, str]) -> None:
    result = cli(cli_env, "process_jobs", "--help")
    assert result.returncode == 0
    for option in ("--once", "--until-idle", "--workers", "--metrics-port"):
        assert option in result.stdout
