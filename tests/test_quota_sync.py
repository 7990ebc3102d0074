"""Quota sync against the SendCloud simulator over HTTP: snapshots, reconciliation of today's
ledgers with ``todayUsedQuota`` (mail sent by other systems too), the trigger-share split, failures
that keep the last good snapshot, the scheduler's ``sync_all``, history points and the CLI."""

from __future__ import annotations

import datetime as dt
import logging
import random
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from plugin import allocation, quota, quota_sync
from plugin.errors import ProviderError
from plugin.models import AccountSnapshot, ProviderAccount, QuotaLedger, utcnow
from plugin.providers.base import AccountInfo
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from tests.quota_support import API_KEY, API_USER, bind_account, factory


@pytest.fixture
def simulator():
    sim = SendCloudSimulator(check_webhook_urls=False, deliver_delay=0.01)
    sim.add_account(API_USER, API_KEY, quota=1000, used=0, balance=Decimal("50"))
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def app_config(app_config, simulator):
    app_config.update(MARKETING_SENDCLOUD_API_BASE=simulator.url, MARKETING_PROVIDER_TIMEOUT=5.0)
    return app_config


@pytest.fixture
def account(session, workspace):
    return bind_account(session, workspace.id)


def ledger(session, account_id: int, channel: str = "batch", owner: str = "") -> QuotaLedger | None:
    session.expire_all()
    return session.scalar(
        select(QuotaLedger).where(
            QuotaLedger.account_id == account_id,
            QuotaLedger.channel == channel,
            QuotaLedger.owner == owner,
            QuotaLedger.day == quota.provider_day(utcnow()),
        )
    )


def left(row: QuotaLedger | None) -> int:
    return 0 if row is None else max(0, row.limit - row.reserved - row.committed)


def sync(session, workspace, account):
    provider = factory(account, "batch")
    try:
        return quota_sync.sync_account(session, workspace.id, account, provider)
    finally:
        provider.close()


def test_sync_stores_a_snapshot_and_counts_mail_sent_by_another_system(
    session, workspace, account, simulator
):
    simulator.simulator.set_account(API_USER, used=250, available="42.5")
    snapshot = sync(session, workspace, account)
    assert (snapshot.daily_quota, snapshot.used_today) == (1000, 250)
    assert Decimal(str(snapshot.balance)) == Decimal("50")
    assert Decimal(str(snapshot.available_balance)) == Decimal("42.5")
    row = ledger(session, account.id)
    assert (row.limit, row.committed) == (1000, 250)

    # We commit 100 ourselves; the provider counts them plus 50 more from another system.
    grant = quota.reserve(session, row.id, 100)
    quota.commit_reservation(session, grant.id, 100)
    simulator.simulator.set_account(API_USER, used=400)
    sync(session, workspace, account)
    assert ledger(session, account.id).committed == 400
    assert quota_sync.latest_snapshot(session, workspace.id).used_today == 400
    assert session.scalar(select(func.count()).select_from(AccountSnapshot)) == 2


def test_quota_change_at_the_provider_changes_the_limit(session, workspace, account, simulator):
    sync(session, workspace, account)
    simulator.simulator.set_account(API_USER, quota=3000)
    sync(session, workspace, account)
    assert ledger(session, account.id).limit == 3000


def test_trigger_share_splits_the_days_quota(session, workspace, account, simulator):
    allocation.set_share(session, workspace.id, percent=10)
    session.commit()
    sync(session, workspace, account)
    batch, trigger = ledger(session, account.id), ledger(session, account.id, "trigger")
    assert (batch.limit, trigger.limit) == (900, 100)

    # 30 trigger mails of ours and 200 from another system: the provider counts 230.
    grant = quota.reserve(session, trigger.id, 30)
    quota.commit_reservation(session, grant.id, 30)
    simulator.simulator.set_account(API_USER, used=230)
    sync(session, workspace, account)
    batch, trigger = ledger(session, account.id), ledger(session, account.id, "trigger")
    assert batch.committed == 200  # not 230: our trigger mail is not counted twice
    assert trigger.committed == 30
    assert left(batch) + left(trigger) == 1000 - 230

    # Another system eats past the batch part: what is left of the share shrinks too.
    simulator.simulator.set_account(API_USER, used=950)
    sync(session, workspace, account)
    batch, trigger = ledger(session, account.id), ledger(session, account.id, "trigger")
    assert left(batch) == 0
    assert left(trigger) == 50
    assert left(batch) + left(trigger) == 1000 - 950


def test_absolute_share_and_its_removal(session, workspace, account, simulator):
    allocation.set_share(session, workspace.id, daily_limit=250)
    session.commit()
    sync(session, workspace, account)
    assert (ledger(session, account.id).limit, ledger(session, account.id, "trigger").limit) == (750, 250)
    allocation.set_share(session, workspace.id, percent=0)
    session.commit()
    quota_sync.rebalance(session, workspace.id)
    # No share: trigger mail and campaigns both draw on the whole quota (as the send gate has it).
    assert (ledger(session, account.id).limit, ledger(session, account.id, "trigger").limit) == (1000, 1000)


@pytest.mark.parametrize("seed", range(8))
def test_split_never_grants_more_than_the_provider_has_left(session, workspace, account, seed):
    """Random shares, own commits and foreign use: the two ledgers' room never exceeds quota − used."""
    rng = random.Random(seed)
    quota_total = 1000
    used = 0
    for _step in range(25):
        percent = rng.choice([0, 5, 10, 33.3, 50, 100])
        allocation.set_share(session, workspace.id, percent=percent)
        session.commit()
        quota_sync.store(session, workspace.id, account, AccountInfo(None, None, quota_total, used))
        batch, trigger = ledger(session, account.id), ledger(session, account.id, "trigger")
        if percent:
            assert left(batch) + left(trigger) <= quota_total - used
        else:  # one shared quota: each channel alone stays within it
            assert max(left(batch), left(trigger)) <= quota_total - used
        # Our own sends (counted by the provider too) and some foreign mail.
        for row in (batch, trigger):
            if row is not None and left(row) and rng.random() < 0.6:
                grant = quota.reserve(session, row.id, rng.randint(1, left(row)))
                quota.commit_reservation(session, grant.id, grant.amount)
                used += grant.amount
        used = min(quota_total, used + rng.choice([0, 0, 3, 40]))
    allocation.set_share(session, workspace.id, percent=20)
    session.commit()
    quota_sync.store(session, workspace.id, account, AccountInfo(None, None, quota_total, used))
    assert (
        left(ledger(session, account.id)) + left(ledger(session, account.id, "trigger")) <= quota_total - used
    )


def test_a_failed_sync_keeps_the_last_good_snapshot(session, workspace, account, simulator):
    first = sync(session, workspace, account)
    simulator.simulator.faults.fail_next = 1
    with pytest.raises(ProviderError):
        sync(session, workspace, account)
    latest = quota_sync.latest_snapshot(session, workspace.id, account.id)
    assert latest.id == first.id
    outcomes = quota_sync.sync_workspace(session, workspace.id, factory=factory)
    assert outcomes[0].snapshot is not None  # the fault was one request only
    assert quota_sync.latest_snapshot(session, workspace.id).id != first.id


def test_sync_all_logs_failures_without_secrets_and_goes_on(
    session, workspace, other_workspace, account, simulator, caplog
):
    bind_account(session, other_workspace.id, api_key="Wrong-Key-Must-Never-Be-Logged", name="broken")
    caplog.set_level(logging.WARNING, logger="plugin.quota_sync")
    assert quota_sync.sync_all(session, factory=factory) == 1
    assert quota_sync.latest_snapshot(session, workspace.id) is not None
    assert quota_sync.latest_snapshot(session, other_workspace.id) is None
    assert "quota sync of account" in caplog.text
    assert "Wrong-Key-Must-Never-Be-Logged" not in caplog.text
    assert API_KEY not in caplog.text


def test_smtp_accounts_sync_from_their_configured_limit(session, workspace):
    smtp = ProviderAccount(workspace_id=workspace.id, kind="smtp", name="mailbox", daily_limit=500)
    session.add(smtp)
    session.commit()
    snapshot = quota_sync.sync_account(session, workspace.id, smtp, None)
    assert (snapshot.daily_quota, snapshot.used_today, snapshot.balance) == (500, 0, None)
    row = ledger(session, smtp.id)
    grant = quota.reserve(session, row.id, 20)
    quota.commit_reservation(session, grant.id, 20)
    assert quota_sync.sync_account(session, workspace.id, smtp, None).used_today == 20
    assert ledger(session, smtp.id).limit == 500


def test_cap_edits_apply_to_todays_cap_ledger(session, workspace, account, simulator):
    cap = allocation.add_cap(session, workspace.id, scope="user", subject="7", daily_limit=100)
    session.commit()
    sync(session, workspace, account)
    cap_ledger = quota.ensure_ledger(
        session, workspace.id, account.id, "batch", quota.provider_day(utcnow()), 100, owner="user:7"
    )
    allocation.update_cap(session, workspace.id, cap.id, scope="user", subject="7", daily_limit=40)
    session.commit()
    quota_sync.rebalance(session, workspace.id)
    assert quota.ledger_totals(session, cap_ledger)[0] == 40


def test_history_has_one_point_per_provider_day(session, workspace, account):
    now = dt.datetime(2024, 5, 10, 6, 0, tzinfo=dt.UTC)  # 14:00 in Beijing
    rows = [
        (now - dt.timedelta(days=2), 900, Decimal("30")),
        (now - dt.timedelta(days=1, hours=3), 100, Decimal("20")),
        (now - dt.timedelta(days=1, hours=1), 400, Decimal("19.5")),
        (now - dt.timedelta(days=1) + dt.timedelta(hours=17), 5, Decimal("19")),  # 07:00 next Beijing day
        (now - dt.timedelta(days=40), 1, Decimal("99")),  # outside the window
    ]
    for fetched_at, used, balance in rows:
        session.add(
            AccountSnapshot(
                workspace_id=workspace.id,
                account_id=account.id,
                balance=balance,
                daily_quota=1000,
                used_today=used,
                fetched_at=fetched_at,
            )
        )
    session.commit()
    points = quota_sync.history(session, workspace.id, days=30, now=now)
    assert [p.day.isoformat() for p in points] == ["2024-05-08", "2024-05-09", "2024-05-10"]
    assert [p.used_today for p in points] == [900, 400, 5]
    assert [p.balance for p in points] == [Decimal("30"), Decimal("19.5"), Decimal("19")]
    assert points[0].as_dict()["balance"] == 30.0


def test_cli_sync_quota(app, session, workspace, account, simulator):
    simulator.simulator.set_account(API_USER, used=7)
    result = app.test_cli_runner().invoke(args=["marketing", "sync-quota"])
    assert result.exit_code == 0, result.output
    assert "quota 1000, used today 7" in result.output
    assert "synced 1 of 1 accounts" in result.output
    assert quota_sync.latest_snapshot(session, workspace.id).used_today == 7

    simulator.simulator.faults.fail_next = 1
    result = app.test_cli_runner().invoke(args=["marketing", "sync-quota", "--workspace", "default"])
    assert result.exit_code == 1
    assert "FAILED" in result.output


def test_the_send_gate_reserves_within_the_synced_split(app, session, workspace, account, simulator):
    """The lead's gate (quota.reserve_for_send) and the sync agree on the limits of each ledger."""
    from plugin.extension import get_state

    settings = get_state().settings
    allocation.set_share(session, workspace.id, percent=10)
    allocation.add_cap(session, workspace.id, scope="user", subject="7", daily_limit=50)
    session.commit()
    simulator.simulator.set_account(API_USER, used=100)  # another system sent 100
    sync(session, workspace, account)
    trigger = quota.reserve_for_send(
        session, workspace_id=workspace.id, account=account, n=500, settings=settings, channel="trigger"
    )
    assert trigger.amount == 100
    batch = quota.reserve_for_send(
        session, workspace_id=workspace.id, account=account, n=5000, settings=settings
    )
    assert batch.amount == 800
    capped = quota.reserve_for_send(
        session, workspace_id=workspace.id, account=account, n=10, settings=settings, owner_id="7"
    )
    assert isinstance(capped, quota.Blocked)  # the account's batch part is all held
    quota.give_back(session, batch)
    session.commit()
    capped = quota.reserve_for_send(
        session, workspace_id=workspace.id, account=account, n=500, settings=settings, owner_id="7"
    )
    assert capped.amount == 50


def test_smtp_limits_are_not_divided_by_the_trigger_share(session, workspace):
    allocation.set_share(session, workspace.id, percent=50)
    smtp = ProviderAccount(workspace_id=workspace.id, kind="smtp", name="mailbox", daily_limit=400)
    session.add(smtp)
    session.commit()
    quota_sync.sync_account(session, workspace.id, smtp, None)
    assert ledger(session, smtp.id).limit == 400
    assert ledger(session, smtp.id, "trigger") is None


def test_caps_and_account_ledgers_are_always_locked_cap_first(
    session, workspace, account, simulator, monkeypatch
):
    """reserve_for_send locks the owner's cap ledger, then the account's; settling and giving
    back must take them in that order too, or a worker recording a batch and another claiming
    one can deadlock (each holding the ledger the other waits for).  The quota functions are
    watched, not replaced: every call goes through to the database."""
    from plugin.extension import get_state

    settings = get_state().settings
    allocation.add_cap(session, workspace.id, scope="user", subject="7", daily_limit=500)
    session.commit()
    sync(session, workspace, account)
    calls: list[tuple[str, int]] = []

    def watch(name: str) -> None:
        real = getattr(quota, name)

        def watched(session, first_id, *args, **kwargs):
            calls.append((name, first_id))
            return real(session, first_id, *args, **kwargs)

        monkeypatch.setattr(quota, name, watched)

    for name in ("reserve", "_settle_one", "commit_reservation", "release"):
        watch(name)

    grant = quota.reserve_for_send(
        session, workspace_id=workspace.id, account=account, n=20, settings=settings, owner_id="7"
    )
    session.commit()
    cap_owner = allocation.owner_key("user", "7")
    cap_ledger, account_ledger = ledger(session, account.id, owner=cap_owner), ledger(session, account.id)
    assert calls == [("reserve", cap_ledger.id), ("reserve", account_ledger.id)]

    calls.clear()
    quota.settle(session, grant, 15)
    assert [rid for _, rid in calls] == [grant.cap_reservation_id, grant.reservation_id]

    again = quota.reserve_for_send(
        session, workspace_id=workspace.id, account=account, n=20, settings=settings, owner_id="7"
    )
    calls.clear()
    quota.give_back(session, again)
    assert calls == [("release", again.cap_reservation_id), ("release", again.reservation_id)]
    session.commit()
    assert left(ledger(session, account.id, owner=cap_owner)) == 500 - 15
