"""The rules a job row must satisfy: at save time (``ContainerJob.clean``) and at launch time.

Rows written by plain SQL skip ``save()``, so the reconciler checks them again before a
launch with ``launch_settings(job, policy)``: whatever a column holds ('abc' in
``memory_limit`` on SQLite, NaN, text that does not parse), the answer is the checked values
or a ``ValidationError`` naming the field, never another exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ObjectDoesNotExist, ValidationError

from container_manager.conf import Policy
from container_manager.envparse import (
    KEY_RE,
    EnvParseError,
    parse_env,
    parse_name_list,
    render_env,
    secret_keys_of,
)
from container_manager.inputs import MAX_ID
from container_manager.states import Reason
from container_manager.validation import (
    MAX_ENV_TOTAL_BYTES,
    _type_name,
    check_numbers,
    env_size_problems,
    join_command,
    parse_retry_on,
    split_command,
    validate_image,
    validate_secret_keys,
)

if TYPE_CHECKING:
    from container_manager.models import ContainerJob

#: Fields only the reconciler writes, with the value every new job has.
RECONCILER_FIELDS: dict[str, Any] = {
    "status": "pending",
    "attempts": 0,
    "started_at": None,
    "finished_at": None,
    "exit_code": None,
    "failure_reason": "",
    "status_message": "",
    "cancel_requested_at": None,
}


def _names_text(field: str) -> Any:
    def convert(value: Any) -> str:
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return ",".join(value)
        raise ValidationError(f"{field} must be text or a list of strings, not {_type_name(value)}")

    return convert


def _env_text(value: Any) -> str:
    if isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        bad = [k for k in value if not KEY_RE.match(k)]
        if bad:
            raise ValidationError(f"override_environment: {bad[0][:40]!r} is not a variable name")
        return render_env(value)
    raise ValidationError(
        f"override_environment must be text (KEY=value lines) or an object of strings, not {_type_name(value)}"
    )


def _command_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return join_command(value)
    raise ValidationError(f"command must be a string or a list of strings, not {_type_name(value)}")


#: How a value that is not a string becomes one, per text field (see ``inputs``).
CONVERTERS = {
    "command": _command_text,
    "override_environment": _env_text,
    "retry_on": _names_text("retry_on"),
    "secret_keys": _names_text("secret_keys"),
}


def changed_fixed_fields(
    job: ContainerJob, remembered: Mapping[str, Any], update_fields: Iterable[str] | None
) -> list[str]:
    """Fields ``save()`` would not write that the caller changed (or named in ``update_fields``)."""
    from container_manager.models import USER_EDITABLE_FIELDS

    editable = set(USER_EDITABLE_FIELDS) | {
        getattr(job._meta.get_field(name), "attname", name) for name in USER_EDITABLE_FIELDS
    }
    changed = [
        attname.removesuffix("_id") if attname.endswith("_id") else attname
        for attname, before in remembered.items()
        if attname in job.__dict__ and job.__dict__[attname] != before
    ]
    changed += [name for name in update_fields or () if name not in editable and name not in changed]
    return changed


# Environment ----------------------------------------------------------------------------------


def _related(job: ContainerJob, field: str) -> Any:
    """The row a foreign key of ``job`` points to; ``ValidationError`` when there is none."""
    key = getattr(job, f"{field}_id")
    if not job._meta.get_field(field).is_cached(job) and (  # type: ignore[union-attr]
        isinstance(key, bool) or not isinstance(key, int) or not 1 <= key <= MAX_ID
    ):
        raise ValidationError({field: f"{field}: there is no row with that id"})
    try:
        return getattr(job, field)
    except ObjectDoesNotExist:
        raise ValidationError({field: f"{field}: there is no row with that id"}) from None


def _template_env(job: ContainerJob) -> dict[str, str]:
    if not job.environment_template_id:
        return {}
    template = _related(job, "environment_template")
    try:
        return template.get_environment_variables_dict()  # type: ignore[no-any-return]
    except ValidationError as exc:
        detail = " ".join(exc.messages)
        raise ValidationError({"environment_template": f"template {template!s:.100}: {detail}"}) from None


def _override_env(job: ContainerJob) -> dict[str, str]:
    text = job.override_environment
    if text is not None and not isinstance(text, str):
        raise ValidationError({"override_environment": "override_environment must be text: KEY=value lines"})
    if text and len(text) > 2 * MAX_ENV_TOTAL_BYTES:
        raise ValidationError(
            {"override_environment": f"the text is longer than {2 * MAX_ENV_TOTAL_BYTES // 1024} KiB"}
        )
    try:
        return parse_env(text)
    except EnvParseError as exc:
        raise ValidationError({"override_environment": str(exc)}) from None


def job_environment(job: ContainerJob) -> dict[str, str]:
    """The template's variables with the job's overrides on top; ``ValidationError`` if either
    does not parse (naming the line, never a value)."""
    env = _template_env(job)
    env.update(_override_env(job))
    return env


def _marked(value: Any) -> list[str]:
    return parse_name_list(value) if isinstance(value, str) else []


def job_marked_keys(job: ContainerJob) -> list[str]:
    """Names the user marked secret, on the job and on its template."""
    marked = _marked(job.secret_keys)
    if job.environment_template_id:
        marked += _marked(_related(job, "environment_template").secret_keys)
    return marked


def job_secret_keys(job: ContainerJob, env: Mapping[str, str] | None = None) -> frozenset[str]:
    """Names in the job's environment whose values must never be shown (see ``secret_keys_of``)."""
    if env is None:
        env = job_environment(job)
    return secret_keys_of(env, job_marked_keys(job))


def _environment_errors(job: ContainerJob, errors: dict[str, list[str]]) -> dict[str, str] | None:
    """Check the job's environment as a whole; return it, or None when it does not parse."""
    env: dict[str, str] = {}
    parsed = True
    for source in (_template_env, _override_env):
        try:
            env.update(source(job))
        except ValidationError as exc:
            parsed = False
            for field, messages in exc.message_dict.items():
                errors.setdefault(field, []).extend(messages)
    if not parsed:
        return None
    overrides = set(_override_env(job)) if job.override_environment else set()
    for problem in env_size_problems(env):
        key = problem.partition(":")[0]
        field = "environment_template" if key in env and key not in overrides else "override_environment"
        errors.setdefault(field, []).append(problem)
    return env


def _host_errors(job: ContainerJob, env: Mapping[str, str] | None, errors: dict[str, list[str]]) -> None:
    from executors.exceptions import ConfigurationError
    from executors.registry import backend_class

    try:
        host = _related(job, "docker_host")
    except ValidationError:
        return  # reported by clean_fields (the foreign key's own check)
    if host is None:
        return
    if not host.is_active:
        errors.setdefault("docker_host", []).append(
            f"host {host.name!r} is not active: activate it, or leave docker_host empty to let the scheduler choose"
        )
    if env is None:
        return
    try:
        problems = backend_class(host.executor_type).check_environment(dict(env))
    except ConfigurationError as exc:
        errors.setdefault("docker_host", []).append(str(exc))
        return
    for problem in problems:
        errors.setdefault("override_environment", []).append(f"{problem} (on host {host.name!r})")


def clean_job(job: ContainerJob, policy: Policy) -> None:
    """``ContainerJob.clean``: every rule not tied to one field's type, all errors at once.

    Values of the wrong type were already reported by ``clean_fields``; they are skipped here.
    """
    errors: dict[str, list[str]] = {}

    def collect(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                errors.setdefault(field, []).extend(messages)

    if isinstance(job.image, str):
        collect(validate_image, job.image, policy)
    if isinstance(job.command, str):
        collect(split_command, job.command)
    if isinstance(job.retry_on, str):
        collect(parse_retry_on, job.retry_on)
    base, cap = job.retry_backoff_seconds, job.retry_backoff_max_seconds
    if isinstance(base, float) and isinstance(cap, float) and cap < base:
        errors.setdefault("retry_backoff_max_seconds", []).append(
            "retry_backoff_max_seconds must be >= retry_backoff_seconds"
        )
    env = _environment_errors(job, errors)
    if isinstance(job.secret_keys, str):
        collect(validate_secret_keys, "secret_keys", job.secret_keys, env)
    if job.docker_host_id is not None:
        _host_errors(job, env, errors)
    if job._state.adding:
        if job.pk is not None:
            errors.setdefault("id", []).append("ids are given by the database: leave id out of new jobs")
        for field, default in RECONCILER_FIELDS.items():
            if getattr(job, field) != default:
                errors.setdefault(field, []).append(
                    f"{field} is recorded by the reconciler: new jobs start as 'pending' with no "
                    "attempts, so leave it out"
                )
    if errors:
        raise ValidationError(errors)


# Launch time ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchSettings:
    """A job row's desired state, checked and typed: what a launch may rely on."""

    image: str
    argv: tuple[str, ...]
    #: the whole environment (template, then overrides)
    env: dict[str, str]
    #: names in ``env`` whose values must never be logged (``ContainerSpec.secret_keys``)
    secret_keys: frozenset[str]
    memory_mb: int
    cpu: float
    timeout_seconds: int
    max_retries: int
    retry_backoff_seconds: float
    retry_backoff_max_seconds: float
    retry_on: frozenset[Reason]
    priority: int


def launch_settings(job: ContainerJob, policy: Policy) -> LaunchSettings:
    """Check a stored row again (it may have been written by SQL) and return its typed values,
    with the settings' defaults for empty limits. Raises only ``ValidationError``."""
    errors: dict[str, list[str]] = {}

    def attempt(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                errors.setdefault(field, []).extend(messages)
            return None

    image = job.image
    attempt(validate_image, image, policy)
    argv = attempt(split_command, "" if job.command is None else job.command)
    retry_on = attempt(parse_retry_on, job.retry_on)
    defaults = {
        "memory_limit": policy.default_memory_mb,
        "cpu_limit": policy.default_cpu,
        "timeout_seconds": policy.default_timeout_seconds,
    }
    raw = {
        "memory_limit": job.memory_limit,
        "cpu_limit": job.cpu_limit,
        "timeout_seconds": job.timeout_seconds,
        "max_retries": job.max_retries,
        "retry_backoff_seconds": job.retry_backoff_seconds,
        "retry_backoff_max_seconds": job.retry_backoff_max_seconds,
        "priority": job.priority,
    }
    values = {name: defaults.get(name) if value is None else value for name, value in raw.items()}
    for name, value in values.items():
        if value is None:
            errors.setdefault(name, []).append(f"{name} is empty")
    numbers = attempt(check_numbers, {k: v for k, v in values.items() if v is not None}, policy) or {}
    env = attempt(job_environment, job)
    secret_keys: frozenset[str] = frozenset()
    if env is not None:
        for problem in env_size_problems(env):
            errors.setdefault("override_environment", []).append(problem)
        secret_keys = job_secret_keys(job, env)
    if errors:
        raise ValidationError(errors)
    return LaunchSettings(
        image=image,
        argv=argv,
        env=env,
        secret_keys=secret_keys,
        memory_mb=int(numbers["memory_limit"]),
        cpu=float(numbers["cpu_limit"]),
        timeout_seconds=int(numbers["timeout_seconds"]),
        max_retries=int(numbers["max_retries"]),
        retry_backoff_seconds=float(numbers["retry_backoff_seconds"]),
        retry_backoff_max_seconds=float(numbers["retry_backoff_max_seconds"]),
        retry_on=retry_on,
        priority=int(numbers["priority"]),
    )
