"""The project's one backoff formula (``executors.backoff``)."""

from __future__ import annotations

import math
import random

import pytest

from executors.backoff import MAX_BACKOFF_SECONDS, backoff_seconds


def test_keyed_delays_are_reproducible_capped_and_within_equal_jitter() -> None:
    delays = [backoff_seconds("job-7", n, 2.0, 60.0) for n in range(1, 12)]
    assert delays == [backoff_seconds("job-7", n, 2.0, 60.0) for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2.0 * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(backoff_seconds(key, 1, 2.0, 60.0), 6) for key in range(50)}) > 40, "keys spread"


def test_a_key_reproduces_the_seeded_draw() -> None:
    # The draw is random.Random(f"{key}:{attempt}"): jobs keep the schedule they always had.
    u = random.Random("42:3").random()
    assert backoff_seconds(42, 3, 5.0, 300.0) == pytest.approx(20.0 * (0.5 + 0.5 * u))


def test_without_a_key_the_delay_is_random_within_the_same_bounds() -> None:
    delays = {backoff_seconds(None, 3, 1.0, 10.0) for _ in range(50)}
    assert len(delays) > 1
    assert all(2.0 <= d <= 4.0 for d in delays)


@pytest.mark.parametrize(("jitter", "low"), [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0), (7.0, 0.0), (-1.0, 1.0)])
def test_jitter_sets_how_far_below_the_nominal_delay_a_pause_may_fall(jitter: float, low: float) -> None:
    for key in range(30):
        delay = backoff_seconds(key, 2, 0.05, 5.0, jitter=jitter)
        assert 0.1 * low <= delay <= 0.1
    assert backoff_seconds(None, 4, 0.05, 2.0, jitter=0.0) == 0.4  # plain doubling


@pytest.mark.parametrize(
    ("base", "cap"),
    [(1e12, 1e12), (math.inf, math.inf), (math.nan, 5.0), (-5.0, 10.0), (5.0, -1.0)],
)
@pytest.mark.parametrize("attempt", [-3, 0, 1, 2, 20, 10_000])
def test_absurd_arguments_stay_computable(base: float, cap: float, attempt: int) -> None:
    delay = backoff_seconds("k", attempt, base, cap, jitter=math.nan)
    assert 0 <= delay <= MAX_BACKOFF_SECONDS
