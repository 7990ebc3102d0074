"""Helpers for API views: the workspace and role of the caller."""

from __future__ import annotations

from flask_login import current_user

from ...access import current_workspace, require
from ...extension import get_state


def workspace_id() -> int:
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


def allow(permission: str) -> None:
    require(permission, get_state().role_loader)


def user_id() -> str:
    return str(current_user.get_id())


def session():
    return get_state().session
