"""The saved-views API: list with counts, create, update, delete, count and the live preview
count of rules not saved yet; rule errors name the path; roles."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from plugin import contacts as service
from plugin.models import SavedView

API = "/marketing/api/v1"
QQ = {"match": "all", "rules": [{"field": "email_domain", "op": "eq", "value": "QQ.com"}]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def mailboxes(session, workspace):
    for email, country in [
        ("a@qq.com", "CN"),
        ("b@qq.com", "CN"),
        ("c@163.com", "CN"),
        ("d@gmail.com", "US"),
    ]:
        service.create_contact(session, workspace.id, {"email": email, "country": country})
    view = service.create_view(session, workspace.id, name="QQ", rules=QQ, description="QQ mailboxes")
    session.commit()
    return view


def test_list_and_read_with_counts(app, api_token, mailboxes):
    client, headers = app.test_client(), bearer(api_token("sales"))
    listed = client.get(f"{API}/views", headers=headers).get_json()
    assert [(v["name"], v["count"]) for v in listed] == [("QQ", 2)]
    one = client.get(f"{API}/views/{mailboxes.id}", headers=headers).get_json()
    assert one["description"] == "QQ mailboxes"
    assert one["count"] == 2
    assert one["rules"]["rules"][0]["value"] == "QQ.com"
    assert client.get(f"{API}/views/{mailboxes.id}/count", headers=headers).get_json() == {"count": 2}


def test_preview_count(app, api_token, mailboxes):
    client, headers = app.test_client(), bearer(api_token("sales"))
    rules = {
        "match": "any",
        "rules": [
            {"field": "email_domain", "op": "in", "value": ["163.com", "gmail.com"]},
            {"match": "all", "rules": [{"field": "country", "op": "eq", "value": "cn"}]},
        ],
    }
    response = client.post(f"{API}/views/preview-count", json={"rules": rules}, headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {"count": 4}
    none = {"match": "all", "rules": [{"field": "country", "op": "eq", "value": "FR"}]}
    assert client.post(f"{API}/views/preview-count", json={"rules": none}, headers=headers).get_json() == {
        "count": 0
    }


def test_create_update_delete(app, session, api_token, mailboxes):
    client, headers = app.test_client(), bearer(api_token("marketer"))
    created = client.post(
        f"{API}/views",
        json={
            "name": "Chinese",
            "rules": {"match": "all", "rules": [{"field": "country", "op": "eq", "value": "CN"}]},
        },
        headers=headers,
    )
    assert created.status_code == 201, created.get_json()
    view = created.get_json()
    assert view["count"] == 3
    assert view["description"] == ""
    url = f"{API}/views/{view['id']}"

    patched = client.patch(
        url,
        json={
            "rules": {"match": "all", "rules": [{"field": "email", "op": "ends_with", "value": "@163.com"}]}
        },
        headers=headers,
    )
    assert patched.status_code == 200
    assert patched.get_json()["count"] == 1
    assert patched.get_json()["name"] == "Chinese"
    renamed = client.patch(url, json={"name": "163", "description": "NetEase"}, headers=headers)
    assert renamed.get_json()["name"] == "163"
    assert renamed.get_json()["description"] == "NetEase"
    assert client.patch(url, json={}, headers=headers).status_code == 200

    assert client.delete(url, headers=headers).status_code == 204
    assert client.get(url, headers=headers).status_code == 404
    assert client.get(f"{url}/count", headers=headers).status_code == 404
    assert session.scalar(select(func.count()).select_from(SavedView)) == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"rules": QQ}, "name"),
        ({"name": "x"}, "rules"),
        ({"name": "", "rules": QQ}, "name"),
        ({"name": "QQ", "rules": QQ}, "name"),  # exists already
        ({"name": "x", "rules": []}, "rules"),
        ({"name": "x", "rules": {"match": "some", "rules": []}}, "rules"),
        (
            {
                "name": "x",
                "rules": {"match": "all", "rules": [{"field": "password", "op": "eq", "value": "1"}]},
            },
            "rules",
        ),
        (
            {
                "name": "x",
                "rules": {"match": "all", "rules": [{"field": "email", "op": "before", "value": "x"}]},
            },
            "rules",
        ),
        (
            {
                "name": "x",
                "rules": {"match": "all", "rules": [{"field": "created_at", "op": "after", "value": "May"}]},
            },
            "rules",
        ),
        (
            {
                "name": "x",
                "rules": {"match": "all", "rules": [{"field": "email", "op": "eq", "value": "a\u0000"}]},
            },
            "rules",
        ),
        ({"name": "x", "rules": QQ, "description": "d" * 2001}, "description"),
        ({"name": "x", "rules": QQ, "owner": "me"}, "owner"),
    ],
)
def test_create_errors_name_the_field(app, session, api_token, mailboxes, payload, field):
    response = app.test_client().post(f"{API}/views", json=payload, headers=bearer(api_token("admin")))
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]["json"], response.get_json()
    assert session.scalar(select(func.count()).select_from(SavedView)) == 1


def test_deeply_nested_rules_are_refused(app, api_token, mailboxes):
    rules: dict = {"match": "all", "rules": []}
    for _ in range(10):
        rules = {"match": "all", "rules": [rules]}
    response = app.test_client().post(
        f"{API}/views/preview-count", json={"rules": rules}, headers=bearer(api_token("admin"))
    )
    assert response.status_code == 422
    assert "rules" in response.get_json()["errors"]["json"]


def test_bad_preview_rules_name_the_field(app, api_token, mailboxes):
    client, headers = app.test_client(), bearer(api_token("sales"))
    for payload in ({}, {"rules": "all"}, {"rules": {"match": "all"}}):
        response = client.post(f"{API}/views/preview-count", json=payload, headers=headers)
        assert response.status_code == 422
        assert "rules" in response.get_json()["errors"]["json"], payload


def test_bad_update_keeps_the_view(app, session, api_token, mailboxes):
    response = app.test_client().patch(
        f"{API}/views/{mailboxes.id}",
        json={
            "name": "Renamed",
            "rules": {"match": "all", "rules": [{"field": "nope", "op": "eq", "value": "x"}]},
        },
        headers=bearer(api_token("admin")),
    )
    assert response.status_code == 422
    session.expire_all()
    view = session.get(SavedView, mailboxes.id)
    assert view.name == "QQ"
    assert view.rules["rules"][0]["field"] == "email_domain"


def test_sales_may_count_but_not_change_views(app, session, api_token, mailboxes):
    client, headers = app.test_client(), bearer(api_token("sales"))
    for response in (
        client.post(f"{API}/views", json={"name": "Mine", "rules": QQ}, headers=headers),
        client.patch(f"{API}/views/{mailboxes.id}", json={"name": "Renamed"}, headers=headers),
        client.delete(f"{API}/views/{mailboxes.id}", headers=headers),
    ):
        assert response.status_code == 403
        assert response.get_json()["code"] == 403
    session.expire_all()
    assert session.get(SavedView, mailboxes.id).name == "QQ"
    assert session.scalar(select(func.count()).select_from(SavedView)) == 1


def test_session_view_delete_needs_csrf(login, session, mailboxes):
    browser = login("marketer")
    assert browser.client.delete(f"{API}/views/{mailboxes.id}").status_code == 400
    assert session.get(SavedView, mailboxes.id) is not None
    assert browser.delete(f"{API}/views/{mailboxes.id}").status_code == 204
