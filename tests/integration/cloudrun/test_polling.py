"""The cost of watching Cloud Run: calls per poll stay bounded, whatever else the region holds."""

from __future__ import annotations

import time
from collections.abc import Callable

from executors.cloudrun import CloudRunExecutor
from executors.types import LABEL_INSTANCE, ContainerState
from tests.fakes.cloudrun import FakeCloudRun

from .helpers import INSTANCE, make_spec, total_calls, wait_exited

MakeExecutor = Callable[..., CloudRunExecutor]


def poll(executor: CloudRunExecutor, names: list[str]) -> int:
    """One reconciler poll (list, then inspect each); returns the Google calls it made."""
    before = total_calls(executor)
    executor.list_managed(INSTANCE)
    for name in names:
        executor.inspect(name)
    return total_calls(executor) - before


def test_a_poll_costs_one_call_however_many_foreign_executions(
    make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    """A region holding 40 other jobs with 3000 executions: one ListJobs per poll in steady state."""
    fake_cloudrun.list_delay = 0
    for i in range(40):
        fake_cloudrun.add_foreign_job(f"other-team-{i}", executions=75)
    executor = make_executor(list_page_size=500)
    specs = [make_spec(f"cm-test-{i}-1", ("hang",), job=i) for i in range(30)]
    for spec in specs:
        executor.launch(spec)
    names = [s.name for s in specs]
    deadline = time.monotonic() + 5
    while not all(executor.inspect(n).started_at for n in names):  # all started: start times known
        assert time.monotonic() < deadline
        time.sleep(0.05)

    fake_cloudrun.reset_counts()
    costs = [poll(executor, names) for _ in range(3)]
    assert costs == [1, 1, 1]
    assert fake_cloudrun.calls == {"ListJobs": 3}
    managed = executor.list_managed(INSTANCE)
    assert sorted(o.name for o in managed) == sorted(names)
    assert all(o.state is ContainerState.RUNNING and o.labels[LABEL_INSTANCE] == INSTANCE for o in managed)


def test_finishing_costs_one_get_and_one_task_list_then_nothing(
    make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.list_delay = 0
    executor = make_executor(poll_interval=0)
    spec = make_spec(command=("sh", "-c", "sleep 0.2; exit 4"))
    executor.launch(spec)
    assert wait_exited(executor, spec.name).exit_code == 4
    fake_cloudrun.reset_counts()
    for _ in range(3):
        assert executor.inspect(spec.name).exit_code == 4
    assert fake_cloudrun.calls == {"GetJob": 3}  # the outcome is cached; only the job is read


def test_listing_follows_pages(make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun) -> None:
    fake_cloudrun.max_page_size = 10
    fake_cloudrun.list_delay = 0
    executor = make_executor()
    for i in range(25):
        executor.launch(make_spec(f"cm-test-{i}-1", ("hang",), job=i))
    fake_cloudrun.reset_counts()
    assert len(executor.list_managed(INSTANCE)) == 25
    assert fake_cloudrun.calls["ListJobs"] == 3


def test_lists_lag_but_inspect_reads_the_job(executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun) -> None:
    """A just-launched job is not listed yet: inspect asks for it by name."""
    fake_cloudrun.list_delay = 60
    spec = make_spec(command=("hang",))
    executor.launch(spec)
    assert executor.list_managed(INSTANCE) == []
    assert executor.inspect(spec.name).state is ContainerState.RUNNING


def test_a_job_created_but_never_run_is_listed_as_created(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    """Orphan cleanup sees it: the listing is of jobs, not of executions."""
    fake_cloudrun.list_delay = 0
    fake_cloudrun.inject("RunJob", 503, times=executor.retry_attempts)
    spec = make_spec(command=("hang",))
    try:
        executor.launch(spec)
    except Exception:
        pass
    [observed] = executor.list_managed(INSTANCE)
    assert (observed.name, observed.state) == (spec.name, ContainerState.CREATED)


def test_snapshot_expires_after_poll_interval(
    make_executor: MakeExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.list_delay = 0
    executor = make_executor(poll_interval=0.3)
    spec = make_spec(command=("sh", "-c", "sleep 0.1"))
    executor.launch(spec)
    executor.list_managed(INSTANCE)
    fake_cloudrun.reset_counts()
    executor.inspect(spec.name)
    assert fake_cloudrun.calls == {}
    time.sleep(0.35)
    assert executor.inspect(spec.name).state is ContainerState.EXITED
    assert fake_cloudrun.calls["GetJob"] == 1 and "ListJobs" not in fake_cloudrun.calls


def test_acting_on_a_job_drops_it_from_the_snapshot(
    executor: CloudRunExecutor, fake_cloudrun: FakeCloudRun
) -> None:
    fake_cloudrun.list_delay = 0
    spec = make_spec(command=("hang",))
    executor.launch(spec)
    executor.list_managed(INSTANCE)
    executor.stop(spec.name)
    assert wait_exited(executor, spec.name, timeout=3).reason_hint == "cancelled"
