"""Provider accounts, sending domains and senders: what the setup wizard binds.

Secrets are stored only as Fernet tokens (columns ending in ``_encrypted``); ``plugin.crypto``
turns them back into text for the one call that needs them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import NEVER_REUSED_IDS, Base, Timestamped, UTCDateTime, WorkspaceScoped


class ProviderAccount(WorkspaceScoped, Timestamped, Base):
    """A SendCloud account (batch and trigger API_USERs) or an SMTP mailbox."""

    __tablename__ = "marketing_provider_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: ``sendcloud`` or ``smtp``.
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(16), default="active")
    api_user: Mapped[str | None] = mapped_column(String(120))
    api_key_encrypted: Mapped[str | None] = mapped_column(Text)
    #: The batch-type API_USER bound to the sending domain, and its own key.
    batch_api_user: Mapped[str | None] = mapped_column(String(120))
    batch_api_key_encrypted: Mapped[str | None] = mapped_column(Text)
    #: The trigger-type API_USER (transactional mail), and its own key.
    trigger_api_user: Mapped[str | None] = mapped_column(String(120))
    trigger_api_key_encrypted: Mapped[str | None] = mapped_column(Text)
    webhook_app_key_encrypted: Mapped[str | None] = mapped_column(Text)
    #: Where the provider posts events for this account (contains the workspace's signed token).
    webhook_url: Mapped[str | None] = mapped_column(String(500))
    webhook_registered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: Last time a signed event was accepted (written at most once a minute).
    webhook_ok_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: Since when SendCloud's posts are refused for a wrong or missing APP KEY (cleared by the
    #: next accepted one), the last such refusal, and why (``signature`` or ``no_key``).
    webhook_refused_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    webhook_refused_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    webhook_refused_reason: Mapped[str | None] = mapped_column(String(16))
    smtp_host: Mapped[str | None] = mapped_column(String(255))
    smtp_port: Mapped[int | None]
    #: ``ssl``, ``starttls`` or ``none``.
    smtp_security: Mapped[str | None] = mapped_column(String(16))
    smtp_username: Mapped[str | None] = mapped_column(String(255))
    smtp_password_encrypted: Mapped[str | None] = mapped_column(Text)
    from_address: Mapped[str | None] = mapped_column(String(320))
    daily_limit: Mapped[int | None]
    send_rate: Mapped[float | None]
    dkim_selector: Mapped[str | None] = mapped_column(String(63))
    dkim_private_key_encrypted: Mapped[str | None] = mapped_column(Text)


class SendingDomain(WorkspaceScoped, Timestamped, Base):
    __tablename__ = "marketing_sending_domains"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("marketing_provider_accounts.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(253))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    #: Records the provider asks for: ``[{"type", "host", "value", "purpose"}]``.
    dns_records: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: Last check result per record, as ``dns_check`` returns it.
    last_check: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    checked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Sender(WorkspaceScoped, Timestamped, Base):
    __tablename__ = "marketing_senders"
    __table_args__ = (UniqueConstraint("workspace_id", "from_address"), NEVER_REUSED_IDS)

    id: Mapped[int] = mapped_column(primary_key=True)
    domain_id: Mapped[int | None] = mapped_column(
        ForeignKey("marketing_sending_domains.id", ondelete="SET NULL")
    )
    from_address: Mapped[str] = mapped_column(String(320))
    from_name: Mapped[str] = mapped_column(String(200), default="")
    reply_to: Mapped[str | None] = mapped_column(String(320))
    reply_to_verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    reply_to_verification_sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    company_name: Mapped[str] = mapped_column(String(200), default="")
    postal_address: Mapped[str] = mapped_column(Text, default="")
    is_default: Mapped[bool] = mapped_column(default=False)


class SetupState(WorkspaceScoped, Timestamped, Base):
    """Where a workspace's onboarding wizard stands, so an admin can leave and come back."""

    __tablename__ = "marketing_setup_states"
    __table_args__ = (UniqueConstraint("workspace_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: domain, credentials, dns, api_users, senders, done
    step: Mapped[str] = mapped_column(String(24), default="domain")
    domain_name: Mapped[str | None] = mapped_column(String(253))
    #: When the admin confirmed that the domain binding cannot be changed later.
    domain_confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("marketing_provider_accounts.id", ondelete="SET NULL")
    )
    domain_id: Mapped[int | None] = mapped_column(
        ForeignKey("marketing_sending_domains.id", ondelete="SET NULL")
    )
    #: Warnings and facts gathered on the way (apex domain, existing MX, account type, ...).
    notes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
