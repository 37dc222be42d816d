"""A real browser for the admin: Debian's Chromium driven by its chromedriver through Selenium.

Nothing is downloaded: the browser and the driver are the system's (``scripts/bootstrap``
installs ``chromium`` and ``chromium-driver``). Without them the tests skip on a laptop and
fail in CI. A failing test leaves a screenshot and the page's HTML in ``SCREENSHOT_DIR``
(``$CONTAINER_MANAGER_SCREENSHOTS``, default ``test-artifacts/screenshots``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.components import require

SCREENSHOT_DIR = Path(
    os.environ.get("CONTAINER_MANAGER_SCREENSHOTS")
    or Path(__file__).resolve().parents[3] / "test-artifacts" / "screenshots"
)


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[Any]:
    chromium = _binary("chromium", "chromium-browser")
    driver_path = _binary("chromedriver")
    require(
        chromium is not None and driver_path is not None,
        "chromium and chromedriver (apt: chromium chromium-driver)",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(driver_path)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
            stem = SCREENSHOT_DIR / request.node.name.replace("/", "_")
            driver.save_screenshot(f"{stem}.png")
            stem.with_suffix(".html").write_text(driver.page_source)
        driver.quit()
