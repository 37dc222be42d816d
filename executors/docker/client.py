"""docker-py's low-level client, made to honour a host row's own TLS settings.

``docker.APIClient`` is a ``requests.Session``. For every request whose ``verify`` is left
unset (docker-py never sets it per request), requests replaces the session's CA with
``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` when either is set (``Session.
merge_environment_settings``; docker/docker-py#2433). Machines often set those for a
corporate CA, and then a host's ``tls_ca_cert`` would silently stop being the CA its daemon
is checked against. Here the session's own ``verify`` goes into every request: a CA file or
``False`` stays as the host row says; ``True`` (no CA of its own) still lets the environment's
bundle in, as for any HTTPS client. Proxies from the environment apply as before.
"""

from __future__ import annotations

from typing import Any

import docker


class HostAPIClient(docker.APIClient):
    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if verify is None:
            verify = self.verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)
