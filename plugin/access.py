"""Who may do what: roles, permissions, the current workspace and API tokens.

The host decides who a user is (Flask-Login) and which organization a request belongs to; the
plugin asks through two replaceable hooks and never trusts anything else.  Every query of a
service is scoped by the workspace id returned here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Callable
from typing import Any

from flask import g
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import PermissionDenied
from .models import ApiToken, Workspace

ROLES: tuple[str, ...] = ("admin", "marketer", "sales")

#: Which roles may perform each action.  Sales teams read campaigns and tag contacts; marketers
#: build audiences and send; admins also bind accounts and manage the suppression list.
PERMISSIONS: dict[str, frozenset[str]] = {
    "view": frozenset(ROLES),
    "contacts.read": frozenset(ROLES),
    "contacts.write": frozenset({"admin", "marketer"}),
    "contacts.import": frozenset({"admin", "marketer"}),
    "tags.assign": frozenset(ROLES),
    "tags.write": frozenset({"admin", "marketer"}),
    "views.write": frozenset({"admin", "marketer"}),
    "campaigns.write": frozenset({"admin", "marketer"}),
    #: Ask the provider for balance and quota now (the account bar's "refresh"); sales only read.
    "quota.refresh": frozenset({"admin", "marketer"}),
    "settings": frozenset({"admin"}),
}

RoleLoader = Callable[[Any], str | None]
WorkspaceLoader = Callable[[], str]


def default_role_loader(user: Any) -> str | None:
    """Reads ``user.marketing_role`` or ``user.role``; hosts with other models pass their own."""
    role = getattr(user, "marketing_role", None) or getattr(user, "role", None)
    return role if role in ROLES else None


def default_workspace_loader() -> str:
    """A single organization; multi-tenant hosts return the current organization's key."""
    return "default"


def current_role(loader: RoleLoader) -> str | None:
    if not current_user or not current_user.is_authenticated:
        return None
    return loader(current_user._get_current_object())


def require(permission: str, loader: RoleLoader) -> str:
    """Return the user's role, or raise :class:`PermissionDenied`."""
    role = current_role(loader)
    if role is None or role not in PERMISSIONS[permission]:
        raise PermissionDenied(permission)
    return role


def can(permission: str, loader: RoleLoader) -> bool:
    role = current_role(loader)
    return role is not None and role in PERMISSIONS[permission]


def ensure_workspace(session: Session, key: str) -> Workspace:
    """Get the workspace row for a host key, creating it the first time it is seen."""
    workspace = session.scalar(select(Workspace).where(Workspace.key == key))
    if workspace is None:
        workspace = Workspace(key=key, name=key)
        session.add(workspace)
        session.flush()
    return workspace


def current_workspace(session: Session, loader: WorkspaceLoader) -> Workspace:
    """The workspace of this request, resolved once per request."""
    cached = g.get("_marketing_workspace")
    if cached is not None:
        return cached
    workspace = g.get("_marketing_token_workspace")
    if workspace is None:
        workspace = ensure_workspace(session, loader())
    g._marketing_workspace = workspace
    return workspace


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, *, workspace_id: int, user_id: str, name: str) -> str:
    """Create an API token and return it; only its hash is kept, so it is shown once."""
    token = "mkt_" + secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            workspace_id=workspace_id,
            user_id=user_id,
            name=name,
            token_hash=hash_token(token),
            prefix=token[:10],
        )
    )
    session.flush()
    return token


def find_token(session: Session, token: str) -> ApiToken | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        return None
    row.last_used_at = dt.datetime.now(dt.UTC)
    return row
