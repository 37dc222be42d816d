"""Repository-level pytest hooks: collect the examples of ``API.md`` with Sybil.

Only a conftest at or above ``API.md`` can collect it; the wiring itself lives in
``tests/docs/sybil_api.py``.
"""

from tests.docs.sybil_api import api_doc_environment, pytest_collect_file, pytest_collection_modifyitems

__all__ = ["api_doc_environment", "pytest_collect_file", "pytest_collection_modifyitems"]
