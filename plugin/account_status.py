"""What the header of every plugin page says about the provider account: balance and today's
quota from the latest sync, and whether that sync is too old to trust or the balance too low.

Both thresholds are settings (``QUOTA_STALE_MINUTES``, ``LOW_BALANCE_THRESHOLD``) because what is
"recent" depends on the sync interval a deployment chooses, and what is "low" on its volume."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .config import Settings
from .models import AccountSnapshot, ProviderAccount, QuotaLedger, utcnow

#: Defaults when no settings are given (the settings' own defaults).
DEFAULT_STALE_MINUTES = 15
DEFAULT_LOW_BALANCE = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class AccountStatus:
    account_name: str
    balance: Decimal | None
    available_balance: Decimal | None
    daily_quota: int | None
    used_today: int | None
    fetched_at: dt.datetime | None
    account_id: int | None = None
    #: A snapshot older than this many minutes is shown with a "stale" warning.
    stale_minutes: int = DEFAULT_STALE_MINUTES
    #: Warn when the available balance (else the balance) is below this; 0 = never.
    low_balance_threshold: float = DEFAULT_LOW_BALANCE
    #: SendCloud's event posts refused for the APP KEY since then (``webhooks.note_refusal``).
    webhook_refused_since: dt.datetime | None = None
    webhook_refused_reason: str | None = None

    @property
    def remaining(self) -> int | None:
        if self.daily_quota is None or self.used_today is None:
            return None
        return max(0, self.daily_quota - self.used_today)

    def stale(self, now: dt.datetime | None = None) -> bool:
        if self.fetched_at is None:
            return True
        return (now or utcnow()) - self.fetched_at > dt.timedelta(minutes=self.stale_minutes)

    @property
    def spendable(self) -> Decimal | None:
        """The available balance (what sending can use), else the balance."""
        return self.available_balance if self.available_balance is not None else self.balance

    @property
    def low_balance(self) -> bool:
        value = self.spendable
        if value is None or self.low_balance_threshold <= 0:
            return False
        return Decimal(str(value)) < Decimal(str(self.low_balance_threshold))


def account_status(
    session: Session, workspace_id: int, settings: Settings | None = None
) -> AccountStatus | None:
    """The workspace's SendCloud account and its latest snapshot; ``None`` before the wizard.

    ``settings`` (the plugin's Settings) supplies the stale and low-balance thresholds."""
    common: dict[str, Any] = {
        "stale_minutes": getattr(settings, "quota_stale_minutes", DEFAULT_STALE_MINUTES),
        "low_balance_threshold": getattr(settings, "low_balance_threshold", DEFAULT_LOW_BALANCE),
    }
    account = session.scalar(
        select(ProviderAccount)
        .where(ProviderAccount.workspace_id == workspace_id, ProviderAccount.kind == "sendcloud")
        .order_by(ProviderAccount.id)
        .limit(1)
    )
    if account is None:
        return None
    snapshot = session.scalar(
        select(AccountSnapshot)
        .where(AccountSnapshot.workspace_id == workspace_id, AccountSnapshot.account_id == account.id)
        .order_by(AccountSnapshot.fetched_at.desc(), AccountSnapshot.id.desc())
        .limit(1)
    )
    common.update(
        webhook_refused_since=account.webhook_refused_since,
        webhook_refused_reason=account.webhook_refused_reason,
    )
    if snapshot is None:
        return AccountStatus(
            account.api_user or account.name, None, None, None, None, None, account.id, **common
        )
    return AccountStatus(
        account_name=account.api_user or account.name,
        balance=snapshot.balance,
        available_balance=snapshot.available_balance,
        daily_quota=snapshot.daily_quota,
        used_today=used_today(session, account.id, snapshot),
        fetched_at=snapshot.fetched_at,
        account_id=account.id,
        **common,
    )


def used_today(session: Session, account_id: int, snapshot: AccountSnapshot) -> int | None:
    """What is used today: the provider's figure at the last sync, or our own ledger if higher.

    Between syncs the header would otherwise keep showing the provider's older count while a
    campaign uses the quota up; the ledger knows what we reserved and sent since.  A snapshot of
    an earlier provider day says nothing about today.
    """
    from .quota import provider_day

    today = provider_day(utcnow())
    synced = snapshot.used_today if provider_day(snapshot.fetched_at) == today else 0
    rows = session.execute(
        select(QuotaLedger.channel, QuotaLedger.limit, QuotaLedger.reserved + QuotaLedger.committed).where(
            QuotaLedger.account_id == account_id, QuotaLedger.owner == "", QuotaLedger.day == today
        )
    ).all()
    if not rows:
        return synced
    limits = {row[1] for row in rows}
    used = [int(row[2]) for row in rows]
    # Split ledgers (a trigger share) count apart; unsplit ones each count everything.
    ours = sum(used) if len(limits) > 1 else max(used)
    return max(synced or 0, ours)
