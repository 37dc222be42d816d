"""A tiny local image for tests, the demo and the benchmark, built without any registry.

These machines cannot pull images, so the image is made with ``docker import`` from a root
filesystem assembled in memory: the host's static busybox binary, a symlink per applet, a
writable ``/tmp``, a minimal ``/etc/passwd`` and a few helper scripts that speak the
``MockExecutor`` script language, so that one command behaves the same on both executors:

``stderr WORDS`` (print to stderr), ``spew BYTES`` (that many ``x`` on stdout), ``oom``
(allocate until the memory limit kills it), ``hang`` (never exit).

The build takes well under a second and is skipped when the tag already exists.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from typing import Any

import docker

DEFAULT_TAG = "container-manager/busybox:latest"
DEFAULT_BUSYBOX = "/usr/bin/busybox"

#: Applets linked even when ``busybox --list`` cannot be run.
CORE_APPLETS = (
    "sh", "ash", "echo", "printf", "sleep", "true", "false", "cat", "yes", "head", "tail", "dd",
    "env", "id", "ls", "tr", "wc", "seq", "kill", "ps", "mkdir", "rm", "touch", "grep", "sed",
    "date", "uname", "whoami", "hostname", "test", "[", "expr", "printenv", "pwd", "tee",
)  # fmt: skip

#: Helper commands mirroring the mock executor's script verbs.
SCRIPTS = {
    "stderr": '#!/bin/sh\necho "$@" >&2\n',
    "spew": "#!/bin/sh\nhead -c \"${1:-0}\" /dev/zero | tr '\\000' x\n",
    "oom": '#!/bin/sh\nx=xxxxxxxxxxxxxxxx\nwhile :; do x="$x$x"; done\n',
    "hang": "#!/bin/sh\nexec sleep 2147483647\n",
}

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


class TestImageError(RuntimeError):
    """The test image could not be built."""

    __test__ = False  # not a pytest test class


def _api_client(client_or_base_url: Any) -> tuple[docker.APIClient, bool]:
    """A low-level client from whatever the caller has; True when we made it (and must close it)."""
    if client_or_base_url is None:
        return docker.APIClient(**docker.utils.kwargs_from_env()), True
    if isinstance(client_or_base_url, str):
        return docker.APIClient(base_url=client_or_base_url), True
    if isinstance(client_or_base_url, docker.APIClient):
        return client_or_base_url, False
    if isinstance(client_or_base_url, docker.DockerClient):
        return client_or_base_url.api, False
    api = getattr(client_or_base_url, "api", None)  # e.g. a DockerExecutor
    if isinstance(api, docker.APIClient):
        return api, False
    raise TypeError(f"expected a docker client, a base URL or None, got {type(client_or_base_url).__name__}")


def _applets(busybox: str) -> list[str]:
    try:
        out = subprocess.run([busybox, "--list"], capture_output=True, text=True, timeout=10, check=True)
        names = {line.strip() for line in out.stdout.splitlines() if line.strip()}
    except (OSError, subprocess.SubprocessError):
        names = set()
    names.update(CORE_APPLETS)
    names.discard("busybox")
    return sorted(n for n in names if "/" not in n and n not in SCRIPTS)


def _add_dir(tar: tarfile.TarFile, path: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(path)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = int(time.time())
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, path: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(path)
    info.size = len(data)
    info.mode = mode
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def build_rootfs(busybox: str = DEFAULT_BUSYBOX) -> bytes:
    """The image's root filesystem as an uncompressed tar archive."""
    with open(busybox, "rb") as fh:
        binary = fh.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "dev", "proc", "sys", "root"):
            _add_dir(tar, d, 0o700 if d == "root" else 0o755)
        _add_dir(tar, "tmp", 0o1777)
        _add_file(tar, "bin/busybox", binary, 0o755)
        for applet in _applets(busybox):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            link.mode = 0o777
            tar.addfile(link)
        for name, script in SCRIPTS.items():
            _add_file(tar, f"bin/{name}", script.encode(), 0o755)
        _add_file(tar, "etc/passwd", PASSWD.encode())
        _add_file(tar, "etc/group", GROUP.encode())
    return buf.getvalue()


def ensure_busybox_image(
    client_or_base_url: Any = None,
    tag: str = DEFAULT_TAG,
    *,
    busybox: str | None = None,
) -> str:
    """Make sure ``tag`` exists on the daemon, importing it from the host's busybox if not.

    ``client_or_base_url`` is a ``docker.APIClient``, a ``docker.DockerClient``, anything with
    an ``api`` attribute holding one (a ``DockerExecutor``), a base URL, or None for the
    environment's default daemon. Returns ``tag``.
    """
    api, owned = _api_client(client_or_base_url)
    try:
        try:
            api.inspect_image(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        path = busybox or shutil.which("busybox") or DEFAULT_BUSYBOX
        if not os.path.isfile(path):
            raise TestImageError(
                f"busybox not found at {path}: install it with `apt-get install busybox-static` "
                "(a statically linked busybox is needed to build the test image)"
            )
        repository, _, version = tag.rpartition(":")
        if not repository or "/" in version:
            repository, version = tag, "latest"
        api.import_image_from_data(
            build_rootfs(path),
            repository=repository,
            tag=version,
            changes=['CMD ["sh"]', "ENV PATH=/bin"],
        )
        api.inspect_image(tag)  # raises if the import did not produce the tag
        return tag
    finally:
        if owned:
            api.close()
