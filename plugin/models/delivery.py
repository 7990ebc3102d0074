"""Quota ledger and account snapshots, the suppression list and the event log."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Date, ForeignKey, Numeric, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, BigId, Timestamped, UTCDateTime, WorkspaceScoped, utcnow


class AccountSnapshot(WorkspaceScoped, Base):
    """What the provider said about balance and quota at one sync."""

    __tablename__ = "marketing_account_snapshots"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("marketing_provider_accounts.id", ondelete="CASCADE"), index=True
    )
    balance: Mapped[float | None] = mapped_column(Numeric(14, 4))
    available_balance: Mapped[float | None] = mapped_column(Numeric(14, 4))
    daily_quota: Mapped[int | None]
    used_today: Mapped[int | None]
    reputation: Mapped[float | None]
    fetched_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class QuotaLedger(WorkspaceScoped, Base):
    """Per account, channel and provider day: the limit and what is reserved and committed."""

    __tablename__ = "marketing_quota_ledger"
    __table_args__ = (UniqueConstraint("account_id", "channel", "owner", "day"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("marketing_provider_accounts.id", ondelete="CASCADE"))
    #: ``batch`` or ``trigger``.
    channel: Mapped[str] = mapped_column(String(16))
    #: ``""`` for the account's own ledger; ``user:<id>`` or ``team:<name>`` for an allocation cap.
    owner: Mapped[str] = mapped_column(String(130), default="")
    day: Mapped[dt.date] = mapped_column(Date)
    limit: Mapped[int] = mapped_column(default=0)
    reserved: Mapped[int] = mapped_column(default=0)
    committed: Mapped[int] = mapped_column(default=0)


class QuotaReservation(Base):
    __tablename__ = "marketing_quota_reservations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ledger_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("marketing_quota_ledger.id", ondelete="CASCADE"), index=True
    )
    amount: Mapped[int]
    #: held, committed, released, expired
    status: Mapped[str] = mapped_column(String(16), default="held")
    lease_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    batch_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class QuotaAllocation(WorkspaceScoped, Timestamped, Base):
    """How an admin divides the daily quota: a trigger-mail share, and caps per user or team."""

    __tablename__ = "marketing_quota_allocations"
    __table_args__ = (UniqueConstraint("workspace_id", "scope", "subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: ``trigger`` (share kept for trigger mail), ``user`` or ``team`` (daily cap).
    scope: Mapped[str] = mapped_column(String(16))
    #: The user id or team name the cap applies to (``""`` for the trigger share).
    subject: Mapped[str] = mapped_column(String(120), default="")
    #: Percent of the daily quota (trigger share).
    percent: Mapped[float | None]
    #: Mails per provider day (caps), or an absolute trigger share.
    daily_limit: Mapped[int | None]


class Suppression(WorkspaceScoped, Timestamped, Base):
    """Addresses never to mail again in this workspace, with why and where from."""

    __tablename__ = "marketing_suppressions"
    __table_args__ = (UniqueConstraint("workspace_id", "email"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    #: unsubscribed, hard_bounce, complaint, invalid, manual, soft_bounce
    reason: Mapped[str] = mapped_column(String(24))
    #: where it came from: ``webhook``, ``link``, ``import``, ``admin:<user>``, ...
    source: Mapped[str] = mapped_column(String(120), default="")
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("marketing_campaigns.id", ondelete="SET NULL"))


class Event(WorkspaceScoped, Base):
    """Every delivery and engagement fact, stored once (``dedupe_key`` is unique)."""

    __tablename__ = "marketing_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int | None] = mapped_column(index=True)
    recipient_id: Mapped[int | None] = mapped_column(BigId, index=True)
    #: request, deliver, open, click, unsubscribe, soft_bounce, invalid, report_spam, reply, ...
    type: Mapped[str] = mapped_column(String(24))
    dedupe_key: Mapped[str] = mapped_column(String(128), unique=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


__all__ = [
    "AccountSnapshot",
    "Event",
    "QuotaAllocation",
    "QuotaLedger",
    "QuotaReservation",
    "Suppression",
]
