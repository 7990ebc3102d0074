"""Balance and quota sync: ask the provider, keep a snapshot, bring today's ledgers in line.

Runs on a schedule (``sync_all`` from the scheduler, every ``QUOTA_SYNC_MINUTES``), on demand (the
"refresh" button of the account bar, ``flask marketing sync-quota``) and before a campaign starts.

Why a module of its own next to ``quota.py``: the ledger only knows limits, while the split of the
daily quota between campaigns and trigger mail is an admin's decision (``allocation.py``). A sync
therefore writes the account's two ledgers of the provider day together:

* batch ledger limit = daily quota − trigger share, trigger ledger limit = trigger share;
* the provider's ``todayUsedQuota`` counts every mail of the account, ours and those "sent by
  another system". Mail we committed on the trigger ledger is part of it, so the batch ledger is
  raised to ``used − trigger committed within the share`` (not to ``used``, which would count
  trigger mail twice), and whatever no longer fits into the batch part eats into the trigger
  share. Both only ever rise (``max``), because the provider's count already includes our own
  commits; the two remainders then never add up to more than ``quota − used``.
* Without a share (and for SMTP accounts) both channels draw on the whole quota, as the send gate
  has it: each ledger's limit is the quota and each counts all the provider counted, so neither
  grants more than ``quota − used``.

Today's cap ledgers (``user:<id>``/``team:<name>``) get the cap's current limit, so an admin's
edit applies at once rather than tomorrow.

A failed sync writes nothing: the last good snapshot stays, and the account bar shows it as stale
once it is older than ``QUOTA_STALE_MINUTES``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from decimal import Decimal

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from . import allocation, quota
from .errors import MarketingError
from .models import AccountSnapshot, ProviderAccount, QuotaAllocation, QuotaLedger, utcnow
from .providers.base import AccountInfo, Provider

log = logging.getLogger(__name__)

ProviderFactory = Callable[[ProviderAccount, str], Provider]


@dataclasses.dataclass(frozen=True, slots=True)
class SyncOutcome:
    """One account's sync: the new snapshot, or a message safe to show (never a secret)."""

    account_id: int
    account_name: str
    snapshot: AccountSnapshot | None
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One provider day of the chart: the day's last sync."""

    day: dt.date
    fetched_at: dt.datetime
    balance: Decimal | None
    available_balance: Decimal | None
    daily_quota: int | None
    used_today: int | None

    def as_dict(self) -> dict[str, object]:
        return {
            "day": self.day.isoformat(),
            "fetched_at": self.fetched_at.isoformat(),
            "balance": _num(self.balance),
            "available_balance": _num(self.available_balance),
            "daily_quota": self.daily_quota,
            "used_today": self.used_today,
        }


def _num(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


# --------------------------------------------------------------------------- syncing


def sync_account(
    session: Session,
    workspace_id: int,
    account: ProviderAccount,
    provider: Provider | None,
    *,
    now: dt.datetime | None = None,
) -> AccountSnapshot:
    """Ask the provider for balance and quota, store a snapshot and reconcile today's ledgers. Commits.

    Provider errors propagate unchanged and nothing is written. A provider without the notion
    (SMTP, or ``provider=None``) is synced from the account's configured daily limit, with today's
    use taken from our own ledgers (nobody else sends through our mailbox's quota).
    """
    if account.workspace_id != workspace_id:
        raise ValueError("the account belongs to another workspace")
    now = now or utcnow()
    info = provider.account_info() if provider is not None else None
    if info is None:
        info = AccountInfo(
            balance=None,
            available_balance=None,
            daily_quota=account.daily_limit,
            used_today=_own_used(session, account.id, quota.provider_day(now)),
        )
    return store(session, workspace_id, account, info, now=now)


def store(
    session: Session,
    workspace_id: int,
    account: ProviderAccount,
    info: AccountInfo,
    *,
    now: dt.datetime | None = None,
) -> AccountSnapshot:
    """Store ``info`` as a snapshot and reconcile the provider day's ledgers with it. Commits."""
    now = now or utcnow()
    day = quota.provider_day(now)
    if info.daily_quota is not None:
        # ``ensure_ledger`` commits; do it before the snapshot so one transaction writes the rest.
        _split_ledgers(session, workspace_id, account, day, int(info.daily_quota), info.used_today)
    snapshot = AccountSnapshot(
        workspace_id=workspace_id,
        account_id=account.id,
        balance=info.balance,
        available_balance=info.available_balance,
        daily_quota=info.daily_quota,
        used_today=info.used_today,
        reputation=info.reputation,
        fetched_at=now,
    )
    session.add(snapshot)
    session.commit()
    return snapshot


def rebalance(session: Session, workspace_id: int, *, now: dt.datetime | None = None) -> None:
    """Apply changed allocations to today's ledgers at once, from the latest snapshots. Commits.

    Called after an admin edits the trigger share or a cap; no provider call is needed because
    only our own split changes, not what the provider said.
    """
    now = now or utcnow()
    day = quota.provider_day(now)
    for account in _accounts(session, workspace_id):
        snapshot = latest_snapshot(session, workspace_id, account.id)
        if snapshot is None or snapshot.daily_quota is None:
            continue
        used = snapshot.used_today if quota.provider_day(snapshot.fetched_at) == day else None
        _split_ledgers(session, workspace_id, account, day, int(snapshot.daily_quota), used)
    session.commit()


def _split_ledgers(
    session: Session,
    workspace_id: int,
    account: ProviderAccount,
    day: dt.date,
    daily_quota: int,
    used: int | None,
) -> None:
    """Write limits and the provider's use into the day's batch and trigger ledgers (no commit).

    Without a share (and always for SMTP accounts, whose configured limit is not divided, as in
    the send gate) both channels draw on the whole quota: each ledger's limit is the quota and
    each counts everything the provider counted.
    """
    account_id = account.id
    share = trigger_share_for(session, workspace_id, account, daily_quota)
    if account.kind == "smtp":
        used = None  # our own ledgers are the truth for a mailbox; nothing to reconcile
    batch_limit = max(0, daily_quota - share)
    batch_id = quota.ensure_ledger(session, workspace_id, account_id, "batch", day, batch_limit)
    trigger_id = (
        quota.ensure_ledger(session, workspace_id, account_id, "trigger", day, share)
        if share > 0
        else _ledger_id(session, account_id, "trigger", day)
    )
    # Lock both rows in ascending id (the ledger's lock order) and read the trigger commits.
    ids = sorted(i for i in (batch_id, trigger_id) if i is not None)
    rows = {
        row.id: row
        for row in session.execute(
            select(QuotaLedger.id, QuotaLedger.committed)
            .where(QuotaLedger.id.in_(ids))
            .order_by(QuotaLedger.id)
            .with_for_update()
        )
    }
    # Only trigger mail within today's share stays off the batch part; commits beyond a share
    # that was lowered during the day count against the batch part like anyone else's mail.
    trigger_within_share = min(rows[trigger_id].committed, share) if trigger_id is not None else 0
    _set(session, batch_id, batch_limit, None if used is None else max(0, used - trigger_within_share))
    if trigger_id is not None and share > 0:
        _set(session, trigger_id, share, None if used is None else max(0, used - batch_limit))
    elif trigger_id is not None:
        _set(session, trigger_id, daily_quota, used)
    _apply_caps(session, workspace_id, account_id, day)


def trigger_share_for(session: Session, workspace_id: int, account: ProviderAccount, daily_quota: int) -> int:
    """The trigger share of this account's quota: the admin's share for SendCloud, none for SMTP."""
    if account.kind != "sendcloud":
        return 0
    return allocation.trigger_share(session, workspace_id, daily_quota)


def _set(session: Session, ledger_id: int, limit: int, committed_at_least: int | None) -> None:
    values: dict[str, object] = {"limit": max(0, limit)}
    if committed_at_least is not None:
        values["committed"] = case(
            (QuotaLedger.committed < committed_at_least, committed_at_least), else_=QuotaLedger.committed
        )
    session.execute(
        update(QuotaLedger)
        .where(QuotaLedger.id == ledger_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def _apply_caps(session: Session, workspace_id: int, account_id: int, day: dt.date) -> None:
    """Today's cap ledgers take the caps' current limits (new caps get their ledger on first use)."""
    caps = {
        allocation.owner_key(scope, subject): limit
        for scope, subject, limit in session.execute(
            select(QuotaAllocation.scope, QuotaAllocation.subject, QuotaAllocation.daily_limit).where(
                QuotaAllocation.workspace_id == workspace_id,
                QuotaAllocation.scope.in_(allocation.CAP_SCOPES),
            )
        )
    }
    if not caps:
        return
    ledgers = session.execute(
        select(QuotaLedger.id, QuotaLedger.owner, QuotaLedger.limit)
        .where(QuotaLedger.account_id == account_id, QuotaLedger.day == day, QuotaLedger.owner != "")
        .order_by(QuotaLedger.id)
    ).all()
    for ledger_id, owner, limit in ledgers:
        wanted = caps.get(owner)
        if wanted is not None and wanted != limit:
            _set(session, ledger_id, int(wanted), None)


def _ledger_id(session: Session, account_id: int, channel: str, day: dt.date) -> int | None:
    return session.scalar(
        select(QuotaLedger.id).where(
            QuotaLedger.account_id == account_id,
            QuotaLedger.channel == channel,
            QuotaLedger.owner == "",
            QuotaLedger.day == day,
        )
    )


def _own_used(session: Session, account_id: int, day: dt.date) -> int:
    """Mail committed today on the account's own ledgers (batch + trigger)."""
    return int(
        session.scalar(
            select(func.coalesce(func.sum(QuotaLedger.committed), 0)).where(
                QuotaLedger.account_id == account_id, QuotaLedger.day == day, QuotaLedger.owner == ""
            )
        )
    )


def _accounts(session: Session, workspace_id: int | None = None) -> list[ProviderAccount]:
    query = select(ProviderAccount).where(ProviderAccount.status == "active").order_by(ProviderAccount.id)
    if workspace_id is not None:
        query = query.where(ProviderAccount.workspace_id == workspace_id)
    return list(session.scalars(query))


def _sync_one(session: Session, account: ProviderAccount, factory: ProviderFactory) -> SyncOutcome:
    """Sync one account; on failure roll back, log without secrets and say what went wrong."""
    account_id, name, workspace_id = account.id, account.name, account.workspace_id
    provider: Provider | None = None
    try:
        if account.kind != "smtp":
            provider = factory(account, "batch")
        snapshot = sync_account(session, workspace_id, account, provider)
        return SyncOutcome(account_id, name, snapshot)
    except MarketingError as exc:
        session.rollback()
        # Our own errors carry messages written for users, never keys.
        log.warning("quota sync of account %s (workspace %s) failed: %s", account_id, workspace_id, exc)
        return SyncOutcome(account_id, name, None, str(exc))
    except Exception as exc:  # one broken account must not stop the others
        session.rollback()
        # Foreign exceptions may quote request data; log the type only.
        log.warning(
            "quota sync of account %s (workspace %s) failed: %s", account_id, workspace_id, type(exc).__name__
        )
        return SyncOutcome(account_id, name, None, type(exc).__name__)
    finally:
        if provider is not None:
            try:
                provider.close()
            except Exception:  # closing is best effort
                log.debug("closing the provider of account %s failed", account_id)


def sync_workspace(session: Session, workspace_id: int, *, factory: ProviderFactory) -> list[SyncOutcome]:
    """Sync every active account of the workspace (the "refresh" button); failures are reported."""
    return [_sync_one(session, account, factory) for account in _accounts(session, workspace_id)]


def sync_all(session: Session, *, factory: ProviderFactory) -> int:
    """Sync every active account of every workspace (scheduler job); returns how many succeeded."""
    ids = [account.id for account in _accounts(session)]
    done = 0
    for account_id in ids:
        account = session.get(ProviderAccount, account_id)
        if account is None:
            continue
        if _sync_one(session, account, factory).snapshot is not None:
            done += 1
    return done


# --------------------------------------------------------------------------- reading


def latest_snapshot(
    session: Session, workspace_id: int, account_id: int | None = None
) -> AccountSnapshot | None:
    """The newest snapshot of the account (or of any account of the workspace)."""
    query = select(AccountSnapshot).where(AccountSnapshot.workspace_id == workspace_id)
    if account_id is not None:
        query = query.where(AccountSnapshot.account_id == account_id)
    return session.scalar(
        query.order_by(AccountSnapshot.fetched_at.desc(), AccountSnapshot.id.desc()).limit(1)
    )


def history(
    session: Session,
    workspace_id: int,
    *,
    days: int = 30,
    account_id: int | None = None,
    now: dt.datetime | None = None,
) -> list[HistoryPoint]:
    """One point per provider day over the last ``days`` days, oldest first, for the chart.

    A day's point is its last sync (syncs run every few minutes; the chart shows days). Its
    ``used_today`` is the highest count seen that day, so a last sync just after midnight
    cannot hide a day's use.
    """
    now = now or utcnow()
    since = now - dt.timedelta(days=max(1, days))
    query = select(
        AccountSnapshot.fetched_at,
        AccountSnapshot.balance,
        AccountSnapshot.available_balance,
        AccountSnapshot.daily_quota,
        AccountSnapshot.used_today,
    ).where(AccountSnapshot.workspace_id == workspace_id, AccountSnapshot.fetched_at >= since)
    if account_id is not None:
        query = query.where(AccountSnapshot.account_id == account_id)
    points: dict[dt.date, HistoryPoint] = {}
    for row in session.execute(query.order_by(AccountSnapshot.fetched_at, AccountSnapshot.id)):
        day = quota.provider_day(row.fetched_at)
        previous = points.get(day)
        used = row.used_today
        if previous is not None and previous.used_today is not None:
            used = previous.used_today if used is None else max(used, previous.used_today)
        points[day] = HistoryPoint(
            day=day,
            fetched_at=row.fetched_at,
            balance=_decimal(row.balance),
            available_balance=_decimal(row.available_balance),
            daily_quota=row.daily_quota,
            used_today=used,
        )
    return [points[day] for day in sorted(points)]


def recent_syncs(session: Session, workspace_id: int, *, limit: int = 20) -> list[AccountSnapshot]:
    """The newest snapshots, newest first (the table under the chart)."""
    return list(
        session.scalars(
            select(AccountSnapshot)
            .where(AccountSnapshot.workspace_id == workspace_id)
            .order_by(AccountSnapshot.fetched_at.desc(), AccountSnapshot.id.desc())
            .limit(limit)
        )
    )


def today_ledgers(
    session: Session, workspace_id: int, *, now: dt.datetime | None = None
) -> list[QuotaLedger]:
    """Today's ledger rows of the workspace (account, channel, owner): limit, reserved, committed."""
    day = quota.provider_day(now or utcnow())
    return list(
        session.scalars(
            select(QuotaLedger)
            .where(QuotaLedger.workspace_id == workspace_id, QuotaLedger.day == day)
            .order_by(QuotaLedger.account_id, QuotaLedger.owner, QuotaLedger.channel)
        )
    )


def _decimal(value: object) -> Decimal | None:
    if value is None:
        return None
    return value if isinstance(value, Decimal) else Decimal(str(value))


__all__ = [
    "HistoryPoint",
    "SyncOutcome",
    "history",
    "latest_snapshot",
    "rebalance",
    "recent_syncs",
    "store",
    "sync_account",
    "sync_all",
    "sync_workspace",
    "today_ledgers",
    "trigger_share_for",
]
