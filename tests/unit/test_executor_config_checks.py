"""The backends' save-time checks (``check_config``, ``check_environment``) and what they must
never do: reach the network or the files, or quote a value read from the environment."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from executors.base import Executor
from executors.cloudrun import CloudRunExecutor
from executors.docker import DockerExecutor
from executors.exceptions import ConfigurationError, InvalidSpec
from executors.mock import MockExecutor
from executors.types import ContainerSpec

KIB = 1024


@pytest.mark.parametrize(
    ("connection_string", "config", "fragment"),
    [
        ("", {"network": "host"}, "refused"),
        ("", {"network": " container:db"}, "refused"),
        ("", {"network": ""}, "network"),
        ("", {"bogus": 1}, "bogus"),
        ("", {"api_timeout": "soon"}, "api_timeout"),
        ("", {"api_timeout": math.nan}, "api_timeout"),
        ("", {"api_timeout": 1e300}, "at most 3600"),
        ("", {"api_timeout": True}, "api_timeout"),
        ("", {"pull_timeout": -1}, "pull_timeout"),
        ("", {"tmpfs_size_mb": 1.5}, "whole number"),
        ("", {"max_pool_size": 10**6}, "max_pool_size"),
        ("", {"allow_pull": "perhaps"}, "allow_pull"),
        ("", {"read_only": 2}, "read_only"),
        ("", {"runtime": ""}, "runtime"),
        ("", {"runtime": ["runsc"]}, "runtime"),
        ("", {"api_version": "latest"}, "api_version"),
        ("", {"api_version": 1.41}, "api_version"),
        ("unix:///var/run/docker.sock", {"tls_verify": True}, "tcp://"),
        ("ssh://u@h", {"tls_ca_cert": "/ca.pem"}, "tcp://"),
        ("tcp://h:2376", {"tls_client_cert": "/cert.pem"}, "together"),
        ("tcp://h:2376", {"tls_client_key": "/key.pem"}, "together"),
        ("tcp://h:2376", {"tls_ca_cert": "ca.pem"}, "absolute"),
        ("tcp://h:2376", {"tls_ca_cert": 42}, "absolute"),
        ("unix:///var/run/docker.sock", {"use_ssh_client": True}, "ssh"),
        ("", [], "JSON object"),
        ("", "network=none", "JSON object"),
    ],
    ids=repr,
)
def test_docker_check_config_refuses(connection_string: str, config: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        DockerExecutor.check_config(connection_string, config)
    assert fragment in str(info.value)
    assert info.value.field != "connection_string"


@pytest.mark.parametrize("url", ["tcp://", "unix://", "ftp://h", "http//x", "tcp://[::1", 5])
def test_docker_check_config_names_the_connection_string(url: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        DockerExecutor.check_config(url, {})
    assert info.value.field == "connection_string"


def test_docker_check_config_needs_no_files_no_environment_no_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE_X", raising=False)
    config = {
        "tls_ca_cert": "/does/not/exist/on/the/web/machine.pem",
        "tls_client_cert": "env:NOT_SET_ANYWHERE_X",
        "tls_client_key": "/also/missing.pem",
        "api_timeout": 5,
        "network": "none",
    }
    DockerExecutor.check_config("tcp://192.0.2.1:2376", config)  # a documentation address: never reached


def test_from_config_runs_the_same_checks() -> None:
    with pytest.raises(ConfigurationError, match="at most 3600"):
        DockerExecutor.from_config("unix:///var/run/docker.sock", {"api_timeout": 1e300}, "h")


def test_a_variable_that_holds_no_file_is_never_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CA", "postgres://app:s3cr3t@db/prod")
    with pytest.raises(ConfigurationError) as info:
        DockerExecutor.from_config("tcp://h:2376", {"tls_ca_cert": "env:DOCKER_CA"}, "h")
    assert "DOCKER_CA" in str(info.value)
    assert "s3cr3t" not in str(info.value) and "postgres" not in str(info.value)


def test_a_literal_path_is_quoted_a_path_from_the_environment_is_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match=r"no such file '/nowhere/ca\.pem'"):
        DockerExecutor.from_config("tcp://h:2376", {"tls_ca_cert": "/nowhere/ca.pem"}, "h")
    secret_dir = tmp_path / "tenant-acme-private"
    secret_dir.mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (secret_dir / name).write_text("dummy")
    monkeypatch.setenv("DOCKER_KEY", str(secret_dir / "key.pem"))
    executor = DockerExecutor.from_config(
        "tcp://127.0.0.1:9",
        {"tls_client_cert": str(secret_dir / "cert.pem"), "tls_client_key": "env:DOCKER_KEY"},
        "h",
    )
    error = executor._translate(OSError(f"could not load {secret_dir / 'key.pem'}"), "ping")
    assert "tenant-acme-private/key.pem" not in str(error)
    executor.close()


def _spec(env: dict[str, str]) -> ContainerSpec:
    return ContainerSpec(name="cm-t-1-1", image="busybox", env=tuple(sorted(env.items())))


def test_docker_check_environment_follows_the_linux_limits() -> None:
    # One string KEY=VALUE plus its NUL may hold 128 KiB (MAX_ARG_STRLEN).
    assert DockerExecutor.check_environment({"K": "x" * (128 * KIB - 3)}) == []
    problems = DockerExecutor.check_environment({"K": "x" * (128 * KIB - 2)})
    assert len(problems) == 1 and problems[0].startswith("K:") and "xxx" not in problems[0]
    # All of them together: 2 MiB at most.
    many = {f"V{i:02d}": "y" * (100 * KIB) for i in range(21)}
    assert any("2048 KiB" in p for p in DockerExecutor.check_environment(many))
    assert DockerExecutor.check_environment({"A": "1"}) == []


def test_docker_launch_refuses_such_an_environment_before_any_call() -> None:
    executor = DockerExecutor.from_config("unix:///nonexistent/docker.sock", {}, "h")
    with pytest.raises(InvalidSpec, match="BIG"):
        executor.launch(_spec({"BIG": "x" * (200 * KIB)}))
    executor.close()


@pytest.mark.parametrize(
    ("config", "ok"),
    [
        ({}, True),
        ({"latency": 0.5, "healthy": False}, True),
        ({"latency": 0.01}, True),
        ({"latency": "0.01"}, False),
        ({"latency": "slow"}, False),
        ({"latency": math.inf}, False),
        ({"latency": -1}, False),
        ({"healthy": "yes"}, False),
        ({"other": 1}, False),
        (["latency"], False),
    ],
    ids=repr,
)
def test_mock_check_config(config: Any, ok: bool) -> None:
    if ok:
        MockExecutor.check_config("", config)
        MockExecutor.from_config("", config, "m")
        return
    with pytest.raises(ConfigurationError):
        MockExecutor.check_config("", config)
    with pytest.raises(ConfigurationError):
        MockExecutor.from_config("", config, "m")


# One reader, one meaning on every backend (executors._config) -------------------------------

CLOUD_RUN = "projects/p/locations/us-central1"
#: (backend, connection string, a flag key, a number key)
BACKENDS = [
    pytest.param(DockerExecutor, "", "allow_pull", "api_timeout", id="docker"),
    pytest.param(CloudRunExecutor, CLOUD_RUN, "use_cloud_logging", "call_timeout", id="cloudrun"),
    pytest.param(MockExecutor, "", "healthy", "latency", id="mock"),
]


@pytest.mark.parametrize(("backend", "conn", "flag", "number"), BACKENDS)
@pytest.mark.parametrize("value", ["yes", "no", "true", "false", "1", "on", 1, 0, None, [True]], ids=repr)
def test_a_flag_is_a_json_boolean_on_every_backend(
    backend: type[Executor], conn: str, flag: str, number: str, value: Any
) -> None:
    with pytest.raises(ConfigurationError) as info:
        backend.check_config(conn, {flag: value})
    message = str(info.value)
    assert repr(flag) in message and "true or false" in message
    for accepted in (True, False):
        backend.check_config(conn, {flag: accepted})


@pytest.mark.parametrize(("backend", "conn", "flag", "number"), BACKENDS)
@pytest.mark.parametrize("value", ["5", True, math.nan, math.inf, -1, None], ids=repr)
def test_a_number_is_a_finite_json_number_on_every_backend(
    backend: type[Executor], conn: str, flag: str, number: str, value: Any
) -> None:
    with pytest.raises(ConfigurationError) as info:
        backend.check_config(conn, {number: value})
    assert repr(number) in str(info.value) and "must be a number" in str(info.value)
    backend.check_config(conn, {number: 5})
    backend.check_config(conn, {number: 5.5})


@pytest.mark.parametrize(("backend", "conn", "flag", "number"), BACKENDS)
def test_the_config_is_a_json_object_of_known_keys_on_every_backend(
    backend: type[Executor], conn: str, flag: str, number: str
) -> None:
    with pytest.raises(ConfigurationError, match="JSON object"):
        backend.check_config(conn, ["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"unknown \w+ executor config keys \['bogus'\]"):
        backend.check_config(conn, {"bogus": 1})


@pytest.mark.parametrize(
    ("backend", "conn", "config"),
    [
        pytest.param(DockerExecutor, "tcp://h:2376", {"tls_ca_cert": "env:CM_TEST_HELD"}, id="docker"),
        pytest.param(CloudRunExecutor, CLOUD_RUN, {"credentials_file": "env:CM_TEST_HELD"}, id="cloudrun"),
    ],
)
def test_a_value_read_from_the_environment_never_reaches_a_message(
    backend: type[Executor], conn: str, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.check_config(conn, config)  # the form only: nothing is read at save time
    monkeypatch.setenv("CM_TEST_HELD", "postgres://app:s3cr3t@db/prod")
    with pytest.raises(ConfigurationError) as info:
        backend.from_config(conn, config, "h")
    chain = [info.value, info.value.__cause__, info.value.__context__]
    assert "CM_TEST_HELD" in str(info.value)
    assert all("s3cr3t" not in str(e) and "postgres:" not in str(e) for e in chain)
    monkeypatch.delenv("CM_TEST_HELD")
    with pytest.raises(ConfigurationError, match=r"\$CM_TEST_HELD, which is not set"):
        backend.from_config(conn, config, "h")
