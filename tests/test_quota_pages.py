"""Quota pages and the account bar: refresh against the simulator over HTTP (admin and marketer;
sales may only look), stale and low-balance warnings, history chart data, today's ledger, the
allocation forms (admin only, errors beside the field) and the forecast JSON endpoint."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from plugin import allocation, quota, quota_sync
from plugin.models import AccountSnapshot, QuotaAllocation, utcnow
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from tests.quota_support import API_KEY, API_USER, bind_account, factory


@pytest.fixture
def simulator():
    sim = SendCloudSimulator(check_webhook_urls=False, deliver_delay=0.01)
    sim.add_account(API_USER, API_KEY, quota=2000, used=0, balance=Decimal("80"))
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def app_config(app_config, simulator):
    app_config.update(
        MARKETING_SENDCLOUD_API_BASE=simulator.url,
        MARKETING_PROVIDER_TIMEOUT=5.0,
        MARKETING_QUOTA_STALE_MINUTES=20,
        MARKETING_LOW_BALANCE_THRESHOLD=25.0,
    )
    return app_config


@pytest.fixture
def account(session, workspace):
    return bind_account(session, workspace.id)


def snapshot_count(session) -> int:
    return session.scalar(select(func.count()).select_from(AccountSnapshot))


def bar(page: str) -> str:
    return re.search(r'<div class="account-bar[^"]*" id="account-bar">(.*?)\n</div>', page, re.S).group(1)


@pytest.mark.parametrize("role", ["admin", "marketer"])
def test_refresh_syncs_now_and_returns_to_the_page(login, session, account, simulator, role):
    simulator.simulator.set_account(API_USER, used=321, available="70")
    browser = login(role)
    page = browser.get("/marketing/").get_data(as_text=True)
    assert "data-refresh-quota" in bar(page)
    assert "Never synced" in bar(page)
    response = browser.post("/marketing/quota/refresh", data={"next": "/marketing/tokens"})
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/marketing/tokens")
    assert snapshot_count(session) == 1
    page = browser.get("/marketing/tokens").get_data(as_text=True)
    header = bar(page)
    assert 'data-used="321"' in header
    assert 'data-remaining="1679"' in header
    assert "data-synced=" in header
    assert 'data-warning="stale"' not in header
    assert "Balance and quota synced at" in page


def test_sales_may_look_but_not_refresh(login, session, account):
    browser = login("sales")
    page = browser.get("/marketing/quota").get_data(as_text=True)
    assert "data-refresh-quota" not in page
    assert 'id="share-form"' not in page
    assert 'id="cap-add-form"' not in page
    assert browser.post("/marketing/quota/refresh", data={}).status_code == 403
    assert snapshot_count(session) == 0


def test_refresh_needs_the_csrf_token(login, session, account):
    browser = login("admin")
    response = browser.client.post("/marketing/quota/refresh", data={"next": "/marketing/"})
    assert response.status_code == 400
    assert snapshot_count(session) == 0


def test_refresh_never_redirects_off_site(login, account):
    response = login("admin").post("/marketing/quota/refresh", data={"next": "//evil.example/x"})
    assert response.headers["Location"].endswith("/marketing/quota")


def test_failed_refresh_keeps_the_last_snapshot_shown_as_stale(login, session, workspace, account, simulator):
    session.add(
        AccountSnapshot(
            workspace_id=workspace.id,
            account_id=account.id,
            balance=Decimal("60"),
            available_balance=Decimal("60"),
            daily_quota=2000,
            used_today=1500,
            fetched_at=utcnow() - dt.timedelta(minutes=45),
        )
    )
    session.commit()
    from plugin.quota import provider_day

    synced = session.scalar(select(AccountSnapshot.fetched_at))
    # The provider's used count is today's only if that sync was on today's Beijing day.
    expected_remaining = 500 if provider_day(synced) == provider_day(utcnow()) else 2000
    simulator.simulator.faults.fail_next = 1
    browser = login("marketer")
    browser.post("/marketing/quota/refresh", data={"next": "/marketing/quota"})
    page = browser.get("/marketing/quota").get_data(as_text=True)
    assert "Could not sync main" in page
    header = bar(page)
    assert f'data-remaining="{expected_remaining}"' in header  # the last good figures stay
    assert 'data-warning="stale"' in header
    assert "Not synced recently" in header
    assert snapshot_count(session) == 1


def test_low_balance_warning_uses_the_setting(login, session, workspace, account, simulator):
    simulator.simulator.set_account(API_USER, available="24.99")
    browser = login("admin")
    browser.post("/marketing/quota/refresh", data={"next": "/marketing/"})
    header = bar(browser.get("/marketing/").get_data(as_text=True))
    assert 'data-warning="low-balance"' in header
    assert "Balance low: below ¥25.00" in header
    simulator.simulator.set_account(API_USER, available="25")
    browser.post("/marketing/quota/refresh", data={"next": "/marketing/"})
    assert 'data-warning="low-balance"' not in bar(browser.get("/marketing/").get_data(as_text=True))


def test_quota_page_shows_figures_chart_data_and_todays_ledger(login, session, workspace, account, simulator):
    allocation.set_share(session, workspace.id, daily_limit=200)
    session.commit()
    for days_ago, used in ((2, 1800), (1, 900)):
        session.add(
            AccountSnapshot(
                workspace_id=workspace.id,
                account_id=account.id,
                balance=Decimal("90"),
                daily_quota=2000,
                used_today=used,
                fetched_at=utcnow() - dt.timedelta(days=days_ago),
            )
        )
    session.commit()
    simulator.simulator.set_account(API_USER, used=300)
    browser = login("admin")
    browser.post("/marketing/quota/refresh", data={"next": "/marketing/quota"})
    page = browser.get("/marketing/quota").get_data(as_text=True)
    assert 'data-figure="used">300<' in page
    assert 'data-figure="remaining">1,700<' in page
    assert "of which 200 kept for trigger mail" in page
    chart = json.loads(re.search(r'id="quota-history-data">(.*?)</script>', page, re.S).group(1))
    assert len(chart["labels"]) == 30  # the whole window, days without a sync left empty
    today = quota.provider_day(utcnow())
    assert chart["labels"][-1] == f"{today:%b} {today.day}"  # the locale's short day: "Dec 8"
    assert chart["used"] == [None] * 27 + [1800, 900, 300]
    assert chart["quota"] == [None] * 27 + [2000, 2000, 2000]
    assert "vendor/chart.umd.min.js" in page
    ledger = re.search(r'<table class="data" id="ledger-table">(.*?)</table>', page, re.S).group(1)
    assert re.search(
        r'data-channel="batch".*?data-col="limit">1,800<.*?data-col="committed">300<', ledger, re.S
    )
    assert re.search(r'data-channel="trigger".*?data-col="limit">200<', ledger, re.S)


def test_used_today_counts_what_was_sent_since_the_last_sync(login, session, workspace, account, simulator):
    """Between syncs the figure follows the ledger (as the account bar does), so the card and
    the bar never disagree; the provider's count at the sync is shown beside it."""
    from plugin import quota

    simulator.simulator.set_account(API_USER, used=10)
    browser = login("admin")
    browser.post("/marketing/quota/refresh", data={"next": "/marketing/quota"})
    ledger_id = quota.ensure_ledger(
        session, workspace.id, account.id, "batch", quota.provider_day(utcnow()), 2000
    )
    grant = quota.reserve(session, ledger_id, 40, now=utcnow())
    quota.commit_reservation(session, grant.id, 40)
    page = browser.get("/marketing/quota").get_data(as_text=True)
    assert 'data-figure="used">50<' in page
    assert 'data-figure="used-synced">10 at the last sync<' in page
    assert 'data-used="50"' in bar(page)


def _before_the_chart_window() -> dt.datetime:
    """A time the history still reads (the last 30 x 24 hours) on a provider day before the
    chart's 30 days: between those two bounds, whatever the time of day the test runs."""
    from zoneinfo import ZoneInfo

    now = utcnow()
    beijing = ZoneInfo(quota.PROVIDER_TZ)
    first_day = quota.provider_day(now) - dt.timedelta(days=29)
    window_start = dt.datetime.combine(first_day, dt.time(), tzinfo=beijing).astimezone(dt.UTC)
    since = now - dt.timedelta(days=30)
    return since + (window_start - since) / 2


def test_a_sync_of_an_earlier_day_neither_counts_today_nor_fills_the_chart(
    login, session, workspace, account
):
    """Yesterday's count is not shown as today's, and a sync older than the chart's window
    leaves the chart's empty state rather than thirty empty days."""
    session.add(
        AccountSnapshot(
            workspace_id=workspace.id,
            account_id=account.id,
            balance=Decimal("90"),
            daily_quota=2000,
            used_today=1800,
            fetched_at=_before_the_chart_window(),
        )
    )
    session.commit()
    page = login("admin").get("/marketing/quota").get_data(as_text=True)
    assert 'data-figure="used">0<' in page
    assert "at the last sync" not in page
    assert 'id="quota-history-data"' not in page
    assert "No syncs yet" in page


def test_vendored_chart_library_is_served(login):
    response = login("sales").get("/marketing/static/vendor/chart.umd.min.js")
    assert response.status_code == 200
    assert b"Chart.js v4" in response.data[:200]


def test_empty_states(login, session):
    page = login("admin").get("/marketing/quota").get_data(as_text=True)
    assert "No sending account yet" in page
    assert "No caps" in page


def test_admin_manages_share_and_caps(login, session, workspace, account):
    browser = login("admin")
    response = browser.post("/marketing/quota/share", data={"mode": "percent", "value": "12.5"})
    assert response.status_code == 302
    assert allocation.get_share(session, workspace.id) == allocation.Share(12.5, None)

    response = browser.post(
        "/marketing/quota/caps", data={"scope": "user", "subject": "7", "daily_limit": "300"}
    )
    assert response.status_code == 302
    cap = session.scalar(select(QuotaAllocation).where(QuotaAllocation.scope == "user"))
    assert (cap.subject, cap.daily_limit) == ("7", 300)
    page = browser.get("/marketing/quota").get_data(as_text=True)
    assert 'data-cap="user:7"' in page
    assert "data-confirm=" in page  # removal asks first

    edit_page = browser.get(f"/marketing/quota?edit={cap.id}").get_data(as_text=True)
    assert f'action="/marketing/quota/caps/{cap.id}"' in edit_page
    response = browser.post(
        f"/marketing/quota/caps/{cap.id}", data={"scope": "user", "subject": "7", "daily_limit": "450"}
    )
    assert response.status_code == 302
    session.expire_all()
    assert allocation.cap_for(session, workspace.id, "7", None) == ("user:7", 450)

    assert browser.post(f"/marketing/quota/caps/{cap.id}/delete", data={}).status_code == 302
    session.expire_all()
    assert allocation.cap_for(session, workspace.id, "7", None) is None
    assert browser.post(f"/marketing/quota/caps/{cap.id}/delete", data={}).status_code == 404


def test_errors_are_shown_beside_the_field(login, session, workspace, account):
    browser = login("admin")
    response = browser.post("/marketing/quota/share", data={"mode": "percent", "value": "150"})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'id="share-value-error"' in page
    assert "between 0 and 100" in page
    assert 'value="150"' in page

    browser.post("/marketing/quota/caps", data={"scope": "team", "subject": "east", "daily_limit": "10"})
    response = browser.post(
        "/marketing/quota/caps", data={"scope": "team", "subject": "east", "daily_limit": "20"}
    )
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert re.search(r'id="cap-subject-error">Team east already has a cap', page)

    response = browser.post(
        "/marketing/quota/caps", data={"scope": "user", "subject": "8", "daily_limit": "-3"}
    )
    assert response.status_code == 422
    assert 'id="cap-limit-error"' in response.get_data(as_text=True)
    assert len(allocation.list_caps(session, workspace.id)) == 1


@pytest.mark.parametrize("role", ["marketer", "sales"])
def test_only_admins_change_the_allocation(login, session, workspace, account, role):
    cap = allocation.add_cap(session, workspace.id, scope="user", subject="7", daily_limit=5)
    session.commit()
    browser = login(role)
    page = browser.get("/marketing/quota").get_data(as_text=True)
    assert 'data-cap="user:7"' in page  # they see the caps
    assert "/delete" not in page
    assert browser.post("/marketing/quota/share", data={"mode": "percent", "value": "5"}).status_code == 403
    assert (
        browser.post(
            "/marketing/quota/caps", data={"scope": "user", "subject": "x", "daily_limit": "1"}
        ).status_code
        == 403
    )
    assert browser.post(f"/marketing/quota/caps/{cap.id}/delete", data={}).status_code == 403
    assert len(allocation.list_caps(session, workspace.id)) == 1


def test_caps_table_search_sort_and_other_workspaces(login, session, workspace, other_workspace, account):
    for subject, limit in (("alice", 30), ("bob", 10), ("carol", 20)):
        allocation.add_cap(session, workspace.id, scope="user", subject=subject, daily_limit=limit)
    allocation.add_cap(session, other_workspace.id, scope="user", subject="mallory", daily_limit=1)
    session.commit()
    browser = login("admin")
    page = browser.get("/marketing/quota?sort=-limit").get_data(as_text=True)
    assert re.findall(r'data-cap="user:(\w+)"', page) == ["alice", "carol", "bob"]
    assert "mallory" not in page
    page = browser.get("/marketing/quota?q=CAR").get_data(as_text=True)
    assert re.findall(r'data-cap="user:(\w+)"', page) == ["carol"]
    other = session.scalar(select(QuotaAllocation).where(QuotaAllocation.subject == "mallory"))
    assert browser.post(f"/marketing/quota/caps/{other.id}/delete", data={}).status_code == 404


def test_forecast_endpoint(login, session, workspace, account, simulator):
    simulator.simulator.set_account(API_USER, used=1500)
    browser = login("sales")
    assert browser.get("/marketing/quota/forecast?recipients=10").status_code == 200  # before any sync
    quota_sync.sync_workspace(session, workspace.id, factory=factory)
    data = browser.get(f"/marketing/quota/forecast?recipients=2500&account_id={account.id}").get_json()
    assert data["account_id"] == account.id
    assert (data["remaining_today"], data["days_needed"], data["fits_today"]) == (500, 2, False)
    assert data["plan"] == [500, 2000]
    assert Decimal(data["estimated_cost"]) == Decimal("2500") * Decimal("0.0007")
    assert browser.get("/marketing/quota/forecast?recipients=-1").status_code == 422
    assert browser.get("/marketing/quota/forecast?recipients=1&bogus=1").status_code == 422
    assert browser.get("/marketing/quota/forecast?recipients=1&account_id=999").status_code == 404


def test_forecast_endpoint_does_not_reach_other_workspaces(login, session, other_workspace):
    foreign = bind_account(session, other_workspace.id, name="foreign")
    response = login("admin").get(f"/marketing/quota/forecast?recipients=1&account_id={foreign.id}")
    assert response.status_code == 404


def test_stale_threshold_comes_from_the_setting(login, session, workspace, account):
    """18 minutes old: stale under the default 15, fresh under this app's QUOTA_STALE_MINUTES=20."""
    session.add(
        AccountSnapshot(
            workspace_id=workspace.id,
            account_id=account.id,
            balance=Decimal("60"),
            daily_quota=2000,
            used_today=1,
            fetched_at=utcnow() - dt.timedelta(minutes=18),
        )
    )
    session.commit()
    header = bar(login("sales").get("/marketing/").get_data(as_text=True))
    assert 'data-quota="2000"' in header
    assert 'data-warning="stale"' not in header


def test_the_forecast_names_the_account_kind_as_the_campaign_form_does(login, session, workspace):
    from plugin.models import ProviderAccount

    account = ProviderAccount(workspace_id=workspace.id, kind="sendcloud", name="acme_batch", api_user="acme")
    session.add(account)
    session.commit()
    page = login("admin").get("/marketing/quota").get_data(as_text=True)
    assert "acme_batch (SendCloud)" in page
    assert "(sendcloud)" not in page
