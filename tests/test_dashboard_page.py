"""The overview page: newest campaigns with status and progress, quick links by role, the
channels that can send, the empty state; and plugin pages a role may not open answer 403 inside
the layout rather than with the bare server page."""

from __future__ import annotations

import re

from plugin.campaigns import lifecycle
from plugin.models import Campaign, ProviderAccount


def _campaign(session, workspace, name: str, **fields) -> Campaign:
    campaign = Campaign(workspace_id=workspace.id, name=name, **fields)
    session.add(campaign)
    session.commit()
    return campaign


def test_empty_overview_says_what_to_do(login, session, workspace):
    page = login("marketer").get("/marketing/").get_data(as_text=True)
    assert 'id="no-campaigns"' in page
    assert 'id="no-accounts"' in page
    assert 'href="/marketing/campaigns/new"' in page
    assert 'id="quick-new-template"' in page


def test_recent_campaigns_show_status_and_progress(login, session, workspace, other_workspace):
    _campaign(session, workspace, "Old one", status=lifecycle.COMPLETED, total=10, sent=10)
    running = _campaign(session, workspace, "Spring fair", status=lifecycle.RUNNING, total=200, sent=50)
    _campaign(session, other_workspace, "Not ours", status=lifecycle.RUNNING, total=9, sent=1)
    page = login("sales").get("/marketing/").get_data(as_text=True)
    row = re.search(rf'<tr data-campaign="{running.id}">(.*?)</tr>', page, re.S)
    assert row is not None
    assert "Spring fair" in row.group(1)
    assert 'data-status="running"' in row.group(1)
    assert 'aria-valuenow="50"' in row.group(1)
    assert 'aria-valuemax="200"' in row.group(1)
    assert "Not ours" not in page
    # the newest first
    assert page.index("Spring fair") < page.index("Old one")


def test_overview_lists_at_most_five_campaigns(login, session, workspace):
    for n in range(7):
        _campaign(session, workspace, f"Campaign {n}")
    page = login("marketer").get("/marketing/").get_data(as_text=True)
    assert page.count("<tr data-campaign=") == 5
    assert 'href="/marketing/campaigns"' in page


def test_quick_links_follow_the_role(login, session, workspace):
    assert 'id="quick-links"' in login("marketer").get("/marketing/").get_data(as_text=True)
    assert 'id="quick-links"' not in login("sales").get("/marketing/").get_data(as_text=True)


def test_sending_channels_show_smtp_accounts_without_secrets(login, session, workspace):
    account = ProviderAccount(
        workspace_id=workspace.id,
        kind="smtp",
        name="Office mailbox",
        smtp_host="127.0.0.1",
        smtp_port=2525,
        smtp_security="none",
        smtp_password_encrypted="ciphertext-must-not-show",
        from_address="office@example.com",
        daily_limit=300,
    )
    session.add(account)
    session.commit()
    page = login("marketer").get("/marketing/").get_data(as_text=True)
    row = re.search(rf'<tr data-account="{account.id}">(.*?)</tr>', page, re.S)
    assert row is not None
    assert "Office mailbox" in row.group(1)
    assert "office@example.com" in row.group(1)
    assert "300" in row.group(1)
    assert "ciphertext-must-not-show" not in page


def test_forbidden_page_is_inside_the_layout(login):
    response = login("sales").get("/marketing/campaigns/new")
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert 'id="forbidden"' in page
    assert "(sales)" in page
    assert 'href="/marketing/"' in page
    assert 'class="subnav plugin-nav"' in page or 'class="topbar"' in page


def test_forbidden_json_stays_plain(login):
    response = login("sales").get("/marketing/smtp", headers={"Accept": "application/json"})
    assert response.status_code == 403
    assert 'id="forbidden"' not in response.get_data(as_text=True)
