"""The one exception tree every executor raises, so callers never catch SDK errors."""

from __future__ import annotations


class ExecutorError(Exception):
    """The executor failed."""

    #: A transient failure may succeed when tried again later.
    transient: bool = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class Unavailable(ExecutorError):
    """The backend could not be reached or answered with a transient error."""

    transient = True


class InvalidSpec(ExecutorError):
    """The backend refused the container specification; trying again will not help."""


class ImageNotFound(InvalidSpec):
    """The image does not exist on the host and may not be pulled."""


class NotFound(ExecutorError):
    """No such container."""


class Conflict(ExecutorError):
    """A container with this name already exists."""


class QuotaExceeded(Unavailable):
    """The backend's quota or rate limit was hit; back off before trying again."""


class HostMisconfigured(Unavailable):
    """The host refused the call for a reason of its own (permissions, disabled API); jobs wait."""


class ConfigurationError(ExecutorError):
    """The executor host is configured wrongly (connection string or config)."""

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message)
        #: The host row's field at fault, "connection_string" or "executor_config" (None: the config).
        self.field = field
