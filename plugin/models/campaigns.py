"""Templates, campaigns, their frozen recipients and send batches."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, BigId, Timestamped, UTCDateTime, WorkspaceScoped, utcnow


class Template(WorkspaceScoped, Timestamped, Base):
    __tablename__ = "marketing_templates"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(500), default="")
    html: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str | None] = mapped_column(Text)
    #: SendCloud review state: ``not_submitted``, ``pending``, ``approved``, ``rejected``.
    review_state: Mapped[str] = mapped_column(String(16), default="not_submitted")
    provider_template_name: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str | None] = mapped_column(String(120))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Campaign(WorkspaceScoped, Timestamped, Base):
    __tablename__ = "marketing_campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    #: draft, awaiting_approval, scheduled, running, paused, completed, cancelled, failed, missed
    status: Mapped[str] = mapped_column(String(24), default="draft", index=True)
    pause_reason: Mapped[str | None] = mapped_column(String(40))
    pause_detail: Mapped[str | None] = mapped_column(Text)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("marketing_provider_accounts.id", ondelete="SET NULL")
    )
    #: ``{"include_tags": [..], "include_views": [..], "exclude_tags": [..], "exclude_views": [..]}``
    audience: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    skip_count: Mapped[int] = mapped_column(default=0)
    max_count: Mapped[int | None]
    template_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    #: ``random`` or ``balanced``.
    template_assignment: Mapped[str] = mapped_column(String(16), default="balanced")
    sender_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    from_name: Mapped[str | None] = mapped_column(String(200))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    tracking: Mapped[bool] = mapped_column(default=True)
    label: Mapped[str | None] = mapped_column(String(100))
    send_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    send_rate: Mapped[float | None]
    created_by: Mapped[str | None] = mapped_column(String(120))
    approved_by: Mapped[str | None] = mapped_column(String(120))
    total: Mapped[int] = mapped_column(default=0)
    sent: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class CampaignRecipient(Base):
    """One frozen recipient of a campaign: one row per normalized email."""

    __tablename__ = "marketing_campaign_recipients"
    __table_args__ = (
        UniqueConstraint("campaign_id", "email"),
        Index("ix_marketing_campaign_recipients_claim", "campaign_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("marketing_workspaces.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("marketing_campaigns.id", ondelete="CASCADE"))
    contact_id: Mapped[int | None] = mapped_column(BigId)
    email: Mapped[str] = mapped_column(String(320))
    template_id: Mapped[int | None]
    sender_id: Mapped[int | None]
    #: pending, sending, accepted, delivered, bounced, invalid, failed, skipped, unknown
    status: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(String(255))
    batch_id: Mapped[int | None] = mapped_column(BigId, index=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(255), index=True)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    opened_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    clicked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    replied_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    complained_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class SendBatch(Base):
    """A claimed batch; its members never change, its key is the provider's idempotency key."""

    __tablename__ = "marketing_send_batches"
    __table_args__ = (UniqueConstraint("campaign_id", "seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("marketing_workspaces.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("marketing_campaigns.id", ondelete="CASCADE"))
    seq: Mapped[int]
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    #: claimed, sending, sent, failed, unknown
    status: Mapped[str] = mapped_column(String(16), default="claimed")
    size: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
