"""The fake Run Admin API v2 (and Cloud Logging's entries.list), served on 127.0.0.1.

What it reproduces, each with the documentation it follows:

* CreateJob (``?jobId=``) is a long-running operation that finishes later
  (``operation_delay``); until then the Job is ``reconciling`` (``Job.reconciling``: "Cloud
  Run will asynchronously perform all necessary steps"). 409 ``ALREADY_EXISTS`` on a duplicate
  id; 400 ``INVALID_ARGUMENT`` for an invalid id, image, label, CPU/memory combination, timeout,
  a reserved environment variable name (configuring/jobs/environment-variables, "Reserved
  names"), more than 1000 variables or arguments (quotas), a value over 32768 bytes
  (``EnvVar.value``).
* Limits (https://cloud.google.com/run/quotas): at most ``max_jobs`` (1000) jobs per project and
  region, and ``max_running_executions`` (1000) running executions; over them, 429
  ``RESOURCE_EXHAUSTED``.
* RunJob is not idempotent: every request that reaches it creates one more execution. Its
  operation's metadata is the Execution and it is done when the execution is.
* Executions provision for ``start_delay`` before their tasks start; ``Execution.start_time``
  and ``Task.start_time`` are the task's start. The task timeout counts from that start
  (``TaskTemplate.timeout``). Tasks (ListTasks/GetTask) carry ``lastAttemptResult``.
* Lists lag behind writes: an execution or job appears in ListExecutions/ListJobs
  ``list_delay`` seconds after it was created, while GetJob/GetExecution read it at once (the
  API promises nothing stronger for lists, so the fake takes the weakest reading).
* Faults: the next N requests of an RPC fail with a status, or are served late, or are carried
  out and then answered with an error (``apply=True``), as when a response is lost after the
  server acted.

Not reproduced: authentication and IAM (403 only by injection), job updates, real images.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.cloudrun import logging_api
from tests.fakes.cloudrun.behaviour import Behaviour, behaviour_from_argv, parse_behaviour
from tests.fakes.cloudrun.resources import Execution, Job, Operation
from tests.fakes.cloudrun.rpcs import RpcsMixin
from tests.fakes.cloudrun.wire import (
    ApiError,
    Server,
    cpu,
    duration_s,
    enum_names,
    enum_numbers,
    memory_mib,
    ts,
)

JOB_ID_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
IMAGE_RE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)
ENV_NAME_RE = re.compile(r"[^=]{1,32768}")
#: Container runtime contract (container-contract#env-vars): set by Cloud Run, so reserved.
RESERVED_ENV = {
    "PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION",
    "CLOUD_RUN_JOB", "CLOUD_RUN_EXECUTION", "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_ATTEMPT", "CLOUD_RUN_TASK_COUNT",
}  # fmt: skip
RESERVED_ENV_PREFIXES = ("CLOUD_RUN_", "X_GOOGLE_")
CPU_MEMORY_MIB = {1: (512, 4096), 2: (512, 8192), 4: (2048, 16384), 6: (4096, 24576), 8: (4096, 32768)}
MAX_TIMEOUT_S = 168 * 3600
JOB_TYPE = "type.googleapis.com/google.cloud.run.v2.Job"
EXECUTION_TYPE = "type.googleapis.com/google.cloud.run.v2.Execution"


@dataclass
class _Injection:
    method: str
    status: int | None
    times: int
    message: str
    delay: float
    apply: bool


class FakeCloudRun(RpcsMixin):
    """In-process fake of ``run.googleapis.com`` v2 and ``logging.googleapis.com`` v2 on 127.0.0.1."""

    def __init__(
        self,
        *,
        project: str = "test-project",
        location: str = "us-central1",
        time_scale: float = 1.0,
        start_delay: float = 0.05,
        default_duration: float = 0.1,
        operation_delay: float = 0.05,
        list_delay: float = 0.3,
        default_page_size: int = 100,
        max_page_size: int = 1000,
        max_jobs: int = 1000,
        max_running_executions: int = 1000,
    ) -> None:
        self.project = project
        self.location = location
        #: multiplies every behaviour duration, provisioning time and task timeout
        self.time_scale = time_scale
        self.start_delay = start_delay
        self.default_duration = default_duration
        #: seconds before a CreateJob operation is done
        self.operation_delay = operation_delay
        #: seconds before a new job or execution shows in lists
        self.list_delay = list_delay
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self.max_jobs = max_jobs
        self.max_running_executions = max_running_executions
        #: "plain" or "quoted" condition messages (see ``resources.Execution.message_style``)
        self.message_style = "plain"
        self.lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self.executions: dict[str, Execution] = {}
        self.operations: dict[str, Operation] = {}
        self.log_entries: list[dict[str, Any]] = []
        #: bodies of the entries.list requests received
        self.log_queries: list[dict[str, Any]] = []
        self.behaviours: list[tuple[str, Behaviour]] = []
        self._injections: list[_Injection] = []
        #: requests received, by RPC name (``CreateJob``, ``ListExecutions``, ...), errors included
        self.calls: Counter[str] = Counter()
        #: (rpc, HTTP method, path) of every request, in order
        self.log: list[tuple[str, str, str]] = []
        self._server: Server | None = None

    # Lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeCloudRun:
        self._server = Server(self)
        thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-cloudrun",
            daemon=True,
        )
        thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open keep-alive connections, as a dead service would."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.drop_connections()
            self._server = None

    def __enter__(self) -> FakeCloudRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "fake not started"
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def connection_string(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def executor_config(self, **overrides: Any) -> dict[str, Any]:
        """An ``ExecutorHost.executor_config`` pointing the Cloud Run executor at this fake."""
        config: dict[str, Any] = {
            "api_endpoint": self.url,
            "logging_endpoint": self.url,
            "anonymous": True,
            "call_timeout": 5,
            "operation_timeout": 10,
            "poll_interval": 5,
            "retry_backoff": 0.01,
            "retry_backoff_max": 0.05,
        }
        config.update(overrides)
        return config

    # Test controls ------------------------------------------------------------------------

    def inject(
        self,
        method: str,
        status: int | None = 503,
        times: int = 1,
        message: str = "",
        delay: float = 0.0,
        apply: bool = False,
    ) -> None:
        """Make the next ``times`` requests of RPC ``method`` (or ``"*"``) fail with ``status``.

        With ``apply=True`` the request is carried out first and only its answer is the error.
        With ``status=None`` the request is only delayed by ``delay`` seconds, then served.
        """
        with self.lock:
            self._injections.append(_Injection(method, status, times, message, delay, apply))

    def clear_injections(self) -> None:
        with self.lock:
            self._injections.clear()

    def set_behaviour(self, image_pattern: str, script: str) -> None:
        """Executions of images matching ``image_pattern`` (fnmatch) follow ``script``."""
        with self.lock:
            self.behaviours.insert(0, (image_pattern, parse_behaviour(script)))

    def reset_counts(self) -> None:
        with self.lock:
            self.calls.clear()
            self.log.clear()

    def executions_of(self, job_id: str) -> list[dict[str, Any]]:
        """Current JSON of every execution of ``job_id`` (oldest first), whether listed yet or not."""
        now = time.time()
        with self.lock:
            return [e.to_json(now) for e in self.executions.values() if e.job_id == job_id]

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.lock:
            job = self.jobs.get(self._job_name(self.project, self.location, job_id))
            return self._job_json(job, time.time()) if job else None

    def add_foreign_job(self, job_id: str, executions: int = 0) -> None:
        """Someone else's job in the region, with ``executions`` finished executions (listed already)."""
        now = time.time() - 3600
        name = self._job_name(self.project, self.location, job_id)
        template = {"template": {"containers": [{"image": "busybox"}], "timeout": "600s"}}
        with self.lock:
            job = self.jobs[name] = Job(name, job_id, {"template": template}, now, now, now)
            for i in range(executions):
                execution = Execution(
                    name=f"{name}/executions/{job_id}-{i:05d}", job_id=job_id, project=self.project,
                    location=self.location, created=now + i, start_delay=0.0, duration=1.0, exit_code=0,
                    timeout=600.0, task_count=1, labels={}, annotations={}, template=template["template"],
                    listed_at=now,
                )  # fmt: skip
                self.executions[execution.name] = execution
                job.executions.append(execution.name)

    def finish_all(self) -> None:
        """Jump every execution's clock far ahead, so each one has reached its end."""
        with self.lock:
            for execution in self.executions.values():
                execution.created -= 10**6

    # Request handling ---------------------------------------------------------------------

    def _take_injection(self, rpc: str) -> _Injection | None:
        with self.lock:
            for injection in self._injections:
                if injection.times > 0 and fnmatch.fnmatchcase(rpc, injection.method):
                    injection.times -= 1
                    if injection.times <= 0:
                        self._injections.remove(injection)
                    return injection
        return None

    def handle(self, verb: str, raw_path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        route = _route(verb, path)
        if route is None:
            return 404, ApiError(404, f"Method not found: {verb} {path}", "NOT_FOUND").body()
        rpc, params = route
        with self.lock:
            self.calls[rpc] += 1
            self.log.append((rpc, verb, path))
        injection = self._take_injection(rpc)
        if injection is not None and injection.delay:
            time.sleep(injection.delay)
        if injection is not None and injection.status is not None and not injection.apply:
            return injection.status, self._injected_error(injection)
        try:
            payload = enum_names(json.loads(body) if body else {})
            result = getattr(self, f"_rpc_{rpc}")(params, query, payload)
        except ApiError as exc:
            return exc.code, exc.body()
        except (ValueError, KeyError, TypeError) as exc:
            return 400, ApiError(400, f"Invalid request: {exc}").body()
        if injection is not None and injection.status is not None:
            return injection.status, self._injected_error(injection)  # carried out, answer lost
        if "enum-encoding=int" in query.get("$alt", ""):
            result = enum_numbers(result)
        return 200, result

    @staticmethod
    def _injected_error(injection: _Injection) -> dict[str, Any]:
        status = injection.status or 500
        message = injection.message or {
            403: "Permission 'iam.serviceaccounts.actAs' denied on service account jobs@example.iam.gserviceaccount.com",
            429: "Quota exceeded for quota metric 'Requests' of service 'run.googleapis.com'.",
            503: "The service is currently unavailable.",
            500: "Internal error encountered.",
            504: "The request timed out.",
        }.get(status, f"injected error {status}")
        return ApiError(status, message).body()

    # Helpers ------------------------------------------------------------------------------

    @staticmethod
    def _job_name(project: str, location: str, job_id: str) -> str:
        return f"projects/{project}/locations/{location}/jobs/{job_id}"

    def _new_operation(
        self, params: dict[str, str], kind: str, target: str, snapshot: Any = None
    ) -> Operation:
        name = f"projects/{params['project']}/locations/{params['location']}/operations/{uuid.uuid4()}"
        op = self.operations[name] = Operation(name, kind, target, time.time(), snapshot)
        return op

    def _operation_json(self, op: Operation, now: float) -> dict[str, Any]:
        body: dict[str, Any] = {"name": op.name}
        if op.kind == "create":
            job = self.jobs.get(op.target)
            content = self._job_json(job, now) if job else (op.snapshot or {})
            body["metadata"] = {"@type": JOB_TYPE, **content}
            if job is None or now >= job.ready_at:
                body.update(done=True, response={"@type": JOB_TYPE, **content})
        elif op.kind == "run":
            execution = self.executions.get(op.target)
            content = execution.to_json(now) if execution else (op.snapshot or {})
            body["metadata"] = {"@type": EXECUTION_TYPE, **content}
            if execution is None or execution.is_done(now):
                body.update(done=True, response={"@type": EXECUTION_TYPE, **content})
        else:
            type_url = JOB_TYPE if op.kind == "delete_job" else EXECUTION_TYPE
            content = op.snapshot or {}
            if op.kind == "cancel" and op.target in self.executions:
                content = self.executions[op.target].to_json(now)
            body.update(
                metadata={"@type": type_url, **content}, done=True, response={"@type": type_url, **content}
            )
        return body

    def _job_json(self, job: Job, now: float) -> dict[str, Any]:
        body = dict(job.body)
        executions = [self.executions[n] for n in job.executions if n in self.executions]
        ready = now >= job.ready_at
        body.update(
            name=job.name,
            uid=job.uid,
            generation="1",
            createTime=ts(job.created),
            updateTime=ts(job.created),
            creator="fake-cloudrun@example.iam.gserviceaccount.com",
            launchStage=body.get("launchStage", "GA"),
            observedGeneration="1" if ready else "0",
            reconciling=not ready,
            terminalCondition={
                "type": "Ready",
                "state": "CONDITION_SUCCEEDED" if ready else "CONDITION_RECONCILING",
                "lastTransitionTime": ts(job.ready_at if ready else job.created),
            },
            etag=f'"{job.uid[:8]}-{len(job.executions)}"',
        )
        # Job.execution_count / latest_created_execution: read with the Job, at once.
        if job.executions:
            body["executionCount"] = len(job.executions)
        if executions:
            latest = executions[-1]
            end = latest.phase(now)[2]
            reference: dict[str, Any] = {
                "name": latest.name,
                "createTime": ts(latest.created),
                "completionStatus": latest.completion_status(now),
            }
            if end is not None:
                reference["completionTime"] = ts(end)
            body["latestCreatedExecution"] = reference
        return body

    def _validate_job(self, job_id: str, job: dict[str, Any]) -> None:
        if not JOB_ID_RE.fullmatch(job_id or ""):
            raise ApiError(
                400,
                f"Invalid job id '{job_id}': must start with a lowercase letter, contain only lowercase "
                "letters, digits and hyphens, not end with a hyphen, and be at most 63 characters.",
            )
        for where in (job.get("labels") or {}, (job.get("template") or {}).get("labels") or {}):
            for key, value in where.items():
                if not LABEL_KEY_RE.fullmatch(key) or not LABEL_VALUE_RE.fullmatch(value):
                    raise ApiError(400, f"Invalid label {key}={value!r}.")
                if key.startswith(("run.googleapis.com", "cloud.googleapis.com")):
                    raise ApiError(400, f"Label {key} uses a reserved namespace.")
        execution_template = job.get("template") or {}
        task = execution_template.get("template") or {}
        containers = task.get("containers") or []
        if len(containers) != 1:
            raise ApiError(400, "Exactly one container is supported by this fake.")
        container = containers[0]
        image = container.get("image") or ""
        if not IMAGE_RE.fullmatch(image):
            raise ApiError(400, f"Invalid image reference '{image}'.")
        env = container.get("env") or []
        if len(env) > 1000:
            raise ApiError(
                400, f"spec.template.spec.containers[0].env: at most 1000 variables, got {len(env)}."
            )
        if len(container.get("args") or []) > 1000:
            raise ApiError(400, "spec.template.spec.containers[0].args: at most 1000 arguments.")
        for var in env:
            name = var.get("name", "")
            if not ENV_NAME_RE.fullmatch(name):
                raise ApiError(400, f"Invalid environment variable name '{name[:80]}'.")
            if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
                raise ApiError(
                    400,
                    f"The following reserved env names were provided: {name}. These values are automatically set by the system.",
                )
            if len(var.get("value", "").encode()) > 32768:
                raise ApiError(400, f"Environment variable '{name}' value exceeds 32768 bytes.")
        limits = (container.get("resources") or {}).get("limits") or {}
        cores = cpu(limits.get("cpu", "1"))
        memory = memory_mib(limits.get("memory", "512Mi"))
        if cores not in CPU_MEMORY_MIB:
            raise ApiError(400, f"Invalid cpu limit {limits.get('cpu')!r}: jobs allow 1, 2, 4, 6 or 8 CPUs.")
        low, high = CPU_MEMORY_MIB[int(cores)]
        if not low <= memory <= high:
            raise ApiError(
                400,
                f"Invalid memory limit {limits.get('memory')!r} for {int(cores)} CPU: must be {low}Mi-{high}Mi.",
            )
        timeout = duration_s(task.get("timeout", "600s"))
        if not 0 < timeout <= MAX_TIMEOUT_S:
            raise ApiError(400, f"Invalid task timeout {task.get('timeout')!r}.")
        if int(task.get("maxRetries", 3)) < 0:
            raise ApiError(400, "maxRetries must be >= 0.")
        if int(execution_template.get("taskCount", 1)) < 1:
            raise ApiError(400, "taskCount must be >= 1.")

    def _behaviour(self, container: dict[str, Any]) -> Behaviour:
        env = {e.get("name"): e.get("value", "") for e in container.get("env") or []}
        if "FAKE_BEHAVIOUR" in env:
            return parse_behaviour(env["FAKE_BEHAVIOUR"])
        argv = list(container.get("command") or []) + list(container.get("args") or [])
        from_argv = behaviour_from_argv(argv)
        if from_argv is not None:
            return from_argv
        for pattern, behaviour in self.behaviours:
            if fnmatch.fnmatchcase(container.get("image", ""), pattern):
                return behaviour
        return Behaviour()

    def _page(self, items: list[Any], query: dict[str, str], key: str) -> dict[str, Any]:
        size = min(int(query.get("pageSize") or 0) or self.default_page_size, self.max_page_size)
        token = query.get("pageToken") or ""
        try:
            offset = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except ValueError:
            raise ApiError(400, "Invalid page token.") from None
        page = items[offset : offset + size]
        out: dict[str, Any] = {key: page} if page else {}
        if offset + size < len(items):
            out["nextPageToken"] = base64.urlsafe_b64encode(str(offset + size).encode()).decode()
        return out

    def _write_logs(self, execution: Execution, behaviour: Behaviour, job_body: dict[str, Any]) -> None:
        """What Cloud Run would write to Cloud Logging for this execution (timestamps in its future)."""
        resource = {
            "type": "cloud_run_job",
            "labels": {"job_name": execution.job_id, "location": self.location, "project_id": self.project},
        }
        labels = {
            "run.googleapis.com/execution_name": execution.execution_id,
            "run.googleapis.com/task_index": "0",
        }
        start = execution.created + execution.start_delay
        end = start + (execution.duration or 0.0)

        def entry(log: str, at: float, **payload: Any) -> None:
            self.log_entries.append(
                {
                    "logName": f"projects/{self.project}/logs/{log}",
                    "resource": resource,
                    "labels": labels,
                    "timestamp": ts(at),
                    "receiveTimestamp": ts(at),
                    "insertId": secrets.token_hex(8),
                    **payload,
                }
            )

        # The audit record of the job's creation: the whole spec, env values included.
        entry(
            "cloudaudit.googleapis.com%2Factivity",
            execution.created,
            protoPayload={
                "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                "methodName": "google.cloud.run.v2.Jobs.RunJob",
                "request": job_body,
            },
        )
        entry(
            "run.googleapis.com%2Fvarlog%2Fsystem",
            start,
            textPayload=f"Starting new task. {json.dumps(job_body)}",
        )
        step = (end - start) / (len(behaviour.stdout) + len(behaviour.stderr) + 1)
        at = start
        for stream, lines in (("stdout", behaviour.stdout), ("stderr", behaviour.stderr)):
            for line in lines:
                at += step
                entry(
                    f"run.googleapis.com%2F{stream}",
                    at,
                    textPayload=line,
                    severity="INFO" if stream == "stdout" else "ERROR",
                )
        if behaviour.exit_code:
            entry(
                "run.googleapis.com%2Fvarlog%2Fsystem",
                end,
                textPayload=f"Container called exit({behaviour.exit_code}).",
            )


_P = r"/v2/projects/(?P<project>[^/:]+)/locations/(?P<location>[^/:]+)"
_J = _P + r"/jobs/(?P<job>[^/:]+)"
_E = _J + r"/executions/(?P<execution>[^/:]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(_P + r"/jobs"), "CreateJob"),
    ("GET", re.compile(_P + r"/jobs"), "ListJobs"),
    ("GET", re.compile(_J), "GetJob"),
    ("DELETE", re.compile(_J), "DeleteJob"),
    ("POST", re.compile(_J + r":run"), "RunJob"),
    ("GET", re.compile(_J + r"/executions"), "ListExecutions"),
    ("GET", re.compile(_E), "GetExecution"),
    ("DELETE", re.compile(_E), "DeleteExecution"),
    ("POST", re.compile(_E + r":cancel"), "CancelExecution"),
    ("GET", re.compile(_E + r"/tasks"), "ListTasks"),
    ("GET", re.compile(_E + r"/tasks/(?P<task>[^/:]+)"), "GetTask"),
    ("GET", re.compile(_P + r"/operations/(?P<operation>[^/:]+)"), "GetOperation"),
    ("POST", re.compile(r"/v2/entries:list"), "ListLogEntries"),
]


def _route(verb: str, path: str) -> tuple[str, dict[str, str]] | None:
    for method, pattern, rpc in ROUTES:
        if method == verb:
            match = pattern.fullmatch(path)
            if match:
                return rpc, match.groupdict()
    return None


__all__ = ["FakeCloudRun", "logging_api"]
