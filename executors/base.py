"""The narrow contract every container backend implements.

Six verbs carry the reconciler: ``launch``, ``inspect``, ``stop``, ``logs``, ``remove`` and
``list_managed``. Everything else is optional and announced by a capability flag, so callers
check the flag instead of catching ``NotImplementedError``.

Every method may raise ``executors.exceptions.ExecutorError`` subclasses and nothing else:
``Unavailable`` (transient, try again), ``InvalidSpec`` (permanent), ``NotFound``.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from executors.types import CallCounts, ContainerSpec, ExecutorEvent, HealthReport, LogTail, Observed, Usage

#: Default cap of each of stdout and stderr kept from one attempt.
DEFAULT_LOG_TAIL_BYTES = 64 * 1024


class Executor(abc.ABC):
    """One backend bound to one host (a Docker daemon, a Cloud Run region, a mock)."""

    # Capability flags: each is read outside the executors (named beside it), so a backend
    # that sets one changes what the reconciler or the app does.

    #: ``watch()`` yields events (the daemon starts a watcher; without one, the step polls at
    #: the executor's ``poll_interval``).
    supports_events: ClassVar[bool] = False
    #: ``stats()`` returns live resource usage (the job's resource-utilisation helper asks).
    supports_stats: ClassVar[bool] = False
    #: The backend enforces ``ContainerSpec.timeout_seconds`` itself (``decide`` then lets the
    #: backend end the attempt and records its verdict).
    enforces_timeout: ClassVar[bool] = False
    #: The ``executor_type`` this backend is registered under in ``executors.registry``.
    kind: ClassVar[str] = "abstract"

    @classmethod
    def from_config(cls, connection_string: str, config: dict[str, Any], name: str) -> Executor:
        """Build the executor for a host row's connection string and config (see ``registry``)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a host row")

    @classmethod
    def check_config(cls, connection_string: str, config: Mapping[str, Any]) -> None:
        """Raise ``ConfigurationError`` naming what is wrong with a host row's settings.

        Runs when the row is saved, so it must not reach the network or load credentials.
        """

    @classmethod
    def check_environment(cls, env: Mapping[str, str]) -> list[str]:
        """What this backend cannot pass to a container of a job's environment (empty when all is fine).

        Each entry is a message naming the variable and the rule, never its value.
        """
        return []

    @abc.abstractmethod
    def launch(self, spec: ContainerSpec) -> Observed:
        """Create and start the container named ``spec.name``; idempotent.

        If a container of that name exists it is adopted (started if only created) and its
        current state is returned: a retried launch never makes a second container.
        """

    @abc.abstractmethod
    def inspect(self, name: str) -> Observed:
        """Current state; ``ContainerState.NOT_FOUND`` rather than an exception when absent."""

    @abc.abstractmethod
    def stop(self, name: str, grace_seconds: float = 10.0) -> None:
        """Ask the container to stop, killing it after ``grace_seconds``. Absent is fine."""

    @abc.abstractmethod
    def logs(self, name: str, max_bytes: int = DEFAULT_LOG_TAIL_BYTES) -> LogTail:
        """The last ``max_bytes`` of stdout and of stderr, read without holding the whole log."""

    @abc.abstractmethod
    def remove(self, name: str) -> None:
        """Delete the container and its resources. Absent is fine."""

    @abc.abstractmethod
    def list_managed(self, instance: str) -> list[Observed]:
        """Every container carrying this project's labels for ``instance``, with its state."""

    # Optional verbs -----------------------------------------------------------------

    def health_check(self, timeout: float = 5.0) -> HealthReport:
        """Probe the backend; never raises."""
        return HealthReport(healthy=True, message="no probe for this executor")

    def watch(self, instance: str, stop: threading.Event) -> Iterator[ExecutorEvent]:
        """Yield change hints until ``stop`` is set. Needs ``supports_events``."""
        raise NotImplementedError(f"{type(self).__name__} does not push events")

    def stats(self, name: str) -> Usage:
        """One resource-usage sample. Needs ``supports_stats``; slow, keep off hot paths."""
        raise NotImplementedError(f"{type(self).__name__} does not report resource usage")

    def stream_logs(self, name: str, follow: bool = False) -> Iterator[tuple[str, bytes]]:
        """Yield ("stdout"|"stderr", chunk) pairs, following a running container if asked.

        This default, for backends that cannot follow, yields the current tail and ends.
        """
        tail = self.logs(name)
        if tail.stdout:
            yield "stdout", tail.stdout.encode()
        if tail.stderr:
            yield "stderr", tail.stderr.encode()

    def counters(self) -> dict[str, CallCounts]:
        """Verb -> calls, retries and errors since the executor was built (a snapshot; see ``_calls``)."""
        return {}

    def close(self) -> None:
        """Release connections. The executor must not be used afterwards."""


class BoundedTail:
    """Keep only the last ``max_bytes`` of a byte stream, in constant memory."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        overflow = len(self._buf) - self.max_bytes
        if overflow > 0:
            del self._buf[:overflow]
            self.truncated = True

    def text(self) -> str:
        return bytes(self._buf).decode("utf-8", errors="replace")
