"""Docker's own floor under the reconciler's latencies, measured with nothing of ours in the way.

Detection can be no faster than the moment Docker lets a finished container's output be read,
and pickup no faster than Docker's own create + start. Both depend on the engine more than on
us: dockerd answers no request about a container (inspect, logs) until it has torn the
container down after its exit, which on a ``bridge`` network includes removing its veth pair
(the output is readable 80-90 ms after the exit on dockerd 20.10 here, 40-50 ms with
``--network none``). So the benchmark
measures these floors on the same daemon, with the same limits, one container at a time:

* ``create_start``: the ``create`` call to the end of the ``start`` call;
* ``exit_to_logs``: the container's exit (``State.FinishedAt``, what the reconciler records as
  the exit and measures detection from) to the end of a ``logs`` call made as soon as Docker's
  ``die`` event arrives (the event itself is stamped some 30 ms after the exit here).

The reconciler's figures minus these are its own cost.
"""

from __future__ import annotations

import time
from typing import Any

import docker

from bench.measure import summary
from executors.docker.wire import parse_docker_time

MIB = 1024 * 1024


def host_config(api: docker.APIClient, network: str) -> dict[str, Any]:
    """The limits and hardening both phases give every container."""
    return api.create_host_config(
        mem_limit=64 * MIB,
        memswap_limit=64 * MIB,
        nano_cpus=500_000_000,
        pids_limit=256,
        security_opt=["no-new-privileges"],
        cap_drop=["ALL"],
        network_mode=network,
    )


def measure(
    api: docker.APIClient, image: str, command: list[str], network: str, samples: int, prefix: str
) -> dict[str, dict[str, float | int | None]]:
    """``samples`` containers one after another: create+start and exit->logs latencies (ms).

    Docker's clock and ours are the same kernel's (the harness daemons run in network
    namespaces of this machine), so its timestamps and ``time.time()`` compare directly.
    """
    create_start: list[float] = []
    exit_to_logs: list[float] = []
    for index in range(samples):
        name = f"{prefix}-{index}"
        events = api.events(since=time.time() - 1, filters={"container": name, "event": "die"}, decode=True)
        try:
            began = time.perf_counter()
            api.create_container(
                image=image,
                command=command,
                name=name,
                user="65534:65534",
                host_config=host_config(api, network),
                detach=True,
            )
            api.start(name)
            create_start.append(1000 * (time.perf_counter() - began))
            for event in events:
                if event.get("Action") == "die":
                    api.logs(name, stdout=True, stderr=True)
                    readable = time.time()
                    finished = parse_docker_time(api.inspect_container(name)["State"]["FinishedAt"])
                    if finished is not None:
                        exit_to_logs.append(1000 * (readable - finished.timestamp()))
                    break
        finally:
            events.close()
            api.remove_container(name, force=True)
    return {"create_start": summary(create_start), "exit_to_logs": summary(exit_to_logs)}
