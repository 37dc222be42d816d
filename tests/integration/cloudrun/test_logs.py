"""Logs from Cloud Logging through the real google-cloud-logging client, against the fake."""

from __future__ import annotations

from collections.abc import Callable

from executors.cloudrun import CloudRunExecutor
from tests.fakes.cloudrun import FakeCloudRun, logging_api

from .helpers import make_spec, wait_exited

MakeExecutor = Callable[..., CloudRunExecutor]
SECRET = "s3cr3t-token-value"


def test_only_the_containers_stdout_and_stderr_are_read(
    make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    """Audit records (the job spec with env values) and varlog/system lines never reach the tail."""
    executor = make_executor(use_cloud_logging=True)
    spec = make_spec(
        command=("sh", "-c", "echo hello; echo oops >&2; echo bye; sleep 0.2; exit 3"),
        env=(("API_TOKEN", SECRET),),
        secret_keys=frozenset({"API_TOKEN"}),
    )
    executor.launch(spec)
    wait_exited(executor, spec.name)
    # The fake holds what Cloud Run writes: the secret is in the audit record and system log.
    assert sum(SECRET in str(e) for e in fake_cloudrun.log_entries) >= 2

    tail = executor.logs(spec.name)
    assert (tail.stdout, tail.stderr) == ("hello\nbye\n", "oops\n")
    assert not tail.stdout_truncated and not tail.stderr_truncated
    assert SECRET not in tail.stdout + tail.stderr
    assert "exit(3)" not in tail.stdout + tail.stderr  # a varlog/system line
    assert fake_cloudrun.calls["ListLogEntries"] == 1
    # The query itself selects only the two container logs (not only the executor's own check).
    [query] = fake_cloudrun.log_queries
    selected = logging_api.list_entries(fake_cloudrun.log_entries, {**query, "pageSize": 1000}, "9999")
    assert {e["logName"].rsplit("/", 1)[-1] for e in selected["entries"]} == {
        "run.googleapis.com%2Fstdout",
        "run.googleapis.com%2Fstderr",
    }
    assert executor.counters()["list_log_entries"].calls == 1


def test_tails_are_bounded_and_newest(make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun) -> None:
    executor = make_executor(use_cloud_logging=True)
    script = ";".join(f"say=line {i}" for i in range(100)) + ";sleep=0.2"
    spec = make_spec(command=(), env=(("FAKE_BEHAVIOUR", script),))
    executor.launch(spec)
    wait_exited(executor, spec.name)
    tail = executor.logs(spec.name, max_bytes=40)
    assert tail.stdout.endswith("line 98\nline 99\n")
    assert len(tail.stdout.encode()) <= 40
    assert tail.stdout_truncated
    assert tail.stderr == ""


def test_an_unreachable_logging_api_falls_back_to_the_log_uri(
    make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    executor = make_executor(use_cloud_logging=True, logging_endpoint="http://127.0.0.1:9")
    spec = make_spec(command=("sh", "-c", "echo hello; sleep 0.1"))
    executor.launch(spec)
    wait_exited(executor, spec.name)
    tail = executor.logs(spec.name)
    assert tail.stdout.startswith("logs: https://console.cloud.google.com/logs/")
    assert "Cloud Logging" in tail.stdout
