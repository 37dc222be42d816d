"""``ContainerTaskBackend`` on the mock executor: enqueueing, and job states mapped to task results.

Django 6 only (``django.tasks``); on Django 5.2 only the first test runs: the module imports
and the backend refuses to be built, saying why. The Docker test is
``tests/integration/tasks``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.utils import timezone

from container_manager import tasks
from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost
from executors.mock import Fault

NEEDS_DJANGO_6 = pytest.mark.skipif(
    django.VERSION < (6, 0),
    reason=f"django.tasks needs Django 6.0 or later; this is Django {django.get_version()}",
)
IMAGE = "registry.example.com/project:1"


@pytest.mark.skipif(django.VERSION >= (6, 0), reason="Django 6 has django.tasks")
def test_on_django_5_the_module_imports_and_the_backend_says_why_it_cannot_run() -> None:
    assert not tasks.HAS_DJANGO_TASKS
    with pytest.raises(ImproperlyConfigured, match=r"needs django.tasks \(Django 6.0 or later\)"):
        tasks.ContainerTaskBackend("default", {"OPTIONS": {"IMAGE": IMAGE}})


def backend_settings(**options: Any) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "container_manager.tasks.ContainerTaskBackend",
            "OPTIONS": {"IMAGE": IMAGE, "MEMORY_LIMIT": 64, "CPU_LIMIT": 0.5, **options},
        }
    }


@pytest.fixture
def configured(mock_host: ExecutorHost) -> Any:
    with override_settings(TASKS=backend_settings(HOST=mock_host.name, ENVIRONMENT={"MODE": "test"})):
        from django.tasks import default_task_backend

        yield default_task_backend


@NEEDS_DJANGO_6
@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"IMAGE": ""}, "IMAGE'] is required"),
        ({"IMAGES": "x"}, "unknown key(s) ['IMAGES']"),
        ({"ENVIRONMENT": ["A=1"]}, "must be a dict"),
        ({"ENVIRONMENT": {"CM_TASK": "{}"}}, "without CM_TASK"),
    ],
)
def test_a_misconfigured_backend_says_what_is_wrong(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ImproperlyConfigured) as caught:
        tasks.ContainerTaskBackend("default", backend_settings(**options)["default"])
    assert words in str(caught.value)


@NEEDS_DJANGO_6
@pytest.mark.django_db
def test_enqueue_creates_a_job_and_returns_a_ready_result(configured: Any, mock_host: ExecutorHost) -> None:
    from django.tasks import TaskResultStatus
    from django.tasks.signals import task_enqueued

    from tests import tasks_sample

    seen: list[Any] = []
    task_enqueued.connect(lambda sender, task_result, **kw: seen.append(task_result), weak=False)
    later = timezone.now() + timedelta(hours=1)
    result = tasks_sample.add.using(priority=7, run_after=later).enqueue(2, b=3)
    job = ContainerJob.objects.get(pk=int(result.id))
    assert (job.name, job.image, job.docker_host, job.priority, job.run_after) == (
        "task:tests.tasks_sample.add",
        IMAGE,
        mock_host,
        7,
        later,
    )
    assert job.argv == tasks.DEFAULT_COMMAND and job.memory_limit == 64 and job.created_by == "tasks:default"
    env = job.get_all_environment_variables()
    assert env["MODE"] == "test"
    assert env["CM_TASK"].startswith('{"task":"tests.tasks_sample.add","args":[2],"kwargs":{"b":3}')
    assert result.status == TaskResultStatus.READY and (result.args, result.kwargs) == ([2], {"b": 3})
    assert result.enqueued_at == job.created_at and result.worker_ids == [] and result.errors == []
    assert [r.id for r in seen] == [result.id]
    with pytest.raises(ValueError, match="not finished yet"):
        _ = result.return_value


@NEEDS_DJANGO_6
@pytest.mark.django_db
def test_a_completed_job_is_a_successful_result_with_the_reported_value(configured: Any) -> None:
    from django.tasks import TaskResultStatus

    from container_manager import taskrunner
    from tests import tasks_sample

    result = tasks_sample.add.enqueue(2, 3)
    job = ContainerJob.objects.get(pk=int(result.id))
    assert job.launch() == "completed"  # the mock runs no program: exit 0, no report
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value is None
    assert result.worker_ids == [f"cm-default-{job.pk}-1"] and result.attempts == 1
    assert result.started_at == ContainerJob.objects.get(pk=job.pk).started_at and result.finished_at
    # What the runner prints in a real container, as the attempt recorded it:
    ContainerExecution.objects.filter(job=job).update(stdout="hello\n" + taskrunner.result_line(5) + "\n")
    assert tasks_sample.add.get_result(result.id).return_value == 5


@NEEDS_DJANGO_6
@pytest.mark.django_db
def test_failed_attempts_are_the_results_errors(configured: Any, mock_executor: Any) -> None:
    from django.tasks import TaskResultStatus

    from container_manager import taskrunner
    from tests import tasks_sample

    with override_settings(TASKS=backend_settings(MAX_RETRIES=1, RETRY_BACKOFF_SECONDS=0)):
        result = tasks_sample.fail.enqueue("boom")
    job = ContainerJob.objects.get(pk=int(result.id))
    mock_executor.inject(Fault.EXIT, times=None, exit_code=1)
    for _ in range(10):
        if job.launch() in ("failed", "completed"):
            break
    try:
        raise ValueError("boom")
    except ValueError as exc:
        report = taskrunner.error_line(exc)
    ContainerExecution.objects.filter(job=job, attempt=1).update(stdout=report + "\n")
    result = tasks_sample.fail.get_result(result.id)
    assert result.status == TaskResultStatus.FAILED and result.attempts == 2
    first, second = result.errors
    assert first.exception_class_path == "builtins.ValueError" and "boom" in first.traceback
    assert first.exception_class is ValueError
    assert second.exception_class is tasks.ContainerTaskError
    assert second.traceback == f"attempt 2 (cm-default-{job.pk}-2): exit_code: exited with code 1"
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value


@NEEDS_DJANGO_6
@pytest.mark.django_db
def test_a_task_that_never_ran_says_why(configured: Any) -> None:
    from django.tasks import TaskResultStatus

    from tests import tasks_sample

    result = tasks_sample.add.enqueue(1, 1)
    ContainerJob.objects.get(pk=int(result.id)).cancel(message="not needed")
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.worker_ids == []
    (error,) = result.errors
    assert error.traceback == "the job never ran: cancelled"


@NEEDS_DJANGO_6
@pytest.mark.django_db
def test_states_in_between(configured: Any, mock_executor: Any) -> None:
    from django.tasks import TaskResultStatus

    from tests import tasks_sample

    mock_executor.inject(Fault.HANG)
    result = tasks_sample.add.enqueue(1, 2)
    job = ContainerJob.objects.get(pk=int(result.id))
    job.launch()
    result.refresh()
    assert result.status == TaskResultStatus.RUNNING and result.last_attempted_at is not None
    job.cancel()
    job.get_status()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.errors[0].traceback.endswith(
        "cancelled: cancelled"
    )


@NEEDS_DJANGO_6
@pytest.mark.django_db
def test_unknown_results(configured: Any, mock_host: ExecutorHost) -> None:
    from django.tasks import default_task_backend
    from django.tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch

    from tests import tasks_sample

    plain = ContainerJob.objects.create(image="busybox", memory_limit=64, docker_host=mock_host)
    for result_id in ("987654", "abc", "", "1" * 40, str(plain.pk), "-1"):
        with pytest.raises(TaskResultDoesNotExist):
            default_task_backend.get_result(result_id)
    result = tasks_sample.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch):
        tasks_sample.fail.get_result(result.id)


@NEEDS_DJANGO_6
@pytest.mark.django_db
def test_what_cannot_be_enqueued_creates_nothing(configured: Any) -> None:
    from django.tasks.exceptions import InvalidTask

    from tests import tasks_sample

    with pytest.raises(TypeError, match="must be JSON"):
        tasks_sample.add.enqueue(object(), 1)
    with pytest.raises(InvalidTask, match="Queue 'elsewhere' is not valid"):
        tasks_sample.add.using(queue_name="elsewhere").enqueue(1, 2)
    with (
        override_settings(TASKS=backend_settings(HOST="no-such-host")),
        pytest.raises(ImproperlyConfigured, match="no docker_host named 'no-such-host'"),
    ):
        tasks_sample.add.enqueue(1, 2)
    with override_settings(TASKS=backend_settings(MEMORY_LIMIT=10**6)), pytest.raises(Exception) as caught:
        tasks_sample.add.enqueue(1, 2)
    assert "memory_limit" in str(caught.value)
    assert not ContainerJob.objects.exists()


@NEEDS_DJANGO_6
@pytest.mark.django_db
def test_async_tasks_and_priorities_are_supported(configured: Any) -> None:
    from tests import tasks_sample

    result = tasks_sample.shout.enqueue("hi")
    assert ContainerJob.objects.get(pk=int(result.id)).name == "task:tests.tasks_sample.shout"
    assert ContainerJob.objects.get(pk=int(tasks_sample.whoami.enqueue().id)).priority == 5
