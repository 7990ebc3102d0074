"""Templates, campaigns, their frozen recipients and send batches."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import NEVER_REUSED_IDS, Base, BigId, Timestamped, UTCDateTime, WorkspaceScoped, utcnow


class Template(WorkspaceScoped, Timestamped, Base):
    __tablename__ = "marketing_templates"
    __table_args__ = (NEVER_REUSED_IDS,)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(500), default="")
    html: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str | None] = mapped_column(Text)
    #: SendCloud review state: ``not_submitted``, ``pending``, ``approved``, ``rejected``.
    review_state: Mapped[str] = mapped_column(String(16), default="not_submitted")
    provider_template_name: Mapped[str | None] = mapped_column(String(200))
    #: Why SendCloud rejected the template, or what it said when it was submitted.
    review_note: Mapped[str | None] = mapped_column(Text)
    review_submitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: Variable names the template uses (checked when saving), e.g. ``["name", "company"]``.
    variables: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: ``manual``, ``file:<name>`` or ``url:<address>``: where the HTML came from.
    source: Mapped[str] = mapped_column(String(500), default="manual")
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
    #: The host user id of the creator (quota caps per user/team are counted against it).
    owner_id: Mapped[str | None] = mapped_column(String(120), index=True)
    #: Team of the creator when the host has teams (caps per team).
    team: Mapped[str | None] = mapped_column(String(120))
    #: Let a campaign larger than today's quota continue on the following days.
    spread_over_days: Mapped[bool] = mapped_column(default=True)
    approved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: When the audience was frozen into campaign_recipients (``None`` = not yet).
    frozen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: Counts computed when freezing: audience, excluded, suppressed, invalid, final.
    audience_counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Next batch sequence number to claim (batches are numbered 1, 2, ... per campaign).
    next_seq: Mapped[int] = mapped_column(default=1)
    #: PostgreSQL's SendCloud claims (``runner._claim_range``): recipient ids up to ``claim_cursor``
    #: are claimed; ``claim_from`` is where the last claim started (written by the same UPDATE,
    #: so its RETURNING names both ends of the range it took).
    claim_from: Mapped[int] = mapped_column(BigId, default=0, server_default="0")
    claim_cursor: Mapped[int] = mapped_column(BigId, default=0, server_default="0")
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    #: Earliest time the runner may try again (backoff after provider trouble, quota day).
    retry_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    #: Recipients that may have received the mail twice (SMTP mail in flight at a crash).
    possible_duplicates: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class CampaignRecipient(Base):
    """One frozen recipient of a campaign: one row per normalized email."""

    __tablename__ = "marketing_campaign_recipients"
    # A freeze writes hundreds of thousands of rows in one statement, and every index and foreign
    # key is paid per row (bench/audience.py): batch and provider ids are indexed only once set
    # (partial indexes; lookups by ``= value`` still use them), and neither ``workspace_id`` nor
    # ``campaign_id`` has a foreign key (PostgreSQL checks one per inserted row, a third of a
    # freeze): only the freeze writes rows, for its existing campaign, and deleting a campaign
    # deletes its recipients (``campaigns.service.delete_draft``).
    __table_args__ = (
        UniqueConstraint("campaign_id", "email"),
        Index("ix_marketing_campaign_recipients_claim", "campaign_id", "status", "id"),
        Index(
            "ix_marketing_campaign_recipients_batch_id",
            "batch_id",
            postgresql_where=text("batch_id IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL"),
        ),
        Index(
            "ix_marketing_campaign_recipients_provider_message_id",
            "provider_message_id",
            postgresql_where=text("provider_message_id IS NOT NULL"),
            sqlite_where=text("provider_message_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workspace_id: Mapped[int]
    campaign_id: Mapped[int]
    contact_id: Mapped[int | None] = mapped_column(BigId)
    email: Mapped[str] = mapped_column(String(320))
    template_id: Mapped[int | None]
    sender_id: Mapped[int | None]
    #: pending, sending, accepted, delivered, bounced, invalid, failed, skipped, unknown
    status: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(String(255))
    batch_id: Mapped[int | None] = mapped_column(BigId)
    #: Set when the mail may have gone out twice (SMTP crash between DATA and our record).
    possible_duplicate: Mapped[bool] = mapped_column(default=False)
    #: Send attempts for this recipient (temporary per-recipient refusals are retried a few times).
    attempts: Mapped[int] = mapped_column(default=0)
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    opened_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: First open by a privacy proxy or link scanner (counted apart from human opens).
    machine_opened_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    soft_bounces: Mapped[int] = mapped_column(default=0)
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
    #: One batch shares one content: its template and sender are fixed when claimed.
    template_id: Mapped[int | None]
    sender_id: Mapped[int | None]
    account_id: Mapped[int | None]
    #: Quota reservations held for this batch (account ledger, and the owner's cap ledger).
    reservation_id: Mapped[int | None] = mapped_column(BigId)
    cap_reservation_id: Mapped[int | None] = mapped_column(BigId)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    #: claimed, sending, sent, failed, unknown
    status: Mapped[str] = mapped_column(String(16), default="claimed")
    size: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: A batch claimed as a range (``runner._claim_range``): until its answer is recorded, its
    #: members are the campaign's pending recipients of its content with ``range_after < id <=
    #: range_upto`` and no batch.  Cleared when a take-over or a failure marks them with the
    #: batch's id (``runner._mark_range``); a recorded batch keeps it (its members name it).
    range_after: Mapped[int | None] = mapped_column(BigId)
    range_upto: Mapped[int | None] = mapped_column(BigId)


class TriggerMail(WorkspaceScoped, Base):
    """One transactional mail the host asked for (order confirmation, code, quote), and its fate."""

    __tablename__ = "marketing_trigger_mails"
    __table_args__ = (UniqueConstraint("workspace_id", "idempotency_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: The client's key: the same key twice means the same mail, sent once.
    idempotency_key: Mapped[str] = mapped_column(String(128))
    template_id: Mapped[int | None] = mapped_column(ForeignKey("marketing_templates.id", ondelete="SET NULL"))
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("marketing_provider_accounts.id", ondelete="SET NULL")
    )
    to_email: Mapped[str] = mapped_column(String(320), index=True)
    subject: Mapped[str] = mapped_column(String(500), default="")
    variables: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: queued, sending, sent, failed, rejected
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
