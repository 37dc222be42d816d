"""docker-py's low-level client, made to honour a host row's own TLS settings.

``docker.APIClient`` is a ``requests.Session``. For every request whose ``verify`` is left
unset (docker-py never sets it per request), requests replaces the session's CA with
``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` when either is set (``Session.
merge_environment_settings``; docker/docker-py#2433). Machines often set those for a
corporate CA, and then a host's ``tls_ca_cert`` would silently stop being the CA its daemon
is checked against. Here the session's own ``verify`` goes into every request: a CA file or
``False`` stays as the host row says; ``True`` (no CA of its own) still lets the environment's
bundle in, as for any HTTPS client. Proxies from the environment apply as before.

A local socket (``unix://``, and ``ssh://`` through its own tunnel: docker-py's
``http+docker://`` URLs) has no proxy, no CA and no netrc entry, so its client does not look
the environment up at all (``trust_env`` off). requests would otherwise scan the whole
environment for proxies and look for a netrc file on every request: about a third of a
millisecond of CPU per call, several calls per job.
"""

from __future__ import annotations

from typing import Any

import docker


class HostAPIClient(docker.APIClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.base_url.startswith("http+docker://"):
            self.trust_env = False

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if verify is None:
            verify = self.verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)
