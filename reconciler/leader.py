"""Leader election for several reconciler replicas on one database, with fencing.

Every replica drives the hosts it holds leases for (``reconciler.shards``, built on this
module's lease row); the leader lease decides only who runs the leader's duties (the job-table
metrics), and the others stand by for them. Why a lease row and not only an advisory lock: a session lock is released when a process dies, but a
*paused* leader (SIGSTOP, a VM freeze, a long GC) keeps its session and would block every
standby forever, then wake up and write as if nothing happened. A lease with an expiry, read
on the database clock, covers both:

* The leader renews ``LeaderLease.expires_at = clock_timestamp() + TTL`` every TTL/5 through a
  dedicated autocommit connection, and counts itself leader only until ``renew start + TTL``
  on its own monotonic clock (a conservative bound of the row's expiry).
* A standby takes the row over with one compare-and-swap ``UPDATE`` when the lease has expired
  *or* the leader's election session is gone from ``pg_stat_activity`` (so a killed leader is
  replaced within about one retry interval, not a whole TTL), and bumps ``epoch``.
* The fence (``fence``, which ``reconciler.shards`` applies per host through
  ``transitions.set_fence`` to every status-changing transaction): ``SELECT ... FOR SHARE`` of
  the lease row, which must still name this holder and epoch and
  not have expired. The row lock makes the check hold until commit: a takeover waits for
  in-flight fenced transactions, and ``idle_in_transaction_session_timeout`` (set for that
  transaction) ends the session of a leader paused inside one, so a standby is never blocked
  for longer than the TTL. Executor calls that change things (launch, stop, remove) are
  checked against the local lease bound first (``guard``): a deterministic container name
  makes a late duplicate launch an "adopt" anyway.
* Leadership is never regained by the same process: on loss the daemon stops and exits (like
  controller-runtime), and its supervisor starts it again. The leader's duties only read today,
  so nothing it writes needs the fence; its hosts are fenced by their own leases.

SQLite cannot serve several replicas, so there an exclusive ``flock`` on a file next to the
database lets one daemon run and makes a second one refuse to start with a clear message.
"""

from __future__ import annotations

import fcntl
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from container_manager.transitions import Fenced
from metrics import definitions as m
from reconciler.exceptions import AnotherDaemonLeads, LeaderElectionError, SingleReplicaOnly

log = structlog.get_logger("reconciler.leader")

#: default lease name; replicas that share it elect one leader among them.
DEFAULT_LEASE_NAME = "reconciler"
#: default lease time-to-live (seconds): a paused leader is replaced after about this long.
DEFAULT_TTL = 5.0
TABLE = "container_manager_leaderlease"

_TAKEOVER_SQL = f"""
UPDATE {TABLE} AS l
   SET holder = %(holder)s, epoch = l.epoch + 1, backend_pid = pg_backend_pid(),
       acquired_at = clock_timestamp(), renewed_at = clock_timestamp(),
       expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
 WHERE l.name = %(name)s
   AND (l.expires_at <= clock_timestamp()
        OR l.backend_pid IS NULL
        OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.backend_pid))
RETURNING l.epoch
"""
#: creates a lease row held by us, unless one of that name exists (shared with host leases).
CREATE_LEASE_SQL = f"""
INSERT INTO {TABLE} (name, holder, epoch, backend_pid, acquired_at, renewed_at, expires_at)
VALUES (%(name)s, %(holder)s, 1, pg_backend_pid(), clock_timestamp(), clock_timestamp(),
        clock_timestamp() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO NOTHING
RETURNING epoch
"""
_RENEW_SQL = f"""
UPDATE {TABLE}
   SET renewed_at = clock_timestamp(), expires_at = clock_timestamp() + make_interval(secs => %(ttl)s),
       backend_pid = pg_backend_pid()
 WHERE name = %(name)s AND holder = %(holder)s AND epoch = %(epoch)s AND expires_at > clock_timestamp()
RETURNING epoch
"""
_RELEASE_SQL = f"""
UPDATE {TABLE} SET expires_at = clock_timestamp(), backend_pid = NULL
 WHERE name = %(name)s AND holder = %(holder)s AND epoch = %(epoch)s
"""
_PEEK_SQL = f"""
SELECT holder, epoch, EXTRACT(EPOCH FROM (expires_at - clock_timestamp()))::float8
  FROM {TABLE} WHERE name = %(name)s
"""
# The fence: the lease row, share-locked until the caller's transaction ends. set_config(...,
# true) only lasts for this transaction: a leader paused inside it loses its session after TTL.
_FENCE_SQL = f"""
SELECT l.epoch
  FROM {TABLE} AS l, set_config('idle_in_transaction_session_timeout', %s, true) AS s
 WHERE l.name = %s AND l.holder = %s AND l.epoch = %s AND l.expires_at > clock_timestamp()
   FOR SHARE OF l
"""


def new_holder() -> str:
    """A holder id unique to this process run (pids are reused, in containers always 1)."""
    return f"daemon:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class LeaseView:
    """The lease row as a standby last saw it."""

    holder: str
    epoch: int
    #: seconds until it expires (negative: expired).
    remaining: float


class Elector:
    """No election: this process always leads (one replica, guaranteed by the operator)."""

    kind = "off"

    def start(self) -> None:
        """Start campaigning; raises when leadership can never be had (clear message)."""

    def start_oneshot(self) -> None:
        """Prepare a single ``--once`` pass: refuse if another daemon leads."""
        self.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop campaigning; ``release`` hands a held lease over at once."""

    def wait_leading(self, timeout: float | None = None) -> bool:
        return True

    def is_leader(self) -> bool:
        return True

    @property
    def lost(self) -> bool:
        """True once leadership was held and then lost (the daemon must stop)."""
        return False

    @property
    def lost_reason(self) -> str:
        return ""

    @property
    def needs_fence(self) -> bool:
        return False

    def fence(self) -> bool:
        return self.is_leader()

    def guard(self) -> None:
        """Raise ``Fenced`` unless this process still leads (cheap, local; before executor calls)."""
        if not self.is_leader():
            raise Fenced()

    def heartbeat(self) -> float:
        """Monotonic time of the election loop's last activity (for liveness while standby)."""
        return time.monotonic()

    def describe(self) -> str:
        return "leader (no election)"


class SingleReplicaLock(Elector):
    """SQLite: an exclusive ``flock`` next to the database file; the kernel drops it on exit."""

    kind = "single"

    def __init__(self, database: Path, holder: str) -> None:
        self.database = database
        self.path = database.with_name(database.name + ".daemon.lock")
        self.holder = holder
        self._fd: int | None = None

    def start(self) -> None:
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 500, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SingleReplicaOnly(
                f"another daemon ({other}) already runs against the SQLite database {self.database}; "
                "SQLite supports a single replica. Stop that daemon first, or use PostgreSQL "
                f"(DATABASE_URL) to run several replicas with leader election. Lock file: {self.path}"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.holder}\n".encode(), 0)
        self._fd = fd
        m.LEADER.set(1)

    def stop(self, *, release: bool = True) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def is_leader(self) -> bool:
        return self._fd is not None

    def describe(self) -> str:
        return "leader (single replica, SQLite)"


class LeaseSession:
    """A lease holder's own autocommit connection: opened on first use, dropped after an error.

    Its database session is what the other replicas see in ``pg_stat_activity``: dropping the
    connection tells them at once that this holder is gone. ``_open`` makes a new one.
    """

    _conn: Any = None

    def _open(self) -> Any:
        raise NotImplementedError

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._open()
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


class LeaseElector(LeaseSession, Elector):
    """PostgreSQL: a renewed lease row with an epoch (fencing token); see the module docstring."""

    kind = "lease"

    def __init__(
        self,
        *,
        name: str = DEFAULT_LEASE_NAME,
        holder: str | None = None,
        ttl: float = DEFAULT_TTL,
        renew_every: float | None = None,
        connect: Any = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the lease TTL must be positive")
        self.name = name
        self.holder = holder or new_holder()
        self.ttl = float(ttl)
        #: seconds between renewals (leader) and takeover attempts (standby).
        self.renew_every = renew_every or max(0.05, self.ttl / 5)
        self._connect = connect or connect_for_leases
        self._conn: Any = None
        self._lock = threading.Lock()
        self._epoch: int | None = None
        self._valid_until = -math.inf
        self._leading = threading.Event()
        self._lost = threading.Event()
        self._lost_reason = ""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat = time.monotonic()
        #: the lease as last seen while standby (None: no row yet, or leading).
        self.seen: LeaseView | None = None

    # Lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """One synchronous attempt (so a missing table fails here, clearly), then a thread."""
        if self._thread is not None:
            return
        try:
            self.campaign_once()
        except Exception as exc:
            self._drop()
            raise LeaderElectionError(
                f"leader election failed: {type(exc).__name__}: {exc}".strip()
                + " (has `container-manager migrate` been run?)"
            ) from exc
        self._thread = threading.Thread(target=self._loop, name="cm-elector", daemon=True)
        self._thread.start()

    def start_oneshot(self) -> None:
        """``--once``: take no lease, but refuse while another daemon holds a live one."""
        try:
            with self._lock:
                view = self._peek(self._connection())
        finally:
            self._drop()
        if view is not None and view.remaining > 0:
            raise AnotherDaemonLeads(
                f"daemon {view.holder} leads the replicas on this database (lease {self.name!r}, "
                f"epoch {view.epoch}); a --once pass would compete with it. Let the daemon do the "
                "work, or stop it first (or pass --leader-election off if you know better)."
            )

    def stop(self, *, release: bool = True) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.ttl + 5)
        with self._lock:
            if release and self._epoch is not None and not self._lost.is_set():
                try:
                    self._connection().execute(_RELEASE_SQL, self._params(epoch=self._epoch))
                    log.info("leadership released", lease=self.name, epoch=self._epoch)
                except Exception as exc:
                    log.warning("could not release the lease; it will expire", error=str(exc))
            self._epoch = None
            self._valid_until = -math.inf
            self._leading.clear()
            self._drop()
        m.LEADER.set(0)

    # Queries --------------------------------------------------------------------------

    def wait_leading(self, timeout: float | None = None) -> bool:
        return self._leading.wait(timeout) and self.is_leader()

    def is_leader(self) -> bool:
        return self._epoch is not None and not self._lost.is_set() and time.monotonic() < self._valid_until

    @property
    def epoch(self) -> int | None:
        return self._epoch

    @property
    def lost(self) -> bool:
        if self._lost.is_set():
            return True
        if self._leading.is_set() and not self.is_leader() and not self._stopping.is_set():
            # The renewing thread is stuck (network, a paused process): the bound ran out.
            self._lose(f"the lease could not be renewed within {self.ttl:g} s")
            return True
        return False

    @property
    def lost_reason(self) -> str:
        return self._lost_reason

    @property
    def needs_fence(self) -> bool:
        return True

    def heartbeat(self) -> float:
        return self._heartbeat

    def describe(self) -> str:
        if self.is_leader():
            return f"leader (lease {self.name!r}, epoch {self._epoch})"
        if self._lost.is_set():
            return f"lost leadership: {self._lost_reason}"
        seen = self.seen
        if seen is None:
            return f"standby (lease {self.name!r} not held yet)"
        if seen.remaining > 0:
            return (
                f"standby: lease {self.name!r} held by {seen.holder} (epoch {seen.epoch}, "
                f"renewed until {seen.remaining:.1f} s from now)"
            )
        return f"standby: the lease of {seen.holder} expired; taking over"

    # The fence ------------------------------------------------------------------------

    def fence(self, cursor: Any = None) -> bool:
        """Inside the caller's transaction (its Django connection, or ``cursor``): do we still lead?

        The lease row stays share-locked until that transaction ends, so no takeover can
        commit between this check and the caller's commit.
        """
        epoch = self._epoch
        if epoch is None or not self.is_leader():
            return False
        params: list[str | int] = [str(max(1000, int(self.ttl * 1000))), self.name, self.holder, epoch]
        if cursor is not None:
            cursor.execute(_FENCE_SQL, params)
            return cursor.fetchone() is not None
        from django.db import connection

        with connection.cursor() as django_cursor:
            django_cursor.execute(_FENCE_SQL, params)
            return django_cursor.fetchone() is not None

    # The campaign ---------------------------------------------------------------------

    def campaign_once(self) -> bool:
        """Acquire (standby) or renew (leader) once; True while leading. Raises database errors."""
        with self._lock:
            if self._lost.is_set() or self._stopping.is_set():
                return False
            conn = self._connection()
            started = time.monotonic()
            if self._epoch is None:
                self._acquire(conn, started)
            else:
                self._renew(conn, started)
            self._heartbeat = time.monotonic()
            return self.is_leader()

    def _loop(self) -> None:
        while not self._stopping.is_set() and not self._lost.is_set():
            try:
                self.campaign_once()
            except Exception as exc:
                log.warning("leader election: database error", error=f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self._drop()
            if self.lost:  # also notices a lease that ran out while we could not renew
                break
            self._stopping.wait(self.renew_every)

    def _acquire(self, conn: Any, started: float) -> None:
        previous = self.seen
        row = conn.execute(_TAKEOVER_SQL, self._params()).fetchone()
        if row is None:
            row = conn.execute(CREATE_LEASE_SQL, self._params()).fetchone()
        if row is None:
            self.seen = self._peek(conn)
            return
        self._epoch = int(row[0])
        self._valid_until = started + self.ttl
        self.seen = None
        self._leading.set()
        m.LEADER.set(1)
        log.info(
            "leadership acquired",
            lease=self.name,
            epoch=self._epoch,
            holder=self.holder,
            previous=previous.holder if previous else None,
        )

    def _renew(self, conn: Any, started: float) -> None:
        row = conn.execute(_RENEW_SQL, self._params(epoch=self._epoch)).fetchone()
        if row is not None:
            self._valid_until = started + self.ttl
            return
        view = self._peek(conn)
        if view is None:
            self._lose("the lease row disappeared")
        elif view.holder != self.holder or view.epoch != self._epoch:
            self._lose(f"{view.holder} took the lease over (epoch {view.epoch})")
        else:
            self._lose("the lease expired before it could be renewed")

    def _lose(self, reason: str) -> None:
        if self._lost.is_set():
            return
        self._lost_reason = reason
        self._lost.set()
        m.LEADER.set(0)
        log.error("leadership lost", lease=self.name, epoch=self._epoch, reason=reason)

    def _peek(self, conn: Any) -> LeaseView | None:
        row = conn.execute(_PEEK_SQL, {"name": self.name}).fetchone()
        return None if row is None else LeaseView(str(row[0]), int(row[1]), float(row[2]))

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"name": self.name, "holder": self.holder, "ttl": self.ttl, **extra}

    def _open(self) -> Any:
        return self._connect(self)


class GuardedExecutor:
    """An executor whose state-changing calls (launch, stop, remove) are checked by ``guard`` first.

    The check is local (a lease's monotonic bound, no database round trip); reads pass through.
    ``guard`` raises ``Fenced`` when this process may no longer act for the host.
    """

    GUARDED = frozenset({"launch", "stop", "remove"})

    def __init__(self, inner: Any, guard: Callable[[], None]) -> None:
        self._inner = inner
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name in self.GUARDED:
            guard = self._guard

            def guarded(*args: Any, **kwargs: Any) -> Any:
                guard()
                return value(*args, **kwargs)

            return guarded
        return value


def session_options(elector: LeaseElector) -> str:
    """libpq ``options`` for the election session: never wait longer than the lease allows.

    A takeover that finds the row locked by a paused leader's open transaction gives up after
    one retry interval (and tries again), instead of hanging.
    """
    lock_ms = max(100, int(elector.renew_every * 1000))
    statement_ms = max(500, int(elector.ttl * 1000))
    return f"-c lock_timeout={lock_ms} -c statement_timeout={statement_ms}"


class LeaseCheck(Elector):
    """A one-shot pass (``--once``) on PostgreSQL: takes no lease, refuses while a daemon leads."""

    kind = "check"

    def __init__(self, lease: LeaseElector) -> None:
        self.lease = lease

    def start(self) -> None:
        self.lease.start_oneshot()

    def describe(self) -> str:
        return "one-shot pass (no daemon leads)"


def connect_for_leases(elector: LeaseElector) -> Any:
    """A dedicated autocommit connection from Django's settings, with timeouts fit for the TTL."""
    import psycopg
    from django.db import connections

    params = dict(connections["default"].get_connection_params())
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    params["options"] = f"{params.get('options', '')} {session_options(elector)}".strip()
    params.setdefault("connect_timeout", max(2, math.ceil(elector.ttl)))
    params.setdefault("application_name", f"container-manager elector {elector.holder}"[:63])
    return psycopg.connect(autocommit=True, **params)


def sqlite_path() -> Path | None:
    """The default database's file, or None when it lives in memory."""
    from django.db import connections

    name = str(connections["default"].settings_dict.get("NAME") or "")
    if not name or name == ":memory:" or "mode=memory" in name:
        return None
    if name.startswith("file:"):
        name = name[5:].split("?", 1)[0]
    return Path(name).resolve()


def make_elector(
    mode: str = "auto",
    *,
    holder: str | None = None,
    name: str = DEFAULT_LEASE_NAME,
    ttl: float = DEFAULT_TTL,
    oneshot: bool = False,
) -> Elector:
    """``off``: none. ``auto``: a lease on PostgreSQL, a single-replica lock on SQLite.

    ``oneshot`` (``--once``): on PostgreSQL only check that no daemon leads, without a lease.
    """
    if mode == "off":
        return Elector()
    if mode != "auto":
        raise ValueError(f"unknown leader election mode {mode!r} (auto or off)")
    from django.db import connections

    vendor = connections["default"].vendor
    holder = holder or new_holder()
    if vendor == "postgresql":
        lease = LeaseElector(name=name, holder=holder, ttl=ttl)
        return LeaseCheck(lease) if oneshot else lease
    if vendor == "sqlite":
        path = sqlite_path()
        return SingleReplicaLock(path, holder) if path is not None else Elector()
    raise LeaderElectionError(
        f"leader election supports PostgreSQL and SQLite, not {vendor}; run a single replica "
        "with --leader-election off"
    )
