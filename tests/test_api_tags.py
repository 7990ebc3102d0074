"""The tags API: list with member counts, create, rename, delete, count; errors and roles."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from plugin import contacts as service
from plugin.models import ContactTag, Tag

API = "/marketing/api/v1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tagged(session, workspace):
    """Three contacts, two in "Customers", none in "Empty"."""
    people = [service.create_contact(session, workspace.id, {"email": f"p{n}@example.com"}) for n in range(3)]
    customers = service.create_tag(session, workspace.id, "Customers", "#112233")
    empty = service.create_tag(session, workspace.id, "Empty")
    session.flush()
    session.add_all([ContactTag(contact_id=p.id, tag_id=customers.id) for p in people[:2]])
    session.commit()
    return {"people": people, "customers": customers, "empty": empty}


def test_list_with_counts_by_name(app, api_token, tagged):
    body = app.test_client().get(f"{API}/tags", headers=bearer(api_token("sales"))).get_json()
    assert [(t["name"], t["count"]) for t in body] == [("Customers", 2), ("Empty", 0)]
    assert body[0]["color"] == "#112233"
    assert body[1]["color"].startswith("#")


def test_create_rename_count_delete(app, session, api_token, tagged):
    client, headers = app.test_client(), bearer(api_token("marketer"))
    created = client.post(f"{API}/tags", json={"name": "  New   leads ", "color": "#ABCDEF"}, headers=headers)
    assert created.status_code == 201, created.get_json()
    tag = created.get_json()
    assert tag["name"] == "New leads"
    assert tag["color"] == "#ABCDEF"
    assert tag["count"] == 0
    url = f"{API}/tags/{tag['id']}"

    renamed = client.patch(url, json={"name": "Leads"}, headers=headers)
    assert renamed.status_code == 200
    assert renamed.get_json()["name"] == "Leads"
    assert renamed.get_json()["color"] == "#ABCDEF"  # no color given: kept

    customers = tagged["customers"].id
    assert client.get(f"{API}/tags/{customers}", headers=headers).get_json()["count"] == 2
    assert client.get(f"{API}/tags/{customers}/count", headers=headers).get_json() == {"count": 2}

    assert client.delete(f"{API}/tags/{customers}", headers=headers).status_code == 204
    assert client.get(f"{API}/tags/{customers}", headers=headers).status_code == 404
    assert client.get(f"{API}/tags/{customers}/count", headers=headers).status_code == 404
    assert session.scalar(select(func.count()).select_from(ContactTag)) == 0
    # deleting a tag leaves its contacts alone
    assert client.get(f"{API}/contacts", headers=headers).get_json()["total"] == 3


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "a\u0000b"}, "name"),
        ({"name": "ok", "color": "red"}, "color"),
        ({"name": "ok", "color": "#12345"}, "color"),
        ({"name": "ok", "members": [1]}, "members"),
        ({"name": "Customers"}, "name"),  # exists already
    ],
)
def test_create_errors_name_the_field(app, session, api_token, tagged, payload, field):
    response = app.test_client().post(f"{API}/tags", json=payload, headers=bearer(api_token("admin")))
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]["json"]
    assert session.scalar(select(func.count()).select_from(Tag)) == 2


def test_rename_onto_another_tag_is_refused(app, api_token, tagged):
    response = app.test_client().patch(
        f"{API}/tags/{tagged['empty'].id}", json={"name": "customers "}, headers=bearer(api_token("admin"))
    )
    # names compare exactly after whitespace clean-up: "customers" differs from "Customers"
    assert response.status_code == 200
    response = app.test_client().patch(
        f"{API}/tags/{tagged['empty'].id}", json={"name": " Customers"}, headers=bearer(api_token("admin"))
    )
    assert response.status_code == 422
    assert "name" in response.get_json()["errors"]["json"]


def test_sales_may_read_but_not_change_tags(app, session, api_token, tagged):
    client, headers = app.test_client(), bearer(api_token("sales"))
    customers = tagged["customers"].id
    assert client.get(f"{API}/tags", headers=headers).status_code == 200
    assert client.get(f"{API}/tags/{customers}/count", headers=headers).status_code == 200
    for response in (
        client.post(f"{API}/tags", json={"name": "Mine"}, headers=headers),
        client.patch(f"{API}/tags/{customers}", json={"name": "Renamed"}, headers=headers),
        client.delete(f"{API}/tags/{customers}", headers=headers),
    ):
        assert response.status_code == 403
        assert response.get_json()["code"] == 403
    session.expire_all()
    assert session.get(Tag, customers).name == "Customers"
    assert session.scalar(select(func.count()).select_from(Tag)) == 2


def test_session_tag_create_needs_csrf(login, session, tagged):
    browser = login("marketer")
    assert browser.client.post(f"{API}/tags", json={"name": "NoCsrf"}).status_code == 400
    assert browser.post(f"{API}/tags", json={"name": "WithCsrf"}).status_code == 201
    names = set(session.scalars(select(Tag.name)))
    assert "WithCsrf" in names
    assert "NoCsrf" not in names


def test_tags_need_auth(app, tagged):
    response = app.test_client().get(f"{API}/tags")
    assert response.status_code == 401
    assert response.get_json()["code"] == 401
