"""Contacts, tags and saved views of the default directory (hosts with their own tables map them
through a ``ContactDirectory`` subclass instead)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import NEVER_REUSED_IDS, Base, BigId, Timestamped, UTCDateTime, WorkspaceScoped, utcnow


class Contact(WorkspaceScoped, Base):
    __tablename__ = "marketing_contacts"
    __table_args__ = (
        UniqueConstraint("workspace_id", "email"),
        Index("ix_marketing_contacts_ws_domain", "workspace_id", "email_domain"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: Normalized address (domain lower-cased, local part lower-cased too: mailbox providers
    #: treat it case-insensitively in practice and duplicates by case are a common import bug).
    email: Mapped[str] = mapped_column(String(320))
    #: Part after "@", kept as a column so "domain in (...)" views use an index.
    email_domain: Mapped[str] = mapped_column(String(255))
    #: Part before "@" (the "prefix" of the product documents: noreply, support, ...).
    email_local: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    company: Mapped[str | None] = mapped_column(String(200))
    country: Mapped[str | None] = mapped_column(String(100))
    #: The host user who owns the contact (sales rep).
    owner_id: Mapped[str | None] = mapped_column(String(120), index=True)
    custom: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Tag(WorkspaceScoped, Timestamped, Base):
    __tablename__ = "marketing_tags"
    __table_args__ = (UniqueConstraint("workspace_id", "name"), NEVER_REUSED_IDS)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    color: Mapped[str] = mapped_column(String(16), default="#5b8def")


class ContactTag(Base):
    __tablename__ = "marketing_contact_tags"
    # Tag first for "who carries these tags"; the contact id makes it answer that from the index
    # alone (audience freezes and counts, migration 0006).
    __table_args__ = (Index("ix_marketing_contact_tags_tag_id_contact_id", "tag_id", "contact_id"),)

    contact_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("marketing_contacts.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(ForeignKey("marketing_tags.id", ondelete="CASCADE"), primary_key=True)


class SavedView(WorkspaceScoped, Timestamped, Base):
    """A named filter over contacts; ``rules`` is the JSON tree that ``filters.py`` compiles."""

    __tablename__ = "marketing_views"
    __table_args__ = (UniqueConstraint("workspace_id", "name"), NEVER_REUSED_IDS)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    rules: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[str | None] = mapped_column(String(120))


class CustomField(WorkspaceScoped, Timestamped, Base):
    """A custom contact field: its key in ``Contact.custom``, label and kind."""

    __tablename__ = "marketing_custom_fields"
    __table_args__ = (UniqueConstraint("workspace_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(100))
    #: ``text`` or ``date`` (ISO yyyy-mm-dd strings, so date operators compare them in order).
    kind: Mapped[str] = mapped_column(String(16), default="text")


class ImportJob(WorkspaceScoped, Timestamped, Base):
    """One contact import and its report (rows imported, duplicates, per-line errors)."""

    __tablename__ = "marketing_import_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(120))
    filename: Mapped[str] = mapped_column(String(255))
    encoding: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="done")
    total_rows: Mapped[int] = mapped_column(default=0)
    imported: Mapped[int] = mapped_column(default=0)
    updated: Mapped[int] = mapped_column(default=0)
    duplicates: Mapped[int] = mapped_column(default=0)
    #: ``[{"line": 12, "email": "...", "reason": "..."}]``
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    tag_id: Mapped[int | None] = mapped_column(ForeignKey("marketing_tags.id", ondelete="SET NULL"))
