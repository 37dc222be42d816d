"""``manage_jobs`` to kubectl habits: wait and exit codes, logs --follow through retries,
list columns and --watch, cancel that checks every id first, dry runs, help with examples.

The daemon's work is done in the test's own thread: the commands' sleeps are replaced by a
pass of ``process_jobs --once``, so a wait or a follow sees jobs move exactly as with a daemon.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from container_manager.management.jobcli import common, control, inspect, logs
from container_manager.management.jobcli.logs import SKIPPED, new_part
from container_manager.models import ContainerJob, ExecutorHost

pytestmark = pytest.mark.django_db


def manage(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``manage_jobs ARGS``."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("manage_jobs", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def job(host: ExecutorHost, command: str, **kw: Any) -> ContainerJob:
    return ContainerJob.objects.create(image="busybox", command=command, docker_host=host, **kw)


def daemon_passes(
    monkeypatch: pytest.MonkeyPatch, module: Any, also: Callable[[int], None] | None = None
) -> list[int]:
    """Each sleep of ``module`` runs one daemon pass (and ``also(n)``) instead of sleeping."""
    calls: list[int] = []

    def fake_sleep(seconds: float) -> None:
        calls.append(len(calls) + 1)
        if also is not None:
            also(len(calls))
        call_command("process_jobs", "--once", "--log-level", "ERROR")
        if len(calls) > 50:
            raise AssertionError("never finished")

    monkeypatch.setattr(module.time, "sleep", fake_sleep)
    return calls


# wait and submit --wait ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "code"),
    [("echo ok", 0), ("exit 3", 3), ("oom", 137)],
)
def test_wait_exits_with_the_jobs_exit_code(
    mock_host: ExecutorHost, monkeypatch: pytest.MonkeyPatch, command: str, code: int
) -> None:
    target = job(mock_host, command)
    daemon_passes(monkeypatch, control)
    status, _, err = manage("wait", str(target.pk))
    assert status == code
    assert err.startswith(f"job {target.pk} ")


def test_wait_codes_for_timeout_and_cancel_and_the_first_failure_wins(
    mock_host: ExecutorHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    fine, cancelled, failing = job(mock_host, "echo ok"), job(mock_host, "hang"), job(mock_host, "exit 9")
    cancelled.cancel()
    daemon_passes(monkeypatch, control)
    assert manage("wait", str(fine.pk), str(cancelled.pk), str(failing.pk))[0] == common.EXIT_CANCELLED
    assert manage("wait", str(failing.pk), str(cancelled.pk))[0] == 9
    timed = job(mock_host, "hang", timeout_seconds=1)
    ContainerJob.objects.filter(pk=timed.pk).update(
        status="timeout", failure_reason="timeout", finished_at=timed.created_at
    )
    assert manage("wait", str(timed.pk))[0] == common.EXIT_JOB_TIMEOUT


def test_wait_gives_up_after_its_timeout(mock_host: ExecutorHost, monkeypatch: pytest.MonkeyPatch) -> None:
    stuck = job(mock_host, "hang")
    monkeypatch.setattr(control, "WAIT_POLL_SECONDS", 0.01)
    status, _, err = manage("wait", str(stuck.pk), "--timeout", "0.05")
    assert status == common.EXIT_WAIT_TIMEOUT and f"job(s) {stuck.pk} not finished" in err
    assert ContainerJob.objects.get(pk=stuck.pk).status == "pending"  # waiting changes nothing


def test_wait_checks_every_id_first() -> None:
    with pytest.raises(CommandError, match="no job with id 424242, 424243"):
        manage("wait", "424242", "424243")


def test_submit_wait_and_json(mock_host: ExecutorHost, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon_passes(monkeypatch, control)
    status, out, err = manage(
        "submit", "--image", "busybox", "--command", "exit 4", "--host", "mock-1", "--wait"
    )
    assert status == 4 and "created job" in out and "failed (exit 4, exit_code)" in err
    status, out, _ = manage("submit", "--image", "busybox", "--host", "mock-1", "--wait", "--json")
    assert status == 0 and json.loads(out)[0]["status"] == "pending"  # as created
    with pytest.raises(CommandError, match="--wait-timeout goes with --wait"):
        manage("submit", "--image", "busybox", "--wait-timeout", "5")


# submit: dry run, summary, progress ---------------------------------------------------------------


def _jsonl(tmp_path: Path, *specs: dict[str, Any]) -> str:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(spec) for spec in specs))
    return str(path)


def test_dry_run_validates_and_creates_nothing(tmp_path: Path, mock_host: ExecutorHost) -> None:
    specs = [{"image": "busybox", "host": "mock-1"}, {"image": "alpine"}, {"image": "busybox"}]
    status, out, _ = manage("submit", "--file", _jsonl(tmp_path, *specs), "--dry-run")
    assert status == 0 and ContainerJob.objects.count() == 0
    assert out.strip() == (
        "dry run: 3 job(s): 2 x busybox, 1 x alpine; on any host (2), mock-1 (1) would be created; nothing was created"
    )
    with pytest.raises(CommandError, match="nothing was created: line 2: image"):
        manage(
            "submit", "--file", _jsonl(tmp_path, {"image": "busybox"}, {"image": "Bad Image"}), "--dry-run"
        )


def test_bulk_submit_prints_a_summary_and_progress_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    path = _jsonl(tmp_path, *({"image": "busybox", "name": f"n{i}"} for i in range(30)))
    status, out, _ = manage("submit", "--file", path)
    assert status == 0 and ContainerJob.objects.count() == 30
    first, last = ContainerJob.objects.order_by("id").values_list("id", flat=True)[::29]
    assert out.splitlines()[-1] == f"created 30 job(s): 30 x busybox; on any host (30); ids {first}..{last}"
    assert "created job" not in out  # more than 20: the summary only
    assert (
        "validating: 30/30 (100%)" in terminal.getvalue() and "creating: 30/30 (100%)" in terminal.getvalue()
    )


# cancel ------------------------------------------------------------------------------------------------


def test_cancel_checks_every_id_before_touching_any(mock_host: ExecutorHost) -> None:
    first, second = job(mock_host, "hang"), job(mock_host, "hang")
    with pytest.raises(CommandError, match="no job with id 999998, 999999; nothing was done"):
        manage("cancel", str(first.pk), "999998", str(second.pk), "999999")
    assert set(ContainerJob.objects.values_list("status", flat=True)) == {"pending"}
    _, out, _ = manage("cancel", str(first.pk), str(second.pk))
    assert out.splitlines() == [
        f"job {first.pk}: cancellation requested",
        f"job {second.pk}: cancellation requested",
    ]


# logs --follow ------------------------------------------------------------------------------------------


def test_follow_waits_for_a_pending_job_and_follows_its_retries(
    mock_host: ExecutorHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = job(mock_host, "sh -c 'echo try; stderr oops; exit 3'", max_retries=1, retry_backoff_seconds=0)
    daemon_passes(monkeypatch, logs)
    status, out, err = manage("logs", str(flaky.pk), "--follow")
    assert status == 0
    assert out == "try\ntry\n"
    notes = err.splitlines()
    assert notes[0] == f"waiting for job {flaky.pk} to start (pending)"
    assert "attempt 1 exited 3; retry in 0 s" in notes
    assert "--- attempt 2 ---" in notes
    assert notes[-1] == "attempt 2 exited 3; job failed"
    assert notes.count("oops") == 2


def test_follow_honours_tail_and_ends_when_the_job_is_cancelled(
    mock_host: ExecutorHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    long = job(mock_host, "sh -c 'echo a; echo b; echo c; sleep 600'")
    assert long.launch() == "running"
    daemon_passes(monkeypatch, logs, also=lambda n: long.cancel() if n == 1 else None)
    status, out, err = manage("logs", str(long.pk), "--follow", "--tail", "1", "--stream", "stdout")
    assert (status, out) == (0, "c\n")
    assert err.splitlines()[-1] == "attempt 1 was cancelled; job cancelled"


def test_new_output_is_found_in_a_sliding_tail() -> None:
    assert new_part("", "a\n") == "a\n"
    assert new_part("a\nb\n", "a\nb\nc\n") == "c\n"
    assert new_part("x1\nx2\nx3\n", "x2\nx3\nx4\n") == "x4\n"  # the window slid
    assert new_part("old\n", "all new\n") == SKIPPED + "all new\n"


# list ------------------------------------------------------------------------------------------------------


def test_list_watch_redraws_when_something_changed(
    mock_host: ExecutorHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = job(mock_host, "echo hi", name="watched")

    def tick(n: int) -> None:
        if n == 3:
            raise KeyboardInterrupt

    daemon_passes(monkeypatch, inspect, also=tick)
    status, out, _ = manage("list", "--watch", "--interval", "0.1")
    tables = [block for block in out.split("\n\n") if block.strip()]
    assert status == 0 and len(tables) == 2  # pending, then completed; the unchanged third not again
    assert "pending" in tables[0] and "completed" in tables[1] and str(target.pk) in tables[1]
    with pytest.raises(CommandError, match="--watch"):
        manage("list", "--watch", "--json")


# help ---------------------------------------------------------------------------------------------------------


def test_every_subcommand_has_an_example_and_says_its_defaults() -> None:
    from container_manager.management.jobcli import load

    parser = (
        __import__("django.core.management", fromlist=["load_command_class"])
        .load_command_class("container_manager", "manage_jobs")
        .create_parser("container-manager", "manage_jobs")
    )
    choices = next(a for a in parser._actions if a.dest == "action").choices
    for name, sub in load().items():
        text = choices[name].format_help()
        assert f"example:\n  container-manager manage_jobs {sub.example}" in text, name
        for action in choices[name]._actions:
            if (
                action.default not in (None, False, [], "==SUPPRESS==")
                and action.help
                and action.dest != "help"
            ):
                assert "default" in action.help, f"{name} {action.option_strings}: no default in the help"
    assert "124 when it timed out" in choices["wait"].format_help()
