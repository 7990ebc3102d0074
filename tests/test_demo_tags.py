"""The demo CRM's tags page: list with counts, create, rename, delete, roles and isolation."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from plugin import contacts as service
from plugin.models import ContactTag, Tag


def tag_named(session, name: str) -> Tag | None:
    session.expire_all()
    return session.scalar(select(Tag).where(Tag.name == name))


def make_tagged(session, workspace_id: int, tag: str, count: int) -> None:
    for i in range(count):
        service.create_contact(
            session, workspace_id, {"email": f"{tag.lower()}{i}@example.com", "tags": [tag]}
        )
    session.commit()


def test_list_shows_counts_linking_to_filtered_contacts(login, session, workspace, other_workspace):
    make_tagged(session, workspace.id, "Fair", 3)
    service.create_tag(session, workspace.id, "Empty", "#ff0000")
    service.create_tag(session, other_workspace.id, "Secret")
    session.commit()
    fair = tag_named(session, "Fair")
    html = login("sales").get("/crm/tags").get_data(as_text=True)
    assert re.search(rf'href="/crm/contacts\?tag_id={fair.id}" data-count="3"', html)
    assert 'data-tag="Empty"' in html
    assert "#ff0000" in html
    assert "Secret" not in html
    assert 'id="tag-create"' not in html  # sales may not manage tags


def test_create_tag_and_duplicate_error_beside_the_field(login, session, workspace):
    browser = login("marketer")
    created = browser.post(
        "/crm/tags", data={"action": "create", "name": " 老客户  VIP ", "color": "#12ab34"}
    )
    assert created.status_code == 302
    tag = tag_named(session, "老客户 VIP")
    assert tag is not None
    assert tag.color == "#12ab34"
    assert "created" in browser.get("/crm/tags").get_data(as_text=True)
    duplicate = browser.post("/crm/tags", data={"action": "create", "name": "老客户 VIP", "color": "#000000"})
    assert duplicate.status_code == 400
    html = duplicate.get_data(as_text=True)
    assert re.search(r'class="field has-error"><label for="tag-name">', html)
    assert 'id="error-name"' in html
    assert "exists already" in html
    bad_color = browser.post("/crm/tags", data={"action": "create", "name": "Red", "color": "red"})
    assert bad_color.status_code == 400
    assert "a color like #5b8def" in bad_color.get_data(as_text=True)
    empty = browser.post("/crm/tags", data={"action": "create", "name": ""})
    assert empty.status_code == 400
    assert session.scalar(select(func.count()).select_from(Tag)) == 1


def test_rename_inline_with_errors_on_its_row(login, session, workspace):
    first = service.create_tag(session, workspace.id, "First")
    second = service.create_tag(session, workspace.id, "Second")
    session.commit()
    browser = login("admin")
    renamed = browser.post(
        "/crm/tags", data={"action": "rename", "tag_id": first.id, "name": "Erste", "color": "#abcdef"}
    )
    assert renamed.status_code == 302
    assert tag_named(session, "Erste").color == "#abcdef"
    clash = browser.post("/crm/tags", data={"action": "rename", "tag_id": second.id, "name": "Erste"})
    assert clash.status_code == 400
    html = clash.get_data(as_text=True)
    row = html[html.index(f'data-id="{second.id}"') :]
    row = row[: row.index("</tr>")]
    assert "exists already" in row
    assert 'value="Erste"' in row
    assert tag_named(session, "Second") is not None


def test_delete_says_how_many_lose_the_tag(login, session, workspace):
    make_tagged(session, workspace.id, "Gone", 4)
    tag = tag_named(session, "Gone")
    browser = login("marketer")
    page = browser.get("/crm/tags").get_data(as_text=True)
    assert "4 contacts will lose it" in page
    response = browser.post("/crm/tags", data={"action": "delete", "tag_id": tag.id})
    assert response.status_code == 302
    assert tag_named(session, "Gone") is None
    assert session.scalar(select(func.count()).select_from(ContactTag)) == 0
    assert "4 contacts lost it" in browser.get("/crm/tags").get_data(as_text=True)


def test_roles_and_other_organization(login, session, workspace, other_workspace):
    theirs = service.create_tag(session, other_workspace.id, "Theirs")
    session.commit()
    sales = login("sales")
    assert sales.post("/crm/tags", data={"action": "create", "name": "Nope"}).status_code == 403
    assert tag_named(session, "Nope") is None
    admin = login("admin")
    for data in (
        {"action": "rename", "tag_id": theirs.id, "name": "Hijacked"},
        {"action": "delete", "tag_id": theirs.id},
    ):
        response = admin.post("/crm/tags", data=data)
        assert response.status_code == 302
    assert tag_named(session, "Theirs") is not None
    assert "does not exist" in admin.get("/crm/tags").get_data(as_text=True)
    assert admin.post("/crm/tags", data={"action": "merge"}).status_code == 302


def test_empty_state(login, workspace):
    html = login("marketer").get("/crm/tags").get_data(as_text=True)
    assert 'id="tags-empty"' in html
    assert 'id="tag-create"' in html
