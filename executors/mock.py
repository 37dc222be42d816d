"""An in-memory executor: the fast, deterministic stand-in for Docker in unit tests and demos.

It keeps the semantics the reconciler depends on (deterministic names, adopt-on-conflict,
exit codes, OOM, stop with grace, bounded logs, label listing, events that can be lost) and
lets tests inject the failures real backends produce. What it cannot do: enforce real
limits, run real programs, or be slow in the ways a real daemon is.

A container's behaviour comes from its command, read as a script of ``executors.script``
(``sh -c "echo hi; sleep 1; exit 3"``, ``oom``, ``hang``, ...): the language the Cloud Run fake
of the test suite reads too, and the busybox test image speaks. ``oom`` exits 137 with
``oom_killed``; ``crash`` exits without an exit code.
"""

from __future__ import annotations

import enum
import fnmatch
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from executors._calls import CallCounter
from executors._config import ConfigReader
from executors.base import DEFAULT_LOG_TAIL_BYTES, BoundedTail, Executor
from executors.exceptions import InvalidSpec, Unavailable
from executors.script import Script, ScriptError, parse_script
from executors.types import (
    LABEL_ATTEMPT,
    LABEL_INSTANCE,
    LABEL_JOB,
    CallCounts,
    ContainerSpec,
    ContainerState,
    EventKind,
    ExecutorEvent,
    HealthReport,
    LogTail,
    Observed,
    Usage,
)

OOM_EXIT_CODE = 137
STOP_EXIT_CODE = 143


class Fault(enum.StrEnum):
    """Failures a test can inject into matching launches."""

    #: launch raises ``Unavailable`` (transient).
    LAUNCH_UNAVAILABLE = "launch_unavailable"
    #: launch raises ``InvalidSpec`` (permanent).
    LAUNCH_INVALID = "launch_invalid"
    #: the container exits with ``Injection.exit_code``.
    EXIT = "exit"
    OOM = "oom"
    HANG = "hang"
    #: the container disappears while running, as if removed behind our back.
    VANISH = "vanish"
    #: launch creates the container but raises before starting it (interrupted launch).
    CREATE_ONLY = "create_only"


@dataclass
class Injection:
    fault: Fault
    #: fnmatch pattern on the container name.
    match: str = "*"
    #: how many launches it applies to; None = every matching launch.
    times: int | None = 1
    exit_code: int = 1


@dataclass
class _Container:
    spec: ContainerSpec
    container_id: str
    program: Script
    created_at: datetime
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    stop_exit_code: int | None = None
    reported: set[str] = field(default_factory=set)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MockExecutor(Executor):
    """In-memory containers on a clock the test may control."""

    supports_events = True
    supports_stats = True
    kind = "mock"

    def __init__(
        self,
        name: str = "mock",
        *,
        clock: Callable[[], datetime] = _utcnow,
        latency: float = 0.0,
        healthy: bool = True,
    ) -> None:
        self.name = name
        self.clock = clock
        self.latency = latency
        self.healthy = healthy
        self.drop_events = False
        self._containers: dict[str, _Container] = {}
        self._injections: list[Injection] = []
        self._lock = threading.RLock()
        self._seq = 0
        #: every verb call, in order, for tests that count API calls.
        self.calls: list[tuple[str, str]] = []
        self._counter = CallCounter(("launch", "inspect", "stop", "logs", "remove", "list", "stats"))
        #: names ever created, and ever started: tests assert an attempt's program never runs twice.
        self.created: list[str] = []
        self.started: list[str] = []

    @classmethod
    def check_config(cls, connection_string: str, config: Mapping[str, Any]) -> None:
        """The mock takes two keys: ``latency`` (seconds, 0 to 60) and ``healthy`` (a flag)."""
        cls._settings(config)

    @staticmethod
    def _settings(config: Any) -> tuple[float, bool]:
        reader = ConfigReader("mock", config, ("latency", "healthy"))
        return reader.number("latency", 0.0, maximum=60.0), reader.flag("healthy", True)

    @classmethod
    def from_config(cls, connection_string: str, config: dict[str, Any], name: str) -> MockExecutor:
        latency, healthy = cls._settings(config)
        return cls(name=name, latency=latency, healthy=healthy)

    # Fault injection -----------------------------------------------------------------

    def inject(self, fault: Fault | str, match: str = "*", times: int | None = 1, exit_code: int = 1) -> None:
        """Make the next ``times`` launches whose name matches ``match`` misbehave."""
        with self._lock:
            self._injections.append(Injection(Fault(fault), match, times, exit_code))

    def clear_faults(self) -> None:
        with self._lock:
            self._injections.clear()

    def vanish(self, name: str) -> None:
        """Remove a container behind the reconciler's back."""
        with self._lock:
            self._containers.pop(name, None)

    def _take_injections(self, name: str) -> list[Injection]:
        taken = []
        for inj in list(self._injections):
            if fnmatch.fnmatchcase(name, inj.match):
                taken.append(inj)
                if inj.times is not None:
                    inj.times -= 1
                    if inj.times <= 0:
                        self._injections.remove(inj)
        return taken

    def _call(self, verb: str, name: str) -> None:
        self._counter.call(verb)
        if self.latency:
            time.sleep(self.latency)
        if not self.healthy:
            self._counter.error(verb)
            raise Unavailable(f"mock host {self.name} is down")
        with self._lock:
            self.calls.append((verb, name))

    def counters(self) -> dict[str, CallCounts]:
        """Verb calls and the ones refused while ``healthy`` is false (the mock never retries)."""
        return self._counter.snapshot()

    # The six verbs --------------------------------------------------------------------

    def launch(self, spec: ContainerSpec) -> Observed:
        self._call("launch", spec.name)
        if not spec.image:
            raise InvalidSpec("image is empty")
        with self._lock:
            existing = self._containers.get(spec.name)
            if existing is None:
                try:
                    program = parse_script(spec.command)
                except ScriptError as exc:
                    raise InvalidSpec(f"mock cannot run {spec.name!r}: {exc}") from None
                injections = self._take_injections(spec.name)
                create_only = False
                for inj in injections:
                    if inj.fault is Fault.LAUNCH_UNAVAILABLE:
                        raise Unavailable(f"injected: host {self.name} unavailable")
                    if inj.fault is Fault.LAUNCH_INVALID:
                        raise InvalidSpec(f"injected: image {spec.image!r} refused")
                    if inj.fault is Fault.EXIT:
                        program.exit_code = inj.exit_code
                    elif inj.fault is Fault.OOM:
                        program.oom = True
                    elif inj.fault is Fault.HANG:
                        program.hang = True
                    elif inj.fault is Fault.VANISH:
                        program.vanish = True
                    elif inj.fault is Fault.CREATE_ONLY:
                        create_only = True
                self._seq += 1
                existing = _Container(
                    spec=spec,
                    container_id=f"mock{self._seq:012d}",
                    program=program,
                    created_at=self.clock(),
                )
                self._containers[spec.name] = existing
                self.created.append(spec.name)
                if create_only:
                    raise Unavailable("injected: launch interrupted after create")
            if existing.started_at is None:
                existing.started_at = self.clock()
                self.started.append(spec.name)
            return self._observe(existing)

    def inspect(self, name: str) -> Observed:
        self._call("inspect", name)
        with self._lock:
            container = self._containers.get(name)
            if container is None:
                return Observed.missing(name)
            return self._observe(container)

    def stop(self, name: str, grace_seconds: float = 10.0) -> None:
        self._call("stop", name)
        with self._lock:
            container = self._containers.get(name)
            if container is None or container.started_at is None:
                return
            if self._observe(container).state is ContainerState.RUNNING:
                container.stopped_at = self.clock()
                container.stop_exit_code = STOP_EXIT_CODE

    def logs(self, name: str, max_bytes: int = DEFAULT_LOG_TAIL_BYTES) -> LogTail:
        self._call("logs", name)
        with self._lock:
            container = self._containers.get(name)
            if container is None or container.started_at is None:
                return LogTail()
            out, err = BoundedTail(max_bytes), BoundedTail(max_bytes)
            out.feed(container.program.stdout)
            err.feed(container.program.stderr)
            return LogTail(out.text(), err.text(), out.truncated, err.truncated)

    def remove(self, name: str) -> None:
        self._call("remove", name)
        with self._lock:
            self._containers.pop(name, None)

    def list_managed(self, instance: str) -> list[Observed]:
        self._call("list", "*")
        with self._lock:
            return [
                self._observe(c)
                for c in list(self._containers.values())
                if c.spec.labels_dict.get(LABEL_INSTANCE) == instance
            ]

    # Optional verbs -------------------------------------------------------------------

    def health_check(self, timeout: float = 5.0) -> HealthReport:
        if not self.healthy:
            return HealthReport(healthy=False, message=f"mock host {self.name} is down")
        return HealthReport(healthy=True, message="mock executor ready")

    def stats(self, name: str) -> Usage:
        self._call("stats", name)
        with self._lock:
            container = self._containers.get(name)
            limit = (container.spec.memory_mb if container else 0) * 1024 * 1024
            return Usage(
                memory_bytes=min(limit, 32 * 1024 * 1024), memory_limit_bytes=limit, cpu_percent=12.5
            )

    def stream_logs(self, name: str, follow: bool = False) -> Iterator[tuple[str, bytes]]:
        with self._lock:
            container = self._containers.get(name)
            program = container.program if container else Script()
        if program.stdout:
            yield "stdout", program.stdout
        if program.stderr:
            yield "stderr", program.stderr

    def watch(self, instance: str, stop: threading.Event) -> Iterator[ExecutorEvent]:
        """Polls its own containers every 5 ms and reports start/die once each."""
        while not stop.is_set():
            events = []
            with self._lock:
                for container in list(self._containers.values()):
                    labels = container.spec.labels_dict
                    if labels.get(LABEL_INSTANCE) != instance:
                        continue
                    observed = self._observe(container)
                    kinds = []
                    if observed.state is not ContainerState.CREATED:
                        kinds.append(EventKind.STARTED)
                    if observed.state is ContainerState.EXITED:
                        if observed.oom_killed:
                            kinds.append(EventKind.OOM)
                        kinds.append(EventKind.DIED)
                    for kind in kinds:
                        if kind.value in container.reported:
                            continue
                        container.reported.add(kind.value)
                        if self.drop_events:
                            continue
                        events.append(
                            ExecutorEvent(
                                kind=kind,
                                name=container.spec.name,
                                job_id=int(labels[LABEL_JOB]) if LABEL_JOB in labels else None,
                                attempt=int(labels[LABEL_ATTEMPT]) if LABEL_ATTEMPT in labels else None,
                                at=self.clock(),
                            )
                        )
            yield from events
            stop.wait(0.005)

    # Internals ------------------------------------------------------------------------

    def _observe(self, c: _Container) -> Observed:
        base = dict(name=c.spec.name, container_id=c.container_id, labels=c.spec.labels_dict)
        if c.started_at is None:
            return Observed(state=ContainerState.CREATED, **base)  # type: ignore[arg-type]
        program = c.program
        natural_end = None
        if not program.hang:
            natural_end = c.started_at + timedelta(seconds=program.duration)
        now = self.clock()
        end, oom, crash = natural_end, program.oom, program.crash
        exit_code: int | None = program.exit_code
        if c.stopped_at is not None and (natural_end is None or c.stopped_at < natural_end):
            end, exit_code, oom, crash = c.stopped_at, c.stop_exit_code or STOP_EXIT_CODE, False, False
        if end is None or now < end:
            return Observed(state=ContainerState.RUNNING, started_at=c.started_at, **base)  # type: ignore[arg-type]
        if program.vanish and c.stopped_at is None:
            self._containers.pop(c.spec.name, None)
            return Observed.missing(c.spec.name)
        error = ""
        if oom:
            exit_code = OOM_EXIT_CODE
        elif crash:
            exit_code, error = None, "the container was unable to exit cleanly (scripted crash)"
        return Observed(
            state=ContainerState.EXITED,
            exit_code=exit_code,
            oom_killed=oom,
            started_at=c.started_at,
            finished_at=end,
            error=error,
            **base,  # type: ignore[arg-type]
        )
