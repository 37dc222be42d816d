"""The one-job step: read the rows, observe the container, ``decide``, act, record.

Everything that drives a job goes through ``Reconciler.reconcile(job_id)``: the daemon's
workers and the model methods (``job.launch()``, ``job.get_status()``, ``job.harvest()``).
No database transaction is held open across an executor call: each recording step is its own
short transaction, and every status change is a compare-and-swap, so a lost race just means
"read again and decide again".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import structlog
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from container_manager.conf import Policy, get_policy
from container_manager.models import ContainerExecution, ContainerJob, ExecutorHost, HealthStatus
from container_manager.signals import job_launched, job_retry_scheduled
from container_manager.states import LIVE_EXECUTION_VALUES, ExecutionStatus, JobStatus, Reason
from container_manager.transitions import _send_after_commit, check_fence, transition
from container_manager.validation import parse_retry_on
from executors.base import Executor
from executors.exceptions import ExecutorError, InvalidSpec, Unavailable
from executors.registry import get_executor
from executors.types import LogTail, Observed
from metrics import definitions as m
from reconciler import decide as d
from reconciler.exceptions import LostRace
from reconciler.spec import (
    build_spec,
    check_job,
    container_name,
    describe_validation_error,
    effective_limits,
)

log = structlog.get_logger("reconciler")

#: decide/act rounds in one step before handing the job back to the queue.
MAX_ROUNDS = 12
#: wait before looking again at a job that found no host with capacity (the daemon's poller
#: also wakes waiting jobs as soon as an attempt ends and frees a slot).
NO_CAPACITY_RETRY = 5.0
#: wait after a transient executor error.
TRANSIENT_RETRY = 2.0
#: returned by an action to say "the rows changed: read them and decide again now".
AGAIN = object()


@dataclass
class _Snapshot:
    job: ContainerJob
    execution: ContainerExecution | None
    #: what the container looked like right after we stopped it (exit code, stop time).
    after_stop: Observed | None = None


def job_view(job: ContainerJob, policy: Policy) -> d.JobView:
    try:
        retry_on = parse_retry_on(job.retry_on)
    except ValidationError:
        retry_on = frozenset()
    return d.JobView(
        id=job.pk,
        status=JobStatus(job.status),
        attempts=job.attempts,
        max_retries=job.max_retries,
        timeout_seconds=int(effective_limits(job, policy)["timeout_seconds"]),
        retry_backoff_seconds=job.retry_backoff_seconds,
        retry_backoff_max_seconds=job.retry_backoff_max_seconds,
        retry_on=retry_on,
        run_after=job.run_after,
        cancel_requested=job.cancel_requested_at is not None,
    )


def attempt_view(execution: ContainerExecution | None) -> d.AttemptView | None:
    if execution is None:
        return None
    return d.AttemptView(
        attempt=execution.attempt,
        status=ExecutionStatus(execution.status),
        container_name=execution.container_name,
        created_at=execution.created_at,
        started_at=execution.started_at,
        reason=Reason(execution.reason),
        exit_code=execution.exit_code,
        cleaned_up=execution.cleaned_up,
        message=execution.message,
        launched=bool(execution.container_id),
    )


class HostBreaker:
    """Marks a host unhealthy after consecutive transient failures, and healthy after a success.

    While a host is unhealthy, unpinned jobs are scheduled elsewhere; the daemon's resync
    re-probes it with ``health_check()``. One failure alone does not open the circuit.
    """

    threshold = 3

    def __init__(self) -> None:
        self._failures: dict[int, int] = {}

    def failed(self, execution: ContainerExecution, exc: ExecutorError) -> None:
        host_id = execution.executor_host_id
        if host_id is None:
            return
        count = self._failures[host_id] = self._failures.get(host_id, 0) + 1
        if count == self.threshold:
            ExecutorHost.objects.filter(pk=host_id).update(
                health_status=HealthStatus.UNHEALTHY, health_message=str(exc)[:2000]
            )
            log.warning("host marked unhealthy", host=execution.host_name, failures=count)

    def succeeded(self, execution: ContainerExecution) -> None:
        host_id = execution.executor_host_id
        if host_id is None or not self._failures.pop(host_id, 0):
            return
        ExecutorHost.objects.filter(pk=host_id, health_status=HealthStatus.UNHEALTHY).update(
            health_status=HealthStatus.HEALTHY, health_message=""
        )


def _first_start(job: ContainerJob, execution: ContainerExecution | None) -> dict[str, Any]:
    """``started_at`` for the job when its attempt ran too briefly to be seen running."""
    if job.started_at is None and execution is not None and execution.started_at is not None:
        return {"started_at": execution.started_at}
    return {}


class Reconciler:
    """Drives single jobs toward their desired state. Thread-safe: keep one per process."""

    def __init__(
        self,
        *,
        actor: str = "api",
        policy: Policy | None = None,
        executor_for: Callable[[ExecutorHost], Executor] = get_executor,
        clock: Callable[[], datetime] = timezone.now,
        host_names: Collection[str] | None = None,
    ) -> None:
        self.actor = actor
        self.policy = policy or get_policy()
        self.decide_policy = d.DecidePolicy(
            stop_grace_seconds=self.policy.stop_grace_seconds,
            resync_seconds=self.policy.resync_seconds,
            launch_deadline_seconds=self.policy.launch_deadline_seconds,
        )
        self.executor_for = executor_for
        self.clock = clock
        self.host_names = frozenset(host_names) if host_names else None
        #: when set, no new attempt is started (graceful shutdown).
        self.draining = False
        self.breaker = HostBreaker()
        #: called whenever an attempt ends, i.e. a host slot frees up (the daemon wakes its poller).
        self.on_slot_freed: Callable[[], None] | None = None

    # The step -----------------------------------------------------------------------

    def reconcile(self, job_id: int) -> float | None:
        """Run one step for ``job_id``; returns seconds until it should be looked at again."""
        started = time.perf_counter()
        m.RECONCILE_PASSES.inc()
        try:
            return self._reconcile(job_id)
        finally:
            # The attempt and host bound for this step's log lines (library ones too) end with it.
            structlog.contextvars.unbind_contextvars("attempt", "host")
            m.RECONCILE_DURATION.observe(time.perf_counter() - started)

    def _reconcile(self, job_id: int) -> float | None:
        carried: Observed | None = None
        for _ in range(MAX_ROUNDS):
            snap = self._read(job_id)
            if snap is None:
                return None
            job, execution = snap.job, snap.execution
            if not self._mine(job, execution):
                return None
            if execution is not None:
                structlog.contextvars.bind_contextvars(attempt=execution.attempt, host=execution.host_name)
            jv, av = job_view(job, self.policy), attempt_view(execution)
            observed = None
            if d.needs_observation(jv, av):
                assert execution is not None
                if carried is not None and carried.name == execution.container_name:
                    observed = carried
                else:
                    try:
                        observed = self._executor(execution).inspect(execution.container_name)
                    except ExecutorError as exc:
                        return self._executor_failed(execution, "inspect", exc)
                    self.breaker.succeeded(execution)
            carried = None
            plan = d.decide(jv, av, observed, self.clock(), self.decide_policy)
            bind = log.bind(job_id=job_id)
            try:
                outcome = self._act(snap, plan, observed, bind)
            except LostRace:
                continue
            if isinstance(outcome, Observed):
                carried = outcome
                continue
            if outcome is AGAIN:
                continue
            if outcome is not None:
                return outcome
            if plan.requeue_after != 0:
                return self._polling_cap(execution, observed, plan.requeue_after)
        return 0.5

    def _polling_cap(
        self, execution: ContainerExecution | None, observed: Observed | None, delay: float | None
    ) -> float | None:
        """A live container on a backend without events is looked at every poll interval."""
        if observed is None or execution is None or not observed.exists:
            return delay
        try:
            executor = self._executor(execution)
        except ExecutorError:
            return delay
        if executor.supports_events:
            return delay
        interval = float(getattr(executor, "poll_interval", self.policy.resync_seconds))
        return interval if delay is None else min(delay, interval)

    def _mine(self, job: ContainerJob, execution: ContainerExecution | None) -> bool:
        """With a host filter, only jobs pinned to, or running on, our hosts are ours."""
        if self.host_names is None:
            return True
        if execution is not None and execution.host_name:
            return execution.host_name in self.host_names
        host = job.docker_host
        return host is None or host.name in self.host_names

    def _read(self, job_id: int) -> _Snapshot | None:
        job = (
            ContainerJob.objects.select_related("docker_host", "environment_template")
            .filter(pk=job_id)
            .first()
        )
        if job is None:
            return None
        execution = (
            ContainerExecution.objects.select_related("executor_host")
            .filter(job_id=job_id)
            .order_by("-attempt")
            .first()
        )
        return _Snapshot(job, execution)

    def _executor(self, execution: ContainerExecution) -> Executor:
        host = execution.executor_host
        if host is None:
            raise Unavailable(f"host {execution.host_name!r} of this attempt no longer exists")
        return self.executor_for(host)

    def _executor_failed(self, execution: ContainerExecution, verb: str, exc: ExecutorError) -> float:
        m.EXECUTOR_ERRORS.labels(execution.executor_type or "unknown", verb, str(exc.transient).lower()).inc()
        m.RECONCILE_ERRORS.labels("executor_transient" if exc.transient else "executor_permanent").inc()
        log.warning(
            "executor call failed",
            verb=verb,
            job_id=execution.job_id,
            attempt=execution.attempt,
            host=execution.host_name,
            error=str(exc),
        )
        if isinstance(exc, Unavailable):
            self.breaker.failed(execution, exc)
        ContainerExecution.objects.filter(pk=execution.pk).update(message=f"{verb}: {exc}"[:4000])
        return TRANSIENT_RETRY

    # Acting ---------------------------------------------------------------------------

    def _act(self, snap: _Snapshot, plan: d.Plan, observed: Observed | None, bind: Any) -> Any:
        """Carry out ``plan``. Returns None to follow the plan's requeue, a float to requeue after
        that many seconds, or a fresh ``Observed`` to decide again with it. Raises ``LostRace``."""
        for action in plan.actions:
            result = self._do(snap, action, observed, bind)
            if result is not None:
                return result
        return None

    def _do(self, snap: _Snapshot, action: d.Action, observed: Observed | None, bind: Any) -> Any:
        job, execution = snap.job, snap.execution
        now = self.clock()
        if isinstance(action, d.StartAttempt):
            return self._start_attempt(job, action.attempt, bind)
        if isinstance(action, d.FinishJob):
            fields: dict[str, Any] = {
                "failure_reason": action.reason.value,
                "status_message": action.message[:4000],
                "exit_code": action.exit_code,
            }
            fields.update(_first_start(job, execution))
            if not transition(
                job.pk,
                job.status,
                action.status,
                actor=self.actor,
                reason=action.reason.value,
                message=action.message,
                attempt=job.attempts or None,
                fields=fields,
                now=now,
            ):
                raise LostRace()
            m.JOBS_FINISHED.labels(action.status.value, action.reason.value).inc()
            bind.info(
                "job finished",
                outcome=action.status.value,
                reason=action.reason.value,
                exit_code=action.exit_code,
            )
            return None
        if isinstance(action, d.ScheduleRetry):
            fields = {
                "run_after": action.retry_at,
                "failure_reason": action.reason.value,
                "status_message": action.message[:4000],
                "exit_code": action.exit_code,
                **_first_start(job, execution),
            }
            if not transition(
                job.pk,
                job.status,
                JobStatus.RETRYING,
                actor=self.actor,
                reason=action.reason.value,
                message=f"retry at {action.retry_at.isoformat()}: {action.message}",
                attempt=job.attempts,
                fields=fields,
                now=now,
            ):
                raise LostRace()
            m.RETRIES_SCHEDULED.labels(action.reason.value).inc()
            _send_after_commit(
                job_retry_scheduled,
                job_id=job.pk,
                attempt=job.attempts,
                retry_at=action.retry_at,
                reason=action.reason.value,
            )
            bind.info("retry scheduled", retry_at=action.retry_at.isoformat(), reason=action.reason.value)
            return None
        assert execution is not None, f"{action} needs an attempt"
        if isinstance(action, d.Launch):
            return self._launch(job, execution, bind)
        if isinstance(action, d.MarkRunning):
            self._mark_running(job, execution, action.started_at, observed, now)
            return None
        if isinstance(action, d.Stop):
            try:
                executor = self._executor(execution)
                executor.stop(execution.container_name, action.grace_seconds)
                snap.after_stop = executor.inspect(execution.container_name)
            except ExecutorError as exc:
                return self._executor_failed(execution, "stop", exc)
            return None
        if isinstance(action, d.FinishAttempt):
            stopped = snap.after_stop
            if stopped is not None and stopped.finished_at is not None and action.exit_code is None:
                action = replace(action, exit_code=stopped.exit_code, finished_at=stopped.finished_at)
            return self._finish_attempt(job, execution, action, bind)
        if isinstance(action, d.Cleanup):
            try:
                self._executor(execution).remove(execution.container_name)
            except ExecutorError as exc:
                if execution.executor_host_id is not None:
                    return self._executor_failed(execution, "remove", exc)
            ContainerExecution.objects.filter(pk=execution.pk).update(cleaned_up=True)
            execution.cleaned_up = True
            return None
        raise TypeError(f"unknown action {action!r}")

    def _start_attempt(self, job: ContainerJob, attempt: int, bind: Any) -> Any:
        if self.draining:
            return NO_CAPACITY_RETRY
        try:
            check_job(job, self.policy)
        except ValidationError as exc:
            message = describe_validation_error(exc)
            if not transition(
                job.pk,
                job.status,
                JobStatus.FAILED,
                actor=self.actor,
                reason=Reason.INVALID_SPEC.value,
                message=message,
                fields={"failure_reason": Reason.INVALID_SPEC.value, "status_message": message},
            ):
                raise LostRace() from None
            m.JOBS_FINISHED.labels(JobStatus.FAILED.value, Reason.INVALID_SPEC.value).inc()
            bind.warning("job refused at launch", error=message)
            return None
        now = self.clock()
        name = container_name(self.policy.instance, job.pk, attempt)
        with transaction.atomic():
            check_fence()
            host = self._choose_host(job)
            if host is None:
                return NO_CAPACITY_RETRY
            fields: dict[str, Any] = {"attempts": attempt, **effective_limits(job, self.policy)}
            if not transition(
                job.pk,
                job.status,
                JobStatus.LAUNCHING,
                actor=self.actor,
                message=f"attempt {attempt} on {host.name}",
                attempt=attempt,
                fields=fields,
                where=Q(attempts=attempt - 1),
                now=now,
            ):
                raise LostRace()
            ContainerExecution.objects.create(
                job_id=job.pk,
                attempt=attempt,
                executor_host=host,
                host_name=host.name,
                executor_type=host.executor_type,
                container_name=name,
                status=ExecutionStatus.LAUNCHING.value,
                created_at=now,
            )
        bind.info("attempt claimed", attempt=attempt, host=host.name, container=name)
        return None

    def _choose_host(self, job: ContainerJob) -> ExecutorHost | None:
        """The pinned host, else the least-loaded available host with a free slot.

        Runs inside the claim transaction; on PostgreSQL the chosen host row is locked so
        concurrent claims cannot both take its last slot (SQLite serialises writers anyway).
        """
        hosts = ExecutorHost.objects.filter(is_active=True)
        if job.docker_host_id is not None:
            hosts = hosts.filter(pk=job.docker_host_id)
        else:
            hosts = hosts.exclude(health_status=HealthStatus.UNHEALTHY)
        if self.host_names is not None:
            hosts = hosts.filter(name__in=self.host_names)
        for candidate in hosts.with_running_count().order_by("running_jobs", "name"):
            if candidate.running_jobs >= candidate.max_concurrent_jobs:  # type: ignore[attr-defined]
                continue
            locked = ExecutorHost.objects.select_for_update().get(pk=candidate.pk)
            if locked.get_capacity()["available"] > 0:
                return locked
        return None

    def _launch(self, job: ContainerJob, execution: ContainerExecution, bind: Any) -> Any:
        try:
            executor = self._executor(execution)
            spec = build_spec(job, execution.attempt, execution.container_name, self.policy)
            started = time.perf_counter()
            observed = executor.launch(spec)
            m.LAUNCH_LATENCY.labels(execution.executor_type).observe(time.perf_counter() - started)
            self.breaker.succeeded(execution)
        except InvalidSpec as exc:
            m.EXECUTOR_ERRORS.labels(execution.executor_type, "launch", "false").inc()
            bind.warning("launch refused", error=str(exc))
            action = d.FinishAttempt(
                ExecutionStatus.FAILED,
                Reason.LAUNCH_ERROR,
                capture_logs=False,
                message=f"launch failed: {exc}",
            )
            return self._finish_attempt(job, execution, action, bind) or AGAIN
        except ExecutorError as exc:
            return self._executor_failed(execution, "launch", exc)
        # The launch marker: from now on a missing container means "lost", never "create again".
        container_id = observed.container_id or execution.container_name
        ContainerExecution.objects.filter(pk=execution.pk).update(container_id=container_id)
        execution.container_id = container_id
        return observed

    def _mark_running(
        self,
        job: ContainerJob,
        execution: ContainerExecution,
        started_at: datetime,
        observed: Observed | None,
        now: datetime,
    ) -> None:
        container_id = (observed.container_id if observed else None) or execution.container_id
        container_id = container_id or execution.container_name
        with transaction.atomic():
            check_fence()
            ContainerExecution.objects.filter(pk=execution.pk, status=ExecutionStatus.LAUNCHING.value).update(
                status=ExecutionStatus.RUNNING.value, started_at=started_at, container_id=container_id
            )
            fields = {"started_at": job.started_at or started_at}
            if not transition(
                job.pk,
                JobStatus.LAUNCHING,
                JobStatus.RUNNING,
                actor=self.actor,
                attempt=execution.attempt,
                fields=fields,
                now=now,
            ):
                raise LostRace()
            _send_after_commit(
                job_launched, job_id=job.pk, attempt=execution.attempt, host=execution.host_name
            )
        m.LAUNCHES.labels(execution.executor_type).inc()
        due = job.run_after if execution.attempt > 1 and job.run_after else job.created_at
        m.QUEUE_WAIT.labels(execution.executor_type).observe(max(0.0, (started_at - due).total_seconds()))

    def _finish_attempt(
        self, job: ContainerJob, execution: ContainerExecution, action: d.FinishAttempt, bind: Any
    ) -> Any:
        tail = LogTail()
        if action.capture_logs:
            try:
                tail = self._executor(execution).logs(execution.container_name, self.policy.log_tail_bytes)
            except ExecutorError as exc:
                if exc.transient:
                    return self._executor_failed(execution, "logs", exc)
        now = self.clock()
        values = {
            "status": action.status.value,
            "reason": action.reason.value,
            "exit_code": action.exit_code,
            "oom_killed": action.oom_killed,
            "message": action.message[:4000],
            "finished_at": action.finished_at or now,
            "stdout": tail.stdout,
            "stderr": tail.stderr,
            "stdout_truncated": tail.stdout_truncated,
            "stderr_truncated": tail.stderr_truncated,
        }
        if action.started_at is not None:
            values["started_at"] = action.started_at
        updated = ContainerExecution.objects.filter(pk=execution.pk, status__in=LIVE_EXECUTION_VALUES).update(
            **values
        )
        if not updated:
            raise LostRace()
        if self.on_slot_freed is not None:
            self.on_slot_freed()
        kind = execution.executor_type or "unknown"
        m.ATTEMPTS_FINISHED.labels(kind, action.status.value, action.reason.value).inc()
        if action.finished_at is not None and action.status in (
            ExecutionStatus.COMPLETED,
            ExecutionStatus.FAILED,
        ):
            m.DETECTION_LATENCY.labels(kind).observe(max(0.0, (now - action.finished_at).total_seconds()))
        started = action.started_at or execution.started_at
        if started is not None:
            end = action.finished_at or now
            m.RUN_DURATION.labels(kind, action.status.value).observe(
                max(0.0, (end - started).total_seconds())
            )
        bind.info(
            "attempt finished",
            attempt=execution.attempt,
            outcome=action.status.value,
            reason=action.reason.value,
            exit_code=action.exit_code,
        )
        # Decide again from the recorded attempt (finish the job or schedule a retry).
        for key, value in values.items():
            setattr(execution, key, value)
        return None
