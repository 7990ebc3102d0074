"""What the browser walk-through of the finished pages turned up: money shown without rounding up,
the SMTP form's messages saying what to type, the campaign page before sending starts, and the
setup wizard not advertising itself on its own pages."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest

from plugin.campaigns import lifecycle
from plugin.models import AccountSnapshot, Campaign, utcnow
from tests.quota_support import bind_account


def _bar(page: str) -> str:
    return re.search(r'id="account-bar">(.*?)\n</div>', page, re.S).group(1)


@pytest.mark.parametrize(
    ("balance", "shown"),
    [
        (Decimal("99.999"), "¥99.999"),
        (Decimal("100"), "¥100.00"),
        (Decimal("12.5"), "¥12.50"),
        (Decimal("12345.6789"), "¥12,345.678"),  # grouped, and cut to the thousandth, not rounded
    ],
)
def test_balance_is_never_rounded_up(login, session, workspace, balance, shown):
    account = bind_account(session, workspace.id)
    session.add(
        AccountSnapshot(
            workspace_id=workspace.id,
            account_id=account.id,
            balance=balance,
            available_balance=balance,
            daily_quota=2000,
            used_today=1,
            fetched_at=utcnow(),
        )
    )
    session.commit()
    browser = login("marketer")
    assert f">{shown}<" in _bar(browser.get("/marketing/").get_data(as_text=True))
    quota = browser.get("/marketing/quota").get_data(as_text=True)
    assert f'data-figure="balance">{shown}<' in quota


def test_smtp_form_says_what_to_type(login, workspace):
    response = login("admin").post(
        "/marketing/smtp/new",
        data={"name": "", "host": "", "port": "", "security": "starttls", "from_address": "nope"},
    )
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "Give the account a name" in page
    assert "Enter the SMTP server" in page
    assert "Enter a port from 1 to 65535." in page
    assert "Enter a valid email address" in page
    assert "Length must be between" not in page
    assert "Missing data for required field" not in page


def test_scheduled_campaign_says_when_the_list_is_fixed(login, session, workspace):
    send_at = utcnow() + dt.timedelta(hours=2)
    campaign = Campaign(workspace_id=workspace.id, name="Later", status=lifecycle.SCHEDULED, send_at=send_at)
    session.add(campaign)
    session.commit()
    page = login("sales").get(f"/marketing/campaigns/{campaign.id}").get_data(as_text=True)
    note = re.search(r'id="progress-note">(.*?)</p>', page, re.S)
    assert note is not None
    assert "Sending starts at" in note.group(1)
    assert 'id="campaign-stats-link"' not in page  # nothing to count before it starts


def test_started_campaign_links_to_its_statistics_when_the_host_has_them(app, login, session, workspace):
    campaign = Campaign(
        workspace_id=workspace.id,
        name="Now",
        status=lifecycle.PAUSED,
        total=10,
        sent=4,
        started_at=utcnow(),
        frozen_at=utcnow(),
    )
    session.add(campaign)
    session.commit()
    page = login("sales").get(f"/marketing/campaigns/{campaign.id}").get_data(as_text=True)
    assert 'id="progress-note"' not in page
    has_stats = "marketing_stats.campaign" in app.view_functions
    assert ('id="campaign-stats-link"' in page) is has_stats
    if has_stats:
        assert f'href="/marketing/campaigns/{campaign.id}/stats"' in page


def test_setup_pages_do_not_offer_to_start_the_wizard(login, workspace):
    browser = login("admin")
    assert "/marketing/setup" in _bar(browser.get("/marketing/").get_data(as_text=True))
    page = browser.get("/marketing/setup/domain").get_data(as_text=True)
    assert 'href="/marketing/setup"' not in _bar(page)
