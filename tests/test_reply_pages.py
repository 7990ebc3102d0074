"""Reply pages: mailbox settings (admins), a campaign's replies and the contact's replies (everyone)."""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import select

from plugin.extension import get_state
from plugin.models import ReplyMailbox
from plugin.sandbox.imap import ImapServer
from tests.test_replies import PASSWORD, mail, make_campaign, our_id, recipient

SETTINGS = "/marketing/replies/mailbox"


@pytest.fixture(scope="module")
def imap():
    with ImapServer(user="replies", password=PASSWORD) as server:
        yield server


def form(imap, folder="INBOX", **extra) -> dict:
    data = {
        "host": imap.host,
        "port": str(imap.port),
        "security": "none",
        "username": imap.user,
        "password": PASSWORD,
        "folder": folder,
        "tag_name": "Replied",
        "match_window_days": "14",
        "notify_owner": "1",
        "enabled": "1",
    }
    data.update(extra)
    return data


def test_settings_are_for_admins_only(login, workspace):
    assert login("marketer").get(SETTINGS).status_code == 403
    assert login("sales").get(SETTINGS).status_code == 403
    page = login("admin").get(SETTINGS)
    assert page.status_code == 200
    assert 'id="reply-empty"' in page.get_data(as_text=True)
    assert login("marketer").post(f"{SETTINGS}/poll").status_code in (400, 403)


def test_save_test_and_poll_from_the_page_password_never_rendered(login, session, workspace, imap, caplog):
    folder = f"P{uuid.uuid4().hex[:8]}"
    imap.create_folder(folder)
    admin = login("admin")
    response = admin.post(SETTINGS, data={**form(imap, folder), "then": "test"})
    assert response.status_code == 302
    page = admin.get(SETTINGS).get_data(as_text=True)
    assert "Connection test passed: 0 messages in " + folder in page
    assert PASSWORD not in page
    assert re.search(r'name="password" value=""', page)
    assert "A password is stored" in page
    mailbox = session.scalar(select(ReplyMailbox).where(ReplyMailbox.workspace_id == workspace.id))
    assert mailbox.tag_name == "Replied"
    assert PASSWORD not in mailbox.password_encrypted
    assert get_state().secrets.decrypt(mailbox.password_encrypted) == PASSWORD

    # saving again without a password keeps the stored one
    assert admin.post(SETTINGS, data={**form(imap, folder), "password": ""}).status_code == 302
    session.expire_all()
    assert get_state().secrets.decrypt(session.get(ReplyMailbox, mailbox.id).password_encrypted) == PASSWORD

    campaign = make_campaign(session, workspace.id, [("amy@example.net", None, None)])
    rec = recipient(session, campaign, "amy@example.net")
    imap.append(mail(sender="amy@example.net", headers={"In-Reply-To": our_id(campaign, rec)}), folder)
    assert admin.post(f"{SETTINGS}/poll").status_code == 302
    page = admin.get(SETTINGS).get_data(as_text=True)
    assert "1 new messages read: 1 replies stored" in page
    assert PASSWORD not in page
    assert PASSWORD not in caplog.text


def test_form_errors_beside_fields(login, workspace):
    admin = login("admin")
    response = admin.post(SETTINGS, data={"host": "http://x", "port": "0", "username": "", "password": ""})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    for name in ("host", "port", "username"):
        assert f'data-error="{name}"' in page
    # a new mailbox needs a password
    response = admin.post(SETTINGS, data={"host": "imap.example.com", "port": "993", "username": "u"})
    assert response.status_code == 422
    assert 'data-error="password"' in response.get_data(as_text=True)


def test_failed_test_is_shown_without_the_password(login, session, workspace, imap):
    admin = login("admin")
    wrong = "definitely-Wrong-77"
    admin.post(SETTINGS, data={**form(imap), "password": wrong, "then": "test"})
    page = admin.get(SETTINGS).get_data(as_text=True)
    assert "Connection test failed" in page
    assert wrong not in page


def test_csrf_required(app, users, workspace):
    from tests.conftest import Browser

    browser = Browser(app.test_client()).login("admin")
    assert browser.client.post(SETTINGS, data={"host": "x"}).status_code == 400


def test_delete_mailbox(login, session, workspace, imap):
    admin = login("admin")
    admin.post(SETTINGS, data=form(imap))
    page = admin.get(SETTINGS).get_data(as_text=True)
    assert "data-confirm" in page
    assert admin.post(f"{SETTINGS}/delete").status_code == 302
    assert session.scalar(select(ReplyMailbox).where(ReplyMailbox.workspace_id == workspace.id)) is None


def test_campaign_replies_page_readable_by_sales_and_scoped(login, session, workspace, other_workspace, imap):
    from plugin import replies
    from plugin.models import Contact

    campaign = make_campaign(session, workspace.id, [("bea@example.net", None, None)], name="Autumn 秋季")
    rec = recipient(session, campaign, "bea@example.net")
    admin = login("admin")
    sales = login("sales")
    empty = sales.get(f"/marketing/campaigns/{campaign.id}/replies").get_data(as_text=True)
    assert 'id="replies-empty"' in empty
    assert "Ask an administrator" in empty

    folder = f"C{uuid.uuid4().hex[:8]}"
    imap.create_folder(folder)
    admin.post(SETTINGS, data=form(imap, folder))
    imap.append(
        mail(
            sender="bea@example.net",
            subject="Re: 秋季 <offer>",
            body="Please call me <b>tomorrow</b>.",
            headers={"In-Reply-To": our_id(campaign, rec)},
        ),
        folder,
    )
    replies.poll(session, workspace.id, secrets=get_state().secrets)

    response = sales.get(f"/marketing/campaigns/{campaign.id}/replies")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Re: 秋季 &lt;offer&gt;" in page  # escaped, readable
    assert "Please call me &lt;b&gt;tomorrow&lt;/b&gt;." in page
    assert 'data-total="1"' in page
    assert "bea@example.net" in sales.get(f"/marketing/campaigns/{campaign.id}/replies?q=tomorrow").get_data(
        as_text=True
    )
    assert 'id="replies-no-match"' in sales.get(
        f"/marketing/campaigns/{campaign.id}/replies?q=nothing-like-it"
    ).get_data(as_text=True)

    # the contact's history in the CRM shows the reply too
    contact_id = session.scalar(select(Contact.id).where(Contact.email == "bea@example.net"))
    history = sales.get(f"/crm/contacts/{contact_id}").get_data(as_text=True)
    assert 'id="contact-replies"' in history
    assert "Please call me &lt;b&gt;tomorrow&lt;/b&gt;." in history
    assert f"/marketing/campaigns/{campaign.id}/replies" in history

    # the tag was added at once
    from plugin.models import ContactTag, Tag

    tag = session.scalar(select(Tag.id).where(Tag.workspace_id == workspace.id, Tag.name == "Replied"))
    assert session.scalar(select(ContactTag.contact_id).where(ContactTag.tag_id == tag)) == contact_id

    # another organization's admin sees neither the campaign nor its replies
    other = login("other")
    assert other.get(f"/marketing/campaigns/{campaign.id}/replies").status_code == 404


def test_replies_page_paging_and_sort(login, session, workspace):
    from plugin.models import Reply

    campaign = make_campaign(session, workspace.id, [("cy@example.net", None, None)])
    rec = recipient(session, campaign, "cy@example.net")
    for n in range(30):
        session.add(
            Reply(
                workspace_id=workspace.id,
                campaign_id=campaign.id,
                recipient_id=rec.id,
                contact_id=rec.contact_id,
                from_email=f"cy{n:02d}@example.net",
                subject=f"Subject {n:02d}",
                text="t",
                message_id=f"m{n}@x",
                source="imap",
                matched_by="address",
            )
        )
    session.commit()
    sales = login("sales")
    first = sales.get(f"/marketing/campaigns/{campaign.id}/replies?sort=from&order=asc").get_data(
        as_text=True
    )
    assert 'data-total="30"' in first
    assert first.index("cy00@example.net") < first.index("cy01@example.net")
    assert "cy29@example.net" not in first
    second = sales.get(f"/marketing/campaigns/{campaign.id}/replies?sort=from&order=asc&page=2").get_data(
        as_text=True
    )
    assert "cy29@example.net" in second
    assert sales.get("/marketing/campaigns/999999/replies").status_code == 404
