"""The one reader of a host row's ``executor_config``, shared by every backend.

``executor_config`` is a JSON object, and every backend reads it by the same rules, so a value
means the same on Docker, Cloud Run and the mock:

* a **flag** is a JSON boolean, ``true`` or ``false``. Strings (``"yes"``, ``"true"``, ``"1"``)
  and numbers are refused: a string flag is where ``"no"`` ends up meaning yes.
* a **number** is a JSON number (not a string, not a boolean), finite, inside the key's range;
  an **integer** is a JSON number with no fractional part (``3`` or ``3.0``).
* a **string** is a non-empty JSON string, optionally one of a few choices or matching a form.
* a **path** is an absolute file path, or ``env:NAME`` naming an environment variable of the
  process that holds it. Only the form is checked when the row is saved; the variable is read
  when the executor is built (``resolve``), on the machine that uses it.

Every message names the backend, the key and the rule. None quotes a value read from the
environment (it may be a secret: messages reach health pages and logs); none quotes a
configured value either, except a literal path in "no such file" (the operator typed it).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from executors.exceptions import ConfigurationError

#: ``env:NAME`` with NAME a valid environment variable name.
ENV_REF_RE = re.compile(r"\Aenv:(?P<name>[A-Za-z_][A-Za-z0-9_]*)\Z")


class ConfigReader:
    """Reads one host row's config for one backend; each method raises ``ConfigurationError``."""

    def __init__(
        self,
        backend: str,
        config: Any,
        keys: Collection[str],
        removed: Mapping[str, str] | None = None,
    ) -> None:
        """Refuse a config that is not a JSON object, a removed key (with its reason), an unknown key."""
        self.backend = backend
        if config is None:
            config = {}
        if not isinstance(config, Mapping):
            raise ConfigurationError(f"{backend} executor config must be a JSON object")
        for key, why in (removed or {}).items():
            if key in config:
                raise ConfigurationError(why)
        unknown = sorted(str(k) for k in config if k not in keys)
        if unknown:
            raise ConfigurationError(
                f"unknown {backend} executor config keys {unknown}; known keys are {sorted(keys)}"
            )
        self.config: Mapping[str, Any] = config

    def __contains__(self, key: str) -> bool:
        return key in self.config

    def given(self, keys: Iterable[str]) -> list[str]:
        """Which of ``keys`` the config sets."""
        return [k for k in keys if k in self.config]

    def error(self, key: str, rule: str) -> ConfigurationError:
        return ConfigurationError(f"{self.backend} executor config {key!r} {rule}")

    def flag(self, key: str, default: bool) -> bool:
        value = self.config.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, 'must be true or false (a JSON boolean, not a string such as "yes")')
        return value

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float = 0.0,
        maximum: float = math.inf,
        exclusive_minimum: bool = False,
    ) -> float:
        """A finite JSON number in [minimum, maximum] (or (minimum, maximum])."""
        value = self.config.get(key, default)
        low = f"greater than {minimum:g}" if exclusive_minimum else f"at least {minimum:g}"
        high = f" and at most {maximum:g}" if math.isfinite(maximum) else ""
        rule = f"must be a number {low}{high}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"{rule} (a JSON number, not a string)")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            raise self.error(key, rule) from None
        too_low = number <= minimum if exclusive_minimum else number < minimum
        if not math.isfinite(number) or too_low or number > maximum:
            raise self.error(key, rule)
        return number

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        """A whole JSON number in [minimum, maximum]."""
        value = self.config.get(key, default)
        rule = f"must be a whole number from {minimum} to {maximum}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"{rule} (a JSON number, not a string)")
        if isinstance(value, float) and not value.is_integer():
            raise self.error(key, rule)
        if not minimum <= value <= maximum:
            raise self.error(key, rule)
        return int(value)

    def text(
        self,
        key: str,
        default: str | None = None,
        *,
        choices: Collection[str] | None = None,
        pattern: str | None = None,
        rule: str = "",
    ) -> str | None:
        """A non-empty JSON string (surrounding blanks removed), or ``default`` when absent."""
        value = self.config.get(key)
        if value is None:
            return default
        if choices is not None:
            rule = rule or f"must be one of {sorted(choices)}"
        elif pattern is not None:
            rule = rule or f"must match {pattern}"
        else:
            rule = rule or "must be a non-empty string"
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, rule)
        value = value.strip()
        if choices is not None and value not in choices:
            raise self.error(key, rule)
        if pattern is not None and not re.fullmatch(pattern, value):
            raise self.error(key, rule)
        return value

    def path(self, key: str) -> str | None:
        """The form of a path setting: an absolute path or ``env:NAME`` (None when absent or empty)."""
        value = self.config.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str) or not (value.startswith("/") or ENV_REF_RE.match(value)):
            raise self.error(
                key, "must be an absolute file path, or env:NAME naming a variable that holds one"
            )
        return value

    def resolve(self, key: str, value: str) -> tuple[str, str | None]:
        """See ``resolve``."""
        return resolve(self.backend, key, value)


def resolve(backend: str, key: str, value: str) -> tuple[str, str | None]:
    """What a path setting holds on this machine: (text, the variable's name if it came from one).

    Reads the environment for ``env:NAME``; the message of a missing variable names the key
    and the variable, never anything it holds.
    """
    match = ENV_REF_RE.match(value)
    if match is None:
        return value, None
    name = match["name"]
    resolved = os.environ.get(name, "")
    if not resolved:
        raise ConfigurationError(f"{backend} executor config {key!r} names ${name}, which is not set")
    return resolved, name
