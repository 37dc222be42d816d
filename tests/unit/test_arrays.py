"""Job arrays: N jobs from one description, their index in the container, and their parallelism cap."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from container_manager.conf import get_policy
from container_manager.exceptions import JobStateError
from container_manager.models import ContainerJob, ExecutorHost, JobArray
from reconciler.spec import build_spec
from tests.mockworld import MockWorld

pytestmark = pytest.mark.django_db


FIELDS = {"image": "busybox", "command": "sleep 5", "memory_limit": 64, "cpu_limit": 0.5}


def test_an_array_is_n_jobs_that_know_their_index(mock_world: MockWorld, mock_host: ExecutorHost) -> None:
    array = ContainerJob.objects.create_array(3, name="render", **FIELDS)
    jobs = list(array.jobs.order_by("array_index"))  # type: ignore[attr-defined]
    assert [(j.array_index, j.array_size, j.array_id, j.name) for j in jobs] == [
        (index, 3, array.pk, "render") for index in range(3)
    ]
    assert all(j.status == "pending" and j.memory_limit == 64 for j in jobs)
    assert mock_world.claimed() == [j.pk for j in jobs]
    for job in jobs:
        env = mock_world.env_of(job)
        assert env["CM_ARRAY_INDEX"] == str(job.array_index) and env["CM_ARRAY_SIZE"] == "3"
        assert env["CM_JOB_ID"] == str(job.pk) and env["CM_ATTEMPT"] == "1"
    assert array.summary() == f"array {array.pk} (render) of 3: 3 running"


def test_a_job_outside_an_array_has_no_array_variables(
    mock_world: MockWorld, mock_host: ExecutorHost
) -> None:
    job = ContainerJob.objects.create(**FIELDS, override_environment="CM_ARRAY_INDEX=7\nCM_JOB_ID=x")
    mock_world.claimed()
    env = mock_world.env_of(job)
    assert env["CM_JOB_ID"] == str(job.pk), "the reconciler's values win over the job's own"
    assert env["CM_ARRAY_INDEX"] == "7", "only the job's own variable: it is in no array"
    assert "CM_ARRAY_SIZE" not in env


def test_parallelism_caps_how_many_run_at_once(mock_world: MockWorld, mock_host: ExecutorHost) -> None:
    array = ContainerJob.objects.create_array(5, parallelism=2, **FIELDS)
    jobs = list(array.jobs.order_by("array_index"))  # type: ignore[attr-defined]
    claimed = mock_world.reconciler.claim()
    assert [s.job.pk for s in claimed.snapshots] == [jobs[0].pk, jobs[1].pk]
    assert claimed.more, "this batch filled the array's room: the next claim counts again"
    assert mock_world.reconciler.claim().snapshots == [], "two run: the others wait"
    for snap in claimed.snapshots:
        mock_world.reconciler.reconcile(snap.job.pk)
    mock_world.clock.advance(6)
    mock_world.reconciler.reconcile(jobs[0].pk)
    assert mock_world.claimed() == [jobs[2].pk], "one ended: one more starts"
    assert array.status_counts()["running"] == 2 and array.status_counts()["completed"] == 1


def test_a_full_array_does_not_hold_up_other_jobs(mock_world: MockWorld, mock_host: ExecutorHost) -> None:
    array = ContainerJob.objects.create_array(50, parallelism=1, priority=100, **FIELDS)
    other = ContainerJob.objects.create(**FIELDS)
    first = mock_world.reconciler.claim()
    assert [s.job.array_id for s in first.snapshots] == [array.pk]
    assert first.more, "the batch held more of the array than it had room for: claim again"
    assert mock_world.claimed() == [other.pk], "the array is at its cap: its jobs are no longer read"
    assert mock_world.claimed() == []
    assert array.status_counts()["launching"] == 1 and array.status_counts()["pending"] == 49


def test_an_array_may_wait_for_other_jobs(mock_world: MockWorld, mock_host: ExecutorHost) -> None:
    setup = ContainerJob.objects.create(**FIELDS)
    array = ContainerJob.objects.create_array(2, depends_on=[setup], **FIELDS)
    assert mock_world.claimed() == [setup.pk]
    assert set(ContainerJob.objects.waiting_on_dependencies()) == set(array.jobs.all())  # type: ignore[attr-defined]
    mock_world.clock.advance(6)
    mock_world.reconciler.reconcile(setup.pk)
    assert len(mock_world.claimed()) == 2


@pytest.mark.parametrize(
    ("size", "kw", "field"),
    [
        (0, {}, "array_size"),
        (10_001, {}, "array_size"),
        ("3", {}, "array_size"),
        (True, {}, "array_size"),
        (3, {"parallelism": 0}, "parallelism"),
        (3, {"parallelism": 1.5}, "parallelism"),
        (3, {"memory_limit": 10**6}, "memory_limit"),
        (3, {"array_index": 2}, "array_index"),
        (3, {"depends_on": [987654]}, "depends_on"),
    ],
)
def test_a_bad_array_is_refused_whole(
    mock_host: ExecutorHost, size: Any, kw: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        ContainerJob.objects.create_array(size, **{**FIELDS, **kw})
    assert field in caught.value.message_dict, caught.value.message_dict
    assert not JobArray.objects.exists() and not ContainerJob.objects.exists()


def test_max_array_size_comes_from_the_settings(mock_host: ExecutorHost, settings: Any) -> None:
    settings.CONTAINER_MANAGER = {"MAX_ARRAY_SIZE": 4}
    with pytest.raises(ValidationError, match="1 to 4 jobs"):
        ContainerJob.objects.create_array(5, **FIELDS)
    assert ContainerJob.objects.create_array(4, **FIELDS).jobs.count() == 4  # type: ignore[attr-defined]


def test_the_array_fields_are_fixed(mock_host: ExecutorHost) -> None:
    array = ContainerJob.objects.create_array(2, **FIELDS)
    job = array.jobs.get(array_index=0)  # type: ignore[attr-defined]
    job.array_index = 1
    with pytest.raises(JobStateError, match="array_index"):
        job.save()
    job.refresh_from_db()
    job.priority = 5
    job.save()  # the desired state stays editable while pending
    assert ContainerJob.objects.get(pk=job.pk).priority == 5


def test_the_database_keeps_indexes_unique_and_in_range(mock_host: ExecutorHost) -> None:
    array = ContainerJob.objects.create_array(2, **FIELDS)
    first, second = array.jobs.order_by("array_index")  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError), transaction.atomic():
        ContainerJob.objects.filter(pk=second.pk).update(array_index=0)
    with pytest.raises(IntegrityError), transaction.atomic():
        ContainerJob.objects.filter(pk=second.pk).update(array_index=2)
    with pytest.raises(IntegrityError), transaction.atomic():
        ContainerJob.objects.filter(pk=first.pk).update(array_index=None)


def test_a_rerun_of_an_element_keeps_its_index_outside_the_array(
    mock_world: MockWorld, mock_host: ExecutorHost
) -> None:
    array = ContainerJob.objects.create_array(3, parallelism=1, **{**FIELDS, "command": "exit 1"})
    element = array.jobs.get(array_index=0)  # type: ignore[attr-defined]
    mock_world.claimed()
    mock_world.clock.advance(1)
    mock_world.reconciler.reconcile(element.pk)
    element.refresh_from_db()
    assert element.status == "failed"
    again = element.rerun(actor="test")
    assert (again.array_id, again.array_index, again.array_size) == (None, 0, 3)
    next_element = array.jobs.get(array_index=1)  # type: ignore[attr-defined]
    assert sorted(mock_world.claimed()) == sorted([again.pk, next_element.pk]), "the re-run is not capped"
    env = build_spec(again, 1, get_policy()).env_dict
    assert (env["CM_ARRAY_INDEX"], env["CM_ARRAY_SIZE"]) == ("0", "3")


def test_deleting_an_array_keeps_its_jobs(mock_host: ExecutorHost) -> None:
    array = ContainerJob.objects.create_array(2, parallelism=1, **FIELDS)
    array.delete()
    assert list(ContainerJob.objects.values_list("array_id", "array_index", "array_size")) == [
        (None, 1, 2),
        (None, 0, 2),
    ]
