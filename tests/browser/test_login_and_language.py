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
        page.select_option("#locale-form select", "en")
    assert page.locator("html").get_attribute("lang") == "en"
    page.goto("/marketing/tokens")
    assert page.locator("html").get_attribute("lang") == "en"
    with page.expect_navigation():
        page.select_option("#locale-form select", "zh_CN")
    assert page.locator("html").get_attribute("lang") == "zh-CN"
