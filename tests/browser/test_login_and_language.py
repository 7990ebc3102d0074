"""A person logs in, reaches the plugin, and switches the language."""

from __future__ import annotations

from playwright.sync_api import expect

from .conftest import log_in, submit


def test_wrong_password_is_said_beside_the_field(page, users):
    page.goto("/crm/login")
    page.fill("#username", "admin")
    page.fill("#password", "nope")
    submit(page, "button[type=submit]")
    expect(page.locator(".field .error")).to_be_visible()
    assert "/crm/login" in page.url


def test_login_then_marketing_dashboard(page, users, workspace):
    log_in(page, "marketer")
    page.goto("/marketing/")
    assert page.locator("[data-count=contacts]").inner_text().strip() == "0"


def test_language_switch_is_remembered(page, users):
    log_in(page, "admin")
    page.goto("/marketing/")
    with page.expect_navigation():
        page.select_option("#locale-form select[name=locale]", "en")
    assert page.locator("html").get_attribute("lang") == "en"
    page.goto("/marketing/tokens")
    assert page.locator("html").get_attribute("lang") == "en"
    with page.expect_navigation():
        page.select_option("#locale-form select[name=locale]", "zh_CN")
    assert page.locator("html").get_attribute("lang") == "zh-CN"


def test_time_zone_picker_changes_the_zone_and_offers_the_browsers(page, users):
    """The browser's own zone is among the choices (added as "this computer" when the list lacks it)."""
    log_in(page, "admin")
    page.goto("/marketing/")
    own = page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
    values = page.locator("#timezone-select option").evaluate_all("(os) => os.map((o) => o.value)")
    assert own in values
    with page.expect_navigation():
        page.select_option("#timezone-select", "America/New_York")
    assert page.locator("#timezone-select").input_value() == "America/New_York"
