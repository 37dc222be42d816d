"""Reading a Docker host row's settings: the checks that need nothing but the values, and the rest.

``check_config`` runs when the row is saved (no network, no credentials, no files: the web
process may not be the machine the daemon runs on). ``read_config`` runs when the executor
is built and adds what needs this machine: TLS files exist, ``env:NAME`` references resolve,
an ssh client is installed. Values are read by the shared rules of ``executors._config``
(flags are JSON booleans, numbers JSON numbers). No message quotes a value read from the
environment, or a path that came from it: such values may be secrets, and messages reach
health pages and logs.

Keys of ``ExecutorHost.executor_config`` (all optional): ``api_timeout`` (s, 30),
``allow_pull`` (False), ``pull_timeout`` (s, 300), ``network`` ("bridge"; "none" isolates
jobs, "host" and "container:..." are refused), ``runtime`` (e.g. "runsc"), ``read_only``
(False; a small tmpfs is mounted on /tmp when True), ``tmpfs_size_mb`` (64),
``tls_ca_cert`` / ``tls_client_cert`` / ``tls_client_key`` (absolute file paths, or
``env:VAR`` naming a variable that holds the path), ``tls_verify`` (True when TLS material is
given), ``use_ssh_client`` (shell out to ``ssh`` for ssh:// hosts instead of paramiko),
``max_pool_size`` (16), ``api_version`` ("auto").
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import docker.errors
import docker.tls
from docker.utils import kwargs_from_env

from executors._config import ConfigReader
from executors.exceptions import ConfigurationError

DEFAULT_BASE_URL = "unix:///var/run/docker.sock"

CONFIG_KEYS = frozenset(
    {
        "api_timeout",
        "allow_pull",
        "pull_timeout",
        "network",
        "runtime",
        "read_only",
        "tmpfs_size_mb",
        "tls_ca_cert",
        "tls_client_cert",
        "tls_client_key",
        "tls_verify",
        "use_ssh_client",
        "max_pool_size",
        "api_version",
    }
)
TLS_KEYS = ("tls_ca_cert", "tls_client_cert", "tls_client_key", "tls_verify")
TLS_PATH_KEYS = ("tls_ca_cert", "tls_client_cert", "tls_client_key")


def _reader(config: Any) -> ConfigReader:
    return ConfigReader("docker", config, CONFIG_KEYS)


def _numbers(reader: ConfigReader) -> dict[str, Any]:
    """The numeric settings; maxima keep socket timeouts and sizes inside what the OS accepts
    (an enormous timeout overflows the C timeval)."""
    return {
        "api_timeout": reader.number("api_timeout", 30.0, maximum=3600.0, exclusive_minimum=True),
        "pull_timeout": reader.number("pull_timeout", 300.0, maximum=86400.0, exclusive_minimum=True),
        "tmpfs_size_mb": reader.integer("tmpfs_size_mb", 64, minimum=1, maximum=64 * 1024),
        "max_pool_size": reader.integer("max_pool_size", 16, minimum=1, maximum=1000),
    }


def _flags(reader: ConfigReader) -> dict[str, bool]:
    return {
        "allow_pull": reader.flag("allow_pull", False),
        "read_only": reader.flag("read_only", False),
        "use_ssh_client": reader.flag("use_ssh_client", False),
    }


def validate_network(network: Any) -> str:
    """The network mode, refused when it would share the host's or another container's namespace."""
    if not isinstance(network, str) or not network.strip():
        raise ConfigurationError("docker executor config 'network' must be a network name")
    network = network.strip()
    if network == "host" or network.startswith("container:"):
        raise ConfigurationError(
            f"network mode {network!r} is refused: jobs must never share the host's or another "
            "container's network namespace (use 'bridge', 'none' or a named network)"
        )
    return network


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _normalise_base_url(connection_string: Any) -> str:
    if connection_string is not None and not isinstance(connection_string, str):
        raise ConfigurationError("a Docker connection string is text", field="connection_string")
    url = (connection_string or "").strip()
    if not url:
        return str(kwargs_from_env().get("base_url") or DEFAULT_BASE_URL)
    try:
        parsed = urlparse(url)
        hostname = parsed.hostname
    except ValueError:  # e.g. an unbalanced "[" in the host part
        raise ConfigurationError(f"{_shown(url)} is not a URL", field="connection_string") from None
    problem = None
    if parsed.scheme == "unix":
        if not parsed.path:
            problem = "a unix connection string is unix:///path/to/docker.sock"
    elif parsed.scheme in ("tcp", "http", "https"):
        if not hostname:
            problem = "a tcp connection string is tcp://host:port"
    elif parsed.scheme == "ssh":
        if not hostname:
            problem = "an ssh connection string is ssh://user@host"
    else:
        problem = "unsupported Docker connection string: use unix:///path, tcp://host:port or ssh://user@host"
    if problem:
        raise ConfigurationError(f"{_shown(url)}: {problem}", field="connection_string")
    return url


def _check(connection_string: Any, reader: ConfigReader) -> dict[str, Any]:
    """Every check that needs neither the network, credentials nor local files; the plain settings."""
    scheme = urlparse(_normalise_base_url(connection_string)).scheme
    settings: dict[str, Any] = {**_numbers(reader), **_flags(reader)}
    settings["network"] = validate_network(reader.config.get("network", "bridge"))
    settings["runtime"] = reader.text("runtime", rule="must be a runtime name")
    settings["api_version"] = reader.text(
        "api_version", "auto", pattern=r"auto|[0-9]+\.[0-9]+", rule="must be 'auto' or like '1.41'"
    )
    reader.flag("tls_verify", True)
    if "use_ssh_client" in reader and scheme != "ssh":
        raise ConfigurationError("use_ssh_client only applies to ssh:// hosts")
    given = reader.given(TLS_KEYS)
    if given and scheme not in ("tcp", "https"):
        raise ConfigurationError(f"TLS settings {given} only apply to tcp:// hosts, not {scheme}://")
    for key in TLS_PATH_KEYS:
        reader.path(key)
    if bool(reader.path("tls_client_cert")) != bool(reader.path("tls_client_key")):
        raise ConfigurationError("tls_client_cert and tls_client_key must be given together")
    return settings


def check_config(connection_string: Any, config: Any) -> None:
    """Every check of a host row that needs neither the network, credentials nor local files."""
    _check(connection_string, _reader(config))


@dataclass
class DockerSettings:
    """A host row's settings, read and checked on this machine: the executor's arguments."""

    base_url: str
    kwargs: dict[str, Any]
    #: Values that came from the environment (paths): scrubbed from every message.
    from_environment: list[str] = field(default_factory=list)


def _file(reader: ConfigReader, key: str, from_environment: list[str]) -> str | None:
    value = reader.path(key)
    if value is None:
        return None
    path, variable = reader.resolve(key, value)
    if variable is None:
        if not os.path.isfile(path):
            raise ConfigurationError(f"docker executor config {key!r}: no such file {_shown(path)}")
        return path
    from_environment.append(path)
    if not os.path.isfile(path):
        # Never the value: the variable may hold anything (a database URL, a key).
        raise reader.error(key, f"names ${variable}, which does not hold the path of a file")
    return path


def _tls(reader: ConfigReader, base_url: str, from_env: bool, found: list[str]) -> Any:
    if not reader.given(TLS_KEYS):
        if from_env:
            return kwargs_from_env().get("tls") or False
        return urlparse(base_url).scheme == "https"
    ca = _file(reader, "tls_ca_cert", found)
    cert = _file(reader, "tls_client_cert", found)
    key = _file(reader, "tls_client_key", found)
    verify = reader.flag("tls_verify", True)
    if not (ca or cert) and not verify:
        return False
    try:
        return docker.tls.TLSConfig(
            client_cert=(cert, key) if cert and key else None,
            ca_cert=ca,
            verify=ca if (verify and ca) else verify,
        )
    except docker.errors.TLSParameterError:
        # docker-py's message may quote the paths, which may have come from the environment.
        raise ConfigurationError("invalid TLS settings: check the certificate and key files") from None


def read_config(connection_string: Any, config: Mapping[str, Any]) -> DockerSettings:
    """``check_config``, then what needs this machine; the arguments of ``DockerExecutor``."""
    reader = _reader(config)
    kwargs = _check(connection_string, reader)
    base_url = _normalise_base_url(connection_string)
    found: list[str] = []
    kwargs["tls"] = _tls(reader, base_url, not (connection_string or "").strip(), found)
    if urlparse(base_url).scheme == "ssh":
        if kwargs["use_ssh_client"] and not shutil.which("ssh"):
            raise ConfigurationError("use_ssh_client is set but there is no ssh binary on PATH")
        if not kwargs["use_ssh_client"] and importlib.util.find_spec("paramiko") is None:
            raise ConfigurationError(
                "ssh:// hosts need paramiko (pip install paramiko) or use_ssh_client: true"
            )
    return DockerSettings(base_url, kwargs, found)
