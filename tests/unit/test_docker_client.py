"""The Docker client looks the environment up only where it can matter: not for a local socket."""

from __future__ import annotations

import os

import pytest

from executors.docker.client import HostAPIClient


def _settings(client: HostAPIClient, url: str) -> dict[str, object]:
    return client.merge_environment_settings(url, {}, None, None, None)


@pytest.fixture(autouse=True)
def _only_our_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own proxy settings (any case, any scheme) are not part of these tests."""
    for variable in list(os.environ):
        if variable.lower().endswith("_proxy"):
            monkeypatch.delenv(variable)


def test_a_local_socket_ignores_proxies_and_netrc_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NETRC", "/nonexistent/netrc")
    local = HostAPIClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    try:
        assert local.trust_env is False
        assert _settings(local, f"{local.base_url}/v1.41/_ping")["proxies"] == {}
    finally:
        local.close()


def test_a_tcp_host_still_honours_proxies_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    remote = HostAPIClient(base_url="tcp://docker.invalid:2375", version="1.41")
    try:
        assert remote.trust_env is True
        proxies = _settings(remote, f"{remote.base_url}/v1.41/_ping")["proxies"]
        assert proxies == {"http": "http://proxy.invalid:3128"}
    finally:
        remote.close()
