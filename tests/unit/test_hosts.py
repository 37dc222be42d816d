"""Host choice as a table: due jobs in claim order, hosts with free slots."""

from __future__ import annotations

import pytest

from reconciler.hosts import HostSlots, assign

A, B, C = HostSlots(1, "a", 2), HostSlots(2, "b", 1), HostSlots(3, "c", 0)

# (case, jobs as (id, pinned host pk), hosts, expected placement)
CASES = [
    ("nothing to place", [], [A, B], {}),
    ("no host", [(10, None)], [], {}),
    (
        "unpinned go where most slots are free, spreading",
        [(10, None), (11, None), (12, None)],
        [A, B],
        {10: 1, 11: 1, 12: 2},
    ),
    ("ties go by name", [(10, None)], [HostSlots(2, "b", 1), HostSlots(1, "a", 1)], {10: 1}),
    (
        "beyond the free slots, jobs wait",
        [(10, None), (11, None), (12, None), (13, None)],
        [A, B],
        {10: 1, 11: 1, 12: 2},
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
