"""The demo CRM's contact list (search, sort, paging, filters, bulk actions) and contact form."""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, insert, select

from plugin import contacts as service
from plugin.models import Contact, ContactTag, Tag

COUNTRIES = ["China", "Germany", "Brazil", "India"]
BASE_TIME = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def seed_contacts(session, workspace_id: int, count: int, prefix: str = "user") -> list[int]:
    """``count`` contacts: user000@example.com is the oldest; every 10th works at "Acme"."""
    rows = []
    for i in range(count):
        local = f"{prefix}{i:03d}"
        rows.append(
            {
                "workspace_id": workspace_id,
                "email": f"{local}@example.com",
                "email_local": local,
                "email_domain": "example.com",
                "name": f"王{i:03d}" if i % 2 else f"Person {i:03d}",
                "company": "Acme Trading" if i % 10 == 0 else f"Company {i % 7}",
                "country": COUNTRIES[i % len(COUNTRIES)],
                "custom": {},
                "created_at": BASE_TIME + dt.timedelta(hours=i),
                "updated_at": BASE_TIME,
            }
        )
    session.execute(insert(Contact), rows)
    session.commit()
    return list(
        session.scalars(
            select(Contact.id).where(Contact.workspace_id == workspace_id).order_by(Contact.created_at)
        )
    )


def emails(html: str) -> list[str]:
    return re.findall(r'<tr data-email="([^"]+)"', html)


def total(html: str) -> int:
    match = re.search(r'id="contacts-total"[^>]*data-total="(\d+)"', html)
    assert match, "the page has no #contacts-total"
    return int(match.group(1))


def sort_href(html: str, key: str) -> str:
    match = re.search(rf'<th data-sort="{key}"[^>]*>\s*<a href="([^"]+)"', html)
    assert match, f"no sortable header {key}"
    return match.group(1).replace("&amp;", "&")


def members(session, tag_name: str, workspace_id: int) -> set[str]:
    rows = session.scalars(
        select(Contact.email)
        .join(ContactTag, ContactTag.contact_id == Contact.id)
        .join(Tag, Tag.id == ContactTag.tag_id)
        .where(Tag.name == tag_name, Tag.workspace_id == workspace_id)
    )
    return set(rows)


@pytest.fixture
def seeded(session, workspace, other_workspace):
    ids = seed_contacts(session, workspace.id, 260)
    other_ids = seed_contacts(session, other_workspace.id, 5, prefix="acme")
    return {"ids": ids, "other_ids": other_ids}


# -- list ------------------------------------------------------------------------------------


def test_list_shows_total_newest_first_and_fifty_rows(login, seeded):
    html = login("sales").get("/crm/contacts").get_data(as_text=True)
    assert total(html) == 260
    rows = emails(html)
    assert len(rows) == 50
    assert rows[0] == "user259@example.com"
    assert "acme000@example.com" not in html  # another organization's contact


def test_search_matches_email_name_and_company(login, seeded):
    browser = login("marketer")
    by_company = browser.get("/crm/contacts?q=acme").get_data(as_text=True)
    assert total(by_company) == 26
    assert set(emails(by_company)) == {f"user{i:03d}@example.com" for i in range(0, 260, 10)}
    by_name = browser.get("/crm/contacts?q=王013").get_data(as_text=True)
    assert emails(by_name) == ["user013@example.com"]
    by_email = browser.get("/crm/contacts?q=USER12").get_data(as_text=True)
    assert set(emails(by_email)) == {f"user{i}@example.com" for i in range(120, 130)}
    nothing = browser.get("/crm/contacts?q=zzz").get_data(as_text=True)
    assert total(nothing) == 0
    assert "No contacts match these filters." in nothing


def test_sort_header_toggles_order(login, seeded):
    browser = login("marketer")
    html = browser.get("/crm/contacts").get_data(as_text=True)
    ascending_url = sort_href(html, "email")
    assert parse_qs(urlsplit(ascending_url).query) == {"sort": ["email"], "order": ["asc"]}
    ascending = browser.get(ascending_url).get_data(as_text=True)
    assert emails(ascending)[:2] == ["user000@example.com", "user001@example.com"]
    assert 'aria-sort="ascending"' in ascending
    descending = browser.get(sort_href(ascending, "email")).get_data(as_text=True)
    assert emails(descending)[0] == "user259@example.com"
    by_country = browser.get("/crm/contacts?sort=country&order=asc").get_data(as_text=True)
    first_rows = emails(by_country)
    assert {int(e[4:7]) % 4 for e in first_rows} == {2}  # Brazil sorts first


def test_paging_keeps_filters_and_clamps(login, seeded):
    browser = login("marketer")
    last = browser.get("/crm/contacts?page=6&sort=email&order=asc").get_data(as_text=True)
    assert emails(last) == [f"user{i:03d}@example.com" for i in range(250, 260)]
    assert 'aria-current="page">6<' in last
    prev = re.search(r'rel="prev" href="([^"]+)"', last).group(1).replace("&amp;", "&")
    assert parse_qs(urlsplit(prev).query) == {"sort": ["email"], "order": ["asc"], "page": ["5"]}
    beyond = browser.get("/crm/contacts?page=99&q=acme")
    assert beyond.status_code == 302
    assert parse_qs(urlsplit(beyond.headers["Location"]).query) == {"q": ["acme"]}
    garbage = browser.get("/crm/contacts?page=abc&sort=evil")
    assert garbage.status_code == 200
    assert emails(garbage.get_data(as_text=True))[0] == "user259@example.com"


def test_filter_by_tag_and_view(login, session, workspace, other_workspace, seeded):
    service.create_tag(session, workspace.id, "VIP")
    session.commit()
    tag_id = session.scalar(select(Tag.id).where(Tag.name == "VIP"))
    from plugin.directory import SqlDirectory

    SqlDirectory().add_tags(session, workspace.id, seeded["ids"][:3], ["VIP"])
    view = service.create_view(
        session,
        workspace.id,
        name="Germany",
        rules={"match": "all", "rules": [{"field": "country", "op": "eq", "value": "Germany"}]},
    )
    foreign = service.create_tag(session, other_workspace.id, "Theirs")
    session.commit()
    browser = login("sales")
    tagged = browser.get(f"/crm/contacts?tag_id={tag_id}").get_data(as_text=True)
    assert set(emails(tagged)) == {"user000@example.com", "user001@example.com", "user002@example.com"}
    assert 'class="chip"' in tagged
    assert ">VIP</span>" in tagged
    german = browser.get(f"/crm/contacts?view_id={view.id}").get_data(as_text=True)
    assert total(german) == 65
    both = browser.get(f"/crm/contacts?view_id={view.id}&tag_id={tag_id}").get_data(as_text=True)
    assert emails(both) == ["user001@example.com"]
    stranger = browser.get(f"/crm/contacts?tag_id={foreign.id}&q=x")
    assert stranger.status_code == 302
    assert parse_qs(urlsplit(stranger.headers["Location"]).query) == {"q": ["x"]}


def test_empty_state_points_to_import_and_new(login, workspace):
    html = login("marketer").get("/crm/contacts").get_data(as_text=True)
    assert "No contacts yet — import a file or add one" in html
    assert 'href="/crm/contacts/new"' in html
    assert total(html) == 0
    sales = login("sales").get("/crm/contacts").get_data(as_text=True)
    assert 'href="/crm/contacts/new"' not in sales


def test_list_needs_login(app):
    response = app.test_client().get("/crm/contacts")
    assert response.status_code == 302
    assert "/crm/login" in response.headers["Location"]


# -- bulk actions ----------------------------------------------------------------------------


def test_sales_bulk_tags_with_a_new_name_and_keeps_the_query(login, session, workspace, seeded):
    browser = login("sales")
    ids = seeded["ids"][:4]
    response = browser.post(
        "/crm/contacts/bulk",
        data={
            "action": "add_tag",
            "ids": [str(i) for i in ids],
            "tag_name": "  广交会   2026 ",
            "back": "q=user&sort=email&order=asc&page=2&evil=http://x",
        },
    )
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/crm/contacts"
    assert not location.netloc
    assert parse_qs(location.query) == {"q": ["user"], "sort": ["email"], "order": ["asc"], "page": ["2"]}
    assert members(session, "广交会 2026", workspace.id) == {f"user{i:03d}@example.com" for i in range(4)}
    page = browser.get(response.headers["Location"]).get_data(as_text=True)
    assert "added to 4 contacts" in page


def test_bulk_untag_and_delete_roles(login, session, workspace, seeded):
    from plugin.directory import SqlDirectory

    ids = seeded["ids"][:5]
    SqlDirectory().add_tags(session, workspace.id, ids, ["Old"])
    session.commit()
    old = session.scalar(select(Tag.id).where(Tag.name == "Old"))
    sales = login("sales")
    untag = sales.post("/crm/contacts/bulk", data={"action": "remove_tag", "ids": ids[:2], "tag_id": old})
    assert untag.status_code == 302
    assert members(session, "Old", workspace.id) == {f"user{i:03d}@example.com" for i in (2, 3, 4)}
    refused = sales.post("/crm/contacts/bulk", data={"action": "delete", "ids": ids})
    assert refused.status_code == 403
    assert (
        session.scalar(select(func.count()).select_from(Contact).where(Contact.workspace_id == workspace.id))
        == 260
    )
    marketer = login("marketer")
    deleted = marketer.post("/crm/contacts/bulk", data={"action": "delete", "ids": ids})
    assert deleted.status_code == 302
    remaining = session.scalar(
        select(func.count()).select_from(Contact).where(Contact.workspace_id == workspace.id)
    )
    assert remaining == 255
    assert members(session, "Old", workspace.id) == set()


def test_bulk_cannot_touch_another_organization(login, session, workspace, other_workspace, seeded):
    from plugin.directory import SqlDirectory

    foreign = seeded["other_ids"]
    SqlDirectory().add_tags(session, other_workspace.id, foreign, ["Theirs"])
    session.commit()
    browser = login("admin")
    browser.post("/crm/contacts/bulk", data={"action": "add_tag", "ids": foreign, "tag_name": "Mine"})
    browser.post("/crm/contacts/bulk", data={"action": "delete", "ids": foreign})
    theirs = session.scalar(select(Tag.id).where(Tag.name == "Theirs"))
    untag = browser.post(
        "/crm/contacts/bulk", data={"action": "remove_tag", "ids": foreign, "tag_id": theirs}
    )
    assert untag.status_code == 302
    session.expire_all()
    assert session.scalar(select(func.count()).where(Contact.workspace_id == other_workspace.id)) == 5
    assert members(session, "Mine", workspace.id) == set()
    assert len(members(session, "Theirs", other_workspace.id)) == 5
    flashed = browser.get("/crm/contacts").get_data(as_text=True)
    assert "does not exist" in flashed  # the foreign tag id is not ours


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"action": "delete"}, "Select at least one contact."),
        ({"action": "delete", "ids": ["1 OR 1=1"]}, "invalid contact id"),
        ({"action": "add_tag", "ids": ["1"], "tag_name": "   "}, "type or pick the tag to add"),
        ({"action": "remove_tag", "ids": ["1"]}, "pick the tag to remove"),
        ({"action": "explode", "ids": ["1"]}, "unknown action"),
    ],
)
def test_bulk_input_is_validated(login, session, workspace, seeded, form, message):
    browser = login("admin")
    response = browser.post("/crm/contacts/bulk", data=dict(form))
    assert response.status_code == 302
    assert message in browser.get("/crm/contacts").get_data(as_text=True)
    assert session.scalar(select(func.count()).where(Contact.workspace_id == workspace.id)) == 260


def test_bulk_needs_csrf(login, seeded):
    browser = login("admin")
    response = browser.client.post("/crm/contacts/bulk", data={"action": "delete", "ids": seeded["ids"][:1]})
    assert response.status_code == 400


# -- contact form ----------------------------------------------------------------------------


def test_create_contact_with_custom_fields_tags_and_owner(login, session, workspace, users):
    service.ensure_custom_field(session, workspace.id, "industry", "行业 Industry")
    service.create_tag(session, workspace.id, "VIP")
    session.commit()
    browser = login("marketer")
    form = browser.get("/crm/contacts/new").get_data(as_text=True)
    assert 'name="custom.industry"' in form
    assert 'value="VIP"' in form
    assert f'value="{users["sales"].id}"' in form
    assert f'value="{users["other"].id}"' not in form
    response = browser.post(
        "/crm/contacts/new",
        data={
            "email": " Li.Lei@Example.CN ",
            "name": "李雷",
            "company": "",
            "country": "China",
            "owner_id": str(users["sales"].id),
            "custom.industry": "机械",
            "tags": ["VIP"],
            "new_tag": "展会 2026",
        },
    )
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    contact = session.scalar(select(Contact).where(Contact.email == "li.lei@example.cn"))
    assert contact.name == "李雷"
    assert contact.company is None
    assert contact.owner_id == str(users["sales"].id)
    assert contact.custom == {"industry": "机械"}
    assert set(service.tags_of(session, [contact.id])[contact.id]) == {"VIP", "展会 2026"}
    assert response.headers["Location"].endswith(f"/crm/contacts/{contact.id}")


def test_create_errors_are_shown_beside_the_field(login, session, workspace):
    service.create_contact(session, workspace.id, {"email": "taken@example.com"})
    session.commit()
    browser = login("marketer")
    bad = browser.post("/crm/contacts/new", data={"email": "not-an-address", "name": "X"})
    assert bad.status_code == 400
    html = bad.get_data(as_text=True)
    assert re.search(r'<div class="field has-error">\s*<label for="email">', html)
    assert 'id="error-email"' in html
    assert 'value="X"' in html
    duplicate = browser.post("/crm/contacts/new", data={"email": "TAKEN@example.com"})
    assert duplicate.status_code == 400
    assert "already a contact" in duplicate.get_data(as_text=True)
    too_long = browser.post("/crm/contacts/new", data={"email": "a@example.com", "name": "x" * 201})
    assert too_long.status_code == 400
    assert 'id="error-name"' in too_long.get_data(as_text=True)
    stranger = browser.post("/crm/contacts/new", data={"email": "b@example.com", "owner_id": "99999"})
    assert stranger.status_code == 400
    assert "pick a user from the list" in stranger.get_data(as_text=True)
    assert session.scalar(select(func.count()).where(Contact.workspace_id == workspace.id)) == 1


def test_edit_updates_fields_and_tags(login, session, workspace):
    contact = service.create_contact(
        session, workspace.id, {"email": "edit@example.com", "name": "Old", "tags": ["A", "B"]}
    )
    session.commit()
    browser = login("marketer")
    page = browser.get(f"/crm/contacts/{contact.id}").get_data(as_text=True)
    assert 'value="A" checked' in page
    assert 'value="Old"' in page
    response = browser.post(
        f"/crm/contacts/{contact.id}",
        data={"email": "edit@example.com", "name": "New", "tags": ["B"], "new_tag": "C"},
    )
    assert response.status_code == 302
    session.expire_all()
    assert session.get(Contact, contact.id).name == "New"
    assert service.tags_of(session, [contact.id])[contact.id] == ["B", "C"]
    clash = service.create_contact(session, workspace.id, {"email": "other@example.com"})
    session.commit()
    taken = browser.post(f"/crm/contacts/{clash.id}", data={"email": "edit@example.com"})
    assert taken.status_code == 400
    assert "already a contact" in taken.get_data(as_text=True)


def test_sales_sees_the_form_read_only(login, session, workspace):
    contact = service.create_contact(session, workspace.id, {"email": "ro@example.com", "name": "Keep"})
    session.commit()
    browser = login("sales")
    page = browser.get(f"/crm/contacts/{contact.id}")
    assert page.status_code == 200
    assert "<fieldset disabled" in page.get_data(as_text=True)
    assert (
        browser.post(f"/crm/contacts/{contact.id}", data={"email": "ro@example.com", "name": "X"}).status_code
        == 403
    )
    assert browser.get("/crm/contacts/new").status_code == 403
    assert browser.post(f"/crm/contacts/{contact.id}/delete").status_code == 403
    session.expire_all()
    assert session.get(Contact, contact.id).name == "Keep"


def test_delete_contact_and_other_organization_is_404(login, session, workspace, other_workspace):
    mine = service.create_contact(session, workspace.id, {"email": "gone@example.com"})
    theirs = service.create_contact(session, other_workspace.id, {"email": "theirs@example.com"})
    session.commit()
    browser = login("marketer")
    assert browser.get(f"/crm/contacts/{theirs.id}").status_code == 404
    assert browser.post(f"/crm/contacts/{theirs.id}/delete").status_code == 404
    page = browser.get(f"/crm/contacts/{mine.id}").get_data(as_text=True)
    assert 'id="contact-delete"' in page
    assert "data-confirm=" in page
    assert browser.post(f"/crm/contacts/{mine.id}/delete").status_code == 302
    assert session.scalar(select(func.count()).where(Contact.workspace_id == workspace.id)) == 0
    assert session.scalar(select(func.count()).where(Contact.workspace_id == other_workspace.id)) == 1


@pytest.mark.parametrize(
    "url",
    [
        "/crm/contacts/99999999999999999999",
        "/crm/contacts/9223372036854775808",
        "/crm/import/jobs/99999999999",
        "/crm/sandbox/mail/99999999999",
    ],
)
def test_huge_ids_are_not_found_not_errors(login, url):
    assert login("admin").get(url).status_code == 404


def test_login_next_cannot_leave_the_site(app, users):
    client = app.test_client()
    page = client.get("/crm/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post(
        "/crm/login?next=/%09/evil.example",
        data={"username": "admin", "password": "admin", "csrf_token": token},
    )
    assert response.headers["Location"].endswith("/crm/contacts")
