"""The product's wheel, as ``pip wheel .`` builds it for the image: only the product is shipped.

Test helpers (the busybox image builder, the fakes) live under ``tests/`` and must never be
installed with the package: ``tests`` is no package of the wheel, and no module of the product
packages is a test helper.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

PRODUCT_PACKAGES = {"container_manager", "executors", "reconciler", "metrics"}


def _product_wheel(wheels: Path) -> Path:
    found = sorted(wheels.glob("django_container_manager-*.whl"))
    assert len(found) == 1, found
    return found[0]


def test_the_wheel_ships_the_product_packages_and_no_test_helper(wheels: Path) -> None:
    with zipfile.ZipFile(_product_wheel(wheels)) as wheel:
        names = wheel.namelist()
    top = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top == PRODUCT_PACKAGES
    assert "executors/docker/executor.py" in names and "executors/cloudrun/executor.py" in names
    helpers = [n for n in names if n.endswith(("testimages.py", "/images.py")) or "/fakes/" in n]
    assert helpers == []
