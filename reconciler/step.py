"""The job step: read the rows, observe the container, ``decide``, act, and say what comes next.

Everything that drives a job goes through ``Reconciler.reconcile(job_id)``: the daemon's workers
and the model methods (``job.launch()``, ``job.get_status()``, ``job.harvest()``). One round is
read -> observe -> decide -> act; every action answers with an ``Outcome`` and one switch turns
it into the next round (``Again``, carrying the snapshot the action wrote, so nothing is read
back) or the end of the step (``Done`` / ``RequeueAfter``). No database transaction is held
across an executor call, and every write is a compare-and-swap: a lost race is ``Again`` with a
fresh read.

With ``cache=True`` (the daemon) a job's snapshot is also kept between steps, since this process
made every write it reflects; anything that may have changed the row from outside (a database
notification, a cancel request, the periodic resync) calls ``forget()`` first. The ids of the
jobs whose step ended with the job finished are kept too (a bounded number): terminal states are
final, so a late hint for one (the container's exit event, queued while its step was recording
that very exit) costs no read.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog
from django.utils import timezone

from container_manager.conf import Policy, get_policy
from container_manager.models import ContainerExecution, ExecutorHost
from container_manager.states import JobStatus
from container_manager.transitions import fenced_for
from executors.base import Executor
from executors.exceptions import ExecutorError
from executors.registry import get_executor
from executors.types import LogTail
from metrics import definitions as m
from reconciler import decide as d
from reconciler import notify, record
from reconciler.claim import Claimed, claim_due
from reconciler.cleanup import Cleaner
from reconciler.hosts import HostBreaker
from reconciler.outcome import DONE, REREAD, Again, Done, Outcome, RequeueAfter
from reconciler.shards import AllHosts, HostScope
from reconciler.snapshot import Snapshot, attempt_view, job_view, read
from reconciler.spec import spec_or_problem

log = structlog.get_logger("reconciler")

#: decide/act rounds in one step before handing the job back to the queue.
MAX_ROUNDS = 12
#: wait before looking again at a job that found no host with a free slot (an attempt that
#: ends frees a slot and wakes the claimer at once).
NO_CAPACITY_RETRY = 5.0
#: how many due jobs one batch claim takes at most.
CLAIM_BATCH = 100
#: how many finished jobs are remembered as such (the oldest are forgotten first).
FINISHED_KEPT = 10_000


class Reconciler:
    """Drives single jobs toward their desired state. Thread-safe for distinct jobs: keep one per process."""

    def __init__(
        self,
        *,
        actor: str = "api",
        policy: Policy | None = None,
        executor_for: Callable[[ExecutorHost], Executor] = get_executor,
        clock: Callable[[], datetime] = timezone.now,
        host_names: Collection[str] | None = None,
        hosts: HostScope | None = None,
        cache: bool = False,
        request_claim: Callable[[], None] | None = None,
        cleaner: Cleaner | None = None,
    ) -> None:
        self.actor = actor
        self.policy = policy or get_policy()
        self.decide_policy = d.DecidePolicy(
            stop_grace_seconds=self.policy.stop_grace_seconds,
            resync_seconds=self.policy.resync_seconds,
            launch_deadline_seconds=self.policy.launch_deadline_seconds,
            host_lost_seconds=self.policy.host_lost_seconds,
        )
        self.executor_for = executor_for
        self.clock = clock
        #: the hosts this reconciler drives: every one (or those ``host_names`` lists), or the
        #: share of the hosts this replica holds leases for.
        self.hosts: HostScope = hosts if hosts is not None else AllHosts(host_names)
        #: when set, no new attempt is started (graceful shutdown).
        self.draining = False
        self.breaker = HostBreaker()
        #: the daemon claims in batches (its own queue key); without it a job claims itself.
        self.request_claim = request_claim
        self.cleaner = cleaner if cleaner is not None else Cleaner(executor_for)
        #: called whenever an attempt or a job ends: a host slot frees up, or jobs that depend
        #: on this one may be due (the daemon claims again).
        self.on_slot_freed: Callable[[], None] | None = None
        self._cache: dict[int, Snapshot] | None = {} if cache else None
        self._finished: OrderedDict[int, None] = OrderedDict()

    # Entry points -------------------------------------------------------------------

    def reconcile(self, job_id: int) -> Outcome:
        """Run one step for ``job_id``: ``Done``, or ``RequeueAfter`` when it should be looked at again."""
        started = time.perf_counter()
        m.RECONCILE_PASSES.inc()
        try:
            return self._step(job_id)
        finally:
            # The attempt and host bound for this step's log lines (library ones too) end with it.
            structlog.contextvars.unbind_contextvars("attempt", "host")
            m.RECONCILE_DURATION.observe(time.perf_counter() - started)

    def claim(self, job_ids: Collection[int] | None = None, limit: int = CLAIM_BATCH) -> Claimed:
        """Claim due jobs (all, or ``job_ids``) onto free slots; their snapshots are kept for their steps."""
        if self.draining:
            return Claimed()
        claimed = claim_due(
            actor=self.actor,
            policy=self.policy,
            decide_policy=self.decide_policy,
            now=self.clock(),
            limit=limit,
            scope=self.hosts.host_q(),
            others=self.hosts.others(),
            job_ids=job_ids,
        )
        if self._cache is not None:
            for snap in claimed.snapshots:
                self._cache[snap.job.pk] = snap
        if claimed.passed_on:
            notify.wake_claimers()  # committed: the replicas of the hosts chosen for them claim
        return claimed

    def forget(self, job_id: int | None = None) -> None:
        """Drop kept snapshots (one job's, or all): the next step reads the rows again."""
        if self._cache is not None:
            if job_id is None:
                self._cache.clear()
                self._finished.clear()
            else:
                self._cache.pop(job_id, None)
                self._finished.pop(job_id, None)

    # The step -----------------------------------------------------------------------

    def _step(self, job_id: int) -> Outcome:
        if job_id in self._finished:
            return DONE
        snap = self._cache.pop(job_id, None) if self._cache is not None else None
        facts = d.Facts()
        for _ in range(MAX_ROUNDS):
            if snap is None:
                snap, facts = read(job_id), d.Facts()
                if snap is None:
                    return DONE
            if not self._mine(snap):
                return DONE
            execution = snap.execution
            if execution is not None:
                structlog.contextvars.bind_contextvars(attempt=execution.attempt, host=execution.host_name)
            jv, av = job_view(snap.job, self.policy), attempt_view(execution)
            if d.needs_cleanup(av):
                assert execution is not None
                if self._drives(execution):  # else its host's driver cleans it up
                    self.cleaner.submit(execution)
            if facts.observed is None and not facts.observe_error and d.needs_observation(jv, av):
                facts = self._observe(snap, facts)
            decision = d.decide(jv, av, facts, self.clock(), self.decide_policy)
            outcome = (
                decision if isinstance(decision, Done | RequeueAfter) else self._act(snap, facts, decision)
            )
            if isinstance(outcome, Again):
                snap, facts = outcome.snapshot, outcome.facts or d.Facts()
                continue
            if self._cache is not None:
                if not snap.job.is_terminal_status:
                    self._cache[job_id] = snap
                else:  # its container's removal, if any is left, is the cleaner's now
                    self._finished[job_id] = None
                    if len(self._finished) > FINISHED_KEPT:
                        self._finished.popitem(last=False)
            return outcome
        return RequeueAfter(self.decide_policy.transient_retry_seconds, "the step did not settle")

    def _mine(self, snap: Snapshot) -> bool:
        """Whether this reconciler drives the job: the host of its attempt, or, for a job waiting
        for its next attempt, the host it is pinned to (an unpinned one is anyone's to claim)."""
        job, execution = snap.job, snap.execution
        if execution is not None and job.status not in (JobStatus.PENDING, JobStatus.RETRYING):
            return self._drives(execution)
        host = job.docker_host
        return host is None or self.hosts.owns(host.pk, host.name)

    def _drives(self, execution: ContainerExecution) -> bool:
        return self.hosts.owns(execution.executor_host_id, execution.host_name)

    def forget_host(self, host_pk: int) -> None:
        """Drop the kept snapshots of jobs whose attempt is on ``host_pk`` (its lease was lost)."""
        if self._cache is not None:
            for job_id, snap in list(self._cache.items()):
                if snap.execution is not None and snap.execution.executor_host_id == host_pk:
                    self._cache.pop(job_id, None)

    def _executor(self, execution: ContainerExecution) -> Executor:
        host = execution.executor_host
        if host is None:
            raise ExecutorError(f"host {execution.host_name!r} of this attempt no longer exists")
        return self.executor_for(host)

    def _observe(self, snap: Snapshot, facts: d.Facts) -> d.Facts:
        execution = snap.execution
        assert execution is not None
        try:
            executor = self._executor(execution)
            observed = executor.inspect(execution.container_name)
        except ExecutorError as exc:
            self._executor_failed(execution, "inspect", exc)
            down = self.breaker.down_for(execution.executor_host_id)
            return replace(facts, observe_error=str(exc), host_down_seconds=down)
        self.breaker.succeeded(execution.executor_host_id)
        return replace(facts, observed=observed, **_backend_facts(executor))

    def _executor_failed(self, execution: ContainerExecution, verb: str, exc: ExecutorError) -> None:
        m.EXECUTOR_ERRORS.labels(execution.executor_type or "unknown", verb, str(exc.transient).lower()).inc()
        m.RECONCILE_ERRORS.labels("executor_transient" if exc.transient else "executor_permanent").inc()
        log.warning("executor call failed", verb=verb, job_id=execution.job_id, error=str(exc))
        if exc.transient:
            self.breaker.failed(execution.executor_host_id, execution.host_name, exc)

    # Acting: every action answers with an Outcome ------------------------------------

    def _act(self, snap: Snapshot, facts: d.Facts, action: d.Action) -> Outcome:
        execution = snap.execution
        host = execution.executor_host_id if execution is not None else None
        # Every status change below is fenced by the lease of the attempt's host.
        with fenced_for(host):
            return self._dispatch(snap, facts, action)

    def _dispatch(self, snap: Snapshot, facts: d.Facts, action: d.Action) -> Outcome:
        if isinstance(action, d.StartAttempt):
            return self._start_attempt(snap)
        if isinstance(action, d.SettleJob):
            return self._settle(snap, action.outcome)
        if isinstance(action, d.Launch):
            return self._launch(snap)
        if isinstance(action, d.MarkRunning):
            return self._mark_running(snap, facts, action)
        if isinstance(action, d.Stop):
            return self._stop(snap, action)
        if isinstance(action, d.FinishAttempt):
            return self._finish_attempt(snap, facts, action)
        raise TypeError(f"unknown action {action!r}")

    def _start_attempt(self, snap: Snapshot) -> Outcome:
        if self.draining:
            return DONE
        if self.request_claim is not None:
            # The daemon's claimer takes due jobs in priority order, many per statement.
            self.request_claim()
            return DONE
        claimed = self.claim(job_ids=[snap.job.pk], limit=1)
        if claimed.snapshots:
            return Again(claimed.snapshots[0])
        if claimed.settled:
            return REREAD
        return RequeueAfter(
            NO_CAPACITY_RETRY, "not claimable now: no free slot, an unfinished dependency or a full array"
        )

    def _settle(self, snap: Snapshot, outcome: d.JobOutcome) -> Outcome:
        if not record.settle_job(snap, outcome, actor=self.actor, now=self.clock()):
            return REREAD
        if outcome.status.is_terminal:
            m.JOBS_FINISHED.labels(outcome.status.value, outcome.reason.value).inc()
            if self.on_slot_freed is not None:
                self.on_slot_freed()
        log.info("job settled", job_id=snap.job.pk, outcome=outcome.status.value, reason=outcome.reason.value)
        return Again(snap)

    def _launch(self, snap: Snapshot) -> Outcome:
        execution = snap.execution
        assert execution is not None
        spec, problem = (
            (snap.spec, "")
            if snap.spec is not None
            else spec_or_problem(snap.job, execution.attempt, self.policy)
        )
        if spec is None:
            return Again(snap, d.Facts(launch_refused=problem))
        snap.spec = spec
        try:
            executor = self._executor(execution)
            started = time.perf_counter()
            observed = executor.launch(spec)
        except ExecutorError as exc:
            self._executor_failed(execution, "launch", exc)
            if not exc.transient:
                return Again(snap, d.Facts(launch_refused=str(exc)))
            record.note_attempt_error(execution, f"launch: {exc}")
            return Again(snap, d.Facts(launch_error=str(exc)))
        m.LAUNCH_LATENCY.labels(execution.executor_type).observe(time.perf_counter() - started)
        self.breaker.succeeded(execution.executor_host_id)
        return Again(snap, d.Facts(observed=observed, **_backend_facts(executor)))

    def _container_id(self, snap: Snapshot, facts: d.Facts) -> str:
        execution = snap.execution
        assert execution is not None
        observed = facts.observed
        return (
            (observed.container_id if observed else None)
            or execution.container_id
            or execution.container_name
        )

    def _mark_running(self, snap: Snapshot, facts: d.Facts, action: d.MarkRunning) -> Outcome:
        execution = snap.execution
        assert execution is not None
        now = self.clock()
        container_id = self._container_id(snap, facts)
        if not record.mark_running(snap, action.started_at, container_id, actor=self.actor, now=now):
            return REREAD
        kind = execution.executor_type
        m.LAUNCHES.labels(kind).inc()
        job = snap.job
        due = job.run_after if execution.attempt > 1 and job.run_after else job.created_at
        m.QUEUE_WAIT.labels(kind).observe(max(0.0, (action.started_at - due).total_seconds()))
        return Again(snap, facts)

    def _stop(self, snap: Snapshot, action: d.Stop) -> Outcome:
        execution = snap.execution
        assert execution is not None
        try:
            executor = self._executor(execution)
            executor.stop(execution.container_name, action.grace_seconds)
            observed = executor.inspect(execution.container_name)
        except ExecutorError as exc:
            self._executor_failed(execution, "stop", exc)
            return RequeueAfter(self.decide_policy.transient_retry_seconds, f"stop failed: {exc}")
        return Again(snap, d.Facts(observed=observed, stopped_for=action.reason, **_backend_facts(executor)))

    def _finish_attempt(self, snap: Snapshot, facts: d.Facts, action: d.FinishAttempt) -> Outcome:
        execution = snap.execution
        assert execution is not None
        tail = LogTail()
        if action.capture_logs:
            try:
                tail = self._executor(execution).logs(execution.container_name, self.policy.log_tail_bytes)
            except ExecutorError as exc:
                self._executor_failed(execution, "logs", exc)
                if exc.transient:
                    return RequeueAfter(self.decide_policy.transient_retry_seconds, f"logs failed: {exc}")
        now = self.clock()
        container_id = self._container_id(snap, facts) if facts.observed is not None else None
        if not record.finish_attempt(snap, action, tail, container_id, actor=self.actor, now=now):
            return REREAD
        if self.on_slot_freed is not None:
            self.on_slot_freed()
        self._attempt_metrics(execution, action, now)
        outcome = action.job
        if outcome.status is JobStatus.RETRYING:
            m.RETRIES_SCHEDULED.labels(outcome.reason.value).inc()
        else:
            m.JOBS_FINISHED.labels(outcome.status.value, outcome.reason.value).inc()
        log.info(
            "attempt finished",
            job_id=snap.job.pk,
            attempt=execution.attempt,
            outcome=action.status.value,
            reason=action.reason.value,
            exit_code=action.exit_code,
            job=outcome.status.value,
        )
        return Again(snap)

    def _attempt_metrics(self, execution: ContainerExecution, action: d.FinishAttempt, now: datetime) -> None:
        kind = execution.executor_type or "unknown"
        m.ATTEMPTS_FINISHED.labels(kind, action.status.value, action.reason.value).inc()
        if action.finished_at is not None and action.status.value in ("completed", "failed"):
            m.DETECTION_LATENCY.labels(kind).observe(max(0.0, (now - action.finished_at).total_seconds()))
        started = action.started_at or execution.started_at
        if started is not None:
            end = action.finished_at or now
            m.RUN_DURATION.labels(kind, action.status.value).observe(
                max(0.0, (end - started).total_seconds())
            )


def _backend_facts(executor: Executor) -> dict[str, Any]:
    """What ``decide()`` must know of the backend itself: how it is watched, what it enforces."""
    poll = None if executor.supports_events else float(getattr(executor, "poll_interval", 0) or 0) or None
    return {"poll_interval": poll, "backend_enforces_timeout": executor.enforces_timeout}
