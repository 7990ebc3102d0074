"""The suppression list: idempotent adds on both databases, normalized spelling, workspace scope."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from plugin import suppression
from plugin.errors import InvalidInput
from plugin.models import Suppression


def test_add_is_idempotent_and_keeps_the_first_reason(session, workspace):
    assert suppression.add(
        session, workspace.id, "Li.Wei@QQ.com ", "hard_bounce", source="webhook", campaign_id=None
    )
    assert not suppression.add(session, workspace.id, "li.wei@qq.com", "unsubscribed", source="link")
    session.commit()
    rows = session.scalars(select(Suppression).where(Suppression.workspace_id == workspace.id)).all()
    assert [(r.email, r.reason, r.source) for r in rows] == [("li.wei@qq.com", "hard_bounce", "webhook")]
    assert rows[0].created_at is not None


def test_lookups_ignore_case_and_blanks(session, workspace):
    suppression.add(session, workspace.id, "a@example.com", "complaint", source="webhook")
    suppression.add(session, workspace.id, "B@example.com", "manual", source="admin:1")
    assert suppression.is_suppressed(session, workspace.id, " A@Example.COM")
    assert not suppression.is_suppressed(session, workspace.id, "c@example.com")
    asked = ["A@example.com", "b@example.com", "c@example.com", "a@example.com"]
    assert suppression.suppressed_among(session, workspace.id, asked) == {
        "A@example.com",
        "a@example.com",
        "b@example.com",
    }
    assert suppression.suppressed_among(session, workspace.id, []) == set()


def test_suppressed_among_many_addresses(session, workspace):
    for i in range(0, 1200, 3):
        suppression.add(session, workspace.id, f"u{i}@example.com", "invalid", source="import")
    asked = [f"u{i}@example.com" for i in range(1200)]
    found = suppression.suppressed_among(session, workspace.id, asked)
    assert found == {f"u{i}@example.com" for i in range(0, 1200, 3)}


def test_remove(session, workspace):
    suppression.add(session, workspace.id, "x@example.com", "manual", source="admin:1")
    assert suppression.remove(session, workspace.id, "X@example.com")
    assert not suppression.remove(session, workspace.id, "x@example.com")
    assert not suppression.is_suppressed(session, workspace.id, "x@example.com")
    assert suppression.add(session, workspace.id, "x@example.com", "unsubscribed", source="link")


def test_workspaces_are_separate(session, workspace, other_workspace):
    suppression.add(session, workspace.id, "shared@example.com", "unsubscribed", source="link")
    assert suppression.add(session, other_workspace.id, "shared@example.com", "manual", source="admin:2")
    assert not suppression.remove(session, other_workspace.id, "nobody@example.com")
    assert suppression.remove(session, other_workspace.id, "shared@example.com")
    assert suppression.is_suppressed(session, workspace.id, "shared@example.com")
    assert not suppression.is_suppressed(session, other_workspace.id, "shared@example.com")
    total = session.scalar(select(func.count()).select_from(Suppression))
    assert total == 1


def test_invalid_addresses_can_be_suppressed(session, workspace):
    assert suppression.add(session, workspace.id, "not an address", "invalid", source="import")
    assert suppression.is_suppressed(session, workspace.id, "NOT AN ADDRESS")


@pytest.mark.parametrize("reason", suppression.REASONS)
def test_every_reason_is_accepted(session, workspace, reason):
    assert suppression.add(session, workspace.id, f"{reason}@example.com", reason, source="test")


def test_unknown_reason_and_empty_address_are_refused(session, workspace):
    with pytest.raises(InvalidInput) as excinfo:
        suppression.add(session, workspace.id, "a@example.com", "bored", source="test")
    assert excinfo.value.field == "reason"
    with pytest.raises(InvalidInput) as excinfo:
        suppression.add(session, workspace.id, "  ", "manual", source="test")
    assert excinfo.value.field == "email"
