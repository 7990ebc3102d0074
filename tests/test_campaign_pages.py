"""Campaign pages: the list (chips, progress, search/sort/paging, empty state), the form (errors
beside their fields, the draft kept when a launch is refused, times in the user's zone), the live
count and status JSON, the campaign page and its buttons; roles, CSRF and workspace isolation.
"Send now" runs for real against the SendCloud simulator."""

from __future__ import annotations

import datetime as dt
import html
import re
from decimal import Decimal

import campaign_kit as kit
import pytest
from sqlalchemy import select

from plugin import tasks
from plugin.campaigns import lifecycle
from plugin.campaigns import service as svc
from plugin.models import Campaign, SavedView, utcnow
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer


@pytest.fixture(scope="module")
def simulator():
    sim = SendCloudSimulator(deliver_delay=3600, price_per_mail=Decimal("0.001"))
    sim.add_account(kit.API_USER, kit.API_KEY, quota=10_000, balance=Decimal("1000"))
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def app_config(app_config, simulator):
    app_config["MARKETING_SENDCLOUD_API_BASE"] = simulator.url
    app_config["MARKETING_PROVIDER_TIMEOUT"] = 2.0
    app_config["MARKETING_APPROVAL_THRESHOLD"] = 12
    return app_config


@pytest.fixture
def setup(app, session, workspace):
    account = kit.sendcloud_account(session, workspace.id)
    sender = kit.sender(session, workspace.id)
    template = kit.template(session, workspace.id)
    template.variables = ["name", "email"]
    kit.contacts(session, workspace.id, 6, tags=["fair"])
    kit.contacts(session, workspace.id, 4, tags=["web"], start=10)
    kit.contacts(session, workspace.id, 2, tags=["fair", "vip"], start=20)
    session.commit()
    tags = {n: kit.tag_id(session, workspace.id, n) for n in ("fair", "web", "vip")}
    yield {"account": account, "sender": sender, "template": template, "tags": tags}
    tasks.shutdown_executor(app)


def text(response) -> str:
    return response.get_data(as_text=True)


def form(setup, **changes) -> dict:
    data = {
        "name": "Spring fair",
        "template_ids": [str(setup["template"].id)],
        "template_assignment": "balanced",
        "include_tags": [str(setup["tags"]["fair"]), str(setup["tags"]["web"])],
        "exclude_tags": [str(setup["tags"]["vip"])],
        "sender_ids": [str(setup["sender"].id)],
        "account_id": str(setup["account"].id),
        "from_name": "",
        "reply_to": "",
        "label": "",
        "skip_count": "0",
        "max_count": "",
        "send_mode": "now",
        "send_rate": "",
        "tracking_present": "1",
        "tracking": "1",
        "spread_over_days_present": "1",
        "spread_over_days": "1",
        "action": "draft",
    }
    data.update(changes)
    return data


def campaigns(session, workspace_id: int) -> list[Campaign]:
    session.expire_all()
    return list(session.scalars(select(Campaign).where(Campaign.workspace_id == workspace_id)))


def make(session, workspace, setup, *, status: str = lifecycle.DRAFT, name: str = "Spring fair") -> Campaign:
    spec = svc.CampaignSpec(
        name=name,
        template_ids=(setup["template"].id,),
        include_tags=(setup["tags"]["fair"],),
        sender_ids=(setup["sender"].id,),
        account_id=setup["account"].id,
    )
    campaign = svc.save_draft(session, workspace.id, spec, user_id="1")
    campaign.status = status
    session.commit()
    return campaign


# -- list --------------------------------------------------------------------------------------
def test_empty_list_invites_marketers_to_create_the_first_campaign(login, workspace):
    page = text(login("marketer").get("/marketing/campaigns"))
    assert 'id="campaigns-empty"' in page
    assert 'id="create-first-campaign" href="/marketing/campaigns/new"' in page
    sales = text(login("sales").get("/marketing/campaigns"))
    assert 'id="campaigns-empty"' in sales
    assert "create-first-campaign" not in sales


def test_list_shows_status_chips_progress_and_only_this_workspace(
    login, session, workspace, other_workspace, setup
):
    running = make(session, workspace, setup, status=lifecycle.RUNNING, name="Running one")
    running.total, running.sent, running.failed = 200, 50, 3
    make(session, workspace, setup, name="Draft one")
    session.add(Campaign(workspace_id=other_workspace.id, name="Their campaign"))
    session.commit()
    page = text(login("sales").get("/marketing/campaigns"))
    assert re.search(r'data-status="running">Sending</span>', page)
    assert re.search(r'data-status="draft">Draft</span>', page)
    assert 'aria-valuenow="50"' in page
    assert 'style="width: 25.0%"' in page
    assert "Their campaign" not in page
    found = text(login("sales").get("/marketing/campaigns?q=running&sort=name&order=asc"))
    assert "Running one" in found
    assert "Draft one" not in found
    filtered = text(login("sales").get("/marketing/campaigns?status=draft"))
    assert "Draft one" in filtered
    assert "Running one" not in filtered
    none = text(login("sales").get("/marketing/campaigns?q=nothing-like-this"))
    assert 'id="campaigns-no-match"' in none


def test_list_pages_and_ignores_bad_arguments(login, session, workspace, setup):
    for i in range(55):
        session.add(Campaign(workspace_id=workspace.id, name=f"C{i:02d}"))
    session.commit()
    browser = login("marketer")
    first = text(browser.get("/marketing/campaigns?sort=name&order=asc"))
    assert 'data-total="55"' in first
    assert "C00" in first
    assert "C50" not in first
    second = text(browser.get("/marketing/campaigns?sort=name&order=asc&page=2"))
    assert "C50" in second
    assert browser.get("/marketing/campaigns?sort=password&page=-4").status_code == 200


# -- form ----------------------------------------------------------------------------------------
def test_form_offers_tags_views_templates_senders_and_channels_with_counts(login, session, workspace, setup):
    session.add(SavedView(workspace_id=workspace.id, name="Everyone", rules={"match": "all", "rules": []}))
    session.commit()
    page = text(login("marketer").get("/marketing/campaigns/new"))
    fair = setup["tags"]["fair"]
    assert re.search(rf'name="include_tags" value="{fair}"\s*>\s*fair <span class="muted">\(8\)', page)
    assert 'name="exclude_views"' in page
    assert "Everyone" in page
    assert f'name="template_ids" value="{setup["template"].id}"' in page
    # the default sender and the SendCloud account are preselected
    assert re.search(rf'name="sender_ids" value="{setup["sender"].id}" checked', page)
    assert re.search(rf'value="{setup["account"].id}" data-kind="sendcloud" selected', page)
    assert "Asia/Shanghai" in page
    assert "campaign_form.js" in page


def test_sales_cannot_open_the_form_or_post(login, session, workspace, setup):
    sales = login("sales")
    assert sales.get("/marketing/campaigns/new").status_code == 403
    assert sales.post("/marketing/campaigns/new", data=form(setup)).status_code == 403
    campaign = make(session, workspace, setup)
    for action in ("submit", "pause", "resume", "cancel", "duplicate", "delete", "approve"):
        assert sales.post(f"/marketing/campaigns/{campaign.id}/{action}", data={}).status_code == 403
    assert sales.get(f"/marketing/campaigns/{campaign.id}").status_code == 200
    assert campaigns(session, workspace.id)[0].status == lifecycle.DRAFT


def test_posting_without_csrf_token_is_refused(login, session, workspace, setup):
    browser = login("marketer")
    response = browser.client.post("/marketing/campaigns/new", data=form(setup))
    assert response.status_code == 400
    assert campaigns(session, workspace.id) == []


def test_save_as_draft_stores_the_form(login, session, workspace, setup):
    response = login("marketer").post(
        "/marketing/campaigns/new", data=form(setup, reply_to="answers@example.com", tracking_present="1")
    )
    assert response.status_code == 302
    (campaign,) = campaigns(session, workspace.id)
    assert response.headers["Location"].endswith(f"/marketing/campaigns/{campaign.id}")
    assert campaign.status == lifecycle.DRAFT
    assert campaign.audience["exclude_tags"] == [setup["tags"]["vip"]]
    assert campaign.reply_to == "answers@example.com"
    assert campaign.tracking is True


def test_an_unchecked_box_means_off(login, session, workspace, setup):
    data = form(setup)
    del data["tracking"], data["spread_over_days"]
    login("marketer").post("/marketing/campaigns/new", data=data)
    (campaign,) = campaigns(session, workspace.id)
    assert (campaign.tracking, campaign.spread_over_days) == (False, False)


def test_schema_errors_come_back_beside_their_fields_and_store_nothing(login, session, workspace, setup):
    response = login("marketer").post(
        "/marketing/campaigns/new", data=form(setup, name="", reply_to="not-an-address", skip_count="-3")
    )
    page = text(response)
    assert response.status_code == 422
    for field in ("name", "reply_to", "skip_count"):
        assert f'data-error="{field}"' in page
    assert 'value="not-an-address"' in page  # what the user typed is kept
    assert campaigns(session, workspace.id) == []


def test_field_errors_speak_the_users_language(login, session, workspace, setup):
    """Marshmallow's own messages ("Not a valid email address.") are English whatever the page."""
    browser = login("marketer")
    bad = form(setup, reply_to="not-an-address", send_rate="0")
    page = text(browser.post("/marketing/campaigns/new", data=bad))
    assert "Enter a reply-to address such as service@example.com." in page
    assert "Enter 0.01 to 10,000 mails per second, or leave it empty." in page
    browser.post("/marketing/preferences", data={"locale": "zh_CN", "next": "/marketing/"})
    chinese = text(browser.post("/marketing/campaigns/new", data=bad))
    assert "Not a valid email address" not in chinese
    assert "Must be greater than or equal" not in chinese
    assert "请输入回信地址" in chinese
    assert "每秒 0.01 到 10,000 封" in chinese


def test_an_empty_form_sent_says_every_problem_at_once(login, session, workspace, setup):
    """No name and no audience: both are said on the first submit, beside their fields."""
    response = login("marketer").post(
        "/marketing/campaigns/new", data=form(setup, name="", include_tags=[], action="submit")
    )
    page = html.unescape(text(response))
    assert response.status_code == 422
    assert 'data-error="name"' in page
    assert 'data-error="include"' in page
    assert "Choose at least one tag or view to send to." in page
    assert campaigns(session, workspace.id) == []


def test_unknown_form_keys_are_refused(login, session, workspace, setup):
    response = login("marketer").post("/marketing/campaigns/new", data=form(setup, status="running"))
    assert response.status_code == 422
    assert "status: Unknown field." in text(response)
    assert campaigns(session, workspace.id) == []


def test_a_refused_launch_keeps_the_draft_and_shows_each_problem(login, session, workspace, setup):
    setup["sender"].postal_address = ""
    session.commit()
    response = login("marketer").post(
        "/marketing/campaigns/new", data=form(setup, include_tags=[], action="submit")
    )
    page = html.unescape(text(response))
    assert response.status_code == 422
    assert 'id="saved-note"' in page
    assert 'data-error="include"' in page
    assert "Choose at least one tag or view to send to." in page
    assert "no postal address: add one to the sender in setup" in page
    (campaign,) = campaigns(session, workspace.id)
    assert campaign.status == lifecycle.DRAFT
    assert f'action="/marketing/campaigns/{campaign.id}/edit"' in page


def test_a_time_in_the_past_is_refused_beside_the_time(login, session, workspace, setup):
    response = login("marketer").post(
        "/marketing/campaigns/new",
        data=form(setup, send_mode="at", send_at="2001-01-01T08:00", action="submit"),
    )
    assert response.status_code == 422
    assert 'data-error="send_at"' in text(response)


def test_a_timed_campaign_is_scheduled_in_utc_from_the_users_zone(login, session, workspace, setup):
    browser = login("marketer")
    browser.post("/marketing/preferences", data={"timezone": "America/New_York"})
    local = (utcnow() + dt.timedelta(days=2)).astimezone(dt.timezone(dt.timedelta(hours=-5)))
    typed = local.replace(minute=0, second=0, microsecond=0, tzinfo=None)
    response = browser.post(
        "/marketing/campaigns/new",
        data=form(setup, send_mode="at", send_at=typed.strftime("%Y-%m-%dT%H:%M"), action="submit"),
    )
    assert response.status_code == 302, text(response)[:2000]
    (campaign,) = campaigns(session, workspace.id)
    from zoneinfo import ZoneInfo

    expected = typed.replace(tzinfo=ZoneInfo("America/New_York")).astimezone(dt.UTC)
    assert (campaign.status, campaign.send_at) == (lifecycle.SCHEDULED, expected)
    edit = text(browser.get(f"/marketing/campaigns/{campaign.id}/edit"))
    assert f'value="{typed.strftime("%Y-%m-%dT%H:%M")}"' in edit


def test_above_the_threshold_admins_approve_and_marketers_cannot(login, users, session, workspace, setup):
    kit.contacts(session, workspace.id, 10, tags=["web"], start=100)  # 20 recipients > 12
    marketer = login("marketer")
    later = (utcnow() + dt.timedelta(days=1)).astimezone(dt.timezone(dt.timedelta(hours=8)))
    marketer.post(
        "/marketing/campaigns/new",
        data=form(setup, send_mode="at", send_at=later.strftime("%Y-%m-%dT%H:%M"), action="submit"),
    )
    (campaign,) = campaigns(session, workspace.id)
    assert campaign.status == lifecycle.AWAITING_APPROVAL
    page = text(marketer.get(f"/marketing/campaigns/{campaign.id}"))
    assert 'id="approval"' in page
    assert "approve-campaign" not in page
    assert marketer.post(f"/marketing/campaigns/{campaign.id}/approve", data={}).status_code == 403
    admin = login("admin")
    assert 'id="approve-campaign"' in text(admin.get(f"/marketing/campaigns/{campaign.id}"))
    admin.post(f"/marketing/campaigns/{campaign.id}/approve", data={})
    (campaign,) = campaigns(session, workspace.id)
    assert campaign.status == lifecycle.SCHEDULED
    assert campaign.approved_by == str(users["admin"].id)


def test_admin_rejects_with_a_reason_shown_on_the_page(login, session, workspace, setup):
    campaign = make(session, workspace, setup, status=lifecycle.AWAITING_APPROVAL)
    admin = login("admin")
    admin.post(f"/marketing/campaigns/{campaign.id}/reject", data={"note": "Too broad"})
    (campaign,) = campaigns(session, workspace.id)
    assert campaign.status == lifecycle.DRAFT
    page = text(admin.get(f"/marketing/campaigns/{campaign.id}"))
    assert "Too broad" in page


def test_send_now_starts_the_campaign_and_the_simulator_gets_every_recipient(
    login, app, session, workspace, setup, simulator
):
    simulator.simulator.clear()
    response = login("marketer").post("/marketing/campaigns/new", data=form(setup, action="submit"))
    assert response.status_code == 302
    (campaign,) = campaigns(session, workspace.id)
    assert tasks.get_executor(app).wait_idle(30)
    session.expire_all()
    campaign = session.get(Campaign, campaign.id)
    assert campaign.status == lifecycle.COMPLETED, (campaign.status, campaign.last_error)
    recipients = sorted(m.recipient for m in simulator.simulator.mails() if m.api_user == kit.API_USER)
    expected = sorted(
        [f"user{i}@example.net" for i in range(6)] + [f"user{i}@example.net" for i in range(10, 14)]
    )
    assert recipients == expected
    assert campaign.audience_counts["excluded"] == 2
    page = text(login("sales").get(f"/marketing/campaigns/{campaign.id}"))
    assert 'id="frozen-counts"' in page
    assert 'data-status="completed"' in page


# -- JSON ----------------------------------------------------------------------------------------
def test_live_counts_and_forecast(login, session, workspace, setup):
    fair, web, vip = (setup["tags"][n] for n in ("fair", "web", "vip"))
    url = f"/marketing/campaigns/audience-count?include_tags={fair}&include_tags={web}&exclude_tags={vip}"
    sales = login("sales")
    body = sales.get(url + f"&account_id={setup['account'].id}").get_json()
    assert body["counts"]["audience"] == 12
    assert body["counts"]["excluded"] == 2
    assert body["counts"]["final"] == 10
    assert body["errors"] == {}
    assert body["forecast"]["recipients"] == 10
    windowed = sales.get(url + "&skip_count=4&max_count=5").get_json()
    assert windowed["counts"]["final"] == 5
    nobody = sales.get(f"/marketing/campaigns/audience-count?include_tags={vip}&exclude_tags={vip}")
    assert nobody.get_json()["errors"] == {"exclude": "The exclusions remove everyone: no recipient is left."}
    empty = sales.get("/marketing/campaigns/audience-count").get_json()
    assert empty["counts"] is None
    assert "include" in empty["errors"]
    assert sales.get("/marketing/campaigns/audience-count?skip_count=x").status_code == 422


def test_status_json_for_the_progress_bar(login, session, workspace, setup):
    campaign = make(session, workspace, setup, status=lifecycle.PAUSED)
    campaign.pause_reason, campaign.total, campaign.sent = "quota", 100, 40
    campaign.last_error = "SendCloud 500: boom"
    session.commit()
    body = login("sales").get(f"/marketing/campaigns/{campaign.id}/status").get_json()
    assert body["status"] == "paused"
    assert (body["sent"], body["total"], body["percent"]) == (40, 100, 40.0)
    assert "Daily quota used up" in body["pause_text"]
    assert body["last_error"] == "SendCloud 500: boom"
    assert body["final"] is False


# -- campaign page -------------------------------------------------------------------------------
def test_campaign_page_shows_progress_pause_reason_error_and_the_right_buttons(
    login, session, workspace, setup
):
    campaign = make(session, workspace, setup, status=lifecycle.PAUSED)
    campaign.pause_reason, campaign.total, campaign.sent, campaign.failed = "balance", 80, 20, 1
    campaign.last_error = "SendCloud 500: boom"
    campaign.frozen_at = utcnow()
    campaign.audience_counts = {"audience": 90, "excluded": 5, "suppressed": 3, "invalid": 2, "final": 80}
    session.commit()
    page = html.unescape(text(login("marketer").get(f"/marketing/campaigns/{campaign.id}")))
    assert "Balance insufficient" in page
    assert "Last error: SendCloud 500: boom" in page
    assert 'id="resume-campaign"' in page
    assert "pause-campaign" not in page
    assert re.search(r'data-confirm="Cancel “Spring fair”\?', page)
    assert 'id="frozen-audience"' in page
    assert 'data-count="final">80<' in page
    assert "edit-campaign" not in page  # paused campaigns are not editable
    assert "campaign_progress.js" in page


def test_draft_page_shows_live_counts_and_the_checks(login, session, workspace, setup):
    campaign = make(session, workspace, setup)
    setup["template"].variables = ["name", "shoe_size"]
    session.commit()
    page = html.unescape(text(login("marketer").get(f"/marketing/campaigns/{campaign.id}")))
    assert 'id="live-audience"' in page
    assert 'data-count="final">8<' in page
    assert "unknown variables: shoe_size" in page
    assert 'id="edit-campaign"' in page
    assert 'id="delete-campaign"' in page


def test_pause_resume_cancel_buttons(login, session, workspace, setup):
    campaign = make(session, workspace, setup, status=lifecycle.RUNNING)
    browser = login("marketer")
    browser.post(f"/marketing/campaigns/{campaign.id}/pause", data={})
    assert campaigns(session, workspace.id)[0].status == lifecycle.PAUSED
    browser.post(f"/marketing/campaigns/{campaign.id}/cancel", data={})
    assert campaigns(session, workspace.id)[0].status == lifecycle.CANCELLED
    response = browser.post(f"/marketing/campaigns/{campaign.id}/resume", data={})
    assert response.status_code == 302
    assert "cannot become" in text(browser.get(response.headers["Location"]))
    assert campaigns(session, workspace.id)[0].status == lifecycle.CANCELLED


def test_edit_only_while_editable(login, session, workspace, setup):
    campaign = make(session, workspace, setup, status=lifecycle.COMPLETED)
    browser = login("marketer")
    assert browser.get(f"/marketing/campaigns/{campaign.id}/edit").status_code == 302
    assert browser.post(f"/marketing/campaigns/{campaign.id}/edit", data=form(setup)).status_code == 409
    draft = make(session, workspace, setup, name="Editable")
    response = browser.post(f"/marketing/campaigns/{draft.id}/edit", data=form(setup, name="Renamed"))
    assert response.status_code == 302
    assert session.get(Campaign, draft.id).name == "Renamed"


def test_duplicate_and_delete(login, session, workspace, setup):
    campaign = make(session, workspace, setup, status=lifecycle.COMPLETED)
    browser = login("marketer")
    response = browser.post(f"/marketing/campaigns/{campaign.id}/duplicate", data={})
    copy = next(c for c in campaigns(session, workspace.id) if c.id != campaign.id)
    assert response.headers["Location"].endswith(f"/marketing/campaigns/{copy.id}/edit")
    assert copy.name == "Spring fair (copy)"
    browser.post(f"/marketing/campaigns/{campaign.id}/delete", data={})
    browser.post(f"/marketing/campaigns/{copy.id}/delete", data={})
    assert [c.id for c in campaigns(session, workspace.id)] == [campaign.id]


def test_another_workspaces_campaign_is_not_found(login, session, other_workspace, workspace, setup):
    theirs = Campaign(workspace_id=other_workspace.id, name="Theirs", status=lifecycle.RUNNING)
    session.add(theirs)
    session.commit()
    browser = login("marketer")
    assert browser.get(f"/marketing/campaigns/{theirs.id}").status_code == 404
    assert browser.get(f"/marketing/campaigns/{theirs.id}/status").status_code == 404
    assert browser.post(f"/marketing/campaigns/{theirs.id}/pause", data={}).status_code == 404
    assert browser.get("/marketing/campaigns/99999999999").status_code == 404
    session.expire_all()
    assert session.get(Campaign, theirs.id).status == lifecycle.RUNNING
