"""Engagement records: tracked links, aggregated counters, replies and the reply mailbox."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, BigId, Timestamped, UTCDateTime, WorkspaceScoped, utcnow


class TrackedLink(WorkspaceScoped, Base):
    """A link of a campaign's content; click tokens carry its id, so the target comes from here."""

    __tablename__ = "marketing_tracked_links"
    __table_args__ = (UniqueConstraint("campaign_id", "url_hash"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int | None] = mapped_column(
        ForeignKey("marketing_campaigns.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(Text)
    #: SHA-256 of the URL (unique per campaign without indexing long text).
    url_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class StatCounter(WorkspaceScoped, Base):
    """One aggregated count: events are added here as they arrive, so stats pages never scan events.

    ``dimension``/``key`` split a metric by template, sender, link or recipient domain
    (``all``/``""`` is the campaign total); ``bucket`` is the hour (UTC) it happened in.
    ``campaign_id`` 0 holds mail outside campaigns (trigger mail) for the account-level table, so
    the workspace is part of a cell's key.
    """

    __tablename__ = "marketing_stat_counters"
    __table_args__ = (
        UniqueConstraint(
            "workspace_id",
            "campaign_id",
            "metric",
            "dimension",
            "key",
            "bucket",
            name="uq_marketing_stat_counters_cell",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(index=True)
    #: submitted, sent, delivered, opened, unique_opened, machine_opened, clicked, unique_clicked,
    #: replied, bounced, soft_bounced, invalid, unsubscribed, complained
    metric: Mapped[str] = mapped_column(String(24))
    dimension: Mapped[str] = mapped_column(String(16), default="all")
    key: Mapped[str] = mapped_column(String(255), default="")
    bucket: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    count: Mapped[int] = mapped_column(default=0)


class Reply(WorkspaceScoped, Base):
    """A reply to a campaign mail, from the IMAP mailbox or SendCloud's inbound route."""

    __tablename__ = "marketing_replies"
    __table_args__ = (UniqueConstraint("workspace_id", "message_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int | None] = mapped_column(index=True)
    recipient_id: Mapped[int | None] = mapped_column(BigId, index=True)
    contact_id: Mapped[int | None] = mapped_column(BigId, index=True)
    from_email: Mapped[str] = mapped_column(String(320), index=True)
    subject: Mapped[str] = mapped_column(String(998), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str] = mapped_column(String(500))
    in_reply_to: Mapped[str | None] = mapped_column(String(500))
    #: ``imap`` or ``route``.
    source: Mapped[str] = mapped_column(String(16))
    #: ``headers`` (In-Reply-To/References) or ``address`` (sender within the window), or ``none``.
    matched_by: Mapped[str] = mapped_column(String(16), default="none")
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ReplyMailbox(WorkspaceScoped, Timestamped, Base):
    """The reply-to mailbox polled over IMAP, and what to do with a reply."""

    __tablename__ = "marketing_reply_mailboxes"
    __table_args__ = (UniqueConstraint("workspace_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    imap_host: Mapped[str] = mapped_column(String(255))
    imap_port: Mapped[int] = mapped_column(default=993)
    #: ``ssl``, ``starttls`` or ``none``.
    security: Mapped[str] = mapped_column(String(16), default="ssl")
    username: Mapped[str] = mapped_column(String(255))
    password_encrypted: Mapped[str] = mapped_column(Text)
    folder: Mapped[str] = mapped_column(String(255), default="INBOX")
    uidvalidity: Mapped[int | None] = mapped_column(BigId)
    last_uid: Mapped[int] = mapped_column(BigId, default=0)
    #: CRM tag added to a contact who replies (empty: none).
    tag_name: Mapped[str] = mapped_column(String(100), default="")
    notify_owner: Mapped[bool] = mapped_column(default=True)
    #: Days after a send within which a reply from the same address counts for that campaign.
    match_window_days: Mapped[int] = mapped_column(default=14)
    last_polled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)


__all__ = ["Reply", "ReplyMailbox", "StatCounter", "TrackedLink"]
