"""Headless Chromium (Debian's package) driven by Playwright against the live test server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("MARKETING_TEST_ARTIFACTS", "test-artifacts"))


def _chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Debian's chromium is required for browser tests: apt-get install -y chromium")
    return path


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium_path(), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, live_server, request):
    context = chromium.new_context(
        base_url=live_server, locale="zh-CN", viewport={"width": 1360, "height": 900}
    )
    context.set_default_timeout(10_000)
    tab = context.new_page()
    yield tab
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def submit(page, selector: str) -> None:
    """Click something that loads a new document (a form post, a link) and return once that
    document has loaded. A bare click returns as soon as the click is dispatched, so the next
    assertion could read the page being left; ``wait_for_url`` cannot help when the form posts
    back to the URL it was on."""
    with page.expect_navigation():
        page.click(selector)


def log_in(page, username: str, password: str | None = None) -> None:
    page.goto("/crm/login")
    page.fill("#username", username)
    page.fill("#password", password or username)
    page.click("button[type=submit]")
    page.wait_for_url("**/crm/contacts**")
