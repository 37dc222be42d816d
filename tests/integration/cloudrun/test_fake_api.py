"""The fake Run Admin API's own tests: wire shape and behaviour the executor tests rely on."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2
from google.protobuf import duration_pb2

from tests.fakes.cloudrun import FakeCloudRun, behaviour_from_argv, logging_api, parse_behaviour
from tests.fakes.cloudrun.wire import ApiError

PARENT = "projects/test-project/locations/us-central1"


@pytest.fixture
def clients(fake_cloudrun: FakeCloudRun) -> Iterator[tuple[run_v2.JobsClient, run_v2.ExecutionsClient]]:
    options = ClientOptions(api_endpoint=fake_cloudrun.url)
    jobs = run_v2.JobsClient(transport="rest", client_options=options, credentials=AnonymousCredentials())
    executions = run_v2.ExecutionsClient(
        transport="rest", client_options=options, credentials=AnonymousCredentials()
    )
    yield jobs, executions
    jobs.transport.close()
    executions.transport.close()


def new_job(**container: Any) -> run_v2.Job:
    return run_v2.Job(
        labels={"cm-managed": "true"},
        template=run_v2.ExecutionTemplate(
            labels={"cm-managed": "true"},
            template=run_v2.TaskTemplate(
                containers=[run_v2.Container(image="busybox", **container)], max_retries=0
            ),
        ),
    )


def http(fake: FakeCloudRun, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(fake.url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_job_lifecycle_through_the_real_client(
    fake_cloudrun: FakeCloudRun, clients: tuple[run_v2.JobsClient, run_v2.ExecutionsClient]
) -> None:
    jobs, executions = clients
    created = jobs.create_job(parent=PARENT, job=new_job(args=["exit 0"]), job_id="j1").result(timeout=5)
    assert created.name == f"{PARENT}/jobs/j1"
    assert created.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED

    with pytest.raises(gexc.Conflict) as conflict:
        jobs.create_job(parent=PARENT, job=new_job(), job_id="j1")
    assert "ALREADY_EXISTS" in str(conflict.value.response.json())

    operation = jobs.run_job(name=created.name)
    execution = operation.metadata
    assert execution.name.startswith(f"{created.name}/executions/j1-")
    assert operation.result(timeout=5).succeeded_count == 1  # the run operation ends with the execution

    job = jobs.get_job(name=created.name)
    assert job.latest_created_execution.name == execution.name
    assert job.execution_count == 1
    assert (
        job.latest_created_execution.completion_status
        == run_v2.ExecutionReference.CompletionStatus.EXECUTION_SUCCEEDED
    )
    done = executions.get_execution(name=execution.name)
    assert done.labels["cm-managed"] == "true"
    assert done.completion_time is not None and done.start_time is not None
    assert [c.type_ for c in done.conditions] == ["ResourcesAvailable", "Started", "Completed"]

    with pytest.raises(gexc.BadRequest, match="already completed"):
        executions.cancel_execution(name=execution.name)
    jobs.delete_job(name=created.name).result(timeout=5)
    with pytest.raises(gexc.NotFound):
        jobs.get_job(name=created.name)
    with pytest.raises(gexc.NotFound):
        executions.get_execution(name=execution.name)


def test_states_over_time_and_cancel(
    fake_cloudrun: FakeCloudRun, clients: tuple[run_v2.JobsClient, run_v2.ExecutionsClient]
) -> None:
    jobs, executions = clients
    fake_cloudrun.start_delay = 0.1
    jobs.create_job(parent=PARENT, job=new_job(command=["hang"]), job_id="j2").result(timeout=5)
    execution = jobs.run_job(name=f"{PARENT}/jobs/j2").metadata
    assert execution.start_time is None and execution.reconciling
    time.sleep(0.15)
    running = executions.get_execution(name=execution.name)
    assert running.running_count == 1 and running.start_time is not None
    executions.cancel_execution(name=execution.name)
    cancelled = executions.get_execution(name=execution.name)
    assert cancelled.cancelled_count == 1
    completed = cancelled.conditions[-1]
    assert completed.execution_reason == run_v2.Condition.ExecutionReason.CANCELLED


def test_listing_across_jobs_paginates(
    fake_cloudrun: FakeCloudRun, clients: tuple[run_v2.JobsClient, run_v2.ExecutionsClient]
) -> None:
    jobs, executions = clients
    fake_cloudrun.list_delay = 0
    for i in range(5):
        jobs.create_job(parent=PARENT, job=new_job(), job_id=f"j{i}").result(timeout=5)
        jobs.run_job(name=f"{PARENT}/jobs/j{i}")
    fake_cloudrun.reset_counts()
    pager = executions.list_executions(request={"parent": f"{PARENT}/jobs/-", "page_size": 2})
    assert len(list(pager)) == 5
    assert fake_cloudrun.calls["ListExecutions"] == 3
    assert len(list(executions.list_executions(parent=f"{PARENT}/jobs/j3"))) == 1
    with pytest.raises(gexc.NotFound):
        list(executions.list_executions(parent=f"{PARENT}/jobs/nope"))


def test_wire_shape(fake_cloudrun: FakeCloudRun) -> None:
    job = {"template": {"template": {"containers": [{"image": "busybox"}], "vpcAccess": {"egress": 1}}}}
    status, op = http(fake_cloudrun, "POST", f"/v2/{PARENT}/jobs?jobId=w1", job)
    # CreateJob is a long-running operation that finishes later.
    assert status == 200 and "done" not in op and op["metadata"]["reconciling"] is True
    assert op["name"].startswith(f"{PARENT}/operations/")
    time.sleep(fake_cloudrun.operation_delay)
    _, op = http(fake_cloudrun, "GET", f"/v2/{op['name']}")
    assert op["done"] is True and op["response"]["@type"] == "type.googleapis.com/google.cloud.run.v2.Job"
    # Enums come back by name, or by number when the client asks for it (as google-cloud-run does).
    assert op["response"]["template"]["template"]["vpcAccess"]["egress"] == "ALL_TRAFFIC"
    _, as_ints = http(fake_cloudrun, "GET", f"/v2/{PARENT}/jobs/w1?%24alt=json%3Benum-encoding%3Dint")
    assert as_ints["terminalCondition"]["state"] == 4
    status, error = http(fake_cloudrun, "GET", f"/v2/{PARENT}/jobs/missing")
    assert status == 404 and error["error"]["status"] == "NOT_FOUND"
    status, error = http(fake_cloudrun, "POST", f"/v2/{PARENT}/jobs?jobId=Bad_Id", job)
    assert status == 400 and error["error"]["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("limits", "ok"),
    [
        ({"cpu": "1", "memory": "512Mi"}, True),
        ({"cpu": "4", "memory": "2Gi"}, True),
        ({"cpu": "4", "memory": "1Gi"}, False),
        ({"cpu": "1", "memory": "8Gi"}, False),
        ({"cpu": "3", "memory": "2Gi"}, False),
        ({"cpu": "0.5", "memory": "512Mi"}, False),
    ],
)
def test_resource_validation(fake_cloudrun: FakeCloudRun, limits: dict[str, str], ok: bool) -> None:
    job = {"template": {"template": {"containers": [{"image": "busybox", "resources": {"limits": limits}}]}}}
    status, _ = http(fake_cloudrun, "POST", f"/v2/{PARENT}/jobs?jobId=r1", job)
    assert (status == 200) is ok


def test_injected_errors_and_counts(fake_cloudrun: FakeCloudRun) -> None:
    fake_cloudrun.inject("ListJobs", 429, times=2)
    assert http(fake_cloudrun, "GET", f"/v2/{PARENT}/jobs")[1]["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert http(fake_cloudrun, "GET", f"/v2/{PARENT}/jobs")[0] == 429
    assert http(fake_cloudrun, "GET", f"/v2/{PARENT}/jobs")[0] == 200
    assert fake_cloudrun.calls["ListJobs"] == 3


def test_behaviour_scripts() -> None:
    assert parse_behaviour("start=0.1;sleep=2;exit=3") == parse_behaviour(" start=0.1 ; sleep=2;exit=3 ")
    script = parse_behaviour("sleep=2;exit=3")
    assert (script.duration, script.exit_code, script.hang) == (2.0, 3, False)
    assert parse_behaviour("hang").hang
    argv = behaviour_from_argv(["sh", "-c", "echo hi; sleep 1; sleep 0.5; exit 4"])
    assert argv is not None and (argv.duration, argv.exit_code) == (1.5, 4)
    assert behaviour_from_argv(["false"]) is not None
    assert behaviour_from_argv([]) is None
    with pytest.raises(ValueError):
        parse_behaviour("explode=1")


def test_lists_lag_behind_writes(
    fake_cloudrun: FakeCloudRun, clients: tuple[run_v2.JobsClient, run_v2.ExecutionsClient]
) -> None:
    jobs, executions = clients
    fake_cloudrun.list_delay = 30
    jobs.create_job(parent=PARENT, job=new_job(command=["hang"]), job_id="lag").result(timeout=5)
    execution = jobs.run_job(name=f"{PARENT}/jobs/lag").metadata
    assert list(executions.list_executions(parent=f"{PARENT}/jobs/lag")) == []
    assert [j.name for j in jobs.list_jobs(parent=PARENT)] == []
    # Read by name, they are there at once: the job already counts its execution.
    assert executions.get_execution(name=execution.name).name == execution.name
    job = jobs.get_job(name=f"{PARENT}/jobs/lag")
    assert job.execution_count == 1 and job.latest_created_execution.name == execution.name
    for item in [*fake_cloudrun.executions.values(), *fake_cloudrun.jobs.values()]:
        item.listed_at -= 30  # time passes
    assert [e.name for e in executions.list_executions(parent=f"{PARENT}/jobs/lag")] == [execution.name]


@pytest.mark.parametrize(
    ("script", "exit_code", "signal", "message"),
    [
        ("sleep=0.1;exit=3", 3, 0, "The container exited with an error."),
        ("sleep=0.1", 0, 0, ""),
        ("sleep=0.1;oom", 0, 9, "Memory limit of 512 MiB exceeded"),
        ("sleep=0.1;crash", 0, 0, "The container was terminated."),
        ("start=0.3;hang", 0, 9, "The configured timeout was reached."),
    ],
)
def test_tasks_carry_the_last_attempt_result(
    fake_cloudrun: FakeCloudRun,
    clients: tuple[run_v2.JobsClient, run_v2.ExecutionsClient],
    script: str,
    exit_code: int,
    signal: int,
    message: str,
) -> None:
    jobs, _ = clients
    fake_cloudrun.time_scale = 5.0  # slow enough to see the task before it starts
    job = new_job(env=[run_v2.EnvVar(name="FAKE_BEHAVIOUR", value=script)])
    job.template.template.timeout = duration_pb2.Duration(seconds=1)
    jobs.create_job(parent=PARENT, job=job, job_id="t1").result(timeout=5)
    execution = jobs.run_job(name=f"{PARENT}/jobs/t1").metadata
    options = ClientOptions(api_endpoint=fake_cloudrun.url)
    tasks_client = run_v2.TasksClient(
        transport="rest", client_options=options, credentials=AnonymousCredentials()
    )
    [pending] = tasks_client.list_tasks(parent=execution.name)
    assert "last_attempt_result" not in pending and pending.start_time is None
    fake_cloudrun.finish_all()
    [task] = tasks_client.list_tasks(parent=execution.name)
    result = task.last_attempt_result
    assert (result.exit_code, result.term_signal) == (exit_code, signal)
    assert (result.status.code == 0) is (script == "sleep=0.1")
    assert message in result.status.message
    assert task.start_time is not None and task.completion_time is not None
    assert tasks_client.get_task(name=task.name).name == task.name
    tasks_client.transport.close()


def test_reserved_and_oversized_environment_is_refused(fake_cloudrun: FakeCloudRun) -> None:
    def create(env: list[dict[str, str]]) -> tuple[int, Any]:
        job = {"template": {"template": {"containers": [{"image": "busybox", "env": env}]}}}
        return http(fake_cloudrun, "POST", f"/v2/{PARENT}/jobs?jobId=env-{len(fake_cloudrun.calls)}", job)

    for name in ("PORT", "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_OTHER", "X_GOOGLE_X", "K_SERVICE"):
        status, error = create([{"name": name, "value": "1"}])
        assert status == 400 and "reserved" in error["error"]["message"], name
    assert create([{"name": "BIG", "value": "x" * 32769}])[0] == 400
    assert create([{"name": f"V{i}", "value": "1"} for i in range(1001)])[0] == 400
    assert create([{"name": "FINE", "value": "x" * 32768}])[0] == 200


def test_limits_answer_resource_exhausted(fake_cloudrun: FakeCloudRun) -> None:
    fake_cloudrun.max_jobs = 1
    job = {"template": {"template": {"containers": [{"image": "busybox", "command": ["hang"]}]}}}
    assert http(fake_cloudrun, "POST", f"/v2/{PARENT}/jobs?jobId=l1", job)[0] == 200
    status, error = http(fake_cloudrun, "POST", f"/v2/{PARENT}/jobs?jobId=l2", job)
    assert status == 429 and error["error"]["status"] == "RESOURCE_EXHAUSTED"
    fake_cloudrun.max_running_executions = 1
    time.sleep(fake_cloudrun.operation_delay)
    assert http(fake_cloudrun, "POST", f"/v2/{PARENT}/jobs/l1:run", {})[0] == 200
    assert http(fake_cloudrun, "POST", f"/v2/{PARENT}/jobs/l1:run", {})[0] == 429


def test_a_fault_can_hit_a_request_the_server_carried_out(fake_cloudrun: FakeCloudRun) -> None:
    fake_cloudrun.operation_delay = 0
    job = {"template": {"template": {"containers": [{"image": "busybox"}]}}}
    http(fake_cloudrun, "POST", f"/v2/{PARENT}/jobs?jobId=a1", job)
    fake_cloudrun.inject("RunJob", 503, apply=True)
    assert http(fake_cloudrun, "POST", f"/v2/{PARENT}/jobs/a1:run", {})[0] == 503
    assert len(fake_cloudrun.executions_of("a1")) == 1
    fake_cloudrun.inject("RunJob", 503)
    assert http(fake_cloudrun, "POST", f"/v2/{PARENT}/jobs/a1:run", {})[0] == 503
    assert len(fake_cloudrun.executions_of("a1")) == 1


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ('logName="projects/p/logs/a"', {"a"}),
        ('logName="projects/p/logs/a" OR logName="projects/p/logs/b"', {"a", "b"}),
        (
            'resource.type="cloud_run_job" AND (logName="projects/p/logs/a" OR logName="projects/p/logs/c")',
            {"a"},
        ),
        ('labels."run.googleapis.com/execution_name"="e1" logName!="projects/p/logs/a"', {"b"}),
        ('NOT logName="projects/p/logs/a" timestamp>="2026-01-01T00:00:01Z"', {"b", "c"}),
    ],
)
def test_the_logging_filter_language(query: str, names: set[str]) -> None:
    def entry(name: str, execution: str, second: int) -> dict[str, Any]:
        return {
            "logName": f"projects/p/logs/{name}",
            "resource": {"type": "cloud_run_job" if name != "c" else "other"},
            "labels": {"run.googleapis.com/execution_name": execution},
            "timestamp": f"2026-01-01T00:00:0{second}.000000Z",
            "insertId": name,
        }

    entries = [entry("a", "e1", 0), entry("b", "e1", 1), entry("c", "e2", 2)]
    got = logging_api.list_entries(entries, {"resourceNames": ["projects/p"], "filter": query}, "2027")
    assert {e["logName"].rsplit("/", 1)[-1] for e in got.get("entries", [])} == names
    with pytest.raises(ApiError):
        logging_api.list_entries(
            entries, {"resourceNames": ["projects/p"], "filter": 'logName="x" AND ('}, "2027"
        )
