"""Host choice as a table: due jobs in claim order, hosts with free slots."""

from __future__ import annotations

import pytest

from reconciler.hosts import HostSlots, assign

A, B, C = HostSlots(1, "a", 2, capacity=2), HostSlots(2, "b", 1, capacity=1), HostSlots(3, "c", 0, capacity=1)
BIG = HostSlots(1, "big", 30, capacity=30)
SMALL = [HostSlots(pk, f"small-{pk}", 10, capacity=10) for pk in (2, 3, 4)]

# (case, jobs as (id, pinned host pk), hosts, expected placement)
CASES = [
    ("nothing to place", [], [A, B], {}),
    ("no host", [(10, None)], [], {}),
    (
        "unpinned go to the least loaded host, spreading (equal load: more free slots first)",
        [(10, None), (11, None), (12, None)],
        [A, B],
        {10: 1, 11: 2, 12: 1},
    ),
    (
        "least loaded is the largest share of slots free, not the most free slots",
        [(10, None)],
        [HostSlots(1, "big", 6, capacity=20), HostSlots(2, "small", 4, capacity=4)],
        {10: 2},
    ),
    (
        "a burst spreads in proportion to capacity, not into the largest host first",
        [(job, None) for job in range(10, 18)],
        [BIG, *SMALL],
        {10: 1, 11: 2, 12: 3, 13: 4, 14: 1, 15: 1, 16: 1, 17: 2},
    ),
    ("ties go by name", [(10, None)], [HostSlots(2, "b", 1, 1), HostSlots(1, "a", 1, 1)], {10: 1}),
    (
        "beyond the free slots, jobs wait",
        [(10, None), (11, None), (12, None), (13, None)],
        [A, B],
        {10: 1, 11: 2, 12: 1},
    ),
    ("pinned goes to its own host", [(10, 2)], [A, B], {10: 2}),
    ("pinned to a full host waits, the others still go", [(10, 3), (11, None)], [A, C], {11: 1}),
    ("pinned to a host not offered (inactive, unhealthy) waits", [(10, 9)], [A], {}),
    (
        "pinned jobs take their host's slots first come first served",
        [(10, 2), (11, 2), (12, None)],
        [A, B],
        {10: 2, 12: 1},
    ),
    ("an unpinned job never takes a full host", [(10, None)], [C], {}),
]


@pytest.mark.parametrize(("case", "jobs", "hosts", "expected"), CASES, ids=[c[0] for c in CASES])
def test_assign(
    case: str, jobs: list[tuple[int, int | None]], hosts: list[HostSlots], expected: dict[int, int]
) -> None:
    assert assign(jobs, hosts) == expected
