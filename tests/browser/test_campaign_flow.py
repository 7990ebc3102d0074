"""A marketer in headless Chromium writes a template with variables, builds a campaign that
includes two tags and excludes a saved view, and schedules it one minute ahead.  The scheduler
(ticking every second, as in production but faster) starts it on time, the progress bar on the
campaign page moves while the runner paces the batches, and the SendCloud simulator ends up
holding exactly the expected recipients, each with its own name and address substituted."""

from __future__ import annotations

import datetime as dt
import re
import time
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from plugin.demo.models import db
from plugin.extension import get_state
from plugin.models import Campaign, SavedView, utcnow
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from plugin.scheduler import Scheduler
from tests import campaign_kit as kit

from .conftest import ARTIFACTS, log_in

#: The browser's session has no zone of its own, so times are typed in the default zone.
ZONE = ZoneInfo("Asia/Shanghai")
BLOCKED = "blocked.example"


@pytest.fixture
def simulator():
    sim = SendCloudSimulator(check_webhook_urls=False, deliver_delay=3600)
    sim.add_account(kit.API_USER, kit.API_KEY, quota=10_000, balance=Decimal("500"))
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def app_config(app_config, simulator):
    app_config.update(
        MARKETING_SENDCLOUD_API_BASE=simulator.url,
        MARKETING_PROVIDER_TIMEOUT=5.0,
        MARKETING_SCHEDULER_ENABLED=True,
        MARKETING_SCHEDULER_TICK_SECONDS=1,
        # small batches so the progress bar has steps to show at 5 mails per second
        MARKETING_BATCH_SIZE=5,
        MARKETING_PUBLIC_BASE_URL="http://127.0.0.1:5000",
    )
    return app_config


@pytest.fixture
def scheduler(app, live_server):
    """The scheduler as ``start_scheduler_if_enabled`` starts it, stopped by the test (not at exit,
    when this test's database is gone)."""
    assert get_state().settings.scheduler_enabled
    running = Scheduler(app).start()
    yield running
    running.stop()


@pytest.fixture
def audience(workspace):
    """fair: user0-19; web: user15-34 (overlapping 15-19); fair too, but excluded by the view:
    five addresses at blocked.example.  Expected: user0-34@example.net, once each."""
    session = db.session
    kit.sendcloud_account(session, workspace.id)
    kit.sender(session, workspace.id)
    kit.contacts(session, workspace.id, 15, tags=["fair"])
    kit.contacts(session, workspace.id, 5, tags=["fair", "web"], start=15)
    kit.contacts(session, workspace.id, 15, tags=["web"], start=20)
    kit.contacts(session, workspace.id, 5, tags=["fair"], start=100, domain=BLOCKED)
    view = SavedView(
        workspace_id=workspace.id,
        name="Blocked domain",
        rules={
            "match": "all",
            "rules": [{"field": "email_domain", "op": "in", "value": ["blocked.example"]}],
        },
    )
    session.add(view)
    session.commit()
    return {
        "fair": kit.tag_id(session, workspace.id, "fair"),
        "web": kit.tag_id(session, workspace.id, "web"),
        "view": view.id,
        "expected": {f"user{i}@example.net": f"Name{i}" for i in range(35)},
    }


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"campaign-{name}.png"), full_page=True)


def progress_value(page) -> tuple[int, int] | None:
    """(sent, total) from the bar, or None while the page reloads after a status change."""
    try:
        bar = page.locator("#progress-bar")
        return int(bar.get_attribute("aria-valuenow", timeout=1000)), int(
            bar.get_attribute("aria-valuemax", timeout=1000)
        )
    except Exception:
        return None


def test_scheduled_campaign_starts_on_time_and_reaches_exactly_its_audience(
    page, users, workspace, audience, simulator, scheduler
):
    log_in(page, "marketer")

    # 1. a template with variables, written in the template editor
    page.goto("/marketing/templates/new")
    page.fill("#tpl-name", "Spring offer")
    page.fill("#tpl-subject", "Spring offer for {FULLNAME}")
    page.fill("#tpl-html", "<p>Dear {name|friend},</p><p>this offer was sent to {RECIPIENTS}.</p>")
    page.click("#save-template")
    page.wait_for_url(re.compile(r"/marketing/templates/\d+$"))
    assert page.locator("#form-error, [data-error]").count() == 0

    # 2. the campaign: two tags in, one view out, the live count agrees
    page.goto("/marketing/campaigns/new")
    page.fill("#name", "Spring fair follow-up")
    page.check(f'input[name="include_tags"][value="{audience["fair"]}"]')
    page.check(f'input[name="include_tags"][value="{audience["web"]}"]')
    page.check(f'input[name="exclude_views"][value="{audience["view"]}"]')
    page.wait_for_selector('#audience-counts [data-count="final"]:text-is("35")')
    assert page.inner_text('#audience-counts [data-count="excluded"]') == "5"
    page.check('input[name="template_ids"]')
    page.wait_for_selector("#forecast:not([hidden])")
    page.check("#send_mode_at")
    send_at = (utcnow() + dt.timedelta(minutes=1)).replace(microsecond=0)
    page.fill("#send_at", send_at.astimezone(ZONE).strftime("%Y-%m-%dT%H:%M:%S"))
    page.fill("#send_rate", "5")
    shot(page, "form")
    # Focus first: Chrome scrolls the page when focus leaves the number input, and a click
    # whose mouseup lands after that scroll would miss the button.
    page.focus("#submit-campaign")
    page.click("#submit-campaign")
    page.wait_for_url(re.compile(r"/marketing/campaigns/\d+$"))
    assert page.locator('.page-head [data-status="scheduled"]').count() == 1
    campaign = db.session.scalar(select(Campaign).where(Campaign.workspace_id == workspace.id))
    assert campaign.send_at == send_at

    # 3. it starts on time, and the bar moves while it sends
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        value = progress_value(page)
        if value is not None and (not seen or seen[-1] != value):
            seen.append(value)
        if value is not None and value[1] and value[0] == value[1]:
            break
        page.wait_for_timeout(300)
    page.wait_for_selector('.page-head [data-status="completed"]', timeout=30_000)
    shot(page, "completed")
    db.session.expire_all()
    campaign = db.session.get(Campaign, campaign.id)
    lateness = (campaign.started_at - send_at).total_seconds()
    assert 0 <= lateness < 3, lateness
    assert seen[-1] == (35, 35)
    assert any(0 < sent < 35 for sent, _ in seen), seen

    # 4. the simulator holds exactly the audience, with the variables substituted per recipient
    mails = [m for m in simulator.simulator.mails() if m.api_user == kit.API_USER]
    assert sorted(m.recipient for m in mails) == sorted(audience["expected"])
    for mail in mails:
        name = audience["expected"][mail.recipient]
        assert mail.subject == f"Spring offer for {name}"
        assert f"Dear {name}," in mail.html
        assert f"sent to {mail.recipient}." in mail.html
        assert "%" not in mail.html
    assert campaign.sent == 35
    assert campaign.audience_counts["excluded"] == 5

    # 5. the list shows it finished, with its full bar
    page.goto("/marketing/campaigns")
    row = page.locator(f'.campaign-row[data-id="{campaign.id}"]')
    assert row.get_attribute("data-status") == "completed"
    assert row.locator('[role="progressbar"]').get_attribute("aria-valuenow") == "35"
    shot(page, "list")
