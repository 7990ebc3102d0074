"""Recipients drill-down: filters by outcome and engagement (skip reasons too), search, sort and
paging; bulk tagging of the checked rows or of everyone matching (sales may), CSV export with a
BOM (streamed, Chinese intact, formulas defused), the unsubscribe tab, and a follow-up draft to
the selection through a new tag; roles, CSRF and workspace isolation."""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import html
import io
import re

import campaign_kit as kit
import pytest
from sqlalchemy import insert, select, update

from plugin.csv_export import safe_cell
from plugin.models import Campaign, CampaignRecipient, ContactTag, Tag

T0 = dt.datetime(2024, 3, 1, 2, 0, tzinfo=dt.UTC)


def text(response) -> str:
    return response.get_data(as_text=True)


def emails(body: str) -> list[str]:
    return re.findall(r'<tr class="recipient-row" data-id="\d+" data-email="([^"]+)"', body)


def ids_of(body: str) -> dict[str, int]:
    return {
        e: int(i)
        for i, e in re.findall(r'<tr class="recipient-row" data-id="(\d+)" data-email="([^"]+)"', body)
    }


@pytest.fixture
def sent(session, workspace):
    """120 recipients of a finished campaign ``春季展会``: user0-119@example.net.

    delivered: 0-99; opened: 0-39; clicked: 0-9; replied: 3, 5, 7; machine open only: 40-44;
    unsubscribed: 50-51; complained: 52; bounced: 100-104; invalid: 105-109;
    skipped: 110-114 (suppressed) and 115-119 (invalid_address).
    """
    contact_ids = kit.contacts(session, workspace.id, 120, tags=["fair"])
    campaign = Campaign(workspace_id=workspace.id, name="春季展会", status="completed", total=110, sent=110)
    session.add(campaign)
    session.flush()
    rows = []
    for i, contact_id in enumerate(contact_ids):
        row = {
            "workspace_id": workspace.id,
            "campaign_id": campaign.id,
            "contact_id": contact_id,
            "email": f"user{i}@example.net",
            "status": "delivered",
            "reason": None,
            "sent_at": T0 + dt.timedelta(minutes=i),
            "delivered_at": None,
            "opened_at": None,
            "machine_opened_at": None,
            "clicked_at": None,
            "replied_at": None,
            "unsubscribed_at": None,
            "complained_at": None,
        }
        if i < 100:
            row["delivered_at"] = T0 + dt.timedelta(minutes=i, seconds=30)
        if i < 40:
            row["opened_at"] = T0 + dt.timedelta(hours=1, minutes=i)
        if i < 10:
            row["clicked_at"] = T0 + dt.timedelta(hours=2, minutes=i)
        if i in (3, 5, 7):
            row["replied_at"] = T0 + dt.timedelta(hours=5, minutes=i)
        if 40 <= i < 45:
            row["machine_opened_at"] = T0 + dt.timedelta(minutes=i, seconds=31)
        if i in (50, 51):
            row["unsubscribed_at"] = T0 + dt.timedelta(days=1, minutes=i)
        if i == 52:
            row["complained_at"] = T0 + dt.timedelta(days=1)
        if 100 <= i < 105:
            row.update(status="bounced", reason="mailbox full")
        elif 105 <= i < 110:
            row.update(status="invalid", reason="550 no such user")
        elif 110 <= i < 115:
            row.update(status="skipped", reason="suppressed", sent_at=None)
        elif i >= 115:
            row.update(status="skipped", reason="invalid_address", sent_at=None)
        rows.append(row)
    session.execute(insert(CampaignRecipient), rows)
    session.commit()
    return campaign


def url(campaign, **query) -> str:
    base = f"/marketing/campaigns/{campaign.id}/recipients"
    if not query:
        return base
    return base + "?" + "&".join(f"{k}={v}" for k, v in query.items())


def tagged(session, workspace_id: int, name: str) -> set[str]:
    tag = session.scalar(select(Tag).where(Tag.workspace_id == workspace_id, Tag.name == name))
    if tag is None:
        return set()
    from plugin.models import Contact

    return set(
        session.scalars(
            select(Contact.email)
            .join(ContactTag, ContactTag.contact_id == Contact.id)
            .where(ContactTag.tag_id == tag.id)
        )
    )


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        ("replied", {3, 5, 7}),
        ("clicked", set(range(10))),
        ("opened", set(range(40))),
        ("machine_opened", set(range(40, 45))),
        ("bounced", set(range(100, 105))),
        ("invalid", set(range(105, 110))),
        ("unsubscribed", {50, 51}),
        ("complained", {52}),
    ],
)
def test_filters(login, sent, filter_, expected):
    body = text(login("sales").get(url(sent, filter=filter_)))
    assert set(emails(body)) == {f"user{i}@example.net" for i in expected}
    assert f'data-total="{len(expected)}"' in body


def test_skip_reason_filter_and_search(login, sent):
    browser = login("sales")
    body = text(browser.get(url(sent, filter="skipped")))
    assert len(emails(body)) == 10
    assert re.search(r'<option value="invalid_address">invalid_address \(5\)', body)
    body = text(browser.get(url(sent, filter="skipped", reason="suppressed")))
    assert set(emails(body)) == {f"user{i}@example.net" for i in range(110, 115)}
    body = text(browser.get(url(sent, q="USER11")))  # search ignores case
    assert set(emails(body)) == {"user11@example.net", *(f"user{i}@example.net" for i in range(110, 120))}
    body = text(browser.get(url(sent, q="%")))  # a wildcard is a character, not "anything"
    assert emails(body) == []
    assert 'id="recipients-empty"' in body


def test_sort_and_paging(login, sent):
    browser = login("sales")
    first = text(browser.get(url(sent)))
    assert len(emails(first)) == 50
    assert 'data-total="120"' in first
    page3 = emails(text(browser.get(url(sent, page=3))))
    assert len(page3) == 20
    everyone = emails(first) + emails(text(browser.get(url(sent, page=2)))) + page3
    assert len(set(everyone)) == 120
    assert everyone == sorted(everyone)
    latest_reply_first = emails(
        text(browser.get(url(sent, filter="replied", sort="replied_at", order="desc")))
    )
    assert latest_reply_first == ["user7@example.net", "user5@example.net", "user3@example.net"]


def test_chips_count_from_the_counters_and_the_unsubscribe_tab(login, sent):
    body = text(login("sales").get(url(sent, filter="unsubscribed", sort="unsubscribed_at", order="desc")))
    assert 'id="tab-unsubscribes" class="active"' in body or re.search(
        r'class="active"[^>]*id="tab-unsubscribes"', body
    )
    assert 'data-col="unsubscribed_at"' in body
    assert emails(body) == ["user51@example.net", "user50@example.net"]


def test_sales_tags_checked_rows(login, session, workspace, sent):
    browser = login("sales")
    ids = ids_of(text(browser.get(url(sent, filter="replied"))))
    response = browser.post(
        url(sent),
        data={
            "action": "add_tag",
            "scope": "selected",
            "ids": [ids["user3@example.net"], ids["user5@example.net"]],
            "tag": "  replied  fair ",
            "filter": "replied",
        },
    )
    assert response.status_code == 302
    assert response.headers["Location"].endswith(url(sent, filter="replied"))
    assert tagged(session, workspace.id, "replied fair") == {"user3@example.net", "user5@example.net"}
    assert "2 contacts tagged" in text(browser.get(response.headers["Location"]))


def test_tag_everyone_matching_then_remove(login, session, workspace, sent):
    browser = login("sales")
    response = browser.post(
        url(sent), data={"action": "add_tag", "scope": "all", "tag": "clicked", "filter": "clicked"}
    )
    assert response.status_code == 302
    assert tagged(session, workspace.id, "clicked") == {f"user{i}@example.net" for i in range(10)}
    response = browser.post(
        url(sent), data={"action": "remove_tag", "scope": "all", "tag": "clicked", "filter": "replied"}
    )
    assert response.status_code == 302
    assert tagged(session, workspace.id, "clicked") == {f"user{i}@example.net" for i in range(10)} - {
        "user3@example.net",
        "user5@example.net",
        "user7@example.net",
    }


def test_bulk_errors_are_shown_beside_the_field(login, sent):
    browser = login("sales")
    response = browser.post(url(sent), data={"action": "add_tag", "scope": "all", "tag": "  "})
    assert response.status_code == 422
    assert re.search(r'id="bulk-tag-error">Enter a tag name', text(response))
    response = browser.post(url(sent), data={"action": "add_tag", "scope": "selected", "tag": "x"})
    assert response.status_code == 422
    assert 'id="selection-error"' in text(response)


def test_bulk_needs_csrf_and_the_right_role(app, login, users, sent):
    browser = login("sales")
    refused = browser.client.post(url(sent), data={"action": "add_tag", "scope": "all", "tag": "x"})
    assert refused.status_code == 400
    follow_up = browser.post(url(sent), data={"action": "follow_up", "scope": "all", "filter": "replied"})
    assert follow_up.status_code == 403
    assert (
        login("other").post(url(sent), data={"action": "add_tag", "scope": "all", "tag": "x"}).status_code
        == 404
    )


def test_export_is_utf8_with_bom_and_only_the_filter(login, sent):
    response = login("sales").get(url(sent, filter="replied").replace("/recipients?", "/recipients.csv?"))
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.is_streamed
    raw = response.get_data()
    assert raw.startswith(codecs.BOM_UTF8)
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[0][0] == "Email"
    assert sorted(r[0] for r in rows[1:]) == ["user3@example.net", "user5@example.net", "user7@example.net"]
    assert {r[-1] for r in rows[1:]} == {"春季展会"}
    replied = rows[0].index("Replied")
    assert rows[1][replied].startswith("2024-03-01 1")  # Shanghai time: 10:00 + 5 h


def test_export_of_checked_rows_by_post(login, sent):
    browser = login("sales")
    ids = ids_of(text(browser.get(url(sent, filter="bounced"))))
    response = browser.post(
        url(sent), data={"action": "export", "scope": "selected", "ids": [ids["user100@example.net"]]}
    )
    rows = list(csv.reader(io.StringIO(response.get_data().decode("utf-8-sig"))))
    assert [r[0] for r in rows[1:]] == ["user100@example.net"]
    assert rows[1][1:3] == ["bounced", "mailbox full"]


def test_formula_cells_are_defused():
    assert safe_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert safe_cell("+1") == "'+1"
    assert safe_cell("user@example.net") == "user@example.net"
    assert safe_cell(None) == ""


def test_follow_up_drafts_a_campaign_to_a_new_tag(login, session, workspace, sent):
    browser = login("marketer")
    response = browser.post(url(sent), data={"action": "follow_up", "scope": "all", "filter": "replied"})
    assert response.status_code == 302
    match = re.search(r"/campaigns/(\d+)/edit$", response.headers["Location"])
    assert match
    draft = session.get(Campaign, int(match.group(1)))
    assert draft.status == "draft"
    assert draft.name == "Follow-up: 春季展会"
    tag = session.get(Tag, draft.audience["include_tags"][0])
    assert tag.name.startswith("follow-up 春季展会 ")
    assert tagged(session, workspace.id, tag.name) == {
        "user3@example.net",
        "user5@example.net",
        "user7@example.net",
    }
    again = browser.post(url(sent), data={"action": "follow_up", "scope": "all", "filter": "clicked"})
    second = session.get(
        Campaign, int(re.search(r"/campaigns/(\d+)/edit$", again.headers["Location"]).group(1))
    )
    second_tag = session.get(Tag, second.audience["include_tags"][0])
    assert second_tag.name == tag.name + " #2"
    assert len(tagged(session, workspace.id, second_tag.name)) == 10


def test_a_cancelled_campaigns_unsent_recipients_are_not_said_to_be_waiting(login, session, sent):
    """After a cancel nothing more goes out: the unsent read "not sent (cancelled)", not "yet"."""
    session.execute(
        update(CampaignRecipient)
        .where(CampaignRecipient.campaign_id == sent.id, CampaignRecipient.email == "user0@example.net")
        .values(status="pending", sent_at=None, delivered_at=None)
    )
    session.commit()
    browser = login("sales")
    body = html.unescape(text(browser.get(url(sent, filter="pending"))))
    assert "Not sent yet" in body  # a finished campaign whose last recipient still waits
    sent.status = "cancelled"
    session.commit()
    body = html.unescape(text(browser.get(url(sent, filter="pending"))))
    assert "Not sent (cancelled)" in body
    assert "Not sent yet" not in body
    assert "user0@example.net" in body


def test_a_campaigns_recipients_page_sits_under_campaigns_in_the_menu(login, sent):
    """The campaign's own pages highlight Campaigns; the statistics overview highlights itself."""
    nav = re.compile(r'<nav class="[^"]*plugin-nav[^"]*"[^>]*>(.*?)</nav>', re.S)

    def current(body: str) -> list[str]:
        menu = nav.search(body)
        source = menu.group(1) if menu else body
        return re.findall(r'aria-current="page">([^<]+)<', source)

    browser = login("sales")
    assert current(text(browser.get(url(sent)))) == ["Campaigns"]
    assert current(text(browser.get(f"/marketing/campaigns/{sent.id}/stats"))) == ["Campaigns"]
    assert current(text(browser.get("/marketing/stats"))) == ["Statistics"]
