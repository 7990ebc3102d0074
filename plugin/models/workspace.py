"""Workspaces (tenants), per-user API tokens and the small records the plugin keeps per user."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, BigId, Timestamped, UTCDateTime, WorkspaceScoped, utcnow


class Workspace(Timestamped, Base):
    """One organization of the host CRM; every plugin record hangs off one."""

    __tablename__ = "marketing_workspaces"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: The host's identifier for the organization (whatever its workspace hook returns).
    key: Mapped[str] = mapped_column(String(120), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Shanghai")


class ApiToken(WorkspaceScoped, Timestamped, Base):
    """A per-user bearer token for machine access to the JSON API; only its hash is stored."""

    __tablename__ = "marketing_api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: The host user's id, as Flask-Login's ``get_id()`` gives it.
    user_id: Mapped[str] = mapped_column(String(120), index=True)
    name: Mapped[str] = mapped_column(String(120))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: First characters of the token, shown so users can tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Lease(Base):
    """A named lease held by one process (scheduler singleton, worker claims)."""

    __tablename__ = "marketing_leases"

    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class UserPreference(WorkspaceScoped, Base):
    """Language and time zone a user picked inside the plugin."""

    __tablename__ = "marketing_user_preferences"
    __table_args__ = (UniqueConstraint("workspace_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(String(120))
    locale: Mapped[str | None] = mapped_column(String(16))
    timezone: Mapped[str | None] = mapped_column(String(64))


__all__ = ["ApiToken", "Lease", "UserPreference", "Workspace"]
