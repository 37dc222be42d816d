"""Cron schedules: validation, and each due tick materialised exactly once (crashes, races, policies)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection
from django.utils import timezone

from container_manager.models import ContainerJob, ExecutorHost, JobSchedule
from container_manager.states import JobStatus
from metrics import definitions as m
from reconciler import schedules
from reconciler.outcome import RequeueAfter

pytestmark = pytest.mark.django_db


@pytest.fixture
def host(db: Any) -> ExecutorHost:
    return ExecutorHost.objects.create(name="mock-a", executor_type="mock", max_concurrent_jobs=10)


def make(name: str = "nightly", cron: str = "*/5 * * * *", **kw: Any) -> JobSchedule:
    fields = {"image": "busybox", "command": "echo tick", "memory_limit": 64, "cpu_limit": 0.5, **kw}
    return JobSchedule.objects.create(name=name, cron=cron, **fields)


def due_at(schedule: JobSchedule, tick: datetime) -> None:
    """Make ``tick`` the schedule's next run, as if the daemon had not run since before it."""
    JobSchedule.objects.filter(pk=schedule.pk).update(next_run_at=tick)
    schedule.refresh_from_db()


def a_tick(schedule: JobSchedule, minutes_ago: int = 12) -> datetime:
    """A tick of ``schedule`` (every 5 minutes) a little in the past."""
    return schedule.latest_tick(timezone.now() - timedelta(minutes=minutes_ago))


def ticks(outcome: str) -> float:
    return m.SCHEDULE_TICKS.labels(outcome)._value.get()


# The model -------------------------------------------------------------------------------------


def test_a_new_schedule_waits_for_its_first_tick(host: ExecutorHost) -> None:
    before = timezone.now()
    schedule = make(cron="  0  9 * * mon-fri ", timezone="America/New_York", docker_host=host)
    assert schedule.cron == "0 9 * * mon-fri", "stored normalised"
    assert schedule.next_run_at is not None and schedule.next_run_at > before
    local = schedule.next_run_at.astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (9, 0) and local.weekday() < 5
    assert schedule.last_scheduled_at is None and not schedule.jobs.exists()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"cron": "* * * *"}, "cron", "five fields"),
        ({"cron": "0 0 * * * *"}, "cron", "five fields"),
        ({"cron": "@daily"}, "cron", "five fields"),
        ({"cron": "61 * * * *"}, "cron", "not valid"),
        ({"cron": "H * * * *"}, "cron", "not a month or weekday name"),
        ({"cron": 5}, "cron", "must be text"),
        ({"timezone": "Mars/Olympus"}, "timezone", "not a known IANA time zone"),
        ({"timezone": "/etc/passwd"}, "timezone", "not a known IANA time zone"),
        ({"memory_limit": 10**6}, "memory_limit", "between 6 and"),
        ({"image": ""}, "image", ""),
        ({"command": "echo 'unclosed"}, "command", "quotes"),
        ({"concurrency_policy": "sometimes"}, "concurrency_policy", "not a valid choice"),
        ({"starting_deadline_seconds": 0}, "starting_deadline_seconds", "between 1 and"),
        ({"retry_on": "exit_code,whenever"}, "retry_on", ""),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field(
    host: ExecutorHost, fields: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        make(**fields)
    assert field in caught.value.message_dict, caught.value.message_dict
    assert words in " ".join(caught.value.message_dict[field])
    assert not JobSchedule.objects.exists()


def test_a_schedule_for_an_inactive_host_is_refused(host: ExecutorHost) -> None:
    ExecutorHost.objects.filter(pk=host.pk).update(is_active=False)
    host.refresh_from_db()
    with pytest.raises(ValidationError) as caught:
        make(docker_host=host)
    assert list(caught.value.message_dict) == ["docker_host"]


def test_names_are_unique(host: ExecutorHost) -> None:
    make()
    with pytest.raises(ValidationError, match="already exists"):
        make()


def test_saving_a_stale_copy_never_rewinds_the_daemons_fields(host: ExecutorHost) -> None:
    schedule = make()
    stale = JobSchedule.objects.get(pk=schedule.pk)
    tick = a_tick(schedule)
    due_at(schedule, tick)
    schedules.run_due(now=tick + timedelta(seconds=1), actor="daemon:test")
    schedule.refresh_from_db()
    stale.image = "busybox:1.36"
    stale.save()
    stale.refresh_from_db()
    assert (stale.next_run_at, stale.last_scheduled_at) == (schedule.next_run_at, tick)
    assert stale.image == "busybox:1.36"
    stale.cron = "0 3 * * *"
    stale.save()
    assert stale.next_run_at is not None and stale.next_run_at.astimezone(UTC).hour == 3


def test_pause_and_resume(host: ExecutorHost) -> None:
    schedule = make()
    schedule.pause()
    schedule.refresh_from_db()
    assert not schedule.enabled and schedule.next_run_at is None
    assert schedules.run_due(now=timezone.now() + timedelta(days=1), actor="t")[0] == []
    schedule.resume()
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.next_run_at is not None and schedule.next_run_at > timezone.now()


def test_run_now_creates_a_job_outside_the_ticks(host: ExecutorHost) -> None:
    schedule = make(docker_host=host)
    first, second = schedule.run_now(actor="cli"), schedule.run_now(actor="cli")
    assert [j.scheduled_for for j in (first, second)] == [None, None]
    assert first.schedule == schedule and first.created_by == "cli" and first.docker_host == host
    assert JobSchedule.objects.get(pk=schedule.pk).next_run_at == schedule.next_run_at


def test_a_schedule_in_use_keeps_its_host(host: ExecutorHost) -> None:
    from django.db.models import ProtectedError

    make(docker_host=host)
    with pytest.raises(ProtectedError):
        host.delete()


# Materialising ticks ---------------------------------------------------------------------------


def test_a_due_tick_creates_one_job_with_the_schedules_fields(host: ExecutorHost) -> None:
    schedule = make(docker_host=host, priority=7, max_retries=2, override_environment="MODE=nightly")
    tick = a_tick(schedule)
    due_at(schedule, tick)
    lag_before = m.SCHEDULE_LAG._sum.get()
    done, wait = schedules.run_due(now=tick + timedelta(seconds=2), actor="daemon:test")
    assert [(t.outcome, t.at) for t in done] == [("created", tick)]
    job = ContainerJob.objects.get()
    assert (job.schedule, job.scheduled_for, job.created_by) == (schedule, tick, "schedule:nightly")
    assert (job.name, job.image, job.command, job.docker_host, job.priority) == (
        "nightly",
        "busybox",
        "echo tick",
        host,
        7,
    )
    assert job.max_retries == 2 and job.get_all_environment_variables() == {"MODE": "nightly"}
    assert job.memory_limit == 64 and job.timeout_seconds is not None, (
        "empty limits get the settings' defaults"
    )
    schedule.refresh_from_db()
    assert schedule.last_scheduled_at == tick and schedule.last_error == ""
    assert schedule.next_run_at is not None and schedule.next_run_at > tick + timedelta(seconds=2)
    assert m.SCHEDULE_LAG._sum.get() > lag_before, "the lag from the tick to the job is observed"
    assert 0 <= wait <= schedules.RESCAN_SECONDS
    # Handled: the same moment again creates nothing.
    assert schedules.run_due(now=tick + timedelta(seconds=2), actor="daemon:test")[0] == []
    assert ContainerJob.objects.count() == 1


def test_nothing_is_due_before_the_tick(host: ExecutorHost) -> None:
    schedule = make()
    assert schedule.next_run_at is not None
    done, wait = schedules.run_due(now=schedule.next_run_at - timedelta(seconds=2), actor="t")
    assert done == [] and wait == pytest.approx(2.0)
    assert not ContainerJob.objects.exists()


class Crash(BaseException):
    """The process dies here (not an error the daemon could catch)."""


def test_a_crash_between_creating_the_job_and_recording_the_tick_loses_nothing(
    host: ExecutorHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedule = make()
    tick = a_tick(schedule)
    due_at(schedule, tick)
    created: list[int] = []
    real_next_run = schedules._next_run

    def crash_after_the_job(s: JobSchedule, now: datetime) -> Any:
        created.extend(s.jobs.values_list("pk", flat=True))  # type: ignore[attr-defined]
        raise Crash()

    monkeypatch.setattr(schedules, "_next_run", crash_after_the_job)
    with pytest.raises(Crash):
        schedules.run_due(now=tick + timedelta(seconds=1), actor="daemon:a")
    assert len(created) == 1, "the job had been written when the process died"
    assert not ContainerJob.objects.exists(), "...in the transaction that died with it"
    schedule.refresh_from_db()
    assert schedule.next_run_at == tick and schedule.last_scheduled_at is None, "the tick is still due"
    monkeypatch.setattr(schedules, "_next_run", real_next_run)
    schedules.run_due(now=tick + timedelta(seconds=3), actor="daemon:a")
    assert list(ContainerJob.objects.values_list("scheduled_for", flat=True)) == [tick], "exactly once"


def test_a_tick_whose_job_exists_is_recorded_without_a_second_job(host: ExecutorHost) -> None:
    """The job was committed but the schedule not advanced (a replica that read the schedule
    before another advanced it, or a version that wrote them apart): the unique constraint on
    (schedule, scheduled_for) refuses the second job, and the schedule moves on."""
    schedule = make()
    tick = a_tick(schedule)
    existing = schedule.make_job(tick)
    existing.save()
    due_at(schedule, tick)
    before = ticks("duplicate")
    done, _ = schedules.run_due(now=tick + timedelta(seconds=1), actor="daemon:b")
    assert [(t.outcome, t.job_id) for t in done] == [("duplicate", existing.pk)]
    assert list(ContainerJob.objects.all()) == [existing]
    schedule.refresh_from_db()
    assert (
        schedule.last_scheduled_at == tick
        and schedule.next_run_at is not None
        and schedule.next_run_at > tick
    )
    assert ticks("duplicate") == before + 1


@pytest.mark.django_db(transaction=True)
def test_two_replicas_racing_on_the_same_ticks_create_one_job_each() -> None:
    ExecutorHost.objects.create(name="mock-r", executor_type="mock")
    schedule = make(cron="* * * * *")
    start = schedule.latest_tick(timezone.now() - timedelta(hours=1))
    rounds = 12
    failures: list[BaseException] = []
    for round_ in range(rounds):
        tick = start + timedelta(minutes=round_)
        due_at(schedule, tick)
        barrier = threading.Barrier(2)

        def replica(name: str, tick: datetime = tick, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait(5)
                schedules.run_due(now=tick + timedelta(seconds=1), actor=name)
            except DatabaseError as exc:
                # SQLite lets one writer in at a time: the other fails, and its tick is handled.
                failures.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=replica, args=(f"daemon:{n}",)) for n in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert ContainerJob.objects.filter(scheduled_for=tick).count() == 1, f"round {round_}"
    assert ContainerJob.objects.count() == rounds
    if connection.vendor == "postgresql":
        assert failures == [], "the row lock makes the other replica skip the tick"


def test_forbid_skips_a_tick_while_a_run_is_unfinished(host: ExecutorHost) -> None:
    schedule = make(concurrency_policy="forbid")
    tick = a_tick(schedule)
    due_at(schedule, tick)
    schedules.run_due(now=tick + timedelta(seconds=1), actor="t")
    first = ContainerJob.objects.get()
    nxt = schedule.tick_after(tick)
    due_at(schedule, nxt)
    done, _ = schedules.run_due(now=nxt + timedelta(seconds=1), actor="t")
    assert [t.outcome for t in done] == ["forbidden"]
    schedule.refresh_from_db()
    assert schedule.last_error == (
        f"tick {nxt.isoformat()} skipped: job(s) {first.pk} of an earlier run are unfinished "
        "(concurrency_policy=forbid)"
    )
    assert schedule.last_scheduled_at == tick and ContainerJob.objects.count() == 1
    first.cancel()
    later = schedule.tick_after(nxt)
    due_at(schedule, later)
    assert [t.outcome for t in schedules.run_due(now=later + timedelta(seconds=1), actor="t")[0]] == [
        "created"
    ]
    schedule.refresh_from_db()
    assert schedule.last_error == ""


def test_replace_cancels_the_unfinished_run(host: ExecutorHost) -> None:
    schedule = make(concurrency_policy="replace")
    tick = a_tick(schedule)
    due_at(schedule, tick)
    schedules.run_due(now=tick + timedelta(seconds=1), actor="t")
    old = ContainerJob.objects.get()
    nxt = schedule.tick_after(tick)
    due_at(schedule, nxt)
    schedules.run_due(now=nxt + timedelta(seconds=1), actor="daemon:t")
    old.refresh_from_db()
    assert old.status == JobStatus.CANCELLED and old.failure_reason == "cancelled"
    assert old.events.filter(to_status="cancelled", message__startswith="replaced by the run of").exists()
    assert ContainerJob.objects.get(status="pending").scheduled_for == nxt


def test_allow_lets_runs_overlap(host: ExecutorHost) -> None:
    schedule = make()
    tick = a_tick(schedule)
    for at in (tick, schedule.tick_after(tick)):
        due_at(schedule, at)
        schedules.run_due(now=at + timedelta(seconds=1), actor="t")
    assert ContainerJob.objects.filter(status="pending").count() == 2


def test_a_tick_past_its_starting_deadline_is_missed(host: ExecutorHost) -> None:
    schedule = make(starting_deadline_seconds=60)
    tick = a_tick(schedule)
    due_at(schedule, tick)
    before = ticks("missed")
    done, _ = schedules.run_due(now=tick + timedelta(seconds=90), actor="t")
    assert [t.outcome for t in done] == ["missed"] and not ContainerJob.objects.exists()
    schedule.refresh_from_db()
    assert "90 s late, past starting_deadline_seconds=60" in schedule.last_error
    assert schedule.next_run_at is not None and schedule.next_run_at > tick + timedelta(seconds=90)
    assert ticks("missed") == before + 1
    nxt = schedule.next_run_at
    schedules.run_due(now=nxt + timedelta(seconds=30), actor="t")
    assert ContainerJob.objects.get().scheduled_for == nxt, "within the deadline, a late tick still runs"


def test_after_downtime_only_the_latest_missed_tick_runs(host: ExecutorHost) -> None:
    schedule = make(cron="* * * * *")
    now = timezone.now()
    due_at(schedule, schedule.latest_tick(now - timedelta(minutes=10)))
    before = ticks("missed")
    schedules.run_due(now=now, actor="t")
    assert list(ContainerJob.objects.values_list("scheduled_for", flat=True)) == [schedule.latest_tick(now)]
    assert ticks("missed") == before + 10


def test_a_tick_whose_job_would_be_refused_is_skipped_and_said(host: ExecutorHost, settings: Any) -> None:
    schedule = make(memory_limit=1024)
    settings.CONTAINER_MANAGER = {"MAX_MEMORY_MB": 512, "DEFAULT_MEMORY_MB": 256}
    tick = a_tick(schedule)
    due_at(schedule, tick)
    done, _ = schedules.run_due(now=tick + timedelta(seconds=1), actor="t")
    assert [t.outcome for t in done] == ["invalid"] and not ContainerJob.objects.exists()
    schedule.refresh_from_db()
    assert schedule.last_error.startswith(f"tick {tick.isoformat()} created no job: memory_limit:")
    assert schedule.next_run_at is not None and schedule.next_run_at > tick


def test_a_bug_skips_one_tick_and_leaves_the_other_schedules_alone(
    host: ExecutorHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken, fine = make("broken"), make("fine")
    tick = a_tick(broken)
    due_at(broken, tick)
    due_at(fine, tick)
    real = schedules._handle

    def handle(schedule: JobSchedule, **kw: Any) -> Any:
        if schedule.name == "broken":
            raise RuntimeError("a bug")
        return real(schedule, **kw)

    monkeypatch.setattr(schedules, "_handle", handle)
    done, _ = schedules.run_due(now=tick + timedelta(seconds=1), actor="t")
    assert sorted((t.schedule, t.outcome) for t in done) == [("broken", "error"), ("fine", "created")]
    broken.refresh_from_db()
    assert broken.last_error == f"tick {tick.isoformat()} failed: RuntimeError: a bug"
    assert broken.next_run_at is not None and broken.next_run_at > tick


def test_a_disabled_schedule_creates_nothing(host: ExecutorHost) -> None:
    schedule = make(enabled=False)
    assert schedule.next_run_at is None
    JobSchedule.objects.filter(pk=schedule.pk).update(next_run_at=a_tick(schedule))
    assert schedules.run_due(now=timezone.now(), actor="t")[0] == []


@pytest.mark.parametrize(
    ("field", "value"), [("timezone", "Nowhere/Land"), ("cron", "99 * * * *"), ("cron", "x")]
)
def test_timing_broken_by_sql_stops_its_schedule_without_harm(
    host: ExecutorHost, field: str, value: str
) -> None:
    schedule = make()
    tick = a_tick(schedule)
    JobSchedule.objects.filter(pk=schedule.pk).update(next_run_at=tick, **{field: value})
    done, _ = schedules.run_due(now=tick + timedelta(seconds=1), actor="t")
    assert [t.outcome for t in done] == ["invalid"]
    schedule.refresh_from_db()
    assert schedule.next_run_at is None and field in schedule.last_error
    assert not ContainerJob.objects.exists()


# The daemon --------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_daemon_materialises_and_runs_a_due_tick_in_one_pass() -> None:
    from reconciler.daemon import Daemon, DaemonOptions
    from reconciler.keys import SCHEDULES

    ExecutorHost.objects.create(name="mock-d", executor_type="mock", max_concurrent_jobs=10)
    schedule = make(cron="* * * * *")
    due_at(schedule, schedule.latest_tick(timezone.now()))
    Daemon(DaemonOptions(once=True)).run()
    job = ContainerJob.objects.get()
    assert job.status == "completed" and job.schedule == schedule
    daemon = Daemon(DaemonOptions(workers=1))
    outcome = daemon._process(SCHEDULES)
    assert isinstance(outcome, RequeueAfter) and 0 <= outcome.seconds <= schedules.RESCAN_SECONDS
