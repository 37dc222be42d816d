"""Fixtures of the API.md checks.

The examples of API.md itself are collected by Sybil from the repository's root
``conftest.py`` (see ``tests/docs/sybil_api.py``): only a conftest at or above a file can
collect it.
"""

from __future__ import annotations

import pytest

from tests.docs.apidoc import read_api_md


@pytest.fixture(scope="session")
def api_md() -> str:
    return read_api_md()
