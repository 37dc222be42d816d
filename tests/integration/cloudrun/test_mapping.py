"""Pure parts of the Cloud Run executor: names, labels, resources, config, status mapping."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from google.protobuf import duration_pb2
from google.rpc import status_pb2
from hypothesis import given
from hypothesis import strategies as st

from executors.cloudrun import CloudRunExecutor, cloud_run_resources, job_id_for, label_key, label_value
from executors.cloudrun.calls import NoAnswer, translate
from executors.cloudrun.observe import observe_execution
from executors.exceptions import (
    ConfigurationError,
    Conflict,
    ExecutorError,
    HostMisconfigured,
    InvalidSpec,
    NotFound,
    QuotaExceeded,
    Unavailable,
)
from executors.types import ContainerState

from .helpers import make_spec

JOB_ID_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
CONN = "projects/test-project/locations/us-central1"


def offline(**config: Any) -> CloudRunExecutor:
    """An executor whose clients point nowhere; fine for anything that makes no call."""
    return CloudRunExecutor.from_config(
        CONN, {"anonymous": True, "api_endpoint": "http://127.0.0.1:9", **config}, "t"
    )


# Resources ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("memory_mb", "cpu", "expected"),
    [
        (512, 1.0, ("1", "512Mi")),
        (128, 0.25, ("1", "512Mi")),  # below Cloud Run's minimums: raised
        (1000, 1.5, ("2", "1000Mi")),  # cpu rounded up to a whole allowed count
        (1024, 3, ("4", "2048Mi")),  # 4 vCPU need at least 2 GiB
        (4096, 1, ("1", "4096Mi")),
        (5000, 1, ("2", "5000Mi")),  # more than 4 GiB needs 2 vCPU
        (9000, 1, ("4", "9000Mi")),  # more than 8 GiB needs 4 vCPU
        (20000, 2, ("6", "20000Mi")),
        (1024, 5, ("6", "4096Mi")),
        (512, 7.5, ("8", "4096Mi")),
        (32768, 1, ("8", "32768Mi")),
    ],
)
def test_resources_round_up_to_what_cloud_run_accepts(
    memory_mb: int, cpu: float, expected: tuple[str, str]
) -> None:
    assert cloud_run_resources(memory_mb, cpu) == expected


@pytest.mark.parametrize(("memory_mb", "cpu"), [(40000, 1), (512, 9), (0, 1), (512, 0)])
def test_resources_beyond_cloud_run_are_refused(memory_mb: int, cpu: float) -> None:
    with pytest.raises(InvalidSpec):
        cloud_run_resources(memory_mb, cpu)


@given(st.integers(1, 32768), st.floats(0.01, 8.0))
def test_resource_mapping_always_satisfies_cloud_run(memory_mb: int, cpu: float) -> None:
    cores_text, memory_text = cloud_run_resources(memory_mb, cpu)
    cores, memory = int(cores_text), int(memory_text.removesuffix("Mi"))
    bounds = {1: (512, 4096), 2: (512, 8192), 4: (2048, 16384), 6: (4096, 24576), 8: (4096, 32768)}
    assert cores >= cpu and memory >= memory_mb
    assert bounds[cores][0] <= memory <= bounds[cores][1]


# Names and labels --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cm-inst-42-1", "a", "job-1-2"])
def test_valid_names_are_kept(name: str) -> None:
    assert job_id_for(name) == name


@pytest.mark.parametrize(
    "name", ["CM_Inst.42", "42-job", "-x-", "job_", "x" * 64, "cm-" + "long-instance-name-" * 5 + "7-3", "ü"]
)
def test_other_names_are_sanitised_with_a_hash(name: str) -> None:
    job_id = job_id_for(name)
    assert JOB_ID_RE.fullmatch(job_id), job_id
    assert job_id == job_id_for(name)  # deterministic
    assert len(job_id) <= 63


def test_sanitised_names_do_not_collide() -> None:
    names = ["a_b", "a.b", "A-B", "a--b", "a-b"]
    assert len({job_id_for(n) for n in names}) == len(names)


@given(st.text(min_size=1, max_size=200))
def test_any_name_maps_to_a_valid_job_id(name: str) -> None:
    assert JOB_ID_RE.fullmatch(job_id_for(name))


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("container_manager.job", "cm-job"),
        ("container_manager.managed", "cm-managed"),
        ("container_manager.team.name", "cm-team-name"),
        ("Team", "team"),
        ("1x", "cm-1x"),
    ],
)
def test_label_keys(key: str, expected: str) -> None:
    assert label_key(key) == expected


def test_label_values() -> None:
    assert label_value("Prod.EU") == "prod-eu"
    assert label_value("42") == "42"
    long = label_value("v" * 100)
    assert len(long) == 63 and re.fullmatch(r"[a-z0-9_-]+", long)


# Configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "connection",
    [
        "",
        "projects/p",
        "locations/us-central1",
        "projects/p/locations/",
        "projects/P/locations/us-central1/jobs/x",
    ],
)
def test_connection_string_is_validated(connection: str) -> None:
    with pytest.raises(ConfigurationError, match="projects/PROJECT_ID/locations/REGION"):
        CloudRunExecutor.from_config(connection, {"anonymous": True}, "t")


def test_unknown_config_keys_are_named() -> None:
    with pytest.raises(ConfigurationError, match=r"\['regon', 'timeout'\]"):
        offline(regon="x", timeout=3)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"call_timeout": "30"}, "call_timeout"),
        ({"call_timeout": 0}, "call_timeout"),
        ({"poll_interval": -1}, "poll_interval"),
        ({"task_count": 0}, "task_count"),
        ({"retain_jobs": True}, "retain_jobs is not supported"),
        ({"use_cloud_logging": "yes"}, "use_cloud_logging"),
        ({"credentials_file": "env:1BAD"}, "env:NAME"),
        ({"labels": ["a"]}, "labels"),
        ({"labels": {"Team": "x"}}, "invalid Cloud Run labels"),
        ({"labels": {"team": "A B"}}, "invalid Cloud Run labels"),
        ({"vpc_egress": "sideways"}, "vpc_egress"),
        ({"transport": "http"}, "transport"),
        ({"service_account": 3}, "service_account"),
    ],
)
def test_bad_config_values(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        offline(**config)


def test_credentials_file_problems_are_configuration_errors(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match="credentials_file"):
        CloudRunExecutor.from_config(CONN, {"credentials_file": str(tmp_path / "missing.json")}, "t")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigurationError):
        CloudRunExecutor.from_config(CONN, {"credentials_file": str(bad)}, "t")
    monkeypatch.delenv("CM_TEST_GOOGLE_CREDS", raising=False)
    with pytest.raises(ConfigurationError, match="CM_TEST_GOOGLE_CREDS"):
        CloudRunExecutor.from_config(CONN, {"credentials_file": "env:CM_TEST_GOOGLE_CREDS"}, "t")


def test_config_is_applied() -> None:
    executor = offline(
        task_count=2,
        poll_interval=7,
        call_timeout=3,
        labels={"team": "data"},
        transport="rest",
    )
    assert (executor.project, executor.location) == ("test-project", "us-central1")
    assert executor.task_count == 2
    assert executor.poll_interval == 7.0
    assert executor.settings.call_timeout == 3.0
    assert executor.kind == "cloudrun" and executor.enforces_timeout and not executor.supports_events


# Job template ------------------------------------------------------------------------


def test_job_template() -> None:
    executor = offline(
        service_account="runner@p.iam.gserviceaccount.com",
        vpc_connector="projects/p/locations/us-central1/connectors/c",
        vpc_egress="all-traffic",
        labels={"team": "data"},
        task_count=2,
    )
    spec = make_spec(
        command=("python", "-m", "worker", "--fast"),
        env=(("A", "1"), ("B", "two")),
        memory_mb=1024,
        cpu=2,
        timeout_seconds=900,
    )
    job = executor.build_job(spec)
    task = job.template.template
    container = task.containers[0]
    assert container.image == spec.image
    assert list(container.command) == ["python"]
    assert list(container.args) == ["-m", "worker", "--fast"]
    assert [(e.name, e.value) for e in container.env] == [("A", "1"), ("B", "two")]
    assert dict(container.resources.limits) == {"cpu": "2", "memory": "1024Mi"}
    assert task.timeout == timedelta(seconds=900)
    assert "max_retries" in task and task.max_retries == 0
    assert task.service_account == "runner@p.iam.gserviceaccount.com"
    assert task.vpc_access.connector.endswith("/connectors/c")
    assert task.vpc_access.egress == run_v2.VpcAccess.VpcEgress.ALL_TRAFFIC
    assert job.template.task_count == 2
    for labels in (job.labels, job.template.labels):
        assert labels["cm-job"] == "1" and labels["cm-instance"] == "test" and labels["cm-managed"] == "true"
        assert labels["team"] == "data" and labels["cm-name"] == spec.name
    assert job.template.annotations["container-manager/name"] == spec.name


def test_empty_command_keeps_the_image_default() -> None:
    container = offline().build_job(make_spec(command=())).template.template.containers[0]
    assert list(container.command) == [] and list(container.args) == []


# Status mapping ----------------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FAILED = run_v2.Condition.State.CONDITION_FAILED
SUCCEEDED = run_v2.Condition.State.CONDITION_SUCCEEDED


def execution(**fields: Any) -> run_v2.Execution:
    completed = fields.pop("completed", None)
    result = run_v2.Execution(
        name="projects/p/locations/r/jobs/j/executions/j-abcde",
        task_count=1,
        template=run_v2.TaskTemplate(timeout=duration_pb2.Duration(seconds=60)),
        **fields,
    )
    if completed is not None:
        result.conditions.append(run_v2.Condition(type_="Completed", **completed))
    return result


def task(seconds: float = 5, *, code: int | None = 0, message: str = "", **attempt: Any) -> run_v2.Task:
    """A finished task that ran ``seconds``; ``code`` is the attempt's google.rpc status code."""
    result = run_v2.TaskAttemptResult(**attempt)
    if code is not None:
        result.status = status_pb2.Status(code=code, message=message)
    return run_v2.Task(
        index=0,
        start_time=T0,
        completion_time=T0 + timedelta(seconds=seconds),
        timeout=duration_pb2.Duration(seconds=60),
        last_attempt_result=result,
    )


DONE = {"start_time": T0, "completion_time": T0 + timedelta(seconds=5)}
FAILED_RUN = {
    **DONE,
    "failed_count": 1,
    "completed": {"state": FAILED, "message": "Task failed: exit code 42"},
}


@pytest.mark.parametrize(
    ("fields", "tasks", "expected"),
    [
        ({}, None, (ContainerState.RUNNING, None, "", False)),  # provisioning
        ({"start_time": T0, "running_count": 1}, None, (ContainerState.RUNNING, None, "", False)),
        ({**DONE, "succeeded_count": 1}, [task()], (ContainerState.EXITED, 0, "", False)),
        # The message quotes 42; the task says 3: the task wins.
        (FAILED_RUN, [task(code=2, exit_code=3)], (ContainerState.EXITED, 3, "", False)),
        # No exit code and no signal: None, never an invented number.
        (FAILED_RUN, [task(code=2, message="The container was terminated.")], (ContainerState.EXITED, None, "", False)),
        # A failed status with exit_code 0 (unset over JSON) is not a success.
        ({**DONE, "succeeded_count": 1}, [task(code=2)], (ContainerState.EXITED, None, "", False)),
        (FAILED_RUN, [task(60, code=4, message="The configured timeout was reached.", term_signal=9)], (ContainerState.EXITED, 137, "timeout", False)),
        # No wording at all, but it ran its whole Task.timeout: still a timeout.
        (FAILED_RUN, [task(60, code=2, term_signal=15)], (ContainerState.EXITED, 143, "timeout", False)),
        (FAILED_RUN, [task(code=8, message="Memory limit of 512 MiB exceeded with 530 MiB used.", term_signal=9)], (ContainerState.EXITED, 137, "oom", True)),
        (
            {**DONE, "cancelled_count": 1, "completed": {"state": FAILED, "execution_reason": run_v2.Condition.ExecutionReason.CANCELLED}},
            [task(code=1, term_signal=15)],
            (ContainerState.EXITED, 143, "cancelled", False),
        ),
        # Failed, but no task could be read: no exit code.
        (FAILED_RUN, [], (ContainerState.EXITED, None, "", False)),
        # Completed per its condition before completion_time is reported.
        ({"start_time": T0, "succeeded_count": 1, "completed": {"state": SUCCEEDED}}, [task()], (ContainerState.EXITED, 0, "", False)),
    ],
)  # fmt: skip
def test_execution_and_tasks_to_observed(
    fields: dict[str, Any], tasks: list[run_v2.Task] | None, expected: tuple[Any, ...]
) -> None:
    observed = observe_execution("cm-x", execution(**fields), tasks, {})
    assert (observed.state, observed.exit_code, observed.reason_hint, observed.oom_killed) == expected
    assert observed.container_id == "projects/p/locations/r/jobs/j/executions/j-abcde"
    assert observed.started_at is None or type(observed.started_at) is datetime
    if observed.state is ContainerState.EXITED and observed.exit_code != 0:
        assert observed.error


# Error mapping -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (gexc.NotFound("x"), NotFound),
        (gexc.Conflict("x"), Conflict),
        (gexc.AlreadyExists("x"), Conflict),
        (gexc.Aborted("x"), Unavailable),
        (gexc.TooManyRequests("x"), QuotaExceeded),
        (gexc.ResourceExhausted("x"), QuotaExceeded),
        (gexc.BadRequest("x"), InvalidSpec),
        (gexc.InvalidArgument("x"), InvalidSpec),
        (gexc.FailedPrecondition("x"), InvalidSpec),
        (gexc.PermissionDenied("x"), HostMisconfigured),
        (gexc.Forbidden("x"), HostMisconfigured),
        (gexc.Unauthenticated("x"), HostMisconfigured),
        (gexc.ServiceUnavailable("x"), Unavailable),
        (gexc.InternalServerError("x"), Unavailable),
        (gexc.DeadlineExceeded("x"), NoAnswer),
        (gexc.GatewayTimeout("x"), NoAnswer),
        (gexc.BadGateway("x"), Unavailable),
        (TimeoutError("x"), NoAnswer),
        (OSError("x"), Unavailable),
        (ValueError("x"), ExecutorError),
    ],
)
def test_error_translation(error: Exception, expected: type[ExecutorError]) -> None:
    translated = translate("get_job", error)
    assert type(translated) is expected
    assert "get_job" in str(translated)
