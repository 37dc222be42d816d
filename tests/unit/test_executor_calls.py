"""The real backends' one call layer (``executors._calls``): translation, retries, counters."""

from __future__ import annotations

import pytest

from executors._calls import QUOTA_BACKOFF_FACTOR, Calls
from executors.exceptions import (
    Conflict,
    ExecutorError,
    HostMisconfigured,
    InvalidSpec,
    NotFound,
    QuotaExceeded,
    Unavailable,
)
from executors.types import CallCounts


class SdkError(Exception):
    """What an SDK raises; the hook below decides what it means."""

    def __init__(self, kind: type[ExecutorError], text: str = "sdk says no") -> None:
        super().__init__(text)
        self.kind = kind


def _translate(exc: BaseException) -> ExecutorError:
    if isinstance(exc, SdkError):
        return exc.kind(f"translated: {exc}")
    return ExecutorError(f"unexpected {type(exc).__name__}")


def _calls(**kwargs: object) -> tuple[Calls, list[float]]:
    settings: dict[str, object] = {"attempts": 4, "backoff": 0.1, "backoff_max": 1.0, **kwargs}
    calls = Calls(_translate, **settings)  # type: ignore[arg-type]
    sleeps: list[float] = []
    calls.sleep = sleeps.append
    return calls, sleeps


def _failing(*errors: type[ExecutorError], result: str = "ok"):  # type: ignore[no-untyped-def]
    pending = list(errors)

    def fn() -> str:
        if pending:
            raise SdkError(pending.pop(0))
        return result

    return fn


def test_transient_errors_are_retried_and_counted() -> None:
    calls, sleeps = _calls()
    assert calls.run("inspect", _failing(Unavailable, Unavailable)) == "ok"
    assert calls.counter.snapshot() == {"inspect": CallCounts(calls=3, retries=2, errors=2)}
    assert len(sleeps) == 2 and 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2


def test_a_call_that_keeps_failing_raises_the_translated_error_after_its_attempts() -> None:
    calls, sleeps = _calls(attempts=3)
    with pytest.raises(Unavailable, match="translated: sdk says no") as info:
        calls.run("start", _failing(*[Unavailable] * 5))
    assert isinstance(info.value.__cause__, SdkError)
    assert calls.counter.snapshot()["start"] == CallCounts(calls=3, retries=2, errors=3)
    assert len(sleeps) == 2


@pytest.mark.parametrize("kind", [InvalidSpec, HostMisconfigured, NotFound, Conflict])
def test_permanent_errors_and_a_refusing_host_are_not_retried(kind: type[ExecutorError]) -> None:
    calls, sleeps = _calls()
    with pytest.raises(kind):
        calls.run("create", _failing(kind))
    counts = calls.counter.snapshot()["create"]
    assert (counts.calls, counts.retries, sleeps) == (1, 0, [])
    # NotFound and Conflict are answers the verbs expect ("absent is fine", "adopt"), not errors.
    assert counts.errors == (0 if kind in (NotFound, Conflict) else 1)


def test_quota_errors_wait_longer() -> None:
    calls, sleeps = _calls(backoff=0.1, backoff_max=100.0)
    calls.run("create", _failing(QuotaExceeded))
    assert 0.1 * QUOTA_BACKOFF_FACTOR / 2 <= sleeps[0] <= 0.1 * QUOTA_BACKOFF_FACTOR


def test_retry_false_tries_once() -> None:
    calls, _ = _calls()
    with pytest.raises(Unavailable):
        calls.run("run_job", _failing(Unavailable), retry=False)
    assert calls.counter.snapshot()["run_job"] == CallCounts(1, 0, 1)


def test_hide_cause_keeps_the_sdk_exception_out_of_ours() -> None:
    calls, _ = _calls(attempts=1)
    with pytest.raises(InvalidSpec) as info:
        calls.run("create", _failing(InvalidSpec), hide_cause=True)
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_an_executor_error_raised_by_the_call_passes_through() -> None:
    calls, _ = _calls(attempts=1)

    def fn() -> None:
        raise InvalidSpec("ours already")

    with pytest.raises(InvalidSpec, match="ours already") as info:
        calls.run("pull", fn)
    assert info.value.__cause__ is None


def test_the_retry_hook_sees_each_retried_error() -> None:
    seen: list[tuple[str, int, str]] = []
    calls, _ = _calls(on_retry=lambda verb, n, error: seen.append((verb, n, type(error).__name__)))
    calls.run("stop", _failing(Unavailable, QuotaExceeded))
    assert seen == [("stop", 1, "Unavailable"), ("stop", 2, "QuotaExceeded")]


def test_pause_counts_a_retry_made_by_the_caller() -> None:
    calls, sleeps = _calls()
    calls.pause("run_job", 1, Unavailable("503"))
    assert calls.counter.snapshot() == {"run_job": CallCounts(calls=0, retries=1, errors=0)}
    assert 0.05 <= sleeps[0] <= 0.1


def test_wait_until_polls_with_doubling_pauses_then_gives_up() -> None:
    calls, sleeps = _calls()
    answers = iter([None, None, "ready"])
    assert calls.wait_until(lambda: next(answers), timeout=60, failure="never") == "ready"
    assert sleeps == [0.05, 0.1]
    with pytest.raises(Unavailable, match="still reconciling"):
        calls.wait_until(lambda: None, timeout=0, failure="still reconciling")


def test_snapshots_are_copies() -> None:
    calls, _ = _calls()
    calls.run("inspect", lambda: None)
    before = calls.counter.snapshot()
    calls.run("inspect", lambda: None)
    assert before["inspect"].calls == 1 and calls.counter.snapshot()["inspect"].calls == 2


def test_announced_verbs_are_reported_from_the_start() -> None:
    calls = Calls(_translate, attempts=1, backoff=0.1, backoff_max=1.0, verbs=("create", "inspect"))
    assert calls.counter.snapshot() == {"create": CallCounts(), "inspect": CallCounts()}
    calls.run("other", lambda: None)
    assert set(calls.counter.snapshot()) == {"create", "inspect", "other"}
