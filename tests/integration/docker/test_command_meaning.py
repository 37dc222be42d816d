"""A job's command replaces the image's ENTRYPOINT on Docker, as it does on Cloud Run (real Docker)."""

from __future__ import annotations

import shutil

import pytest

from executors.docker import DockerExecutor
from tests.integration.docker.support import make_spec, wait_for
from tests.support.images import DEFAULT_BUSYBOX, build_rootfs

pytestmark = pytest.mark.docker

ENTRYPOINT_IMAGE = "cm-test/entrypoint:1"


@pytest.fixture(scope="module")
def entrypoint_image(docker_session: DockerExecutor) -> str:
    """busybox with ``ENTRYPOINT ["/bin/echo", "from-entrypoint"]`` and ``CMD ["from-cmd"]``."""
    api = docker_session.api
    api.import_image_from_data(
        build_rootfs(shutil.which("busybox") or DEFAULT_BUSYBOX),
        repository=ENTRYPOINT_IMAGE.split(":")[0],
        tag=ENTRYPOINT_IMAGE.split(":")[1],
        changes=['ENTRYPOINT ["/bin/echo", "from-entrypoint"]', 'CMD ["from-cmd"]', "ENV PATH=/bin"],
    )
    return ENTRYPOINT_IMAGE


@pytest.mark.parametrize(
    ("command", "output"),
    [
        ((), "from-entrypoint from-cmd\n"),  # no command: the image's ENTRYPOINT and CMD
        (("echo", "mine"), "mine\n"),  # argv[0] replaces the ENTRYPOINT, the rest are its arguments
        (("echo",), "\n"),  # the image's CMD is not appended to a command either
        (("sh", "-c", "echo $0-$1", "a", "b"), "a-b\n"),
    ],
)
def test_the_command_replaces_the_entrypoint(
    docker_executor: DockerExecutor,
    instance: str,
    entrypoint_image: str,
    command: tuple[str, ...],
    output: str,
) -> None:
    spec = make_spec(instance, command, image=entrypoint_image)
    docker_executor.launch(spec)
    done = wait_for(docker_executor, spec.name)
    assert done.exit_code == 0, done.error
    assert docker_executor.logs(spec.name).stdout == output
