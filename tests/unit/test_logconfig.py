"""The shared structlog setup: JSON off a terminal, console on one, stdlib routed through it,
job context bound, and secrets masked whatever shape they are logged in."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from container_manager.logconfig import configure, scrub
from executors.types import ContainerSpec

SECRET = "hunter2-s3cr3t"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure() changes process-wide state: put everything back afterwards."""
    root = logging.getLogger()
    django_logger = logging.getLogger("django")
    saved = (
        root.handlers[:],
        root.level,
        django_logger.handlers[:],
        django_logger.propagate,
        structlog.get_config(),
    )
    structlog.contextvars.clear_contextvars()
    try:
        yield
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        django_logger.handlers[:], django_logger.propagate = saved[2], saved[3]
        structlog.configure(**saved[4])
        structlog.contextvars.clear_contextvars()


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_when_stderr_is_not_a_terminal(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("auto", "INFO")
    structlog.get_logger("test.json").info("hello", answer=42)
    logging.getLogger("django.request").warning("Not Found: %s", "/x")
    logging.getLogger("docker.api").warning("slow response")
    records = json_lines(capsys.readouterr().err)
    assert [r["event"] for r in records] == ["hello", "Not Found: /x", "slow response"]
    assert (
        records[0]["answer"] == 42 and records[0]["level"] == "info" and records[0]["logger"] == "test.json"
    )
    assert records[1]["logger"] == "django.request" and records[1]["level"] == "warning"
    assert all("timestamp" in r for r in records)


def test_console_when_stderr_is_a_terminal(restore_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = TTY()
    monkeypatch.setattr(sys, "stderr", stream)
    configure("auto", "INFO")
    structlog.get_logger("test.console").info("hello console", answer=42)
    output = stream.getvalue()
    assert "hello console" in output and "answer" in output
    with pytest.raises(json.JSONDecodeError):
        json.loads(output.splitlines()[0])


def test_levels_filter_and_noisy_libraries_are_quieted(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("json", "INFO")
    structlog.get_logger("test.levels").debug("hidden")
    logging.getLogger("urllib3.connectionpool").info("Starting new HTTP connection")
    structlog.get_logger("test.levels").warning("shown")
    assert [r["event"] for r in json_lines(capsys.readouterr().err)] == ["shown"]


def test_secrets_never_reach_the_output(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "INFO")
    log = structlog.get_logger("test.secrets")
    log.info("keyword", password=SECRET, api_token=SECRET, db_password=SECRET)
    log.info(
        "env dict",
        env={"DB_PASSWORD": SECRET, "PLAIN": "visible", "nested": {"AWS_SECRET_ACCESS_KEY": SECRET}},
    )
    log.info("docker env list", environment=["PLAIN=visible", f"API_KEY={SECRET}"])
    log.info("pairs", env=(("GITHUB_TOKEN", SECRET), ("PLAIN", "visible")))
    log.info("url", database=f"postgres://app:{SECRET}@db:5432/app")
    log.info(f"connecting to redis://:{SECRET}@cache:6379/0")
    spec = ContainerSpec(name="cm-x-1-1", image="busybox", env=(("SECRET_KEY", SECRET),))
    log.info("spec", spec=spec)
    logging.getLogger("docker.api").warning("using %s", f"tcp://user:{SECRET}@docker:2376")
    output = capsys.readouterr().err
    assert SECRET not in output
    records = json_lines(output)
    assert len(records) == 8
    assert records[0]["password"] == "********"
    assert records[1]["env"]["PLAIN"] == "visible" and records[1]["env"]["DB_PASSWORD"] == "********"
    assert records[2]["environment"] == ["PLAIN=visible", "API_KEY=********"]
    assert records[4]["database"] == "postgres://app:********@db:5432/app"


def test_scrub_leaves_ordinary_values_alone() -> None:
    value = {"image": "busybox", "command": ["sh", "-c", "echo a=b"], "url": "https://example.org/x", "n": 3}
    assert scrub(value) == value


def test_bound_context_reaches_structlog_and_stdlib_records(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("json", "INFO")
    with structlog.contextvars.bound_contextvars(job_id=7, attempt=2, host="mock-1"):
        structlog.get_logger("test.context").info("inside")
        logging.getLogger("docker.api").warning("stdlib inside")
    structlog.get_logger("test.context").info("outside")
    inside, stdlib_inside, outside = json_lines(capsys.readouterr().err)
    assert (inside["job_id"], inside["attempt"], inside["host"]) == (7, 2, "mock-1")
    assert stdlib_inside["job_id"] == 7
    assert "job_id" not in outside


@pytest.mark.django_db
def test_the_daemon_binds_the_job_id_around_each_step(
    restore_logging: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.daemon import Daemon, DaemonOptions

    configure("json", "INFO")
    daemon = Daemon(DaemonOptions(workers=1, actor="test"))

    def step(job_id: int) -> float | None:
        structlog.get_logger("test.step").info("step ran")
        logging.getLogger("google.api_core").warning("retrying call")
        return None

    monkeypatch.setattr(daemon.reconciler, "reconcile", step)
    daemon._process(41)
    structlog.get_logger("test.step").info("after")
    records = json_lines(capsys.readouterr().err)
    assert [(r["event"], r.get("job_id")) for r in records] == [
        ("step ran", 41),
        ("retrying call", 41),
        ("after", None),
    ]
