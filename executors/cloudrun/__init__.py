"""Google Cloud Run Jobs as a backend (see ``executor`` for the design, ``observe`` for exit codes).

``config`` checks a host row's settings without the network (by the shared rules of
``executors._config``), ``mapping`` turns a spec into a Cloud Run Job, ``calls`` maps Google's
errors for the shared call layer (``executors._calls``), ``observe`` reads Executions and Tasks,
``logs`` reads Cloud Logging, ``executor`` holds the verbs.
"""

from executors.cloudrun.config import CONFIG_KEYS, Settings, parse_config
from executors.cloudrun.executor import CloudRunExecutor
from executors.cloudrun.mapping import (
    RESERVED_ENV_NAMES,
    cloud_run_resources,
    environment_problems,
    job_id_for,
    label_key,
    label_value,
)

__all__ = [
    "CONFIG_KEYS",
    "RESERVED_ENV_NAMES",
    "CloudRunExecutor",
    "Settings",
    "cloud_run_resources",
    "environment_problems",
    "job_id_for",
    "label_key",
    "label_value",
    "parse_config",
]
