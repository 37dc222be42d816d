"""From a ``ContainerSpec`` to the Cloud Run ``Job`` that runs it: names, labels, resources, env.

Pure functions, no calls. Each rule cites the page or proto field it follows.

* **Command.** A spec's ``command`` is the argv to run and replaces the image's ENTRYPOINT:
  ``container.command = [argv0]`` and ``container.args = argv[1:]`` (``Container.command``:
  "Entrypoint array. Not executed within a shell. The docker image's ENTRYPOINT is used if this
  is not provided"; ``args``: "The docker image's CMD is used if this is not provided"). An
  empty command sets neither, so the image's own ENTRYPOINT and CMD run. The Docker executor
  gives the same argv the same meaning.
* **Resources.** Cloud Run job tasks have a whole number of vCPUs (1, 2, 4, 6 or 8), at least
  512 MiB, and per vCPU count a minimum and maximum of memory
  (https://cloud.google.com/run/docs/configuring/jobs/memory-limits and .../jobs/cpu): CPU is
  rounded *up*; memory is raised to the minimum; memory beyond what the CPU count allows raises
  the CPU count. More than 8 vCPUs or 32 GiB cannot run and is refused (``InvalidSpec``).
* **Environment.** ``EnvVar.value`` is at most 32768 bytes (proto docs); a container has at
  most 1000 variables (https://cloud.google.com/run/quotas, "Environment variables");
  names defined by the container runtime contract are reserved and cannot be set
  (https://cloud.google.com/run/docs/configuring/jobs/environment-variables, "Reserved names";
  https://cloud.google.com/run/docs/container-contract#env-vars).
* **Labels.** Cloud Run label keys and values allow only ``[a-z0-9_-]`` (keys start with a
  letter), at most 63 characters, and not the ``run.googleapis.com``/``cloud.googleapis.com``
  namespaces (``Job.labels``), so ``container_manager.job`` becomes ``cm-job`` and values are
  sanitised. The exact labels and container name also travel in annotations, read back first.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping

from google.cloud import run_v2
from google.protobuf import duration_pb2

from executors.exceptions import InvalidSpec
from executors.types import LABEL_ATTEMPT, LABEL_INSTANCE, LABEL_JOB, LABEL_MANAGED, ContainerSpec

#: Whole vCPU counts a Cloud Run job task may have.
CPU_STEPS: tuple[int, ...] = (1, 2, 4, 6, 8)
#: vCPUs -> (minimum MiB, maximum MiB) allowed with that many vCPUs.
MEMORY_BOUNDS_MIB: dict[int, tuple[int, int]] = {
    1: (512, 4 * 1024),
    2: (512, 8 * 1024),
    4: (2 * 1024, 16 * 1024),
    6: (4 * 1024, 24 * 1024),
    8: (4 * 1024, 32 * 1024),
}
MIN_MEMORY_MIB = 512
MAX_MEMORY_MIB = 32 * 1024
#: Longest task timeout (https://cloud.google.com/run/docs/configuring/task-timeout: 168 hours).
MAX_TIMEOUT_SECONDS = 168 * 3600
#: ``EnvVar.value``: "the maximum length is 32768 bytes".
MAX_ENV_VALUE_BYTES = 32768
#: ``EnvVar.name``: "Must not exceed 32768 characters".
MAX_ENV_NAME_CHARS = 32768
#: Quotas and limits: "Maximum number of environment variables per container: 1000".
MAX_ENV_VARS = 1000
#: Quotas and limits: "Maximum number of command arguments per container: 1000".
MAX_ARGS = 1000
#: Set by Cloud Run itself (container runtime contract), so a job may not set them.
RESERVED_ENV_NAMES = frozenset(
    {
        "PORT",
        "K_SERVICE",
        "K_REVISION",
        "K_CONFIGURATION",
        "CLOUD_RUN_JOB",
        "CLOUD_RUN_EXECUTION",
        "CLOUD_RUN_TASK_INDEX",
        "CLOUD_RUN_TASK_ATTEMPT",
        "CLOUD_RUN_TASK_COUNT",
    }
)
#: Prefixes the platform keeps for itself.
RESERVED_ENV_PREFIXES = ("CLOUD_RUN_", "X_GOOGLE_")

JOB_ID_MAX = 63
LABEL_MAX = 63
#: Label keys of ours, shortened to fit Cloud Run's label rules.
LABEL_KEY_MAP = {
    LABEL_MANAGED: "cm-managed",
    LABEL_INSTANCE: "cm-instance",
    LABEL_JOB: "cm-job",
    LABEL_ATTEMPT: "cm-attempt",
}
LABEL_KEY_REVERSE = {v: k for k, v in LABEL_KEY_MAP.items()}
#: Label carrying the container name (when it is a valid label value).
NAME_LABEL = "cm-name"
ANNOTATION_NAME = "container-manager/name"
ANNOTATION_LABELS = "container-manager/labels"


def _short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def job_id_for(name: str) -> str:
    """The Cloud Run job id for container ``name``: deterministic, valid, collision-resistant.

    A name that already is a valid job id (lowercase letter first, then lowercase letters,
    digits and single hyphens, no trailing hyphen, at most 63 characters) is used as it is;
    anything else is sanitised and suffixed with a hash of the original name, so two names
    that sanitise alike still get different ids.
    """
    if re.fullmatch(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?", name):
        return name
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = ("cm-" + cleaned).strip("-")
    suffix = _short_hash(name)
    head = cleaned[: JOB_ID_MAX - len(suffix) - 1].rstrip("-")
    return f"{head}-{suffix}"


def _fit_label(text: str) -> str:
    if len(text) <= LABEL_MAX:
        return text
    suffix = _short_hash(text)
    return f"{text[: LABEL_MAX - len(suffix) - 1]}-{suffix}"


def label_key(key: str) -> str:
    """A Cloud Run label key for one of our label keys (``container_manager.job`` -> ``cm-job``)."""
    if key in LABEL_KEY_MAP:
        return LABEL_KEY_MAP[key]
    if key.startswith("container_manager."):
        key = "cm-" + key[len("container_manager.") :]
    cleaned = re.sub(r"[^a-z0-9_-]", "-", key.lower())
    if not cleaned or not cleaned[0].isalpha():
        cleaned = "cm-" + cleaned
    return _fit_label(cleaned)


def label_value(value: str) -> str:
    """A Cloud Run label value: lowercase ``[a-z0-9_-]``, at most 63 characters."""
    return _fit_label(re.sub(r"[^a-z0-9_-]", "-", str(value).lower()))


def cloud_run_labels(labels: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {label_key(k): label_value(v) for k, v in labels}


def cloud_run_resources(memory_mb: int, cpu: float) -> tuple[str, str]:
    """(cpu, memory) limits for Cloud Run from our MiB and cores; see the module docstring."""
    if memory_mb <= 0 or cpu <= 0:
        raise InvalidSpec(f"memory ({memory_mb} MiB) and cpu ({cpu}) must be positive")
    if cpu > CPU_STEPS[-1] + 1e-9:
        raise InvalidSpec(f"Cloud Run jobs have at most {CPU_STEPS[-1]} vCPUs; {cpu} requested")
    if memory_mb > MAX_MEMORY_MIB:
        raise InvalidSpec(
            f"Cloud Run jobs have at most {MAX_MEMORY_MIB} MiB of memory; {memory_mb} requested"
        )
    index = next(i for i, steps in enumerate(CPU_STEPS) if steps + 1e-9 >= cpu)
    memory = max(int(memory_mb), MIN_MEMORY_MIB)
    while memory > MEMORY_BOUNDS_MIB[CPU_STEPS[index]][1]:
        index += 1
    cores = CPU_STEPS[index]
    memory = max(memory, MEMORY_BOUNDS_MIB[cores][0])
    return str(cores), f"{memory}Mi"


def environment_problems(env: Mapping[str, str]) -> list[str]:
    """What Cloud Run refuses in a job's environment; each message names the variable, never its value."""
    problems: list[str] = []
    if len(env) > MAX_ENV_VARS:
        problems.append(
            f"{len(env)} environment variables: Cloud Run allows at most {MAX_ENV_VARS} per container"
        )
    for name, value in env.items():
        if not name or "=" in name or len(name) > MAX_ENV_NAME_CHARS:
            problems.append(
                f"environment variable name {name[:80]!r} is invalid on Cloud Run: it must be non-empty, "
                f"without '=', at most {MAX_ENV_NAME_CHARS} characters"
            )
        elif name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
            problems.append(
                f"environment variable {name} is reserved by Cloud Run (names set by the container "
                "runtime contract, such as PORT, CLOUD_RUN_* and X_GOOGLE_*, cannot be set)"
            )
        size = len(str(value).encode("utf-8"))
        if size > MAX_ENV_VALUE_BYTES:
            problems.append(
                f"environment variable {name[:80]} has a value of {size} bytes: Cloud Run allows at most "
                f"{MAX_ENV_VALUE_BYTES} bytes per value"
            )
    return problems


def build_job(
    spec: ContainerSpec,
    *,
    task_count: int = 1,
    service_account: str | None = None,
    vpc_connector: str | None = None,
    vpc_egress: str | None = None,
    extra_labels: Mapping[str, str] | None = None,
) -> run_v2.Job:
    """The Cloud Run Job for one attempt; ``InvalidSpec`` for what Cloud Run cannot run."""
    if not spec.image:
        raise InvalidSpec("image is empty")
    if spec.timeout_seconds <= 0 or spec.timeout_seconds > MAX_TIMEOUT_SECONDS:
        raise InvalidSpec(
            f"Cloud Run task timeout must be 1..{MAX_TIMEOUT_SECONDS} s, got {spec.timeout_seconds}"
        )
    if len(spec.command) > MAX_ARGS + 1:
        raise InvalidSpec(f"Cloud Run allows at most {MAX_ARGS} command arguments per container")
    problems = environment_problems(spec.env_dict)
    if problems:
        raise InvalidSpec("; ".join(problems))
    cpu, memory = cloud_run_resources(spec.memory_mb, spec.cpu)
    container = run_v2.Container(
        image=spec.image,
        env=[run_v2.EnvVar(name=k, value=v) for k, v in spec.env],
        resources=run_v2.ResourceRequirements(limits={"cpu": cpu, "memory": memory}),
    )
    if spec.command:
        container.command = [spec.command[0]]
        container.args = list(spec.command[1:])
    task = run_v2.TaskTemplate(
        containers=[container],
        # The reconciler owns retries: Cloud Run retries nothing.
        max_retries=0,
        # TaskTemplate.timeout counts from the task's start, per attempt: Cloud Run enforces it.
        timeout=duration_pb2.Duration(seconds=int(spec.timeout_seconds)),
    )
    if service_account:
        task.service_account = service_account
    if vpc_connector:
        task.vpc_access = run_v2.VpcAccess(
            connector=vpc_connector,
            egress=getattr(run_v2.VpcAccess.VpcEgress, vpc_egress or "PRIVATE_RANGES_ONLY"),
        )
    labels = {**cloud_run_labels(spec.labels), **(extra_labels or {})}
    name_value = label_value(spec.name)
    if name_value == spec.name:
        labels[NAME_LABEL] = name_value
    annotations = {
        ANNOTATION_NAME: spec.name,
        ANNOTATION_LABELS: json.dumps(dict(spec.labels), sort_keys=True, separators=(",", ":")),
    }
    return run_v2.Job(
        labels=labels,
        annotations=annotations,
        template=run_v2.ExecutionTemplate(
            labels=labels, annotations=annotations, task_count=task_count, template=task
        ),
    )


def original_labels(resource: run_v2.Job | run_v2.Execution) -> dict[str, str] | None:
    raw = resource.annotations.get(ANNOTATION_LABELS)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


def labels_of(resource: run_v2.Job | run_v2.Execution) -> dict[str, str]:
    """Our labels as they were given (from the annotation), else mapped back from Cloud Run's."""
    original = original_labels(resource)
    if original is not None:
        return original
    return {LABEL_KEY_REVERSE.get(k, k): v for k, v in resource.labels.items() if k != NAME_LABEL}


def is_ours(resource: run_v2.Job | run_v2.Execution, instance: str) -> bool:
    original = original_labels(resource)
    if original is not None:
        return original.get(LABEL_INSTANCE) == instance
    return resource.labels.get(LABEL_KEY_MAP[LABEL_INSTANCE]) == label_value(instance)


def container_name(job: run_v2.Job) -> str:
    return job.annotations.get(ANNOTATION_NAME) or job.labels.get(NAME_LABEL) or job.name.rsplit("/", 1)[-1]
