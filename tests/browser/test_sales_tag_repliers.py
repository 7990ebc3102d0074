"""A sales user in headless Chromium opens a finished campaign's statistics, follows the replied
figure to the recipients who replied, tags them in the CRM, and a campaign that excludes that tag
then counts exactly that many fewer recipients.

The replies are real mail delivered by the IMAP test server (pymap on loopback) and read by the
plugin's own poller (:func:`plugin.replies.poll`): three answers to the campaign, plus an
out-of-office reply and a stranger's mail that must not count.  The campaign's send is written
as the runner leaves it (recipients delivered, counters bumped), not re-run here.

Creating a campaign needs ``campaigns.write``, which sales do not have, so the last step is the
marketer's, in the same browser.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from plugin import counters, replies
from plugin.demo.models import db
from plugin.extension import get_state
from plugin.models import Campaign, CampaignRecipient, Contact, ContactTag, Tag, utcnow
from plugin.sandbox.imap import ImapServer
from tests import campaign_kit as kit

from .conftest import ARTIFACTS, log_in, submit

PASSWORD = "imap-s3cret-Pa55"
TAG = "replied spring"
REPLIERS = ("user2@example.net", "user5@example.net", "user9@example.net")


@pytest.fixture(scope="module")
def imap():
    with ImapServer(user="replies", password=PASSWORD) as server:
        yield server


def sent_campaign(session, workspace_id: int) -> Campaign:
    """A completed campaign to the 12 contacts tagged ``fair``, as the runner leaves it."""
    account = kit.sendcloud_account(session, workspace_id)
    sender = kit.sender(session, workspace_id)
    template = kit.template(session, workspace_id)
    contact_ids = kit.contacts(session, workspace_id, 12, tags=["fair"])
    sent_at = utcnow() - dt.timedelta(days=1)
    campaign = Campaign(
        workspace_id=workspace_id,
        name="Spring fair",
        status="completed",
        account_id=account.id,
        audience={"include_tags": [kit.tag_id(session, workspace_id, "fair")]},
        template_ids=[template.id],
        sender_ids=[sender.id],
        total=12,
        sent=12,
        started_at=sent_at,
        completed_at=sent_at + dt.timedelta(minutes=5),
        frozen_at=sent_at,
    )
    session.add(campaign)
    session.flush()
    for contact_id in contact_ids:
        email = session.scalar(select(Contact.email).where(Contact.id == contact_id))
        session.add(
            CampaignRecipient(
                workspace_id=workspace_id,
                campaign_id=campaign.id,
                contact_id=contact_id,
                email=email,
                template_id=template.id,
                sender_id=sender.id,
                status="delivered",
                sent_at=sent_at,
                delivered_at=sent_at + dt.timedelta(seconds=20),
            )
        )
        for metric in ("submitted", "sent", "delivered"):
            counters.bump(
                session,
                workspace_id=workspace_id,
                campaign_id=campaign.id,
                metric=metric,
                at=sent_at,
                template_id=template.id,
                sender_id=sender.id,
                domain="example.net",
            )
    session.commit()
    return campaign


def reply_mail(sender: str, in_reply_to: str, *, subject: str = "Re: Spring fair", extra: str = "") -> bytes:
    now = dt.datetime.now(dt.UTC)
    lines = [
        f"From: <{sender}>",
        "To: replies@mail.example.com",
        f"Subject: {subject}",
        f"Message-ID: <{uuid.uuid4().hex}@example.net>",
        f"In-Reply-To: {in_reply_to}",
        f"Date: {now.strftime('%a, %d %b %Y %H:%M:%S +0000')}",
        *([extra] if extra else []),
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "请报价，谢谢。",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")


def deliver_replies(session, workspace_id: int, campaign: Campaign, imap: ImapServer) -> None:
    """Three replies, an auto-reply and an unrelated mail into the mailbox; the poller reads them."""
    folder = f"T{uuid.uuid4().hex[:10]}"
    imap.create_folder(folder)
    replies.save_mailbox(
        session,
        workspace_id,
        {
            "host": imap.host,
            "port": imap.port,
            "security": "none",
            "username": imap.user,
            "password": PASSWORD,
            "folder": folder,
            "tag_name": "",
            "notify_owner": False,
            "match_window_days": 14,
            "enabled": True,
        },
        secrets=get_state().secrets,
    )
    session.commit()
    rows = dict(
        session.execute(
            select(CampaignRecipient.email, CampaignRecipient.id).where(
                CampaignRecipient.campaign_id == campaign.id
            )
        ).all()
    )
    for email in REPLIERS:
        imap.append(reply_mail(email, f"<mkt.{campaign.id}.{rows[email]}@mail.example.com>"), folder)
    out_of_office = f"<mkt.{campaign.id}.{rows['user0@example.net']}@mail.example.com>"
    imap.append(
        reply_mail(
            "user0@example.net",
            out_of_office,
            subject="自动回复: Spring fair",
            extra="Auto-Submitted: auto-replied",
        ),
        folder,
    )
    imap.append(reply_mail("stranger@elsewhere.example", "<unknown@elsewhere.example>"), folder)
    replies.poll(session, workspace_id, secrets=get_state().secrets)
    session.expire_all()


def test_sales_tags_the_repliers_and_an_exclusion_drops_exactly_them(page, workspace, users, imap):
    session = db.session
    campaign = sent_campaign(session, workspace.id)
    deliver_replies(session, workspace.id, campaign, imap)
    replied = session.scalars(
        select(CampaignRecipient.email).where(
            CampaignRecipient.campaign_id == campaign.id, CampaignRecipient.replied_at.is_not(None)
        )
    ).all()
    assert sorted(replied) == list(REPLIERS)

    log_in(page, "sales")
    page.goto(f"/marketing/campaigns/{campaign.id}/stats")
    assert page.inner_text('[data-metric="replied"] .value').strip() == "3"
    expect(page.locator("#funnel-chart")).to_have_attribute("data-rendered", "1")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "sales_campaign_stats.png"), full_page=True)
    page.click('[data-drill="replied"]')
    page.wait_for_url(f"**/campaigns/{campaign.id}/recipients?filter=replied")
    assert sorted(
        page.locator("tr.recipient-row").evaluate_all("rows => rows.map(r => r.dataset.email)")
    ) == list(REPLIERS)
    page.check("#check-page")
    assert page.inner_text("#checked-count") == "3"
    page.fill("#bulk-tag", TAG)
    submit(page, "#bulk-add-tag")
    assert "replied spring" in page.inner_text(".flash")
    page.screenshot(path=str(ARTIFACTS / "sales_tagged_repliers.png"), full_page=True)

    submit(page, '.plugin-nav a[href="/marketing/stats"]')
    assert page.inner_text('#range-figures [data-total="total"]').strip() == "12"
    expect(page.locator("#account-chart")).to_have_attribute("data-rendered", "1")
    page.screenshot(path=str(ARTIFACTS / "sales_account_stats.png"), full_page=True)

    tag = session.scalar(select(Tag).where(Tag.workspace_id == workspace.id, Tag.name == TAG))
    members = session.scalars(
        select(Contact.email)
        .join(ContactTag, ContactTag.contact_id == Contact.id)
        .where(ContactTag.tag_id == tag.id)
    ).all()
    assert sorted(members) == list(REPLIERS)

    page.context.clear_cookies()
    log_in(page, "marketer")
    page.goto("/marketing/campaigns/new")
    fair = kit.tag_id(session, workspace.id, "fair")
    page.check(f'input[name="include_tags"][value="{fair}"]')
    page.wait_for_selector('#audience-counts [data-count="final"]:text-is("12")')
    page.check(f'input[name="exclude_tags"][value="{tag.id}"]')
    page.wait_for_selector('#audience-counts [data-count="final"]:text-is("9")')
    assert page.inner_text('#audience-counts [data-count="excluded"]') == "3"
    assert page.locator("#window-note").is_hidden()

    # A custom send count: the suppressed and invalid figures cover the window only, and the
    # form says how many contacts fall outside it (else "suppressed 0" reads as "none at all").
    page.check("#custom_count")
    page.fill("#skip_count", "4")
    page.wait_for_selector('#audience-counts [data-count="final"]:text-is("5")')
    page.wait_for_selector("#window-note:not([hidden])")
    assert page.inner_text("#window-note").startswith("4 ")  # the count, in the page language
