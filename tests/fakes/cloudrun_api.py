"""A local fake of the Cloud Run Admin API v2 (REST), for driving the real ``google-cloud-run`` client.

Start it, point ``ClientOptions(api_endpoint=fake.url)`` (with ``AnonymousCredentials``, REST
transport) at it, and the real ``JobsClient``/``ExecutionsClient`` talk to it as they would to
``run.googleapis.com``::

    with FakeCloudRun(time_scale=0.2) as fake:
        executor = CloudRunExecutor.from_config(fake.connection_string, fake.executor_config(), "t")

What it reproduces (the parts of the service the executor depends on):

* the v2 REST surface, in the JSON shape the client sends and expects: camelCase fields, int64 as
  strings, enums by name or by number when the client asks ``$alt=json;enum-encoding=int``;
  errors as ``{"error": {"code", "message", "status"}}``;
* ``CreateJob`` (``?jobId=``; 409 ``ALREADY_EXISTS`` on a duplicate id; 400 ``INVALID_ARGUMENT`` for
  an invalid id, image, label, CPU/memory combination or timeout), ``GetJob``, ``ListJobs``,
  ``DeleteJob`` (deletes the job's executions too), ``RunJob``, ``ListExecutions`` (per job or across
  jobs with ``jobs/-``; paginated with ``pageSize``/``pageToken``/``nextPageToken``), ``GetExecution``,
  ``CancelExecution`` (400 ``FAILED_PRECONDITION`` once finished), ``DeleteExecution``,
  ``GetOperation``; mutations return long-running ``Operation`` resources
  (``projects/P/locations/R/operations/ID``) whose metadata/response carry the ``Job`` or
  ``Execution`` with an ``@type``; ``CreateJob``'s operation can be made to finish late
  (``operation_delay``), and ``RunJob``'s finishes when the execution does;
* executions that move pending -> running -> succeeded/failed over (scaled) time, driven by a
  behaviour script, time out at the task timeout (``Completed`` condition failed with "The
  configured timeout was reached."), and can be cancelled (``cancelledCount``, execution reason
  ``CANCELLED``); a failing task's condition message quotes its exit code ("Container called
  exit(3).");
* fault injection: the next N calls of an RPC answer with a given HTTP status (503, 500, 429
  ``RESOURCE_EXHAUSTED``, 400, ...) or after a delay; and a per-RPC request counter.

Behaviour of an execution, first match wins: the container env var ``FAKE_BEHAVIOUR``
(``"start=0.1;sleep=0.5;exit=3"``, or ``hang``), the command in the mock executor's script language
(``sh -c "sleep 1; exit 3"``, ``false``, ``hang``), a per-image script set with
:meth:`FakeCloudRun.set_behaviour`, else ``default_duration`` and exit 0. Durations and the task
timeout are multiplied by ``time_scale``.

What it does not do: authentication, IAM, job updates, task resources, logs, real container
images (an image is only checked for syntax), or the service's exact wording of messages.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import secrets
import shlex
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# Enum tables (name -> number) for the enums this fake reads or writes.
ENUMS: dict[str, dict[str, int]] = {
    "state": {
        "STATE_UNSPECIFIED": 0,
        "CONDITION_PENDING": 1,
        "CONDITION_RECONCILING": 2,
        "CONDITION_FAILED": 3,
        "CONDITION_SUCCEEDED": 4,
    },
    "severity": {"SEVERITY_UNSPECIFIED": 0, "ERROR": 1, "WARNING": 2, "INFO": 3},
    "executionReason": {
        "EXECUTION_REASON_UNDEFINED": 0,
        "JOB_STATUS_SERVICE_POLLING_ERROR": 1,
        "NON_ZERO_EXIT_CODE": 2,
        "CANCELLED": 3,
        "CANCELLING": 4,
        "DELETED": 5,
        "DELAYED_START_PENDING": 6,
    },
    "reason": {"COMMON_REASON_UNDEFINED": 0, "UNKNOWN": 1, "WAITING_FOR_OPERATION": 13, "INTERNAL": 16},
    "launchStage": {
        "LAUNCH_STAGE_UNSPECIFIED": 0,
        "EARLY_ACCESS": 1,
        "ALPHA": 2,
        "BETA": 3,
        "GA": 4,
        "DEPRECATED": 5,
        "UNIMPLEMENTED": 6,
        "PRELAUNCH": 7,
    },
    "egress": {"VPC_EGRESS_UNSPECIFIED": 0, "ALL_TRAFFIC": 1, "PRIVATE_RANGES_ONLY": 2},
    "executionEnvironment": {
        "EXECUTION_ENVIRONMENT_UNSPECIFIED": 0,
        "EXECUTION_ENVIRONMENT_GEN1": 1,
        "EXECUTION_ENVIRONMENT_GEN2": 2,
    },
    "completionStatus": {
        "COMPLETION_STATUS_UNSPECIFIED": 0,
        "EXECUTION_SUCCEEDED": 1,
        "EXECUTION_FAILED": 2,
        "EXECUTION_RUNNING": 3,
        "EXECUTION_PENDING": 4,
        "EXECUTION_CANCELLED": 5,
    },
}
ENUM_NAMES = {key: {v: k for k, v in table.items()} for key, table in ENUMS.items()}

JOB_ID_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
IMAGE_RE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
RESERVED_ENV = {
    "CLOUD_RUN_JOB",
    "CLOUD_RUN_EXECUTION",
    "CLOUD_RUN_TASK_INDEX",
    "CLOUD_RUN_TASK_ATTEMPT",
    "CLOUD_RUN_TASK_COUNT",
}
CPU_MEMORY_MIB = {1: (512, 4096), 2: (512, 8192), 4: (2048, 16384), 6: (4096, 24576), 8: (4096, 32768)}
MAX_TIMEOUT_S = 168 * 3600


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_NAMES.get(code, "UNKNOWN")


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _duration_s(text: Any) -> float:
    if isinstance(text, int | float):
        return float(text)
    if isinstance(text, str) and text.endswith("s"):
        return float(text[:-1])
    raise ApiError(400, f"Invalid duration {text!r}")


def _memory_mib(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?", text or "")
    if not match:
        raise ApiError(400, f"Invalid memory limit {text!r}")
    number, unit = float(match[1]), match[2] or ""
    factor = {
        "": 1 / 2**20,
        "Ki": 1 / 1024,
        "Mi": 1,
        "Gi": 1024,
        "Ti": 1024**2,
        "K": 1000 / 2**20,
        "M": 10**6 / 2**20,
        "G": 10**9 / 2**20,
        "T": 10**12 / 2**20,
    }[unit]
    return number * factor


def _cpu(text: str) -> float:
    if re.fullmatch(r"\d+m", text or ""):
        return int(text[:-1]) / 1000
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ApiError(400, f"Invalid cpu limit {text!r}") from None


def _enum_names(value: Any) -> Any:
    """Normalise enum fields the client sent as numbers to their names."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ENUMS and isinstance(item, int):
                out[key] = ENUM_NAMES[key].get(item, str(item))
            else:
                out[key] = _enum_names(item)
        return out
    if isinstance(value, list):
        return [_enum_names(v) for v in value]
    return value


def _enum_numbers(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ENUMS and isinstance(item, str):
                out[key] = ENUMS[key].get(item, 0)
            else:
                out[key] = _enum_numbers(item)
        return out
    if isinstance(value, list):
        return [_enum_numbers(v) for v in value]
    return value


# Behaviour ------------------------------------------------------------------------------


@dataclass
class Behaviour:
    """What an execution's task does."""

    #: seconds spent pending before the task starts (None = server default)
    start: float | None = None
    #: seconds the task runs (None = server default)
    duration: float | None = None
    exit_code: int = 0
    hang: bool = False


def parse_behaviour(text: str) -> Behaviour:
    """``"start=0.1;sleep=0.5;exit=3"`` or ``"hang"``."""
    behaviour = Behaviour()
    for part in (text or "").split(";"):
        part = part.strip()
        if not part:
            continue
        key, _, value = part.partition("=")
        key = key.strip()
        if key == "sleep":
            behaviour.duration = float(value)
        elif key == "start":
            behaviour.start = float(value)
        elif key == "exit":
            behaviour.exit_code = int(value)
        elif key == "hang":
            behaviour.hang = True
        else:
            raise ValueError(f"unknown FAKE_BEHAVIOUR step {part!r}")
    return behaviour


def behaviour_from_argv(argv: list[str]) -> Behaviour | None:
    """The mock executor's script language: ``sh -c "sleep 1; exit 3"``, ``false``, ``hang``."""
    if not argv:
        return None
    if len(argv) >= 3 and argv[0] in ("sh", "/bin/sh") and argv[1] == "-c":
        steps = [shlex.split(part) for part in argv[2].split(";")]
    else:
        steps = [argv]
    behaviour = Behaviour(duration=0.0)
    for step in steps:
        if not step:
            continue
        verb, args = step[0], step[1:]
        if verb == "sleep":
            behaviour.duration = (behaviour.duration or 0.0) + (float(args[0]) if args else 0.0)
        elif verb == "exit":
            behaviour.exit_code = int(args[0]) if args else 0
            break
        elif verb == "false":
            behaviour.exit_code = 1
            break
        elif verb == "hang":
            behaviour.hang = True
            break
    return behaviour


# Resources ------------------------------------------------------------------------------


@dataclass
class _Injection:
    method: str
    status: int | None
    times: int
    message: str
    delay: float


@dataclass
class _Execution:
    name: str
    job_id: str
    project: str
    location: str
    created: float
    start_delay: float
    #: None = never ends by itself
    duration: float | None
    exit_code: int
    timeout: float
    task_count: int
    labels: dict[str, str]
    annotations: dict[str, str]
    template: dict[str, Any]
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    cancelled_at: float | None = None

    def phase(self, now: float) -> tuple[str, float | None, float | None]:
        """(phase, start time or None, end time or None) at ``now``."""
        start = self.created + self.start_delay
        natural = float("inf") if self.duration is None else start + self.duration
        end, outcome = natural, "succeeded" if self.exit_code == 0 else "failed"
        if start + self.timeout < end:
            end, outcome = start + self.timeout, "timeout"
        if self.cancelled_at is not None and self.cancelled_at < end:
            end, outcome = self.cancelled_at, "cancelled"
        started = start if start <= min(now, end) else None
        if now < end:
            return ("running" if started is not None else "pending"), started, None
        return outcome, started, end

    def is_done(self, now: float) -> bool:
        return self.phase(now)[0] not in ("pending", "running")

    def to_json(self, now: float) -> dict[str, Any]:
        phase, start, end = self.phase(now)
        tasks = self.task_count
        task_name = f"{self.name.rsplit('/', 1)[-1]}-task0"
        transition = end or start or self.created
        ts = _ts(transition)
        resources = {"type": "ResourcesAvailable", "lastTransitionTime": ts}
        started_cond = {"type": "Started", "lastTransitionTime": ts}
        completed: dict[str, Any] = {"type": "Completed", "lastTransitionTime": ts}
        counts: dict[str, int] = {}
        if phase == "pending":
            resources["state"] = "CONDITION_RECONCILING"
            started_cond["state"] = "CONDITION_PENDING"
            completed["state"] = "CONDITION_PENDING"
        elif phase == "running":
            resources["state"] = started_cond["state"] = "CONDITION_SUCCEEDED"
            completed["state"] = "CONDITION_RECONCILING"
            counts["runningCount"] = tasks
        else:
            resources["state"] = "CONDITION_SUCCEEDED"
            started_cond["state"] = "CONDITION_SUCCEEDED" if start is not None else "CONDITION_FAILED"
            duration = (end or now) - (start or self.created)
            if phase == "succeeded":
                completed["state"] = "CONDITION_SUCCEEDED"
                completed["message"] = f"Execution completed successfully in {duration:.2f}s."
                counts["succeededCount"] = tasks
            elif phase == "failed":
                completed.update(
                    state="CONDITION_FAILED",
                    severity="ERROR",
                    executionReason="NON_ZERO_EXIT_CODE",
                    message=(
                        f"Task {task_name} failed with message: The container exited with an error. "
                        f"Container called exit({self.exit_code})."
                    ),
                )
                counts["failedCount"] = tasks
            elif phase == "timeout":
                completed.update(
                    state="CONDITION_FAILED",
                    severity="ERROR",
                    message=f"Task {task_name} failed with message: The configured timeout was reached.",
                )
                counts["failedCount"] = tasks
            else:  # cancelled
                completed.update(
                    state="CONDITION_FAILED",
                    severity="INFO",
                    executionReason="CANCELLED",
                    message="The execution was cancelled.",
                )
                counts["cancelledCount"] = tasks
        body: dict[str, Any] = {
            "name": self.name,
            "uid": self.uid,
            "creator": "fake-cloudrun@example.iam.gserviceaccount.com",
            "generation": "1",
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "createTime": _ts(self.created),
            "updateTime": ts,
            "launchStage": "GA",
            "job": self.job_id,
            "parallelism": tasks,
            "taskCount": tasks,
            "template": self.template,
            "reconciling": phase in ("pending", "running"),
            "conditions": [resources, started_cond, completed],
            "observedGeneration": "1",
            "logUri": (
                f"https://console.cloud.google.com/logs/viewer?project={self.project}"
                f"&advancedFilter=resource.type%3D%22cloud_run_job%22%0Aresource.labels.job_name%3D%22"
                f"{self.job_id}%22%0Alabels.%22run.googleapis.com/execution_name%22%3D%22"
                f"{self.name.rsplit('/', 1)[-1]}%22"
            ),
            "etag": f'"{self.uid[:8]}-{phase}"',
            **counts,
        }
        if start is not None:
            body["startTime"] = _ts(start)
        if end is not None:
            body["completionTime"] = _ts(end)
        return body


@dataclass
class _Job:
    name: str
    job_id: str
    body: dict[str, Any]
    created: float
    ready_at: float
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    executions: list[str] = field(default_factory=list)


@dataclass
class _Operation:
    name: str
    kind: str  # create | run | delete_job | cancel | delete_execution
    target: str
    created: float
    snapshot: dict[str, Any] | None = None


# The server -----------------------------------------------------------------------------


class FakeCloudRun:
    """In-process fake of ``run.googleapis.com`` v2 on 127.0.0.1 (a random port)."""

    def __init__(
        self,
        *,
        project: str = "test-project",
        location: str = "us-central1",
        time_scale: float = 1.0,
        start_delay: float = 0.05,
        default_duration: float = 0.1,
        operation_delay: float = 0.0,
        default_page_size: int = 100,
        max_page_size: int = 1000,
    ) -> None:
        self.project = project
        self.location = location
        #: multiplies every behaviour duration and task timeout
        self.time_scale = time_scale
        self.start_delay = start_delay
        self.default_duration = default_duration
        #: seconds before a CreateJob operation reports done (0 = done in the response)
        self.operation_delay = operation_delay
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self.lock = threading.RLock()
        self.jobs: dict[str, _Job] = {}
        self.executions: dict[str, _Execution] = {}
        self.operations: dict[str, _Operation] = {}
        self.behaviours: list[tuple[str, Behaviour]] = []
        self._injections: list[_Injection] = []
        #: requests received, by RPC name (``CreateJob``, ``ListExecutions``, ...), errors included
        self.calls: Counter[str] = Counter()
        #: (rpc, HTTP method, path) of every request, in order
        self.log: list[tuple[str, str, str]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeCloudRun:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-cloudrun",
            daemon=True,
        )
        self._thread.start()
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
    ) -> None:
        """Make the next ``times`` requests of RPC ``method`` (or ``"*"``) fail with ``status``.

        With ``status=None`` the request is only delayed by ``delay`` seconds, then served.
        """
        with self.lock:
            self._injections.append(_Injection(method, status, times, message, delay))

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
        """Current JSON of every execution of ``job_id`` (oldest first)."""
        now = time.time()
        with self.lock:
            return [e.to_json(now) for e in self.executions.values() if e.job_id == job_id]

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.lock:
            job = self.jobs.get(self._job_name(self.project, self.location, job_id))
            return self._job_json(job, time.time()) if job else None

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
            return 404, _error(ApiError(404, f"Method not found: {verb} {path}", "NOT_FOUND"))
        rpc, params = route
        with self.lock:
            self.calls[rpc] += 1
            self.log.append((rpc, verb, path))
        injection = self._take_injection(rpc)
        if injection is not None:
            if injection.delay:
                time.sleep(injection.delay)
            if injection.status is not None:
                status = injection.status
                message = injection.message or {
                    429: "Quota exceeded for quota metric 'Requests' of service 'run.googleapis.com'.",
                    503: "The service is currently unavailable.",
                    500: "Internal error encountered.",
                }.get(status, f"injected error {status}")
                return status, _error(ApiError(status, message))
        try:
            payload = json.loads(body) if body else {}
            payload = _enum_names(payload)
            result = getattr(self, f"_rpc_{rpc}")(params, query, payload)
        except ApiError as exc:
            return exc.code, _error(exc)
        except (ValueError, KeyError, TypeError) as exc:
            return 400, _error(ApiError(400, f"Invalid request: {exc}"))
        if "enum-encoding=int" in query.get("$alt", ""):
            result = _enum_numbers(result)
        return 200, result

    # Helpers ------------------------------------------------------------------------------

    @staticmethod
    def _job_name(project: str, location: str, job_id: str) -> str:
        return f"projects/{project}/locations/{location}/jobs/{job_id}"

    def _new_operation(self, params: dict[str, str], kind: str, target: str, snapshot: Any = None) -> str:
        name = f"projects/{params['project']}/locations/{params['location']}/operations/{uuid.uuid4()}"
        self.operations[name] = _Operation(name, kind, target, time.time(), snapshot)
        return name

    def _operation_json(self, op: _Operation, now: float) -> dict[str, Any]:
        body: dict[str, Any] = {"name": op.name}
        job_type = "type.googleapis.com/google.cloud.run.v2.Job"
        execution_type = "type.googleapis.com/google.cloud.run.v2.Execution"
        if op.kind == "create":
            job = self.jobs.get(op.target)
            content = self._job_json(job, now) if job else (op.snapshot or {})
            done = job is None or now >= job.ready_at
            body["metadata"] = {"@type": job_type, **content}
            if done:
                body["done"] = True
                body["response"] = {"@type": job_type, **content}
        elif op.kind == "run":
            execution = self.executions.get(op.target)
            content = execution.to_json(now) if execution else (op.snapshot or {})
            body["metadata"] = {"@type": execution_type, **content}
            if execution is None or execution.is_done(now):
                body["done"] = True
                body["response"] = {"@type": execution_type, **content}
        else:
            type_url = job_type if op.kind == "delete_job" else execution_type
            content = op.snapshot or {}
            if op.kind == "cancel" and op.target in self.executions:
                content = self.executions[op.target].to_json(now)
            body.update(
                metadata={"@type": type_url, **content}, done=True, response={"@type": type_url, **content}
            )
        return body

    def _job_json(self, job: _Job, now: float) -> dict[str, Any]:
        body = dict(job.body)
        executions = [self.executions[n] for n in job.executions if n in self.executions]
        ready = now >= job.ready_at
        body.update(
            name=job.name,
            uid=job.uid,
            generation="1",
            createTime=_ts(job.created),
            updateTime=_ts(job.created),
            creator="fake-cloudrun@example.iam.gserviceaccount.com",
            launchStage=body.get("launchStage", "GA"),
            observedGeneration="1" if ready else "0",
            reconciling=not ready,
            terminalCondition={
                "type": "Ready",
                "state": "CONDITION_SUCCEEDED" if ready else "CONDITION_RECONCILING",
                "lastTransitionTime": _ts(job.ready_at if ready else job.created),
            },
            etag=f'"{job.uid[:8]}-{len(job.executions)}"',
        )
        if job.executions:
            body["executionCount"] = len(job.executions)
        if executions:
            latest = executions[-1]
            phase, _start, end = latest.phase(now)
            status = {
                "pending": "EXECUTION_PENDING",
                "running": "EXECUTION_RUNNING",
                "succeeded": "EXECUTION_SUCCEEDED",
                "cancelled": "EXECUTION_CANCELLED",
            }.get(phase, "EXECUTION_FAILED")
            reference: dict[str, Any] = {
                "name": latest.name,
                "createTime": _ts(latest.created),
                "completionStatus": status,
            }
            if end is not None:
                reference["completionTime"] = _ts(end)
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
        for env in container.get("env") or []:
            name = env.get("name", "")
            if not ENV_NAME_RE.fullmatch(name) or name in RESERVED_ENV:
                raise ApiError(400, f"Invalid or reserved environment variable name '{name}'.")
        limits = (container.get("resources") or {}).get("limits") or {}
        cpu = _cpu(limits.get("cpu", "1"))
        memory = _memory_mib(limits.get("memory", "512Mi"))
        if cpu not in CPU_MEMORY_MIB:
            raise ApiError(400, f"Invalid cpu limit {limits.get('cpu')!r}: jobs allow 1, 2, 4, 6 or 8 CPUs.")
        low, high = CPU_MEMORY_MIB[int(cpu)]
        if not low <= memory <= high:
            raise ApiError(
                400,
                f"Invalid memory limit {limits.get('memory')!r} for {int(cpu)} CPU: "
                f"must be {low}Mi-{high}Mi.",
            )
        timeout = _duration_s(task.get("timeout", "600s"))
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

    def _page(self, items: list[Any], query: dict[str, str]) -> tuple[list[Any], str]:
        size = int(query.get("pageSize") or 0) or self.default_page_size
        size = min(size, self.max_page_size)
        token = query.get("pageToken") or ""
        try:
            offset = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except ValueError:
            raise ApiError(400, "Invalid page token.") from None
        page = items[offset : offset + size]
        following = offset + size
        next_token = (
            base64.urlsafe_b64encode(str(following).encode()).decode() if following < len(items) else ""
        )
        return page, next_token

    # RPCs ---------------------------------------------------------------------------------

    def _rpc_CreateJob(self, params: dict[str, str], query: dict[str, str], job: dict[str, Any]) -> Any:
        job_id = query.get("jobId", "")
        self._validate_job(job_id, job)
        name = self._job_name(params["project"], params["location"], job_id)
        with self.lock:
            if name in self.jobs:
                raise ApiError(409, f"Resource '{job_id}' already exists.", "ALREADY_EXISTS")
            now = time.time()
            body = {k: v for k, v in job.items() if k not in ("name", "uid", "etag")}
            self.jobs[name] = _Job(name, job_id, body, created=now, ready_at=now + self.operation_delay)
            op = self._new_operation(params, "create", name)
            return self._operation_json(self.operations[op], now)

    def _rpc_GetJob(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        name = self._job_name(params["project"], params["location"], params["job"])
        with self.lock:
            job = self.jobs.get(name)
            if job is None:
                raise ApiError(
                    404,
                    f"Resource '{params['job']}' of kind 'JOB' in region '{params['location']}' "
                    f"in project '{params['project']}' does not exist.",
                )
            return self._job_json(job, time.time())

    def _rpc_ListJobs(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        prefix = f"projects/{params['project']}/locations/{params['location']}/jobs/"
        now = time.time()
        with self.lock:
            jobs = [self._job_json(j, now) for n, j in sorted(self.jobs.items()) if n.startswith(prefix)]
        page, token = self._page(jobs, query)
        out: dict[str, Any] = {"jobs": page} if page else {}
        if token:
            out["nextPageToken"] = token
        return out

    def _rpc_DeleteJob(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        name = self._job_name(params["project"], params["location"], params["job"])
        now = time.time()
        with self.lock:
            job = self.jobs.get(name)
            if job is None:
                raise ApiError(404, f"Resource '{params['job']}' of kind 'JOB' does not exist.")
            snapshot = self._job_json(job, now)
            snapshot["deleteTime"] = _ts(now)
            for execution in job.executions:
                self.executions.pop(execution, None)
            del self.jobs[name]
            op = self._new_operation(params, "delete_job", name, snapshot)
            return self._operation_json(self.operations[op], now)

    def _rpc_RunJob(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        name = self._job_name(params["project"], params["location"], params["job"])
        now = time.time()
        with self.lock:
            job = self.jobs.get(name)
            if job is None:
                raise ApiError(404, f"Resource '{params['job']}' of kind 'JOB' does not exist.")
            if now < job.ready_at:
                raise ApiError(400, f"Job '{params['job']}' is not ready yet.", "FAILED_PRECONDITION")
            template = job.body.get("template") or {}
            task = template.get("template") or {}
            container = task["containers"][0]
            behaviour = self._behaviour(container)
            scale = self.time_scale
            start = self.start_delay if behaviour.start is None else behaviour.start
            duration = self.default_duration if behaviour.duration is None else behaviour.duration
            suffix = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(5))
            execution = _Execution(
                name=f"{name}/executions/{params['job']}-{suffix}",
                job_id=params["job"],
                project=params["project"],
                location=params["location"],
                created=now,
                start_delay=start * scale,
                duration=None if behaviour.hang else duration * scale,
                exit_code=behaviour.exit_code,
                timeout=_duration_s(task.get("timeout", "600s")) * scale,
                task_count=int(template.get("taskCount", 1)),
                labels=dict(template.get("labels") or {}),
                annotations=dict(template.get("annotations") or {}),
                template=task,
            )
            self.executions[execution.name] = execution
            job.executions.append(execution.name)
            op = self._new_operation(params, "run", execution.name)
            return self._operation_json(self.operations[op], now)

    def _executions_in(self, params: dict[str, str]) -> list[_Execution]:
        job_id = params["job"]
        if job_id != "-":
            name = self._job_name(params["project"], params["location"], job_id)
            if name not in self.jobs:
                raise ApiError(404, f"Resource '{job_id}' of kind 'JOB' does not exist.")
        prefix = f"projects/{params['project']}/locations/{params['location']}/jobs/"
        found = [
            e
            for n, e in self.executions.items()
            if n.startswith(prefix) and (job_id == "-" or e.job_id == job_id)
        ]
        return sorted(found, key=lambda e: (-e.created, e.name))

    def _rpc_ListExecutions(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        now = time.time()
        with self.lock:
            items = [e.to_json(now) for e in self._executions_in(params)]
        page, token = self._page(items, query)
        out: dict[str, Any] = {"executions": page} if page else {}
        if token:
            out["nextPageToken"] = token
        return out

    def _execution(self, params: dict[str, str]) -> _Execution:
        name = (
            f"{self._job_name(params['project'], params['location'], params['job'])}"
            f"/executions/{params['execution']}"
        )
        execution = self.executions.get(name)
        if execution is None:
            raise ApiError(404, f"Resource '{params['execution']}' of kind 'EXECUTION' does not exist.")
        return execution

    def _rpc_GetExecution(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        with self.lock:
            return self._execution(params).to_json(time.time())

    def _rpc_CancelExecution(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        now = time.time()
        with self.lock:
            execution = self._execution(params)
            if execution.is_done(now):
                raise ApiError(
                    400, f"Execution '{params['execution']}' has already completed.", "FAILED_PRECONDITION"
                )
            execution.cancelled_at = now
            op = self._new_operation(params, "cancel", execution.name)
            return self._operation_json(self.operations[op], now)

    def _rpc_DeleteExecution(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        now = time.time()
        with self.lock:
            execution = self._execution(params)
            snapshot = execution.to_json(now)
            snapshot["deleteTime"] = _ts(now)
            del self.executions[execution.name]
            op = self._new_operation(params, "delete_execution", execution.name, snapshot)
            return self._operation_json(self.operations[op], now)

    def _rpc_GetOperation(self, params: dict[str, str], query: dict[str, str], _body: Any) -> Any:
        name = f"projects/{params['project']}/locations/{params['location']}/operations/{params['operation']}"
        with self.lock:
            op = self.operations.get(name)
            if op is None:
                raise ApiError(404, f"Operation '{name}' not found.")
            return self._operation_json(op, time.time())


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
    ("GET", re.compile(_P + r"/operations/(?P<operation>[^/:]+)"), "GetOperation"),
]


def _route(verb: str, path: str) -> tuple[str, dict[str, str]] | None:
    for method, pattern, rpc in ROUTES:
        if method == verb:
            match = pattern.fullmatch(path)
            if match:
                return rpc, match.groupdict()
    return None


def _error(exc: ApiError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message, "status": exc.status}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.connections_lock:
            connections, self.connections = list(self.connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes: without this, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True
    fake: FakeCloudRun

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.fake.handle(self.command, self.path, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass
