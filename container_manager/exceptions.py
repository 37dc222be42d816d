"""The app's exceptions: one root, one-line subclasses whose docstring is the default message."""

from __future__ import annotations


class ContainerManagerError(Exception):
    """The container manager could not do that."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class JobStateError(ContainerManagerError):
    """The job is not in a status that allows this operation."""


class InvalidTransition(ContainerManagerError):
    """That status change is not allowed by the status machine."""


class HistoryIsAppendOnly(ContainerManagerError):
    """Job history rows cannot be changed once written."""


class NoExecutorAvailable(ContainerManagerError):
    """No active, healthy executor host has free capacity for this job."""
