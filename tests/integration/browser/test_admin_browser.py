"""The admin in a real browser, as a person uses it, with the daemon running jobs on a mock host.

Log in; add a job through the form (a bad memory value shows its field error, then the fixed
form saves); see it run; open its page and follow its output while the state changes without
a reload; cancel another job with the page's button; check that badges are legible in both
themes; and, as a user with view permission only, see no secret value.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User

from container_manager.models import ContainerJob, ExecutorHost
from reconciler.daemon import Daemon, DaemonOptions
from tests.polling import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PASSWORD = "correct horse battery staple"


@pytest.fixture
def daemon(live_server: Any) -> Iterator[Daemon]:
    """The reconciler in this process, so its mock executor is the one the pages read."""
    ExecutorHost.objects.create(name="mock-browser", executor_type="mock", max_concurrent_jobs=5)
    daemon = Daemon(DaemonOptions(workers=2, poll_seconds=0.1, resync_seconds=1))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    assert daemon.ready.wait(10)
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(15)


def log_in(browser: Any, live_server: Any, username: str) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    assert wait_until(lambda: "Site administration" in browser.page_source, 10), browser.page_source[:500]


def text_of(browser: Any, selector: str) -> str:
    """The text of every element matching ``selector``, read in one script: the live block is
    redrawn every few seconds, so element handles would go stale between two calls."""
    script = "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText).join(' ')"
    return str(browser.execute_script(script, selector))


#: WCAG contrast ratio of an element's text and the first opaque background behind it.
CONTRAST_JS = """
function rgb(c) { const m = c.match(/[\\d.]+/g).map(Number); return m; }
function lum(c) {
  const [r, g, b] = rgb(c).slice(0, 3).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}
function background(el) {
  for (; el; el = el.parentElement) {
    const c = getComputedStyle(el).backgroundColor; const parts = rgb(c);
    if (parts.length < 4 || parts[3] > 0) return c;
  }
  return "rgb(255, 255, 255)";
}
return Array.from(document.querySelectorAll(arguments[0])).map(el => {
  const a = lum(getComputedStyle(el).color), b = lum(background(el));
  return [el.dataset.status || el.textContent, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
});
"""


def test_the_admin_as_a_person_uses_it(browser: Any, live_server: Any, daemon: Daemon) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    User.objects.create_superuser("ada", "ada@example.com", PASSWORD)
    log_in(browser, live_server, "ada")

    # The admin is styled: its stylesheet and ours are served with DEBUG off.
    assert browser.execute_script(
        "return getComputedStyle(document.getElementById('header')).backgroundColor"
    ) not in ("rgba(0, 0, 0, 0)", "transparent")

    # Add a job through the form: a bad memory value first.
    browser.get(f"{live_server.url}/admin/container_manager/containerjob/add/")
    browser.find_element(By.NAME, "name").send_keys("from-the-browser")
    browser.find_element(By.NAME, "image").send_keys("busybox")
    browser.find_element(By.NAME, "command").send_keys("sh -c 'echo step one; echo step two; sleep 3'")
    browser.find_element(By.NAME, "memory_limit").send_keys("99999")
    Select(browser.find_element(By.NAME, "docker_host")).select_by_visible_text("mock-browser")
    browser.find_element(By.NAME, "_save").click()
    assert wait_until(lambda: "errornote" in browser.page_source, 10)
    error = text_of(browser, ".field-memory_limit .errorlist")
    assert "memory" in error.lower() or "2048" in error, error
    assert ContainerJob.objects.count() == 0
    field = browser.find_element(By.NAME, "memory_limit")
    field.clear()
    field.send_keys("64")
    browser.find_element(By.NAME, "_save").click()
    assert wait_until(lambda: "was added successfully" in browser.page_source, 10)
    job = ContainerJob.objects.get(name="from-the-browser")
    assert (job.memory_limit, job.created_by) == (64, "admin:ada")

    # It runs on the mock host: open its page while it runs and follow it without a reload.
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "running", 10)
    browser.get(f"{live_server.url}/admin/container_manager/containerjob/{job.pk}/change/")
    browser.execute_script("window.cmNotReloaded = true")
    assert "running" in text_of(browser, "#cm-live .cm-badge")
    assert wait_until(lambda: "step two" in text_of(browser, "#cm-live pre.cm-output"), 10)
    assert wait_until(lambda: "completed" in text_of(browser, "#cm-live .cm-badge"), 15)
    assert browser.execute_script("return window.cmNotReloaded === true"), "the page reloaded"
    assert "mock-browser" in text_of(browser, "#cm-live [data-cm=ran-on]")
    assert "UTC" in text_of(browser, "#cm-live [data-cm=finished]")
    assert (
        browser.execute_script("return getComputedStyle(document.querySelector('pre.cm-output')).fontFamily")
        .lower()
        .find("mono")
        >= 0
    )

    # Cancel another job with the button on its page.
    other = ContainerJob.objects.create(
        image="busybox", command="hang", docker_host=ExecutorHost.objects.get(name="mock-browser")
    )
    assert wait_until(lambda: ContainerJob.objects.get(pk=other.pk).status == "running", 10)
    browser.get(f"{live_server.url}/admin/container_manager/containerjob/{other.pk}/change/")
    browser.find_element(By.ID, "cm-cancel").click()
    assert wait_until(lambda: f"Cancellation requested for job {other.pk}" in browser.page_source, 10)
    assert wait_until(lambda: "cancelled" in text_of(browser, "#cm-live .cm-badge"), 15)
    assert ContainerJob.objects.get(pk=other.pk).status == "cancelled"

    # Badges are legible in both themes (WCAG AA for normal text: 4.5).
    browser.get(f"{live_server.url}/admin/container_manager/containerjob/")
    for theme in ("light", "dark"):
        browser.execute_script(f"document.documentElement.dataset.theme = '{theme}'")
        ratios = browser.execute_script(CONTRAST_JS, "#result_list .cm-badge")
        assert ratios and all(ratio >= 4.5 for _, ratio in ratios), (theme, ratios)


def test_a_view_only_user_sees_no_secret(browser: Any, live_server: Any, daemon: Daemon) -> None:
    host = ExecutorHost.objects.get(name="mock-browser")
    job = ContainerJob.objects.create(
        image="busybox",
        command="echo hi",
        docker_host=host,
        override_environment="API_TOKEN=hunter2-browser\nDATABASE_URL=postgres://app:pw-in-url@db/x\nMODE=fast",
    )
    viewer = User.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(codename__in=["view_containerjob", "view_executorhost"])
    )
    log_in(browser, live_server, "viewer")
    assert wait_until(lambda: ContainerJob.objects.get(pk=job.pk).status == "completed", 15)
    for page in (
        f"/admin/container_manager/containerjob/{job.pk}/change/",
        "/admin/container_manager/containerjob/",
        f"/admin/container_manager/containerjob/{job.pk}/history/",
        f"/admin/container_manager/containerjob/{job.pk}/live/",
    ):
        browser.get(live_server.url + page)
        source = browser.page_source
        assert "hunter2-browser" not in source and "pw-in-url" not in source, page
    browser.get(f"{live_server.url}/admin/container_manager/containerjob/{job.pk}/change/")
    assert "API_TOKEN=********" in browser.page_source and "MODE=fast" in browser.page_source
    assert 'id="cm-cancel"' not in browser.page_source and 'id="cm-rerun"' not in browser.page_source
    assert "cm-cancel-form" not in browser.page_source  # not even the empty form
