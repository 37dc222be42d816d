"""The real ``DockerExecutor`` on remote daemons over mutual TLS, configured as a user configures it.

Every host row here is what a user writes: ``connection_string="tcp://127.0.0.1:PORT"`` and
``executor_config`` naming the CA, client certificate and key files. The daemons are real
``dockerd`` processes with ``--tlsverify`` (``tests.support.dockerd``), so the handshake, the
certificate checks and every verb travel the same path as against a machine across a network.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from container_manager.models import ExecutorHost
from executors.docker import DockerExecutor
from executors.exceptions import ExecutorError
from executors.types import ContainerState, EventKind, ExecutorEvent
from tests.integration.docker.support import make_spec, wait_for
from tests.integration.multihost.support import containers_on, host_row
from tests.integration.reconciler_docker.support import cli, cm_env, wait_until
from tests.support.dockerd import DockerdHost

pytestmark = pytest.mark.docker


def _secrets(host: DockerdHost) -> list[str]:
    """Text that must never appear in a message: the private keys' PEM bodies."""
    found: list[str] = []
    for pem in host.pki.private_keys():
        found.extend(line for line in pem.decode().splitlines() if line and not line.startswith("-----"))
    return found


def test_every_verb_works_over_tls(db: Any, tls_hosts: list[DockerdHost], instance: str) -> None:
    host, other = tls_hosts[0], tls_hosts[1]
    executor = host_row(host).get_executor()
    assert isinstance(executor, DockerExecutor) and executor.base_url == host.base_url

    spec = make_spec(instance, "echo to stdout; echo to stderr >&2; exit 3")
    executor.launch(spec)
    done = wait_for(executor, spec.name)
    assert (done.state, done.exit_code) == (ContainerState.EXITED, 3)
    # Run by that daemon, and by no other one.
    assert [c["Names"] for c in containers_on(host, instance)] == [[f"/{spec.name}"]]
    assert containers_on(other, instance) == []
    assert [o.name for o in executor.list_managed(instance)] == [spec.name]
    tail = executor.logs(spec.name)
    assert (tail.stdout, tail.stderr) == ("to stdout\n", "to stderr\n")

    executor.remove(spec.name)
    assert executor.inspect(spec.name).state is ContainerState.NOT_FOUND
    assert containers_on(host, instance) == []


def test_stop_over_tls(db: Any, tls_hosts: list[DockerdHost], instance: str) -> None:
    executor = host_row(tls_hosts[1]).get_executor()
    spec = make_spec(instance, "trap 'exit 143' TERM; while true; do sleep 0.1; done")
    executor.launch(spec)
    wait_for(executor, spec.name, lambda o: o.state is ContainerState.RUNNING)
    executor.stop(spec.name, grace_seconds=5)
    assert wait_for(executor, spec.name).exit_code == 143


def test_events_stream_over_tls(db: Any, tls_hosts: list[DockerdHost], instance: str) -> None:
    executor = host_row(tls_hosts[2]).get_executor()
    assert isinstance(executor, DockerExecutor) and executor.supports_events
    stop = threading.Event()
    seen: list[ExecutorEvent] = []

    def watch() -> None:
        for event in executor.watch(instance, stop):
            seen.append(event)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        # Exits a second after the launch: the watcher, started first, reads from before that.
        spec = make_spec(instance, "sleep 1", job=41, attempt=2)
        executor.launch(spec)
        wait_until(
            lambda: EventKind.DIED in [e.kind for e in seen if e.name == spec.name],
            20,
            f"a 'die' event for {spec.name} (seen: {seen})",
        )
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive(), "watch() did not return after stop was set"
    died = next(e for e in seen if e.name == spec.name and e.kind is EventKind.DIED)
    assert (died.job_id, died.attempt) == (41, 2)
    assert executor.counters()["events"].retries == 0  # one stream, never reconnected


def test_health_check_of_a_good_host(db: Any, tls_hosts: list[DockerdHost]) -> None:
    row = host_row(tls_hosts[0])
    report = row.health_check()
    assert report.healthy, report.message
    row.refresh_from_db()
    assert row.health_status == "healthy"
    assert row.health_message.startswith("Docker/") and tls_hosts[0].base_url in row.health_message


def _refused(row: ExecutorHost, host: DockerdHost, what: str) -> str:
    """Health check ``row`` and every verb: all refused cleanly; returns the recorded message."""
    report = row.health_check(timeout=5)
    assert not report.healthy, f"{what}: accepted"
    row.refresh_from_db()
    assert row.health_status == "unhealthy" and row.last_health_check is not None
    message = row.health_message
    assert message == report.message and host.base_url in message, message
    assert "Traceback" not in message
    leaked = [s for s in _secrets(host) if s in message]
    assert not leaked, f"key material in the health message: {message}"
    executor = row.get_executor()
    with pytest.raises(ExecutorError) as raised:
        executor.list_managed("anything")
    assert host.base_url in str(raised.value)
    assert not [s for s in _secrets(host) if s in str(raised.value)]
    return message


# Under TLS 1.3 the server checks the client's certificate after the client has sent its
# Finished message: the client sees the daemon's "bad certificate" alert, or only the
# connection closing ("EOF occurred in violation of protocol"), depending on timing. So the
# client-side refusals below assert that the host is refused and named, not the wording.


def test_a_client_certificate_from_another_ca_is_refused(db: Any, tls_hosts: list[DockerdHost]) -> None:
    host = tls_hosts[0]
    _refused(host_row(host, client=host.pki.rogue_client), host, "a rogue client certificate")


def test_no_client_certificate_is_refused(db: Any, tls_hosts: list[DockerdHost]) -> None:
    host = tls_hosts[0]
    row = ExecutorHost.objects.create(
        name=host.name,
        executor_type="docker",
        connection_string=host.base_url,
        executor_config={"tls_ca_cert": str(host.pki.ca)},
    )
    _refused(row, host, "no client certificate")


def test_a_server_certificate_from_another_ca_is_refused(db: Any, tls_hosts: list[DockerdHost]) -> None:
    """The client trusts only the rogue CA: the daemon's certificate (real CA) must not pass."""
    host = tls_hosts[1]
    message = _refused(host_row(host, ca=host.pki.rogue_ca), host, "an untrusted server certificate")
    assert "is not trusted" in message and "tls_ca_cert" in message


def test_hosts_check_from_the_command_line_reports_a_refused_certificate(
    db: Any, tls_hosts: list[DockerdHost], tmp_path: Path, instance: str
) -> None:
    """``manage_jobs hosts --check`` in a separate process: one good host, one refused; no traceback."""
    env = cm_env(tmp_path, instance)
    good, bad = tls_hosts[0], tls_hosts[1]
    setup = (
        "from container_manager.models import ExecutorHost as H\n"
        f"H.objects.create(name='good', executor_type='docker', connection_string={good.base_url!r},"
        f" executor_config={good.executor_config()!r})\n"
        f"H.objects.create(name='bad', executor_type='docker', connection_string={bad.base_url!r},"
        f" executor_config={bad.executor_config(client=bad.pki.rogue_client)!r})\n"
    )
    for args in (["migrate", "-v0"], ["shell", "-c", setup]):
        subprocess.run([*cli(), *args], env=env, check=True, capture_output=True, timeout=120)
    done = subprocess.run(
        [*cli(), "manage_jobs", "hosts", "--check", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["good"]["health"] == "healthy", rows["good"]
    assert rows["bad"]["health"] == "unhealthy" and bad.base_url in rows["bad"]["message"]
    assert not [s for s in _secrets(bad) if s in done.stdout + done.stderr]


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_in_the_environment_does_not_replace_the_hosts_ca(
    db: Any, tls_hosts: list[DockerdHost], monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """Machines often set a CA bundle for requests (corporate CAs): a host's own CA must still win
    (docker/docker-py#2433), for every verb, not only the first request."""
    monkeypatch.setenv(variable, str(tls_hosts[0].pki.rogue_ca))
    executor = host_row(tls_hosts[0]).get_executor()
    report = executor.health_check(timeout=5)
    assert report.healthy, report.message
    assert executor.list_managed("no-such-instance") == []


def test_a_refused_certificate_is_explained_in_the_hosts_terms(db: Any, tls_hosts: list[DockerdHost]) -> None:
    host = tls_hosts[0]
    client = host_row(host, name="rogue-client", client=host.pki.rogue_client)
    server = host_row(host, name="rogue-ca", ca=host.pki.rogue_ca)
    plain = ExecutorHost.objects.create(
        name="no-tls", executor_type="docker", connection_string=host.base_url, executor_config={}
    )
    for row, key in ((client, "tls_client_cert"), (server, "tls_ca_cert"), (plain, "tls_ca_cert")):
        report = row.health_check(timeout=5)
        message = report.message
        assert not report.healthy and key in message, message
        assert key in message, message
        for internal in ("HTTPSConnectionPool", "Max retries exceeded", "_ssl.c", "SSLError("):
            assert internal not in message, message
