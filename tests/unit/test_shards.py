"""How a replica shares the hosts out: ``shards.plan`` as a table, and ``AllHosts``."""

from __future__ import annotations

import pytest

from reconciler.shards import AllHosts, ShardState, plan

SETTLE = 10.0
OLD = 60.0  # seconds a member has been up: settled


def state(hosts: dict[int, str | None], members: dict[str, float]) -> ShardState:
    return ShardState(hosts, members)


# (case, held, state, since last hand-over, expected (take, hand over))
CASES = [
    (
        "alone: take every free host",
        [],
        state({1: None, 2: None, 3: None}, {"me": 0.0}),
        99.0,
        ([1, 2, 3], []),
    ),
    (
        "two members: take a fair share, the free ones with the lowest pks",
        [],
        state({1: None, 2: None, 3: None, 4: None}, {"me": OLD, "b": OLD}),
        99.0,
        ([1, 2], []),
    ),
    (
        "at the fair share: nothing moves",
        [1, 2],
        state({1: "me", 2: "me", 3: "b", 4: "b"}, {"me": OLD, "b": OLD}),
        99.0,
        ([], []),
    ),
    (
        "hosts held by others are never taken",
        [1],
        state({1: "me", 2: "b", 3: "b", 4: "b"}, {"me": OLD, "b": OLD}),
        99.0,
        ([], []),
    ),
    (
        "above the fair share, settled: hand one host over (the highest pk)",
        [1, 2, 3, 4],
        state({1: "me", 2: "me", 3: "me", 4: "me"}, {"me": OLD, "b": OLD}),
        99.0,
        ([], [4]),
    ),
    (
        "above the fair share, a member just joined: wait (hysteresis)",
        [1, 2, 3, 4],
        state({1: "me", 2: "me", 3: "me", 4: "me"}, {"me": OLD, "b": 1.0}),
        99.0,
        ([], []),
    ),
    (
        "above the fair share, last hand-over too recent: wait",
        [1, 2, 3],
        state({1: "me", 2: "me", 3: "me", 4: None}, {"me": OLD, "b": OLD}),
        3.0,
        ([], []),
    ),
    (
        "an odd host out: at 2 against 1, nobody hands over",
        [1, 2],
        state({1: "me", 2: "me", 3: "b"}, {"me": OLD, "b": OLD}),
        99.0,
        ([], []),
    ),
    (
        "4 hosts, 3 members at 2-2-0: hand one over (two more than the fewest)",
        [1, 2],
        state({1: "me", 2: "me", 3: "b", 4: "b"}, {"me": OLD, "b": OLD, "c": OLD}),
        99.0,
        ([], [2]),
    ),
    (
        "4 hosts, 3 members at 2-1-1: stable",
        [1, 2],
        state({1: "me", 2: "me", 3: "b", 4: "c"}, {"me": OLD, "b": OLD, "c": OLD}),
        99.0,
        ([], []),
    ),
    (
        "a dead member's hosts are free: take up to the fair share",
        [1],
        state({1: "me", 2: None, 3: None, 4: None}, {"me": OLD}),
        99.0,
        ([2, 3, 4], []),
    ),
    (
        "a host made inactive is handed back",
        [1, 9],
        state({1: "me", 2: "b"}, {"me": OLD, "b": OLD}),
        99.0,
        ([], [9]),
    ),
    ("no host at all", [], state({}, {"me": OLD, "b": OLD}), 99.0, ([], [])),
]


@pytest.mark.parametrize(("case", "held", "st", "since", "expected"), CASES, ids=[c[0] for c in CASES])
def test_plan(
    case: str, held: list[int], st: ShardState, since: float, expected: tuple[list[int], list[int]]
) -> None:
    take, release = plan(held, st, settle_seconds=SETTLE, since_release=since)
    assert (take, release) == expected


def test_plan_converges_for_two_replicas_from_one_holding_everything() -> None:
    """Both replicas applying plan() in turn end at a fair split and stay there."""
    hosts = [1, 2, 3, 4, 5]
    held = {"a": set(hosts), "b": set()}
    for _ in range(10):
        for me in ("a", "b"):
            owner = {pk: next((r for r, h in held.items() if pk in h), None) for pk in hosts}
            take, release = plan(
                sorted(held[me]),
                ShardState(owner, {"a": OLD, "b": OLD}),
                settle_seconds=SETTLE,
                since_release=99.0,
            )
            held[me] |= set(take)
            held[me] -= set(release)
    assert sorted(len(h) for h in held.values()) == [2, 3]
    assert held["a"].isdisjoint(held["b"]) and held["a"] | held["b"] == set(hosts)


def test_plan_converges_for_three_replicas_joining_one_by_one() -> None:
    hosts = [1, 2, 3, 4]
    held: dict[str, set[int]] = {"a": set(), "b": set(), "c": set()}
    members: dict[str, float] = {}
    for joining in ("a", "b", "c"):
        members[joining] = OLD
        for _ in range(12):
            for me in list(members):
                owner = {pk: next((r for r, h in held.items() if pk in h), None) for pk in hosts}
                take, release = plan(
                    sorted(held[me]),
                    ShardState(owner, dict(members)),
                    settle_seconds=SETTLE,
                    since_release=99.0,
                )
                held[me] |= set(take)
                held[me] -= set(release)
    assert sorted(len(h) for h in held.values()) == [1, 1, 2]
    assert set().union(*held.values()) == set(hosts)


def test_all_hosts_drives_every_host_or_the_named_ones() -> None:
    assert AllHosts().owns(1, "a") and AllHosts().owns(None, None)
    named = AllHosts(["a"])
    assert named.owns(1, "a") and not named.owns(2, "b")
    assert str(named.host_q("executor_host__")) == "(AND: ('executor_host__name__in', ['a']))"
