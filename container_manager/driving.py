"""The app's one door into the reconciler: the model methods that drive a job call these.

Each runs the reconciler's job step for one job in the caller's process (``reconciler.api``),
imported on first use so that the models never import the reconciler at load time: the app
depends on the reconciler only here, lazily, and in one direction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from container_manager.models import ContainerExecution, ContainerJob


def launch(job: ContainerJob) -> str:
    from reconciler import api

    return api.launch_job(job)


def observe(job: ContainerJob) -> str:
    from reconciler import api

    return api.observe_job(job)


def harvest(job: ContainerJob) -> ContainerExecution | None:
    from reconciler import api

    return api.harvest_job(job)
