"""The task runner's protocol (both ends) and the runner as the container runs it: a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from container_manager import taskrunner

ROOT = Path(__file__).resolve().parents[2]


async def double_later(value: int) -> int:
    """An async function, run by the runner in an event loop of its own."""
    return value * 2


def test_a_result_line_reads_back() -> None:
    line = taskrunner.result_line({"rows": [1, 2], "name": "é"})
    assert line.startswith("CM_TASK_RESULT ") and "\n" not in line
    outcome = taskrunner.read_outcome(f"some output\n{line}\n")
    assert outcome == taskrunner.Outcome(True, return_value={"rows": [1, 2], "name": "é"})


def test_an_error_line_reads_back_with_its_class_and_traceback() -> None:
    try:
        json.loads("nope")
    except ValueError as exc:
        line = taskrunner.error_line(exc)
    outcome = taskrunner.read_outcome(line)
    assert outcome is not None and not outcome.ok
    assert outcome.exception_class_path == "json.decoder.JSONDecodeError"
    assert "Traceback" in outcome.traceback and "Expecting value" in outcome.traceback


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        "just output\n",
        'CM_TASK_RESULT {"return_value": [1, 2\n',  # cut
        "CM_TASK_RESULT [1, 2]\n",  # not an object
        'CM_TASK_RESULTX {"return_value": 1}\n',
    ],
)
def test_no_report_is_no_outcome(stdout: str) -> None:
    assert taskrunner.read_outcome(stdout) is None


def test_the_last_report_wins() -> None:
    stdout = 'CM_TASK_RESULT {"return_value": 1}\nprinted by the task\nCM_TASK_RESULT {"return_value": 2}\n'
    outcome = taskrunner.read_outcome(stdout)
    assert outcome is not None and outcome.return_value == 2


@pytest.mark.parametrize(
    ("value", "words"),
    [({1, 2}, "not JSON"), (float("nan"), "not JSON"), ("x" * 100, "at most 50 are kept")],
)
def test_a_result_that_cannot_be_reported_is_an_error(value: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        taskrunner.result_line(value, limit=50)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"task": "statistics.mean", "args": [[1, 2, 3, 4]]}, (True, 2.5)),
        ({"task": "tests.unit.test_taskrunner.double_later", "kwargs": {"value": 21}}, (True, 42)),
        ({"task": "json.loads", "args": ["nope"]}, (False, "json.decoder.JSONDecodeError")),
        ({"task": "no.such.module.func"}, (False, "builtins.ModuleNotFoundError")),
        ({"task": "os.getcwd", "args": [], "result_limit": 3}, (False, "builtins.ValueError")),
    ],
)
def test_run_reports_the_outcome_of_a_call(payload: dict[str, Any], expected: tuple[bool, Any]) -> None:
    outcome = taskrunner.read_outcome(taskrunner.run(payload))
    assert outcome is not None
    assert (outcome.ok, outcome.return_value if outcome.ok else outcome.exception_class_path) == expected


def run_module(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CM_TASK", "DJANGO_SETTINGS_MODULE")}
    return subprocess.run(
        [sys.executable, "-m", "container_manager.taskrunner"],
        env={**clean, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_the_runner_as_the_container_runs_it() -> None:
    done = run_module({"CM_TASK": json.dumps({"task": "statistics.median", "args": [[3, 1, 2]]})})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == 'CM_TASK_RESULT {"return_value":2}'
    failed = run_module({"CM_TASK": json.dumps({"task": "json.loads", "args": ["{"]})})
    assert failed.returncode == 1
    outcome = taskrunner.read_outcome(failed.stdout)
    assert outcome is not None and outcome.exception_class_path == "json.decoder.JSONDecodeError"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({}, "CM_TASK is not set"),
        ({"CM_TASK": "{"}, "not a task description"),
        ({"CM_TASK": "[]"}, "not a task"),
    ],
)
def test_the_runner_refuses_what_is_not_a_task(env: dict[str, str], words: str) -> None:
    done = run_module(env)
    assert done.returncode == 2 and words in done.stderr and done.stdout == ""
