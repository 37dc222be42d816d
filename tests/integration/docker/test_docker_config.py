"""DockerExecutor configuration and pure helpers; none of these needs a Docker daemon."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from executors.docker import (
    DockerExecutor,
    iter_frames,
    observed_from_inspect,
    observed_from_list,
    parse_docker_time,
    scrub,
)
from executors.exceptions import (
    ConfigurationError,
    Conflict,
    ImageNotFound,
    InvalidSpec,
    NotFound,
    Unavailable,
)
from executors.registry import backend_class
from executors.types import CallCounts, ContainerState, EventKind, ExecutorEvent


def test_registry_finds_the_docker_backend() -> None:
    assert backend_class("docker") is DockerExecutor


def test_defaults() -> None:
    executor = DockerExecutor.from_config("unix:///var/run/docker.sock", {}, "local")
    assert executor.kind == "docker"
    assert executor.supports_events and executor.supports_stats
    assert executor.network == "bridge"
    assert executor.api_timeout == 30 and executor.allow_pull is False
    counters = executor.counters()
    assert {"create", "start", "inspect", "logs", "remove", "events"} <= set(counters)
    assert all(counts == CallCounts() for counts in counters.values())  # nothing sent yet
    executor.close()


def test_construction_does_not_contact_the_daemon() -> None:
    executor = DockerExecutor.from_config("tcp://192.0.2.1:2375", {"api_timeout": 1}, "far")
    assert executor._api is None
    executor.close()


def test_unknown_config_keys_are_named() -> None:
    with pytest.raises(ConfigurationError) as info:
        DockerExecutor.from_config("unix:///var/run/docker.sock", {"netwrok": "none", "bogus": 1}, "h")
    assert "bogus" in str(info.value) and "netwrok" in str(info.value)


@pytest.mark.parametrize("network", ["host", "container:abc"])
def test_sharing_namespaces_is_refused(network: str) -> None:
    with pytest.raises(ConfigurationError, match="refused"):
        DockerExecutor.from_config("unix:///var/run/docker.sock", {"network": network}, "h")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"api_timeout": 0}, "api_timeout"),
        ({"api_timeout": "soon"}, "api_timeout"),
        ({"allow_pull": "perhaps"}, "allow_pull"),
        ({"runtime": ""}, "runtime"),
        ({"api_version": "latest"}, "api_version"),
        ({"use_ssh_client": True}, "ssh"),
    ],
)
def test_bad_values_are_refused(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        DockerExecutor.from_config("unix:///var/run/docker.sock", config, "h")


@pytest.mark.parametrize("url", ["http//nope", "ftp://host", "unix://", "tcp://", "npipe:////./pipe/docker"])
def test_bad_connection_strings(url: str) -> None:
    with pytest.raises(ConfigurationError):
        DockerExecutor.from_config(url, {}, "h")


def test_empty_connection_string_uses_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/other.sock")
    assert DockerExecutor.from_config("", {}, "h").base_url == "unix:///run/other.sock"
    monkeypatch.delenv("DOCKER_HOST")
    assert DockerExecutor.from_config("", {}, "h").base_url == "unix:///var/run/docker.sock"


def test_tls_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("dummy")
    monkeypatch.setenv("DOCKER_KEY_PATH", str(tmp_path / "key.pem"))
    config = {
        "tls_ca_cert": str(tmp_path / "ca.pem"),
        "tls_client_cert": str(tmp_path / "cert.pem"),
        "tls_client_key": "env:DOCKER_KEY_PATH",
    }
    executor = DockerExecutor.from_config("tcp://docker.example:2376", config, "remote")
    assert isinstance(executor.tls, docker.tls.TLSConfig)
    assert executor.tls.verify == str(tmp_path / "ca.pem")
    assert executor.tls.cert == (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))

    with pytest.raises(ConfigurationError, match="no such file"):
        DockerExecutor.from_config("tcp://h:2376", {"tls_ca_cert": str(tmp_path / "missing.pem")}, "r")
    with pytest.raises(ConfigurationError, match="together"):
        DockerExecutor.from_config("tcp://h:2376", {"tls_client_cert": str(tmp_path / "cert.pem")}, "r")
    with pytest.raises(ConfigurationError, match="tcp://"):
        DockerExecutor.from_config("unix:///var/run/docker.sock", {"tls_verify": True}, "r")
    with pytest.raises(ConfigurationError, match="not set"):
        DockerExecutor.from_config(
            "tcp://h:2376",
            {"tls_client_cert": str(tmp_path / "cert.pem"), "tls_client_key": "env:NOT_SET_ANYWHERE_X"},
            "r",
        )
    assert DockerExecutor.from_config("tcp://h:2375", {"tls_verify": False}, "r").tls is False


def test_ssh_needs_paramiko_or_the_ssh_client() -> None:
    try:
        import paramiko  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigurationError, match="paramiko"):
            DockerExecutor.from_config("ssh://user@host", {}, "h")
    executor = DockerExecutor.from_config("ssh://user@host", {"use_ssh_client": True}, "h")
    assert executor.use_ssh_client is True


def test_parse_docker_time() -> None:
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time("") is None and parse_docker_time(None) is None
    assert parse_docker_time("2024-05-06T07:08:09.123456789Z") == datetime(
        2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC
    )
    assert parse_docker_time("2024-05-06T07:08:09Z") == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert parse_docker_time("2024-05-06T09:08:09.5+02:00") == datetime(
        2024, 5, 6, 7, 8, 9, 500000, tzinfo=UTC
    )


def _inspect(status: str, **state: object) -> dict[str, object]:
    base = {
        "Status": status,
        "ExitCode": 0,
        "OOMKilled": False,
        "Error": "",
        "StartedAt": "2024-01-01T00:00:00.5Z",
        "FinishedAt": "2024-01-01T00:00:02Z",
    }
    base.update(state)
    return {"Id": "abc", "Name": "/cm-x", "State": base, "Config": {"Labels": {"a": "b"}}}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("created", ContainerState.CREATED),
        ("running", ContainerState.RUNNING),
        ("paused", ContainerState.RUNNING),
        ("restarting", ContainerState.RUNNING),
        ("exited", ContainerState.EXITED),
        ("dead", ContainerState.EXITED),
        ("removing", ContainerState.EXITED),
    ],
)
def test_states(status: str, expected: ContainerState) -> None:
    observed = observed_from_inspect("cm-x", _inspect(status))
    assert observed.state is expected
    assert observed.labels == {"a": "b"}
    if expected is ContainerState.EXITED:
        assert observed.exit_code == 0 and observed.finished_at is not None
    else:
        assert observed.exit_code is None and observed.finished_at is None


def test_oom_and_error_are_mapped() -> None:
    observed = observed_from_inspect("cm-x", _inspect("exited", ExitCode=137, OOMKilled=True))
    assert (observed.exit_code, observed.oom_killed) == (137, True)
    dead = observed_from_inspect("cm-x", _inspect("dead", ExitCode=1))
    assert "dead" in dead.error


def test_finish_never_precedes_start() -> None:
    # Seen on dockerd 20.10 for a container that exits at once.
    state = {"StartedAt": "2024-01-01T00:00:00.108621Z", "FinishedAt": "2024-01-01T00:00:00.107315Z"}
    observed = observed_from_inspect("cm-x", _inspect("exited", **state))
    assert observed.finished_at == observed.started_at


def test_list_entries() -> None:
    item = {
        "Id": "abc",
        "Names": ["/cm-1-1"],
        "State": "exited",
        "Status": "Exited (137) 2 seconds ago",
        "Labels": {"k": "v"},
    }
    observed = observed_from_list(item)
    assert (observed.name, observed.state, observed.exit_code) == ("cm-1-1", ContainerState.EXITED, 137)
    running = observed_from_list({**item, "State": "running", "Status": "Up 3 seconds"})
    assert running.state is ContainerState.RUNNING and running.exit_code is None


def _frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def test_iter_frames_handles_split_blocks() -> None:
    data = _frame(1, b"hello\n") + _frame(2, b"oops\n") + _frame(1, b"") + _frame(1, b"x" * 100)
    blocks = [data[i : i + 3] for i in range(0, len(data), 3)]
    assert list(iter_frames(iter(blocks))) == [
        ("stdout", b"hello\n"),
        ("stderr", b"oops\n"),
        ("stdout", b"x" * 100),
    ]


def test_iter_frames_joins_frames_of_one_stream_within_a_block() -> None:
    data = _frame(1, b"a\n") + _frame(1, b"b\n") + _frame(2, b"e\n") + _frame(1, b"c\n") + _frame(1, b"d")
    assert list(iter_frames([data[:-3], data[-3:]])) == [
        ("stdout", b"a\nb\n"),
        ("stderr", b"e\n"),
        ("stdout", b"c\n"),
        ("stdout", b"d"),
    ]


def test_iter_frames_passes_a_tty_stream_through() -> None:
    assert list(iter_frames(iter([b"plain text output\n", b"more"]))) == [
        ("stdout", b"plain text output\n"),
        ("stdout", b"more"),
    ]


def test_scrub() -> None:
    assert scrub("bad value hunter22 here", ["hunter22"]) == "bad value *** here"
    assert scrub('Bad Request ("invalid environment variable: =abc")', []) == (
        'Bad Request ("invalid environment variable: <hidden>")'
    )


def _api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("boom", response=response, explanation=explanation)


@pytest.mark.parametrize(
    ("exc", "expected", "transient"),
    [
        (_api_error(500, "daemon busy"), Unavailable, True),
        (_api_error(503, "later"), Unavailable, True),
        (_api_error(500, 'exec: "x": executable file not found in $PATH'), InvalidSpec, False),
        (_api_error(500, "unable to find user nobody"), InvalidSpec, False),
        (_api_error(400, "Minimum memory limit allowed is 6MB"), InvalidSpec, False),
        (_api_error(404, "No such container: x"), NotFound, False),
        (_api_error(409, "name in use"), Conflict, False),
        (docker.errors.ImageNotFound("no such image", explanation="No such image: x"), ImageNotFound, False),
        (requests.exceptions.ConnectionError("refused"), Unavailable, True),
        (requests.exceptions.ReadTimeout("slow"), Unavailable, True),
        (docker.errors.DockerException("Error while fetching server API version"), Unavailable, True),
    ],
)
def test_error_translation(exc: BaseException, expected: type, transient: bool) -> None:
    executor = DockerExecutor()
    error = executor._translate(exc, "op")
    assert type(error) is expected
    assert error.transient is transient


# The event watcher's bookkeeping, against a scripted daemon -------------------------------------


class _FakeRaw:
    def __init__(self, lines: list[bytes], fail: bool) -> None:
        self.lines, self.fail = lines, fail

    def stream(self, amt: int, decode_content: bool = False) -> Iterator[bytes]:
        yield from self.lines
        if self.fail:
            raise requests.exceptions.ConnectionError("connection reset by peer")


class _FakeResponse:
    def __init__(self, lines: list[bytes], fail: bool) -> None:
        self.raw = _FakeRaw(lines, fail)
        self.status_code = 200

    def raise_for_status(self) -> None:
        pass

    def close(self) -> None:
        pass


class _FakeDaemon:
    """Answers each /events request with the next scripted window (then with empty ones)."""

    base_url = "http+docker://fake"
    api_version = "1.41"

    def __init__(self, windows: list[Any]) -> None:
        self.windows = list(windows)
        self.requests: list[dict[str, str]] = []

    def info(self) -> dict[str, str]:
        return {"SystemTime": datetime.now(UTC).isoformat().replace("+00:00", "Z")}

    def get(self, url: str, params: dict[str, str], **kwargs: object) -> _FakeResponse:
        self.requests.append(params)
        window = self.windows.pop(0) if self.windows else []
        if window == "refuse":
            raise requests.exceptions.ConnectionError("refused")
        assert isinstance(window, list)
        fail = bool(window and window[-1] == "drop")
        events = [e for e in window if e != "drop"]
        return _FakeResponse([json.dumps(e).encode() + b"\n" for e in events], fail)


def _ev(action: str, nanos: int, cid: str = "c1", name: str = "cm-1-1") -> dict[str, object]:
    attributes = {"name": name, "container_manager.job": "5", "container_manager.attempt": "2"}
    return {
        "Type": "container",
        "Action": action,
        "id": cid,
        "timeNano": nanos,
        "Actor": {"ID": cid, "Attributes": attributes},
    }


def _collect(daemon: _FakeDaemon, count: int) -> tuple[list[ExecutorEvent], DockerExecutor]:
    executor = DockerExecutor()
    executor._api = daemon  # type: ignore[assignment]
    executor.events_window = 0.01
    stop = threading.Event()
    got: list[ExecutorEvent] = []
    deadline = time.monotonic() + 5
    for event in executor.watch("inst", stop):
        got.append(event)
        if len(got) >= count or time.monotonic() > deadline:
            stop.set()
    return got, executor


def test_watch_dedupes_replays_and_resyncs_when_events_were_lost() -> None:
    a, b, c = _ev("start", 1_000_000_001), _ev("die", 1_000_000_500), _ev("destroy", 2_000_000_000)
    daemon = _FakeDaemon([[a], [a, b], [c]])  # the third replay should start with b: lost
    got, _ = _collect(daemon, 4)
    assert [e.kind for e in got] == [EventKind.STARTED, EventKind.DIED, EventKind.RESYNC, EventKind.DESTROYED]
    assert (got[0].name, got[0].job_id, got[0].attempt) == ("cm-1-1", 5, 2)
    # Each window resumes exactly at the last event seen, as "seconds.nanoseconds".
    assert daemon.requests[1]["since"] == "1.000000001"
    assert daemon.requests[2]["since"] == "1.000000500"
    assert json.loads(daemon.requests[0]["filters"])["label"] == [
        "container_manager.managed=true",
        "container_manager.instance=inst",
    ]


def test_watch_reports_one_oom_per_container() -> None:
    ooms = [_ev("oom", 10 + i) for i in range(5)]
    die = _ev("die", 20)  # replayed first by the second window, as the daemon does
    daemon = _FakeDaemon([[_ev("start", 1), *ooms, die], [die, _ev("oom", 30, cid="c2", name="cm-2-1")]])
    got, _ = _collect(daemon, 4)
    assert [(e.kind, e.name) for e in got] == [
        (EventKind.STARTED, "cm-1-1"),
        (EventKind.OOM, "cm-1-1"),
        (EventKind.DIED, "cm-1-1"),
        (EventKind.OOM, "cm-2-1"),
    ]


def test_watch_reconnects_after_a_drop_and_a_refusal() -> None:
    a, b = _ev("start", 100), _ev("die", 200)
    daemon = _FakeDaemon([[a, "drop"], "refuse", [a, b]])
    got, executor = _collect(daemon, 3)
    assert [e.kind for e in got] == [EventKind.STARTED, EventKind.RESYNC, EventKind.DIED]
    assert executor.counters()["events"].retries == 1  # one reconnection
    assert daemon.requests[-1]["since"] == "0.000000100"
