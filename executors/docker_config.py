"""Reading a Docker host row's settings: the checks that need nothing but the values, and the rest.

``check_config`` runs when the row is saved (no network, no credentials, no files: the web
process may not be the machine the daemon runs on). ``read_config`` runs when the executor
is built and adds what needs this machine: TLS files exist, ``env:NAME`` references resolve,
an ssh client is installed. No message quotes a value read from the environment, or a path
that came from it: such values may be secrets, and messages reach health pages and logs.

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
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import docker.errors
import docker.tls
from docker.utils import kwargs_from_env

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
#: key -> (default, exclusive minimum, maximum, whole number). Maxima keep socket timeouts and
#: sizes inside what the OS accepts (an enormous timeout overflows the C timeval).
NUMBERS: dict[str, tuple[float, float, float, bool]] = {
    "api_timeout": (30.0, 0.0, 3600.0, False),
    "pull_timeout": (300.0, 0.0, 86400.0, False),
    "tmpfs_size_mb": (64, 0, 64 * 1024, True),
    "max_pool_size": (16, 0, 1000, True),
}
BOOLEANS = {"allow_pull": False, "read_only": False, "tls_verify": True, "use_ssh_client": False}
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _bool(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key, BOOLEANS[key])
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(f"docker executor config {key!r} must be true or false, got {_shown(value)}")


def _number(config: Mapping[str, Any], key: str) -> float:
    default, minimum, maximum, whole = NUMBERS[key]
    value = config.get(key, default)
    if isinstance(value, bool):
        raise ConfigurationError(f"docker executor config {key!r} must be a number, got {_shown(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigurationError(
            f"docker executor config {key!r} must be a number, got {_shown(value)}"
        ) from None
    if not math.isfinite(number) or not minimum < number <= maximum or (whole and not number.is_integer()):
        kind = "a whole number" if whole else "a number"
        raise ConfigurationError(
            f"docker executor config {key!r} must be {kind} greater than {minimum:g} and at most {maximum:g}"
        )
    return number


def _validate_network(network: Any) -> str:
    if not isinstance(network, str) or not network.strip():
        raise ConfigurationError("docker executor config 'network' must be a network name")
    network = network.strip()
    if network == "host" or network.startswith("container:"):
        raise ConfigurationError(
            f"network mode {network!r} is refused: jobs must never share the host's or another "
            "container's network namespace (use 'bridge', 'none' or a named network)"
        )
    return network


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


def check_config(connection_string: Any, config: Any) -> None:
    """Every check of a host row that needs neither the network, credentials nor local files."""
    if not isinstance(config, Mapping):
        raise ConfigurationError("docker executor config must be a JSON object")
    unknown = sorted(str(k) for k in set(config) - CONFIG_KEYS)
    if unknown:
        raise ConfigurationError(
            f"unknown docker executor config keys {unknown}; known keys are {sorted(CONFIG_KEYS)}"
        )
    scheme = urlparse(_normalise_base_url(connection_string)).scheme
    for key in NUMBERS:
        _number(config, key)
    for key in BOOLEANS:
        _bool(config, key)
    _validate_network(config.get("network", "bridge"))
    runtime = config.get("runtime")
    if runtime is not None and (not isinstance(runtime, str) or not runtime.strip()):
        raise ConfigurationError("docker executor config 'runtime' must be a runtime name")
    api_version = config.get("api_version", "auto")
    if not isinstance(api_version, str) or not re.fullmatch(r"auto|[0-9]+\.[0-9]+", api_version):
        raise ConfigurationError("docker executor config 'api_version' must be 'auto' or like '1.41'")
    if "use_ssh_client" in config and scheme != "ssh":
        raise ConfigurationError("use_ssh_client only applies to ssh:// hosts")
    given = [k for k in TLS_KEYS if k in config]
    if given and scheme not in ("tcp", "https"):
        raise ConfigurationError(f"TLS settings {given} only apply to tcp:// hosts, not {scheme}://")
    for key in TLS_PATH_KEYS:
        value = config.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not (value.startswith("/") or value.startswith("env:")):
            raise ConfigurationError(
                f"docker executor config {key!r} must be an absolute file path (or env:VARIABLE)"
            )
    if bool(config.get("tls_client_cert")) != bool(config.get("tls_client_key")):
        raise ConfigurationError("tls_client_cert and tls_client_key must be given together")


@dataclass
class DockerSettings:
    """A host row's settings, read and checked on this machine: the executor's arguments."""

    base_url: str
    kwargs: dict[str, Any]
    #: Values that came from the environment (paths): scrubbed from every message.
    from_environment: list[str] = field(default_factory=list)


def _path(config: Mapping[str, Any], key: str, from_environment: list[str]) -> str | None:
    value = config.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"docker executor config {key!r} must be a file path")
    if value.startswith("env:"):
        variable = value[4:]
        resolved = os.environ.get(variable)
        if not resolved:
            raise ConfigurationError(f"docker executor config {key!r} names ${variable}, which is not set")
        from_environment.append(resolved)
        if not os.path.isfile(resolved):
            # Never the value: the variable may hold anything (a database URL, a key).
            raise ConfigurationError(
                f"docker executor config {key!r} names ${variable}, which does not hold the path of a file"
            )
        return resolved
    if not os.path.isfile(value):
        raise ConfigurationError(f"docker executor config {key!r}: no such file {_shown(value)}")
    return value


def _tls(config: Mapping[str, Any], base_url: str, from_env: bool, found: list[str]) -> Any:
    given = [k for k in TLS_KEYS if k in config]
    if not given:
        if from_env:
            return kwargs_from_env().get("tls") or False
        return urlparse(base_url).scheme == "https"
    ca = _path(config, "tls_ca_cert", found)
    cert = _path(config, "tls_client_cert", found)
    key = _path(config, "tls_client_key", found)
    verify = _bool(config, "tls_verify")
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
    check_config(connection_string, config)
    base_url = _normalise_base_url(connection_string)
    found: list[str] = []
    tls = _tls(config, base_url, not (connection_string or "").strip(), found)
    use_ssh_client = _bool(config, "use_ssh_client")
    if urlparse(base_url).scheme == "ssh":
        if use_ssh_client and not shutil.which("ssh"):
            raise ConfigurationError("use_ssh_client is set but there is no ssh binary on PATH")
        if not use_ssh_client and importlib.util.find_spec("paramiko") is None:
            raise ConfigurationError(
                "ssh:// hosts need paramiko (pip install paramiko) or use_ssh_client: true"
            )
    kwargs = {
        "api_timeout": _number(config, "api_timeout"),
        "allow_pull": _bool(config, "allow_pull"),
        "pull_timeout": _number(config, "pull_timeout"),
        "network": _validate_network(config.get("network", "bridge")),
        "runtime": config.get("runtime"),
        "read_only": _bool(config, "read_only"),
        "tmpfs_size_mb": int(_number(config, "tmpfs_size_mb")),
        "tls": tls,
        "use_ssh_client": use_ssh_client,
        "max_pool_size": int(_number(config, "max_pool_size")),
        "api_version": config.get("api_version", "auto"),
    }
    return DockerSettings(base_url, kwargs, found)
