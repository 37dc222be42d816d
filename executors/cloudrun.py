"""Google Cloud Run Jobs as a backend: one Cloud Run *Job* per attempt, one *Execution* per Job.

Why it looks like this:

* **One Job per attempt.** Cloud Run has no "create a container" verb; a Job is the template and
  ``run_job`` starts an Execution of it. Creating a Job whose id is derived deterministically from
  the attempt's container name makes the create idempotent: ``ALREADY_EXISTS`` means "adopt", and
  before running we look for an existing Execution of that Job, so a retried launch (or a daemon
  restarted between ``run_job`` and recording it) never starts a second Execution. The remaining
  window (two processes launching the same attempt at the same instant) is closed by the
  reconciler, which handles each attempt from one worker of one leader.
* **Polling, cheaply.** Cloud Run pushes no events to us (``supports_events = False``). The
  reconciler polls: ``list_managed`` issues ONE paginated ``ListExecutions`` over every job in the
  region (``jobs/-``) and keeps that listing as a snapshot for ``poll_interval`` seconds, so the
  ``inspect`` calls of one poll are answered from it and cost no Google calls. Only names missing
  from the snapshot (just launched, just stopped) are fetched individually. ``api_calls`` and
  ``api_calls_by_method`` count every request made, so tests can pin the cost of a poll.
* **Cloud Run enforces the timeout** (``TaskTemplate.timeout``) and retries nothing
  (``max_retries = 0``): the reconciler owns retries and backoff.
* **One error path.** Every Google call goes through :meth:`CloudRunExecutor._call`, which sets a
  timeout, counts the call, maps ``google.api_core`` / transport errors onto
  ``executors.exceptions`` and retries transient ones with tenacity (bounded exponential backoff
  with jitter, longer for quota errors). Over the REST transport the exception class follows the
  HTTP status (409 is ``Conflict``, 400 ``BadRequest``, 429 ``TooManyRequests``), so we map on
  those base classes and read the RPC status from the error body where it matters.
* **Long-running operations** are waited for by polling ``GetOperation`` ourselves (bounded by
  ``operation_timeout``), so every poll has a timeout and is counted. ``run_job``'s operation only
  completes when the Execution does, so we read the Execution from its metadata and never wait.

Resource mapping (Cloud Run Jobs run in the second-generation environment, where CPU is a whole
number of vCPUs): CPU is rounded *up* to the nearest of 1, 2, 4, 6 or 8 vCPUs; memory (MiB) is
raised to at least 512 MiB and to the minimum the CPU count needs (4 vCPU: 2 GiB; 6 and 8 vCPU:
4 GiB); memory above what the CPU count allows (1 vCPU: 4 GiB, 2: 8 GiB, 4: 16 GiB, 6: 24 GiB,
8: 32 GiB) raises the CPU count instead. More than 8 vCPUs or 32 GiB cannot run on Cloud Run and
is refused with ``InvalidSpec`` rather than silently shrunk.

Labels: Cloud Run label keys and values allow only ``[a-z0-9_-]`` (keys start with a letter),
at most 63 characters, so ``container_manager.job`` becomes ``cm-job`` and values are lowercased
and sanitised. The exact original labels and container name also travel in annotations
(``container-manager/labels``, ``container-manager/name``), which are read back first.

What this backend cannot do: resource-usage stats, log streaming, OOM detection (Cloud Run
reports a failed task, not an OOM kill), a configurable stop grace period (Cloud Run sends
SIGTERM and kills 10 s later), or ``ContainerSpec.user``/``pids_limit`` (Cloud Run's sandbox
has no such knobs; they are ignored). Env values, secret ones included, are set as plain
environment variables of the Job (visible to anyone who may read it); Secret Manager references
are not used. ``list_managed`` lists executions, so a Job whose launch stopped between create and
run is not listed; the reconciler finds it by name (``inspect`` says ``CREATED``) from its
write-ahead attempt row, and ``launch`` then runs it once. ``retain_jobs`` does not change
``remove()``, which always deletes the Job: it tells the reconciler whether to call ``remove()``
after harvesting. Logs: a pointer to the execution's Cloud Console log URI, or with
``use_cloud_logging`` (needs ``google-cloud-logging``) the newest ``max_bytes`` of its entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import tenacity
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import run_v2
from google.protobuf import duration_pb2

from executors.base import DEFAULT_LOG_TAIL_BYTES, BoundedTail, Executor
from executors.exceptions import (
    ConfigurationError,
    Conflict,
    ExecutorError,
    InvalidSpec,
    NotFound,
    QuotaExceeded,
    Unavailable,
)
from executors.types import (
    LABEL_ATTEMPT,
    LABEL_INSTANCE,
    LABEL_JOB,
    LABEL_MANAGED,
    ContainerSpec,
    ContainerState,
    HealthReport,
    LogTail,
    Observed,
)

T = TypeVar("T")

#: ``projects/PROJECT/locations/REGION``; PROJECT may be an id or a number.
CONNECTION_RE = re.compile(
    r"\Aprojects/(?P<project>[a-z0-9][a-z0-9.:_-]*)/locations/(?P<location>[a-z0-9-]+)\Z"
)

CONFIG_KEYS = frozenset(
    {
        "service_account",
        "vpc_connector",
        "vpc_egress",
        "labels",
        "credentials_file",
        "api_endpoint",
        "anonymous",
        "transport",
        "call_timeout",
        "operation_timeout",
        "poll_interval",
        "retain_jobs",
        "task_count",
        "use_cloud_logging",
        "retry_attempts",
        "retry_backoff",
        "retry_backoff_max",
        "list_page_size",
    }
)

#: Whole vCPU counts a Cloud Run job task may have.
CPU_STEPS: tuple[int, ...] = (1, 2, 4, 6, 8)
#: vCPUs -> (minimum MiB, maximum MiB) allowed with that many vCPUs.
MEMORY_BOUNDS_MIB: dict[int, tuple[int, int]] = {
    1: (512, 4 * 1024),
    2: (512, 8 * 1024),
    4: (2 * 1024, 16 * 1024),
    6: (4 * 1024, 24 * 1024),
    8: (4 * 1024, 32 * 1024),
}
MIN_MEMORY_MIB = 512
MAX_MEMORY_MIB = 32 * 1024
#: Longest task timeout Cloud Run accepts (168 hours).
MAX_TIMEOUT_SECONDS = 168 * 3600

JOB_ID_MAX = 63
LABEL_MAX = 63
#: Label keys of ours, shortened to fit Cloud Run's label rules.
LABEL_KEY_MAP = {
    LABEL_MANAGED: "cm-managed",
    LABEL_INSTANCE: "cm-instance",
    LABEL_JOB: "cm-job",
    LABEL_ATTEMPT: "cm-attempt",
}
LABEL_KEY_REVERSE = {v: k for k, v in LABEL_KEY_MAP.items()}
#: Label carrying the container name (when it is a valid label value).
NAME_LABEL = "cm-name"
ANNOTATION_NAME = "container-manager/name"
ANNOTATION_LABELS = "container-manager/labels"

#: Quota errors back off this many times longer than other transient errors.
QUOTA_BACKOFF_FACTOR = 4.0
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

#: gRPC status code (as carried in a long-running operation's error) -> api_core exception.
_GRPC_CODE_EXCEPTIONS: dict[int, type[gexc.GoogleAPICallError]] = {
    1: gexc.Cancelled,
    2: gexc.Unknown,
    3: gexc.InvalidArgument,
    4: gexc.DeadlineExceeded,
    5: gexc.NotFound,
    6: gexc.AlreadyExists,
    7: gexc.PermissionDenied,
    8: gexc.ResourceExhausted,
    9: gexc.FailedPrecondition,
    10: gexc.Aborted,
    11: gexc.OutOfRange,
    12: gexc.MethodNotImplemented,
    13: gexc.InternalServerError,
    14: gexc.ServiceUnavailable,
    15: gexc.DataLoss,
    16: gexc.Unauthenticated,
}

_EXIT_CODE_RES = (
    re.compile(r"exit(?:ed)?\s+(?:with\s+)?(?:exit\s+)?(?:code|status)[\s:=]*(-?\d+)", re.IGNORECASE),
    re.compile(r"exit\((-?\d+)\)", re.IGNORECASE),
    re.compile(r"exit[_\s]code[\s:=]+(-?\d+)", re.IGNORECASE),
)
_TIMEOUT_RE = re.compile(r"time(?:d)?[\s-]?out|timeout|deadline", re.IGNORECASE)


# Pure helpers: naming, labels, resources ---------------------------------------------


def _short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def job_id_for(name: str) -> str:
    """The Cloud Run job id for container ``name``: deterministic, valid, collision-resistant.

    A name that already is a valid job id (lowercase letter first, then lowercase letters,
    digits and single hyphens, no trailing hyphen, at most 63 characters) is used as it is;
    anything else is sanitised and suffixed with a hash of the original name, so two names
    that sanitise alike still get different ids.
    """
    if re.fullmatch(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?", name):
        return name
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = ("cm-" + cleaned).strip("-")
    suffix = _short_hash(name)
    head = cleaned[: JOB_ID_MAX - len(suffix) - 1].rstrip("-")
    return f"{head}-{suffix}"


def _fit_label(text: str) -> str:
    if len(text) <= LABEL_MAX:
        return text
    suffix = _short_hash(text)
    return f"{text[: LABEL_MAX - len(suffix) - 1]}-{suffix}"


def label_key(key: str) -> str:
    """A Cloud Run label key for one of our label keys (``container_manager.job`` -> ``cm-job``)."""
    if key in LABEL_KEY_MAP:
        return LABEL_KEY_MAP[key]
    if key.startswith("container_manager."):
        key = "cm-" + key[len("container_manager.") :]
    cleaned = re.sub(r"[^a-z0-9_-]", "-", key.lower())
    if not cleaned or not cleaned[0].isalpha():
        cleaned = "cm-" + cleaned
    return _fit_label(cleaned)


def label_value(value: str) -> str:
    """A Cloud Run label value: lowercase ``[a-z0-9_-]``, at most 63 characters."""
    return _fit_label(re.sub(r"[^a-z0-9_-]", "-", str(value).lower()))


def cloud_run_labels(labels: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {label_key(k): label_value(v) for k, v in labels}


def _valid_label(key: str, value: str) -> bool:
    return bool(
        re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key)
        and re.fullmatch(r"[a-z0-9_-]{0,63}", value)
        and not key.startswith(("run.googleapis.com", "cloud.googleapis.com"))
    )


def cloud_run_resources(memory_mb: int, cpu: float) -> tuple[str, str]:
    """(cpu, memory) limits for Cloud Run from our MiB and cores; see the module docstring."""
    if memory_mb <= 0 or cpu <= 0:
        raise InvalidSpec(f"memory ({memory_mb} MiB) and cpu ({cpu}) must be positive")
    if cpu > CPU_STEPS[-1] + 1e-9:
        raise InvalidSpec(f"Cloud Run jobs have at most {CPU_STEPS[-1]} vCPUs; {cpu} requested")
    if memory_mb > MAX_MEMORY_MIB:
        raise InvalidSpec(
            f"Cloud Run jobs have at most {MAX_MEMORY_MIB} MiB of memory; {memory_mb} requested"
        )
    index = next(i for i, steps in enumerate(CPU_STEPS) if steps + 1e-9 >= cpu)
    memory = max(int(memory_mb), MIN_MEMORY_MIB)
    while memory > MEMORY_BOUNDS_MIB[CPU_STEPS[index]][1]:
        index += 1
    cores = CPU_STEPS[index]
    memory = max(memory, MEMORY_BOUNDS_MIB[cores][0])
    return str(cores), f"{memory}Mi"


def exit_code_from_message(message: str) -> int | None:
    """An exit code quoted in a Cloud Run condition message, if there is one."""
    for pattern in _EXIT_CODE_RES:
        match = pattern.search(message or "")
        if match:
            return int(match.group(1))
    return None


def _last_segment(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    return None


# The executor -----------------------------------------------------------------------


@dataclass
class _Snapshot:
    #: ``time.monotonic()`` when the listing was taken.
    taken_at: float
    #: job id -> the first execution of that job.
    by_job: dict[str, run_v2.Execution]


class CloudRunExecutor(Executor):
    """Runs each attempt as a Cloud Run Job execution in one project and region."""

    kind = "cloudrun"
    supports_events = False
    enforces_timeout = True

    def __init__(
        self,
        project: str,
        location: str,
        *,
        name: str = "cloudrun",
        jobs_client: Any = None,
        executions_client: Any = None,
        service_account: str | None = None,
        vpc_connector: str | None = None,
        vpc_egress: str | None = None,
        labels: Mapping[str, str] | None = None,
        call_timeout: float = 30.0,
        operation_timeout: float = 120.0,
        poll_interval: float = 5.0,
        retain_jobs: bool = False,
        task_count: int = 1,
        use_cloud_logging: bool = False,
        retry_attempts: int = 4,
        retry_backoff: float = 0.5,
        retry_backoff_max: float = 4.0,
        list_page_size: int = 500,
        credentials: Any = None,
    ) -> None:
        self.name = name
        self.project = project
        self.location = location
        self.parent = f"projects/{project}/locations/{location}"
        self._jobs = jobs_client
        self._executions = executions_client
        self.service_account = service_account
        self.vpc_connector = vpc_connector
        self.vpc_egress = vpc_egress
        self.extra_labels = dict(labels or {})
        self.call_timeout = call_timeout
        self.operation_timeout = operation_timeout
        self.poll_interval = poll_interval
        #: Whether the reconciler should keep Cloud Run jobs after harvesting (``remove`` always deletes).
        self.retain_jobs = retain_jobs
        self.task_count = task_count
        self.use_cloud_logging = use_cloud_logging
        self.retry_attempts = retry_attempts
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.list_page_size = list_page_size
        self._credentials = credentials
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        #: Google requests made (every attempt, retries included).
        self.api_calls = 0
        self.api_calls_by_method: Counter[str] = Counter()
        #: Google requests that failed, by method.
        self.api_errors_by_method: Counter[str] = Counter()
        #: Attempts repeated after a transient error.
        self.api_retries = 0
        #: execution name -> Cloud Console log URI, for operators.
        self.log_uris: dict[str, str] = {}
        #: Injectable for tests.
        self._sleep: Callable[[float], None] = time.sleep

    # Construction ---------------------------------------------------------------------

    @classmethod
    def from_config(cls, connection_string: str, config: dict[str, Any], name: str) -> CloudRunExecutor:
        match = CONNECTION_RE.match(connection_string or "")
        if not match:
            raise ConfigurationError(
                f"Cloud Run connection string must be projects/PROJECT_ID/locations/REGION, "
                f"got {connection_string!r}"
            )
        config = dict(config or {})
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ConfigurationError(
                f"unknown Cloud Run executor config keys: {unknown}; known keys: {sorted(CONFIG_KEYS)}"
            )
        labels = config.get("labels") or {}
        if not isinstance(labels, dict):
            raise ConfigurationError("Cloud Run config 'labels' must be an object of strings")
        bad = [f"{k}={v}" for k, v in labels.items() if not _valid_label(str(k), str(v))]
        if bad:
            raise ConfigurationError(
                f"invalid Cloud Run labels {bad}: keys start with a lowercase letter; keys and values "
                "use only lowercase letters, digits, '_' and '-', at most 63 characters"
            )
        egress = config.get("vpc_egress")
        if egress is not None:
            normalized = str(egress).upper().replace("-", "_")
            if normalized not in ("ALL_TRAFFIC", "PRIVATE_RANGES_ONLY"):
                raise ConfigurationError(
                    f"vpc_egress must be 'all-traffic' or 'private-ranges-only', got {egress!r}"
                )
            egress = normalized
        transport = config.get("transport", "rest")
        if transport not in ("rest", "grpc"):
            raise ConfigurationError(f"transport must be 'rest' or 'grpc', got {transport!r}")

        def number(key: str, default: float, minimum: float = 0.0) -> float:
            value = config.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
                raise ConfigurationError(
                    f"Cloud Run config {key!r} must be a number >= {minimum}, got {value!r}"
                )
            return float(value)

        def integer(key: str, default: int, minimum: int, maximum: int) -> int:
            value = config.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
                raise ConfigurationError(
                    f"Cloud Run config {key!r} must be an integer in [{minimum}, {maximum}], got {value!r}"
                )
            return value

        def flag(key: str, default: bool) -> bool:
            value = config.get(key, default)
            if not isinstance(value, bool):
                raise ConfigurationError(f"Cloud Run config {key!r} must be true or false, got {value!r}")
            return value

        call_timeout = number("call_timeout", 30.0, 0.001)
        operation_timeout = number("operation_timeout", 120.0, 0.001)
        poll_interval = number("poll_interval", 5.0)
        retry_backoff = number("retry_backoff", 0.5)
        retry_backoff_max = number("retry_backoff_max", 4.0)
        retry_attempts = integer("retry_attempts", 4, 1, 20)
        task_count = integer("task_count", 1, 1, 10000)
        list_page_size = integer("list_page_size", 500, 1, 1000)
        retain_jobs = flag("retain_jobs", False)
        anonymous = flag("anonymous", False)
        use_cloud_logging = flag("use_cloud_logging", False)
        for key in ("service_account", "vpc_connector", "api_endpoint", "credentials_file"):
            if config.get(key) is not None and not isinstance(config[key], str):
                raise ConfigurationError(f"Cloud Run config {key!r} must be a string")

        credentials = _credentials(config.get("credentials_file"), anonymous)
        options = ClientOptions(api_endpoint=config["api_endpoint"]) if config.get("api_endpoint") else None
        try:
            jobs = run_v2.JobsClient(transport=transport, client_options=options, credentials=credentials)
            executions = run_v2.ExecutionsClient(
                transport=transport, client_options=options, credentials=credentials
            )
        except Exception as exc:  # DefaultCredentialsError, MutualTLSChannelError, ...
            raise ConfigurationError(f"cannot build Cloud Run clients for {name!r}: {exc}") from exc
        return cls(
            match["project"],
            match["location"],
            name=name,
            jobs_client=jobs,
            executions_client=executions,
            service_account=config.get("service_account"),
            vpc_connector=config.get("vpc_connector"),
            vpc_egress=egress,
            labels=labels,
            call_timeout=call_timeout,
            operation_timeout=operation_timeout,
            poll_interval=poll_interval,
            retain_jobs=retain_jobs,
            task_count=task_count,
            use_cloud_logging=use_cloud_logging,
            retry_attempts=retry_attempts,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            list_page_size=list_page_size,
            credentials=credentials,
        )

    # Names ------------------------------------------------------------------------------

    def job_name(self, name: str) -> str:
        """Full Cloud Run job resource name for our container ``name``."""
        return f"{self.parent}/jobs/{job_id_for(name)}"

    # The six verbs ----------------------------------------------------------------------

    def launch(self, spec: ContainerSpec) -> Observed:
        job_id = job_id_for(spec.name)
        job_name = f"{self.parent}/jobs/{job_id}"
        job = self.build_job(spec)
        self._forget(job_id)
        try:
            operation = self._call(
                "create_job",
                self._jobs.create_job,
                request={"parent": self.parent, "job": job, "job_id": job_id},
            )
            self._await_operation("create_job", operation, run_v2.Job)
        except Conflict:
            # ALREADY_EXISTS: an earlier launch of this attempt created it. Adopt its execution,
            # or run it once it is ready (that launch may have given up while it was being created).
            existing = self._first_execution(job_name)
            if existing is not None:
                return self._observe(spec.name, existing)
            self._wait_job_ready(job_name)
        operation = self._call("run_job", self._jobs.run_job, request={"name": job_name})
        execution = self._operation_execution(operation)
        if execution is None:  # no metadata: read it back
            execution = self._first_execution(job_name)
        if execution is None:
            return Observed(name=spec.name, state=ContainerState.CREATED, labels=spec.labels_dict)
        return self._observe(spec.name, execution)

    def inspect(self, name: str) -> Observed:
        job_id = job_id_for(name)
        with self._lock:
            snapshot = self._snapshot
            fresh = snapshot is not None and time.monotonic() - snapshot.taken_at < self.poll_interval
            cached = snapshot.by_job.get(job_id) if fresh and snapshot is not None else None
        if cached is not None:
            return self._observe(name, cached)
        job_name = f"{self.parent}/jobs/{job_id}"
        try:
            execution = self._first_execution(job_name)
        except NotFound:
            return Observed.missing(name)
        if execution is not None:
            return self._observe(name, execution)
        try:
            job = self._call("get_job", self._jobs.get_job, request={"name": job_name})
        except NotFound:
            return Observed.missing(name)
        return Observed(name=name, state=ContainerState.CREATED, labels=self._labels_of(job))

    def stop(self, name: str, grace_seconds: float = 10.0) -> None:
        """Cancel the execution; Cloud Run sends SIGTERM and kills 10 s later (not configurable)."""
        job_id = job_id_for(name)
        try:
            execution = self._first_execution(f"{self.parent}/jobs/{job_id}")
        except NotFound:
            return
        finally:
            self._forget(job_id)
        if execution is None or self._is_done(execution):
            return
        try:
            self._call(
                "cancel_execution", self._executions.cancel_execution, request={"name": execution.name}
            )
        except (NotFound, InvalidSpec):
            # Gone, or finished in the meantime (FAILED_PRECONDITION): nothing to stop.
            pass
        self._forget(job_id)

    def logs(self, name: str, max_bytes: int = DEFAULT_LOG_TAIL_BYTES) -> LogTail:
        job_id = job_id_for(name)
        try:
            execution = self._first_execution(f"{self.parent}/jobs/{job_id}")
        except NotFound:
            return LogTail()
        if execution is None:
            return LogTail()
        if self.use_cloud_logging:
            tail = self._cloud_logging_tail(job_id, execution, max_bytes)
            if tail is not None:
                return tail
        uri = execution.log_uri or ""
        if uri:
            with self._lock:
                self.log_uris[execution.name] = uri
        text = BoundedTail(max_bytes)
        text.feed(f"logs: {uri or '(no log URI reported)'}\n".encode())
        return LogTail(stdout=text.text(), stdout_truncated=text.truncated)

    def remove(self, name: str) -> None:
        """Delete the Cloud Run job (and with it its executions). Absent is fine."""
        job_id = job_id_for(name)
        self._forget(job_id)
        try:
            operation = self._call(
                "delete_job", self._jobs.delete_job, request={"name": f"{self.parent}/jobs/{job_id}"}
            )
            self._await_operation("delete_job", operation, run_v2.Job)
        except NotFound:
            pass
        self._forget(job_id)

    def list_managed(self, instance: str) -> list[Observed]:
        snapshot = self._take_snapshot()
        with self._lock:
            executions = list(snapshot.by_job.values())
        wanted_label = label_value(instance)
        result = []
        for execution in executions:
            labels = self._labels_of(execution)
            original = self._original_labels(execution)
            if original is not None:
                ours = original.get(LABEL_INSTANCE) == instance
            else:
                ours = execution.labels.get(LABEL_KEY_MAP[LABEL_INSTANCE]) == wanted_label
            if not ours:
                continue
            result.append(self._observe(self._container_name(execution), execution, labels=labels))
        return result

    # Optional verbs -------------------------------------------------------------------

    def health_check(self, timeout: float = 5.0) -> HealthReport:
        started = time.monotonic()
        try:
            self._call(
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
        latency = time.monotonic() - started
        return HealthReport(True, f"Cloud Run {self.parent} reachable", latency)

    def close(self) -> None:
        for client in (self._jobs, self._executions):
            transport = getattr(client, "transport", None)
            try:
                if transport is not None:
                    transport.close()
            except Exception:
                pass

    # Job template ---------------------------------------------------------------------

    def build_job(self, spec: ContainerSpec) -> run_v2.Job:
        """The Cloud Run Job for one attempt (exposed for tests and dry runs)."""
        if not spec.image:
            raise InvalidSpec("image is empty")
        if spec.timeout_seconds <= 0 or spec.timeout_seconds > MAX_TIMEOUT_SECONDS:
            raise InvalidSpec(
                f"Cloud Run task timeout must be 1..{MAX_TIMEOUT_SECONDS} s, got {spec.timeout_seconds}"
            )
        cpu, memory = cloud_run_resources(spec.memory_mb, spec.cpu)
        container = run_v2.Container(
            image=spec.image,
            env=[run_v2.EnvVar(name=k, value=v) for k, v in spec.env],
            resources=run_v2.ResourceRequirements(limits={"cpu": cpu, "memory": memory}),
        )
        if spec.command:
            container.command = [spec.command[0]]
            container.args = list(spec.command[1:])
        task = run_v2.TaskTemplate(
            containers=[container],
            max_retries=0,
            timeout=duration_pb2.Duration(seconds=int(spec.timeout_seconds)),
        )
        if self.service_account:
            task.service_account = self.service_account
        if self.vpc_connector:
            task.vpc_access = run_v2.VpcAccess(
                connector=self.vpc_connector,
                egress=getattr(run_v2.VpcAccess.VpcEgress, self.vpc_egress or "PRIVATE_RANGES_ONLY"),
            )
        labels = {**cloud_run_labels(spec.labels), **self.extra_labels}
        name_value = label_value(spec.name)
        if name_value == spec.name:
            labels[NAME_LABEL] = name_value
        annotations = {
            ANNOTATION_NAME: spec.name,
            ANNOTATION_LABELS: json.dumps(dict(spec.labels), sort_keys=True, separators=(",", ":")),
        }
        return run_v2.Job(
            labels=labels,
            annotations=annotations,
            template=run_v2.ExecutionTemplate(
                labels=labels,
                annotations=annotations,
                task_count=self.task_count,
                template=task,
            ),
        )

    # Observation ------------------------------------------------------------------------

    @staticmethod
    def _completed_condition(execution: run_v2.Execution) -> run_v2.Condition | None:
        for condition in execution.conditions:
            if condition.type_ == "Completed":
                return condition
        return None

    def _is_done(self, execution: run_v2.Execution) -> bool:
        if execution.completion_time is not None:
            return True
        condition = self._completed_condition(execution)
        return condition is not None and condition.state in (
            run_v2.Condition.State.CONDITION_SUCCEEDED,
            run_v2.Condition.State.CONDITION_FAILED,
        )

    def _observe(
        self, name: str, execution: run_v2.Execution, labels: Mapping[str, str] | None = None
    ) -> Observed:
        if execution.log_uri:
            with self._lock:
                self.log_uris[execution.name] = execution.log_uri
        base: dict[str, Any] = {
            "name": name,
            "container_id": execution.name,
            "started_at": _plain(execution.start_time),
            "labels": dict(labels if labels is not None else self._labels_of(execution)),
        }
        if not self._is_done(execution):
            return Observed(state=ContainerState.RUNNING, **base)
        finished = _plain(execution.completion_time)
        condition = self._completed_condition(execution)
        message = condition.message if condition is not None else ""
        reason = condition.execution_reason if condition is not None else None
        tasks = execution.task_count or 1
        exited = {"state": ContainerState.EXITED, "finished_at": finished, **base}
        if execution.cancelled_count > 0 or reason in (
            run_v2.Condition.ExecutionReason.CANCELLED,
            run_v2.Condition.ExecutionReason.CANCELLING,
        ):
            return Observed(exit_code=None, reason_hint="cancelled", error=message, **exited)
        if execution.succeeded_count >= tasks and execution.failed_count == 0:
            return Observed(exit_code=0, **exited)
        if (
            condition is not None
            and condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
            and execution.failed_count == 0
        ):
            return Observed(exit_code=0, **exited)
        if self._timed_out(execution, message):
            return Observed(exit_code=None, reason_hint="timeout", error=message, **exited)
        code = exit_code_from_message(message)
        return Observed(exit_code=1 if code is None else code, error=message, **exited)

    @staticmethod
    def _timed_out(execution: run_v2.Execution, message: str) -> bool:
        if message and _TIMEOUT_RE.search(message):
            return True
        limit = _seconds(execution.template.timeout) if execution.template else None
        start, end = execution.start_time, execution.completion_time
        if limit and start is not None and end is not None:
            return (end - start).total_seconds() >= limit
        return False

    @staticmethod
    def _original_labels(resource: Any) -> dict[str, str] | None:
        raw = resource.annotations.get(ANNOTATION_LABELS)
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None

    def _labels_of(self, resource: Any) -> dict[str, str]:
        original = self._original_labels(resource)
        if original is not None:
            return original
        return {LABEL_KEY_REVERSE.get(k, k): v for k, v in resource.labels.items() if k != NAME_LABEL}

    @staticmethod
    def _container_name(execution: run_v2.Execution) -> str:
        return (
            execution.annotations.get(ANNOTATION_NAME)
            or execution.labels.get(NAME_LABEL)
            or _last_segment(execution.job or execution.name.split("/executions/")[0])
        )

    # Google calls -----------------------------------------------------------------------

    def _first_execution(self, job_name: str) -> run_v2.Execution | None:
        """The first execution of a job (ours is the only one), or None; NotFound if no job."""
        executions: list[run_v2.Execution] = []
        token = ""
        while True:
            page = self._call(
                "list_executions",
                self._executions.list_executions,
                request={"parent": job_name, "page_size": self.list_page_size, "page_token": token},
            )
            executions.extend(page.executions)
            token = page.next_page_token
            if not token:
                break
        return _earliest(executions)

    def _take_snapshot(self) -> _Snapshot:
        by_job: dict[str, list[run_v2.Execution]] = {}
        token = ""
        while True:
            page = self._call(
                "list_executions",
                self._executions.list_executions,
                request={
                    "parent": f"{self.parent}/jobs/-",
                    "page_size": self.list_page_size,
                    "page_token": token,
                },
            )
            for execution in page.executions:
                job = _last_segment(execution.job) if execution.job else _job_of(execution.name)
                by_job.setdefault(job, []).append(execution)
            token = page.next_page_token
            if not token:
                break
        firsts = {job: first for job, items in by_job.items() if (first := _earliest(items)) is not None}
        snapshot = _Snapshot(taken_at=time.monotonic(), by_job=firsts)
        with self._lock:
            self._snapshot = snapshot
        return snapshot

    def _wait_job_ready(self, job_name: str) -> None:
        """Wait (bounded by ``operation_timeout``) until an adopted job is no longer being reconciled."""
        deadline = time.monotonic() + self.operation_timeout
        delay = 0.1
        while True:
            job = self._call("get_job", self._jobs.get_job, request={"name": job_name})
            if not job.reconciling:
                condition = job.terminal_condition
                if condition is not None and condition.state == run_v2.Condition.State.CONDITION_FAILED:
                    raise InvalidSpec(f"Cloud Run job {job_name} is not runnable: {condition.message}")
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(
                    f"Cloud Run job {job_name} still reconciling after {self.operation_timeout:g} s"
                )
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)

    def _forget(self, job_id: str) -> None:
        """Drop a job from the listing snapshot after acting on it, so the next inspect asks Google."""
        with self._lock:
            if self._snapshot is not None:
                self._snapshot.by_job.pop(job_id, None)

    def _operation_execution(self, operation: Any) -> run_v2.Execution | None:
        raw = getattr(operation, "operation", None)
        if raw is None:
            return None
        if raw.HasField("error") and raw.error.code:
            raise self._translate(
                "run_job", _GRPC_CODE_EXCEPTIONS.get(raw.error.code, gexc.Unknown)(raw.error.message)
            )
        for field in ("metadata", "response"):
            if raw.HasField(field):
                any_msg = getattr(raw, field)
                if any_msg.type_url.endswith("google.cloud.run.v2.Execution"):
                    return run_v2.Execution.deserialize(any_msg.value)
        return None

    def _await_operation(self, method: str, operation: Any, result_type: type[T]) -> T | None:
        """Poll a long-running operation until done (bounded by ``operation_timeout``)."""
        raw = operation.operation
        deadline = time.monotonic() + self.operation_timeout
        delay = 0.1
        while not raw.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(
                    f"{method}: operation {raw.name} not done after {self.operation_timeout:g} s"
                )
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)
            raw = self._call("get_operation", self._jobs.get_operation, request={"name": raw.name})
        if raw.HasField("error") and raw.error.code:
            error_class = _GRPC_CODE_EXCEPTIONS.get(raw.error.code, gexc.Unknown)
            raise self._translate(method, error_class(raw.error.message))
        if raw.HasField("response"):
            result: T = result_type.deserialize(raw.response.value)  # type: ignore[attr-defined]
            return result
        return None

    def _call(self, method: str, fn: Callable[..., T], /, *, retry: bool = True, **kwargs: Any) -> T:
        """Make one Google call with a timeout, counted, errors mapped, transient ones retried."""
        kwargs.setdefault("timeout", self.call_timeout)

        def attempt() -> T:
            with self._lock:
                self.api_calls += 1
                self.api_calls_by_method[method] += 1
            try:
                return fn(**kwargs)
            except Exception as exc:
                with self._lock:
                    self.api_errors_by_method[method] += 1
                raise self._translate(method, exc) from exc

        if not retry or self.retry_attempts <= 1:
            return attempt()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retry_attempts),
            wait=self._backoff,
            retry=tenacity.retry_if_exception_type(Unavailable),
            before_sleep=self._count_retry,
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(attempt)

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        with self._lock:
            self.api_retries += 1

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        """Exponential backoff with full jitter; quota errors wait ``QUOTA_BACKOFF_FACTOR`` times longer."""
        exc = state.outcome.exception() if state.outcome is not None else None
        factor = QUOTA_BACKOFF_FACTOR if isinstance(exc, QuotaExceeded) else 1.0
        ceiling = min(
            self.retry_backoff_max * factor, self.retry_backoff * factor * 2 ** (state.attempt_number - 1)
        )
        return random.uniform(ceiling / 2, ceiling)

    def _translate(self, method: str, exc: BaseException) -> ExecutorError:
        """Map an SDK or transport error onto the executor exception tree."""
        if isinstance(exc, ExecutorError):
            return exc
        text = f"Cloud Run {method}: {getattr(exc, 'message', None) or exc}"
        if isinstance(exc, gexc.NotFound):
            return NotFound(text)
        if isinstance(exc, gexc.Conflict):
            # Over REST every 409 is ``Conflict``; ABORTED (a concurrent modification) is transient.
            if isinstance(exc, gexc.Aborted) or _rpc_status(exc) == "ABORTED":
                return Unavailable(text)
            return Conflict(text)
        if isinstance(exc, gexc.TooManyRequests):
            return QuotaExceeded(text)
        if isinstance(exc, gexc.BadRequest | gexc.Forbidden):
            return InvalidSpec(text)
        if isinstance(exc, gexc.Unauthorized):
            # Credentials problems are the host's, not the job's: keep jobs retryable.
            return Unavailable(text)
        if isinstance(exc, gexc.ServerError | gexc.Cancelled):
            return Unavailable(text)
        if isinstance(exc, gexc.GoogleAPICallError):
            return ExecutorError(text)
        if isinstance(exc, TimeoutError | ConnectionError | OSError):
            return Unavailable(text)
        if _is_transport_error(exc):
            return Unavailable(text)
        return ExecutorError(f"Cloud Run {method}: unexpected {type(exc).__name__}: {exc}")

    # Cloud Logging ----------------------------------------------------------------------

    def _cloud_logging_tail(self, job_id: str, execution: run_v2.Execution, max_bytes: int) -> LogTail | None:
        """The newest ``max_bytes`` of stdout/stderr from Cloud Logging, or None when unavailable."""
        try:
            from google.cloud import logging as cloud_logging  # type: ignore[attr-defined]
        except ImportError:
            return None
        execution_id = _last_segment(execution.name)
        query = (
            f'resource.type="cloud_run_job" AND resource.labels.job_name="{job_id}" '
            f'AND labels."run.googleapis.com/execution_name"="{execution_id}"'
        )
        try:
            client = cloud_logging.Client(project=self.project, credentials=self._credentials)
            entries = client.list_entries(
                filter_=query, order_by=cloud_logging.DESCENDING, page_size=1000, max_results=20000
            )
            streams: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
            sizes = {"stdout": 0, "stderr": 0}
            truncated = {"stdout": False, "stderr": False}
            with self._lock:
                self.api_calls += 1
                self.api_calls_by_method["list_log_entries"] += 1
            for entry in entries:
                stream = "stderr" if str(getattr(entry, "log_name", "")).endswith("stderr") else "stdout"
                if sizes[stream] >= max_bytes:
                    truncated[stream] = True
                    if all(sizes[s] >= max_bytes for s in sizes):
                        break
                    continue
                payload = entry.payload
                line = (payload if isinstance(payload, str) else json.dumps(payload, default=str)) + "\n"
                data = line.encode()
                streams[stream].append(data)
                sizes[stream] += len(data)
        except Exception:
            return None
        out, err = BoundedTail(max_bytes), BoundedTail(max_bytes)
        for chunk in reversed(streams["stdout"]):
            out.feed(chunk)
        for chunk in reversed(streams["stderr"]):
            err.feed(chunk)
        return LogTail(
            out.text(), err.text(), out.truncated or truncated["stdout"], err.truncated or truncated["stderr"]
        )


# Module helpers ------------------------------------------------------------------------


def _earliest(executions: list[run_v2.Execution]) -> run_v2.Execution | None:
    if not executions:
        return None
    return min(executions, key=lambda e: (e.create_time.timestamp() if e.create_time else 0.0, e.name))


def _plain(value: datetime | None) -> datetime | None:
    """A plain aware ``datetime`` from proto-plus's ``DatetimeWithNanoseconds`` (or None)."""
    if value is None:
        return None
    return datetime.fromtimestamp(value.timestamp(), UTC)


def _job_of(execution_name: str) -> str:
    return _last_segment(execution_name.split("/executions/")[0])


def _rpc_status(exc: gexc.GoogleAPICallError) -> str:
    response = getattr(exc, "response", None)
    try:
        payload = response.json() if response is not None else {}
    except Exception:
        return ""
    error = payload.get("error", {}) if isinstance(payload, dict) else {}
    return str(error.get("status", "")) if isinstance(error, dict) else ""


def _is_transport_error(exc: BaseException) -> bool:
    try:
        import requests
        from google.auth import exceptions as auth_exceptions
    except ImportError:  # pragma: no cover
        return False
    return isinstance(
        exc,
        requests.exceptions.RequestException | auth_exceptions.TransportError | auth_exceptions.RefreshError,
    )


def _credentials(credentials_file: str | None, anonymous: bool) -> Any:
    """Anonymous (tests), a service-account file (or ``env:NAME`` holding a path or JSON), or ADC."""
    if anonymous:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    try:
        from google.oauth2 import service_account

        if credentials_file:
            source = credentials_file
            if source.startswith("env:"):
                value = os.environ.get(source[4:], "")
                if not value:
                    raise ConfigurationError(
                        f"environment variable {source[4:]} (credentials_file) is not set"
                    )
                if value.lstrip().startswith("{"):
                    return service_account.Credentials.from_service_account_info(
                        json.loads(value), scopes=[CLOUD_PLATFORM_SCOPE]
                    )
                source = value
            return service_account.Credentials.from_service_account_file(
                source, scopes=[CLOUD_PLATFORM_SCOPE]
            )
        import google.auth

        credentials, _project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        return credentials
    except ConfigurationError:
        raise
    except Exception as exc:
        where = (
            f"credentials_file {credentials_file!r}"
            if credentials_file
            else "application default credentials"
        )
        raise ConfigurationError(f"cannot load Google credentials from {where}: {exc}") from exc
