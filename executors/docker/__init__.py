"""The Docker backend: runs each attempt as one hardened container on one Docker daemon.

``config`` reads a host row's settings (save-time checks, then what needs this machine),
``wire`` maps Docker's payloads (states, times, inspect/list output, log frames), ``errors``
maps its failures onto the executor exceptions, ``executor`` holds the verbs and ``events``
the event stream. See DESIGN.md sections 4, 5 and 7 for why it works the way it does.
"""

from executors.docker.config import CONFIG_KEYS, DEFAULT_BASE_URL
from executors.docker.errors import scrub
from executors.docker.executor import DockerExecutor
from executors.docker.wire import iter_frames, observed_from_inspect, observed_from_list, parse_docker_time

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_BASE_URL",
    "DockerExecutor",
    "iter_frames",
    "observed_from_inspect",
    "observed_from_list",
    "parse_docker_time",
    "scrub",
]
