"""``manage_jobs`` for workflows: submit --after/--array/--parallelism, list/show, schedule ACTION."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from container_manager.models import ContainerJob, ExecutorHost, JobArray, JobSchedule

pytestmark = pytest.mark.django_db

SUBMIT = ("manage_jobs", "submit", "--image", "busybox", "--memory", "64", "--host", "mock-1")


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json"))


def test_submit_after_makes_the_job_wait(mock_host: ExecutorHost) -> None:
    first = run_json(*SUBMIT, "--command", "echo 1")[0]
    second = run_json(*SUBMIT, "--command", "echo 1")[0]
    (job,) = run_json(*SUBMIT, "--after", str(first["id"]), "--after", str(second["id"]))
    assert job["depends_on"] == [first["id"], second["id"]]
    assert set(ContainerJob.objects.get(pk=job["id"]).depends_on.values_list("pk", flat=True)) == {
        first["id"],
        second["id"],
    }


def test_submit_after_an_unknown_job_creates_nothing(mock_host: ExecutorHost) -> None:
    with pytest.raises(CommandError, match="submit: depends_on: there is no job 987654"):
        run(*SUBMIT, "--after", "987654")
    assert not ContainerJob.objects.exists()
    with pytest.raises(CommandError, match="a job id is a number"):
        run(*SUBMIT, "--after", "x")


def test_a_file_line_may_wait_for_jobs(mock_host: ExecutorHost, tmp_path: Path) -> None:
    first = run_json(*SUBMIT)[0]["id"]
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        json.dumps({"image": "busybox", "host": "mock-1", "after": [first]})
        + "\n"
        + json.dumps({"image": "busybox", "host": "mock-1"})
        + "\n"
    )
    created = run_json("manage_jobs", "submit", "--file", str(path))
    assert [row["depends_on"] for row in created] == [[first], []]
    path.write_text(json.dumps({"image": "busybox", "after": "1"}) + "\n")
    with pytest.raises(CommandError, match="line 1: after: expected a list of job ids"):
        run("manage_jobs", "submit", "--file", str(path))
    assert ContainerJob.objects.count() == 3


def test_submit_array(mock_host: ExecutorHost) -> None:
    out = run(*SUBMIT, "--name", "shard", "--array", "3", "--parallelism", "2", "--env", "MODE=x")
    array = JobArray.objects.get()
    jobs = list(array.jobs.order_by("array_index"))  # type: ignore[attr-defined]
    assert out.strip() == f"created array {array.pk} (shard) of 3: jobs {jobs[0].pk} to {jobs[-1].pk}"
    assert (array.size, array.parallelism, array.created_by) == (3, 2, "cli")
    assert [(j.array_index, j.array_size, j.docker_host, j.memory_limit) for j in jobs] == [
        (i, 3, mock_host, 64) for i in range(3)
    ]
    assert jobs[0].get_all_environment_variables() == {"MODE": "x"}
    rows = run_json(*SUBMIT, "--array", "2", "--after", str(jobs[0].pk))
    assert [(r["array_index"], r["array_size"], r["depends_on"]) for r in rows] == [
        (0, 2, [jobs[0].pk]),
        (1, 2, [jobs[0].pk]),
    ]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--parallelism", "2"), "--parallelism goes with --array"),
        (("--array", "2", "--file", "x.jsonl"), "it does not take --file"),
        (("--array", "0"), "at least 1"),
        (("--array", "20000"), "array_size: an array has 1 to 10000 jobs"),
        (("--array", "2", "--memory", "999999"), "memory_limit"),
    ],
)
def test_a_bad_array_is_refused(mock_host: ExecutorHost, args: tuple[str, ...], words: str) -> None:
    base = [a for a in SUBMIT if a not in ("--memory", "64")] if "--memory" in args else list(SUBMIT)
    with pytest.raises(CommandError, match=words):
        run(*base, *args)
    assert not ContainerJob.objects.exists() and not JobArray.objects.exists()


def test_list_and_show_say_where_a_job_stands(mock_host: ExecutorHost) -> None:
    root = run_json(*SUBMIT, "--name", "root")[0]["id"]
    run(*SUBMIT, "--name", "shard", "--array", "2", "--after", str(root))
    array = JobArray.objects.get()
    listing = run("manage_jobs", "list", "--array", str(array.pk))
    assert listing.splitlines()[0] == f"array {array.pk} (shard) of 2: 2 pending"
    assert len(listing.splitlines()) == 4, "the summary, the header, two jobs"
    with pytest.raises(CommandError, match="--array: no job array 999"):
        run("manage_jobs", "list", "--array", "999")
    element = array.jobs.get(array_index=1)  # type: ignore[attr-defined]
    shown = run("manage_jobs", "show", str(element.pk))
    assert f"      depends on: {root} (pending)" in shown
    assert f"           array: index 1 of 2; array {array.pk} (shard) of 2: 2 pending" in shown
    assert "array_index" not in shown, "said in words, not as raw fields"
    root_shown = run("manage_jobs", "show", str(root))
    others = sorted(array.jobs.values_list("pk", flat=True))  # type: ignore[attr-defined]
    assert f"      dependents: {others[0]} (pending), {others[1]} (pending)" in root_shown
    data = run_json("manage_jobs", "show", str(element.pk))
    assert (data["depends_on"], data["array"], data["array_index"], data["array_size"]) == (
        [root],
        array.pk,
        1,
        2,
    )


def test_schedule_add_list_pause_resume_delete(mock_host: ExecutorHost) -> None:
    out = run(
        "manage_jobs", "schedule", "add", "nightly", "--cron", "30 2 * * *", "--timezone", "Europe/Paris",
        "--image", "busybox", "--command", "echo tick", "--host", "mock-1", "--env", "MODE=nightly",
        "--memory", "64", "--concurrency-policy", "forbid", "--starting-deadline", "600",
    )  # fmt: skip
    schedule = JobSchedule.objects.get()
    assert out.startswith("created schedule nightly (30 2 * * * Europe/Paris): next run ")
    assert (schedule.docker_host, schedule.concurrency_policy, schedule.starting_deadline_seconds) == (
        mock_host,
        "forbid",
        600,
    )
    assert schedule.created_by == "cli" and schedule.make_job(None).get_all_environment_variables() == {
        "MODE": "nightly"
    }
    (row,) = run_json("manage_jobs", "schedule", "list")
    assert row["name"] == "nightly" and row["next_run_at"] == schedule.next_run_at.isoformat()  # type: ignore[union-attr]
    listing = run("manage_jobs", "schedule", "list")
    assert listing.splitlines()[1].startswith("nightly ")
    assert run_json("manage_jobs", "schedule", "pause", "nightly")["next_run_at"] is None
    assert "(paused)" in run("manage_jobs", "schedule", "list")
    assert run("manage_jobs", "schedule", "resume", "nightly").startswith("resumed schedule nightly")
    job = schedule.run_now(actor="test")
    assert (
        run("manage_jobs", "schedule", "delete", "nightly").strip()
        == "deleted schedule nightly (its jobs stay)"
    )
    assert not JobSchedule.objects.exists() and ContainerJob.objects.filter(pk=job.pk).exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--cron", "30 2 * *", "--image", "busybox"), "cron: cron needs five fields"),
        (
            ("--cron", "* * * * *", "--image", "busybox", "--timezone", "Nowhere"),
            "timezone: timezone 'Nowhere'",
        ),
        (
            ("--cron", "* * * * *", "--image", "busybox", "--host", "nope"),
            "--host: no docker host named 'nope'",
        ),
        (
            ("--cron", "* * * * *", "--image", "busybox", "--env", "1A=x"),
            "--env: '1A' is not a variable name",
        ),
        (("--cron", "* * * * *", "--image", "Bad Image"), "image:"),
        (("--cron", "* * * * *", "--image", "busybox", "--memory", "999999"), "memory_limit:"),
    ],
)
def test_a_bad_schedule_is_one_line_and_nothing_is_saved(
    mock_host: ExecutorHost, args: tuple[str, ...], words: str
) -> None:
    with pytest.raises(CommandError, match=words):
        run("manage_jobs", "schedule", "add", "bad", *args)
    assert not JobSchedule.objects.exists()


def test_schedule_names_are_unique_and_must_exist(mock_host: ExecutorHost) -> None:
    args = ("manage_jobs", "schedule", "add", "s", "--cron", "* * * * *", "--image", "busybox")
    run(*args)
    with pytest.raises(CommandError, match="name: Job schedule with this Name already exists"):
        run(*args)
    for action in ("pause", "resume", "delete"):
        with pytest.raises(CommandError, match="no schedule named 'missing'"):
            run("manage_jobs", "schedule", action, "missing")
