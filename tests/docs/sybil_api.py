"""Sybil wiring for ``API.md``: its Python examples run, in order, in one namespace, on the test database.

* A fenced ``python`` block runs everywhere: the examples use the in-memory mock executor.
* A block placed right after an ``<!-- docker -->`` comment needs a Docker daemon. It is marked
  ``docker`` and, like the other Docker tests, skipped on a machine without one and failed in CI
  (``CI`` set in the environment). CI has Docker, so these blocks run there on every build.
  Each of them is self-contained, so ``pytest API.md -m docker`` runs just those.
* A block placed right after an ``<!-- django6 -->`` comment uses ``django.tasks``: it runs on
  Django 6 and is skipped, saying so, on Django 5.2 (CI runs the suite on both).
* ``<!-- invisible-code-block: python ... -->`` blocks run without being rendered; they call
  what a rendered example only defines (for example the test function in "Testing your
  integration").
* Blocks in other languages do not run; ``tests/docs/test_api_commands.py`` checks the command
  lines in them against the real commands' parsers and ``--help``.

Examples share the document's namespace and see the rows earlier examples created: the test
database is unblocked for the whole document (autocommit, as in production, so signals sent
"after commit" fire at once) and flushed when the document is done. The repository's root
``conftest.py`` imports the hooks below, because only a conftest at or above ``API.md`` can
collect it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from sybil import Document, Example, Region, Sybil
from sybil.integration.pytest import SybilItem
from sybil.parsers.markdown import PythonCodeBlockParser

DOCKER_MARKER = "<!-- docker -->"
DJANGO6_MARKER = "<!-- django6 -->"

_docker_state: dict[str, bool] = {}


def docker_is_available() -> bool:
    if "available" not in _docker_state:
        from tests.components import docker_available

        _docker_state["available"] = docker_available()
    return _docker_state["available"]


class DockerEvaluator:
    """Runs a block only where a Docker daemon answers (skip on a laptop, fail in CI)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, example: Example) -> Any:
        from tests.components import require

        require(docker_is_available(), "Docker daemon")
        return self.inner(example)


class Django6Evaluator:
    """Runs a block only on Django 6 and later (``django.tasks``); skips it on older versions."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, example: Example) -> Any:
        import django

        if django.VERSION < (6, 0):
            pytest.skip(f"needs django.tasks (Django 6.0 or later); this is Django {django.get_version()}")
        return self.inner(example)


class ApiDocParser:
    """Python code blocks (and ``>>>`` sessions); a ``<!-- docker -->`` or ``<!-- django6 -->``
    comment before a block marks it."""

    def __init__(self) -> None:
        self.python = PythonCodeBlockParser()

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.python(document):
            before = document.text[: region.start].rstrip()
            if before.endswith(DOCKER_MARKER):
                region.evaluator = DockerEvaluator(region.evaluator)
            elif before.endswith(DJANGO6_MARKER):
                region.evaluator = Django6Evaluator(region.evaluator)
            yield region


def is_docker_item(item: pytest.Item) -> bool:
    return isinstance(item, SybilItem) and isinstance(item.example.region.evaluator, DockerEvaluator)


def _reset_process_state() -> None:
    from executors import registry
    from reconciler import api

    registry.forget()
    api.reset()


def _remove_leftover_containers(instance: str) -> None:
    """Containers of this run on a real Docker host (an example that failed half-way)."""
    from container_manager.models import ExecutorHost
    from executors.exceptions import ExecutorError

    for host in ExecutorHost.objects.filter(executor_type="docker"):
        try:
            executor = host.get_executor()
            for observed in executor.list_managed(instance):
                executor.remove(observed.name)
        except ExecutorError:
            continue


@contextmanager
def _test_database(session: pytest.Session) -> Iterator[None]:
    """Make sure the default connection uses the test database, never the configured one.

    pytest-django creates it only when a collected test asks for it (``db``, ``django_db``...),
    deciding from the session's items; the document's examples do not ask that way, so when
    they run alone the test database is created here (the same way) and dropped afterwards.
    """
    from django.test.utils import setup_databases, teardown_databases
    from pytest_django.fixtures import _get_databases_for_setup

    aliases, _ = _get_databases_for_setup(session.items)
    if "default" in aliases:
        yield  # pytest-django's django_db_setup has created it
        return
    config = setup_databases(verbosity=0, interactive=False, aliases={"default"})  # type: ignore[arg-type]
    try:
        yield
    finally:
        teardown_databases(config, verbosity=0)


@pytest.fixture(scope="module")
def api_doc_environment(
    request: pytest.FixtureRequest, django_db_setup: Any, django_db_blocker: Any
) -> Iterator[None]:
    """The database, settings and process state the examples of one document share."""
    from django.core.management import call_command
    from django.test import override_settings

    from container_manager import signals as cm_signals
    from container_manager.logconfig import configure

    # A label of our own, so Docker containers of this run never meet another run's.
    instance = f"docs-{uuid4().hex[:8]}"
    saved_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    doc_signals = [getattr(cm_signals, name) for name in cm_signals.__dict__ if name.startswith("job_")]
    saved_receivers = {sig: list(sig.receivers) for sig in doc_signals}
    with (
        django_db_blocker.unblock(),
        _test_database(request.session),
        override_settings(CONTAINER_MANAGER={"INSTANCE": instance}),
    ):
        from django.db import connection

        name = str(connection.settings_dict["NAME"])
        assert "test" in name or "memory" in name, f"refusing to flush {name}: not a test database"
        call_command("flush", interactive=False, verbosity=0)
        _reset_process_state()
        try:
            yield
        finally:
            # process_jobs installs SIGINT/SIGTERM handlers and configures logging: undo both.
            for sig, handler in saved_handlers.items():
                signal.signal(sig, handler)
            configure("json", "WARNING")
            for sig, receivers in saved_receivers.items():
                sig.receivers[:] = receivers
                sig.sender_receivers_cache.clear()
            _remove_leftover_containers(instance)
            _reset_process_state()
            call_command("flush", interactive=False, verbosity=0)


API_DOC = Sybil(
    parsers=[ApiDocParser()],
    patterns=["API.md"],
    path=str(Path(__file__).resolve().parents[2]),
    fixtures=["api_doc_environment"],
    name="api",
)

pytest_collect_file = API_DOC.pytest()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_docker_item(item):
            item.add_marker(pytest.mark.docker)
