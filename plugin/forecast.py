"""What a campaign will cost and how long it needs, shown before launch.

Why: a marketer who sends 50,000 mails on an account with a 10,000 daily quota should learn
before pressing "send" that it takes five days (or that the balance runs out first), not from a
campaign paused by the quota gate. The numbers come from the same places the gate uses: today's
batch ledger (or, before the first reservation of the day, the latest snapshot), minus the share
kept for trigger mail, and the owner's daily cap when that is lower.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import allocation, quota
from .config import Settings
from .i18n import _, format_money, format_number
from .models import AccountSnapshot, ProviderAccount, QuotaLedger, utcnow
from .quota_sync import latest_snapshot, trigger_share_for

#: Days listed in the spread plan; longer campaigns show the total only.
PLAN_DAYS = 60


@dataclasses.dataclass(frozen=True, slots=True)
class Forecast:
    recipients: int
    price_per_mail: Decimal
    estimated_cost: Decimal
    #: What this campaign could still send today (``None`` when the quota is unknown).
    remaining_today: int | None
    #: The provider's daily quota (or the SMTP account's configured limit); ``None`` = unknown.
    daily_quota: int | None
    #: What a campaign of this owner may send on a full day (quota − trigger share, capped).
    per_day: int | None
    trigger_share: int
    #: The owner's daily cap, when one applies.
    cap: int | None
    #: Calendar days from today until the last mail at the current quota; ``None`` = never/unknown.
    days_needed: int | None
    fits_today: bool
    available_balance: Decimal | None
    balance_ok: bool
    synced_at: dt.datetime | None
    #: Mails per day, today first (at most ``PLAN_DAYS`` entries).
    plan: tuple[int, ...]
    messages: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "recipients": self.recipients,
            "price_per_mail": str(self.price_per_mail),
            "estimated_cost": str(self.estimated_cost),
            "remaining_today": self.remaining_today,
            "daily_quota": self.daily_quota,
            "per_day": self.per_day,
            "trigger_share": self.trigger_share,
            "cap": self.cap,
            "days_needed": self.days_needed,
            "fits_today": self.fits_today,
            "available_balance": None if self.available_balance is None else str(self.available_balance),
            "balance_ok": self.balance_ok,
            "synced_at": self.synced_at.isoformat() if self.synced_at else None,
            "plan": list(self.plan),
            "messages": list(self.messages),
        }


def forecast(
    session: Session,
    workspace_id: int,
    account: ProviderAccount,
    recipients: int,
    settings: Settings,
    *,
    owner_id: str | None = None,
    team: str | None = None,
    now: dt.datetime | None = None,
) -> Forecast:
    """Cost, today's room and the days needed for ``recipients`` mails through ``account``."""
    if account.workspace_id != workspace_id:
        raise ValueError("the account belongs to another workspace")
    recipients = max(0, int(recipients))
    now = now or utcnow()
    day = quota.provider_day(now)
    price = Decimal(str(settings.price_per_mail))
    cost = (price * recipients).normalize() if recipients else Decimal("0")
    snapshot = latest_snapshot(session, workspace_id, account.id)
    unlimited = account.kind == "smtp" and account.daily_limit is None

    daily_quota = _daily_quota(account, snapshot)
    share = trigger_share_for(session, workspace_id, account, daily_quota) if daily_quota is not None else 0
    cap = allocation.cap_for(session, workspace_id, owner_id, team)
    per_day = remaining = None
    if daily_quota is not None:
        per_day = max(0, daily_quota - share)
        remaining = _batch_remaining(session, account, day, per_day, snapshot)
    if cap is not None:
        cap_left = _cap_remaining(session, account.id, day, cap)
        per_day = cap[1] if per_day is None else min(per_day, cap[1])
        remaining = cap_left if remaining is None else min(remaining, cap_left)

    available = _available(snapshot)
    balance_ok = available is None or available >= cost
    if unlimited and cap is None:
        fits_today, days, plan = True, (1 if recipients else 0), ((recipients,) if recipients else ())
    else:
        fits_today = remaining is not None and recipients <= remaining
        days, plan = _spread(recipients, remaining, per_day)

    messages = _messages(
        recipients=recipients,
        known=unlimited or daily_quota is not None or cap is not None,
        fits_today=fits_today,
        remaining=remaining,
        per_day=per_day,
        days=days,
        cap=cap,
        balance_ok=balance_ok,
        available=available,
        cost=cost,
        stale=_stale(snapshot, settings, now) if account.kind != "smtp" else False,
    )
    return Forecast(
        recipients=recipients,
        price_per_mail=price,
        estimated_cost=cost,
        remaining_today=remaining,
        daily_quota=daily_quota,
        per_day=per_day,
        trigger_share=share,
        cap=cap[1] if cap else None,
        days_needed=days,
        fits_today=fits_today,
        available_balance=available,
        balance_ok=balance_ok,
        synced_at=snapshot.fetched_at if snapshot else None,
        plan=plan,
        messages=tuple(messages),
    )


def _daily_quota(account: ProviderAccount, snapshot: AccountSnapshot | None) -> int | None:
    if snapshot is not None and snapshot.daily_quota is not None:
        return int(snapshot.daily_quota)
    if account.kind == "smtp" and account.daily_limit is not None:
        return int(account.daily_limit)
    return None


def _batch_remaining(
    session: Session, account: ProviderAccount, day: dt.date, per_day: int, snapshot: AccountSnapshot | None
) -> int:
    """Today's room on the batch ledger; before the day's first sync, from the latest snapshot."""
    row = _ledger(session, account.id, "batch", "", day)
    if row is not None:
        return max(0, row.limit - row.reserved - row.committed)
    if (
        snapshot is not None
        and snapshot.used_today is not None
        and quota.provider_day(snapshot.fetched_at) == day
    ):
        return max(0, per_day - int(snapshot.used_today))
    return per_day  # a new provider day: nothing used yet


def _cap_remaining(session: Session, account_id: int, day: dt.date, cap: tuple[str, int]) -> int:
    owner, limit = cap
    row = _ledger(session, account_id, "batch", owner, day)
    if row is None:
        return limit
    return max(0, min(limit, row.limit) - row.reserved - row.committed)


def _ledger(session: Session, account_id: int, channel: str, owner: str, day: dt.date):
    return session.execute(
        select(QuotaLedger.limit, QuotaLedger.reserved, QuotaLedger.committed).where(
            QuotaLedger.account_id == account_id,
            QuotaLedger.channel == channel,
            QuotaLedger.owner == owner,
            QuotaLedger.day == day,
        )
    ).one_or_none()


def _available(snapshot: AccountSnapshot | None) -> Decimal | None:
    if snapshot is None:
        return None
    value = snapshot.available_balance if snapshot.available_balance is not None else snapshot.balance
    return None if value is None else Decimal(str(value))


def _spread(
    recipients: int, remaining: int | None, per_day: int | None
) -> tuple[int | None, tuple[int, ...]]:
    """Days needed (today counts when it has room) and mails per day, today first."""
    if recipients == 0:
        return 0, ()
    if remaining is None or per_day is None:
        return None, ()
    today = min(recipients, remaining)
    rest = recipients - today
    if rest and per_day <= 0:
        return None, (today,) if today else ()
    # Today counts as a calendar day even when it has no room left.
    days = 1 + (math.ceil(rest / per_day) if rest else 0)
    plan = [today]
    while rest and len(plan) < PLAN_DAYS:
        step = min(rest, per_day)
        plan.append(step)
        rest -= step
    return days, tuple(plan)


def _stale(snapshot: AccountSnapshot | None, settings: Settings, now: dt.datetime) -> bool:
    return snapshot is None or now - snapshot.fetched_at > dt.timedelta(minutes=settings.quota_stale_minutes)


def _messages(
    *,
    recipients: int,
    known: bool,
    fits_today: bool,
    remaining: int | None,
    per_day: int | None,
    days: int | None,
    cap: tuple[str, int] | None,
    balance_ok: bool,
    available: Decimal | None,
    cost: Decimal,
    stale: bool,
) -> list[str]:
    out: list[str] = []
    if not known:
        out.append(_("Balance and quota have not been synced yet; refresh them to see the forecast."))
        return out
    if stale:
        out.append(_("The quota figures are not recent; refresh them for an exact forecast."))
    if recipients == 0:
        return out
    if fits_today:
        out.append(_("Fits into today's remaining quota."))
    elif days is None:
        out.append(_("No daily quota is left for campaigns; this campaign cannot be sent."))
    else:
        out.append(
            _(
                "Needs %(days)s days at %(per_day)s mails a day (%(today)s left today). "
                "Let the campaign spread over days, or it pauses when today's quota is used up "
                "and resumes each day at 00:00 (Beijing time).",
                days=format_number(days),
                per_day=format_number(per_day),
                today=format_number(remaining or 0),
            )
        )
    if cap is not None and per_day is not None and per_day == cap[1]:
        out.append(_("Your daily cap of %(cap)s mails limits this campaign.", cap=format_number(cap[1])))
    if not balance_ok and available is not None:
        out.append(
            _(
                "The available balance (%(available)s) does not cover the estimated cost (%(cost)s).",
                available=format_money(available),
                cost=format_money(cost),
            )
        )
    return out


__all__ = ["Forecast", "forecast"]
