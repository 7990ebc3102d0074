"""The quota ledger on one connection: grants, partial grants, settling, leases, reconciling."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import select

from plugin import quota
from plugin.models import AccountSnapshot, ProviderAccount, QuotaLedger, QuotaReservation
from plugin.providers.base import AccountInfo

T0 = dt.datetime(2024, 6, 15, 3, 0, tzinfo=dt.UTC)
DAY = dt.date(2024, 6, 15)


@pytest.fixture
def account(session, workspace) -> ProviderAccount:
    acct = ProviderAccount(workspace_id=workspace.id, kind="sendcloud", name="main", api_user="u")
    session.add(acct)
    session.commit()
    return acct


@pytest.fixture
def ledger(session, workspace, account) -> int:
    return quota.ensure_ledger(session, workspace.id, account.id, "batch", DAY, 100)


def _status(session, reservation_id: int) -> str:
    session.expire_all()
    return session.scalar(select(QuotaReservation.status).where(QuotaReservation.id == reservation_id))


def test_ensure_ledger_returns_the_same_row_and_keeps_its_limit(session, workspace, account, ledger):
    again = quota.ensure_ledger(session, workspace.id, account.id, "batch", DAY, 5)
    assert again == ledger
    assert quota.ledger_totals(session, ledger) == (100, 0, 0)
    other = quota.ensure_ledger(session, workspace.id, account.id, "trigger", DAY, 7)
    assert other != ledger
    assert session.query(QuotaLedger).count() == 2
    with pytest.raises(ValueError, match="channel"):
        quota.ensure_ledger(session, workspace.id, account.id, "bulk", DAY, 7)


def test_grants_never_exceed_what_remains(session, ledger):
    first = quota.reserve(session, ledger, 60, now=T0)
    assert first is not None
    assert first.amount == 60
    second = quota.reserve(session, ledger, 60, now=T0)
    assert second is not None
    assert second.amount == 40
    assert quota.reserve(session, ledger, 1, now=T0) is None
    assert quota.ledger_totals(session, ledger) == (100, 100, 0)
    assert quota.held_total(session, ledger) == 100
    with pytest.raises(ValueError, match="positive"):
        quota.reserve(session, ledger, 0, now=T0)


def test_commit_moves_used_to_committed_and_returns_the_rest_once(session, ledger):
    res = quota.reserve(session, ledger, 50, now=T0, batch_id=7)
    assert res is not None
    assert res.batch_id == 7
    assert quota.commit_reservation(session, res.id, 30) is True
    assert quota.ledger_totals(session, ledger) == (100, 0, 30)
    assert _status(session, res.id) == "committed"
    # Settling again (a retried task) changes nothing, nor does a release afterwards.
    assert quota.commit_reservation(session, res.id, 30) is False
    assert quota.release(session, res.id) is False
    assert quota.ledger_totals(session, ledger) == (100, 0, 30)
    assert quota.remaining(session, ledger) == 70


def test_settling_tells_when_it_changed_nothing(session, ledger):
    """``settle`` counts exactly once; a second settlement of the same grant changes nothing,
    and on PostgreSQL (where its answer is read after the commit) ``unsettled`` says so."""
    res = quota.reserve(session, ledger, 50, now=T0)
    grant = quota.Grant(50, res.id, None)
    first = quota.settle(session, grant, 30)
    session.commit()
    assert quota.unsettled(first) == 0
    again = quota.settle(session, grant, 30)
    session.commit()
    assert quota.ledger_totals(session, ledger) == (100, 0, 30)
    postgres = session.get_bind().dialect.name == "postgresql"
    assert quota.unsettled(again) == (1 if postgres else 0)  # SQLite settles without a pipeline


def test_release_returns_everything_once(session, ledger):
    res = quota.reserve(session, ledger, 80, now=T0)
    assert quota.release(session, res.id) is True
    assert quota.release(session, res.id) is False
    assert quota.commit_reservation(session, res.id, 80) is False
    assert quota.ledger_totals(session, ledger) == (100, 0, 0)
    assert _status(session, res.id) == "released"
    again = quota.reserve(session, ledger, 500, now=T0)
    assert again.amount == 100


def test_commit_refuses_more_than_reserved(session, ledger):
    res = quota.reserve(session, ledger, 10, now=T0)
    with pytest.raises(ValueError, match="between 0"):
        quota.commit_reservation(session, res.id, 11)
    with pytest.raises(ValueError, match="between 0"):
        quota.commit_reservation(session, res.id, -1)
    with pytest.raises(LookupError):
        quota.release(session, 999_999)
    assert quota.ledger_totals(session, ledger) == (100, 10, 0)


def test_commit_can_join_the_callers_transaction(session, ledger):
    res = quota.reserve(session, ledger, 10, now=T0)
    assert quota.commit_reservation(session, res.id, 10, commit=False) is True
    session.rollback()  # the caller's transaction failed: the settlement goes with it
    assert quota.ledger_totals(session, ledger) == (100, 10, 0)
    assert _status(session, res.id) == "held"


def test_an_expired_lease_returns_its_quota(session, ledger):
    res = quota.reserve(session, ledger, 100, lease_seconds=60, now=T0)
    # Still within the lease: nothing to grant.
    assert quota.reserve(session, ledger, 5, now=T0 + dt.timedelta(seconds=59)) is None
    assert _status(session, res.id) == "held"
    later = quota.reserve(session, ledger, 100, now=T0 + dt.timedelta(seconds=61))
    assert later is not None
    assert later.amount == 100
    assert _status(session, res.id) == "expired"
    assert quota.ledger_totals(session, ledger) == (100, 100, 0)
    # The late worker comes back: release is a no-op, the sent mail still counts as committed once.
    assert quota.release(session, res.id) is False
    assert quota.commit_reservation(session, res.id, 20) is True
    assert quota.commit_reservation(session, res.id, 20) is False
    assert quota.ledger_totals(session, ledger) == (100, 100, 20)
    assert quota.remaining(session, ledger) == 0


def test_renew_keeps_a_working_reservation_alive(session, ledger):
    res = quota.reserve(session, ledger, 100, lease_seconds=60, now=T0)
    assert quota.renew(session, res.id, lease_seconds=600, now=T0 + dt.timedelta(seconds=50))
    assert quota.reserve(session, ledger, 5, now=T0 + dt.timedelta(seconds=120)) is None
    assert _status(session, res.id) == "held"
    quota.release(session, res.id)
    assert not quota.renew(session, res.id, now=T0)


def test_committed_and_held_reservations_add_up_to_the_ledger(session, ledger):
    amounts = []
    for n, used in ((10, 10), (20, 5), (30, None), (15, 0)):
        res = quota.reserve(session, ledger, n, now=T0)
        amounts.append(res.amount)
        if used is not None:
            quota.commit_reservation(session, res.id, used)
    session.expire_all()
    rows = session.execute(select(QuotaReservation.status, QuotaReservation.amount)).all()
    committed = sum(a for s, a in rows if s == "committed")
    held = sum(a for s, a in rows if s == "held")
    assert quota.ledger_totals(session, ledger) == (100, held, committed) == (100, 30, 15)


def test_reconcile_follows_the_provider(session, ledger):
    res = quota.reserve(session, ledger, 10, now=T0)
    quota.commit_reservation(session, res.id, 10)
    quota.reconcile(session, ledger, provider_used_today=40, provider_quota=200)
    session.commit()
    assert quota.ledger_totals(session, ledger) == (200, 0, 40)
    # The provider's count never lowers ours (it may lag behind what we just committed).
    quota.reconcile(session, ledger, provider_used_today=5, provider_quota=None)
    session.commit()
    assert quota.ledger_totals(session, ledger) == (200, 0, 40)
    assert quota.reserve(session, ledger, 1000, now=T0).amount == 160


def test_sync_stores_a_snapshot_and_counts_mail_sent_elsewhere(session, workspace, account):
    now = dt.datetime(2024, 6, 15, 17, 0, tzinfo=dt.UTC)  # already June 16 in Shanghai
    info = AccountInfo(
        balance=Decimal("12.5"), available_balance=Decimal("10"), daily_quota=300, used_today=120
    )
    snapshot = quota.sync(session, workspace.id, account, info, now)
    assert session.get(AccountSnapshot, snapshot.id).daily_quota == 300
    ledger = session.scalars(select(QuotaLedger)).one()
    assert (ledger.channel, ledger.day) == ("batch", dt.date(2024, 6, 16))
    assert (ledger.limit, ledger.committed) == (300, 120)
    assert quota.reserve(session, ledger.id, 1000, now=now).amount == 180
    # Quota unknown: the snapshot is kept, no ledger is touched.
    quota.sync(session, workspace.id, account, AccountInfo(None, None, None, None), now)
    assert session.query(AccountSnapshot).count() == 2
    assert quota.ledger_totals(session, ledger.id) == (300, 180, 120)
