"""An admin in headless Chromium: refreshes the account bar against the SendCloud simulator, sees
the history chart drawn by the vendored Chart.js, gets a live forecast, and adds then removes a cap
(confirming the removal)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from plugin.demo.models import db
from plugin.models import AccountSnapshot, utcnow
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from tests.quota_support import API_KEY, API_USER, bind_account

from .conftest import log_in, submit


@pytest.fixture
def simulator():
    sim = SendCloudSimulator(check_webhook_urls=False, deliver_delay=0.01)
    sim.add_account(API_USER, API_KEY, quota=2000, used=700, balance=Decimal("80"))
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def app_config(app_config, simulator):
    app_config.update(MARKETING_SENDCLOUD_API_BASE=simulator.url, MARKETING_PROVIDER_TIMEOUT=5.0)
    return app_config


def test_refresh_chart_forecast_and_caps(page, users, workspace, simulator):
    account = bind_account(db.session, workspace.id)
    for days_ago, used in ((3, 2000), (2, 1200), (1, 400)):
        db.session.add(
            AccountSnapshot(
                workspace_id=workspace.id,
                account_id=account.id,
                balance=Decimal("95") - days_ago,
                daily_quota=2000,
                used_today=used,
                fetched_at=utcnow() - dt.timedelta(days=days_ago),
            )
        )
    db.session.commit()
    log_in(page, "admin")
    page.goto("/marketing/quota")
    assert page.locator('#account-bar [data-warning="stale"]').count() == 1
    submit(page, "#account-bar [data-refresh-quota]")
    assert page.locator('#account-bar [data-used="700"]').count() == 1
    assert page.locator('#account-bar [data-warning="stale"]').count() == 0
    page.wait_for_selector('#quota-history-chart[data-rendered="1"]')

    page.fill("#forecast-recipients", "3000")
    page.wait_for_selector("#forecast-result dl")
    # Cost, left today, per day, days needed: the symbol from the page, digits grouped in its
    # language (days needed: 1,300 today and 1,700 tomorrow).
    figures = page.locator("#forecast-result dd").all_inner_texts()
    assert figures == ["¥2.10", "1,300", "2,000", "2"]
    # A third decimal when it is not zero, as the campaign page writes it (0.0007 × 50).
    page.fill("#forecast-recipients", "50")
    page.wait_for_function("document.querySelector('#forecast-result dd').innerText === '¥0.035'")

    page.select_option("#cap-scope", "team")
    page.fill("#cap-subject", "east")
    page.fill("#cap-limit", "500")
    page.click("#cap-add-form button[type=submit]")
    page.wait_for_selector('[data-cap="team:east"]')
    page.once("dialog", lambda dialog: dialog.accept())
    page.click('[data-cap="team:east"] button.danger')
    page.wait_for_selector('[data-cap="team:east"]', state="detached")
    expect(page.locator(".flash, .flashes, [role=status]").first).to_be_visible()  # removal confirmed
