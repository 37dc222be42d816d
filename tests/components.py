"""Access to the real components tests need (Docker, PostgreSQL, Prometheus).

On a developer's laptop a missing component skips the tests that need it; in CI
(``CI`` set in the environment) it fails them, so a broken install can never pass as green.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def require(available: bool, what: str) -> None:
    """Skip (laptop) or fail (CI) the calling test when ``what`` is not available."""
    if available:
        return
    message = f"{what} is not available"
    if in_ci():
        pytest.fail(message + " (required in CI)", pytrace=False)
    pytest.skip(message)


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
        return True
    except Exception:
        return False


def binary_available(name: str) -> bool:
    return shutil.which(name) is not None
