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
import math
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError

from container_manager import conf
from container_manager.conf import Policy
from container_manager.envparse import KEY_RE, parse_name_list
from container_manager.states import RETRYABLE_REASONS, Reason

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?)"
# ASCII only: Python's \w also matches letters and digits of every script, which Docker refuses.
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_RE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?\Z"
)
MAX_IMAGE_NAME = 255
MAX_COMMAND_LENGTH = 32 * 1024
#: Linux refuses to start a program with one environment string ``KEY=VALUE`` (plus its NUL)
#: longer than MAX_ARG_STRLEN, 32 pages of 4 KiB (execve(2), "Limits on size of arguments").
MAX_ENV_STRING_BYTES = 128 * 1024
#: The whole environment of a job (every ``KEY=VALUE`` plus its NUL): far below what execve
#: allows (a quarter of the stack limit, 2 MiB by default), and small enough for any row.
MAX_ENV_TOTAL_BYTES = 1024 * 1024


def validate_image(image: Any, policy: Policy) -> None:
    if image is not None and not isinstance(image, str):
        raise ValidationError({"image": f"image must be text, not {_type_name(image)}"})
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


def split_command(command: Any) -> tuple[str, ...]:
    """The argv a command string stands for; raises ``ValidationError`` on bad quoting."""
    if not isinstance(command, str):
        raise ValidationError(
            {"command": f"command must be a string or a list of strings, not {_type_name(command)}"}
        )
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
    if any("\x00" in arg for arg in argv):
        raise ValidationError({"command": "the command contains a NUL byte"})
    return shlex.join(argv)


def _type_name(value: Any) -> str:
    names = {dict: "a JSON object", list: "a list", tuple: "a list", bool: "true/false", bytes: "bytes"}
    return names.get(type(value), f"a value of type {type(value).__name__}")


# Numbers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NumberRule:
    """The range one numeric field must stay in; ``high`` may depend on the settings."""

    integer: bool
    low: float
    high: Callable[[Policy], float]
    #: what the number counts, for messages ("in MB", "in cores")
    unit: str = ""
    #: the setting that gives ``high``, for messages
    setting: str = ""


NUMBER_RULES: dict[str, NumberRule] = {
    "memory_limit": NumberRule(
        True, conf.ABSOLUTE_MIN_MEMORY_MB, lambda p: p.max_memory_mb, " in MB", "MAX_MEMORY_MB"
    ),
    "cpu_limit": NumberRule(False, conf.ABSOLUTE_MIN_CPU, lambda p: p.max_cpu, " in cores", "MAX_CPU"),
    "timeout_seconds": NumberRule(True, 1, lambda p: p.max_timeout_seconds, "", "MAX_TIMEOUT_SECONDS"),
    "max_retries": NumberRule(True, 0, lambda p: p.max_retries_cap, "", "MAX_RETRIES_CAP"),
    # A backoff longer than the longest allowed run is a mistake, and an unbounded one would
    # overflow the date-time of the next attempt.
    "retry_backoff_seconds": NumberRule(
        False, 0, lambda p: p.max_timeout_seconds, " in seconds", "MAX_TIMEOUT_SECONDS"
    ),
    "retry_backoff_max_seconds": NumberRule(
        False, 0, lambda p: p.max_timeout_seconds, " in seconds", "MAX_TIMEOUT_SECONDS"
    ),
    "priority": NumberRule(True, conf.PRIORITY_RANGE[0], lambda p: conf.PRIORITY_RANGE[1]),
    "max_concurrent_jobs": NumberRule(
        True, 1, lambda p: p.max_concurrent_jobs_cap, "", "MAX_CONCURRENT_JOBS_CAP"
    ),
}


def check_number(field: str, value: Any, policy: Policy) -> int | float:
    """``value`` as the int or float ``field`` holds, inside its range; else ``ValidationError``.

    Accepts numbers and numeric text (forms, JSON, SQLite rows); refuses true/false, NaN,
    infinities, fractions for whole-number fields, and every other type, naming the field.
    """
    rule = NUMBER_RULES[field]
    kind = "a whole number" if rule.integer else "a number"
    number: Any = value
    if isinstance(number, str):
        text = number.strip()
        try:
            number = int(text) if re.fullmatch(r"[+-]?[0-9]{1,30}", text) else float(text)
        except ValueError:
            raise ValidationError({field: f"{field} must be {kind}; got {value[:40]!r}"}) from None
    elif isinstance(number, Decimal):
        if not number.is_finite():
            raise ValidationError({field: f"{field} must be a finite number; got {value}"})
        number = int(number) if number == number.to_integral_value() else float(number)
    elif isinstance(number, bool) or not isinstance(number, int | float):
        raise ValidationError({field: f"{field} must be {kind}, not {_type_name(value)}"})
    if isinstance(number, float):
        if not math.isfinite(number):
            raise ValidationError({field: f"{field} must be a finite number; got {value!r}"})
        if rule.integer:
            if not number.is_integer():
                raise ValidationError({field: f"{field} must be a whole number; got {value!r}"})
            number = int(number)
    high = rule.high(policy)
    # Compared before any conversion to float: 10**400 is refused, not an OverflowError.
    if not rule.low <= number <= high:
        where = f" (CONTAINER_MANAGER[{rule.setting!r}])" if rule.setting else ""
        shown = number if abs(number) < 10**15 else "a larger number"
        what = f"{field} is{rule.unit} and" if rule.unit else field
        raise ValidationError(
            {field: f"{what} must be between {_fmt(rule.low)} and {_fmt(high)}{where}; got {shown}"}
        )
    return number if rule.integer else float(number)


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def check_numbers(values: Mapping[str, Any], policy: Policy) -> dict[str, int | float | None]:
    """``check_number`` for each field of ``values``, every error reported at once; None passes."""
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, int | float | None] = {}
    for field, value in values.items():
        if value is None:
            cleaned[field] = None
            continue
        try:
            cleaned[field] = check_number(field, value, policy)
        except ValidationError as exc:
            errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    return cleaned


def validate_limits(
    *,
    memory_limit: Any,
    cpu_limit: Any,
    timeout_seconds: Any,
    max_retries: Any,
    policy: Policy,
    **others: Any,
) -> None:
    """Raise ``ValidationError`` for any limit of the wrong type or outside its range.

    Any stored value is accepted as input ('abc' from a SQLite row, NaN, 1e400): the answer is
    always a ``ValidationError`` naming the field, never ``ValueError`` or ``TypeError``.
    ``others`` may name more fields of ``NUMBER_RULES`` (e.g. ``retry_backoff_seconds``).
    """
    check_numbers(
        {
            "memory_limit": memory_limit,
            "cpu_limit": cpu_limit,
            "timeout_seconds": timeout_seconds,
            "max_retries": max_retries,
            **others,
        },
        policy,
    )


def parse_retry_on(value: Any) -> frozenset[Reason]:
    """Parse ``retry_on`` ("exit_code,oom,lost"); raises ``ValidationError`` naming bad tokens."""
    if value is not None and not isinstance(value, str):
        raise ValidationError({"retry_on": f"retry_on must be text, not {_type_name(value)}"})
    tokens = [t.strip() for t in (value or "").split(",") if t.strip()]
    allowed = {r.value for r in RETRYABLE_REASONS}
    bad = [t for t in tokens if t not in allowed]
    if bad:
        raise ValidationError(
            {"retry_on": f"unknown reasons {bad}; retry_on is a comma-separated list of {sorted(allowed)}"}
        )
    return frozenset(Reason(t) for t in tokens)


# Environment ------------------------------------------------------------------------------------


def env_size_problems(env: Mapping[str, str]) -> list[str]:
    """What in ``env`` no container could be given, one message per problem, naming variables only."""
    problems = []
    total = 0
    for key, value in env.items():
        size = len(key.encode()) + 1 + len(value.encode("utf-8", "surrogatepass")) + 1
        total += size
        if size > MAX_ENV_STRING_BYTES:
            problems.append(
                f"{key}: one variable (KEY=VALUE) may hold at most {MAX_ENV_STRING_BYTES // 1024} KiB, "
                f"the Linux limit; this one has {size // 1024} KiB"
            )
    if total > MAX_ENV_TOTAL_BYTES:
        problems.append(
            f"the environment holds {total // 1024} KiB; at most {MAX_ENV_TOTAL_BYTES // 1024} KiB are allowed"
        )
    return problems


def validate_secret_keys(field: str, value: Any, env: Mapping[str, str] | None) -> list[str]:
    """Names listed in a ``secret_keys`` field; each must be a variable name (and, when ``env`` is
    given, one of its variables, so a misspelt name cannot leave a secret shown)."""
    if value is None or value == "":
        return []
    if not isinstance(value, str):
        raise ValidationError(
            {field: f"{field} must be text (names separated by commas), not {_type_name(value)}"}
        )
    names = parse_name_list(value)
    bad = [n for n in names if not KEY_RE.match(n)]
    if bad:
        raise ValidationError({field: f"{field}: {bad[0][:40]!r} is not a variable name"})
    if env is not None:
        missing = [n for n in names if n not in env]
        if missing:
            raise ValidationError(
                {field: f"{field}: {', '.join(missing[:5])} not among the variables of this environment"}
            )
    return names
