"""Reply detection against a real IMAP server on loopback (pymap), and SendCloud route events."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import uuid

import pytest
from sqlalchemy import select

from plugin import counters, replies
from plugin.extension import get_state
from plugin.models import Campaign, CampaignRecipient, Contact, ContactTag, Event, Reply, ReplyMailbox, Tag
from plugin.sandbox.imap import ImapServer
from tests.test_smtp_provider import certs as certs  # the fixture

PASSWORD = "imap-s3cret-Pa55"
DOMAIN = "mail.example.com"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def imap():
    with ImapServer(user="replies", password=PASSWORD) as server:
        yield server


@pytest.fixture
def folder(imap):
    """A fresh folder per test, so tests share one server without seeing each other's mail."""
    name = f"T{uuid.uuid4().hex[:10]}"
    imap.create_folder(name)
    return name


def make_mailbox(session, workspace_id, imap, folder, **extra) -> ReplyMailbox:
    data = {
        "host": imap.host,
        "port": imap.port,
        "security": "none",
        "username": imap.user,
        "password": PASSWORD,
        "folder": folder,
        "tag_name": "",
        "notify_owner": True,
        "match_window_days": 14,
        "enabled": True,
    }
    data.update(extra)
    mailbox = replies.save_mailbox(session, workspace_id, data, secrets=get_state().secrets)
    session.commit()
    return mailbox


def make_campaign(session, workspace_id, people, *, sent_at=None, name="Spring offer") -> Campaign:
    """A sent campaign to ``people`` = [(email, owner_id, provider_message_id)]; contacts created."""
    campaign = Campaign(workspace_id=workspace_id, name=name, status="completed", tracking=False)
    session.add(campaign)
    session.flush()
    for email, owner, provider_id in people:
        contact = session.scalar(
            select(Contact).where(Contact.workspace_id == workspace_id, Contact.email == email)
        )
        if contact is None:
            local, _, domain = email.partition("@")
            contact = Contact(
                workspace_id=workspace_id,
                email=email,
                email_domain=domain,
                email_local=local,
                name=local.title(),
                owner_id=owner,
                custom={},
            )
            session.add(contact)
            session.flush()
        session.add(
            CampaignRecipient(
                workspace_id=workspace_id,
                campaign_id=campaign.id,
                contact_id=contact.id,
                email=email,
                status="delivered",
                sent_at=sent_at or NOW - dt.timedelta(days=1),
                delivered_at=sent_at or NOW - dt.timedelta(days=1),
                provider_message_id=provider_id,
            )
        )
    session.commit()
    return campaign


def recipient(session, campaign, email) -> CampaignRecipient:
    session.expire_all()
    return session.scalar(
        select(CampaignRecipient).where(
            CampaignRecipient.campaign_id == campaign.id, CampaignRecipient.email == email
        )
    )


def our_id(campaign, rec) -> str:
    return f"<mkt.{campaign.id}.{rec.id}@{DOMAIN}>"


def mail(
    *,
    sender="alice@example.net",
    subject="Re: Spring offer",
    body="Yes, please send me a quote.",
    message_id=None,
    headers: dict | None = None,
) -> bytes:
    lines = [
        f"From: Alice <{sender}>",
        "To: replies@example.com",
        f"Subject: {subject}",
        f"Message-ID: <{message_id or uuid.uuid4().hex}@example.net>",
        f"Date: {NOW.strftime('%a, %d %b %Y %H:%M:%S +0000')}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "", body, ""]
    return "\r\n".join(lines).encode("utf-8")


def poll(session, workspace_id, **kw):
    return replies.poll(session, workspace_id, secrets=get_state().secrets, now=NOW, **kw)


def test_in_reply_to_matches_our_message_id_and_marks_nothing_read(session, workspace, imap, folder):
    campaign = make_campaign(session, workspace.id, [("alice@example.net", None, None)])
    rec = recipient(session, campaign, "alice@example.net")
    make_mailbox(session, workspace.id, imap, folder)
    # sent from another address than the campaign's: only the header can match it
    uid = imap.append(
        mail(sender="alice.private@example.org", headers={"In-Reply-To": our_id(campaign, rec)}), folder
    )

    report = poll(session, workspace.id)

    assert (report.fetched, report.stored, report.unmatched) == (1, 1, 0)
    reply = session.scalar(select(Reply).where(Reply.workspace_id == workspace.id))
    assert reply.campaign_id == campaign.id
    assert reply.recipient_id == rec.id
    assert reply.matched_by == "headers"
    assert reply.source == "imap"
    assert reply.subject == "Re: Spring offer"
    assert reply.text == "Yes, please send me a quote."
    assert recipient(session, campaign, "alice@example.net").replied_at is not None
    assert counters.totals(session, campaign.id)["replied"] == 1
    assert session.scalar(select(Event.type).where(Event.recipient_id == rec.id, Event.type == "reply"))
    assert "\\Seen" not in imap.flags(uid, folder)
    assert session.get(ReplyMailbox, session.scalar(select(ReplyMailbox.id))).last_uid == uid


def test_references_match_our_id_and_sendcloud_ids(session, workspace, imap, folder):
    mid = "1700000000000_1234_5678_9.sc-10_0_0_1-inbound"
    campaign = make_campaign(
        session,
        workspace.id,
        [
            ("bob@example.net", None, f"{mid}0$bob@example.net"),
            ("carol@example.net", None, f"{mid}1$carol@example.net"),
            ("dan@example.net", None, None),
        ],
    )
    dan = recipient(session, campaign, "dan@example.net")
    make_mailbox(session, workspace.id, imap, folder)
    # SendCloud's message id part in a Message-ID of its own shape: matched with the sender
    imap.append(
        mail(sender="bob@example.net", headers={"References": f"<x1@a.b> <{mid}@sendcloud.org>"}), folder
    )
    # the emailId itself (exact), sent from an alias
    imap.append(mail(sender="c@alias.example", headers={"References": f"<{mid}1$carol@example.net>"}), folder)
    # our id in the middle of a References chain
    imap.append(
        mail(sender="d@alias.example", headers={"References": f"<y@a.b> {our_id(campaign, dan)} <z@a.b>"}),
        folder,
    )

    report = poll(session, workspace.id)

    assert report.stored == 3, report
    rows = session.execute(select(Reply.from_email, Reply.recipient_id, Reply.matched_by)).all()
    by_sender = {r.from_email: (r.recipient_id, r.matched_by) for r in rows}
    assert by_sender["bob@example.net"] == (recipient(session, campaign, "bob@example.net").id, "headers")
    assert by_sender["c@alias.example"] == (recipient(session, campaign, "carol@example.net").id, "headers")
    assert by_sender["d@alias.example"] == (dan.id, "headers")
    assert counters.totals(session, campaign.id)["replied"] == 3


def test_address_matches_within_window_only_and_latest_send_wins(session, workspace, imap, folder):
    old = make_campaign(
        session,
        workspace.id,
        [("erin@example.net", None, None)],
        sent_at=NOW - dt.timedelta(days=9),
        name="Old",
    )
    new = make_campaign(
        session,
        workspace.id,
        [("erin@example.net", None, None)],
        sent_at=NOW - dt.timedelta(days=2),
        name="New",
    )
    make_campaign(
        session,
        workspace.id,
        [("frank@example.net", None, None)],
        sent_at=NOW - dt.timedelta(days=20),
        name="Far",
    )
    make_mailbox(session, workspace.id, imap, folder, match_window_days=10)
    imap.append(mail(sender="Erin@Example.net", subject="Interested"), folder)
    imap.append(mail(sender="frank@example.net", subject="Late answer"), folder)
    imap.append(mail(sender="stranger@example.org", subject="Hello"), folder)

    report = poll(session, workspace.id)

    assert (report.stored, report.unmatched) == (1, 2)
    reply = session.scalar(select(Reply))
    assert reply.campaign_id == new.id
    assert reply.matched_by == "address"
    assert recipient(session, new, "erin@example.net").replied_at is not None
    assert recipient(session, old, "erin@example.net").replied_at is None


def test_auto_replies_and_bounces_are_ignored(session, workspace, imap, folder):
    campaign = make_campaign(session, workspace.id, [("gina@example.net", None, None)])
    ref = {"In-Reply-To": our_id(campaign, recipient(session, campaign, "gina@example.net"))}
    make_mailbox(session, workspace.id, imap, folder)
    imap.append(mail(sender="gina@example.net", headers={**ref, "Auto-Submitted": "auto-replied"}), folder)
    imap.append(mail(sender="gina@example.net", headers={**ref, "X-Autoreply": "yes"}), folder)
    imap.append(mail(sender="gina@example.net", headers={**ref, "Precedence": "bulk"}), folder)
    imap.append(mail(sender="gina@example.net", subject="Out of Office: back Monday", headers=ref), folder)
    imap.append(
        mail(
            sender="gina@example.net",
            subject="=?utf-8?b?" + base64.b64encode("自动回复：你好".encode()).decode() + "?=",
            headers=ref,
        ),
        folder,
    )
    imap.append(mail(sender="MAILER-DAEMON@mx.example.net", subject="Undelivered", headers=ref), folder)
    report_mail = (
        "From: Mail System <bounces@mx.example.net>\r\nTo: replies@example.com\r\n"
        "Subject: Delivery report\r\n"
        f"Message-ID: <dsn1@mx>\r\nIn-Reply-To: {ref['In-Reply-To']}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nYour mail could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        "Final-Recipient: rfc822; gina@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n"
    )
    imap.append(report_mail, folder)
    # a person's answer saying Auto-Submitted: no is a reply
    imap.append(mail(sender="gina@example.net", headers={**ref, "Auto-Submitted": "no"}), folder)

    report = poll(session, workspace.id)

    assert (report.auto_replies, report.bounces, report.stored) == (5, 2, 1), report
    assert session.scalar(select(Reply.subject)) == "Re: Spring offer"
    assert counters.totals(session, campaign.id)["replied"] == 1


def test_gbk_reply_decoded_and_quoted_history_trimmed(session, workspace, imap, folder):
    campaign = make_campaign(session, workspace.id, [("hua@example.cn", None, None)])
    rec = recipient(session, campaign, "hua@example.cn")
    make_mailbox(session, workspace.id, imap, folder)
    # 喆 and 镕 are in GBK but not in GB2312: clients label such text gb2312 all the same
    subject = "回复：春季报价 喆"
    body = "您好，请发报价单。王镕\r\n\r\n在 2024年3月1日 10:00，Example News 写道：\r\n> 春季优惠\r\n"
    raw = (
        b"From: =?gb2312?B?" + base64.b64encode("王".encode("gbk")) + b"?= <hua@example.cn>\r\n"
        b"To: replies@example.com\r\n"
        b"Subject: =?gb2312?B?" + base64.b64encode(subject.encode("gbk")) + b"?=\r\n"
        b"Message-ID: <gbk1@example.cn>\r\n"
        b"In-Reply-To: " + our_id(campaign, rec).encode() + b"\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=gb2312\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body.encode("gbk")
    )
    imap.append(raw, folder)
    # an HTML-only reply in GBK with the history in a blockquote
    html = "<div>好的，<b>谢谢</b>！</div><blockquote>春季优惠 原文</blockquote>"
    raw_html = (
        b"From: hua@example.cn\r\nTo: replies@example.com\r\nSubject: Re\r\nMessage-ID: <gbk2@example.cn>\r\n"
        b"In-Reply-To: " + our_id(campaign, rec).encode() + b"\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=GBK\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(html.encode("gbk"))
    )
    imap.append(raw_html, folder)

    # a client writing raw GBK bytes into the Subject header, no encoded words
    imap.append(
        b"From: hua@example.cn\r\nTo: replies@example.com\r\nSubject: " + "答复：好".encode("gbk") + b"\r\n"
        b"Message-ID: <gbk3@example.cn>\r\nIn-Reply-To: "
        + our_id(campaign, rec).encode()
        + b"\r\n\r\nOK\r\n",
        folder,
    )

    assert poll(session, workspace.id).stored == 3
    assert session.scalar(select(Reply.subject).where(Reply.message_id == "gbk3@example.cn")) == "答复：好"

    first = session.scalar(select(Reply).where(Reply.message_id == "gbk1@example.cn"))
    assert first.subject == subject
    assert first.text == "您好，请发报价单。王镕"
    second = session.scalar(select(Reply).where(Reply.message_id == "gbk2@example.cn"))
    assert "好的，" in second.text
    assert "谢谢" in second.text
    assert "原文" not in second.text


def test_each_reply_once_across_polls_and_copies(session, workspace, imap, folder):
    campaign = make_campaign(session, workspace.id, [("ivan@example.net", None, None)])
    ref = {"In-Reply-To": our_id(campaign, recipient(session, campaign, "ivan@example.net"))}
    make_mailbox(session, workspace.id, imap, folder)
    first = mail(sender="ivan@example.net", message_id="same-1", headers=ref)
    imap.append(first, folder)
    assert poll(session, workspace.id).stored == 1
    assert poll(session, workspace.id).fetched == 0  # nothing new: nothing fetched again
    imap.append(first, folder)  # the same message delivered twice (e.g. copied back by a client)
    imap.append(
        mail(sender="ivan@example.net", message_id="other-2", body="Second thought", headers=ref), folder
    )

    report = poll(session, workspace.id)

    assert (report.fetched, report.stored, report.duplicates) == (2, 1, 1)
    assert len(session.scalars(select(Reply)).all()) == 2
    # two replies from one recipient: replied counts people, once
    assert counters.totals(session, campaign.id)["replied"] == 1
    assert len(session.scalars(select(Event).where(Event.type == "reply")).all()) == 2


def test_batches_are_bounded_and_resume(session, workspace, imap, folder):
    make_campaign(session, workspace.id, [("jo@example.net", None, None)])
    make_mailbox(session, workspace.id, imap, folder)
    for n in range(5):
        imap.append(mail(sender="jo@example.net", message_id=f"b{n}"), folder)
    fetched = [poll(session, workspace.id, batch=2).fetched for _ in range(4)]
    assert fetched == [2, 2, 1, 0]
    assert len(session.scalars(select(Reply)).all()) == 5


def test_uidvalidity_change_starts_over_without_duplicates(session, workspace, imap, folder):
    make_campaign(session, workspace.id, [("kim@example.net", None, None)])
    mailbox = make_mailbox(session, workspace.id, imap, folder)
    message = mail(sender="kim@example.net", message_id="kept")
    imap.append(message, folder)
    assert poll(session, workspace.id).stored == 1
    session.refresh(mailbox)
    validity = mailbox.uidvalidity
    assert validity == imap.uidvalidity(folder)

    imap.recreate_folder(folder)  # the server renumbers: old UIDs mean nothing now
    imap.append(message, folder)
    imap.append(mail(sender="kim@example.net", message_id="new-one"), folder)
    report = poll(session, workspace.id)

    assert report.reset
    assert (report.fetched, report.stored, report.duplicates) == (2, 1, 1)
    session.refresh(mailbox)
    assert mailbox.uidvalidity == imap.uidvalidity(folder) != validity
    assert sorted(session.scalars(select(Reply.message_id)).all()) == [
        "kept@example.net",
        "new-one@example.net",
    ]


def test_tag_added_owner_notified_and_signal_emitted(session, workspace, imap, folder, caplog):
    campaign = make_campaign(session, workspace.id, [("lena@example.net", "sales-7", None)])
    rec = recipient(session, campaign, "lena@example.net")
    make_mailbox(session, workspace.id, imap, folder, tag_name="Replied  spring", notify_owner=True)
    imap.append(mail(sender="lena@example.net", headers={"In-Reply-To": our_id(campaign, rec)}), folder)
    received = []

    def receiver(sender, **kw):
        received.append(kw)

    replies.reply_received.connect(receiver)
    try:
        with caplog.at_level(logging.INFO, logger="plugin.replies"):
            report = poll(session, workspace.id)
    finally:
        replies.reply_received.disconnect(receiver)

    assert report.stored == 1
    tag = session.scalar(select(Tag).where(Tag.workspace_id == workspace.id, Tag.name == "Replied spring"))
    assert tag is not None
    assert session.scalar(select(ContactTag.contact_id).where(ContactTag.tag_id == tag.id)) == rec.contact_id
    note = session.scalar(select(Event).where(Event.type == "reply_notification"))
    assert note.data["owner_id"] == "sales-7"
    assert note.data["contact_id"] == rec.contact_id
    assert len(received) == 1
    assert received[0]["owner_id"] == "sales-7"
    assert received[0]["campaign_id"] == campaign.id
    assert received[0]["reply_id"] == report.reply_ids[0]
    assert "owner sales-7 notified" in caplog.text


def test_without_tag_or_notification_nothing_extra(session, workspace, imap, folder):
    campaign = make_campaign(session, workspace.id, [("max@example.net", "sales-7", None)])
    rec = recipient(session, campaign, "max@example.net")
    make_mailbox(session, workspace.id, imap, folder, tag_name="", notify_owner=False)
    imap.append(mail(sender="max@example.net", headers={"In-Reply-To": our_id(campaign, rec)}), folder)
    assert poll(session, workspace.id).stored == 1
    assert (
        session.scalar(select(ContactTag.contact_id).where(ContactTag.contact_id == rec.contact_id)) is None
    )
    assert session.scalar(select(Event).where(Event.type == "reply_notification")) is None


def test_another_workspace_mail_never_matches(session, workspace, other_workspace, imap, folder):
    theirs = make_campaign(session, other_workspace.id, [("nina@example.net", None, None)])
    rec = recipient(session, theirs, "nina@example.net")
    make_mailbox(session, workspace.id, imap, folder)
    imap.append(mail(sender="nina@example.net", headers={"In-Reply-To": our_id(theirs, rec)}), folder)
    report = poll(session, workspace.id)
    assert (report.stored, report.unmatched) == (0, 1)
    assert recipient(session, theirs, "nina@example.net").replied_at is None


def test_wrong_password_reported_and_secret_never_logged(session, workspace, imap, folder, caplog):
    make_campaign(session, workspace.id, [("olga@example.net", None, None)])
    mailbox = make_mailbox(session, workspace.id, imap, folder)
    imap.append(mail(sender="olga@example.net"), folder)
    with caplog.at_level(logging.DEBUG):
        assert poll(session, workspace.id).stored == 1
    assert PASSWORD not in caplog.text
    assert PASSWORD not in mailbox.password_encrypted

    wrong = "Wr0ng-pa55-w0rd"
    replies.save_mailbox(
        session,
        workspace.id,
        {
            "host": imap.host,
            "port": imap.port,
            "security": "none",
            "username": imap.user,
            "password": wrong,
            "folder": folder,
            "match_window_days": 14,
            "notify_owner": True,
        },
        secrets=get_state().secrets,
    )
    session.commit()
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        report = poll(session, workspace.id)
    assert report.error
    assert report.error.startswith("IMAP")
    session.refresh(mailbox)
    assert mailbox.last_error == report.error
    assert wrong not in caplog.text
    assert wrong not in (mailbox.last_error or "")
    ok, message = replies.check_connection(mailbox, secrets=get_state().secrets)
    assert not ok
    assert wrong not in message


def test_unreachable_server_reported(session, workspace, imap, folder):
    from tests.conftest import free_port

    make_mailbox(session, workspace.id, imap, folder, port=free_port())
    report = poll(session, workspace.id)
    assert report.error
    assert "connection failed" in report.error


def test_check_connection_counts_messages(session, workspace, imap, folder):
    mailbox = make_mailbox(session, workspace.id, imap, folder)
    imap.append(mail(), folder)
    assert replies.check_connection(mailbox, secrets=get_state().secrets) == (True, f"1 messages in {folder}")


def test_starttls_mailbox(session, workspace, certs, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certs["ca"]))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with ImapServer(password=PASSWORD, cert=certs["cert"], key=certs["key"]) as server:
        campaign = make_campaign(session, workspace.id, [("pia@example.net", None, None)])
        rec = recipient(session, campaign, "pia@example.net")
        make_mailbox(session, workspace.id, server, "INBOX", security="starttls")
        server.append(mail(sender="pia@example.net", headers={"In-Reply-To": our_id(campaign, rec)}))
        report = poll(session, workspace.id)
    assert report.error is None
    assert report.stored == 1


def test_poll_all_polls_due_mailboxes_only(session, workspace, other_workspace, imap, folder):
    make_campaign(session, workspace.id, [("quinn@example.net", None, None)])
    make_mailbox(session, workspace.id, imap, folder)
    other = make_mailbox(session, other_workspace.id, imap, folder)
    other.last_polled_at = NOW - dt.timedelta(minutes=1)
    session.commit()
    imap.append(mail(sender="quinn@example.net"), folder)

    reports = replies.poll_all(session, secrets=get_state().secrets, now=NOW)

    assert list(reports) == [workspace.id]
    assert reports[workspace.id].stored == 1
    assert replies.poll_all(session, secrets=get_state().secrets, now=NOW) == {}


# -- SendCloud inbound route ---------------------------------------------------------------------


def route_fields(**extra) -> dict:
    fields = {
        "event": "route",
        "from": "Rita <rita@example.net>",
        "to": "replies@example.com",
        "subject": "Re: Spring offer",
        "text": "Count me in.\n\nOn Mon, 1 Jan 2024, News wrote:\n> offer",
        "emailId": "1700000000001_1_1_1.sc-inbound0$replies@example.com",
    }
    fields.update(extra)
    return fields


def test_route_event_matched_by_headers(session, workspace):
    campaign = make_campaign(session, workspace.id, [("rita@example.net", "sales-1", None)])
    rec = recipient(session, campaign, "rita@example.net")
    headers = json.dumps({"Message-ID": "<route-1@example.net>", "In-Reply-To": our_id(campaign, rec)})

    reply = replies.handle_route(session, workspace.id, route_fields(headers=headers))
    session.commit()

    assert reply is not None
    assert reply.source == "route"
    assert reply.matched_by == "headers"
    assert reply.text == "Count me in."
    assert reply.message_id == "route-1@example.net"
    assert recipient(session, campaign, "rita@example.net").replied_at is not None
    # the webhook's own call form; the same mail again is not a second reply
    again = replies.handle_route(
        session, workspace_id=workspace.id, fields=route_fields(headers=headers), settings=None
    )
    assert again is None
    assert counters.totals(session, campaign.id)["replied"] == 1


def test_route_event_raw_message_and_address_fallback(session, workspace):
    campaign = make_campaign(session, workspace.id, [("sam@example.net", None, None)])
    raw = mail(sender="sam@example.net", message_id="raw-route").decode()
    reply = replies.handle_route(session, workspace.id, route_fields(raw_message=raw))
    assert reply is not None
    assert reply.campaign_id == campaign.id
    assert reply.matched_by == "address"
    assert reply.message_id == "raw-route@example.net"


def test_route_auto_reply_ignored(session, workspace):
    make_campaign(session, workspace.id, [("rita@example.net", None, None)])
    headers = json.dumps({"Auto-Submitted": "auto-replied", "Message-ID": "<oof@example.net>"})
    assert replies.handle_route(session, workspace.id, route_fields(headers=headers)) is None
    assert replies.handle_route(session, workspace.id, route_fields(subject="自动回复: 休假中")) is None
    assert session.scalar(select(Reply)) is None


def test_trim_quoted_keeps_text_written_below_the_quote():
    assert replies.trim_quoted("> old\n> text\nMy answer") == "My answer"
    assert replies.trim_quoted("Thanks!\n-----Original Message-----\nFrom: x") == "Thanks!"
    assert replies.trim_quoted("好的\n------------------ 原始邮件 ------------------\n发件人: x") == "好的"
    assert (
        replies.trim_quoted("On Mon, 1 Jan 2024, News wrote:\n> x") == "On Mon, 1 Jan 2024, News wrote:\n> x"
    )


class _NoExecutor:
    """The tick's executor when no campaign is due (nothing may be submitted)."""

    def submit(self, campaign_id: int) -> bool:
        raise AssertionError("no campaign should start")

    def active(self, campaign_id: int) -> bool:
        return False


def test_scheduler_tick_reads_the_mailbox(app, session, workspace, imap, folder):
    from plugin.scheduler import tick

    campaign = make_campaign(session, workspace.id, [("tia@example.net", None, None)])
    rec = recipient(session, campaign, "tia@example.net")
    make_mailbox(session, workspace.id, imap, folder)
    imap.append(mail(sender="tia@example.net", headers={"In-Reply-To": our_id(campaign, rec)}), folder)

    tick(app, executor=_NoExecutor())

    assert session.scalar(select(Reply.recipient_id)) == rec.id
    assert session.scalar(select(ReplyMailbox.last_polled_at)) is not None


def test_route_event_posted_to_the_webhook_becomes_a_reply(app, session, workspace):
    """End to end: a signed SendCloud ``route`` post to the webhook URL, stored once however often."""
    from tests.test_webhooks_endpoint import APP_KEY, add_account, path, signed

    campaign = make_campaign(session, workspace.id, [("uma@example.net", None, None)])
    rec = recipient(session, campaign, "uma@example.net")
    add_account(session, workspace.id, APP_KEY)
    headers = json.dumps({"Message-ID": "<hook-1@example.net>", "In-Reply-To": our_id(campaign, rec)})
    form = signed(
        APP_KEY,
        event="route",
        **{
            "from": "Uma <uma@example.net>",
            "subject": "Re: offer",
            "text": "Sounds good",
            "headers": headers,
        },
    )
    client = app.test_client()
    answers = [client.post(path(workspace.id), data=form).status_code for _ in range(3)]

    assert answers == [200, 200, 200]
    stored = session.scalars(select(Reply).where(Reply.workspace_id == workspace.id)).all()
    assert [(r.source, r.recipient_id, r.text) for r in stored] == [("route", rec.id, "Sounds good")]
    assert counters.totals(session, campaign.id)["replied"] == 1


def test_list_unsubscribe_mailto_unsubscribes_and_is_not_a_reply(
    session, workspace, other_workspace, imap, folder
):
    """Clients that only offer the mailto form of List-Unsubscribe mail the reply-to mailbox."""
    from plugin import suppression, tracking

    campaign = make_campaign(session, workspace.id, [("bob@example.net", None, None)])
    rec = recipient(session, campaign, "bob@example.net")
    make_mailbox(session, workspace.id, imap, folder)
    settings = get_state().settings
    token = tracking.unsubscribe_token(settings, workspace.id, rec.id)
    forged = tracking.unsubscribe_token(settings, other_workspace.id, rec.id)  # valid, but another workspace
    imap.append(mail(sender="bob@example.net", subject=tracking.mailto_subject(forged)), folder)
    imap.append(mail(sender="bob@example.net", subject="unsubscribe-1.2.AAAAAAAAAAAAAAAA"), folder)  # bad mac
    imap.append(mail(sender="bob@example.net", subject=tracking.mailto_subject(token)), folder)

    report = poll(session, workspace.id)

    assert report.unsubscribed == 1  # only the valid token of this workspace unsubscribes
    assert report.stored == 2  # the other two are ordinary mail from bob, kept as replies
    assert suppression.is_suppressed(session, workspace.id, "bob@example.net")
    assert recipient(session, campaign, "bob@example.net").unsubscribed_at is not None
