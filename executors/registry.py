"""Builds (and caches) the executor for an ``ExecutorHost`` row.

Backends are found by ``executor_type`` through a table of import paths, so importing this
module never imports the Docker or Google SDKs. One executor instance is kept per host and
configuration, because clients hold connection pools and the mock keeps its containers in
memory.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from executors.base import Executor
from executors.exceptions import ConfigurationError

#: executor_type -> "module:Class"; the class has ``from_config(connection_string, config, name)``.
BACKENDS: dict[str, str] = {
    "docker": "executors.docker:DockerExecutor",
    "cloudrun": "executors.cloudrun:CloudRunExecutor",
    "mock": "executors.mock:MockExecutor",
}


class HostLike(Protocol):
    pk: Any
    name: str
    executor_type: str
    connection_string: str
    executor_config: Mapping[str, Any]


_cache: dict[tuple[Any, ...], Executor] = {}
_lock = threading.Lock()
#: Run before an executor is built from a row; raises ``ConfigurationError`` to refuse it.
#: The Django app installs its settings-based check here (``set_host_check``) at start-up.
_host_check: Callable[[HostLike], None] | None = None


def set_host_check(check: Callable[[HostLike], None] | None) -> None:
    """Install (or remove, with None) the check every host row passes before it is built."""
    global _host_check
    _host_check = check


def backend_class(executor_type: str) -> type[Executor]:
    try:
        path = BACKENDS[executor_type]
    except KeyError:
        raise ConfigurationError(
            f"unknown executor_type {executor_type!r}; expected one of {sorted(BACKENDS)}"
        ) from None
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"executor {executor_type!r} is not installed: {exc}") from exc
    cls: type[Executor] = getattr(module, class_name)
    return cls


def _key(host: HostLike) -> tuple[Any, ...]:
    config = json.dumps(dict(host.executor_config or {}), sort_keys=True, default=str)
    return (host.pk, host.executor_type, host.connection_string, config)


def get_executor(host: HostLike) -> Executor:
    """The executor for ``host``, created on first use and reused while its config is unchanged."""
    key = _key(host)
    with _lock:
        executor = _cache.get(key)
        if executor is not None:
            return executor
        stale = [k for k in _cache if k[0] == host.pk]
        for k in stale:
            _cache.pop(k).close()
    if _host_check is not None:
        _host_check(host)
    cls = backend_class(host.executor_type)
    executor = cls.from_config(host.connection_string, dict(host.executor_config or {}), host.name)
    with _lock:
        # Another thread may have built one meanwhile; keep the first.
        existing = _cache.setdefault(key, executor)
    if existing is not executor:
        executor.close()
    return existing


def built() -> list[Executor]:
    """The executors in use now (one per host whose executor was asked for), for the metrics."""
    with _lock:
        return list(_cache.values())


def forget(host_pk: Any | None = None) -> None:
    """Drop cached executors (all, or one host's): used by tests and after host deletion."""
    with _lock:
        keys = [k for k in _cache if host_pk is None or k[0] == host_pk]
        executors = [_cache.pop(k) for k in keys]
    for executor in executors:
        executor.close()
