"""Senders after the setup wizard: a second sender on the bound domain, its Reply-To confirmed
through the mail the trigger API_USER sends, the default switched, deletion refused while a
campaign names the sender.  Real wizard steps against the SendCloud simulator and the DNS
responder on loopback; pages through the test client with CSRF and roles."""

from __future__ import annotations

import re

import campaign_kit as kit
import pytest
from sqlalchemy import select
from test_setup_wizard import (  # noqa: F401 - fixtures used by name
    DOMAIN,
    SENDER,
    _english_messages,
    app_config,
    dns_server,
    simulator,
    through_api_users,
)

from plugin import senders
from plugin.errors import InvalidTransition
from plugin.extension import get_state
from plugin.models import Sender, utcnow
from plugin.setup_wizard import confirm_reply_to

EVENTS = {
    "from_address": f"Events@{DOMAIN}",
    "from_name": "Example Events",
    "reply_to": "events-team@example.com",
    "company_name": "Example Ltd.",
    "postal_address": "1 Example Road, Shanghai",
}


@pytest.fixture
def wizard(session, workspace, dns_server):  # noqa: F811 - the imported fixture
    wizard = through_api_users(session, workspace.id, dns_server)
    wizard.submit_sender(**SENDER)
    session.commit()
    return wizard


def test_a_second_sender_follows_the_wizards_rules(session, workspace, wizard):
    second = senders.save_sender(session, workspace.id, EVENTS)
    session.commit()
    assert second.from_address == f"events@{DOMAIN}"  # normalized like every address
    assert (second.is_default, wizard.sender().is_default) == (False, True)
    assert senders.needs_confirmation_mail(second)

    with pytest.raises(senders.SenderErrors) as caught:
        senders.save_sender(
            session,
            workspace.id,
            {**EVENTS, "from_address": "events@elsewhere.example", "company_name": " ", "reply_to": "x"},
        )
    errors = caught.value.errors
    assert set(errors) == {"from_address", "company_name", "reply_to"}
    assert DOMAIN in errors["from_address"]
    session.rollback()
    with pytest.raises(senders.SenderErrors) as only_company:  # a good address is not blamed
        senders.save_sender(session, workspace.id, {**EVENTS, "company_name": ""})
    assert set(only_company.value.errors) == {"company_name"}
    session.rollback()
    with pytest.raises(senders.SenderErrors) as taken:
        senders.save_sender(session, workspace.id, {**EVENTS, "from_address": SENDER["from_address"].upper()})
    assert "already a sender" in taken.value.errors["from_address"]
    session.rollback()

    with pytest.raises(InvalidTransition, match="Confirm the reply-to"):  # trigger mail uses it
        senders.make_default(session, workspace.id, second.id)
    second.reply_to_verified_at = utcnow()
    session.commit()
    senders.make_default(session, workspace.id, second.id)
    session.commit()
    defaults = session.scalars(select(Sender.from_address).where(Sender.is_default.is_(True))).all()
    assert defaults == [second.from_address]

    # A mailbox the workspace confirmed already is confirmed for a new sender too: no second mail.
    third = senders.save_sender(session, workspace.id, {**EVENTS, "from_address": f"sales@{DOMAIN}"})
    assert third.reply_to_verified_at is not None
    assert not senders.needs_confirmation_mail(third)


def test_deleting_is_refused_for_the_default_and_for_a_sender_a_campaign_names(session, workspace, wizard):
    first = wizard.sender()
    second = senders.save_sender(session, workspace.id, EVENTS)
    third = senders.save_sender(session, workspace.id, {**EVENTS, "from_address": f"sales@{DOMAIN}"})
    session.commit()
    with pytest.raises(InvalidTransition, match="default"):
        senders.delete_sender(session, workspace.id, first.id)
    account = kit.sendcloud_account(session, workspace.id, name="Other")
    template = kit.template(session, workspace.id)
    kit.contacts(session, workspace.id, 2, tags=["fair"])
    campaign = kit.campaign(
        session,
        workspace.id,
        account=account,
        sender=second,
        template=template,
        include_tags=[kit.tag_id(session, workspace.id, "fair")],
    )
    with pytest.raises(InvalidTransition, match=re.escape(campaign.name)):
        senders.delete_sender(session, workspace.id, second.id)
    senders.delete_sender(session, workspace.id, third.id)
    session.commit()
    assert sorted(s.from_address for s in senders.list_senders(session, workspace.id)) == sorted(
        [first.from_address, second.from_address]
    )


def test_the_page_adds_a_sender_and_mails_its_reply_to_a_confirmation(
    login,
    session,
    workspace,
    wizard,
    simulator,  # noqa: F811 - the imported fixture
):
    admin = login("admin")
    original = wizard.sender().id
    listing = admin.get("/marketing/senders")
    assert listing.status_code == 200
    assert SENDER["from_address"] in listing.get_data(as_text=True)

    bad = admin.post("/marketing/senders/new", data={**EVENTS, "from_address": "events@elsewhere.example"})
    assert bad.status_code == 422
    html = bad.get_data(as_text=True)
    assert 'data-error="from_address"' in html
    assert "Example Events" in html  # what was typed comes back

    saved = admin.post("/marketing/senders/new", data=dict(EVENTS))
    assert saved.status_code == 302
    sender = session.scalar(select(Sender).where(Sender.from_address == f"events@{DOMAIN}"))
    assert sender is not None
    mails = [m for m in simulator.simulator.mails() if m.recipient == EVENTS["reply_to"]]
    assert len(mails) == 1
    link = re.search(r"/confirm-reply-to/([A-Za-z0-9._-]+)", mails[0].html).group(1)
    confirm_reply_to(session, get_state().settings, link)
    session.commit()
    session.refresh(sender)
    assert sender.reply_to_verified_at is not None
    page = admin.get("/marketing/senders").get_data(as_text=True)
    assert page.count('data-reply-to="verified"') == 1  # the wizard's own is still waiting

    admin.post(f"/marketing/senders/{sender.id}/default")
    session.expire_all()
    assert session.get(Sender, sender.id).is_default
    assert admin.post(f"/marketing/senders/{original}/delete").status_code == 302
    assert session.scalar(select(Sender).where(Sender.from_address == SENDER["from_address"])) is None


@pytest.mark.parametrize("role", ["marketer", "sales"])
def test_only_admins_reach_the_senders_pages(login, workspace, wizard, role):
    browser = login(role)
    sender_id = wizard.sender().id
    assert browser.get("/marketing/senders").status_code == 403
    assert browser.post("/marketing/senders/new", data=dict(EVENTS)).status_code == 403
    for action in ("default", "resend", "delete"):
        assert browser.post(f"/marketing/senders/{sender_id}/{action}").status_code == 403


def test_posts_need_the_csrf_token_and_other_workspaces_see_nothing(login, workspace, wizard):
    admin = login("admin")
    assert admin.client.post("/marketing/senders/new", data=dict(EVENTS)).status_code == 400
    other = login("other")
    sender_id = wizard.sender().id
    assert other.get(f"/marketing/senders/{sender_id}").status_code == 404
    assert other.post(f"/marketing/senders/{sender_id}/delete").status_code == 404


def test_without_a_bound_domain_the_page_points_to_the_wizard(login, workspace):
    admin = login("admin")
    page = admin.get("/marketing/senders").get_data(as_text=True)
    assert 'id="senders-no-domain"' in page
    assert admin.get("/marketing/senders/new").headers["Location"].endswith("/marketing/senders")
    assert "/marketing/setup" in page
