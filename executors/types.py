"""Value types that cross the executor boundary.

Every type here is a frozen dataclass or an enum, so a value handed to an executor or
returned by one can be shared between threads and compared in tests.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

#: Label keys put on every container this project manages.
LABEL_MANAGED = "container_manager.managed"
LABEL_INSTANCE = "container_manager.instance"
LABEL_JOB = "container_manager.job"
LABEL_ATTEMPT = "container_manager.attempt"


class ContainerState(enum.StrEnum):
    """What the backend says a container is doing."""

    #: Created but never started (a launch was interrupted between create and start).
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    #: The backend has no container of that name.
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything a backend needs to start one attempt of one job."""

    #: Deterministic name, unique per (instance, job, attempt); the idempotency key.
    name: str
    image: str
    #: argv executed without a shell; empty means the image's own entrypoint/cmd.
    command: tuple[str, ...] = ()
    #: Environment as sorted (key, value) pairs; values may be secret.
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    memory_mb: int = 512
    cpu: float = 1.0
    #: Wall-clock limit of the attempt; backends that enforce it themselves use it.
    timeout_seconds: int = 3600
    #: "uid:gid" to run as; None keeps the image's user (only when settings allow root).
    user: str | None = "65534:65534"
    pids_limit: int = 256
    #: Keys in ``env`` whose values must never be logged.
    secret_keys: frozenset[str] = field(default_factory=frozenset)

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def labels_dict(self) -> dict[str, str]:
        return dict(self.labels)

    def __repr__(self) -> str:
        # Never show env values: some are secrets.
        return (
            f"ContainerSpec(name={self.name!r}, image={self.image!r}, command={self.command!r}, "
            f"env_keys={[k for k, _ in self.env]!r}, memory_mb={self.memory_mb}, cpu={self.cpu})"
        )


@dataclass(frozen=True)
class Observed:
    """A backend's view of one container at one instant."""

    name: str
    state: ContainerState
    #: Backend identifier (Docker container id, Cloud Run execution name).
    container_id: str | None = None
    #: For a failed container, never 0; 128 + N when killed by signal N; None when the backend
    #: gives no exit code (``error`` then says why).
    exit_code: int | None = None
    oom_killed: bool = False
    #: When the program really started. ``RUNNING`` with ``started_at=None`` means accepted but
    #: not started yet (Cloud Run provisioning): no run time is counted before it.
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: The backend's own error text, if any (e.g. Docker's State.Error).
    error: str = ""
    #: The backend's own classification of an end: "timeout", "cancelled" or "oom" (Cloud Run).
    reason_hint: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def missing(cls, name: str) -> Observed:
        return cls(name=name, state=ContainerState.NOT_FOUND)

    @property
    def exists(self) -> bool:
        return self.state is not ContainerState.NOT_FOUND


@dataclass(frozen=True)
class LogTail:
    """The last bytes of a container's output, bounded, with truncation recorded."""

    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False


@dataclass(frozen=True)
class Usage:
    """One sample of a running container's resource use."""

    memory_bytes: int
    memory_limit_bytes: int
    cpu_percent: float

    @property
    def memory_percent(self) -> float:
        if not self.memory_limit_bytes:
            return 0.0
        return round(100.0 * self.memory_bytes / self.memory_limit_bytes, 2)


@dataclass(frozen=True)
class HealthReport:
    """Result of an executor health probe."""

    healthy: bool
    message: str = ""
    latency_seconds: float = 0.0

    def __bool__(self) -> bool:
        return self.healthy


@dataclass(frozen=True)
class CallCounts:
    """What one verb of an executor has cost since it was built (see ``Executor.counters``)."""

    #: Requests sent, every try included.
    calls: int = 0
    #: Tries repeated after a transient error.
    retries: int = 0
    #: Tries that failed (``NotFound`` and ``Conflict``, expected answers, are not counted).
    errors: int = 0


class EventKind(enum.StrEnum):
    STARTED = "start"
    DIED = "die"
    OOM = "oom"
    DESTROYED = "destroy"
    #: The watcher reconnected; the consumer should resync everything.
    RESYNC = "resync"


@dataclass(frozen=True)
class ExecutorEvent:
    """A hint that a container changed; the consumer re-reads the truth, never trusts it."""

    kind: EventKind
    name: str = ""
    job_id: int | None = None
    attempt: int | None = None
    at: datetime | None = None
