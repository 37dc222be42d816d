"""The reconciler's exceptions: one root, one-line subclasses."""

from __future__ import annotations


class ReconcilerError(Exception):
    """The reconciler could not complete the step."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class LostRace(ReconcilerError):
    """Another writer changed the job first; re-read and decide again."""


class SingleReplicaOnly(ReconcilerError):
    """Another daemon already runs against this SQLite database; SQLite allows one replica."""


class LeaderElectionError(ReconcilerError):
    """Leader election cannot start on this database (is the lease table migrated?)."""


class AnotherDaemonLeads(ReconcilerError):
    """Another daemon leads the replicas on this database; a one-shot pass would compete with it."""
