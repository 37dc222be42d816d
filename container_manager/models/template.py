"""Reusable environment variable sets (dotenv-like text), with the names of their secrets."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone

from container_manager.conf import get_policy
from container_manager.envparse import EnvParseError, mask_env, parse_env, parse_name_list, secret_keys_of
from container_manager.inputs import clean_fields_checked
from container_manager.validation import MAX_ENV_TOTAL_BYTES, env_size_problems, validate_secret_keys

SECRET_KEYS_HELP = (
    "Names of variables whose values are secret, separated by commas: never shown in the admin, "
    "the CLI or logs (names that look secret, like *_PASSWORD or *_TOKEN, are masked anyway)."
)


def _join_names(value: Any) -> str:
    """A list of names given for a ``secret_keys`` field, as the stored text."""
    if isinstance(value, list | tuple | set | frozenset) and all(isinstance(n, str) for n in value):
        return ", ".join(value)
    raise ValidationError("secret_keys must be text or a list of variable names")


class EnvironmentVariableTemplate(models.Model):
    """Template for environment variable sets used across multiple jobs.

    Provides reusable environment configurations for consistent job execution.
    """

    name = models.CharField(max_length=100, unique=True)
    environment_variables_text = models.TextField(
        blank=True,
        default="",
        db_default="",
        help_text="KEY=value per line; # comments, blank lines, quotes and 'export' allowed.",
    )
    secret_keys = models.CharField(
        max_length=2000, blank=True, default="", db_default="", help_text=SECRET_KEYS_HELP
    )
    description = models.TextField(blank=True, default="", db_default="")
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<EnvironmentVariableTemplate {self.name!r} keys={list(self.safe_variables())}>"

    def get_environment_variables_dict(self) -> dict[str, str]:
        """Parsed variables; raises ``ValidationError`` naming the bad line."""
        try:
            return parse_env(_text(self.environment_variables_text))
        except EnvParseError as exc:
            raise ValidationError({"environment_variables_text": str(exc)}) from None

    def validate_format(self) -> list[str]:
        """Error messages for the text, each naming its line; empty when the text is valid."""
        text = self.environment_variables_text
        if not isinstance(text, str):
            return ["the environment must be text: KEY=value lines"]
        if len(text) > 2 * MAX_ENV_TOTAL_BYTES:
            return [f"the text is longer than {2 * MAX_ENV_TOTAL_BYTES // 1024} KiB"]
        try:
            env = parse_env(text)
        except EnvParseError as exc:
            return [str(exc)]
        return env_size_problems(env)

    def get_secret_keys(self) -> frozenset[str]:
        """Names of this template's variables whose values must never be shown."""
        try:
            env = parse_env(_text(self.environment_variables_text))
        except EnvParseError:
            return frozenset()
        return secret_keys_of(env, self.marked_secret_keys())

    def marked_secret_keys(self) -> list[str]:
        """The names listed in ``secret_keys`` (as stored; not checked)."""
        return parse_name_list(self.secret_keys) if isinstance(self.secret_keys, str) else []

    def safe_variables(self) -> dict[str, str]:
        """Variables with secret values masked (by name, as marked, URL passwords), for display and logs."""
        try:
            return mask_env(parse_env(_text(self.environment_variables_text)), self.marked_secret_keys())
        except EnvParseError:
            return {}

    def clean_fields(self, exclude: Any = None) -> None:
        clean_fields_checked(
            self, exclude, get_policy(), super().clean_fields, converters={"secret_keys": _join_names}
        )

    def clean(self) -> None:
        errors = self.validate_format()
        if errors:
            raise ValidationError({"environment_variables_text": errors})
        validate_secret_keys("secret_keys", self.secret_keys, self.get_environment_variables_dict())

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.full_clean(validate_constraints=False)
        super().save(*args, **kwargs)


def _text(value: Any) -> str:
    """Stored environment text; a value of another type (written by SQL) reads as a parse error."""
    if value is None or isinstance(value, str):
        return value or ""
    raise EnvParseError(1, "the environment is not text")
