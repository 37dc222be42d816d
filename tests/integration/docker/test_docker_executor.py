"""What only a real Docker daemon can show: limits, hardening, OOM, big logs, events, failures."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterator
from typing import cast

import pytest

from executors.docker import DockerExecutor
from executors.exceptions import Conflict, ImageNotFound, InvalidSpec, Unavailable
from executors.types import LABEL_INSTANCE, LABEL_MANAGED, ContainerState, EventKind, ExecutorEvent
from tests.integration.docker.support import IMAGE, make_spec, wait_for
from tests.support.images import TestImageError, ensure_busybox_image

pytestmark = pytest.mark.docker

MIB = 1024 * 1024


class Watcher:
    """Runs ``executor.watch`` in a thread and records what it yields."""

    def __init__(self, executor: DockerExecutor, instance: str) -> None:
        self.executor = executor
        self.stop = threading.Event()
        self.events: list[ExecutorEvent] = []
        self.thread = threading.Thread(target=self._run, args=(instance,), daemon=True)
        self.thread.start()
        time.sleep(0.3)  # subscribed by now

    def _run(self, instance: str) -> None:
        for event in self.executor.watch(instance, self.stop):
            self.events.append(event)

    def kinds(self, name: str) -> list[EventKind]:
        return [e.kind for e in self.events if e.name == name]

    def wait_until(self, condition: object, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():  # type: ignore[operator]
                return
            time.sleep(0.02)
        raise AssertionError(f"condition not met within {timeout}s; events: {self.events}")

    def close(self) -> float:
        started = time.monotonic()
        self.stop.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "watch() did not return after stop was set"
        return time.monotonic() - started


@pytest.fixture
def watcher_factory(docker_executor: DockerExecutor) -> Iterator[object]:
    made: list[Watcher] = []

    def make(instance: str, executor: DockerExecutor | None = None) -> Watcher:
        watcher = Watcher(executor or docker_executor, instance)
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        watcher.stop.set()
        watcher.thread.join(timeout=5)


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS


def test_oom_kill_recorded(docker_executor: DockerExecutor, instance: str, watcher_factory: object) -> None:
    watcher = watcher_factory(instance)  # type: ignore[operator]
    spec = make_spec(instance, "x=0123456789abcdef; while true; do x=$x$x; done", memory_mb=16)
    docker_executor.launch(spec)
    done = wait_for(docker_executor, spec.name, timeout=30)
    assert done.exit_code == 137
    assert done.oom_killed is True
    watcher.wait_until(lambda: EventKind.DIED in watcher.kinds(spec.name))
    # Docker sends many 'oom' events for one kill; the watcher reports one.
    assert watcher.kinds(spec.name).count(EventKind.OOM) <= 1
    assert watcher.kinds(spec.name)[0] is EventKind.STARTED
    # The 'die' event cannot say it was an OOM kill: inspection still asks Docker.
    assert docker_executor.inspect(spec.name).oom_killed is True


def test_an_exit_reported_by_a_die_event_costs_no_inspect_call(
    docker_executor: DockerExecutor, instance: str, watcher_factory: object
) -> None:
    from executors.docker import parse_docker_time

    watcher = watcher_factory(instance)  # type: ignore[operator]
    spec = make_spec(instance, "sleep 0.3; exit 5")
    docker_executor.launch(spec)
    watcher.wait_until(lambda: EventKind.DIED in watcher.kinds(spec.name))
    truth = docker_executor.api.inspect_container(spec.name)["State"]
    calls: list[str] = []
    original = docker_executor._call

    def counted(what: str, *args: object, **kwargs: object) -> object:
        calls.append(what)
        return original(what, *args, **kwargs)  # type: ignore[arg-type]

    docker_executor._call = counted  # type: ignore[method-assign,assignment]
    seen = docker_executor.inspect(spec.name)
    assert calls == [], "the event already said how it ended"
    assert (
        (seen.state, seen.exit_code)
        == (ContainerState.EXITED, truth["ExitCode"])
        == (ContainerState.EXITED, 5)
    )
    finished = parse_docker_time(truth["FinishedAt"])
    assert seen.finished_at is not None and finished is not None
    assert abs((seen.finished_at - finished).total_seconds()) < 0.1, "the event's time is Docker's exit time"
    assert seen.labels[LABEL_INSTANCE] == instance
    docker_executor.remove(spec.name)
    assert docker_executor.inspect(spec.name).state is ContainerState.NOT_FOUND
    assert calls and calls[-1].startswith("inspect"), "a removed container is asked about again"


def test_hardening_visible_in_docker_inspect(docker_executor: DockerExecutor, instance: str) -> None:
    spec = make_spec(
        instance,
        "id -u; id -g; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
        memory_mb=48,
        cpu=0.25,
        pids_limit=32,
        env=(("GREETING", "hi"),),
    )
    docker_executor.launch(spec)
    wait_for(docker_executor, spec.name)
    data = docker_executor.api.inspect_container(spec.name)
    host = data["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"])
    assert host["Privileged"] is False
    assert host["Memory"] == 48 * MIB
    assert host["MemorySwap"] == 48 * MIB  # no swap beyond the limit
    assert host["NanoCpus"] == 250_000_000
    assert host["PidsLimit"] == 32
    assert host["NetworkMode"] not in ("host",)
    assert host["PidMode"] in ("", None) and host["IpcMode"] in ("private", "shareable", "", None)
    assert not host.get("Binds")
    assert data["Config"]["User"] == "65534:65534"
    assert "GREETING=hi" in data["Config"]["Env"]
    assert data["Config"]["Labels"][LABEL_MANAGED] == "true"
    # And from inside: unprivileged, no capabilities, no privilege escalation.
    out = docker_executor.logs(spec.name).stdout.split("\n")
    assert out[0] == "65534" and out[1] == "65534"
    assert "CapEff:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out


def test_read_only_root_with_writable_tmp(instance: str, docker_executor: DockerExecutor) -> None:
    executor = DockerExecutor.from_config(
        "unix:///var/run/docker.sock", {"read_only": True, "network": "none"}, "ro"
    )
    try:
        spec = make_spec(instance, "echo ok > /tmp/f && cat /tmp/f; touch /bin/nope || echo refused")
        executor.launch(spec)
        wait_for(executor, spec.name)
        data = executor.api.inspect_container(spec.name)
        assert data["HostConfig"]["ReadonlyRootfs"] is True
        assert data["HostConfig"]["NetworkMode"] == "none"
        assert executor.logs(spec.name).stdout == "ok\nrefused\n"
    finally:
        executor.close()


def test_50mb_log_read_with_bounded_memory(docker_executor: DockerExecutor, instance: str) -> None:
    total = 50 * MIB
    line = "0123456789abcdef" * 64  # 1 KiB lines (+ newline)
    spec = make_spec(instance, f"yes {line} | head -c {total}")
    docker_executor.launch(spec)
    done = wait_for(docker_executor, spec.name, timeout=60)
    assert done.exit_code == 0

    limit_kib = 40 * 1024
    _reset_peak_rss()
    before = _vm_kib("VmRSS")
    tail = docker_executor.logs(spec.name, max_bytes=64 * 1024)
    grown = _vm_kib("VmHWM") - before
    assert grown < limit_kib, f"reading the log grew the process by {grown} KiB"
    assert len(tail.stdout) == 64 * 1024
    assert tail.stdout_truncated is True
    assert tail.stderr == "" and tail.stderr_truncated is False
    expected = ((line + "\n") * ((total // (len(line) + 1)) + 1))[:total]
    assert tail.stdout == expected[-64 * 1024 :]

    _reset_peak_rss()
    before = _vm_kib("VmRSS")
    streamed = sum(
        len(chunk) for stream, chunk in docker_executor.stream_logs(spec.name) if stream == "stdout"
    )
    grown = _vm_kib("VmHWM") - before
    assert streamed == total
    assert grown < limit_kib, f"streaming the log grew the process by {grown} KiB"


def test_missing_image_is_image_not_found(docker_executor: DockerExecutor, instance: str) -> None:
    spec = make_spec(instance, "true", image="container-manager/does-not-exist:never")
    with pytest.raises(ImageNotFound) as info:
        docker_executor.launch(spec)
    assert not info.value.transient
    assert "container-manager/does-not-exist:never" in str(info.value)
    assert "allow_pull" in str(info.value)
    assert docker_executor.inspect(spec.name).state is ContainerState.NOT_FOUND


def test_unrunnable_command_is_invalid_spec(docker_executor: DockerExecutor, instance: str) -> None:
    spec = make_spec(instance, ("no-such-program",))
    with pytest.raises(InvalidSpec) as info:
        docker_executor.launch(spec)
    assert not info.value.transient
    assert "no-such-program" in str(info.value)


def test_errors_never_carry_env_values(docker_executor: DockerExecutor, instance: str) -> None:
    secret = "s3cr3t-value-do-not-print"
    spec = make_spec(
        instance, "true", env=(("", secret), ("API_TOKEN", secret)), secret_keys=frozenset({"API_TOKEN"})
    )
    with pytest.raises(InvalidSpec) as info:
        docker_executor.launch(spec)
    chain: list[BaseException] = []
    exc: BaseException | None = info.value
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert all(secret not in str(e) and secret not in repr(e) for e in chain), chain
    assert "environment variable" in str(info.value)


def test_adopts_a_created_but_never_started_container(docker_executor: DockerExecutor, instance: str) -> None:
    spec = make_spec(instance, "echo adopted")
    created = docker_executor.api.create_container(
        IMAGE, command=list(spec.command), name=spec.name, labels=spec.labels_dict
    )
    assert docker_executor.inspect(spec.name).state is ContainerState.CREATED
    observed = docker_executor.launch(spec)
    assert observed.container_id == created["Id"]
    done = wait_for(docker_executor, spec.name)
    assert done.exit_code == 0
    assert docker_executor.logs(spec.name).stdout == "adopted\n"


def test_refuses_to_adopt_a_foreign_container(docker_executor: DockerExecutor, instance: str) -> None:
    spec = make_spec(instance, "true")
    docker_executor.api.create_container(
        IMAGE, command=["true"], name=spec.name, labels={LABEL_INSTANCE: instance}
    )
    try:
        with pytest.raises(Conflict):
            docker_executor.launch(spec)
        assert docker_executor.inspect(spec.name).state is ContainerState.CREATED  # left alone
    finally:
        docker_executor.remove(spec.name)


def test_concurrent_launches_make_one_container(docker_executor: DockerExecutor, instance: str) -> None:
    spec = make_spec(instance, "sleep 1")
    results: list[str | None] = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            results.append(docker_executor.launch(spec).container_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert len(docker_executor.list_managed(instance)) == 1


def test_watch_yields_start_and_die_and_stops_promptly(
    docker_executor: DockerExecutor, instance: str, watcher_factory: object
) -> None:
    watcher = watcher_factory(instance)  # type: ignore[operator]
    spec = make_spec(instance, "sleep 0.3; exit 5", job=9, attempt=3)
    docker_executor.launch(spec)
    watcher.wait_until(lambda: EventKind.DIED in watcher.kinds(spec.name))
    mine = [e for e in watcher.events if e.name == spec.name]
    assert [e.kind for e in mine] == [EventKind.STARTED, EventKind.DIED]
    assert all(e.job_id == 9 and e.attempt == 3 and e.at is not None for e in mine)
    docker_executor.remove(spec.name)
    watcher.wait_until(lambda: EventKind.DESTROYED in watcher.kinds(spec.name))
    # Events of other instances are filtered out by the daemon.
    other = make_spec(instance + "-x", "true")
    try:
        docker_executor.launch(other)
        wait_for(docker_executor, other.name)
    finally:
        docker_executor.remove(other.name)
    time.sleep(0.2)
    assert not [e for e in watcher.events if e.name == other.name]
    assert not [e for e in watcher.events if e.kind is EventKind.RESYNC]
    assert watcher.close() < 1.0


def test_watch_notices_a_silent_stream_and_resyncs(instance: str, watcher_factory: object) -> None:
    # A window far longer than the read timeout: the daemon keeps the stream open and silent,
    # as a half-open connection would; the read timeout must end it.
    executor = DockerExecutor(name="silent")
    executor.events_window = 30.0
    executor.events_read_timeout = 0.5
    try:
        watcher = watcher_factory(instance, executor)  # type: ignore[operator]
        watcher.wait_until(lambda: any(e.kind is EventKind.RESYNC for e in watcher.events), timeout=5)
        assert executor.counters()["events"].retries >= 1  # reconnections
        assert watcher.close() < 1.5
    finally:
        executor.close()


def test_watch_survives_a_dropped_connection(
    docker_executor: DockerExecutor, instance: str, watcher_factory: object
) -> None:
    watcher = watcher_factory(instance)  # type: ignore[operator]
    before = docker_executor.counters()["events"].retries
    assert docker_executor._drop_event_streams() >= 1
    watcher.wait_until(lambda: any(e.kind is EventKind.RESYNC for e in watcher.events))
    assert docker_executor.counters()["events"].retries > before
    spec = make_spec(instance, "true")
    docker_executor.launch(spec)
    watcher.wait_until(lambda: EventKind.DIED in watcher.kinds(spec.name))
    assert watcher.kinds(spec.name) == [EventKind.STARTED, EventKind.DIED]


def test_watch_replays_what_happened_while_disconnected(
    docker_executor: DockerExecutor, instance: str
) -> None:
    """Resuming after a drop asks for events ``since`` the last one seen, without repeating it."""
    stop = threading.Event()
    events = cast(Generator[ExecutorEvent, None, None], docker_executor.watch(instance, stop))
    spec = make_spec(instance, "sleep 1")
    timer = threading.Timer(0.3, docker_executor.launch, args=(spec,))
    timer.start()
    try:
        first = next(events)
        assert (first.kind, first.name) == (EventKind.STARTED, spec.name)
        docker_executor._drop_event_streams()  # the generator is suspended: nothing reads now
        wait_for(docker_executor, spec.name, timeout=10)  # the 'die' happens while disconnected
        rest = [next(events), next(events)]
        assert [e.kind for e in rest] == [EventKind.RESYNC, EventKind.DIED]
        assert rest[1].name == spec.name
    finally:
        timer.join()
        stop.set()
        events.close()


def test_health_check(docker_executor: DockerExecutor) -> None:
    report = docker_executor.health_check(timeout=5)
    assert report.healthy
    assert "API" in report.message
    assert report.latency_seconds < 5


def test_health_check_on_a_bad_socket_is_quick_and_unhealthy(tmp_path: object) -> None:
    executor = DockerExecutor.from_config(f"unix://{tmp_path}/nothing-here.sock", {}, "broken")
    try:
        started = time.monotonic()
        report = executor.health_check(timeout=2)
        assert time.monotonic() - started < 2.5
        assert report.healthy is False
        assert "nothing-here.sock" in report.message
        # The verbs raise the transient error, after a bounded number of quick retries.
        started = time.monotonic()
        with pytest.raises(Unavailable):
            executor.inspect("cm-anything")
        assert time.monotonic() - started < 5
        counts = executor.counters()["inspect"]
        assert counts.retries >= 1
        assert counts.calls == counts.errors == counts.retries + 1  # every try failed, then it gave up
    finally:
        executor.close()


def test_stats_reports_plausible_memory(docker_executor: DockerExecutor, instance: str) -> None:
    # The trailing echo keeps the shell (and its 4 MB variable) alive: it would exec a last `sleep`.
    spec = make_spec(
        instance, "x=$(head -c 4000000 /dev/zero | tr '\\000' a); sleep 30; echo ${#x}", memory_mb=64
    )
    docker_executor.launch(spec)
    wait_for(docker_executor, spec.name, lambda o: o.state is ContainerState.RUNNING)
    time.sleep(0.5)  # the variable is filled
    usage = docker_executor.stats(spec.name)
    assert usage.memory_limit_bytes == 64 * MIB
    assert 1 * MIB < usage.memory_bytes < 64 * MIB
    assert 0 < usage.memory_percent < 100
    assert usage.cpu_percent >= 0
    docker_executor.stop(spec.name, grace_seconds=0)


def test_pull_when_allowed_is_attempted_and_reported(instance: str, caplog: pytest.LogCaptureFixture) -> None:
    executor = DockerExecutor.from_config(
        "unix:///var/run/docker.sock", {"allow_pull": True, "pull_timeout": 20}, "p"
    )
    executor.retry_attempts = 1
    try:
        spec = make_spec(instance, "true", image="container-manager/never-published:0")
        with (
            caplog.at_level(logging.INFO, logger="executors.docker"),
            pytest.raises((ImageNotFound, Unavailable)),
        ):
            executor.launch(spec)  # no registry here (Unavailable); with one, ImageNotFound
        assert any(
            "pulling image container-manager/never-published:0" in r.getMessage() for r in caplog.records
        )
    finally:
        executor.close()


def test_test_image_helper_is_idempotent_and_explains_missing_busybox(
    docker_executor: DockerExecutor,
) -> None:
    before = docker_executor.api.inspect_image(IMAGE)["Id"]
    assert ensure_busybox_image(docker_executor) == IMAGE
    # Already there: nothing rebuilt (an import would make a new image, with a new creation time).
    assert docker_executor.api.inspect_image(IMAGE)["Id"] == before
    with pytest.raises(TestImageError, match="busybox-static"):
        ensure_busybox_image(
            docker_executor, tag="container-manager/busybox-missing:x", busybox="/nonexistent/busybox"
        )
