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

from tests.fakes.cloudrun_api import FakeCloudRun, behaviour_from_argv, parse_behaviour

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
    assert status == 200 and op["done"] is True
    assert op["name"].startswith(f"{PARENT}/operations/")
    assert op["response"]["@type"] == "type.googleapis.com/google.cloud.run.v2.Job"
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
