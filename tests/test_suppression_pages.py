"""Suppression list page: search, reason filter and sort, every entry's reason/source/campaign/time,
admin-only add/remove (errors beside the field, confirmation), all-or-nothing import of CSV/TXT
with every bad line named (GBK files too), CSV export with BOM; roles and workspace isolation."""

from __future__ import annotations

import codecs
import csv
import io
import re

import pytest
from sqlalchemy import select

from plugin import suppression
from plugin.models import Campaign, Suppression


def text(response) -> str:
    return response.get_data(as_text=True)


def listed(body: str) -> list[str]:
    return re.findall(r'<tr class="suppression-row" data-email="([^"]+)"', body)


def stored(session, workspace_id: int) -> dict[str, Suppression]:
    return {
        s.email: s
        for s in session.scalars(select(Suppression).where(Suppression.workspace_id == workspace_id))
    }


@pytest.fixture
def entries(session, workspace, other_workspace):
    campaign = Campaign(workspace_id=workspace.id, name="春季展会", status="completed")
    session.add(campaign)
    session.flush()
    suppression.add(
        session, workspace.id, "gone@example.com", "unsubscribed", source="link", campaign_id=campaign.id
    )
    suppression.add(
        session, workspace.id, "nobody@example.com", "hard_bounce", source="webhook", campaign_id=campaign.id
    )
    suppression.add(session, workspace.id, "angry@example.com", "complaint", source="webhook")
    suppression.add(session, other_workspace.id, "theirs@example.com", "manual", source="admin:9")
    session.commit()
    return campaign


def test_list_shows_reason_source_campaign_and_time(login, entries):
    body = text(login("sales").get("/marketing/suppressions"))
    assert sorted(listed(body)) == ["angry@example.com", "gone@example.com", "nobody@example.com"]
    row = re.search(r'data-email="gone@example.com".*?</tr>', body, re.S).group(0)
    assert "Unsubscribed" in row
    assert 'data-source="link">Unsubscribed from a mail<' in row
    bounced = re.search(r'data-email="nobody@example.com".*?</tr>', body, re.S).group(0)
    assert 'data-source="webhook">Provider event<' in bounced
    assert f'href="/marketing/campaigns/{entries.id}"' in row
    assert "春季展会" in row
    assert "Remove" not in body  # sales only read
    assert 'id="add-suppression"' not in body


def test_search_filter_and_sort(login, entries):
    browser = login("sales")
    assert listed(text(browser.get("/marketing/suppressions?q=GONE"))) == ["gone@example.com"]
    assert listed(text(browser.get("/marketing/suppressions?reason=hard_bounce"))) == ["nobody@example.com"]
    by_email = listed(text(browser.get("/marketing/suppressions?sort=email&order=asc")))
    assert by_email == ["angry@example.com", "gone@example.com", "nobody@example.com"]
    body = text(browser.get("/marketing/suppressions?q=zzz"))
    assert 'id="suppressions-no-match"' in body


def test_empty_list_says_how_entries_arrive(login, workspace):
    body = text(login("admin").get("/marketing/suppressions"))
    assert 'id="suppressions-empty"' in body
    assert "added here automatically" in body
    assert 'id="import-suppressions"' in body


def test_admin_adds_and_removes_by_hand(login, session, workspace, users, entries):
    browser = login("admin")
    response = browser.post("/marketing/suppressions/add", data={"email": "  Buyer@Example.COM "})
    assert response.status_code == 302
    row = stored(session, workspace.id)["buyer@example.com"]
    assert row.reason == "manual"
    assert row.source == f"admin:{users['admin'].id}"
    page = text(browser.get("/marketing/suppressions"))
    assert "buyer@example.com will not be mailed again." in page
    added = re.search(r'data-email="buyer@example.com".*?</tr>', page, re.S).group(0)
    assert f">Added on this page by user {users['admin'].id}<" in added
    assert re.search(r'data-confirm="Remove buyer@example.com from the suppression list', page)
    response = browser.post("/marketing/suppressions/remove", data={"email": "buyer@example.com"})
    assert response.status_code == 302
    assert "buyer@example.com" not in stored(session, workspace.id)


def test_add_errors_beside_the_field(login, entries):
    browser = login("admin")
    response = browser.post("/marketing/suppressions/add", data={"email": "not an address"})
    assert response.status_code == 422
    assert re.search(r'id="suppress-email-error">Not a valid email address', text(response))
    response = browser.post("/marketing/suppressions/add", data={"email": "gone@example.com"})
    assert response.status_code == 422
    assert "already on the list (Unsubscribed)" in text(response)


@pytest.mark.parametrize("user", ["sales", "marketer"])
def test_only_admins_change_the_list(login, session, workspace, entries, user):
    browser = login(user)
    assert browser.post("/marketing/suppressions/add", data={"email": "x@example.com"}).status_code == 403
    assert (
        browser.post("/marketing/suppressions/remove", data={"email": "gone@example.com"}).status_code == 403
    )
    assert "gone@example.com" in stored(session, workspace.id)


def test_remove_needs_csrf(login, session, workspace, entries):
    browser = login("admin")
    response = browser.client.post("/marketing/suppressions/remove", data={"email": "gone@example.com"})
    assert response.status_code == 400
    assert "gone@example.com" in stored(session, workspace.id)


def upload(browser, content: bytes, name: str = "list.csv"):
    return browser.post(
        "/marketing/suppressions/import",
        data={"file": (io.BytesIO(content), name)},
        content_type="multipart/form-data",
    )


def test_import_csv_with_header_and_duplicates(login, session, workspace, users, entries):
    browser = login("admin")
    content = "email,name\nA@example.com,Ann\n\nb@example.com,Bob\na@example.com,again\ngone@example.com,x\n"
    response = upload(browser, content.encode())
    assert response.status_code == 302
    rows = stored(session, workspace.id)
    assert rows["a@example.com"].source == f"import:{users['admin'].id}"
    assert rows["b@example.com"].reason == "manual"
    assert rows["gone@example.com"].reason == "unsubscribed"  # the first reason stays
    listing = text(browser.get("/marketing/suppressions"))
    assert "2 addresses added to the suppression list (1 were already on it)." in listing
    imported = re.search(r'data-email="a@example.com".*?</tr>', listing, re.S).group(0)
    assert f">File import by user {users['admin'].id}<" in imported


def test_import_is_all_or_nothing_with_every_bad_line(login, session, workspace, entries):
    browser = login("admin")
    before = set(stored(session, workspace.id))
    response = upload(
        browser, b"ok1@example.com\nok2@example.com\nnot-an-address\nok3@example.com\n@@\n", "l.txt"
    )
    assert response.status_code == 422
    body = text(response)
    assert "2 lines are not valid addresses; nothing was imported." in body
    assert re.findall(r'<tr data-line="(\d+)">', body) == ["3", "5"]
    assert set(stored(session, workspace.id)) == before


def test_import_gbk_text_file(login, session, workspace):
    content = "邮箱\r\nzhang@example.cn\r\nli@example.cn\r\n".encode("gbk")
    response = upload(login("admin"), content, "名单.txt")
    assert response.status_code == 302
    assert {"zhang@example.cn", "li@example.cn"} <= set(stored(session, workspace.id))


def test_import_without_a_file(login):
    response = login("admin").post(
        "/marketing/suppressions/import", data={}, content_type="multipart/form-data"
    )
    assert response.status_code == 422
    assert 'id="suppress-file-error">Choose a CSV or TXT file.' in text(response)


def test_export_with_bom_reason_source_campaign_time(login, entries):
    response = login("sales").get("/marketing/suppressions.csv?reason=unsubscribed")
    assert response.status_code == 200
    raw = response.get_data()
    assert raw.startswith(codecs.BOM_UTF8)
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[0] == ["Email", "Reason", "Reason code", "Source", "Campaign", "Time"]
    assert len(rows) == 2
    email, label, code, source, campaign, when = rows[1]
    assert (email, label, code, source, campaign) == (
        "gone@example.com",
        "Unsubscribed",
        "unsubscribed",
        "link",
        "春季展会",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", when)
    everything = login("sales").get("/marketing/suppressions.csv").get_data().decode("utf-8-sig")
    assert "theirs@example.com" not in everything
    assert everything.count("\n") == 4
