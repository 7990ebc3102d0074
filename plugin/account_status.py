"""What the header of every plugin page says about the provider account: balance and today's
quota from the latest sync, and whether that sync is too old to trust."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import AccountSnapshot, ProviderAccount, utcnow

#: A snapshot older than this is shown with a "stale" warning.
STALE_AFTER = dt.timedelta(minutes=30)


@dataclasses.dataclass(frozen=True, slots=True)
class AccountStatus:
    account_name: str
    balance: Decimal | None
    available_balance: Decimal | None
    daily_quota: int | None
    used_today: int | None
    fetched_at: dt.datetime | None

    @property
    def remaining(self) -> int | None:
        if self.daily_quota is None or self.used_today is None:
            return None
        return max(0, self.daily_quota - self.used_today)

    def stale(self, now: dt.datetime | None = None) -> bool:
        if self.fetched_at is None:
            return True
        return (now or utcnow()) - self.fetched_at > STALE_AFTER


def account_status(session: Session, workspace_id: int) -> AccountStatus | None:
    """The workspace's SendCloud account and its latest snapshot; ``None`` before the wizard."""
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
    if snapshot is None:
        return AccountStatus(account.api_user or account.name, None, None, None, None, None)
    return AccountStatus(
        account_name=account.api_user or account.name,
        balance=snapshot.balance,
        available_balance=snapshot.available_balance,
        daily_quota=snapshot.daily_quota,
        used_today=snapshot.used_today,
        fetched_at=snapshot.fetched_at,
    )
