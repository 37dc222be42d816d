"""The Docker backend: runs each attempt as one hardened container on one Docker daemon.

Why it looks the way it does (see DESIGN.md sections 4, 5 and 7):

* Only the low-level ``docker.APIClient`` is used: the high-level ``containers.list()``
  inspects every container, and ``logs()`` without ``stream=True`` holds the whole log.
* ``launch`` is idempotent: the container name is the key, and a 409 on create means
  "adopt the container an earlier, interrupted launch made", never "fail".
* Transient API failures (connection errors, timeouts, 5xx) are retried a few times with
  jittered exponential backoff (tenacity); permanent ones (4xx, a missing image, a bad
  executable) are raised at once. Every error leaves as an ``ExecutorError`` subclass whose
  message never contains an environment value.
* Logs are streamed frame by frame into bounded tails: a 50 MB log never sits in memory.
* ``watch`` reads the label-filtered event stream in short ``until`` windows, each a complete
  HTTP request with a socket read timeout, so a silent or half-open stream is noticed, ``stop``
  is honoured within a window, and every window resumes exactly where the last one ended
  (``since`` as "seconds.nanoseconds", the inclusive replay de-duplicated).
* The client is created lazily (the first call that needs the daemon), so a host whose
  daemon is down can still be configured and health-checked.

Configuration (``ExecutorHost.executor_config``): see ``executors.docker_config``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import docker
import docker.errors
import docker.tls
import requests
import tenacity
import urllib3
from docker.types.daemon import CancellableStream
from docker.utils import convert_filters, parse_repository_tag

from executors import docker_config
from executors.base import DEFAULT_LOG_TAIL_BYTES, BoundedTail, Executor
from executors.docker_config import CONFIG_KEYS, DEFAULT_BASE_URL, _validate_network
from executors.exceptions import (
    ConfigurationError,
    Conflict,
    ExecutorError,
    ImageNotFound,
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
    EventKind,
    ExecutorEvent,
    HealthReport,
    LogTail,
    Observed,
    Usage,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MIB = 1024 * 1024

#: Docker's State.Status -> our state. "paused"/"restarting" still occupy the slot; "dead" and
#: "removing" are finished as far as the job is concerned.
_STATES = {
    "created": ContainerState.CREATED,
    "running": ContainerState.RUNNING,
    "paused": ContainerState.RUNNING,
    "restarting": ContainerState.RUNNING,
    "exited": ContainerState.EXITED,
    "dead": ContainerState.EXITED,
    "removing": ContainerState.EXITED,
}

_EVENT_KINDS = {
    "start": EventKind.STARTED,
    "die": EventKind.DIED,
    "oom": EventKind.OOM,
    "destroy": EventKind.DESTROYED,
}

#: 5xx answers that no retry will fix (seen from ``start`` when the spec cannot run).
_PERMANENT_SERVER_ERRORS = (
    "executable file not found",
    "unable to find user",
    "no matching entries in passwd",
    "no such file or directory",
    "not a directory",
    "exec format error",
    "argument list too long",
)
#: Linux limits on the environment a program starts with (execve(2), "Limits on size of
#: arguments and environment"): one string at most MAX_ARG_STRLEN (32 pages, 128 KiB) with its
#: NUL, and argv plus envp (strings and pointers) at most a quarter of the stack limit, 2 MiB
#: under the default 8 MiB stack.
MAX_ARG_STRLEN = 128 * 1024
MAX_ENVIRONMENT_BYTES = 2 * 1024 * 1024

_DOCKER_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")
_EXITED_STATUS = re.compile(r"^Exited \((-?\d+)\)")
_ENV_ECHO = re.compile(r"(environment variable:?\s*)[^\")\n]*")
_FRAME_HEADER = struct.Struct(">BxxxL")
_STREAM_NAMES = {0: "stdout", 1: "stdout", 2: "stderr"}

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    OSError,
)


# Pure helpers ---------------------------------------------------------------------------


def parse_docker_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 timestamp with nanoseconds -> aware datetime; zero time -> None."""
    if not value or value.startswith("0001-01-01"):
        return None
    match = _DOCKER_TIME.match(value.strip())
    if not match:
        return None
    base, fraction, zone = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    parsed = datetime.fromisoformat(base).replace(microsecond=micros)
    if zone in (None, "Z"):
        return parsed.replace(tzinfo=UTC)
    sign = 1 if zone[0] == "+" else -1
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    return (parsed - sign * timedelta(hours=hours, minutes=minutes)).replace(tzinfo=UTC)


def map_state(status: str | None) -> ContainerState:
    """Docker's container status word -> ``ContainerState``."""
    return _STATES.get((status or "").lower(), ContainerState.RUNNING)


def observed_from_inspect(name: str, data: dict[str, Any]) -> Observed:
    """Turn ``inspect_container`` output into an ``Observed``."""
    state_info = data.get("State") or {}
    status = state_info.get("Status") or ("running" if state_info.get("Running") else "exited")
    state = map_state(status)
    exited = state is ContainerState.EXITED
    error = state_info.get("Error") or ""
    if status == "dead" and not error:
        error = "container is dead (Docker could not stop or remove it cleanly)"
    started_at = parse_docker_time(state_info.get("StartedAt"))
    finished_at = parse_docker_time(state_info.get("FinishedAt")) if exited else None
    if started_at and finished_at and finished_at < started_at:
        # Docker stamps StartedAt after the start call returns: a process that exits at once can
        # finish "before" it started. Never report a negative run time.
        finished_at = started_at
    return Observed(
        name=name,
        state=state,
        container_id=data.get("Id"),
        exit_code=int(state_info.get("ExitCode", 0)) if exited else None,
        oom_killed=bool(state_info.get("OOMKilled")),
        started_at=started_at,
        finished_at=finished_at,
        error=error,
        labels=dict((data.get("Config") or {}).get("Labels") or {}),
    )


def observed_from_list(item: dict[str, Any]) -> Observed:
    """Turn one ``containers()`` entry into an ``Observed`` (no times, no OOM: inspect for truth)."""
    names = item.get("Names") or []
    name = names[0].lstrip("/") if names else str(item.get("Id", ""))
    state = map_state(item.get("State"))
    exit_code = None
    if state is ContainerState.EXITED:
        match = _EXITED_STATUS.match(item.get("Status") or "")
        exit_code = int(match.group(1)) if match else None
    return Observed(
        name=name,
        state=state,
        container_id=item.get("Id"),
        exit_code=exit_code,
        labels=dict(item.get("Labels") or {}),
    )


def _int_label(labels: dict[str, str], key: str) -> int | None:
    try:
        return int(labels[key])
    except (KeyError, TypeError, ValueError):
        return None


def _nanos_to_param(nanos: int) -> str:
    """Docker's exact ``since``/``until`` form; docker-py would truncate a datetime to seconds."""
    return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"


def _explain(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    text = str(text)
    return text if len(text) <= 600 else text[:600] + "..."


def scrub(text: str, values: Sequence[str]) -> str:
    """Remove environment values (and Docker's echo of a bad variable) from an error message."""
    for value in sorted({v for v in values if v}, key=len, reverse=True):
        text = text.replace(value, "***")
    return _ENV_ECHO.sub(r"\1<hidden>", text)


def _secret_values(spec: ContainerSpec) -> tuple[str, ...]:
    # Every value of a secret key; other values when long enough that replacing them cannot
    # mangle an unrelated message (a value "1" would).
    return tuple(v for k, v in spec.env if v and (k in spec.secret_keys or len(v) >= 4))


def _usage_from_stats(stats: dict[str, Any]) -> Usage:
    memory = stats.get("memory_stats") or {}
    inner = memory.get("stats") or {}
    # cgroup v1 reports page cache as total_inactive_file, v2 as inactive_file (as docker stats does).
    cache = inner.get("total_inactive_file", inner.get("inactive_file", 0)) or 0
    usage = max(0, int(memory.get("usage") or 0) - int(cache))
    limit = int(memory.get("limit") or 0)
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get(
        "total_usage", 0
    )
    system_delta = (cpu.get("system_cpu_usage") or 0) - (pre.get("system_cpu_usage") or 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    percent = 100.0 * cpu_delta / system_delta * online if cpu_delta > 0 and system_delta > 0 else 0.0
    return Usage(memory_bytes=usage, memory_limit_bytes=limit, cpu_percent=round(percent, 2))


class _BatchedTail:
    """``BoundedTail`` fed in batches, so many tiny frames cost linear time, not quadratic."""

    def __init__(self, max_bytes: int) -> None:
        self.tail = BoundedTail(max(0, max_bytes))
        self._pending = bytearray()
        self._batch = max(max_bytes, 64 * 1024)

    def feed(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) >= self._batch:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.tail.feed(bytes(self._pending))
            self._pending.clear()


def iter_frames(blocks: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
    """Demultiplex Docker's attach/logs stream into ("stdout"|"stderr", payload) pairs.

    Consecutive frames of one stream that arrive in one block are joined, so a log of many
    short lines costs one Python object per block, not per line. A stream without frame
    headers (a TTY container) is passed through as stdout.
    """
    buf = bytearray()
    raw = False
    header = _FRAME_HEADER.size
    for block in blocks:
        if raw:
            if block:
                yield "stdout", bytes(block)
            continue
        buf += block
        size, pos = len(buf), 0
        run_stream, run = "", bytearray()
        view = memoryview(buf)
        try:
            while size - pos >= header:
                stream_id, length = _FRAME_HEADER.unpack_from(buf, pos)
                if stream_id > 2 or buf[pos + 1 : pos + 4] != b"\0\0\0":
                    raw = True
                    if run and run_stream != "stdout":
                        yield run_stream, bytes(run)
                        run = bytearray()
                    run_stream = "stdout"
                    run += view[pos:]
                    pos = size
                    break
                end = pos + header + length
                if end > size:
                    break
                name = _STREAM_NAMES[stream_id]
                if name != run_stream and run:
                    yield run_stream, bytes(run)
                    run = bytearray()
                run_stream = name
                run += view[pos + header : end]
                pos = end
        finally:
            view.release()
        if run:
            yield run_stream, bytes(run)
        del buf[:pos]


def _blocks(response: requests.Response, live: bool) -> Iterator[bytes]:
    """The body in blocks: as each chunk arrives when ``live``, else in big reads (far cheaper)."""
    if live:
        yield from response.raw.stream(64 * 1024, decode_content=False)
        return
    while True:
        block = response.raw.read(64 * 1024, decode_content=False)
        if not block:
            return
        yield block


# The executor -------------------------------------------------------------------------------


class DockerExecutor(Executor):
    """One Docker daemon, reached over a unix socket, TCP (+TLS) or SSH."""

    kind = "docker"
    supports_events = True
    supports_stats = True
    supports_log_streaming = True

    #: Length of one event-stream request; bounds how long ``watch`` takes to notice ``stop``.
    events_window: float = 0.5
    #: Socket read timeout of the event stream; None means ``events_window`` + 5 s.
    events_read_timeout: float | None = None
    #: Events replayed on an anchor-less reconnect, to cover the boundary of the last window.
    events_overlap: float = 0.5
    #: Retry policy for transient API errors.
    retry_attempts: int = 4
    retry_max_seconds: float = 3.0

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        name: str = "docker",
        api_timeout: float = 30.0,
        allow_pull: bool = False,
        pull_timeout: float = 300.0,
        network: str = "bridge",
        runtime: str | None = None,
        read_only: bool = False,
        tmpfs_size_mb: int = 64,
        tls: docker.tls.TLSConfig | bool = False,
        use_ssh_client: bool = False,
        max_pool_size: int = 16,
        api_version: str = "auto",
    ) -> None:
        self.name = name
        self.base_url = base_url
        self.api_timeout = float(api_timeout)
        self.allow_pull = allow_pull
        self.pull_timeout = float(pull_timeout)
        self.network = _validate_network(network)
        self.runtime = runtime
        self.read_only = read_only
        self.tmpfs_size_mb = int(tmpfs_size_mb)
        self.tls = tls
        self.use_ssh_client = use_ssh_client
        self.max_pool_size = int(max_pool_size)
        self.api_version = api_version
        #: Event-stream reconnections (after drops, timeouts or lost events); read by metrics.
        self.reconnects = 0
        #: Transient API errors that were retried; read by metrics.
        self.retries = 0
        #: API calls that failed for good (after retries); read by metrics.
        self.api_errors = 0
        self._api: docker.APIClient | None = None
        self._closed = False
        self._lock = threading.Lock()  # counters and the set of open event streams
        self._client_lock = threading.Lock()  # creating the client (may wait for the daemon)
        self._streams: set[CancellableStream] = set()
        #: container name -> its exit as the 'die' event reported it (see ``inspect``).
        self._exits: OrderedDict[str, Observed] = OrderedDict()
        #: Values read from the environment for the configuration: never in a message.
        self._hidden: tuple[str, ...] = ()

    @classmethod
    def check_config(cls, connection_string: str, config: Mapping[str, Any]) -> None:
        """Refuse a host row's settings without the network, credentials or local files."""
        docker_config.check_config(connection_string, config)

    @classmethod
    def check_environment(cls, env: Mapping[str, str]) -> list[str]:
        """Variables no Linux program could start with (execve(2) would fail with E2BIG)."""
        problems = []
        total = 0
        for key, value in env.items():
            size = len(f"{key}={value}".encode("utf-8", "surrogatepass")) + 1
            total += size + 8  # the string, its NUL and its pointer in envp
            if size > MAX_ARG_STRLEN:
                problems.append(
                    f"{key}: Linux refuses one environment string (KEY=VALUE) over {MAX_ARG_STRLEN // 1024} KiB"
                )
        if total > MAX_ENVIRONMENT_BYTES:
            problems.append(
                f"the environment is {total // 1024} KiB; Linux starts no program with more than "
                f"{MAX_ENVIRONMENT_BYTES // 1024} KiB of arguments and environment"
            )
        return problems

    @classmethod
    def from_config(cls, connection_string: str, config: dict[str, Any], name: str) -> DockerExecutor:
        """Build from an ``ExecutorHost`` row; raises ``ConfigurationError`` naming what is wrong."""
        settings = docker_config.read_config(connection_string, dict(config or {}))
        executor = cls(settings.base_url, name=name, **settings.kwargs)
        executor._hidden = tuple(settings.from_environment)
        return executor

    def __repr__(self) -> str:
        return f"DockerExecutor(name={self.name!r}, base_url={self.base_url!r})"

    # Client and error plumbing ---------------------------------------------------------------

    @property
    def api(self) -> docker.APIClient:
        """The low-level docker-py client, connected on first use (raises ``Unavailable``)."""
        return self._client()

    def _client(self, connect_timeout: float | None = None) -> docker.APIClient:
        api = self._api
        if api is not None:
            return api
        with self._client_lock:
            if self._closed:
                raise Unavailable(f"executor for {self.name!r} is closed (its host was reconfigured?)")
            if self._api is None:
                timeout = min(self.api_timeout, connect_timeout or self.api_timeout)
                try:
                    client = docker.APIClient(
                        base_url=self.base_url,
                        version=self.api_version,
                        timeout=timeout,
                        tls=self.tls,
                        use_ssh_client=self.use_ssh_client,
                        max_pool_size=self.max_pool_size,
                    )
                except docker.errors.TLSParameterError as exc:
                    detail = scrub(str(exc), self._hidden)
                    raise ConfigurationError(f"invalid TLS settings: {detail}") from None
                except Exception as exc:
                    detail = scrub(_explain(exc), self._hidden)
                    raise Unavailable(f"cannot reach Docker at {self.base_url}: {detail}") from None
                client.timeout = self.api_timeout
                self._api = client
            return self._api

    @staticmethod
    def _url(api: docker.APIClient, path: str) -> str:
        return f"{api.base_url}/v{api.api_version}{path}"

    @staticmethod
    def _check(response: requests.Response) -> None:
        try:
            response.raise_for_status()
        except requests.exceptions.HTTPError as exc:
            try:
                docker.errors.create_api_error_from_http_exception(exc)  # reads the body; always raises
            finally:
                response.close()

    def _translate(self, exc: BaseException, what: str, secrets: Sequence[str] = ()) -> ExecutorError:
        """Any failure -> our exception tree; the message is scrubbed of ``secrets``."""
        if isinstance(exc, ExecutorError):
            return exc
        detail = scrub(_explain(exc), (*secrets, *self._hidden))
        prefix = f"{what}: " if what else ""
        if isinstance(exc, docker.errors.ImageNotFound):
            return ImageNotFound(f"{prefix}{detail}")
        if isinstance(exc, docker.errors.APIError):
            status = exc.status_code
            if status == 404:
                return NotFound(f"{prefix}{detail}")
            if status == 409:
                return Conflict(f"{prefix}{detail}")
            if status == 429:
                return QuotaExceeded(f"{prefix}{detail}")
            if status is None or (
                status >= 500 and not any(p in detail.lower() for p in _PERMANENT_SERVER_ERRORS)
            ):
                return Unavailable(f"{prefix}Docker at {self.base_url} answered {status}: {detail}")
            return InvalidSpec(f"{prefix}{detail}")
        if isinstance(exc, _CONNECTION_ERRORS):
            return Unavailable(f"{prefix}Docker at {self.base_url} did not answer: {detail}")
        if isinstance(exc, docker.errors.TLSParameterError):
            return ConfigurationError(f"{prefix}{detail}")
        if type(exc) is docker.errors.DockerException:
            # docker-py's own wrapper for "could not talk to the daemon".
            return Unavailable(f"{prefix}{detail}")
        if isinstance(exc, docker.errors.DockerException | ValueError | TypeError):
            return InvalidSpec(f"{prefix}{detail}")
        return ExecutorError(f"{prefix}unexpected {type(exc).__name__}: {detail}")

    def _count(self, attribute: str) -> None:
        with self._lock:
            setattr(self, attribute, getattr(self, attribute) + 1)

    def _call(self, what: str, fn: Callable[[docker.APIClient], T], secrets: Sequence[str] = ()) -> T:
        """Run ``fn(api)``, retrying transient failures; raise only ``ExecutorError``."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self._count("retries")
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "docker %s on %s failed (attempt %d), retrying: %s",
                what,
                self.name,
                state.attempt_number,
                self._translate(exc, "", secrets) if exc else "?",
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retry_attempts)
            | tenacity.stop_after_delay(self.retry_max_seconds),
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=1.0),
            retry=tenacity.retry_if_exception(lambda e: self._translate(e, "").transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(lambda: fn(self._client()))
        except Exception as exc:
            error = self._translate(exc, what, secrets)
            cause: BaseException | None = exc
        if not isinstance(error, NotFound | Conflict):
            self._count("api_errors")
        if secrets:
            # The SDK's exception may quote environment values: raised outside the handler
            # and without a cause, nothing of it travels with ours.
            raise error
        raise error from cause

    # The six verbs ------------------------------------------------------------------------------

    def launch(self, spec: ContainerSpec) -> Observed:
        self._validate(spec)
        secrets = _secret_values(spec)
        current = self._create_or_find(spec, secrets)
        if current is not None:
            if current.labels.get(LABEL_MANAGED) != "true":
                raise Conflict(
                    f"a container named {spec.name!r} exists on {self.name} but is not managed by "
                    "container_manager; refusing to adopt it"
                )
            if current.state is not ContainerState.CREATED:
                return current
            log.info("adopting created container %s on %s", spec.name, self.name)
        try:
            self._call(f"start {spec.name}", lambda api: api.start(spec.name), secrets)
        except NotFound:
            raise Unavailable(f"container {spec.name!r} disappeared before it started; try again") from None
        return self.inspect(spec.name)

    def _create_or_find(self, spec: ContainerSpec, secrets: Sequence[str]) -> Observed | None:
        """Create the container (None), or return the one already holding the name."""
        delay = 0.02
        deadline = time.monotonic() + self.retry_max_seconds
        while True:
            try:
                self._create(spec, secrets)
                return None
            except Conflict:
                current = self.inspect(spec.name)
                if current.exists:
                    return current
            # Docker reserves the name before the container can be inspected: another launch is
            # creating it right now (or just failed and released the name). Look again shortly.
            if time.monotonic() > deadline:
                raise Unavailable(f"container {spec.name!r} is being created by someone else; try again")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _validate(self, spec: ContainerSpec) -> None:
        problems = []
        if not spec.name:
            problems.append("name is empty")
        if not spec.image:
            problems.append("image is empty")
        if spec.memory_mb <= 0:
            problems.append("memory_mb must be positive")
        if not spec.cpu > 0:
            problems.append("cpu must be positive")
        if spec.pids_limit <= 0:
            problems.append("pids_limit must be positive")
        problems.extend(self.check_environment(spec.env_dict))
        if problems:
            raise InvalidSpec(f"invalid container spec {spec.name!r}: {'; '.join(problems)}")

    def _create(self, spec: ContainerSpec, secrets: Sequence[str]) -> None:
        labels = {LABEL_MANAGED: "true", **spec.labels_dict}

        def create(api: docker.APIClient) -> Any:
            host_config = api.create_host_config(
                mem_limit=spec.memory_mb * MIB,
                memswap_limit=spec.memory_mb * MIB,  # equal to the limit: no swap
                nano_cpus=round(spec.cpu * 1e9),
                pids_limit=spec.pids_limit,
                security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
                privileged=False,
                network_mode=self.network,
                read_only=self.read_only or None,
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={self.tmpfs_size_mb}m"} if self.read_only else None,
                runtime=self.runtime,
            )
            # The argv replaces the image's ENTRYPOINT (and so its CMD), as on Cloud Run; an
            # empty argv runs the image's own ENTRYPOINT and CMD.
            return api.create_container(
                image=spec.image,
                entrypoint=[spec.command[0]] if spec.command else None,
                command=list(spec.command[1:]) if spec.command else None,
                name=spec.name,
                labels=labels,
                environment=[f"{k}={v}" for k, v in spec.env],
                user=spec.user,
                host_config=host_config,
                detach=True,
                tty=False,
                stdin_open=False,
            )

        try:
            self._call(f"create {spec.name}", create, secrets)
        except ImageNotFound:
            if not self.allow_pull:
                raise ImageNotFound(
                    f"image {spec.image!r} is not present on Docker host {self.name} and pulling is "
                    "disabled (load the image on the host, or set allow_pull in the host's config)"
                ) from None
            self.pull(spec.image)
            self._call(f"create {spec.name}", create, secrets)
        except NotFound as exc:
            # 404 that is not about the image: e.g. the configured network does not exist.
            raise InvalidSpec(f"create {spec.name}: {exc}") from None

    def pull(self, image: str) -> None:
        """Pull ``image`` (no registry credentials), bounded by ``pull_timeout``."""
        repository, tag = parse_repository_tag(image)
        deadline = time.monotonic() + self.pull_timeout
        log.info("pulling image %s on %s (timeout %.0fs)", image, self.name, self.pull_timeout)

        def do_pull(api: docker.APIClient) -> None:
            response = api.post(
                self._url(api, "/images/create"),
                params={"fromImage": repository, "tag": tag or "latest"},
                stream=True,
                timeout=(self.api_timeout, self.pull_timeout),
            )
            try:
                self._check(response)
                for line in response.iter_lines():
                    if time.monotonic() > deadline:
                        raise Unavailable(f"pulling {image!r} took longer than {self.pull_timeout:.0f}s")
                    if not line:
                        continue
                    message = json.loads(line)
                    if message.get("error"):
                        text = str(message["error"])
                        if any(w in text.lower() for w in ("not found", "denied", "unknown", "invalid")):
                            raise ImageNotFound(f"cannot pull {image!r}: {text}")
                        raise Unavailable(f"cannot pull {image!r}: {text}")
            finally:
                response.close()

        try:
            self._call(f"pull {image}", do_pull)
        except NotFound as exc:  # "pull access denied ... repository does not exist"
            raise ImageNotFound(f"cannot pull {image!r}: {exc}") from exc
        log.info("pulled image %s on %s", image, self.name)

    def inspect(self, name: str) -> Observed:
        """The container's state; an exit that a 'die' event already reported costs no API call.

        The event carries what inspection would say of a finished container (its exit code and
        the daemon's time of the exit), so detection takes the event's latency, not another
        round trip. A container with an 'oom' event is inspected, for ``OOMKilled``.
        """
        with self._lock:
            exited = self._exits.get(name)
        if exited is not None:
            return exited
        try:
            data = self._call(f"inspect {name}", lambda api: api.inspect_container(name))
        except NotFound:
            return Observed.missing(name)
        # Docker also resolves a name as an id prefix: make sure this is the container asked for.
        if data.get("Name", "").lstrip("/") != name and not str(data.get("Id", "")).startswith(name):
            return Observed.missing(name)
        return observed_from_inspect(name, data)

    def stop(self, name: str, grace_seconds: float = 10.0) -> None:
        grace = max(0, math.ceil(grace_seconds))
        try:
            self._call(f"stop {name}", lambda api: api.stop(name, timeout=grace))
        except NotFound:
            return

    def remove(self, name: str) -> None:
        with self._lock:
            self._exits.pop(name, None)
        try:
            self._call(f"remove {name}", lambda api: api.remove_container(name, v=True, force=True))
        except NotFound:
            return
        except Conflict:
            # "removal of container ... is already in progress"
            return

    def logs(self, name: str, max_bytes: int = DEFAULT_LOG_TAIL_BYTES) -> LogTail:
        def read(api: docker.APIClient) -> LogTail:
            out, err = _BatchedTail(max_bytes), _BatchedTail(max_bytes)
            response = api.get(
                self._url(api, f"/containers/{quote(name, safe='')}/logs"),
                params={"stdout": 1, "stderr": 1, "follow": 0, "tail": "all"},
                stream=True,
                timeout=(self.api_timeout, self.api_timeout),
            )
            try:
                if response.status_code == 501:  # the log driver cannot be read back
                    log.warning("logs of %s on %s cannot be read: %s", name, self.name, response.text[:200])
                    return LogTail()
                self._check(response)
                for stream_name, payload in iter_frames(_blocks(response, live=False)):
                    (err if stream_name == "stderr" else out).feed(payload)
            finally:
                response.close()
            out.flush()
            err.flush()
            return LogTail(out.tail.text(), err.tail.text(), out.tail.truncated, err.tail.truncated)

        try:
            return self._call(f"logs {name}", read)
        except NotFound:
            return LogTail()

    def list_managed(self, instance: str) -> list[Observed]:
        filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance}"]}
        items = self._call("list containers", lambda api: api.containers(all=True, filters=filters))
        return [observed_from_list(item) for item in items or []]

    # Optional verbs ---------------------------------------------------------------------------

    def health_check(self, timeout: float = 5.0) -> HealthReport:
        started = time.monotonic()
        try:
            api = self._client(connect_timeout=timeout)
            response = api.get(f"{api.base_url}/_ping", timeout=timeout)
            self._check(response)
            server = response.headers.get("Server", "Docker")
            version = response.headers.get("Api-Version", "?")
            return HealthReport(
                healthy=True,
                message=f"{server} reachable at {self.base_url} (API {version})",
                latency_seconds=time.monotonic() - started,
            )
        except Exception as exc:
            return HealthReport(
                healthy=False,
                message=str(self._translate(exc, "ping")),
                latency_seconds=time.monotonic() - started,
            )

    def stats(self, name: str) -> Usage:
        data = self._call(f"stats {name}", lambda api: api.stats(name, stream=False))
        return _usage_from_stats(data or {})

    def stream_logs(self, name: str, follow: bool = False) -> Iterator[tuple[str, bytes]]:
        """Yield ("stdout"|"stderr", bytes) as Docker sends them; a missing container yields nothing.

        With ``follow`` the read has no timeout (a quiet container is not an error); close the
        generator to stop early.
        """

        def open_stream(api: docker.APIClient) -> requests.Response:
            response = api.get(
                self._url(api, f"/containers/{quote(name, safe='')}/logs"),
                params={"stdout": 1, "stderr": 1, "follow": int(follow), "tail": "all"},
                stream=True,
                timeout=(self.api_timeout, None if follow else self.api_timeout),
            )
            self._check(response)
            return response

        try:
            response = self._call(f"logs {name}", open_stream)
        except NotFound:
            return
        try:
            yield from iter_frames(_blocks(response, live=follow))
        except Exception as exc:
            raise self._translate(exc, f"logs {name}") from exc
        finally:
            response.close()

    # Events ---------------------------------------------------------------------------------

    def watch(self, instance: str, stop: threading.Event) -> Iterator[ExecutorEvent]:
        """Yield start/die/oom/destroy hints for this instance's containers until ``stop`` is set.

        After any reconnection (a dropped or silent stream, an error, or events lost from the
        daemon's 256-event replay buffer) a ``RESYNC`` event is yielded: the consumer must then
        re-list, since hints may have been missed. Repeated 'oom' events of one container are
        reported once.
        """
        filters = convert_filters(
            {
                "label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance}"],
                "type": ["container"],
                "event": list(_EVENT_KINDS),
            }
        )
        seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        oom_reported: OrderedDict[str, None] = OrderedDict()
        offset: float | None = None  # daemon clock minus local clock, seconds
        since_ns: int | None = None
        anchor: tuple[Any, ...] | None = None  # the last event seen; replayed first by the next window
        dropped = False
        failures = 0

        while not stop.is_set():
            window = self.events_window
            read_timeout = self.events_read_timeout or window + 5.0
            try:
                api = self._client()
                if offset is None:
                    offset = self._clock_offset(api)
                now_ns = int((time.time() + offset) * 1e9)
                if since_ns is None:
                    since_ns = now_ns
                until_ns = now_ns + int(window * 1e9)
                deadline = time.monotonic() + window
                response = api.get(
                    self._url(api, "/events"),
                    params={
                        "since": _nanos_to_param(since_ns),
                        "until": _nanos_to_param(until_ns),
                        "filters": filters,
                    },
                    stream=True,
                    timeout=(self.api_timeout, read_timeout),
                )
                self._check(response)
            except Exception as exc:
                failures += 1
                dropped, offset = True, None
                log.warning("docker events on %s: cannot connect: %s", self.name, self._translate(exc, ""))
                stop.wait(self._reconnect_delay(failures))
                continue

            stream = CancellableStream(iter(()), response)
            with self._lock:
                self._streams.add(stream)
            resynced = dropped
            if dropped:
                dropped = False
                self._count("reconnects")
                log.info("docker events on %s: reconnected, asking for a resync", self.name)
                yield ExecutorEvent(kind=EventKind.RESYNC)
            saw_anchor = anchor is None
            fresh = False  # a new event arrived in this window
            clean = False
            try:
                for raw in self._read_events(response):
                    if stop.is_set():
                        return
                    key = (raw.get("timeNano"), raw.get("id"), raw.get("Action") or raw.get("status"))
                    if not saw_anchor:
                        saw_anchor = True
                        if key != anchor and not resynced:
                            # The replay did not start with the last event we saw: some fell out
                            # of the daemon's buffer in between.
                            log.warning(
                                "docker events on %s: events were lost, asking for a resync", self.name
                            )
                            yield ExecutorEvent(kind=EventKind.RESYNC)
                    if key == anchor or key in seen:
                        continue
                    seen[key] = None
                    if len(seen) > 4096:
                        seen.popitem(last=False)
                    anchor, fresh = key, True
                    if isinstance(raw.get("timeNano"), int):
                        since_ns = raw["timeNano"]
                    event = self._to_event(raw, oom_reported)
                    if event is not None:
                        yield event
                clean = True
            except Exception as exc:
                failures += 1
                dropped, offset = True, None
                if not stop.is_set():
                    log.warning("docker events on %s: stream broke: %s", self.name, self._translate(exc, ""))
            finally:
                with self._lock:
                    self._streams.discard(stream)
                response.close()
            if stop.is_set():
                return
            if not clean:
                stop.wait(self._reconnect_delay(failures))
                continue
            if time.monotonic() < deadline - 0.25:
                # The daemon ended the window early: our idea of its clock is off, or something
                # between us closed the stream. Measure again and treat it as a reconnect.
                failures += 1
                dropped, offset = True, None
                log.warning("docker events on %s: stream ended early, reconnecting", self.name)
                stop.wait(self._reconnect_delay(failures))
                continue
            failures = 0
            if not saw_anchor and not resynced:
                # The last event of the previous window was not replayed: more than the daemon's
                # buffer happened in between, ours possibly among it.
                log.warning("docker events on %s: events were lost, asking for a resync", self.name)
                yield ExecutorEvent(kind=EventKind.RESYNC)
            if not fresh:
                # A quiet window: resume a little before its end rather than from an old anchor
                # that busy daemons push out of their buffer (``seen`` absorbs the overlap).
                anchor = None
                since_ns = max(since_ns, until_ns - int(self.events_overlap * 1e9))

    def _read_events(self, response: requests.Response) -> Iterator[dict[str, Any]]:
        pending = b""
        for block in response.raw.stream(64 * 1024, decode_content=False):
            pending += block
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
        if pending.strip():
            yield json.loads(pending)

    def _clock_offset(self, api: docker.APIClient) -> float:
        before = time.time()
        info = api.info()
        after = time.time()
        server = parse_docker_time(str(info.get("SystemTime") or ""))
        if server is None:
            return 0.0
        return server.timestamp() - (before + after) / 2

    @staticmethod
    def _reconnect_delay(failures: int) -> float:
        return min(5.0, 0.05 * 2 ** max(0, failures - 1)) * random.uniform(0.5, 1.0)

    def _to_event(self, raw: dict[str, Any], oom_reported: OrderedDict[str, None]) -> ExecutorEvent | None:
        kind = _EVENT_KINDS.get(raw.get("Action") or raw.get("status") or "")
        if kind is None:
            return None
        actor = raw.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        container_id = str(actor.get("ID") or raw.get("id") or "")
        if kind is EventKind.OOM:
            if container_id in oom_reported:
                return None
            oom_reported[container_id] = None
            if len(oom_reported) > 1024:
                oom_reported.popitem(last=False)
        nanos = raw.get("timeNano")
        at = (
            datetime.fromtimestamp(nanos / 1e9, UTC)
            if isinstance(nanos, int)
            else datetime.fromtimestamp(float(raw.get("time") or 0), UTC)
        )
        name = str(attributes.get("name") or "")
        if kind is EventKind.DIED and name and container_id not in oom_reported:
            self._remember_exit(name, container_id, attributes, at)
        return ExecutorEvent(
            kind=kind,
            name=name,
            job_id=_int_label(attributes, LABEL_JOB),
            attempt=_int_label(attributes, LABEL_ATTEMPT),
            at=at,
        )

    def _remember_exit(self, name: str, container_id: str, attributes: dict[str, Any], at: datetime) -> None:
        try:
            code = int(attributes["exitCode"])
        except (KeyError, TypeError, ValueError):
            return  # an event without the exit code: inspection will tell
        labels = {k: str(v) for k, v in attributes.items() if k.startswith("container_manager.")}
        exited = Observed(
            name=name,
            state=ContainerState.EXITED,
            container_id=container_id,
            exit_code=code,
            finished_at=at,
            labels=labels,
        )
        with self._lock:
            self._exits[name] = exited
            while len(self._exits) > 4096:
                self._exits.popitem(last=False)

    def _drop_event_streams(self) -> int:
        """Fault injection for tests: cut every open event stream as a network failure would."""
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            try:
                stream.close()
            except Exception:  # already closed, or an SSH channel
                pass
        return len(streams)

    def close(self) -> None:
        self._drop_event_streams()
        with self._client_lock:
            self._closed = True
            api, self._api = self._api, None
        if api is not None:
            try:
                api.close()
            except Exception:
                pass


__all__ = ["CONFIG_KEYS", "DEFAULT_BASE_URL", "DockerExecutor", "iter_frames", "parse_docker_time", "scrub"]
