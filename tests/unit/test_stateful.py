"""A Hypothesis state machine drives the reconciler against the mock executor with random faults.

Rules create jobs, move time, run steps in any order (lost events are simply steps not run),
restart the daemon (a new Reconciler), inject launch failures and interrupted launches,
remove containers behind the daemon's back, cancel, and race admin edits against the loop.
After every rule the invariants of DESIGN.md section 4 are checked; at the end every job is
driven to a terminal state and nothing may be left behind.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from container_manager.exceptions import JobStateError
from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost, JobEvent
from container_manager.states import TERMINAL, ExecutionStatus, JobStatus
from executors.mock import Fault, MockExecutor
from reconciler.step import Reconciler
from tests.conftest import FakeClock

COMMANDS = ["echo ok", "exit 3", "oom", "hang", "sleep 5", "sh -c 'echo a; sleep 2; exit 1'", "vanish"]
TERMINAL_VALUES = {s.value for s in TERMINAL}


class ReconcilerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        JobEvent.objects.all().delete()
        ContainerExecution.objects.all().delete()
        ContainerJob.objects.all().delete()
        ExecutorHost.objects.all().delete()
        self.clock = FakeClock()
        self.host = ExecutorHost.objects.create(name="mock-sm", executor_type="mock", max_concurrent_jobs=3)
        self.mock = MockExecutor("mock-sm", clock=self.clock)
        self.reconciler = self._new_reconciler()
        self.job_ids: list[int] = []
        self.terminal_seen: dict[int, str] = {}

    def _new_reconciler(self) -> Reconciler:
        return Reconciler(actor="daemon:sm", executor_for=lambda host: self.mock, clock=self.clock)

    # Rules ----------------------------------------------------------------------------

    @rule(command=st.sampled_from(COMMANDS), retries=st.integers(0, 2), timeout=st.sampled_from([3, 10, 60]))
    def create_job(self, command: str, retries: int, timeout: int) -> None:
        job = ContainerJob.objects.create(
            image="busybox",
            command=command,
            memory_limit=64,
            cpu_limit=0.5,
            timeout_seconds=timeout,
            max_retries=retries,
            retry_backoff_seconds=1,
            retry_backoff_max_seconds=4,
        )
        self.job_ids.append(job.pk)

    @precondition(lambda self: self.job_ids)
    @rule(data=st.data())
    def reconcile(self, data: st.DataObject) -> None:
        self.reconciler.reconcile(data.draw(st.sampled_from(self.job_ids)))

    @precondition(lambda self: self.job_ids)
    @rule()
    def reconcile_all(self) -> None:
        for job_id in self.job_ids:
            self.reconciler.reconcile(job_id)

    @rule(seconds=st.sampled_from([0.5, 1, 3, 7, 30]))
    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def restart_daemon(self) -> None:
        self.reconciler = self._new_reconciler()

    @rule(
        fault=st.sampled_from([Fault.LAUNCH_UNAVAILABLE, Fault.LAUNCH_INVALID, Fault.CREATE_ONLY, Fault.OOM])
    )
    def inject(self, fault: Fault) -> None:
        self.mock.inject(fault, times=1)

    @precondition(lambda self: self.mock.list_managed("default"))
    @rule(data=st.data())
    def remove_behind_our_back(self, data: st.DataObject) -> None:
        names = sorted(c.name for c in self.mock.list_managed("default"))
        self.mock.vanish(data.draw(st.sampled_from(names)))

    @precondition(lambda self: self.job_ids)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ContainerJob.objects.get(pk=data.draw(st.sampled_from(self.job_ids))).cancel(actor="test")

    @precondition(lambda self: self.job_ids)
    @rule(data=st.data(), priority=st.integers(-5, 5))
    def stale_admin_edit(self, data: st.DataObject, priority: int) -> None:
        """An admin form loaded earlier is saved after the loop moved the job on."""
        job_id = data.draw(st.sampled_from(self.job_ids))
        stale = ContainerJob.objects.get(pk=job_id)
        self.reconciler.reconcile(job_id)
        stale.priority = priority
        before = ContainerJob.objects.values("status", "attempts").get(pk=job_id)
        try:
            stale.save()
        except JobStateError:
            pass
        after = ContainerJob.objects.values("status", "attempts").get(pk=job_id)
        assert after == before, "a stale save must never overwrite what the reconciler recorded"

    # Invariants -----------------------------------------------------------------------

    @invariant()
    def one_container_per_attempt(self) -> None:
        """An attempt's program runs at most once. (A container that was only created, never
        started, and then removed behind our back may be created again: nothing ran.)"""
        assert len(self.mock.started) == len(set(self.mock.started))
        live = [c.name for c in self.mock.list_managed("default")]
        assert len(live) == len(set(live))

    @invariant()
    def every_container_has_its_attempt_row(self) -> None:
        names = {c.name for c in self.mock.list_managed("default")}
        rows = set(
            ContainerExecution.objects.filter(container_name__in=names).values_list(
                "container_name", flat=True
            )
        )
        assert names == rows

    @invariant()
    def attempts_are_bounded_and_contiguous(self) -> None:
        for job in ContainerJob.objects.all():
            numbers = list(job.executions.order_by("attempt").values_list("attempt", flat=True))
            assert numbers == list(range(1, job.attempts + 1))
            assert job.attempts <= job.max_retries + 1
            live = job.executions.filter(status__in=["launching", "running"]).count()
            assert live <= 1

    @invariant()
    def terminal_is_final(self) -> None:
        for job_id, status in ContainerJob.objects.values_list("id", "status"):
            if job_id in self.terminal_seen:
                assert status == self.terminal_seen[job_id]
            elif status in TERMINAL_VALUES:
                self.terminal_seen[job_id] = status

    @invariant()
    def terminal_jobs_have_no_live_attempt(self) -> None:
        done = ContainerJob.objects.filter(status__in=TERMINAL_VALUES)
        assert not ContainerExecution.objects.filter(
            job__in=done, status__in=["launching", "running"]
        ).exists()
        assert not done.filter(finished_at__isnull=True).exists()

    @invariant()
    def capacity_is_respected(self) -> None:
        live = ContainerExecution.objects.filter(status__in=["launching", "running"]).count()
        assert live <= self.host.max_concurrent_jobs

    def teardown(self) -> None:
        """Converge: every job reaches exactly one terminal state and nothing is left running."""
        self.mock.clear_faults()
        for _ in range(40):
            self.clock.advance(70)
            self.host.health_check()  # the daemon's resync re-probes hosts the breaker opened
            for job_id in self.job_ids:
                self.reconciler.reconcile(job_id)
            if not ContainerJob.objects.exclude(status__in=TERMINAL_VALUES).exists():
                break
        unfinished = list(
            ContainerJob.objects.exclude(status__in=TERMINAL_VALUES).values_list("id", "status")
        )
        assert unfinished == []
        self.terminal_is_final()
        assert self.mock.list_managed("default") == [], "every container removed"
        for execution in ContainerExecution.objects.all():
            assert ExecutionStatus(execution.status).is_terminal
            assert execution.cleaned_up
        for job in ContainerJob.objects.filter(status=JobStatus.COMPLETED):
            assert job.exit_code == 0


@pytest.mark.django_db
def test_reconciler_state_machine() -> None:
    run_state_machine_as_test(
        ReconcilerMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_machine_catches_a_broken_invariant(monkeypatch: Any, db: Any) -> None:
    """The machine is able to fail: a reconciler that forgets write-ahead is caught."""
    import reconciler.claim as claim

    original = claim.ContainerExecution.objects.bulk_create

    def create_without_rows(rows: Any, *args: Any, **kwargs: Any) -> Any:
        created = original(rows, *args, **kwargs)
        claim.ContainerExecution.objects.filter(pk__in=[row.pk for row in created]).delete()
        return created

    monkeypatch.setattr(claim.ContainerExecution.objects, "bulk_create", create_without_rows)
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            ReconcilerMachine,
            settings=settings(
                max_examples=20,
                stateful_step_count=15,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
                # Only that it fails matters here: no time spent shrinking the failing example.
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
            ),
        )
