"""Sharding by executor host: replicas share the hosts, and each host is driven by exactly one.

Replicas on one PostgreSQL database hold one lease row per host (``LeaderLease`` named
``<lease>:host:<pk>``) with the guarantees of the leader lease in ``reconciler.leader``: the
holder renews its leases every TTL/5 and counts a host as its own only until ``renew start +
TTL`` on its own monotonic clock; another replica takes a lease over when it has expired or its
holder's database session is gone, and bumps the epoch (the fencing token); and every
status-changing transaction on a job of that host re-reads the row ``FOR SHARE`` and aborts
unless it still names this replica and epoch (``fence``). A replica that loses a host stops
touching it at once: its steps skip the host's jobs, its executor calls are refused, its
watcher stops.

Replicas announce themselves with member rows (``<lease>:member:<holder>``), renewed the same
way. Each aims at a fair share, ceil(active hosts / live members): below it, it takes hosts
nobody holds; above it, it hands one host over per settle period, and only once every member
has been up for a settle period, so that a restarting replica does not make hosts flap. A dead
replica's hosts are free as soon as its session is gone, or at the latest when its leases
expire.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from django.db.models import Q

from container_manager.transitions import Fenced
from metrics import definitions as m
from reconciler.leader import CREATE_LEASE_SQL, TABLE, GuardedExecutor, LeaseSession, new_holder

log = structlog.get_logger("reconciler.shards")

_ALIVE = """(l.expires_at > clock_timestamp() AND l.backend_pid IS NOT NULL
             AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.backend_pid))"""

_UPSERT_MEMBER = f"""
INSERT INTO {TABLE} AS l (name, holder, epoch, backend_pid, acquired_at, renewed_at, expires_at)
VALUES (%(name)s, %(holder)s, 1, pg_backend_pid(), clock_timestamp(), clock_timestamp(),
        clock_timestamp() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE
   SET renewed_at = clock_timestamp(), backend_pid = pg_backend_pid(),
       expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
RETURNING EXTRACT(EPOCH FROM (clock_timestamp() - l.acquired_at))::float8
"""
_RENEW = f"""
UPDATE {TABLE}
   SET renewed_at = clock_timestamp(), backend_pid = pg_backend_pid(),
       expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
 WHERE name = ANY(%(names)s) AND holder = %(holder)s AND expires_at > clock_timestamp()
RETURNING name, epoch
"""
_TAKE = f"""
UPDATE {TABLE} AS l
   SET holder = %(holder)s, epoch = l.epoch + 1, backend_pid = pg_backend_pid(),
       acquired_at = clock_timestamp(), renewed_at = clock_timestamp(),
       expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
 WHERE l.name = %(name)s AND NOT {_ALIVE}
RETURNING l.epoch
"""
_RELEASE = f"""
UPDATE {TABLE} SET expires_at = clock_timestamp(), backend_pid = NULL
 WHERE name = ANY(%(names)s) AND holder = %(holder)s
"""
# Everything one round needs to know, in one statement: the active hosts, who holds each (and
# whether that holder is alive), and how long each live member has been up.
_STATE = f"""
SELECT 'host', h.id::text, l.holder, COALESCE({_ALIVE}, false), 0::float8
  FROM container_manager_executorhost h
  LEFT JOIN {TABLE} l ON l.name = %(prefix)s || 'host:' || h.id::text
 WHERE h.is_active AND (%(names)s::text[] IS NULL OR h.name = ANY(%(names)s::text[]))
UNION ALL
SELECT 'member', l.name, l.holder, true,
       EXTRACT(EPOCH FROM (clock_timestamp() - l.acquired_at))::float8
  FROM {TABLE} l
 WHERE starts_with(l.name, %(members)s) AND {_ALIVE}
"""
# The fence: the host leases this transaction writes under, share-locked until it ends (a
# takeover then waits for it); set_config(..., true) lasts for this transaction only: a replica
# paused inside it loses its session after the TTL, so nobody waits on it for longer.
_FENCE = f"""
SELECT l.name
  FROM {TABLE} AS l, set_config('idle_in_transaction_session_timeout', %(timeout)s, true) AS s
 WHERE (l.name, l.epoch) IN (SELECT * FROM unnest(%(names)s::text[], %(epochs)s::bigint[]))
   AND l.holder = %(holder)s AND l.expires_at > clock_timestamp()
   FOR SHARE OF l
"""


@dataclass(frozen=True)
class Held:
    epoch: int
    #: monotonic time until which the lease is certainly ours.
    valid_until: float


@dataclass(frozen=True)
class ShardState:
    """One round's view of the database."""

    #: active host pk -> its live holder (None: free).
    hosts: dict[int, str | None]
    #: live member holder -> seconds it has been up.
    members: dict[str, float]

    def fair_share(self) -> int:
        return math.ceil(len(self.hosts) / max(1, len(self.members)))


def plan(
    held: Collection[int], state: ShardState, *, settle_seconds: float, since_release: float
) -> tuple[list[int], list[int]]:
    """(hosts to take, hosts to hand over) in one round; pure, so a table test covers it.

    Take free hosts (lowest pk first) while below the fair share, ceil(hosts / members). Hand
    one host over while above it, or while holding two more than the member holding the fewest
    (4 hosts on 3 replicas end 2-1-1, not 2-2-0), but only when every member has been up for
    ``settle_seconds`` and the last hand-over is at least that old. Hosts no longer active are
    always handed back.
    """
    inactive = sorted(pk for pk in held if pk not in state.hosts)
    mine = [pk for pk in held if pk in state.hosts]
    fair = state.fair_share()
    if len(mine) < fair:
        free = sorted(pk for pk, holder in state.hosts.items() if holder is None)
        return free[: fair - len(mine)], inactive
    counts = {member: 0 for member in state.members}
    for holder in state.hosts.values():
        if holder in counts:
            counts[holder] += 1
    fewest = min(counts.values(), default=len(mine))
    uneven = len(mine) > fair or len(mine) - fewest >= 2
    settled = all(age >= settle_seconds for age in state.members.values())
    if uneven and settled and since_release >= settle_seconds:
        return [], [*inactive, max(mine)]
    return [], inactive


class HostScope(Protocol):
    """Which hosts this replica drives (``AllHosts`` or ``HostShards``)."""

    kind: str

    def start(self) -> None: ...

    def stop(self, *, release: bool = True) -> None: ...

    def owns(self, host_pk: int | None, name: str | None = None) -> bool: ...

    def host_q(self, prefix: str = "") -> Q: ...

    def others(self) -> frozenset[int]:
        """Hosts other live replicas drive (as of the last look): unpinned jobs are placed over
        these and this replica's own, and the ones placed on another's host are left to it."""
        ...

    def describe(self) -> str: ...


class AllHosts:
    """No sharing: this replica drives every host (it is the only one), or those ``--host`` names.

    Like ``HostShards`` it answers which hosts this replica drives: ``owns()`` for one host,
    ``host_q()`` to select them in a query (``prefix`` reaches the host through a relation).
    """

    kind = "all"

    def __init__(self, host_names: Collection[str] | None = None) -> None:
        self.names = frozenset(host_names) if host_names else None

    def start(self) -> None:
        """Nothing to acquire."""

    def stop(self, *, release: bool = True) -> None:
        """Nothing to release."""

    def owns(self, host_pk: int | None, name: str | None = None) -> bool:
        return self.names is None or name in self.names

    def host_q(self, prefix: str = "") -> Q:
        return Q() if self.names is None else Q(**{f"{prefix}name__in": sorted(self.names)})

    def others(self) -> frozenset[int]:
        return frozenset()

    def heartbeat(self) -> float:
        return time.monotonic()

    def describe(self) -> str:
        return "drives every host" if self.names is None else f"drives hosts {sorted(self.names)}"


class HostShards(LeaseSession):
    """This replica's share of the hosts (PostgreSQL), renewed by a thread of its own."""

    kind = "shards"

    def __init__(
        self,
        *,
        name: str,
        holder: str | None = None,
        ttl: float = 5.0,
        renew_every: float | None = None,
        settle_seconds: float | None = None,
        connect: Callable[[], Any],
        on_change: Callable[[set[int], set[int]], None] | None = None,
        host_names: Collection[str] | None = None,
    ) -> None:
        self.name = name
        self.holder = holder or new_holder()
        self.ttl = float(ttl)
        self.renew_every = renew_every or max(0.05, self.ttl / 5)
        #: how long members must have been up, and hand-overs apart, before hosts move again.
        self.settle_seconds = settle_seconds if settle_seconds is not None else 2 * self.ttl
        self._connect = connect
        #: called with (gained, lost) host pks after a round that changed them.
        self.on_change = on_change
        #: only these hosts (by name) are shared out; None: every active host.
        self.host_names = sorted(host_names) if host_names else None
        self._conn: Any = None
        self._held: dict[int, Held] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_release = -math.inf
        self._heartbeat = time.monotonic()
        self.state: ShardState | None = None

    # Lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Announce this replica, then run rounds in a thread (the first after one interval, so
        replicas that start together see each other before they take hosts)."""
        with self._lock:
            self._connection().execute(_UPSERT_MEMBER, self._params(name=self._member()))
        self._thread = threading.Thread(target=self._loop, name="cm-shards", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.ttl + 5)
        with self._lock:
            names = [self._host(pk) for pk in self._held] + [self._member()]
            lost = set(self._held)
            self._held.clear()
            if release:
                try:
                    self._connection().execute(_RELEASE, self._params(names=names))
                except Exception as exc:
                    log.warning("could not release the host leases; they will expire", error=str(exc))
            self._drop()
        m.HOSTS_OWNED.set(0)
        if lost and self.on_change is not None:
            self.on_change(set(), lost)

    # Queries --------------------------------------------------------------------------

    def owns(self, host_pk: int | None, name: str | None = None) -> bool:
        held = self._held.get(host_pk) if host_pk is not None else None
        return held is not None and time.monotonic() < held.valid_until

    def host_q(self, prefix: str = "") -> Q:
        return Q(**{f"{prefix}pk__in": sorted(self.owned())})

    def others(self) -> frozenset[int]:
        state = self.state
        if state is None:
            return frozenset()
        return frozenset(pk for pk, holder in state.hosts.items() if holder not in (None, self.holder))

    def owned(self) -> frozenset[int]:
        now = time.monotonic()
        return frozenset(pk for pk, held in list(self._held.items()) if now < held.valid_until)

    def heartbeat(self) -> float:
        return self._heartbeat

    def describe(self) -> str:
        owned = sorted(self.owned())
        members = len(self.state.members) if self.state else 1
        if not owned:
            return f"replica of {members}: drives no host yet (lease {self.name!r})"
        return f"replica of {members}: drives hosts {owned} (lease {self.name!r})"

    def fence(self, host_pks: Collection[int], cursor: Any) -> bool:
        """Inside the caller's transaction: are these hosts still ours? Share-locks their leases."""
        held = [(pk, self._held.get(pk)) for pk in set(host_pks)]
        if any(h is None or time.monotonic() >= h.valid_until for _, h in held):
            return False
        names = [self._host(pk) for pk, _ in held]
        epochs = [h.epoch for _, h in held if h is not None]
        cursor.execute(
            _FENCE,
            {
                "timeout": str(max(1000, int(self.ttl * 1000))),
                "names": names,
                "epochs": epochs,
                "holder": self.holder,
            },
        )
        return len(cursor.fetchall()) == len(names)

    # Rounds ---------------------------------------------------------------------------

    def round(self) -> None:
        """Renew, look, take and hand over once. Raises database errors."""
        with self._lock:
            if self._stopping.is_set():
                return
            conn = self._connection()
            started = time.monotonic()
            before = set(self.owned())
            conn.execute(_UPSERT_MEMBER, self._params(name=self._member()))
            self._renew(conn, started)
            state = self._read_state(conn)
            take, release = plan(
                list(self._held),
                state,
                settle_seconds=self.settle_seconds,
                since_release=started - self._last_release,
            )
            for pk in take:
                self._take(conn, pk, started)
            if release:
                conn.execute(_RELEASE, self._params(names=[self._host(pk) for pk in release]))
                for pk in release:
                    self._held.pop(pk, None)
                self._last_release = started
            self.state = state
            self._heartbeat = time.monotonic()
            after = set(self.owned())
        m.HOSTS_OWNED.set(len(after))
        gained, lost = after - before, before - after
        if gained:
            m.HOST_LEASE_CHANGES.labels("gained").inc(len(gained))
        if lost:
            m.HOST_LEASE_CHANGES.labels("lost").inc(len(lost))
        if (gained or lost) and self.on_change is not None:
            log.info("host leases changed", gained=sorted(gained), lost=sorted(lost), owned=sorted(after))
            self.on_change(gained, lost)

    def _renew(self, conn: Any, started: float) -> None:
        if not self._held:
            return
        names = {self._host(pk): pk for pk in self._held}
        rows = conn.execute(_RENEW, self._params(names=list(names))).fetchall()
        renewed = {names[name]: int(epoch) for name, epoch in rows}
        for pk in list(self._held):
            epoch = renewed.get(pk)
            if epoch is None or epoch != self._held[pk].epoch:
                log.warning("host lease lost", host=pk)
                del self._held[pk]
            else:
                self._held[pk] = Held(epoch, started + self.ttl)

    def _read_state(self, conn: Any) -> ShardState:
        rows = conn.execute(
            _STATE, {"prefix": f"{self.name}:", "members": f"{self.name}:member:", "names": self.host_names}
        ).fetchall()
        hosts: dict[int, str | None] = {}
        members: dict[str, float] = {}
        for kind, key, holder, alive, age in rows:
            if kind == "host":
                hosts[int(key)] = holder if alive else None
            else:
                members[str(holder)] = float(age)
        members.setdefault(self.holder, 0.0)
        for pk in self._held:
            if pk in hosts:
                hosts[pk] = self.holder
        return ShardState(hosts, members)

    def _take(self, conn: Any, pk: int, started: float) -> None:
        params = self._params(name=self._host(pk))
        row = conn.execute(_TAKE, params).fetchone() or conn.execute(CREATE_LEASE_SQL, params).fetchone()
        if row is not None:
            self._held[pk] = Held(int(row[0]), started + self.ttl)
            log.info("host lease taken", host=pk, epoch=int(row[0]))

    def _loop(self) -> None:
        self._stopping.wait(self.renew_every)
        while not self._stopping.is_set():
            try:
                self.round()
            except Exception as exc:
                log.warning("host leases: database error", error=f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self._drop()
            self._stopping.wait(self.renew_every)

    # Plumbing -------------------------------------------------------------------------

    def _host(self, pk: int) -> str:
        return f"{self.name}:host:{pk}"

    def _member(self) -> str:
        # Holders embed the host name, which may be long: the row name stays within its 100 characters.
        return f"{self.name}:member:{hashlib.sha256(self.holder.encode()).hexdigest()[:16]}"

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"holder": self.holder, "ttl": self.ttl, **extra}

    def _open(self) -> Any:
        return self._connect()


def guard_hosts(executor_for: Callable[[Any], Any], scope: HostShards) -> Callable[[Any], Any]:
    """Wrap an ``executor_for(host)`` factory: launch, stop and remove on a host this replica does
    not hold (any more) raise ``Fenced`` before anything reaches the host."""

    def make(host: Any) -> Any:
        def guard() -> None:
            if not scope.owns(host.pk):
                raise Fenced(f"this replica does not hold the lease of host {host.name!r}")

        return GuardedExecutor(executor_for(host), guard)

    return make
