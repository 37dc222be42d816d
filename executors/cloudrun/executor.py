"""Google Cloud Run Jobs as a backend: one Cloud Run *Job* per attempt, one *Execution* per Job.

Why it looks like this:

* **One Job per attempt, created idempotently.** Cloud Run has no "create a container" verb; a
  Job is the template and RunJob starts an Execution of it. The Job id is derived from the
  attempt's container name, so CreateJob is idempotent: ``ALREADY_EXISTS`` means "adopt".
* **RunJob is never re-sent blindly.** RunJob is not idempotent: each call that reaches the
  server starts one more Execution. So before RunJob, and before any re-send after an error,
  the Job itself is read (``GetJob``: ``execution_count`` and ``latest_created_execution`` are
  fields of the Job, unlike execution listings, which may lag); a job that has an execution is
  adopted. RunJob is re-sent in the same call only after an answer that the server gave (5xx,
  429); after no answer at all (timeout, dropped connection, 504) the server may still be
  creating the execution, so ``launch`` raises ``Unavailable`` and the next launch looks again.
* **Polling, bounded.** Cloud Run pushes no events (``supports_events = False``). The
  reconciler's resync calls ``list_managed``, which lists the region's *jobs* (``ListJobs``,
  paginated): a region holds at most 1000 jobs (https://cloud.google.com/run/quotas), whereas
  it may hold a thousand executions per job, so the cost of a poll does not grow with other
  people's execution history. Each Job carries ``latest_created_execution`` with its
  ``completion_status``; the snapshot answers the ``inspect`` calls of the next
  ``poll_interval`` seconds. Only transitions cost more: one ``GetExecution`` when an execution
  starts running (for its start time) and one ``GetExecution`` plus one ``ListTasks`` when it
  ends (for exit codes); finished results are cached. ``counters()`` counts every request by
  method, so tests pin the cost of a poll.
* **Cloud Run enforces the timeout** (``TaskTemplate.timeout``, counted from the task's start)
  and retries nothing (``max_retries = 0``): the reconciler owns retries. ``Observed.started_at``
  is the task's own start, so provisioning time is never charged to the job; an execution still
  provisioning is ``RUNNING`` with ``started_at=None``.
* **Exit codes come from the Tasks API**, never from condition messages (see ``observe``).
* **Long-running operations** are waited for by polling ``GetOperation`` (bounded by
  ``operation_timeout``). RunJob's operation only completes when the Execution does, so the
  Execution is read from its metadata and never waited for.

What this backend cannot do: resource-usage stats, log streaming, a configurable stop grace
(Cloud Run sends SIGTERM and kills 10 s later), or ``ContainerSpec.user``/``pids_limit`` (no
such knobs; ignored). Env values, secret ones included, become plain environment variables of
the Job, visible to whoever may read it. Logs: a pointer to the execution's Cloud Console log
URI, or with ``use_cloud_logging`` the newest bytes of its stdout/stderr (see ``logs``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from google.api_core.client_options import ClientOptions
from google.cloud import run_v2

from executors.base import DEFAULT_LOG_TAIL_BYTES, BoundedTail, Executor
from executors.cloudrun import logs as cloud_logs
from executors.cloudrun.calls import GRPC_CODE_EXCEPTIONS, GoogleCalls, NoAnswer, translate
from executors.cloudrun.config import Settings, load_credentials, parse_config
from executors.cloudrun.mapping import build_job, container_name, environment_problems, is_ours, job_id_for
from executors.cloudrun.mapping import labels_of as resource_labels
from executors.cloudrun.observe import execution_done, observe_execution, plain
from executors.exceptions import (
    ConfigurationError,
    Conflict,
    ExecutorError,
    HostMisconfigured,
    InvalidSpec,
    NotFound,
    Unavailable,
)
from executors.types import CallCounts, ContainerSpec, ContainerState, HealthReport, LogTail, Observed

_Status = run_v2.ExecutionReference.CompletionStatus
_TERMINAL = (_Status.EXECUTION_SUCCEEDED, _Status.EXECUTION_FAILED, _Status.EXECUTION_CANCELLED)
#: Finished executions whose outcome is kept, so a finished job costs no more calls.
FINAL_CACHE_SIZE = 4096


@dataclass
class _Snapshot:
    #: ``time.monotonic()`` when the listing was taken.
    taken_at: float
    #: job id -> Job, for every job in the region.
    jobs: dict[str, run_v2.Job]


class CloudRunExecutor(Executor):
    """Runs each attempt as a Cloud Run Job execution in one project and region."""

    kind = "cloudrun"
    supports_events = False
    enforces_timeout = True

    def __init__(
        self,
        settings: Settings,
        *,
        name: str = "cloudrun",
        jobs_client: Any = None,
        executions_client: Any = None,
        tasks_client: Any = None,
        credentials: Any = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.project = settings.project
        self.location = settings.location
        self.parent = f"projects/{settings.project}/locations/{settings.location}"
        self.poll_interval = settings.poll_interval
        self.task_count = settings.task_count
        self._jobs = jobs_client
        self._executions = executions_client
        self._tasks = tasks_client
        self._credentials = credentials
        self._logging: Any = None
        self.calls = GoogleCalls(
            call_timeout=settings.call_timeout,
            retry_attempts=settings.retry_attempts,
            retry_backoff=settings.retry_backoff,
            retry_backoff_max=settings.retry_backoff_max,
        )
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        #: execution name -> its task's start, once it has one (it never changes).
        self._started: dict[str, Any] = {}
        #: execution name -> its final Observed (finished executions never change).
        self._final: OrderedDict[str, Observed] = OrderedDict()
        #: execution name -> Cloud Console log URI, for operators.
        self.log_uris: dict[str, str] = {}
        #: job name -> when a RunJob for it got no answer (the server may still be acting on it).
        self._unanswered: dict[str, float] = {}

    def counters(self) -> dict[str, CallCounts]:
        """Per Google method (``create_job``, ``get_job``, ``run_job``, ...): calls, retries, errors."""
        return self.calls.counter.snapshot()

    @property
    def retry_attempts(self) -> int:
        return self.calls.attempts

    # Construction ---------------------------------------------------------------------

    @classmethod
    def check_config(cls, connection_string: str, config: Mapping[str, Any]) -> None:
        parse_config(connection_string, config)

    @classmethod
    def check_environment(cls, env: Mapping[str, str]) -> list[str]:
        return environment_problems(env)

    @classmethod
    def from_config(cls, connection_string: str, config: dict[str, Any], name: str) -> CloudRunExecutor:
        settings = parse_config(connection_string, config)
        credentials = load_credentials(settings)
        options = ClientOptions(api_endpoint=settings.api_endpoint) if settings.api_endpoint else None
        try:
            clients = [
                client_class(transport=settings.transport, client_options=options, credentials=credentials)
                for client_class in (run_v2.JobsClient, run_v2.ExecutionsClient, run_v2.TasksClient)
            ]
        except Exception as exc:  # MutualTLSChannelError, a bad endpoint, ...
            raise ConfigurationError(
                f"cannot build Cloud Run clients for {name!r}: {type(exc).__name__}"
            ) from None
        jobs, executions, tasks = clients
        return cls(
            settings,
            name=name,
            jobs_client=jobs,
            executions_client=executions,
            tasks_client=tasks,
            credentials=credentials,
        )

    def job_name(self, name: str) -> str:
        """Full Cloud Run job resource name for our container ``name``."""
        return f"{self.parent}/jobs/{job_id_for(name)}"

    def build_job(self, spec: ContainerSpec) -> run_v2.Job:
        """The Cloud Run Job for one attempt (exposed for tests and dry runs)."""
        s = self.settings
        return build_job(
            spec,
            task_count=s.task_count,
            service_account=s.service_account,
            vpc_connector=s.vpc_connector,
            vpc_egress=s.vpc_egress,
            extra_labels=s.labels,
        )

    # The six verbs ----------------------------------------------------------------------

    def launch(self, spec: ContainerSpec) -> Observed:
        job = self.build_job(spec)
        job_id = job_id_for(spec.name)
        job_name = f"{self.parent}/jobs/{job_id}"
        self._forget(job_id)
        created: run_v2.Job | None = None
        try:
            operation = self.calls.call(
                "create_job",
                self._jobs.create_job,
                request={"parent": self.parent, "job": job, "job_id": job_id},
            )
            created = self._await_operation("create_job", operation.operation, run_v2.Job)
        except Conflict:
            pass  # ALREADY_EXISTS: an earlier launch of this attempt created it; adopt it
        if created is None or created.reconciling or created.execution_count:
            current = self._ready_job(job_name)
            if self._has_execution(current):
                self._unanswered.pop(job_name, None)
                return self._observe_job(spec.name, current)
        sent = self._unanswered.get(job_name)
        if sent is not None and time.monotonic() - sent < self.settings.operation_timeout:
            # A RunJob of ours got no answer and its execution is not there yet: it may still
            # come. Only after operation_timeout is that request taken as lost.
            raise Unavailable(
                f"Cloud Run job {job_name}: an earlier RunJob got no answer; not running it again "
                f"until {self.settings.operation_timeout:g} s have passed without its execution appearing"
            )
        return self._run(spec.name, job_name)

    def inspect(self, name: str) -> Observed:
        job_id = job_id_for(name)
        job = self._from_snapshot(job_id)
        if job is None:
            job = self._get_job(f"{self.parent}/jobs/{job_id}")
            if job is None:
                return Observed.missing(name)
        return self._observe_job(name, job)

    def stop(self, name: str, grace_seconds: float = 10.0) -> None:
        """Cancel the execution; Cloud Run sends SIGTERM and kills 10 s later (not configurable)."""
        job_id = job_id_for(name)
        self._forget(job_id)
        job = self._get_job(f"{self.parent}/jobs/{job_id}")
        if job is None or not self._has_execution(job):
            return
        reference = job.latest_created_execution
        if reference.completion_status in _TERMINAL or reference.completion_time is not None:
            return
        try:
            self.calls.call(
                "cancel_execution", self._executions.cancel_execution, request={"name": reference.name}
            )
        except (NotFound, InvalidSpec):
            pass  # gone, or finished meanwhile (FAILED_PRECONDITION): nothing to stop
        self._forget(job_id)

    def logs(self, name: str, max_bytes: int = DEFAULT_LOG_TAIL_BYTES) -> LogTail:
        job_id = job_id_for(name)
        job = self._get_job(f"{self.parent}/jobs/{job_id}")
        if job is None or not self._has_execution(job):
            return LogTail()
        reference = job.latest_created_execution
        note = ""
        if self.settings.use_cloud_logging:
            try:
                client = self._logging_client()
                if client is not None:
                    return cloud_logs.read_tail(
                        client,
                        self.project,
                        job_id,
                        reference.name.rsplit("/", 1)[-1],
                        plain(reference.create_time),
                        max_bytes,
                        self.calls.counter.call,
                    )
                note = " (google-cloud-logging is not installed)"
            except Exception as exc:
                self.calls.counter.error(cloud_logs.VERB)
                note = f" (Cloud Logging: {type(exc).__name__})"
        uri = self.log_uris.get(reference.name)
        if uri is None:
            try:
                execution = self.calls.call(
                    "get_execution", self._executions.get_execution, request={"name": reference.name}
                )
                uri = execution.log_uri or ""
            except NotFound:
                uri = ""
            with self._lock:
                self.log_uris[reference.name] = uri
        text = BoundedTail(max_bytes)
        text.feed(f"logs: {uri or '(no log URI reported)'}{note}\n".encode())
        return LogTail(stdout=text.text(), stdout_truncated=text.truncated)

    def remove(self, name: str) -> None:
        """Delete the Cloud Run job (and with it its executions). Absent is fine."""
        job_id = job_id_for(name)
        self._forget(job_id)
        try:
            operation = self.calls.call(
                "delete_job", self._jobs.delete_job, request={"name": f"{self.parent}/jobs/{job_id}"}
            )
            self._await_operation("delete_job", operation.operation, run_v2.Job)
        except NotFound:
            pass
        self._forget(job_id)

    def list_managed(self, instance: str) -> list[Observed]:
        snapshot = self._take_snapshot()
        return [
            self._observe_job(container_name(job), job)
            for job in snapshot.jobs.values()
            if is_ours(job, instance)
        ]

    # Optional verbs -------------------------------------------------------------------

    def health_check(self, timeout: float = 5.0) -> HealthReport:
        started = time.monotonic()
        try:
            self.calls.call(
                "list_jobs",
                self._jobs.list_jobs,
                retry=False,
                timeout=timeout,
                request={"parent": self.parent, "page_size": 1},
            )
        except ExecutorError as exc:
            return HealthReport(False, f"Cloud Run {self.parent}: {exc}", time.monotonic() - started)
        except Exception as exc:  # never raises
            return HealthReport(False, f"Cloud Run {self.parent}: {exc!r}", time.monotonic() - started)
        return HealthReport(True, f"Cloud Run {self.parent} reachable", time.monotonic() - started)

    def close(self) -> None:
        for client in (self._jobs, self._executions, self._tasks):
            try:
                transport = getattr(client, "transport", None)
                if transport is not None:
                    transport.close()
            except Exception:
                pass

    # Launching ----------------------------------------------------------------------------

    @staticmethod
    def _has_execution(job: run_v2.Job) -> bool:
        return bool(job.execution_count or job.latest_created_execution.name)

    def _ready_job(self, job_name: str) -> run_v2.Job:
        """The job once Cloud Run has finished creating it (bounded by ``operation_timeout``)."""

        def poll() -> run_v2.Job | None:
            job = self._get_job(job_name)
            if job is None:
                raise Unavailable(f"Cloud Run job {job_name} vanished while being launched")
            if self._has_execution(job) or not job.reconciling:
                condition = job.terminal_condition
                if condition.state == run_v2.Condition.State.CONDITION_FAILED and not self._has_execution(
                    job
                ):
                    raise InvalidSpec(f"Cloud Run job {job_name} is not runnable: {condition.message}")
                return job
            return None

        timeout = self.settings.operation_timeout
        return self.calls.wait_until(
            poll, timeout, f"Cloud Run get_job: job still reconciling after {timeout:g} s"
        )

    def _run(self, name: str, job_name: str) -> Observed:
        """RunJob once; after an error, re-send only when the job provably has no execution."""
        attempts = self.calls.attempts
        for attempt in range(1, attempts + 1):
            try:
                operation = self.calls.call(
                    "run_job", self._jobs.run_job, retry=False, request={"name": job_name}
                )
                self._unanswered.pop(job_name, None)
                break
            except HostMisconfigured:
                raise
            except Unavailable as exc:
                # The server may have created the execution before the error: look first.
                current = self._get_job(job_name)
                if current is not None and self._has_execution(current):
                    return self._observe_job(name, current)
                if isinstance(exc, NoAnswer):
                    self._unanswered[job_name] = time.monotonic()
                    raise Unavailable(
                        f"{exc}; RunJob got no answer, so it is not sent again until a later launch "
                        "has checked the job's executions"
                    ) from exc
                if attempt == attempts:
                    raise
                self.calls.pause("run_job", attempt, exc)
        execution = self._operation_execution(operation.operation)
        if execution is None or execution_done(execution):
            current = self._get_job(job_name)
            if current is None:
                return Observed.missing(name)
            return self._observe_job(name, current)
        return observe_execution(name, execution, None, resource_labels(execution))

    def _operation_execution(self, raw: Any) -> run_v2.Execution | None:
        if raw.HasField("error") and raw.error.code:
            error_class = GRPC_CODE_EXCEPTIONS.get(raw.error.code, GRPC_CODE_EXCEPTIONS[2])
            raise translate("run_job", error_class(raw.error.message))
        for field in ("metadata", "response"):
            if raw.HasField(field):
                any_msg = getattr(raw, field)
                if any_msg.type_url.endswith("google.cloud.run.v2.Execution"):
                    return run_v2.Execution.deserialize(any_msg.value)
        return None

    def _await_operation(self, method: str, raw: Any, result_type: Any) -> Any:
        """Poll a long-running operation until done (bounded by ``operation_timeout``)."""

        def poll() -> Any:
            nonlocal raw
            if not raw.done:
                raw = self.calls.call("get_operation", self._jobs.get_operation, request={"name": raw.name})
            return raw if raw.done else None

        if not raw.done:
            timeout = self.settings.operation_timeout
            self.calls.wait_until(
                poll, timeout, f"Cloud Run {method}: operation {raw.name} not done after {timeout:g} s"
            )
        if raw.HasField("error") and raw.error.code:
            error_class = GRPC_CODE_EXCEPTIONS.get(raw.error.code, GRPC_CODE_EXCEPTIONS[2])
            raise translate(method, error_class(raw.error.message))
        if raw.HasField("response"):
            return result_type.deserialize(raw.response.value)
        return None

    # Observing ----------------------------------------------------------------------------

    def _get_job(self, job_name: str) -> run_v2.Job | None:
        try:
            return self.calls.call("get_job", self._jobs.get_job, request={"name": job_name})
        except NotFound:
            return None

    def _observe_job(self, name: str, job: run_v2.Job) -> Observed:
        """The attempt's state from its Job, with as few further calls as the state allows."""
        labels = resource_labels(job)
        if not self._has_execution(job):
            return Observed(name=name, state=ContainerState.CREATED, labels=labels)
        reference = job.latest_created_execution
        if job.execution_count > 1 or not reference.name:
            # Someone ran our job again: report on the first execution, the one we started.
            return self._observe_full(name, self._first_execution(job.name), labels)
        final = self._final.get(reference.name)
        if final is not None:
            return replace(final, name=name, labels=labels)
        status = reference.completion_status
        if status == _Status.EXECUTION_PENDING:
            return Observed(
                name=name, state=ContainerState.RUNNING, container_id=reference.name, labels=labels
            )
        started = self._started.get(reference.name)
        if status == _Status.EXECUTION_RUNNING and started is not None:
            return Observed(
                name=name,
                state=ContainerState.RUNNING,
                container_id=reference.name,
                started_at=started,
                labels=labels,
            )
        try:
            execution = self.calls.call(
                "get_execution", self._executions.get_execution, request={"name": reference.name}
            )
        except NotFound:
            return Observed(name=name, state=ContainerState.CREATED, labels=labels)
        return self._observe_full(name, execution, labels)

    def _observe_full(self, name: str, execution: run_v2.Execution, labels: Mapping[str, str]) -> Observed:
        if execution.log_uri:
            with self._lock:
                self.log_uris[execution.name] = execution.log_uri
        if not execution_done(execution):
            observed = observe_execution(name, execution, None, labels)
            if observed.started_at is not None:
                with self._lock:
                    self._started[execution.name] = observed.started_at
            return observed
        tasks = self._list_tasks(execution.name)
        observed = observe_execution(name, execution, tasks, labels)
        if len(tasks) >= (execution.task_count or 1):
            with self._lock:
                self._final[execution.name] = observed
                self._started.pop(execution.name, None)
                while len(self._final) > FINAL_CACHE_SIZE:
                    self._final.popitem(last=False)
        return observed

    def _list_tasks(self, execution_name: str) -> list[run_v2.Task]:
        tasks: list[run_v2.Task] = []
        token = ""
        while True:
            page = self.calls.call(
                "list_tasks",
                self._tasks.list_tasks,
                request={
                    "parent": execution_name,
                    "page_size": self.settings.list_page_size,
                    "page_token": token,
                },
            )
            tasks.extend(page.tasks)
            token = page.next_page_token
            if not token:
                return tasks

    def _first_execution(self, job_name: str) -> run_v2.Execution:
        executions: list[run_v2.Execution] = []
        token = ""
        while True:
            page = self.calls.call(
                "list_executions",
                self._executions.list_executions,
                request={"parent": job_name, "page_size": self.settings.list_page_size, "page_token": token},
            )
            executions.extend(page.executions)
            token = page.next_page_token
            if not token:
                break
        if not executions:
            raise Unavailable(f"Cloud Run job {job_name} has executions that are not listed yet")
        return min(executions, key=lambda e: (e.create_time.timestamp() if e.create_time else 0.0, e.name))

    # The listing snapshot -----------------------------------------------------------------

    def _take_snapshot(self) -> _Snapshot:
        jobs: dict[str, run_v2.Job] = {}
        token = ""
        while True:
            page = self.calls.call(
                "list_jobs",
                self._jobs.list_jobs,
                request={
                    "parent": self.parent,
                    "page_size": self.settings.list_page_size,
                    "page_token": token,
                },
            )
            for job in page.jobs:
                jobs[job.name.rsplit("/", 1)[-1]] = job
            token = page.next_page_token
            if not token:
                break
        snapshot = _Snapshot(taken_at=time.monotonic(), jobs=jobs)
        with self._lock:
            self._snapshot = snapshot
        return snapshot

    def _from_snapshot(self, job_id: str) -> run_v2.Job | None:
        with self._lock:
            snapshot = self._snapshot
            if snapshot is None or time.monotonic() - snapshot.taken_at >= self.poll_interval:
                return None
            return snapshot.jobs.get(job_id)

    def _forget(self, job_id: str) -> None:
        """Drop a job from the snapshot after acting on it, so the next inspect asks Google."""
        with self._lock:
            if self._snapshot is not None:
                self._snapshot.jobs.pop(job_id, None)

    def _logging_client(self) -> Any:
        if self._logging is None:
            self._logging = cloud_logs.make_client(
                self.project,
                self._credentials,
                self.settings.logging_endpoint,
                use_grpc=self.settings.transport == "grpc",
            )
        return self._logging
