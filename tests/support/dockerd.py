"""Extra Docker daemons on this machine, each a separate "remote" host reached over mutual TLS.

Why: the reconciler must drive several Docker hosts at once, over ``tcp://`` with TLS as users
configure remote daemons, and survive one of them dying. Those paths only run against real
daemons. A *fleet* is two or three ``dockerd`` processes, each with

* a network namespace of its own (``ip netns add``): its ``docker0`` bridge, iptables and
  containers' networks never touch the host's (a second ``dockerd`` in the host namespace with
  ``--bridge none`` would delete the main daemon's ``docker0``);
* its own ``--data-root``, ``--exec-root`` (hence its own managed containerd), ``--pidfile``,
  ``--cgroup-parent`` and an empty ``--config-file``;
* a listening socket on the host's ``127.0.0.1:PORT``, made by ``systemd-socket-activate`` in
  the host namespace and handed to ``dockerd -H fd://`` that ``nsenter --net=`` started inside
  the namespace (``ip netns exec`` would remount /sys and dockerd then fails with "Devices
  cgroup isn't mounted"); ``--tlsverify`` with a CA, server and client certificates made by
  ``tests.support.tlscerts``.

``socket-activate`` and ``nsenter`` both exec, so the process the harness starts *is* dockerd:
``kill()`` SIGKILLs exactly that daemon (its managed containerd dies with it; the containers'
shims keep running, as when a daemon crashes), and ``restart()`` starts it again on the same
port and data root; without live-restore, the restarted daemon kills the containers it finds
running (exit 137).

Clean-up is complete whatever happened: dockerd stopped (SIGTERM, then SIGKILL), every
process left under the host's directory or cgroup killed, its mounts detached, its cgroups,
namespace and directories removed. A fleet records its owner (pid and start time), so
``sweep_leftovers()`` removes what a crashed run left without touching a live run's fleet
(other test sessions may run on the same machine at the same time).

Needs root, ``dockerd``, ``ip`` (iproute2), ``nsenter`` (util-linux) and
``systemd-socket-activate`` (systemd); ``missing_requirements()`` names what is absent.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.tls

from tests.components import free_port
from tests.support.tlscerts import KeyPair, Pki, make_pki

#: Prefix of every fleet directory (under the temp dir), namespace and cgroup parent.
PREFIX = "cmtd-"
LOOPBACK = "127.0.0.1"
#: The API version of dockerd 20.10 (pinned: "auto" would ask the daemon before trust_env is set).
API_VERSION = "1.41"
BINARIES = ("dockerd", "ip", "nsenter", "systemd-socket-activate")


class DockerdError(RuntimeError):
    """A harness daemon could not be started (the message quotes the end of its log)."""


def missing_requirements() -> list[str]:
    """What this machine lacks to run a fleet (empty when it can)."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=check)


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not reaped yet, does not count)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"


def _drop_stale_pidfile(path: Path) -> None:
    """Remove a pid file whose process is gone or a zombie.

    dockerd 20.10 takes any pid that ``kill(pid, 0)`` accepts for a live process, zombies
    included: after a SIGKILL its containerd (killed with it) can linger as a zombie until
    init reaps it, and a new dockerd would then wait for that containerd instead of starting one.
    """
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    if not _alive(pid):
        path.unlink(missing_ok=True)


def _pids_mentioning(path: Path) -> list[int]:
    """Processes whose command line names a file under ``path`` (dockerd, its containerd, shims)."""
    needle = str(path).rstrip("/").encode() + b"/"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _cgroup_dirs(parent: str) -> list[Path]:
    """The directories of cgroup ``parent`` and its children in every hierarchy, deepest first."""
    name = parent.strip("/")
    tops = [Path("/sys/fs/cgroup") / name, *map(Path, glob.glob(f"/sys/fs/cgroup/*/{name}"))]
    found: list[Path] = []
    for top in tops:
        if top.is_dir():
            found.extend(Path(d) for d, _, _ in os.walk(top))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _kill_cgroup(parent: str) -> None:
    """SIGKILL every process in cgroup ``parent`` (the containers of a daemon), then remove it."""
    for _ in range(50):
        pids: set[int] = set()
        for directory in _cgroup_dirs(parent):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for directory in _cgroup_dirs(parent):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _unmount_under(path: Path) -> None:
    """Detach every mount below ``path`` (overlay layers, shm, netns files), deepest first."""
    prefix = str(path).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # mountinfo escapes spaces as \040
        if point.startswith(prefix) or point == str(path):
            points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        _run("umount", "--lazy", point, check=False)


def _wipe(root: Path, netns: str, cgroup_parent: str) -> None:
    """Remove everything one daemon may have left, alive or not (idempotent)."""
    for pid in _pids_mentioning(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _kill_cgroup(cgroup_parent)
    _unmount_under(root)
    _run("ip", "netns", "del", netns, check=False)
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class DockerdHost:
    """One harness daemon: where it listens, what it owns, and its process."""

    name: str
    root: Path
    netns: str
    cgroup_parent: str
    port: int
    pki: Pki
    proc: subprocess.Popen[bytes] | None = None
    #: how many times it was started (1 after the first start).
    starts: int = 0

    @property
    def base_url(self) -> str:
        """The connection string a user would give: ``tcp://127.0.0.1:PORT``."""
        return f"tcp://{LOOPBACK}:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "dockerd.log"

    def executor_config(self, *, client: KeyPair | None = None, ca: Path | None = None) -> dict[str, Any]:
        """``ExecutorHost.executor_config`` for this host: the TLS file paths (others to test refusals)."""
        client = client or self.pki.client
        return {
            "tls_ca_cert": str(ca or self.pki.ca),
            "tls_client_cert": str(client.cert),
            "tls_client_key": str(client.key),
        }

    def api(self, timeout: float = 30.0) -> docker.APIClient:
        """A low-level client with the good client certificate (to look behind the executor's back)."""
        tls = docker.tls.TLSConfig(
            client_cert=(str(self.pki.client.cert), str(self.pki.client.key)),
            ca_cert=str(self.pki.ca),
            verify=str(self.pki.ca),
        )
        api = docker.APIClient(base_url=self.base_url, tls=tls, timeout=timeout, version=API_VERSION)
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the session's CA (docker-py#2433).
        api.trust_env = False
        return api

    # Life -------------------------------------------------------------------------------------

    def _command(self) -> list[str]:
        config = self.root / "daemon.json"
        if not config.exists():
            config.write_text("{}\n")  # never the machine's /etc/docker/daemon.json
        return [
            "systemd-socket-activate",
            "-l",
            f"{LOOPBACK}:{self.port}",
            "nsenter",
            f"--net=/var/run/netns/{self.netns}",
            "dockerd",
            "-H",
            "fd://",
            f"--config-file={config}",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'dockerd.pid'}",
            f"--cgroup-parent={self.cgroup_parent}",
            "--tlsverify",
            f"--tlscacert={self.pki.ca}",
            f"--tlscert={self.pki.server.cert}",
            f"--tlskey={self.pki.server.key}",
            # Containers need no way out of the namespace: leave iptables and sysctls alone.
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            # Stopping waits this long for containers (default 15 s): teardown stays short.
            "--shutdown-timeout=1",
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Start dockerd (again, after ``kill``/``stop``) and wait until it answers over TLS."""
        if self.running:
            return
        _drop_stale_pidfile(self.root / "dockerd.pid")
        _drop_stale_pidfile(self.root / "exec" / "containerd" / "containerd.pid")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")}
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts + 1} ---\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self._command(), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None:
                raise DockerdError(f"dockerd {self.name} exited {self.proc.returncode}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise DockerdError(
                    f"dockerd {self.name} did not answer in {timeout:.0f} s:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _log_tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answers(self) -> bool:
        """True when the daemon answers a ping over TLS."""
        try:
            api = self.api(timeout=2)
        except docker.errors.DockerException:
            return False
        try:
            return bool(api.ping())
        except Exception:
            return False
        finally:
            api.close()

    def kill(self) -> None:
        """SIGKILL dockerd, as a crash would (its containers keep running until it restarts)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM dockerd (it stops its containers within ``--shutdown-timeout``), SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        """Start again on the same port and data root (after ``kill`` or ``stop``)."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Kill the daemon and remove everything it owns (processes, mounts, cgroups, namespace, files).

        SIGKILL, not a graceful stop: nothing of it is kept, and a graceful stop waits up to 10 s
        for each container whose main process ignores SIGTERM (a shell as PID 1 does).
        """
        try:
            self.kill()
        finally:
            _wipe(self.root, self.netns, self.cgroup_parent)

    # Images and containers ----------------------------------------------------------------------

    def load_image(self, tag: str, archive: bytes) -> None:
        """``docker load`` of ``archive`` (a ``docker save`` of ``tag``) unless the image is here already."""
        api = self.api(timeout=120)
        try:
            try:
                api.inspect_image(tag)
                return
            except docker.errors.ImageNotFound:
                pass
            api.load_image(archive)
            api.inspect_image(tag)
        finally:
            api.close()

    def remove_containers(self, label: str) -> int:
        """Force-remove every container carrying ``label`` (``key=value``); how many there were."""
        api = self.api()
        try:
            items = api.containers(all=True, filters={"label": label})
            for item in items:
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_container(item["Id"], force=True, v=True)
            return len(items)
        finally:
            api.close()


@dataclass
class DockerdFleet:
    """Several harness daemons sharing one directory, one set of certificates and one owner."""

    root: Path
    pki: Pki
    hosts: list[DockerdHost] = field(default_factory=list)

    @classmethod
    def create(cls, count: int) -> DockerdFleet:
        """Make the directory, certificates and namespaces of ``count`` daemons (none started yet)."""
        root = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))  # short: unix socket paths are limited
        token = root.name[len(PREFIX) :]
        (root / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        fleet = cls(root=root, pki=make_pki(root / "pki"))
        try:
            for index in range(1, count + 1):
                name = f"{PREFIX}{token}-{index}"
                host_root = root / f"h{index}"
                host_root.mkdir()
                _run("ip", "netns", "add", name)
                _run("ip", "-n", name, "link", "set", "lo", "up")
                fleet.hosts.append(
                    DockerdHost(
                        name=f"h{index}",
                        root=host_root,
                        netns=name,
                        cgroup_parent=f"/{name}",
                        port=free_port(),
                        pki=fleet.pki,
                    )
                )
        except BaseException:
            fleet.destroy()
            raise
        return fleet

    @classmethod
    def start(cls, count: int = 3, image: str | None = None) -> DockerdFleet:
        """A fleet of ``count`` running daemons, each with ``image`` (from the default daemon) loaded."""
        fleet = cls.create(count)
        try:
            for host in fleet.hosts:
                host.start()
            if image is not None:
                fleet.load_image(image)
        except BaseException:
            fleet.destroy()
            raise
        return fleet

    def load_image(self, tag: str) -> None:
        """``docker save TAG`` on the default daemon, ``docker load`` on every host that lacks it."""
        local = docker.APIClient(**docker.utils.kwargs_from_env(), timeout=120)
        try:
            archive = b"".join(local.get_image(tag))
        finally:
            local.close()
        for host in self.hosts:
            host.load_image(tag, archive)

    def ensure_running(self) -> list[DockerdHost]:
        """Start again any host a test killed or stopped; the hosts restarted."""
        revived = [host for host in self.hosts if not host.running]
        for host in revived:
            host.start()
        return revived

    def remove_containers(self, label: str) -> None:
        for host in self.hosts:
            if host.running:
                host.remove_containers(label)

    def destroy(self) -> None:
        """Stop every daemon and remove everything the fleet made (safe to call twice)."""
        errors = []
        for host in self.hosts:
            try:
                host.destroy()
            except Exception as exc:  # clean the others anyway
                errors.append(f"{host.name}: {exc}")
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise DockerdError("fleet clean-up failed: " + "; ".join(errors))


def _owner_alive(root: Path) -> bool:
    try:
        pid_text, started = (root / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    return _start_time(int(pid_text)) == started


def sweep_leftovers() -> list[str]:
    """Remove what fleets of dead owners left (a crashed or killed run); returns what was removed.

    A fleet whose owner still runs (another test session on this machine) is left alone.
    """
    removed = []
    listed = _run("ip", "netns", "list", check=False).stdout.split("\n")
    namespaces = {line.split()[0] for line in listed if line.startswith(PREFIX)}
    roots = {Path(p) for p in glob.glob(f"/tmp/{PREFIX}*") if os.path.isdir(p)}
    roots |= {Path("/tmp") / ns.rsplit("-", 1)[0] for ns in namespaces}
    for root in sorted(roots):
        if _owner_alive(root):
            continue
        token = root.name[len(PREFIX) :]
        mine = {ns for ns in namespaces if ns.rsplit("-", 1)[0] == root.name}
        indexes = {ns.rsplit("-", 1)[1] for ns in mine}
        indexes |= {p.name[1:] for p in root.glob("h*") if p.name[1:].isdigit()}
        for index in sorted(indexes):
            name = f"{PREFIX}{token}-{index}"
            _wipe(root / f"h{index}", name, f"/{name}")
        shutil.rmtree(root, ignore_errors=True)
        removed.append(str(root))
    return removed
