"""Capability flags are read, or they do not exist: a flag nobody reads is a false promise.

Each boolean class attribute of ``Executor`` must be read somewhere outside ``executors/``
(the reconciler or the app), and each backend's ``kind`` is the ``executor_type`` it is
registered under.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from executors import registry
from executors.base import Executor

ROOT = Path(__file__).resolve().parents[2]
READERS = ("reconciler", "container_manager", "metrics")
FLAGS = sorted(name for name, value in vars(Executor).items() if isinstance(value, bool))


def test_the_interface_has_exactly_the_flags_the_system_reads() -> None:
    assert FLAGS == ["enforces_timeout", "supports_events", "supports_stats"]


@pytest.mark.parametrize("flag", FLAGS)
def test_each_flag_is_read_outside_the_executors(flag: str) -> None:
    pattern = re.compile(rf"\.{flag}\b")
    readers = [
        path.relative_to(ROOT)
        for package in READERS
        for path in (ROOT / package).rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert readers, f"nothing outside executors/ reads Executor.{flag}: remove it or use it"


@pytest.mark.parametrize("executor_type", sorted(registry.BACKENDS))
def test_kind_is_the_registered_executor_type(executor_type: str) -> None:
    assert registry.backend_class(executor_type).kind == executor_type
