"""The campaign service: drafts, the checks before launch (each error on its own field), submission
(now, at a time, or to an admin's approval), duplicate, delete, user actions through the runner,
the list and the live status.  Real database, real audience SQL; the runner's user actions run."""

from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

import campaign_kit as kit
import pytest
from flask_babel import force_locale
from sqlalchemy import select

from plugin.campaigns import lifecycle
from plugin.campaigns import service as svc
from plugin.errors import InvalidTransition, NotFound
from plugin.extension import get_state
from plugin.models import Campaign, SavedView, SendBatch, utcnow

NOW = dt.datetime(2030, 5, 6, 8, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _english_messages(app):
    with force_locale("en"):
        yield


@pytest.fixture
def app_config(app_config):
    app_config["MARKETING_APPROVAL_THRESHOLD"] = 20
    return app_config


@pytest.fixture
def kit_setup(session, workspace):
    account = kit.sendcloud_account(session, workspace.id)
    sender = kit.sender(session, workspace.id)
    template = kit.template(session, workspace.id)
    template.variables = ["name", "email"]
    template.review_state = "approved"
    kit.contacts(session, workspace.id, 10, tags=["fair"])
    kit.contacts(session, workspace.id, 5, tags=["web"], start=10)
    kit.contacts(session, workspace.id, 3, tags=["fair", "web", "vip"], start=20)
    session.commit()
    tags = {name: kit.tag_id(session, workspace.id, name) for name in ("fair", "web", "vip")}
    return {"account": account, "sender": sender, "template": template, "tags": tags}


def spec(kit_setup, **changes) -> svc.CampaignSpec:
    base = svc.CampaignSpec(
        name="Spring fair",
        template_ids=(kit_setup["template"].id,),
        include_tags=(kit_setup["tags"]["fair"], kit_setup["tags"]["web"]),
        sender_ids=(kit_setup["sender"].id,),
        account_id=kit_setup["account"].id,
    )
    return dataclasses.replace(base, **changes)


def run_check(session, workspace, the_spec, **kw):
    state = get_state()
    return svc.check(
        session, workspace.id, the_spec, directory=state.directory, settings=state.settings, **kw
    )


def do_submit(session, workspace, campaign_id, **kw):
    state = get_state()
    return svc.submit(
        session, workspace.id, campaign_id, directory=state.directory, settings=state.settings, **kw
    )


# -- drafts --------------------------------------------------------------------------------------
def test_a_draft_stores_every_field_of_the_form(session, workspace, kit_setup):
    the_spec = spec(
        kit_setup,
        exclude_tags=(kit_setup["tags"]["vip"],),
        skip_count=2,
        max_count=5,
        from_name="Sales team",
        reply_to="answers@example.com",
        tracking=False,
        label="spring",
        send_at=NOW,
        send_rate=12.5,
        spread_over_days=False,
        template_assignment="random",
    )
    campaign = svc.save_draft(session, workspace.id, the_spec, user_id="7", team="east")
    session.commit()
    stored = session.get(Campaign, campaign.id)
    assert stored.status == lifecycle.DRAFT
    assert (stored.owner_id, stored.created_by, stored.team) == ("7", "7", "east")
    assert stored.audience == {
        "include_tags": [kit_setup["tags"]["fair"], kit_setup["tags"]["web"]],
        "include_views": [],
        "exclude_tags": [kit_setup["tags"]["vip"]],
        "exclude_views": [],
    }
    assert svc.spec_of(stored) == the_spec


def test_editing_a_scheduled_campaign_takes_it_back_to_draft_and_drops_the_approval(
    session, workspace, kit_setup
):
    campaign = svc.save_draft(session, workspace.id, spec(kit_setup, send_at=NOW), user_id="1")
    campaign.approved_by, campaign.approved_at = "9", NOW
    lifecycle.transition(session, campaign, lifecycle.SCHEDULED)
    session.commit()
    svc.save_draft(
        session, workspace.id, spec(kit_setup, name="Renamed"), user_id="1", campaign_id=campaign.id
    )
    session.commit()
    session.refresh(campaign)
    assert (campaign.status, campaign.name, campaign.approved_at) == (lifecycle.DRAFT, "Renamed", None)


def test_a_running_campaign_cannot_be_edited(session, workspace, kit_setup):
    campaign = svc.save_draft(session, workspace.id, spec(kit_setup), user_id="1")
    lifecycle.transition(session, campaign, lifecycle.RUNNING)
    session.commit()
    with pytest.raises(InvalidTransition, match="cannot be edited"):
        svc.save_draft(session, workspace.id, spec(kit_setup, name="x"), user_id="1", campaign_id=campaign.id)


def test_templates_senders_and_accounts_of_another_workspace_are_refused(
    session, workspace, other_workspace, kit_setup
):
    foreign = kit.template(session, other_workspace.id)
    with pytest.raises(svc.CampaignErrors) as caught:
        svc.save_draft(session, workspace.id, spec(kit_setup, template_ids=(foreign.id,)), user_id="1")
    assert set(caught.value.errors) == {"template_ids"}
    with pytest.raises(NotFound):
        svc.get_campaign(
            session,
            other_workspace.id,
            svc.save_draft(session, workspace.id, spec(kit_setup), user_id="1").id,
        )


# -- checks before launch ------------------------------------------------------------------------
def test_a_good_campaign_passes_with_live_counts(session, workspace, kit_setup):
    verdict = run_check(
        session, workspace, spec(kit_setup, exclude_tags=(kit_setup["tags"]["vip"],)), now=NOW
    )
    assert verdict.ok, verdict.errors
    assert verdict.warnings == []
    assert (verdict.counts.audience, verdict.counts.excluded, verdict.counts.final) == (18, 3, 15)


def test_no_include_is_an_error_beside_the_recipients(session, workspace, kit_setup):
    verdict = run_check(session, workspace, spec(kit_setup, include_tags=()), now=NOW)
    assert verdict.errors == {"include": "Choose at least one tag or view to send to."}


def test_exclusions_removing_everyone_are_an_error_beside_the_exclusions(session, workspace, kit_setup):
    everyone = SavedView(workspace_id=workspace.id, name="Everyone", rules={"match": "all", "rules": []})
    session.add(everyone)
    session.commit()
    verdict = run_check(session, workspace, spec(kit_setup, exclude_views=(everyone.id,)), now=NOW)
    assert verdict.counts.final == 0
    assert verdict.errors == {"exclude": "The exclusions remove everyone: no recipient is left."}


def test_a_time_in_the_past_is_an_error_beside_the_time(session, workspace, kit_setup):
    verdict = run_check(session, workspace, spec(kit_setup, send_at=NOW - dt.timedelta(minutes=1)), now=NOW)
    assert list(verdict.errors) == ["send_at"]
    assert "already passed" in verdict.errors["send_at"]
    assert run_check(session, workspace, spec(kit_setup, send_at=NOW + dt.timedelta(minutes=1)), now=NOW).ok


def test_a_sender_without_postal_address_is_an_error_naming_it(session, workspace, kit_setup):
    kit_setup["sender"].postal_address = "  "
    session.commit()
    verdict = run_check(session, workspace, spec(kit_setup), now=NOW)
    assert verdict.errors == {
        "sender_ids": "news@mail.example.com: no postal address: add one to the sender in setup."
    }


def test_template_with_unknown_variables_is_flagged_with_their_names(session, workspace, kit_setup):
    kit_setup["template"].variables = ["name", "favourite_colour", "shoe_size"]
    session.commit()
    verdict = run_check(session, workspace, spec(kit_setup), now=NOW)
    assert list(verdict.errors) == ["template_ids"]
    assert "favourite_colour, shoe_size" in verdict.errors["template_ids"]


def test_a_template_without_unsubscribe_link_is_fine_because_rendering_adds_one(
    session, workspace, kit_setup
):
    kit_setup["template"].html = "<p>No footer at all</p>"
    session.commit()
    assert run_check(session, workspace, spec(kit_setup), now=NOW).ok


def test_unapproved_sendcloud_templates_are_a_warning_not_an_error(session, workspace, kit_setup):
    kit_setup["template"].review_state = "pending"
    session.commit()
    verdict = run_check(session, workspace, spec(kit_setup), now=NOW)
    assert verdict.ok
    assert len(verdict.warnings) == 1
    assert "Kit template" in verdict.warnings[0]
    assert "refuse inline content" in verdict.warnings[0]


def test_missing_templates_and_senders_are_errors(session, workspace, kit_setup):
    verdict = run_check(session, workspace, spec(kit_setup, template_ids=(), sender_ids=()), now=NOW)
    assert set(verdict.errors) == {"template_ids", "sender_ids"}


def test_custom_send_count_sends_the_audience_in_parts_as_in_the_seed(session, workspace, kit_setup):
    """The seed's 131,765 contacts in three parts of 44,000, at 1/10,000 scale: 13 contacts
    (fair+web minus vip = 15; take 13 by excluding two), parts of 5: 5, 5, 3 and nobody after."""
    finals = []
    for skip in (0, 5, 10):
        verdict = run_check(
            session,
            workspace,
            spec(kit_setup, skip_count=skip, max_count=5, include_tags=(kit_setup["tags"]["fair"],)),
            now=NOW,
        )
        finals.append(verdict.counts.final)
    assert finals == [5, 5, 3]
    verdict = run_check(
        session,
        workspace,
        spec(kit_setup, skip_count=13, max_count=5, include_tags=(kit_setup["tags"]["fair"],)),
        now=NOW,
    )
    assert verdict.counts.final == 0
    assert list(verdict.errors) == ["skip_count"]
    assert "13" in verdict.errors["skip_count"]


# -- submission ----------------------------------------------------------------------------------
def test_send_now_schedules_at_the_moment_of_submission_and_asks_to_start(session, workspace, kit_setup):
    campaign = svc.save_draft(session, workspace.id, spec(kit_setup), user_id="1")
    result = do_submit(session, workspace, campaign.id, now=NOW)
    assert result == svc.Submitted(lifecycle.SCHEDULED, start_now=True)
    assert (campaign.status, campaign.send_at) == (lifecycle.SCHEDULED, NOW)


def test_a_timed_campaign_is_scheduled_at_its_time(session, workspace, kit_setup):
    later = NOW + dt.timedelta(hours=3)
    campaign = svc.save_draft(session, workspace.id, spec(kit_setup, send_at=later), user_id="1")
    result = do_submit(session, workspace, campaign.id, now=NOW)
    assert result == svc.Submitted(lifecycle.SCHEDULED, start_now=False)
    assert campaign.send_at == later


def test_a_refused_submission_changes_nothing_and_lists_every_problem(session, workspace, kit_setup):
    campaign = svc.save_draft(
        session,
        workspace.id,
        spec(kit_setup, include_tags=(), send_at=NOW - dt.timedelta(hours=1)),
        user_id="1",
    )
    session.commit()
    with pytest.raises(svc.CampaignErrors) as caught:
        do_submit(session, workspace, campaign.id, now=NOW)
    assert set(caught.value.errors) == {"include", "send_at"}
    session.rollback()
    assert session.get(Campaign, campaign.id).status == lifecycle.DRAFT


def test_above_the_threshold_it_waits_for_an_admin_who_approves(session, workspace, kit_setup):
    kit.contacts(session, workspace.id, 10, tags=["web"], start=100)  # 28 > threshold 20
    campaign = svc.save_draft(session, workspace.id, spec(kit_setup), user_id="1")
    result = do_submit(session, workspace, campaign.id, now=NOW)
    assert result == svc.Submitted(lifecycle.AWAITING_APPROVAL, start_now=False)
    approved = svc.approve(session, workspace.id, campaign.id, by="42", now=NOW + dt.timedelta(minutes=5))
    assert approved == svc.Submitted(lifecycle.SCHEDULED, start_now=True)
    assert (campaign.approved_by, campaign.status) == ("42", lifecycle.SCHEDULED)


def test_an_admin_rejects_with_a_reason_the_author_sees(session, workspace, kit_setup):
    kit.contacts(session, workspace.id, 10, tags=["web"], start=100)
    campaign = svc.save_draft(session, workspace.id, spec(kit_setup), user_id="1")
    do_submit(session, workspace, campaign.id, now=NOW)
    svc.reject(session, workspace.id, campaign.id, by="admin", note="  too   broad ")
    assert campaign.status == lifecycle.DRAFT
    assert campaign.last_error == "Not approved by admin: too broad"
    with pytest.raises(InvalidTransition):
        svc.approve(session, workspace.id, campaign.id, by="admin")


def test_threshold_zero_means_no_approval(session, workspace, kit_setup, app):
    kit.contacts(session, workspace.id, 50, tags=["web"], start=100)
    campaign = svc.save_draft(session, workspace.id, spec(kit_setup), user_id="1")
    state = get_state()
    settings = dataclasses.replace(state.settings, approval_threshold=0)
    result = svc.submit(
        session, workspace.id, campaign.id, directory=state.directory, settings=settings, now=NOW
    )
    assert result.status == lifecycle.SCHEDULED


def test_a_missed_campaign_can_be_started_now(session, workspace, kit_setup):
    campaign = svc.save_draft(
        session, workspace.id, spec(kit_setup, send_at=NOW - dt.timedelta(hours=2)), user_id="1"
    )
    lifecycle.transition(session, campaign, lifecycle.SCHEDULED)
    lifecycle.transition(session, campaign, lifecycle.MISSED)
    session.commit()
    with pytest.raises(svc.CampaignErrors):
        do_submit(session, workspace, campaign.id, now=NOW)
    session.rollback()
    result = do_submit(session, workspace, campaign.id, now=NOW, send_now=True)
    assert (result.start_now, campaign.send_at) == (True, NOW)


# -- other actions -------------------------------------------------------------------------------
def test_duplicate_is_a_new_draft_without_the_time(session, workspace, kit_setup):
    campaign = svc.save_draft(session, workspace.id, spec(kit_setup, send_at=NOW, label="x"), user_id="1")
    lifecycle.transition(session, campaign, lifecycle.SCHEDULED)
    copy = svc.duplicate(session, workspace.id, campaign.id, user_id="2")
    assert copy.id != campaign.id
    assert copy.status == lifecycle.DRAFT
    assert (copy.name, copy.owner_id) == ("Spring fair (copy)", "2")
    assert (copy.send_at, copy.label, copy.audience) == (None, "x", campaign.audience)


def test_only_drafts_are_deleted(session, workspace, kit_setup):
    draft = svc.save_draft(session, workspace.id, spec(kit_setup), user_id="1")
    other = svc.save_draft(session, workspace.id, spec(kit_setup), user_id="1")
    lifecycle.transition(session, other, lifecycle.SCHEDULED)
    svc.delete_draft(session, workspace.id, draft.id)
    with pytest.raises(InvalidTransition, match="Only drafts"):
        svc.delete_draft(session, workspace.id, other.id)
    session.commit()
    assert session.scalars(select(Campaign.id)).all() == [other.id]


def test_pause_resume_cancel_go_through_the_runner(session, workspace, other_workspace, kit_setup):
    campaign = svc.save_draft(session, workspace.id, spec(kit_setup), user_id="1")
    lifecycle.transition(session, campaign, lifecycle.RUNNING)
    session.commit()
    with pytest.raises(NotFound):
        svc.pause(session, other_workspace.id, campaign.id, by="x")
    svc.pause(session, workspace.id, campaign.id, by="1")
    session.refresh(campaign)
    assert (campaign.status, campaign.pause_reason) == (lifecycle.PAUSED, "user")
    svc.resume(session, workspace.id, campaign.id)
    session.refresh(campaign)
    assert campaign.status == lifecycle.RUNNING
    svc.cancel(session, workspace.id, campaign.id)
    session.refresh(campaign)
    assert campaign.status == lifecycle.CANCELLED
    with pytest.raises(InvalidTransition):
        svc.resume(session, workspace.id, campaign.id)


# -- list and status -----------------------------------------------------------------------------
def test_list_searches_filters_sorts_and_pages(session, workspace, other_workspace, kit_setup):
    for i, name in enumerate(["Alpha 100%", "beta", "Gamma", "alphabet"]):
        c = svc.save_draft(session, workspace.id, spec(kit_setup, name=name), user_id="1")
        c.total = i * 10
    lifecycle.transition(session, c, lifecycle.SCHEDULED)
    kit.template(session, other_workspace.id)
    session.add(Campaign(workspace_id=other_workspace.id, name="alpha elsewhere"))
    session.commit()
    page = svc.list_campaigns(session, workspace.id, q="ALPHA", sort="name", order="asc")
    assert ([c.name for c in page.rows], page.all_count) == (["Alpha 100%", "alphabet"], 4)
    assert [c.name for c in svc.list_campaigns(session, workspace.id, q="100%").rows] == ["Alpha 100%"]
    c.label = "Spring_Fair"  # a search finds the SendCloud label a campaign was filed under too
    session.commit()
    assert [c.name for c in svc.list_campaigns(session, workspace.id, q="spring_f").rows] == ["alphabet"]
    assert [c.name for c in svc.list_campaigns(session, workspace.id, status="scheduled").rows] == [
        "alphabet"
    ]
    by_total = svc.list_campaigns(session, workspace.id, sort="total", order="desc", per_page=3, page=2)
    assert ([c.name for c in by_total.rows], by_total.pages, by_total.total) == (["Alpha 100%"], 2, 4)


def test_status_reports_progress_rate_and_eta(session, workspace, kit_setup):
    campaign = svc.save_draft(session, workspace.id, spec(kit_setup), user_id="1")
    lifecycle.transition(session, campaign, lifecycle.RUNNING, now=NOW - dt.timedelta(minutes=10))
    campaign.total, campaign.sent, campaign.failed, campaign.skipped = 1000, 300, 20, 80
    for seq, age in enumerate((30, 90, 150, 210, 270, 330), start=1):  # the last: outside 5 minutes
        session.add(
            SendBatch(
                workspace_id=workspace.id,
                campaign_id=campaign.id,
                seq=seq,
                idempotency_key=f"k{campaign.id}-{seq}",
                size=100,
                status="sent",
                sent_at=NOW - dt.timedelta(seconds=age),
            )
        )
    session.commit()
    status = svc.status_of(session, campaign, now=NOW)
    assert status["rate_per_minute"] == 100.0  # 500 in the last five minutes
    assert status["pending"] == 600
    assert status["eta_seconds"] == 360
    campaign.send_rate = 0.5  # paced at 30 a minute: the figure never claims more
    assert svc.status_of(session, campaign, now=NOW)["rate_per_minute"] == 30.0
    campaign.send_rate = None  # the runner's default pace then applies
    assert svc.status_of(session, campaign, now=NOW, default_pace=1.0)["rate_per_minute"] == 60.0
    for batch in session.scalars(select(SendBatch).where(SendBatch.campaign_id == campaign.id)):
        if batch.sent_at < NOW - dt.timedelta(seconds=100):
            batch.sent_at = NOW - dt.timedelta(hours=1)  # resumed 100 s ago after a long pause
    session.commit()
    assert svc.status_of(session, campaign, now=NOW)["rate_per_minute"] == 133.3  # 200 over 90 s
    assert status["percent"] == 30.0
    assert (status["status_label"], status["final"]) == ("Sending", False)
    lifecycle.transition(session, campaign, lifecycle.PAUSED, reason="quota")
    paused = svc.status_of(session, campaign, now=NOW)
    assert paused["eta_seconds"] is None
    assert "Daily quota used up" in paused["pause_text"]


def _batch(campaign, seq: int, **values) -> SendBatch:
    return SendBatch(
        workspace_id=campaign.workspace_id,
        campaign_id=campaign.id,
        seq=seq,
        idempotency_key=f"k{campaign.id}-{seq}",
        **values,
    )


def test_time_left_says_when_todays_quota_cannot_cover_the_rest(session, workspace, kit_setup, sim_snapshot):
    """Quota 10 a day: a running campaign with 18 to go would show the rate's minutes; it shows
    the days and says the rest waits for the quota's reset (the same forecast as the form)."""
    settings = get_state().settings
    now = utcnow()
    campaign = svc.save_draft(session, workspace.id, spec(kit_setup), user_id="1")
    lifecycle.transition(session, campaign, lifecycle.RUNNING, now=now - dt.timedelta(minutes=1))
    campaign.total = 18
    session.add(_batch(campaign, 1, size=2, status="sent", sent_at=now - dt.timedelta(seconds=20)))
    session.commit()
    assert svc.status_of(session, campaign, now=now)["eta_seconds"] is not None  # without settings
    status = svc.status_of(session, campaign, now=now, settings=settings)
    assert (status["eta_seconds"], status["eta_days"], status["eta_text"]) == (None, 2, "about 2 days")
    assert "covers about 10 more" in status["quota_note"]
    assert "resets" in status["quota_note"]

    campaign.total = 8  # fits in today's 10: the rate's time left stands
    session.commit()
    fits = svc.status_of(session, campaign, now=now, settings=settings)
    assert (fits["eta_days"], fits["quota_note"]) == (None, "")
    assert fits["eta_seconds"] is not None

    campaign.total = 18
    out = _batch(campaign, 2, size=8, status="sending")  # quota held already: 10 left to ask
    session.add(out)
    session.commit()
    assert svc.status_of(session, campaign, now=now, settings=settings)["quota_note"] == ""
    session.delete(out)
    session.commit()
    lifecycle.transition(session, campaign, lifecycle.PAUSED, reason="user")  # not the quota's doing
    session.commit()
    assert svc.status_of(session, campaign, now=now, settings=settings)["quota_note"] == ""
    lifecycle.transition(session, campaign, lifecycle.RUNNING)
    lifecycle.transition(session, campaign, lifecycle.PAUSED, reason="quota")
    session.commit()
    waiting = svc.status_of(session, campaign, now=now, settings=settings)
    assert waiting["eta_days"] == 2
    assert "the rest goes out after" in waiting["quota_note"]


def test_times_typed_in_the_users_zone_are_stored_utc():
    shanghai = ZoneInfo("Asia/Shanghai")
    typed = dt.datetime(2030, 1, 2, 9, 30)
    stored = svc.local_to_utc(typed, shanghai)
    assert stored == dt.datetime(2030, 1, 2, 1, 30, tzinfo=dt.UTC)
    assert svc.utc_to_local(stored, shanghai) == typed
    assert svc.utc_to_local(stored, ZoneInfo("America/Los_Angeles")) == dt.datetime(2030, 1, 1, 17, 30)


def test_spec_from_form_input(session):
    data = {
        "name": "  Two   spaces ",
        "include_tags": [3, 3, 4],
        "send_mode": "at",
        "send_at": dt.datetime(2030, 1, 2, 9, 30),
        "tracking": False,
    }
    result = svc.spec_from_input(data, tz=ZoneInfo("Asia/Shanghai"))
    assert (result.name, result.include_tags, result.tracking) == ("Two spaces", (3, 4), False)
    assert result.send_at == dt.datetime(2030, 1, 2, 1, 30, tzinfo=dt.UTC)
    assert svc.spec_from_input({**data, "send_mode": "now"}, tz=ZoneInfo("UTC")).send_at is None


def test_not_spreading_a_campaign_longer_than_a_day_is_refused(session, workspace, kit_setup, sim_snapshot):
    verdict = run_check(session, workspace, spec(kit_setup, spread_over_days=False), now=utcnow())
    assert verdict.forecast is not None
    assert verdict.forecast.days_needed == 2
    assert list(verdict.errors) == ["spread_over_days"]
    assert run_check(session, workspace, spec(kit_setup), now=utcnow()).ok


@pytest.fixture
def sim_snapshot(session, workspace, kit_setup):
    """An account synced with a daily quota of 10, so the 18 recipients need two days."""
    from plugin import quota
    from plugin.models import AccountSnapshot

    account = kit_setup["account"]
    session.add(
        AccountSnapshot(
            workspace_id=workspace.id,
            account_id=account.id,
            balance=100,
            available_balance=100,
            daily_quota=10,
            used_today=0,
            fetched_at=utcnow(),
        )
    )
    session.commit()
    return quota
