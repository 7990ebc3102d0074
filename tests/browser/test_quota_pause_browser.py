"""A campaign larger than the day's remaining quota, seen in headless Chromium: it pauses with
the reason a user can read ("daily quota used up, resumes tomorrow 00:00"), and after the
provider's day rolls over it resumes by itself and finishes: every recipient exactly once."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal

import pytest

from plugin import quota_sync
from plugin.campaigns import runner
from plugin.demo.models import db
from plugin.models import Campaign
from plugin.sandbox.sendcloud import SendCloudSimulator, SimulatorServer
from tests import campaign_kit as kit

from .conftest import ARTIFACTS, log_in

QUOTA = 120
SIZE = 300


@pytest.fixture
def simulator():
    sim = SendCloudSimulator(check_webhook_urls=False, deliver_delay=3600)
    sim.add_account(kit.API_USER, kit.API_KEY, quota=QUOTA, balance=Decimal("500"))
    with SimulatorServer(sim) as server:
        yield server


@pytest.fixture
def app_config(app_config, simulator):
    app_config.update(MARKETING_SENDCLOUD_API_BASE=simulator.url, MARKETING_SEND_RATE=0)
    return app_config


def test_quota_pause_is_explained_and_the_campaign_resumes_the_next_day(
    app, users, page, workspace, simulator
):
    session = db.session
    account = kit.sendcloud_account(session, workspace.id)
    campaign = kit.campaign(
        session,
        workspace.id,
        account=account,
        template=kit.template(session, workspace.id),
        sender=kit.sender(session, workspace.id),
        include_tags=[
            kit.contacts(session, workspace.id, SIZE, tags=["all"])
            and kit.tag_id(session, workspace.id, "all")
        ],
    )
    # 18:00 in Beijing: the quota comes back at 00:00 Beijing time, six hours later.
    clock = [dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)]
    ctx = runner.context_from_app(app, clock=lambda: clock[0])
    runner.start(session, campaign.id, ctx)
    assert runner.run_campaign(session, campaign.id, ctx) == runner.BLOCKED

    log_in(page, "marketer")
    page.goto(f"/marketing/campaigns/{campaign.id}")
    reason = page.locator("#pause-reason")
    reason.wait_for(state="visible")
    text = reason.inner_text()
    assert "每日额度已用完" in text or "今日额度已用完" in text
    assert "00:00" in text
    page.screenshot(path=str(ARTIFACTS / "campaign-quota-paused.png"), full_page=True)
    assert len(simulator.simulator.mails()) == QUOTA

    # The provider's day rolls over; the next sync shows room and the campaign resumes itself.
    simulator.simulator.roll_day()
    clock[0] += dt.timedelta(hours=6, minutes=1)
    quota_sync.sync_account(session, workspace.id, account, ctx.provider(account, "batch"))
    assert runner.resume_if_possible(session, campaign.id, ctx) is True
    outcome = runner.run_campaign(session, campaign.id, ctx)
    while outcome == runner.BLOCKED:  # one more provider day for the rest
        simulator.simulator.roll_day()
        clock[0] += dt.timedelta(days=1)
        quota_sync.sync_account(session, workspace.id, account, ctx.provider(account, "batch"))
        assert runner.resume_if_possible(session, campaign.id, ctx) is True
        outcome = runner.run_campaign(session, campaign.id, ctx)
    assert outcome == runner.DONE
    ctx.close()

    page.reload()
    page.locator("#pause-reason").wait_for(state="hidden")
    page.screenshot(path=str(ARTIFACTS / "campaign-quota-resumed.png"), full_page=True)
    counts = Counter(m.recipient for m in simulator.simulator.mails())
    assert len(counts) == SIZE  # no missing mail
    assert set(counts.values()) == {1}  # no duplicate
    session.expire_all()
    assert session.get(Campaign, campaign.id).status == "completed"
