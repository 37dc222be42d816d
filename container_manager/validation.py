"""Field rules shared by model validation, the CLI and the reconciler's launch-time re-check.

Every function raises ``django.core.exceptions.ValidationError`` keyed by field name with a
message that states the rule, so callers can show it as-is and persist nothing.

Command format: ``command`` is one string, split with POSIX shell quoting rules (``shlex``)
into an argv that is executed *directly*, without a shell. Quotes group words; ``;``, ``|``,
``$VAR`` and globs are passed through literally. Write ``sh -c '...'`` when a shell is wanted.
An empty command runs the image's default entrypoint.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Sequence

from django.core.exceptions import ValidationError

from container_manager.conf import Policy
from container_manager.states import RETRYABLE_REASONS, Reason

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?)"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_RE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?\Z"
)
MAX_IMAGE_NAME = 255
MAX_COMMAND_LENGTH = 32 * 1024


def validate_image(image: str, policy: Policy) -> None:
    if not image or not image.strip():
        raise ValidationError({"image": "image is required, e.g. 'python:3.12-slim'"})
    match = IMAGE_RE.match(image)
    if match is None:
        raise ValidationError(
            {
                "image": (
                    f"{image[:100]!r} is not a valid image reference: expected [registry/]name[:tag][@digest] "
                    "with a lowercase name"
                )
            }
        )
    if len(match.group("name")) > MAX_IMAGE_NAME:
        raise ValidationError({"image": f"the image name is longer than {MAX_IMAGE_NAME} characters"})
    if policy.allowed_images and not any(fnmatch.fnmatchcase(image, p) for p in policy.allowed_images):
        raise ValidationError(
            {"image": f"{image!r} is not in the allowed image list (CONTAINER_MANAGER['ALLOWED_IMAGES'])"}
        )


def split_command(command: str) -> tuple[str, ...]:
    """The argv a command string stands for; raises ``ValidationError`` on bad quoting."""
    if len(command) > MAX_COMMAND_LENGTH:
        raise ValidationError({"command": f"the command is longer than {MAX_COMMAND_LENGTH} characters"})
    if "\x00" in command:
        raise ValidationError({"command": "the command contains a NUL byte"})
    try:
        return tuple(shlex.split(command, posix=True))
    except ValueError as exc:
        raise ValidationError(
            {"command": f"the command cannot be split into arguments ({exc}); check its quotes"}
        ) from None


def join_command(argv: Sequence[str]) -> str:
    """The command string for an argv: ``split_command(join_command(argv)) == tuple(argv)``."""
    if any(not isinstance(arg, str) for arg in argv):
        raise ValidationError({"command": "a command list must contain only strings"})
    return shlex.join(argv)


def validate_limits(
    *,
    memory_limit: int | None,
    cpu_limit: float | None,
    timeout_seconds: int | None,
    max_retries: int | None,
    policy: Policy,
) -> None:
    errors: dict[str, str] = {}
    if memory_limit is not None and not (4 <= memory_limit <= policy.max_memory_mb):
        errors["memory_limit"] = (
            f"memory_limit is in MB and must be between 4 and {policy.max_memory_mb} "
            f"(CONTAINER_MANAGER['MAX_MEMORY_MB']); got {memory_limit}"
        )
    if cpu_limit is not None and not (0.01 <= cpu_limit <= policy.max_cpu):
        errors["cpu_limit"] = (
            f"cpu_limit is in cores and must be between 0.01 and {policy.max_cpu} "
            f"(CONTAINER_MANAGER['MAX_CPU']); got {cpu_limit}"
        )
    if timeout_seconds is not None and not (1 <= timeout_seconds <= policy.max_timeout_seconds):
        errors["timeout_seconds"] = (
            f"timeout_seconds must be between 1 and {policy.max_timeout_seconds}; got {timeout_seconds}"
        )
    if max_retries is not None and not (0 <= max_retries <= policy.max_retries_cap):
        errors["max_retries"] = (
            f"max_retries must be between 0 and {policy.max_retries_cap}; got {max_retries}"
        )
    if errors:
        raise ValidationError(errors)


def parse_retry_on(value: str) -> frozenset[Reason]:
    """Parse ``retry_on`` ("exit_code,oom,lost"); raises ``ValidationError`` naming bad tokens."""
    tokens = [t.strip() for t in (value or "").split(",") if t.strip()]
    allowed = {r.value for r in RETRYABLE_REASONS}
    bad = [t for t in tokens if t not in allowed]
    if bad:
        raise ValidationError(
            {"retry_on": f"unknown reasons {bad}; retry_on is a comma-separated list of {sorted(allowed)}"}
        )
    return frozenset(Reason(t) for t in tokens)
