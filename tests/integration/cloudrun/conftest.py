"""Fixtures: a fake Run Admin API v2 on 127.0.0.1 and Cloud Run executors pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from executors.cloudrun import CloudRunExecutor
from tests.fakes.cloudrun import FakeCloudRun


@pytest.fixture
def fake_cloudrun() -> Iterator[FakeCloudRun]:
    # time_scale 0.2: "sleep 1" runs 0.2 s, a 1 s task timeout fires after 0.2 s.
    with FakeCloudRun(time_scale=0.2) as fake:
        yield fake


@pytest.fixture
def make_executor(fake_cloudrun: FakeCloudRun) -> Iterator[Callable[..., CloudRunExecutor]]:
    made: list[CloudRunExecutor] = []

    def make(**overrides: Any) -> CloudRunExecutor:
        executor = CloudRunExecutor.from_config(
            fake_cloudrun.connection_string, fake_cloudrun.executor_config(**overrides), "cloudrun-test"
        )
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.close()


@pytest.fixture
def executor(make_executor: Callable[..., CloudRunExecutor]) -> CloudRunExecutor:
    return make_executor()
