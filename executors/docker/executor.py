"""The Docker executor: the verbs, over one lazily made client and the shared call layer.

* Only the low-level ``docker.APIClient`` is used: the high-level ``containers.list()``
  inspects every container, and ``logs()`` without ``stream=True`` holds the whole log.
* ``launch`` is idempotent: the container name is the key, and a 409 on create means
  "adopt the container an earlier, interrupted launch made", never "fail".
* Every request goes through ``executors._calls.Calls``: transient failures (connection
  errors, timeouts, 5xx) are retried a few times with the project's backoff, permanent ones
  (4xx, a missing image, a bad executable) raised at once, each translated by ``errors`` with
  the job's environment values scrubbed, and counted per verb (``counters()``).
* Logs are streamed frame by frame into bounded tails: a 50 MB log never sits in memory.
* An exit that the event stream (``events``) reported answers ``inspect`` without a request.
* The client is created lazily (the first call that needs the daemon), so a host whose
  daemon is down can still be configured and health-checked.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import docker
import docker.errors
import docker.tls
import requests
from docker.types.daemon import CancellableStream
from docker.utils import parse_repository_tag

from executors._calls import Calls
from executors.backoff import backoff_seconds
from executors.base import DEFAULT_LOG_TAIL_BYTES, Executor
from executors.docker import config as docker_config
from executors.docker.client import HostAPIClient
from executors.docker.config import DEFAULT_BASE_URL, validate_network
from executors.docker.errors import check, explain, scrub, secret_values, tls_refusal, translate
from executors.docker.events import VERB as EVENTS_VERB
from executors.docker.events import EventStream
from executors.docker.wire import (
    MIB,
    BatchedTail,
    environment_problems,
    iter_frames,
    observed_from_inspect,
    observed_from_list,
    read_blocks,
    usage_from_stats,
)
from executors.exceptions import (
    ConfigurationError,
    Conflict,
    ExecutorError,
    ImageNotFound,
    InvalidSpec,
    NotFound,
    Unavailable,
)
from executors.types import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    CallCounts,
    ContainerSpec,
    ContainerState,
    ExecutorEvent,
    HealthReport,
    LogTail,
    Observed,
    Usage,
)

log = logging.getLogger("executors.docker")

T = TypeVar("T")

#: Transient failures: tries of one request in all, the time they may take together (s), and
#: the first and longest pause (s) between two tries.
RETRY_ATTEMPTS = 4
RETRY_MAX_SECONDS = 3.0
RETRY_BACKOFF_SECONDS = 0.1
RETRY_BACKOFF_MAX_SECONDS = 1.0
#: The verbs ``counters()`` reports (``events`` is the event stream, see ``events.VERB``).
VERBS = ("create", "start", "inspect", "stop", "remove", "logs", "list", "stats", "pull", EVENTS_VERB)
#: Pauses while another launch holds the container's name: first and longest (s).
NAME_WAIT_FIRST = 0.02
NAME_WAIT_LONGEST = 0.5


class DockerExecutor(Executor):
    """One Docker daemon, reached over a unix socket, TCP (+TLS) or SSH."""

    kind = "docker"
    supports_events = True
    supports_stats = True

    #: Length of one event-stream request; bounds how long ``watch`` takes to notice ``stop``.
    events_window: float = 0.5
    #: Socket read timeout of the event stream; None means ``events_window`` + 5 s.
    events_read_timeout: float | None = None
    #: Events replayed on an anchor-less reconnect, to cover the boundary of the last window.
    events_overlap: float = 0.5

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
        self.network = validate_network(network)
        self.runtime = runtime
        self.read_only = read_only
        self.tmpfs_size_mb = int(tmpfs_size_mb)
        self.tls = tls
        self.use_ssh_client = use_ssh_client
        self.max_pool_size = int(max_pool_size)
        self.api_version = api_version
        self.calls = Calls(
            lambda exc: self._translate(exc, ""),
            attempts=RETRY_ATTEMPTS,
            backoff=RETRY_BACKOFF_SECONDS,
            backoff_max=RETRY_BACKOFF_MAX_SECONDS,
            max_seconds=RETRY_MAX_SECONDS,
            on_retry=self._log_retry,
            verbs=VERBS,
        )
        self._api: docker.APIClient | None = None
        self._closed = False
        self._lock = threading.Lock()  # the set of open event streams and the exits cache
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
        return environment_problems(env)

    @classmethod
    def from_config(cls, connection_string: str, config: dict[str, Any], name: str) -> DockerExecutor:
        """Build from an ``ExecutorHost`` row; raises ``ConfigurationError`` naming what is wrong."""
        settings = docker_config.read_config(connection_string, dict(config or {}))
        executor = cls(settings.base_url, name=name, **settings.kwargs)
        executor._hidden = tuple(settings.from_environment)
        return executor

    def __repr__(self) -> str:
        return f"DockerExecutor(name={self.name!r}, base_url={self.base_url!r})"

    @property
    def retry_attempts(self) -> int:
        """Tries of one request in all (1: never retried); tests lower it."""
        return self.calls.attempts

    @retry_attempts.setter
    def retry_attempts(self, value: int) -> None:
        self.calls.attempts = value

    def counters(self) -> dict[str, CallCounts]:
        """Per verb (``create``, ``start``, ``inspect``, ..., ``events``): calls, retries, errors."""
        return self.calls.counter.snapshot()

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
                    client = HostAPIClient(
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
                    refusal = tls_refusal(exc, self.base_url)
                    if refusal is not None:
                        raise refusal from None
                    detail = scrub(explain(exc), self._hidden)
                    raise Unavailable(f"cannot reach Docker at {self.base_url}: {detail}") from None
                client.timeout = self.api_timeout
                self._api = client
            return self._api

    @staticmethod
    def _url(api: docker.APIClient, path: str) -> str:
        return f"{api.base_url}/v{api.api_version}{path}"

    def _translate(self, exc: BaseException, what: str, secrets: Sequence[str] = ()) -> ExecutorError:
        """Any failure -> our exception tree; the message is scrubbed of ``secrets``."""
        return translate(exc, what, self.base_url, (*secrets, *self._hidden))

    def _log_retry(self, verb: str, attempt: int, error: ExecutorError) -> None:
        log.warning("docker %s on %s failed (attempt %d), retrying: %s", verb, self.name, attempt, error)

    def _call(
        self, verb: str, target: str, fn: Callable[[docker.APIClient], T], secrets: Sequence[str] = ()
    ) -> T:
        """``fn(api)`` through the call layer; errors name "verb target" and carry no secret."""
        what = f"{verb} {target}" if target else verb
        return self.calls.run(
            verb,
            lambda: fn(self._client()),
            translate=lambda exc: self._translate(exc, what, secrets),
            hide_cause=bool(secrets),
        )

    # The six verbs ------------------------------------------------------------------------------

    def launch(self, spec: ContainerSpec) -> Observed:
        self._validate(spec)
        secrets = secret_values(spec)
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
            self._call("start", spec.name, lambda api: api.start(spec.name), secrets)
        except NotFound:
            raise Unavailable(f"container {spec.name!r} disappeared before it started; try again") from None
        return self.inspect(spec.name)

    def _create_or_find(self, spec: ContainerSpec, secrets: Sequence[str]) -> Observed | None:
        """Create the container (None), or return the one already holding the name."""
        deadline = time.monotonic() + RETRY_MAX_SECONDS
        tries = 0
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
            tries += 1
            time.sleep(backoff_seconds(None, tries, NAME_WAIT_FIRST, NAME_WAIT_LONGEST, jitter=0.0))

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
            self._call("create", spec.name, create, secrets)
        except ImageNotFound:
            if not self.allow_pull:
                raise ImageNotFound(
                    f"image {spec.image!r} is not present on Docker host {self.name} and pulling is "
                    "disabled (load the image on the host, or set allow_pull in the host's config)"
                ) from None
            self.pull(spec.image)
            self._call("create", spec.name, create, secrets)
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
                check(response)
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
            self._call("pull", image, do_pull)
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
            data = self._call("inspect", name, lambda api: api.inspect_container(name))
        except NotFound:
            return Observed.missing(name)
        # Docker also resolves a name as an id prefix: make sure this is the container asked for.
        if data.get("Name", "").lstrip("/") != name and not str(data.get("Id", "")).startswith(name):
            return Observed.missing(name)
        return observed_from_inspect(name, data)

    def stop(self, name: str, grace_seconds: float = 10.0) -> None:
        grace = max(0, math.ceil(grace_seconds))
        try:
            self._call("stop", name, lambda api: api.stop(name, timeout=grace))
        except NotFound:
            return

    def remove(self, name: str) -> None:
        with self._lock:
            self._exits.pop(name, None)
        try:
            self._call("remove", name, lambda api: api.remove_container(name, v=True, force=True))
        except NotFound:
            return
        except Conflict:
            # "removal of container ... is already in progress"
            return

    def logs(self, name: str, max_bytes: int = DEFAULT_LOG_TAIL_BYTES) -> LogTail:
        def read(api: docker.APIClient) -> LogTail:
            out, err = BatchedTail(max_bytes), BatchedTail(max_bytes)
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
                check(response)
                for stream_name, payload in iter_frames(read_blocks(response, live=False)):
                    (err if stream_name == "stderr" else out).feed(payload)
            finally:
                response.close()
            out.flush()
            err.flush()
            return LogTail(out.tail.text(), err.tail.text(), out.tail.truncated, err.tail.truncated)

        try:
            return self._call("logs", name, read)
        except NotFound:
            return LogTail()

    def list_managed(self, instance: str) -> list[Observed]:
        filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance}"]}
        items = self._call("list", "", lambda api: api.containers(all=True, filters=filters))
        return [observed_from_list(item) for item in items or []]

    # Optional verbs ---------------------------------------------------------------------------

    def health_check(self, timeout: float = 5.0) -> HealthReport:
        started = time.monotonic()
        try:
            api = self._client(connect_timeout=timeout)
            response = api.get(f"{api.base_url}/_ping", timeout=timeout)
            check(response)
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
        data = self._call("stats", name, lambda api: api.stats(name, stream=False))
        return usage_from_stats(data or {})

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
            check(response)
            return response

        try:
            response = self._call("logs", name, open_stream)
        except NotFound:
            return
        try:
            yield from iter_frames(read_blocks(response, live=follow))
        except Exception as exc:
            raise self._translate(exc, f"logs {name}") from exc
        finally:
            response.close()

    # Events ---------------------------------------------------------------------------------

    # Events ---------------------------------------------------------------------------------

    def watch(self, instance: str, stop: threading.Event) -> Iterator[ExecutorEvent]:
        """Yield start/die/oom/destroy hints for this instance's containers until ``stop`` is set.

        After any reconnection (a dropped or silent stream, an error, or events lost from the
        daemon's 256-event replay buffer) a ``RESYNC`` event is yielded: the consumer must then
        re-list, since hints may have been missed. Repeated 'oom' events of one container are
        reported once. See ``executors.docker.events``.
        """
        return iter(EventStream(self, instance, stop))

    def _remember_exit(self, exited: Observed) -> None:
        with self._lock:
            self._exits[exited.name] = exited
            while len(self._exits) > 4096:
                self._exits.popitem(last=False)

    def _track_stream(self, stream: CancellableStream, open: bool) -> None:
        with self._lock:
            if open:
                self._streams.add(stream)
            else:
                self._streams.discard(stream)

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
