"""Forecast before launch: cost, today's room (ledger or snapshot, minus the trigger share, the
owner's cap when lower), days needed and the spread plan, balance check, messages."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest
from flask_babel import force_locale

from plugin import allocation, quota, quota_sync
from plugin.extension import get_state
from plugin.forecast import forecast
from plugin.models import AccountSnapshot, ProviderAccount, utcnow
from plugin.providers.base import AccountInfo


@pytest.fixture(autouse=True)
def _english(app):
    with force_locale("en"):
        yield


@pytest.fixture
def settings(app):
    return dataclasses.replace(get_state().settings, price_per_mail=0.0007, quota_stale_minutes=15)


@pytest.fixture
def account(session, workspace):
    row = ProviderAccount(workspace_id=workspace.id, kind="sendcloud", name="main", api_user="acme")
    session.add(row)
    session.commit()
    return row


def synced(session, workspace, account, *, quota_total=1000, used=0, available="100"):
    info = AccountInfo(Decimal(available), Decimal(available), quota_total, used)
    return quota_sync.store(session, workspace.id, account, info)


def test_fits_today(session, workspace, account, settings):
    synced(session, workspace, account, used=200)
    f = forecast(session, workspace.id, account, 800, settings)
    assert (f.recipients, f.daily_quota, f.remaining_today, f.per_day) == (800, 1000, 800, 1000)
    assert f.estimated_cost == Decimal("0.56")
    assert f.fits_today
    assert f.balance_ok
    assert f.days_needed == 1
    assert f.plan == (800,)
    assert "Fits into today's remaining quota." in f.messages


def test_days_needed_and_spread_over_days(session, workspace, account, settings):
    synced(session, workspace, account, used=600)
    f = forecast(session, workspace.id, account, 2500, settings)
    assert f.remaining_today == 400
    assert not f.fits_today
    assert f.days_needed == 4  # 400 today, then 1000, 1000, 100
    assert f.plan == (400, 1000, 1000, 100)
    assert f.estimated_cost == Decimal("1.75")
    assert any("Needs 4 days at 1,000 mails a day (400 left today)" in m for m in f.messages)


def test_nothing_left_today_still_counts_today(session, workspace, account, settings):
    synced(session, workspace, account, used=1000)
    f = forecast(session, workspace.id, account, 1000, settings)
    assert (f.remaining_today, f.days_needed, f.plan) == (0, 2, (0, 1000))


def test_ledger_reservations_and_trigger_share_reduce_todays_room(session, workspace, account, settings):
    allocation.set_share(session, workspace.id, percent=10)
    session.commit()
    synced(session, workspace, account, used=100)
    row = quota_sync.today_ledgers(session, workspace.id)[0]
    assert row.channel == "batch"
    quota.reserve(session, row.id, 300)  # a running campaign holds 300
    f = forecast(session, workspace.id, account, 5000, settings)
    assert f.trigger_share == 100
    assert f.per_day == 900
    assert f.remaining_today == 900 - 100 - 300
    assert f.days_needed == 1 + 5  # 500 today, then 4500 at 900 a day


def test_owner_cap_applies_when_lower(session, workspace, account, settings):
    synced(session, workspace, account)
    allocation.add_cap(session, workspace.id, scope="team", subject="east", daily_limit=250)
    allocation.add_cap(session, workspace.id, scope="user", subject="7", daily_limit=5000)
    session.commit()
    team_member = forecast(session, workspace.id, account, 1000, settings, owner_id="8", team="east")
    assert (team_member.cap, team_member.per_day, team_member.remaining_today) == (250, 250, 250)
    assert team_member.days_needed == 4
    assert any("daily cap of 250" in m for m in team_member.messages)
    # The user's own (higher) cap wins over the team's; the account quota is then the limit.
    own = forecast(session, workspace.id, account, 1000, settings, owner_id="7", team="east")
    assert (own.cap, own.per_day, own.days_needed) == (5000, 1000, 1)
    # What the owner already used against the cap today counts.
    cap_ledger = quota.ensure_ledger(
        session, workspace.id, account.id, "batch", quota.provider_day(utcnow()), 250, owner="team:east"
    )
    grant = quota.reserve(session, cap_ledger, 200)
    quota.commit_reservation(session, grant.id, 200)
    assert (
        forecast(session, workspace.id, account, 1000, settings, owner_id="8", team="east").remaining_today
        == 50
    )


def test_balance_must_cover_the_cost(session, workspace, account, settings):
    synced(session, workspace, account, available="0.5")
    f = forecast(session, workspace.id, account, 1000, settings)
    assert f.estimated_cost == Decimal("0.7")
    assert f.fits_today
    assert not f.balance_ok
    assert any("does not cover the estimated cost (¥0.70)" in m for m in f.messages)
    # A thousandth short is shown as short, not rounded up to the very cost it cannot cover.
    synced(session, workspace, account, available="0.699")
    short = forecast(session, workspace.id, account, 1000, settings)
    assert any("(¥0.699) does not cover the estimated cost (¥0.70)" in m for m in short.messages)


def test_yesterdays_snapshot_gives_a_full_day_and_is_stale(session, workspace, account, settings):
    session.add(
        AccountSnapshot(
            workspace_id=workspace.id,
            account_id=account.id,
            balance=Decimal("10"),
            available_balance=Decimal("10"),
            daily_quota=1000,
            used_today=999,
            fetched_at=utcnow() - dt.timedelta(days=1, hours=1),
        )
    )
    session.commit()
    f = forecast(session, workspace.id, account, 1000, settings)
    assert f.remaining_today == 1000
    assert any("not recent" in m for m in f.messages)


def test_without_a_sync_nothing_is_promised(session, workspace, account, settings):
    f = forecast(session, workspace.id, account, 10, settings)
    assert (f.daily_quota, f.remaining_today, f.days_needed, f.fits_today) == (None, None, None, False)
    assert f.balance_ok  # unknown balance does not block
    assert f.messages == ("Balance and quota have not been synced yet; refresh them to see the forecast.",)


def test_no_room_at_all_for_campaigns(session, workspace, account, settings):
    allocation.set_share(session, workspace.id, percent=100)
    session.commit()
    synced(session, workspace, account)
    f = forecast(session, workspace.id, account, 10, settings)
    assert (f.per_day, f.remaining_today, f.days_needed) == (0, 0, None)
    assert any("cannot be sent" in m for m in f.messages)


def test_smtp_accounts(session, workspace, settings):
    limited = ProviderAccount(workspace_id=workspace.id, kind="smtp", name="box", daily_limit=300)
    unlimited = ProviderAccount(workspace_id=workspace.id, kind="smtp", name="big")
    session.add_all([limited, unlimited])
    session.commit()
    f = forecast(session, workspace.id, limited, 700, settings)
    assert (f.daily_quota, f.remaining_today, f.days_needed, f.available_balance) == (300, 300, 3, None)
    assert f.balance_ok
    g = forecast(session, workspace.id, unlimited, 700, settings)
    assert g.fits_today
    assert g.days_needed == 1


def test_zero_recipients_and_json(session, workspace, account, settings):
    synced(session, workspace, account)
    f = forecast(session, workspace.id, account, 0, settings)
    assert (f.days_needed, f.estimated_cost, f.plan) == (0, Decimal("0"), ())
    data = forecast(session, workspace.id, account, 3, settings).as_dict()
    assert data["estimated_cost"] == "0.0021"
    assert data["price_per_mail"] == "0.0007"
    assert data["plan"] == [3]


def test_other_workspace_account_is_refused(session, workspace, other_workspace, account, settings):
    with pytest.raises(ValueError, match="another workspace"):
        forecast(session, other_workspace.id, account, 1, settings)
