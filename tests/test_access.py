"""Roles, permissions, workspaces and API tokens (plugin/access.py), and the redirect guard."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from plugin.access import (
    PERMISSIONS,
    ROLES,
    default_role_loader,
    ensure_workspace,
    find_token,
    hash_token,
    issue_token,
)
from plugin.blueprints.security import safe_next_url
from plugin.models import ApiToken, Workspace, utcnow

API = "/marketing/api/v1"


def test_role_matrix():
    """What each role may do; a change here is a product decision, so it is spelled out."""
    allowed = {role: {p for p, roles in PERMISSIONS.items() if role in roles} for role in ROLES}
    assert allowed["sales"] == {"view", "contacts.read", "tags.assign"}
    assert allowed["marketer"] == set(PERMISSIONS) - {"settings"}
    assert allowed["admin"] == set(PERMISSIONS)


@pytest.mark.parametrize(
    ("user", "role"),
    [
        (SimpleNamespace(role="admin"), "admin"),
        (SimpleNamespace(role="sales"), "sales"),
        (SimpleNamespace(role="root"), None),
        (SimpleNamespace(role=None), None),
        (SimpleNamespace(), None),
        (SimpleNamespace(role="sales", marketing_role="marketer"), "marketer"),
        (SimpleNamespace(role="admin", marketing_role="superuser"), None),
    ],
)
def test_default_role_loader(user, role):
    assert default_role_loader(user) == role


def test_ensure_workspace_creates_once(session):
    first = ensure_workspace(session, "acme")
    second = ensure_workspace(session, "acme")
    session.commit()
    assert first.id == second.id
    assert session.scalar(select(func.count()).select_from(Workspace).where(Workspace.key == "acme")) == 1


def test_tokens_are_stored_as_hashes(session, workspace):
    token = issue_token(session, workspace_id=workspace.id, user_id="7", name="sync")
    session.commit()
    row = session.scalar(select(ApiToken))
    assert token.startswith("mkt_")
    assert len(token) > 40
    assert row.token_hash == hash_token(token)
    assert token not in (row.token_hash, row.prefix)
    assert token.startswith(row.prefix)
    assert find_token(session, token).id == row.id
    assert find_token(session, token + "x") is None
    assert find_token(session, "") is None
    row.revoked_at = utcnow()
    session.commit()
    assert find_token(session, token) is None


def test_two_tokens_differ(session, workspace):
    tokens = {issue_token(session, workspace_id=workspace.id, user_id="1", name="t") for _ in range(5)}
    assert len(tokens) == 5


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/marketing/tokens", True),
        ("/marketing/?page=2", True),
        ("//evil.example", False),
        ("https://evil.example", False),
        ("http:/evil.example", False),
        ("/\\evil.example", False),
        ("\\\\evil.example", False),
        ("/\t/evil.example", False),
        ("/\n/evil.example", False),
        (" /marketing", False),
        ("javascript:alert(1)", False),
        ("evil.example", False),
        ("", False),
        (None, False),
    ],
)
def test_safe_next_url(target, safe):
    assert safe_next_url(target, "/fallback") == (target if safe else "/fallback")


def test_me_reports_role_and_workspace(app, api_token):
    body = (
        app.test_client()
        .get(f"{API}/me", headers={"Authorization": f"Bearer {api_token('other')}"})
        .get_json()
    )
    assert body["role"] == "admin"
    assert body["workspace"] == "acme"


def test_host_role_hook_decides(app, session, api_token):
    """A host's role loader replaces the default one: here everybody is demoted to sales."""
    extension = app.extensions["marketing"].extension
    token = api_token("admin")
    extension.role_loader(lambda user: "sales")
    try:
        client, headers = app.test_client(), {"Authorization": f"Bearer {token}"}
        assert client.get(f"{API}/me", headers=headers).get_json()["role"] == "sales"
        assert client.post(f"{API}/tags", json={"name": "x"}, headers=headers).status_code == 403
        extension.role_loader(lambda user: None)
        assert client.get(f"{API}/me", headers=headers).status_code == 403
    finally:
        extension.role_loader(default_role_loader)
