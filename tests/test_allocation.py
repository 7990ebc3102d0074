"""Allocation service: trigger share (percent or absolute), per-user/per-team caps with
validation, duplicates refused, a user's cap winning over the team's, workspaces kept apart."""

from __future__ import annotations

import pytest
from flask_babel import force_locale

from plugin import allocation
from plugin.errors import InvalidInput, NotFound
from plugin.models import Campaign


def test_no_share_means_nothing_kept_for_trigger_mail(session, workspace):
    assert allocation.get_share(session, workspace.id) is None
    assert allocation.trigger_share(session, workspace.id, 5000) == 0


@pytest.mark.parametrize(
    ("kwargs", "quota", "expected"),
    [
        ({"percent": 10}, 5000, 500),
        ({"percent": 33.3}, 1000, 333),  # rounded down: never more than the admin asked for
        ({"percent": 100}, 1000, 1000),
        ({"daily_limit": 200}, 5000, 200),
        ({"daily_limit": 9000}, 5000, 5000),  # never more than the whole quota
    ],
)
def test_trigger_share(session, workspace, kwargs, quota, expected):
    allocation.set_share(session, workspace.id, **kwargs)
    session.commit()
    assert allocation.trigger_share(session, workspace.id, quota) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"percent": -1},
        {"percent": 100.5},
        {"percent": float("nan")},
        {"daily_limit": -5},
        {},
        {"percent": 5, "daily_limit": 5},
    ],
)
def test_invalid_shares_are_refused_on_the_value_field(session, workspace, kwargs):
    with pytest.raises(InvalidInput) as err:
        allocation.set_share(session, workspace.id, **kwargs)
    assert err.value.field == "value"


def test_switching_the_share_kind_and_clearing_it(session, workspace):
    allocation.set_share(session, workspace.id, percent=20)
    allocation.set_share(session, workspace.id, daily_limit=300)
    session.commit()
    assert allocation.get_share(session, workspace.id) == allocation.Share(None, 300)
    allocation.set_share(session, workspace.id, daily_limit=0)
    session.commit()
    assert allocation.get_share(session, workspace.id) is None


def test_caps_crud_and_validation(session, workspace):
    cap = allocation.add_cap(session, workspace.id, scope="user", subject=" 42 ", daily_limit=1000)
    allocation.add_cap(session, workspace.id, scope="team", subject="East sales", daily_limit=5000)
    session.commit()
    assert cap.subject == "42"
    assert [(c.scope, c.subject, c.daily_limit) for c in allocation.list_caps(session, workspace.id)] == [
        ("user", "42", 1000),
        ("team", "East sales", 5000),
    ]
    with pytest.raises(InvalidInput) as err, force_locale("en"):
        allocation.add_cap(session, workspace.id, scope="user", subject="42", daily_limit=1)
    assert err.value.field == "subject"
    assert "already has a cap" in str(err.value)
    # A user and a team may share a name: they are different subjects.
    allocation.add_cap(session, workspace.id, scope="team", subject="42", daily_limit=1)
    for bad, field in (
        ({"scope": "org", "subject": "x", "daily_limit": 1}, "scope"),
        ({"scope": "user", "subject": "   ", "daily_limit": 1}, "subject"),
        ({"scope": "user", "subject": "x" * 121, "daily_limit": 1}, "subject"),
        ({"scope": "user", "subject": "x", "daily_limit": -1}, "daily_limit"),
        ({"scope": "user", "subject": "x", "daily_limit": 10**9}, "daily_limit"),
        ({"scope": "user", "subject": "x", "daily_limit": True}, "daily_limit"),
    ):
        with pytest.raises(InvalidInput) as err:
            allocation.add_cap(session, workspace.id, **bad)
        assert err.value.field == field

    allocation.update_cap(session, workspace.id, cap.id, scope="user", subject="42", daily_limit=0)
    session.commit()
    assert allocation.cap_for(session, workspace.id, "42", None) == ("user:42", 0)
    with pytest.raises(InvalidInput):  # renaming onto an existing subject
        allocation.update_cap(
            session, workspace.id, cap.id, scope="team", subject="East sales", daily_limit=3
        )
    session.rollback()
    allocation.remove_cap(session, workspace.id, cap.id)
    session.commit()
    assert allocation.cap_for(session, workspace.id, "42", None) is None
    with pytest.raises(NotFound):
        allocation.remove_cap(session, workspace.id, cap.id)


def test_user_cap_wins_over_team_cap(session, workspace):
    allocation.add_cap(session, workspace.id, scope="team", subject="east", daily_limit=5000)
    allocation.add_cap(session, workspace.id, scope="user", subject="7", daily_limit=300)
    session.commit()
    assert allocation.cap_for(session, workspace.id, "7", "east") == ("user:7", 300)
    assert allocation.cap_for(session, workspace.id, "8", "east") == ("team:east", 5000)
    assert allocation.cap_for(session, workspace.id, "8", "west") is None
    assert allocation.cap_for(session, workspace.id, None, None) is None


def test_caps_belong_to_their_workspace(session, workspace, other_workspace):
    cap = allocation.add_cap(session, other_workspace.id, scope="user", subject="7", daily_limit=10)
    allocation.set_share(session, other_workspace.id, percent=50)
    session.commit()
    assert allocation.cap_for(session, workspace.id, "7", None) is None
    assert allocation.trigger_share(session, workspace.id, 1000) == 0
    assert allocation.list_caps(session, workspace.id) == []
    with pytest.raises(NotFound):
        allocation.update_cap(session, workspace.id, cap.id, scope="user", subject="7", daily_limit=1)


def test_known_owners_come_from_campaigns(session, workspace, other_workspace):
    for ws, owner, team in ((workspace, "7", "east"), (workspace, "9", None), (other_workspace, "99", "x")):
        session.add(Campaign(workspace_id=ws.id, name=f"c{owner}", owner_id=owner, team=team))
    session.commit()
    assert allocation.known_owners(session, workspace.id) == (["7", "9"], ["east"])
