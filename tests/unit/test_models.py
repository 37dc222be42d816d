"""Model behaviour that needs no running container: editing rules, querysets, history, deletion, secrets."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db.models import ProtectedError
from django.utils import timezone

from container_manager.exceptions import HistoryIsAppendOnly, JobStateError
from container_manager.models import (
    ContainerExecution,
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    JobEvent,
)
from container_manager.states import TERMINAL, JobStatus
from container_manager.transitions import transition

pytestmark = pytest.mark.django_db


def _job(**kwargs: Any) -> ContainerJob:
    values: dict[str, Any] = {"image": "busybox", "command": "true"}
    values.update(kwargs)
    return ContainerJob.objects.create(**values)


def _force(job: ContainerJob, status: str, **fields: Any) -> ContainerJob:
    """Put a job in ``status`` as the reconciler would (a plain UPDATE, like the daemon's CAS)."""
    if JobStatus(status) in TERMINAL:
        fields.setdefault("finished_at", timezone.now())
    ContainerJob.objects.filter(pk=job.pk).update(status=status, **fields)
    job.refresh_from_db()
    return job


def _execution(job: ContainerJob, host: ExecutorHost | None, attempt: int = 1, **kwargs: Any) -> Any:
    values: dict[str, Any] = {
        "job": job,
        "attempt": attempt,
        "executor_host": host,
        "host_name": host.name if host else "",
        "container_name": f"cm-test-{job.pk}-{attempt}",
    }
    values.update(kwargs)
    return ContainerExecution.objects.create(**values)


# Creating -----------------------------------------------------------------------------------


def test_new_jobs_are_pending_and_cannot_start_in_another_status() -> None:
    assert _job().status == "pending"
    with pytest.raises(ValidationError) as info:
        _job(status="running")
    assert "status" in info.value.message_dict
    assert ContainerJob.objects.count() == 1


# Editing ------------------------------------------------------------------------------------


def test_save_on_a_pending_job_updates_user_fields() -> None:
    job = _job(name="before", memory_limit=256)
    job.name, job.memory_limit, job.command, job.priority = "after", 1024, ["echo", "a b"], 5
    job.save()
    row = ContainerJob.objects.get(pk=job.pk)
    assert (row.name, row.memory_limit, row.command, row.priority) == ("after", 1024, "echo 'a b'", 5)


def test_save_validates_edits_and_writes_nothing_when_invalid() -> None:
    job = _job(memory_limit=256)
    job.memory_limit = 99999
    with pytest.raises(ValidationError):
        job.save()
    assert ContainerJob.objects.get(pk=job.pk).memory_limit == 256


def test_save_refuses_changed_machine_fields_and_writes_nothing() -> None:
    job = _job()
    before = ContainerJob.objects.filter(pk=job.pk).values().get()
    job.status, job.attempts, job.exit_code, job.finished_at = "completed", 7, 0, timezone.now()
    job.name = "renamed"
    with pytest.raises(JobStateError) as info:
        job.save()
    assert all(name in str(info.value) for name in ("status", "attempts", "exit_code", "finished_at"))
    assert ContainerJob.objects.filter(pk=job.pk).values().get() == before


def test_save_with_update_fields_writes_only_those() -> None:
    job = _job(name="a", priority=1)
    job.name, job.priority = "b", 9
    job.save(update_fields=["name"])
    row = ContainerJob.objects.get(pk=job.pk)
    assert (row.name, row.priority) == ("b", 1)


@pytest.mark.parametrize("status", ["launching", "running", "retrying", "completed", "failed", "cancelled"])
def test_save_on_a_non_pending_job_is_refused(status: str) -> None:
    job = _force(_job(name="orig"), status)
    before = ContainerJob.objects.filter(pk=job.pk).values().get()
    job.name = "changed"
    with pytest.raises(JobStateError, match=status):
        job.save()
    assert ContainerJob.objects.filter(pk=job.pk).values().get() == before


def test_stale_object_cannot_overwrite_what_the_reconciler_recorded() -> None:
    stale = _job(memory_limit=256)
    # The daemon claims the job meanwhile.
    assert transition(stale.pk, "pending", "launching", actor="daemon", fields={"attempts": 1})
    stale.memory_limit = 1024
    with pytest.raises(JobStateError):
        stale.save()
    row = ContainerJob.objects.get(pk=stale.pk)
    assert (row.status, row.attempts, row.memory_limit) == ("launching", 1, 256)
    assert stale.status == "pending"  # the object stays stale; the row is the truth


def test_saving_a_deleted_job_is_refused() -> None:
    job = _job()
    ContainerJob.objects.filter(pk=job.pk).delete()
    with pytest.raises(JobStateError, match="deleted"):
        job.save()


# Querysets ----------------------------------------------------------------------------------


def test_status_querysets() -> None:
    jobs = {status: _force(_job(name=status), status) for status in JobStatus}
    ids = {status: job.pk for status, job in jobs.items()}

    def names(qs: Any) -> set[str]:
        return set(qs.values_list("name", flat=True))

    assert names(ContainerJob.objects.pending()) == {"pending"}
    assert names(ContainerJob.objects.active()) == {"launching", "running"}
    assert names(ContainerJob.objects.unfinished()) == {"pending", "launching", "running", "retrying"}
    assert names(ContainerJob.objects.failed()) == {"failed", "timeout"}
    assert names(ContainerJob.objects.terminal()) == {"completed", "failed", "timeout", "cancelled"}
    assert names(ContainerJob.objects.completed()) == {"completed"}
    assert names(ContainerJob.objects.cancelled()) == {"cancelled"}
    assert names(ContainerJob.objects.retrying()) == {"retrying"}
    # They chain like any queryset.
    assert list(ContainerJob.objects.failed().filter(pk=ids["timeout"]).values_list("pk", flat=True)) == [
        ids["timeout"]
    ]


def test_recent() -> None:
    new, old, older = _job(name="new"), _job(name="old"), _job(name="older")
    now = timezone.now()
    ContainerJob.objects.filter(pk=old.pk).update(created_at=now - timedelta(hours=25))
    ContainerJob.objects.filter(pk=older.pk).update(created_at=now - timedelta(days=10))
    assert set(ContainerJob.objects.recent()) == {new}
    assert set(ContainerJob.objects.recent(hours=24)) == {new}
    assert set(ContainerJob.objects.recent(hours=48)) == {new, old}
    assert set(ContainerJob.objects.recent(hours=0.5)) == {new}
    assert set(ContainerJob.objects.recent(hours=24 * 30)) == {new, old, older}


def test_by_host_counts_pinned_jobs_and_jobs_that_ran_there() -> None:
    a = ExecutorHost.objects.create(name="a", executor_type="mock")
    b = ExecutorHost.objects.create(name="b", executor_type="mock")
    pinned = _job(docker_host=a)
    ran_on_a = _job()
    _execution(ran_on_a, a)
    elsewhere = _job(docker_host=b)
    _execution(elsewhere, b)
    unplaced = _job()
    for key in (a, a.pk, "a"):
        assert set(ContainerJob.objects.by_host(key)) == {pinned, ran_on_a}
    assert set(ContainerJob.objects.by_host(b)) == {elsewhere}
    assert unplaced not in ContainerJob.objects.by_host(a)
    with pytest.raises(ExecutorHost.DoesNotExist):
        ContainerJob.objects.by_host("nosuch")


def test_by_host_lists_each_job_once_with_many_attempts() -> None:
    host = ExecutorHost.objects.create(name="a", executor_type="mock")
    job = _job(docker_host=host)
    for attempt in (1, 2, 3):
        _execution(job, host, attempt)
    assert list(ContainerJob.objects.by_host(host)) == [job]


def test_due_in_claim_order() -> None:
    now = timezone.now()
    low = _job(name="low")
    high = _job(name="high", priority=10)
    later = _job(name="later", run_after=now + timedelta(hours=1))
    ready = _job(name="ready", run_after=now - timedelta(seconds=1))
    retrying = _force(_job(name="retrying"), "retrying", run_after=now - timedelta(seconds=1))
    waiting_retry = _force(_job(name="waiting"), "retrying", run_after=now + timedelta(minutes=5))
    _force(_job(name="running"), "running")
    names = list(ContainerJob.objects.due(now).values_list("name", flat=True))
    assert names == ["high", "low", "ready", "retrying"]
    assert later.name not in names and waiting_retry.name not in names
    assert [j.name for j in ContainerJob.objects.due(now + timedelta(hours=2))][-2:] == [
        "retrying",
        "waiting",
    ]
    assert {low, high, ready, retrying} <= set(ContainerJob.objects.due())


def test_host_querysets() -> None:
    ok = ExecutorHost.objects.create(name="ok", executor_type="mock", health_status="healthy")
    unknown = ExecutorHost.objects.create(name="unknown", executor_type="docker")
    sick = ExecutorHost.objects.create(name="sick", executor_type="mock", health_status="unhealthy")
    off = ExecutorHost.objects.create(name="off", executor_type="mock", is_active=False)
    run = ExecutorHost.objects.create(
        name="run", executor_type="cloudrun", connection_string="projects/p1/locations/europe-west1"
    )
    assert set(ExecutorHost.objects.available()) == {ok, unknown, run}
    assert set(ExecutorHost.objects.by_type("mock")) == {ok, sick, off}
    assert set(ExecutorHost.objects.by_type("cloudrun")) == {run}
    assert set(ExecutorHost.objects.available().by_type("mock")) == {ok}


def test_running_count_annotation() -> None:
    host = ExecutorHost.objects.create(name="h", executor_type="mock", max_concurrent_jobs=3)
    _execution(_job(), host, status="running")
    _execution(_job(), host, status="launching")
    _execution(_job(), host, status="completed")
    assert ExecutorHost.objects.with_running_count().get(pk=host.pk).running_jobs == 2
    assert host.get_capacity() == {"max_concurrent_jobs": 3, "running": 2, "available": 1}


# Properties ---------------------------------------------------------------------------------


def test_is_terminal_status() -> None:
    job = _job()
    for status in JobStatus:
        job.status = status.value
        assert job.is_terminal_status is (status in TERMINAL)


def test_runtime_duration() -> None:
    job = _job()
    assert job.runtime_duration is None
    start = timezone.now() - timedelta(seconds=30)
    job.started_at = start
    running = job.runtime_duration
    assert running is not None and timedelta(seconds=29) < running < timedelta(seconds=60)
    job.finished_at = start + timedelta(seconds=12)
    assert job.runtime_duration == timedelta(seconds=12)


def test_resource_utilization_without_an_attempt() -> None:
    usage = _job(memory_limit=100).resource_utilization
    assert usage["source"] == "none"
    assert usage["memory_percent"] is None and usage["cpu_percent"] is None
    assert usage["memory_limit_bytes"] == 100 * 1024 * 1024


def test_resource_utilization_recorded_after_the_attempt() -> None:
    job = _force(_job(memory_limit=100), "completed")
    start = timezone.now() - timedelta(seconds=10)
    _execution(
        job,
        None,
        status="completed",
        started_at=start,
        finished_at=start + timedelta(seconds=10),
        peak_memory_bytes=25 * 1024 * 1024,
        cpu_seconds=5.0,
    )
    usage = job.resource_utilization
    assert usage["source"] == "recorded"
    assert usage["memory_percent"] == 25.0
    assert usage["cpu_percent"] == 50.0


# Environment --------------------------------------------------------------------------------


def test_template_and_overrides() -> None:
    template = EnvironmentVariableTemplate.objects.create(
        name="python-production",
        environment_variables_text="""
      PYTHONPATH=/app
      ENV=production
      DB_PASSWORD=hunter2
      """,
    )
    assert template.get_environment_variables_dict() == {
        "PYTHONPATH": "/app",
        "ENV": "production",
        "DB_PASSWORD": "hunter2",
    }
    assert template.validate_format() == []
    job = _job(environment_template=template, override_environment="ENV=staging\nEXTRA='x y'")
    assert job.get_all_environment_variables() == {
        "PYTHONPATH": "/app",
        "ENV": "staging",
        "DB_PASSWORD": "hunter2",
        "EXTRA": "x y",
    }
    safe = job.get_safe_environment_variables()
    assert safe["DB_PASSWORD"] != "hunter2" and safe["ENV"] == "staging"


def test_job_without_template() -> None:
    assert _job(override_environment="A=1").get_all_environment_variables() == {"A": "1"}
    assert _job().get_all_environment_variables() == {}


def test_validate_format_reports_the_line() -> None:
    template = EnvironmentVariableTemplate(name="t", environment_variables_text="A=1\n\nB='open")
    errors = template.validate_format()
    assert len(errors) == 1 and errors[0].startswith("line 3:")


def test_get_environment_variables_dict_on_text_broken_by_sql() -> None:
    template = EnvironmentVariableTemplate.objects.create(name="t", environment_variables_text="A=1")
    job = _job(environment_template=template)
    EnvironmentVariableTemplate.objects.filter(pk=template.pk).update(
        environment_variables_text="TOKEN='hunter2"
    )
    template.refresh_from_db()
    with pytest.raises(ValidationError) as info:
        template.get_environment_variables_dict()
    assert "environment_variables_text" in info.value.message_dict
    assert "hunter2" not in str(info.value)
    job = ContainerJob.objects.get(pk=job.pk)
    with pytest.raises(ValidationError) as info:
        job.get_all_environment_variables()
    assert "hunter2" not in str(info.value)
    # A new job naming the broken template is refused, naming the template and the line.
    with pytest.raises(ValidationError) as info:
        _job(environment_template=template)
    assert "line 1" in info.value.message_dict["environment_template"][0]


# History ------------------------------------------------------------------------------------


def test_history_is_append_only() -> None:
    job = _job()
    transition(job.pk, "pending", "cancelled", actor="t")
    event = JobEvent.objects.get(job=job)
    event.message = "rewritten"
    with pytest.raises(HistoryIsAppendOnly):
        event.save()
    assert JobEvent.objects.get(pk=event.pk).message != "rewritten"
    assert "pending -> cancelled by t" in str(event)


# Deleting hosts -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["pending", "launching", "running", "retrying"])
def test_host_with_unfinished_pinned_jobs_cannot_be_deleted(status: str) -> None:
    host = ExecutorHost.objects.create(name="h", executor_type="mock")
    job = _force(_job(docker_host=host), status)
    with pytest.raises(ProtectedError):
        host.delete()
    assert ExecutorHost.objects.filter(pk=host.pk).exists()
    assert ContainerJob.objects.get(pk=job.pk).docker_host_id == host.pk


def test_host_with_a_live_attempt_cannot_be_deleted() -> None:
    host = ExecutorHost.objects.create(name="h", executor_type="mock")
    job = _force(_job(), "running")
    _execution(job, host, status="running")
    with pytest.raises(ProtectedError):
        host.delete()
    assert ExecutorHost.objects.filter(pk=host.pk).exists()


def test_deleting_a_host_keeps_finished_jobs_and_their_history() -> None:
    host = ExecutorHost.objects.create(name="h", executor_type="mock")
    job = _force(_job(docker_host=host), "completed", exit_code=0)
    execution = _execution(job, host, status="completed", exit_code=0)
    transition(_job().pk, "pending", "cancelled", actor="t")
    host.delete()
    job.refresh_from_db()
    execution.refresh_from_db()
    assert job.docker_host_id is None and job.status == "completed"
    assert execution.executor_host_id is None and execution.host_name == "h"
    assert ContainerJob.objects.count() == 2


def test_template_in_use_cannot_be_deleted() -> None:
    template = EnvironmentVariableTemplate.objects.create(name="t", environment_variables_text="A=1")
    _job(environment_template=template)
    with pytest.raises(ProtectedError):
        template.delete()


def test_deleting_a_job_deletes_its_attempts_and_history() -> None:
    job = _job()
    transition(job.pk, "pending", "cancelled", actor="t")
    _execution(job, None, status="cancelled")
    job.delete()
    assert (ContainerExecution.objects.count(), JobEvent.objects.count()) == (0, 0)


# Secrets ------------------------------------------------------------------------------------


def test_reprs_never_show_secret_values() -> None:
    from container_manager.conf import get_policy
    from reconciler.spec import build_spec

    template = EnvironmentVariableTemplate.objects.create(
        name="t", environment_variables_text="DB_PASSWORD=hunter2\nLOG_LEVEL=INFO"
    )
    job = _job(environment_template=template, override_environment="API_TOKEN=hunter3")
    spec = build_spec(job, 1, get_policy())
    for text in (repr(template), str(template), repr(job), str(job), repr(spec), str(spec)):
        assert "hunter2" not in text and "hunter3" not in text
    assert "DB_PASSWORD" in repr(template) and "API_TOKEN" in repr(spec)
    # The spec still carries the values to the executor, and knows which are secret.
    assert spec.env_dict["API_TOKEN"] == "hunter3"
    assert {"API_TOKEN", "DB_PASSWORD"} <= spec.secret_keys
    assert "LOG_LEVEL" not in spec.secret_keys


def test_validation_errors_never_show_secret_values() -> None:
    with pytest.raises(ValidationError) as info:
        _job(override_environment="API_TOKEN='hunter2")
    assert "hunter2" not in str(info.value)


@pytest.mark.django_db
def test_host_capacity_defaults_from_settings(settings: Any) -> None:
    settings.CONTAINER_MANAGER = {"DEFAULT_MAX_CONCURRENT_JOBS": 3}
    host = ExecutorHost.objects.create(name="from-settings", executor_type="mock")
    assert host.max_concurrent_jobs == 3
    assert ExecutorHost.objects.get(pk=host.pk).max_concurrent_jobs == 3
