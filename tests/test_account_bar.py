"""The header of plugin pages shows balance and today's quota from the latest sync."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from plugin.models import AccountSnapshot, ProviderAccount, utcnow


def test_before_binding_admins_are_sent_to_the_wizard(login, workspace):
    page = login("admin").get("/marketing/").get_data(as_text=True)
    assert 'id="account-bar"' in page
    assert "/marketing/setup" in page


def test_marketers_are_told_to_ask_an_admin(login, workspace):
    page = login("marketer").get("/marketing/").get_data(as_text=True)
    assert "/marketing/setup" not in page


def test_latest_snapshot_is_shown(login, session, workspace):
    account = ProviderAccount(workspace_id=workspace.id, kind="sendcloud", name="sc", api_user="acme_batch")
    session.add(account)
    session.flush()
    old = utcnow() - dt.timedelta(hours=2)
    session.add_all(
        [
            AccountSnapshot(
                workspace_id=workspace.id,
                account_id=account.id,
                balance=Decimal("1"),
                daily_quota=10,
                used_today=1,
                fetched_at=old,
            ),
            AccountSnapshot(
                workspace_id=workspace.id,
                account_id=account.id,
                balance=Decimal("88.5"),
                available_balance=Decimal("80"),
                daily_quota=3000,
                used_today=1200,
                fetched_at=utcnow(),
            ),
        ]
    )
    session.commit()
    page = login("marketer").get("/marketing/").get_data(as_text=True)
    assert 'data-balance="88.5' in page
    assert 'data-quota="3000"' in page
    assert 'data-remaining="1800"' in page
    assert "badge-warn" not in page


def test_other_workspace_account_is_not_shown(login, session, other_workspace, workspace):
    account = ProviderAccount(workspace_id=other_workspace.id, kind="sendcloud", name="sc", api_user="other")
    session.add(account)
    session.flush()
    session.add(
        AccountSnapshot(
            workspace_id=other_workspace.id,
            account_id=account.id,
            balance=Decimal("5"),
            daily_quota=77,
            used_today=0,
        )
    )
    session.commit()
    page = login("marketer").get("/marketing/").get_data(as_text=True)
    assert 'data-quota="77"' not in page


def test_remaining_counts_what_we_sent_since_the_last_sync(session, workspace):
    """Between syncs the header follows our own ledger, so a running campaign visibly uses quota."""
    from plugin import quota
    from plugin.account_status import account_status

    account = ProviderAccount(workspace_id=workspace.id, kind="sendcloud", name="main", api_user="u")
    session.add(account)
    session.flush()
    now = utcnow()
    session.add(
        AccountSnapshot(
            workspace_id=workspace.id,
            account_id=account.id,
            balance=Decimal("10"),
            available_balance=Decimal("10"),
            daily_quota=1000,
            used_today=100,
            fetched_at=now,
        )
    )
    session.commit()
    assert account_status(session, workspace.id).remaining == 900
    ledger = quota.ensure_ledger(session, workspace.id, account.id, "batch", quota.provider_day(now), 1000)
    grant = quota.reserve(session, ledger, 300)
    quota.commit_reservation(session, grant.id, 250)
    assert account_status(session, workspace.id).remaining == 750
    yesterday = now - dt.timedelta(days=1)
    session.query(AccountSnapshot).update({"fetched_at": yesterday})
    session.commit()
    assert account_status(session, workspace.id).used_today == 250  # yesterday's count says nothing of today
