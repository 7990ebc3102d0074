"""events.record: stored once, effects independent of arrival order, suppression rules (hard
failures, complaints, unsubscribes, repeated soft bounces across campaigns), unmapped mail."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from sqlalchemy import func, insert, select

from plugin import counters, events, suppression
from plugin.models import Campaign, CampaignRecipient, Event, Suppression

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def _campaign(session, workspace_id: int, *, tracking: bool = False) -> Campaign:
    c = Campaign(workspace_id=workspace_id, name="events", status="running", tracking=tracking)
    session.add(c)
    session.commit()
    return c


def _recipients(session, workspace_id: int, campaign_id: int, emails: list[str]) -> list[int]:
    session.execute(
        insert(CampaignRecipient),
        [
            {
                "workspace_id": workspace_id,
                "campaign_id": campaign_id,
                "email": e,
                "status": "accepted",
                "template_id": 3,
                "sender_id": 4,
                "sent_at": T0 - dt.timedelta(hours=1),
            }
            for e in emails
        ],
    )
    session.commit()
    return list(
        session.scalars(
            select(CampaignRecipient.id)
            .where(CampaignRecipient.campaign_id == campaign_id)
            .order_by(CampaignRecipient.id)
        )
    )


def _rec(session, workspace_id, rid, type_, key, at=T0, **data):
    return events.record(
        session,
        workspace_id=workspace_id,
        type=type_,
        dedupe_key=key,
        occurred_at=at,
        recipient_id=rid,
        data=data,
    )


def test_a_repeated_event_is_stored_once_and_changes_nothing(session, workspace):
    c = _campaign(session, workspace.id)
    [rid] = _recipients(session, workspace.id, c.id, ["a@x.org"])
    assert _rec(session, workspace.id, rid, "open", "k1") is True
    for _ in range(3):
        assert _rec(session, workspace.id, rid, "open", "k1") is False
    session.commit()
    assert session.scalar(select(func.count()).select_from(Event)) == 1
    totals = counters.totals(session, c.id)
    assert (totals["opened"], totals["unique_opened"], totals["delivered"]) == (1, 1, 1)


ORDER_EVENTS = [
    ("deliver", T0),
    ("open", T0 + dt.timedelta(minutes=5)),
    ("click", T0 + dt.timedelta(minutes=6)),
    ("open", T0 + dt.timedelta(minutes=50)),
    ("unsubscribe", T0 + dt.timedelta(minutes=7)),
]


def test_every_arrival_order_gives_the_same_state_and_counts(session, workspace):
    c = _campaign(session, workspace.id)
    orders = list(itertools.permutations(range(len(ORDER_EVENTS))))
    rids = _recipients(session, workspace.id, c.id, [f"p{i}@x.org" for i in range(len(orders))])
    for rid, order in zip(rids, orders, strict=True):
        for index in order:
            type_, at = ORDER_EVENTS[index]
            _rec(session, workspace.id, rid, type_, f"{rid}:{index}", at=at)
    session.commit()
    rows = session.execute(
        select(
            CampaignRecipient.status,
            CampaignRecipient.delivered_at,
            CampaignRecipient.opened_at,
            CampaignRecipient.clicked_at,
            CampaignRecipient.unsubscribed_at,
        ).where(CampaignRecipient.campaign_id == c.id)
    ).all()
    expected = (
        "delivered",
        T0,
        T0 + dt.timedelta(minutes=5),
        T0 + dt.timedelta(minutes=6),
        T0 + dt.timedelta(minutes=7),
    )
    assert {tuple(r) for r in rows} == {expected}  # first times are the earliest, whatever the order
    n = len(orders)
    totals = counters.totals(session, c.id)
    assert totals["delivered"] == n
    assert (totals["opened"], totals["unique_opened"]) == (2 * n, n)
    assert (totals["clicked"], totals["unique_clicked"], totals["unsubscribed"]) == (n, n, n)
    by_template = counters.breakdown(session, c.id, "template")["3"]
    assert by_template["unique_opened"] == n
    assert counters.breakdown(session, c.id, "domain")["x.org"]["delivered"] == n


@pytest.mark.parametrize("first", ["deliver", "soft_bounce"])
def test_a_bounce_wins_over_a_delivery_in_either_order(session, workspace, first):
    c = _campaign(session, workspace.id)
    [rid] = _recipients(session, workspace.id, c.id, ["b@x.org"])
    second = "soft_bounce" if first == "deliver" else "deliver"
    _rec(session, workspace.id, rid, first, "e1", reason="503 busy")
    _rec(session, workspace.id, rid, second, "e2", reason="503 busy")
    session.commit()
    r = session.get(CampaignRecipient, rid)
    assert (r.status, r.soft_bounces) == ("bounced", 1)
    totals = counters.totals(session, c.id)
    assert (totals["delivered"], totals["bounced"], totals["soft_bounced"]) == (0, 1, 1)
    assert not suppression.is_suppressed(session, workspace.id, "b@x.org")  # one soft bounce: no


@pytest.mark.parametrize(
    ("type_", "substat", "reason"),
    [
        ("invalid", "406", "invalid"),
        ("invalid", "401", "hard_bounce"),
        ("invalid", "402", "unsubscribed"),
        ("report_spam", "", "complaint"),
        ("unsubscribe", "", "unsubscribed"),
    ],
)
def test_hard_failures_complaints_and_unsubscribes_suppress_the_address(
    session, workspace, type_, substat, reason
):
    c = _campaign(session, workspace.id)
    [rid] = _recipients(session, workspace.id, c.id, ["c@x.org"])
    _rec(session, workspace.id, rid, type_, "s1", substat=substat)
    session.commit()
    row = session.scalar(select(Suppression).where(Suppression.email == "c@x.org"))
    assert (row.reason, row.campaign_id) == (reason, c.id)


def test_repeated_soft_bounces_across_campaigns_suppress_at_the_limit(session, workspace):
    address = "soft@x.org"
    for n in range(1, 4):
        c = _campaign(session, workspace.id)
        [rid] = _recipients(session, workspace.id, c.id, [address])
        _rec(session, workspace.id, rid, "soft_bounce", f"sb{n}")
        session.commit()
        assert suppression.is_suppressed(session, workspace.id, address) is (n >= 3)
    row = session.scalar(select(Suppression).where(Suppression.email == address))
    assert row.reason == "soft_bounce"


class TestSoftBounceLimitSetting:
    @pytest.fixture
    def app_config(self, app_config):
        app_config["MARKETING_SOFT_BOUNCE_LIMIT"] = 2
        return app_config

    def test_the_limit_comes_from_settings(self, app, session, workspace):
        assert app.extensions["marketing"].settings.soft_bounce_limit == 2
        for n in range(1, 3):
            c = _campaign(session, workspace.id)
            [rid] = _recipients(session, workspace.id, c.id, ["s2@x.org"])
            _rec(session, workspace.id, rid, "soft_bounce", f"two{n}")
            session.commit()
        assert suppression.is_suppressed(session, workspace.id, "s2@x.org")


def test_provider_opens_are_not_counted_twice_when_we_track_ourselves(session, workspace):
    c = _campaign(session, workspace.id, tracking=True)
    [rid] = _recipients(session, workspace.id, c.id, ["t@x.org"])
    assert _rec(session, workspace.id, rid, "open", "sc-open", provider="sendcloud") is True
    _rec(session, workspace.id, rid, "open", "pixel-open", source="pixel")
    session.commit()
    totals = counters.totals(session, c.id)
    assert (totals["opened"], totals["unique_opened"]) == (1, 1)
    ignored = session.scalar(select(Event.data).where(Event.dedupe_key == "sc-open"))
    assert ignored["ignored"] == "own_tracking"


def test_events_for_mail_outside_campaigns_still_suppress_and_count_apart(session, workspace):
    assert _rec(session, workspace.id, None, "invalid", "trig-1", recipient="Trig@Y.org ", substat="406")
    assert _rec(session, workspace.id, None, "deliver", "trig-2", recipient="ok@y.org")
    session.commit()
    assert suppression.is_suppressed(session, workspace.id, "trig@y.org")
    totals = counters.totals(session, 0)
    assert (totals["invalid"], totals["delivered"]) == (1, 1)


def test_a_recipient_of_another_workspace_is_never_touched(session, workspace, other_workspace):
    c = _campaign(session, other_workspace.id)
    [rid] = _recipients(session, other_workspace.id, c.id, ["o@x.org"])
    _rec(session, workspace.id, rid, "unsubscribe", "x-ws")
    session.commit()
    r = session.get(CampaignRecipient, rid)
    assert r.unsubscribed_at is None
    assert not suppression.is_suppressed(session, other_workspace.id, "o@x.org")
    stored = session.scalar(select(Event).where(Event.dedupe_key == "x-ws"))
    assert stored.recipient_id is None


def test_a_request_event_fills_missing_provider_ids(session, workspace):
    c = _campaign(session, workspace.id)
    rids = _recipients(session, workspace.id, c.id, ["r1@x.org", "r2@x.org"])
    session.get(CampaignRecipient, rids[1]).provider_message_id = "known$r2@x.org"
    session.commit()
    events.record(
        session,
        workspace_id=workspace.id,
        type="request",
        dedupe_key="req-1",
        occurred_at=T0,
        campaign_id=c.id,
        data={"pairs": [["r1@x.org", "m0$r1@x.org"], ["r2@x.org", "m1$r2@x.org"]]},
    )
    session.commit()
    session.expire_all()
    assert session.get(CampaignRecipient, rids[0]).provider_message_id == "m0$r1@x.org"
    assert session.get(CampaignRecipient, rids[1]).provider_message_id == "known$r2@x.org"
