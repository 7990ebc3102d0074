"""The contacts API: authentication (session + CSRF, bearer tokens), listing with paging, search,
sort and filters, create/read/update/delete, bulk tagging and bulk delete, field-level errors and
role checks."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from plugin import contacts as service
from plugin.access import ensure_workspace, issue_token
from plugin.demo.models import User
from plugin.models import ApiToken, Contact, ContactTag, Tag, utcnow

API = "/marketing/api/v1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def people(session, workspace):
    """Five contacts; Ann and Bob tagged VIP; a saved view of the example.org domain."""
    rows = [
        ("ann@example.com", "Ann", "Acme Ltd", "CN"),
        ("bob@example.org", "Bob", "Beta Inc", "US"),
        ("cid@example.org", "Cid", "Acme Ltd", "DE"),
        ("dee@example.net", "Dee", None, "CN"),
        ("eve@example.com", "Eve", "Zeta", None),
    ]
    made = {}
    for email, name, company, country in rows:
        made[name] = service.create_contact(
            session, workspace.id, {"email": email, "name": name, "company": company, "country": country}
        )
    vip = service.create_tag(session, workspace.id, "VIP")
    session.flush()
    session.add_all([ContactTag(contact_id=made[n].id, tag_id=vip.id) for n in ("Ann", "Bob")])
    view = service.create_view(
        session,
        workspace.id,
        name="Org domain",
        rules={"match": "all", "rules": [{"field": "email_domain", "op": "eq", "value": "example.org"}]},
    )
    session.commit()
    return {"contacts": made, "vip": vip, "view": view}


def count_contacts(session, workspace_id: int) -> int:
    return session.scalar(
        select(func.count()).select_from(Contact).where(Contact.workspace_id == workspace_id)
    )


# -- authentication ---------------------------------------------------------------------------


def test_no_auth_is_401_json(app):
    response = app.test_client().get(f"{API}/contacts")
    assert response.status_code == 401
    assert response.get_json()["code"] == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_garbage_token_is_401(app, users):
    for header in ("Bearer nonsense", "Bearer ", "Bearer mkt_" + "x" * 43, "bearer \x7f"):
        response = app.test_client().get(f"{API}/contacts", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.get_json()["code"] == 401


def test_revoked_token_is_401(app, session, api_token):
    token = api_token("admin")
    assert app.test_client().get(f"{API}/contacts", headers=bearer(token)).status_code == 200
    row = session.scalar(select(ApiToken))
    row.revoked_at = utcnow()
    session.commit()
    response = app.test_client().get(f"{API}/contacts", headers=bearer(token))
    assert response.status_code == 401
    assert "revoked" in response.get_json()["message"]


def test_token_records_last_use(app, session, api_token):
    token = api_token("marketer")
    assert session.scalar(select(ApiToken.last_used_at)) is None
    app.test_client().get(f"{API}/me", headers=bearer(token))
    session.expire_all()
    assert session.scalar(select(ApiToken.last_used_at)) is not None


def test_token_acts_as_its_user(app, api_token):
    body = app.test_client().get(f"{API}/me", headers=bearer(api_token("sales"))).get_json()
    assert body["role"] == "sales"
    assert body["workspace"] == "default"


def test_bearer_writes_need_no_csrf(app, api_token, workspace):
    response = app.test_client().post(
        f"{API}/contacts", json={"email": "new@example.com"}, headers=bearer(api_token("marketer"))
    )
    assert response.status_code == 201, response.get_json()


def test_session_auth_reads_and_writes_with_csrf(login, session, workspace):
    browser = login("marketer")
    assert browser.get(f"{API}/contacts").status_code == 200
    response = browser.post(f"{API}/contacts", json={"email": "Sess@Example.com"})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["email"] == "sess@example.com"


def test_session_write_without_csrf_header_is_400(login, session, workspace):
    browser = login("marketer")
    response = browser.client.post(f"{API}/contacts", json={"email": "x@example.com"})
    assert response.status_code == 400
    assert "CSRF" in response.get_json()["message"]
    response = browser.client.post(
        f"{API}/contacts", json={"email": "x@example.com"}, headers={"X-CSRFToken": "forged"}
    )
    assert response.status_code == 400
    assert count_contacts(session, workspace.id) == 0


def test_user_without_marketing_role_is_403(app, session, workspace):
    guest = User(username="guest", display_name="Guest", role="support", organization="default")
    guest.set_password("guest")
    session.add(guest)
    session.commit()
    token = issue_token(session, workspace_id=workspace.id, user_id=str(guest.id), name="t")
    session.commit()
    response = app.test_client().get(f"{API}/contacts", headers=bearer(token))
    assert response.status_code == 403
    assert response.get_json()["code"] == 403


def test_token_of_a_deleted_user_is_401(app, session, users, api_token):
    token = api_token("marketer")
    session.delete(users["marketer"])
    session.commit()
    assert app.test_client().get(f"{API}/me", headers=bearer(token)).status_code == 401


# -- listing ----------------------------------------------------------------------------------


def test_list_pages(app, api_token, people):
    client, headers = app.test_client(), bearer(api_token("sales"))
    first = client.get(f"{API}/contacts?per_page=2&sort=email&order=asc", headers=headers).get_json()
    assert first["total"] == 5
    assert first["pages"] == 3
    assert first["page"] == 1
    assert [c["email"] for c in first["items"]] == ["ann@example.com", "bob@example.org"]
    third = client.get(f"{API}/contacts?per_page=2&page=3&sort=email&order=asc", headers=headers).get_json()
    assert [c["email"] for c in third["items"]] == ["eve@example.com"]
    beyond = client.get(f"{API}/contacts?per_page=2&page=9", headers=headers).get_json()
    assert beyond["items"] == []
    assert beyond["total"] == 5


def test_list_item_shape(app, api_token, people):
    body = app.test_client().get(f"{API}/contacts?q=ann", headers=bearer(api_token("admin"))).get_json()
    (ann,) = body["items"]
    assert ann["name"] == "Ann"
    assert ann["company"] == "Acme Ltd"
    assert ann["country"] == "CN"
    assert ann["tags"] == ["VIP"]
    assert ann["id"] == people["contacts"]["Ann"].id
    assert ann["created_at"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("q=ACME", ["Ann", "Cid"]),
        ("q=example.org", ["Bob", "Cid"]),
        ("q=%25", []),  # a LIKE wildcard is searched literally
        ("q=_", []),
        ("sort=name&order=desc", ["Eve", "Dee", "Cid", "Bob", "Ann"]),
        ("sort=country&order=asc&q=example.com", None),  # NULLs sort somewhere; just must work
    ],
)
def test_search_and_sort(app, api_token, people, query, expected):
    response = app.test_client().get(
        f"{API}/contacts?{query}&sort=name&order=asc", headers=bearer(api_token("admin"))
    )
    if "sort=" in query:
        response = app.test_client().get(f"{API}/contacts?{query}", headers=bearer(api_token("admin")))
    assert response.status_code == 200
    names = [c["name"] for c in response.get_json()["items"]]
    if expected is not None:
        assert names == expected


def test_filter_by_tag_and_view(app, api_token, people):
    client, headers = app.test_client(), bearer(api_token("sales"))
    by_tag = client.get(f"{API}/contacts?tag_id={people['vip'].id}&sort=name&order=asc", headers=headers)
    assert [c["name"] for c in by_tag.get_json()["items"]] == ["Ann", "Bob"]
    by_view = client.get(f"{API}/contacts?view_id={people['view'].id}&sort=name&order=asc", headers=headers)
    assert [c["name"] for c in by_view.get_json()["items"]] == ["Bob", "Cid"]
    both = client.get(
        f"{API}/contacts?view_id={people['view'].id}&tag_id={people['vip'].id}", headers=headers
    ).get_json()
    assert [c["name"] for c in both["items"]] == ["Bob"]


def test_filter_by_missing_tag_or_view_is_404(app, api_token, people):
    client, headers = app.test_client(), bearer(api_token("sales"))
    assert client.get(f"{API}/contacts?tag_id=999", headers=headers).status_code == 404
    assert client.get(f"{API}/contacts?view_id=999", headers=headers).status_code == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page=0", "page"),
        ("per_page=501", "per_page"),
        ("per_page=abc", "per_page"),
        ("sort=password", "sort"),
        ("order=sideways", "order"),
        ("tag_id=-1", "tag_id"),
        ("view_id=99999999999999999999", "view_id"),
        ("q=" + "x" * 201, "q"),
        ("q=a%00b", "q"),
    ],
)
def test_bad_query_names_the_parameter(app, api_token, query, field):
    response = app.test_client().get(f"{API}/contacts?{query}", headers=bearer(api_token("admin")))
    assert response.status_code == 422
    assert field in response.get_json()["errors"]["query"]


# -- create, read, update, delete -------------------------------------------------------------


def test_create_read_update_delete(app, session, api_token, workspace):
    client, headers = app.test_client(), bearer(api_token("marketer"))
    created = client.post(
        f"{API}/contacts",
        json={
            "email": " Li.Lei@Example.COM ",
            "name": "李雷",
            "company": "  ",
            "custom": {"city": "上海", "score": 7},
            "tags": ["Leads", "  Leads  "],
        },
        headers=headers,
    )
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["email"] == "li.lei@example.com"
    assert body["name"] == "李雷"
    assert body["company"] is None
    assert body["custom"] == {"city": "上海", "score": "7"}
    assert body["tags"] == ["Leads"]
    url = f"{API}/contacts/{body['id']}"

    assert client.get(url, headers=headers).get_json()["email"] == "li.lei@example.com"

    patched = client.patch(
        url, json={"country": "CN", "custom": {"score": None}, "tags": ["Hot"]}, headers=headers
    )
    assert patched.status_code == 200, patched.get_json()
    assert patched.get_json()["country"] == "CN"
    assert patched.get_json()["custom"] == {"city": "上海"}
    assert patched.get_json()["tags"] == ["Hot", "Leads"]
    assert patched.get_json()["name"] == "李雷"  # untouched fields stay

    assert client.delete(url, headers=headers).status_code == 204
    assert client.get(url, headers=headers).status_code == 404
    assert client.delete(url, headers=headers).status_code == 404
    assert count_contacts(session, workspace.id) == 0
    assert session.scalar(select(func.count()).select_from(ContactTag)) == 0


def test_missing_contact_is_404_json(app, api_token):
    response = app.test_client().get(f"{API}/contacts/12345", headers=bearer(api_token("admin")))
    assert response.status_code == 404
    assert response.get_json()["code"] == 404


def test_huge_ids_are_404_not_500(app, api_token):
    client, headers = app.test_client(), bearer(api_token("admin"))
    for url in (
        f"{API}/contacts/{2**64}",
        f"{API}/contacts/0",
        f"{API}/tags/{2**40}",
        f"{API}/views/{2**40}/count",
    ):
        response = client.get(url, headers=headers)
        assert response.status_code == 404, url
        assert response.get_json()["code"] == 404


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "email"),
        ({"email": "not-an-address"}, "email"),
        ({"email": "a@b"}, "email"),
        ({"email": "x" * 400 + "@example.com"}, "email"),
        ({"email": "nul\u0000@example.com"}, "email"),
        ({"email": "ok@example.com", "name": "Ann\u0000"}, "name"),
        ({"email": "ok@example.com", "name": "\ud800"}, "name"),
        ({"email": "ok@example.com", "name": "x" * 201}, "name"),
        ({"email": "ok@example.com", "name": 5}, "name"),
        ({"email": "ok@example.com", "custom": {"Bad Key": "x"}}, "custom"),
        ({"email": "ok@example.com", "custom": {"k": {"nested": 1}}}, "custom"),
        ({"email": "ok@example.com", "custom": {"k": True}}, "custom"),
        ({"email": "ok@example.com", "custom": {"k": "\u0000"}}, "custom"),
        ({"email": "ok@example.com", "tags": [""]}, "tags"),
        ({"email": "ok@example.com", "tags": "VIP"}, "tags"),
        ({"email": "ok@example.com", "password": "x"}, "password"),
    ],
)
def test_create_errors_name_the_field(app, session, api_token, workspace, payload, field):
    response = app.test_client().post(f"{API}/contacts", json=payload, headers=bearer(api_token("admin")))
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["code"] == 422
    assert field in body["errors"]["json"], body
    assert count_contacts(session, workspace.id) == 0


def test_nan_and_infinity_custom_values_are_refused(app, api_token, workspace):
    response = app.test_client().post(
        f"{API}/contacts",
        data='{"email": "ok@example.com", "custom": {"score": NaN}}',
        content_type="application/json",
        headers=bearer(api_token("admin")),
    )
    assert response.status_code == 422
    assert "custom" in response.get_json()["errors"]["json"]


def test_duplicate_email_is_422_on_email(app, api_token, people):
    client, headers = app.test_client(), bearer(api_token("admin"))
    response = client.post(f"{API}/contacts", json={"email": "ANN@example.com"}, headers=headers)
    assert response.status_code == 422
    assert "email" in response.get_json()["errors"]["json"]
    bob = people["contacts"]["Bob"].id
    response = client.patch(f"{API}/contacts/{bob}", json={"email": "ann@example.com"}, headers=headers)
    assert response.status_code == 422
    assert "email" in response.get_json()["errors"]["json"]


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400),
        ({"data": "", "content_type": "application/json"}, 422),  # an empty object
        ({"data": "email=x@example.com", "content_type": "application/x-www-form-urlencoded"}, 415),
        ({"data": "x@example.com", "content_type": "text/plain"}, 415),
        ({}, 415),
        ({"data": "[1, 2]", "content_type": "application/json"}, 422),
        ({"data": "null", "content_type": "application/json"}, 422),
        ({"data": "[" * 5000 + "]" * 5000, "content_type": "application/json"}, 400),
    ],
)
def test_bodies_that_are_not_a_json_object(app, api_token, workspace, kwargs, status):
    response = app.test_client().post(f"{API}/contacts", headers=bearer(api_token("admin")), **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.get_json()["code"] == status


def test_unknown_route_and_method_answer_json(app, api_token):
    client, headers = app.test_client(), bearer(api_token("admin"))
    missing = client.get(f"{API}/nothing-here", headers=headers)
    assert missing.status_code == 404
    assert missing.get_json()["code"] == 404
    wrong = client.put(f"{API}/contacts", json={}, headers=headers)
    assert wrong.status_code == 405
    assert wrong.get_json()["code"] == 405
    assert "GET" in wrong.headers["Allow"]


# -- bulk -------------------------------------------------------------------------------------


def test_bulk_tag_add_and_remove(app, session, api_token, people):
    client, headers = app.test_client(), bearer(api_token("sales"))
    ids = [c.id for c in people["contacts"].values()]
    added = client.post(
        f"{API}/contacts/bulk-tags", json={"contact_ids": ids, "add": ["VIP", "Q3 event"]}, headers=headers
    )
    assert added.status_code == 200, added.get_json()
    assert added.get_json() == {"added": 3 + 5, "removed": 0}  # Ann and Bob were VIP already
    vip_count = client.get(f"{API}/tags/{people['vip'].id}/count", headers=headers).get_json()
    assert vip_count == {"count": 5}
    again = client.post(
        f"{API}/contacts/bulk-tags", json={"contact_ids": ids, "add": ["VIP"]}, headers=headers
    )
    assert again.get_json() == {"added": 0, "removed": 0}
    removed = client.post(
        f"{API}/contacts/bulk-tags",
        json={"contact_ids": ids[:2], "remove": ["VIP", "No such tag"]},
        headers=headers,
    )
    assert removed.get_json() == {"added": 0, "removed": 2}
    assert client.get(f"{API}/tags/{people['vip'].id}/count", headers=headers).get_json() == {"count": 3}
    q3 = session.scalar(select(Tag).where(Tag.name == "Q3 event"))
    assert q3 is not None
    assert q3.workspace_id == people["vip"].workspace_id


def test_bulk_tag_unknown_ids_are_ignored(app, session, api_token, people):
    response = app.test_client().post(
        f"{API}/contacts/bulk-tags",
        json={"contact_ids": [999_999, 2**62], "add": ["Ghosts"]},
        headers=bearer(api_token("sales")),
    )
    assert response.get_json() == {"added": 0, "removed": 0}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"add": ["VIP"]}, "contact_ids"),
        ({"contact_ids": [], "add": ["VIP"]}, "contact_ids"),
        ({"contact_ids": ["1"], "add": ["VIP"]}, "contact_ids"),
        ({"contact_ids": [1.5], "add": ["VIP"]}, "contact_ids"),
        ({"contact_ids": [0], "add": ["VIP"]}, "contact_ids"),
        ({"contact_ids": [2**64], "add": ["VIP"]}, "contact_ids"),
        ({"contact_ids": list(range(1, 10_002)), "add": ["VIP"]}, "contact_ids"),
        ({"contact_ids": [1]}, "add"),
        ({"contact_ids": [1], "add": ["x" * 101]}, "add"),
        ({"contact_ids": [1], "add": ["a\u0000"]}, "add"),
        ({"contact_ids": [1], "remove": [7]}, "remove"),
    ],
)
def test_bulk_tag_errors_name_the_field(app, api_token, people, payload, field):
    response = app.test_client().post(
        f"{API}/contacts/bulk-tags", json=payload, headers=bearer(api_token("sales"))
    )
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]["json"]


def test_bulk_delete(app, session, api_token, people, workspace):
    client, headers = app.test_client(), bearer(api_token("admin"))
    ids = [people["contacts"]["Ann"].id, people["contacts"]["Bob"].id, 999_999]
    response = client.post(f"{API}/contacts/bulk-delete", json={"contact_ids": ids}, headers=headers)
    assert response.get_json() == {"deleted": 2}
    assert count_contacts(session, workspace.id) == 3
    assert client.get(f"{API}/tags/{people['vip'].id}", headers=headers).get_json()["count"] == 0
    bad = client.post(f"{API}/contacts/bulk-delete", json={"contact_ids": "all"}, headers=headers)
    assert bad.status_code == 422
    assert "contact_ids" in bad.get_json()["errors"]["json"]


# -- roles ------------------------------------------------------------------------------------


def test_sales_reads_and_tags_but_does_not_write(app, session, api_token, people, workspace):
    client, headers = app.test_client(), bearer(api_token("sales"))
    ann = people["contacts"]["Ann"].id
    assert client.get(f"{API}/contacts", headers=headers).status_code == 200
    assert client.get(f"{API}/contacts/{ann}", headers=headers).status_code == 200
    tagged = client.post(
        f"{API}/contacts/bulk-tags", json={"contact_ids": [ann], "add": ["Met"]}, headers=headers
    )
    assert tagged.status_code == 200
    refused = [
        client.post(f"{API}/contacts", json={"email": "new@example.com"}, headers=headers),
        client.post(f"{API}/contacts", json={"email": "invalid"}, headers=headers),  # 403 before 422
        client.patch(f"{API}/contacts/{ann}", json={"name": "Changed"}, headers=headers),
        client.delete(f"{API}/contacts/{ann}", headers=headers),
        client.post(f"{API}/contacts/bulk-delete", json={"contact_ids": [ann]}, headers=headers),
    ]
    for response in refused:
        assert response.status_code == 403, response.request.path
        assert response.get_json()["code"] == 403
    session.expire_all()
    assert count_contacts(session, workspace.id) == 5
    assert session.get(Contact, ann).name == "Ann"


def test_sales_session_is_refused_too(login, people):
    browser = login("sales")
    response = browser.post(f"{API}/contacts", json={"email": "new@example.com"})
    assert response.status_code == 403


def test_other_workspace_token_scoping_is_by_token(app, session, users, people):
    """A token issued in the default workspace keeps acting there only while its user does."""
    ws = ensure_workspace(session, "default")
    token = issue_token(session, workspace_id=ws.id, user_id=str(users["admin"].id), name="t")
    session.commit()
    client = app.test_client()
    assert client.get(f"{API}/contacts", headers=bearer(token)).get_json()["total"] == 5
    users["admin"].organization = "acme"
    session.commit()
    response = client.get(f"{API}/contacts", headers=bearer(token))
    assert response.status_code == 401
